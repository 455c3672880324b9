//! The OpenAI face of the mock replica, shaped like a vLLM server: chat and text
//! completions (streamed as server-sent events or whole), `GET /v1/models`, and
//! vLLM's Prometheus gauges on `GET /metrics`.
//!
//! Timing follows a real engine closely enough for routing and accounting tests: a
//! request waits for one of the replica's slots (`vllm:num_requests_waiting`), then
//! spends a prefill time that grows with the prompt tokens not already in its prefix
//! cache (time to first token), then produces one token per token interval while
//! holding its slot (`vllm:num_requests_running`). Streams send their headers at once,
//! as vLLM's do; the first token follows the prefill.
//!
//! Tokens are whitespace-separated words; the prefix cache works in blocks of
//! [`BLOCK_TOKENS`] words, like vLLM's automatic prefix caching.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Channel, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::replica::{InflightBody, InflightGuard, Inner, Slot, WORDS};

/// Prompt tokens per prefix-cache block.
pub(crate) const BLOCK_TOKENS: usize = 16;
/// Completion tokens when the request sets no `max_tokens`.
pub(crate) const DEFAULT_MAX_TOKENS: u64 = 16;
/// Cached prefix blocks remembered before the cache is emptied, unless configured.
pub(crate) const DEFAULT_CACHE_BLOCKS: usize = 100_000;

/// OpenAI endpoints the mock serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Completions,
    Models,
    Metrics,
}

impl Endpoint {
    pub(super) fn of(method: &Method, path: &str) -> Option<Endpoint> {
        match (method, path) {
            (&Method::POST, "/v1/chat/completions") => Some(Endpoint::Chat),
            (&Method::POST, "/v1/completions") => Some(Endpoint::Completions),
            (&Method::GET, "/v1/models") => Some(Endpoint::Models),
            (&Method::GET, "/metrics") => Some(Endpoint::Metrics),
            _ => None,
        }
    }
}

/// Per-replica OpenAI state.
#[derive(Debug)]
pub(super) struct State {
    models: RwLock<Arc<[String]>>,
    /// Prefill time per uncached prompt token.
    prefill_per_token: Duration,
    /// Hashes of prompt prefixes ending on a block boundary.
    cache: Mutex<HashSet<u64>>,
    /// Blocks the cache holds before it is emptied (a full KV cache).
    cache_blocks: usize,
    /// Prompt tokens looked up in the prefix cache, and found there (vLLM's
    /// `prefix_cache_queries` and `prefix_cache_hits`).
    cache_queries: AtomicU64,
    cache_hits: AtomicU64,
    last_request: Mutex<Option<Value>>,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    next_id: AtomicU64,
}

impl State {
    pub(super) fn new(
        models: Vec<String>,
        prefill_per_token: Duration,
        cache_blocks: usize,
    ) -> State {
        State {
            models: RwLock::new(models.into()),
            prefill_per_token,
            cache: Mutex::new(HashSet::new()),
            cache_blocks,
            cache_queries: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            last_request: Mutex::new(None),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
        }
    }

