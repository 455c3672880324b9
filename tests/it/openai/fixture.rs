//! The setup the OpenAI front-door tests share: a proxy whose route `chat` serves
//! model `m` on `/v1` from upstream `m`, request bodies, and reads of the proxy's
//! queue, backends, counters and streams.

use futures_util::StreamExt;
use modelgate::demo::replica::{Replica, ReplicaHandle};
use serde_json::{json, Value};

use crate::support::*;

/// The listeners every proxy of these tests has (`{http}` and `{admin}`).
pub const LISTEN: &str = r#"
[listen]
http = "{http}"
admin = "{admin}"
"#;

/// A proxy with the route `chat` (`path = "/v1"`, `model = "m"`, `api = "openai"`,
/// then the `route` lines) to the upstream `m` made of the `upstream` lines (its
/// `backends` or `discover`, then its keys; subtables such as `[upstream.m.health]`
/// go last).
pub async fn front(route: &str, upstream: &str) -> TestProxy {
    TestProxy::start(&format!(
        r#"{LISTEN}
[[route]]
name = "chat"
path = "/v1"
model = "m"
api = "openai"
upstream = "m"
{route}

[upstream.m]
{upstream}
"#
    ))
    .await
}

/// `backends = [...]` of `replicas`.
pub fn backends(replicas: &[&ReplicaHandle]) -> String {
    format!("backends = [{}]", backend_list(replicas))
}

/// A mock OpenAI replica serving model `m` with `slots` slots (0: unlimited) and a
/// token every `token_ms` ms.
pub async fn replica(name: &str, slots: usize, token_ms: u64) -> ReplicaHandle {
    let mut b = Replica::builder(name)
        .models(["m"])
        .token_interval(std::time::Duration::from_millis(token_ms));
    if slots > 0 {
        b = b.concurrency(slots);
    }
    b.spawn().await.unwrap()
}

/// A chat completion request body for `model` with one user message.
pub fn chat(model: &str, prompt: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
    })
}

/// A streamed chat for `m` of `tokens` tokens.
pub fn stream_body(tokens: u64) -> Value {
    let mut body = chat("m", "hello", true);
    body["max_tokens"] = json!(tokens);
    body
}

/// The `data:` payloads of an SSE text, in order.
pub fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|ev| ev.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The comment the proxy sends while a stream waits.
pub const KEEPALIVE: &str = ": keep-alive\n\n";

/// Reads the whole body as text, chunk by chunk, noting how many keep-alive
/// comments came before the first `data:` event.
pub async fn read_stream(resp: reqwest::Response) -> (String, usize) {
    let mut text = String::new();
    let mut comments_first = None;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        if comments_first.is_none() && text.contains("data:") {
            let head = &text[..text.find("data:").unwrap_or(0)];
            comments_first = Some(head.matches(KEEPALIVE).count());
        }
    }
    (text, comments_first.unwrap_or(0))
}

/// The `data:` events of a stream after its leading keep-alive comments.
pub fn events_after_keepalives(text: &str) -> Vec<String> {
    sse_events(text.trim_start_matches(KEEPALIVE))
}

/// Reads a stream that must be 200, keep-alive comments (two at least) and then
/// one OpenAI error event with `code`.
pub async fn expect_error_event(resp: reqwest::Response, code: &str) {
    assert_eq!(resp.status(), 200);
    let (text, comments) = read_stream(resp).await;
    assert!(comments >= 2, "{text:?}");
    let events = events_after_keepalives(&text);
    assert_eq!(events.len(), 1, "{text:?}");
    let e: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(e["error"]["code"], code, "{e}");
    assert!(e["error"]["message"].is_string(), "{e}");
}

/// Sends a chat for `m` that does not stream, in the background; its status.
pub fn send(client: &reqwest::Client, proxy: &TestProxy) -> tokio::task::JoinHandle<u16> {
    let req = client
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat("m", "hello", false));
    tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
}

/// Requests waiting in upstream `m`'s queue (queued or held).
pub async fn queued(proxy: &TestProxy) -> u64 {
    proxy.admin_json("/upstreams").await["upstreams"]["m"]["queued"]
        .as_u64()
        .unwrap_or(0)
}

/// The state of upstream `m`'s first backend (`""` when it has none).
pub async fn state(proxy: &TestProxy) -> String {
    proxy.admin_json("/upstreams").await["upstreams"]["m"]["backends"][0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `modelgate_requests_total` of route `chat` with `code`.
pub async fn answered(proxy: &TestProxy, code: u16) -> f64 {
    let series = format!(r#"modelgate_requests_total{{code="{code}",route="chat",upstream="m"}}"#);
    metric_value(proxy, &series).await
}

/// `modelgate_client_aborts_total` of upstream `m`.
pub async fn aborts(proxy: &TestProxy) -> f64 {
    metric_value(proxy, r#"modelgate_client_aborts_total{upstream="m"} "#).await
}

/// The access log lines of route `chat`, parsed.
pub fn access_lines(proxy: &TestProxy) -> Vec<Value> {
    proxy
        .logs()
        .lines()
        .filter(|l| l.contains(r#""route":"chat""#))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Holds the only slot until the returned response is read to its end.
pub async fn occupy(client: &reqwest::Client, proxy: &TestProxy, tokens: u64) -> reqwest::Response {
    let resp = client
        .post(proxy.url("/v1/chat/completions"))
        .json(&stream_body(tokens))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp
}