    pub(super) fn models(&self) -> Arc<[String]> {
        Arc::clone(&self.models.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub(super) fn set_models(&self, models: Vec<String>) {
        *self.models.write().unwrap_or_else(|p| p.into_inner()) = models.into();
    }

    pub(super) fn last_request(&self) -> Option<Value> {
        self.last_request
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Prompt tokens not covered by cached prefix blocks; caches this prompt's blocks.
    fn uncached(&self, words: &[&str]) -> usize {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut cached_blocks = 0;
        let mut leading = true;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > self.cache_blocks {
            cache.clear();
        }
        for (i, block) in words.chunks_exact(BLOCK_TOKENS).enumerate() {
            for w in block {
                hasher.update(w.as_bytes());
                hasher.update(b" ");
            }
            let fresh = cache.insert(hasher.digest());
            if leading && !fresh {
                cached_blocks = i + 1;
            } else {
                leading = false;
            }
        }
        drop(cache);
        let hit = cached_blocks * BLOCK_TOKENS;
        self.cache_queries
            .fetch_add(words.len() as u64, Ordering::Relaxed);
        self.cache_hits.fetch_add(hit as u64, Ordering::Relaxed);
        words.len() - hit
    }
}

/// Answers one OpenAI request. `guard` keeps it counted in flight until answered.
pub(super) async fn serve(
    inner: &Arc<Inner>,
    endpoint: Endpoint,
    req: Request<Incoming>,
    guard: InflightGuard,
) -> Response<InflightBody> {
    match endpoint {
        Endpoint::Models => models(inner, guard),
        Endpoint::Metrics => metrics(inner, guard),
        Endpoint::Chat | Endpoint::Completions => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(inner, 400, &format!("reading body: {e}"), guard),
            };
            match serde_json::from_slice::<Value>(&body) {
                Ok(v) => completion(inner, endpoint, v, guard).await,
                Err(e) => error(inner, 400, &format!("invalid JSON body: {e}"), guard),
            }
        }
    }
}

fn models(inner: &Inner, guard: InflightGuard) -> Response<InflightBody> {
    let data: Vec<Value> = inner
        .openai
        .models()
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "modelgate-mock"}))
        .collect();
    respond(
        inner,
        200,
        "application/json",
        json!({"object": "list", "data": data}).to_string(),
        guard,
    )
}

/// vLLM's engine gauges and token counters, one series per served model.
fn metrics(inner: &Inner, guard: InflightGuard) -> Response<InflightBody> {
    let (waiting, running) = inner.slot_counts();
    let usage = match inner.slot_limit() {
        Some(n) => running as f64 / n as f64,
        None => 0.0,
    };
    let state = &inner.openai;
    let models = state.models();
    let mut out = String::new();
    let series: [(&str, &str, &str, f64); 7] = [
        (
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            running as f64,
        ),
        (
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            waiting as f64,
        ),
        (
            "vllm:gpu_cache_usage_perc",
            "gauge",
            "GPU KV-cache usage. 1 means 100 percent usage.",
            usage,
        ),
        (
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            state.prompt_tokens.load(Ordering::Relaxed) as f64,
        ),
        (
            "vllm:prefix_cache_queries_total",
            "counter",
            "Prefix cache queries, in terms of number of queried tokens.",
            state.cache_queries.load(Ordering::Relaxed) as f64,
        ),
        (
            "vllm:prefix_cache_hits_total",
            "counter",
            "Prefix cache hits, in terms of number of cached tokens.",
            state.cache_hits.load(Ordering::Relaxed) as f64,
        ),
        (
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            state.generation_tokens.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for m in models.iter().take(1) {
            let _ = writeln!(out, "{name}{{engine=\"0\",model_name=\"{m}\"}} {value:?}");
        }
    }
    respond(inner, 200, "text/plain; version=0.0.4", out, guard)
}

/// An OpenAI error object, as vLLM answers it.
fn error(inner: &Inner, code: u16, message: &str, guard: InflightGuard) -> Response<InflightBody> {
    let kind = if code == 404 {
        "NotFoundError"
    } else {
        "BadRequestError"
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    respond(inner, code, "application/json", body.to_string(), guard)
}

fn respond(
    inner: &Inner,
    code: u16,
    content_type: &'static str,
    body: String,
    guard: InflightGuard,
) -> Response<InflightBody> {
    let full = Full::new(Bytes::from(body)).boxed();
    let mut resp = Response::new(InflightBody::new(full, Some(guard)));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    inner.name_response(resp)
}

/// The words of the prompt: every message's text (string or text parts) or `prompt`.
fn prompt_words(req: &Value) -> Vec<&str> {
    fn add<'a>(words: &mut Vec<&'a str>, v: &'a Value) {
        match v {
            Value::String(s) => words.extend(s.split_whitespace()),
            Value::Array(parts) => {
                for p in parts {
                    if let Some(s) = p.as_str().or_else(|| p["text"].as_str()) {
                        words.extend(s.split_whitespace());
                    }
                }
            }
            _ => {}
        }
    }
    let mut words = Vec::new();
    if let Some(messages) = req["messages"].as_array() {
        for m in messages {
            add(&mut words, &m["content"]);
        }
    } else {
        add(&mut words, &req["prompt"]);
    }
    words
}

async fn completion(
    inner: &Arc<Inner>,
    endpoint: Endpoint,
    req: Value,
    guard: InflightGuard,
) -> Response<InflightBody> {
    let state = &inner.openai;
    *state.last_request.lock().unwrap_or_else(|p| p.into_inner()) = Some(req.clone());
    let Some(model) = req["model"].as_str().map(str::to_owned) else {
        return error(inner, 400, "the request has no \"model\"", guard);
    };
    if !state.models().contains(&model) {
        let message = format!("The model `{model}` does not exist.");
        return error(inner, 404, &message, guard);
    }
    let words = prompt_words(&req);
    let prompt_tokens = words.len() as u64;
    let uncached = state.uncached(&words) as u64;
    let max_tokens = req["max_completion_tokens"]
        .as_u64()
        .or_else(|| req["max_tokens"].as_u64())
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let stream = req["stream"].as_bool().unwrap_or(false);
    let include_usage = req["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let id = format!(
        "{}-{}-{}",
        if endpoint == Endpoint::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        inner.name(),
        state.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let plan = Plan {
        endpoint,
        id,
        model,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        prompt_tokens,
        cached_tokens: prompt_tokens - uncached,
        completion_tokens: max_tokens,
    };
    let prefill = inner.delay() + state.prefill_per_token * u32::try_from(uncached).unwrap_or(0);
    if !stream {
        let _slot = inner.slot().await;
        tokio::time::sleep(prefill + inner.token_interval() * plan.decode_gaps()).await;
        plan.count(state);
        return respond(inner, 200, "application/json", plan.whole(), guard);
    }
    let (mut tx, rx) = Channel::new(4);
    let task_inner = Arc::clone(inner);
    tokio::spawn(async move {
        let _slot: Slot = task_inner.slot().await;
        tokio::time::sleep(prefill).await;
        let frames = plan.frames(include_usage);
        // Chat streams open with a role chunk; content tokens follow it.
        let first = usize::from(plan.endpoint == Endpoint::Chat);
        let tokens = usize::try_from(plan.completion_tokens).unwrap_or(usize::MAX);
        for (i, frame) in frames.into_iter().enumerate() {
            // Every content token after the first takes one decode step.
            if i > first && i - first < tokens {
                tokio::time::sleep(task_inner.token_interval()).await;
            }
            if tx.send_data(frame).await.is_err() {
                return; // the client went away: stop generating, as vLLM aborts
            }
        }
        plan.count(&task_inner.openai);
    });
    let body = InflightBody::new(rx.boxed(), Some(guard));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    inner.name_response(resp)
}

/// What one completion produces.
struct Plan {
    endpoint: Endpoint,
    id: String,
    model: String,
    created: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
    completion_tokens: u64,
}

impl Plan {
    fn decode_gaps(&self) -> u32 {
        u32::try_from(self.completion_tokens.saturating_sub(1)).unwrap_or(u32::MAX)
    }

    fn count(&self, state: &State) {
        state
            .prompt_tokens
            .fetch_add(self.prompt_tokens, Ordering::Relaxed);
        state
            .generation_tokens
            .fetch_add(self.completion_tokens, Ordering::Relaxed);
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }

    fn word(i: u64) -> &'static str {
        WORDS[usize::try_from(i).unwrap_or(0) % WORDS.len()]
    }

    fn text(&self) -> String {
        (0..self.completion_tokens)
            .map(Plan::word)
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Chat, false) => "chat.completion",
            _ => "text_completion",
        }
    }

    /// The non-streamed answer.
    fn whole(&self) -> String {
        let choice = if self.endpoint == Endpoint::Chat {
            json!({"index": 0, "message": {"role": "assistant", "content": self.text()},
                   "logprobs": null, "finish_reason": "length"})
        } else {
            json!({"index": 0, "text": self.text(), "logprobs": null, "finish_reason": "length"})
        };
        json!({"id": self.id, "object": self.object(false), "created": self.created,
               "model": self.model, "choices": [choice], "usage": self.usage()})
        .to_string()
    }

    fn chunk(&self, choice: Value, usage: Option<Value>) -> Bytes {
        let mut event = json!({"id": self.id, "object": self.object(true), "created": self.created,
                               "model": self.model, "choices": [choice]});
        if let Some(u) = usage {
            event["choices"] = json!([]);
            event["usage"] = u;
        }
        Bytes::from(format!("data: {event}\n\n"))
    }

    /// Every SSE event of the stream, in order: for chat a role chunk first, then one
    /// chunk per token, a finish chunk, the usage chunk if asked for, and `[DONE]`.
    fn frames(&self, include_usage: bool) -> Vec<Bytes> {
        let chat = self.endpoint == Endpoint::Chat;
        let mut out = Vec::with_capacity(self.completion_tokens as usize + 4);
        let piece = |i: u64| {
            let w = Plan::word(i);
            if i == 0 {
                w.to_owned()
            } else {
                format!(" {w}")
            }
        };
        if chat {
            out.push(self.chunk(
                json!({"index": 0, "delta": {"role": "assistant", "content": ""},
                       "logprobs": null, "finish_reason": null}),
                None,
            ));
        }
        for i in 0..self.completion_tokens {
            let choice = if chat {
                json!({"index": 0, "delta": {"content": piece(i)}, "logprobs": null, "finish_reason": null})
            } else {
                json!({"index": 0, "text": piece(i), "logprobs": null, "finish_reason": null})
            };
            out.push(self.chunk(choice, None));
        }
        let last = if chat {
            json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "length"})
        } else {
            json!({"index": 0, "text": "", "logprobs": null, "finish_reason": "length"})
        };
        out.push(self.chunk(last, None));
        if include_usage {
            out.push(self.chunk(Value::Null, Some(self.usage())));
        }
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }
}

/// The events of a streamed answer of `tokens` tokens to a prompt of `prompt_tokens`,
/// exactly as the replica writes them (tests of stream readers replay them).
#[cfg(test)]
pub(crate) fn sample_stream(
    endpoint: Endpoint,
    tokens: u64,
    prompt_tokens: u64,
    include_usage: bool,
) -> Vec<Bytes> {
    let plan = Plan {
        endpoint,
        id: "chatcmpl-r-7".into(),
        model: "demo".into(),
        created: 1_764_490_000,
        prompt_tokens,
        cached_tokens: 0,
        completion_tokens: tokens,
    };
    plan.frames(include_usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_cache_counts_leading_cached_blocks() {
        let state = State::new(vec!["m".into()], Duration::ZERO, DEFAULT_CACHE_BLOCKS);
        let a: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        assert_eq!(state.uncached(&a), 40);
        // Same first 32 words (two blocks), then different.
        let mut b = a.clone();
        b[35] = "other";
        assert_eq!(state.uncached(&b), 40 - 32);
        // A different first block shares nothing, even if later blocks match.
        let mut c = a.clone();
        c[0] = "other";
        assert_eq!(state.uncached(&c), 40);
    }

    #[test]
    fn prompt_words_read_messages_parts_and_prompt() {
        let chat = json!({"messages": [{"role": "user", "content": "a b"},
            {"role": "user", "content": [{"type": "text", "text": "c d e"}]}]});
        assert_eq!(prompt_words(&chat), ["a", "b", "c", "d", "e"]);
        assert_eq!(prompt_words(&json!({"prompt": "x y"})), ["x", "y"]);
    }
}
