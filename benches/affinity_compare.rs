//! Cache affinity against least outstanding and round robin (and SGLang's router when
//! it is installed) on one seeded chat workload, in front of three replicas that cache
//! prompt prefixes: by default in-process mock replicas with a bounded prefix cache,
//! or real llama-server processes (`REPLICAS=host:port,...`, see benches/llama.sh).
//!
//! Workload A (shared prefixes): 4 long system prompts, 24 sessions of 4 turns each
//! (every turn resends the conversation so far), 6 clients at once, each running its
//! sessions one after another. Workload B (no shared prefixes): the same number of
//! requests, each with its own random prompt of the same length.
//!
//! modelgate runs with `max_inflight` set to the replicas' slots (`MAX_INFLIGHT`, default
//! 2; 0 leaves the capacity unknown, so cache affinity falls back to its abs/rel guard)
//! and a queue, as in front of slot-limited replicas.
//!
//! Per policy: the replicas' prefix-cache hit ratio (cached prompt tokens over prompt
//! tokens, as the replicas report them in each response's usage), mean and p99 time
//! to first token (first streamed content), and requests per second.
//!
//! `POLICIES=cache_affinity,least_outstanding` runs only those rows (default: all).
//!
//! Run with `bash benches/affinity_compare.sh`; `SGLANG_ROUTER=python3` (a Python
//! with `sglang-router` installed) adds SGLang's `cache_aware` router. With real
//! replicas: `REPLICAS=127.0.0.1:18080,127.0.0.1:18081,127.0.0.1:18082
//! RESTART="bash benches/llama.sh stop; bash benches/llama.sh start 3"`.

#![allow(clippy::print_stdout)] // the numbers are the output

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use modelgate::demo::replica::{Replica, ReplicaHandle};
use serde_json::{json, Value};

const SYSTEM_PROMPTS: usize = 4;
const SESSIONS: usize = 24;
const TURNS: usize = 4;
const CLIENTS: usize = 6;
const MAX_TOKENS: u64 = 8;
/// Requests each replica runs at once: the mocks' slots, and llama-server's
/// `--parallel` in benches/llama.sh (`PARALLEL`, default 2).
const SLOTS: usize = 2;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[path = "support/procs.rs"]
mod procs;
use procs::{free_port, Proc};

/// Seeded text: `n` words drawn from a vocabulary of 5,000.
fn words(rng: &mut fastrand::Rng, n: usize) -> String {
    (0..n)
        .map(|_| format!("w{}", rng.u32(..5000)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One request: its messages. Every policy gets the same list in the same order.
type Conversation = Vec<Vec<Value>>;

/// Workload A: per client, its sessions' turns in order.
fn shared_workload(system_words: usize) -> Vec<Conversation> {
    let mut rng = fastrand::Rng::with_seed(42);
    let systems: Vec<String> = (0..SYSTEM_PROMPTS)
        .map(|_| words(&mut rng, system_words))
        .collect();
    let mut clients: Vec<Conversation> = vec![Vec::new(); CLIENTS];
    for s in 0..SESSIONS {
        let sys = &systems[rng.usize(..SYSTEM_PROMPTS)];
        let mut messages = vec![json!({"role": "system", "content": sys})];
        for _ in 0..TURNS {
            messages.push(json!({"role": "user", "content": words(&mut rng, 40)}));
            clients[s % CLIENTS].push(messages.clone());
            messages.push(json!({"role": "assistant", "content": words(&mut rng, 20)}));
        }
    }
    clients
}

/// Workload B: as many requests, each with its own prompt of the same length.
fn unique_workload(system_words: usize) -> Vec<Conversation> {
    let mut rng = fastrand::Rng::with_seed(43);
    let mut clients: Vec<Conversation> = vec![Vec::new(); CLIENTS];
    for i in 0..SESSIONS * TURNS {
        let messages = vec![
            json!({"role": "system", "content": words(&mut rng, system_words)}),
            json!({"role": "user", "content": words(&mut rng, 40)}),
        ];
        clients[i % CLIENTS].push(messages);
    }
    clients
}

#[derive(Default)]
struct Outcome {
    ttft: Vec<Duration>,
    prompt_tokens: u64,
    cached_tokens: u64,
    errors: usize,
    elapsed: Duration,
}

/// Streams one chat request; returns its time to first content and its usage.
async fn one(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    messages: &[Value],
) -> Option<(Duration, u64, u64)> {
    let body = json!({
        "model": model, "messages": messages, "max_tokens": MAX_TOKENS, "stream": true,
        "stream_options": {"include_usage": true}, "temperature": 0,
    });
    let started = Instant::now();
    let resp = client.post(url).json(&body).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let mut ttft = None;
    let (mut prompt, mut cached) = (0, 0);
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.ok()?));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            let content = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
            if ttft.is_none() && !content.is_empty() {
                ttft = Some(started.elapsed());
            }
            if let Some(p) = v["usage"]["prompt_tokens"].as_u64() {
                prompt = p;
                cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap_or(0);
            }
        }
    }
    Some((ttft.unwrap_or_else(|| started.elapsed()), prompt, cached))
}

async fn run(addr: SocketAddr, model: &str, work: &[Conversation]) -> Outcome {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    let url = format!("http://{addr}/v1/chat/completions");
    let started = Instant::now();
    let tasks: Vec<_> = work
        .iter()
        .cloned()
        .map(|conv| {
            let (client, url, model) = (client.clone(), url.clone(), model.to_string());
            tokio::spawn(async move {
                let mut out = Outcome::default();
                for messages in conv {
                    match one(&client, &url, &model, &messages).await {
                        Some((t, p, c)) => {
                            out.ttft.push(t);
                            out.prompt_tokens += p;
                            out.cached_tokens += c;
                        }
                        None => out.errors += 1,
                    }
                }
                out
            })
        })
        .collect();
    let mut all = Outcome::default();
    for t in tasks {
        if let Ok(o) = t.await {
            all.ttft.extend(o.ttft);
            all.prompt_tokens += o.prompt_tokens;
            all.cached_tokens += o.cached_tokens;
            all.errors += o.errors;
        }
    }
    all.elapsed = started.elapsed();
    all.ttft.sort();
    all
}

fn row(name: &str, o: &Outcome) -> String {
    let n = o.ttft.len().max(1);
    let mean = o.ttft.iter().sum::<Duration>() / n as u32;
    let p99 = o.ttft[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1];
    format!(
        "| {name} | {:.0}% | {:.0} ms | {:.0} ms | {:.2} | {} |",
        100.0 * o.cached_tokens as f64 / o.prompt_tokens.max(1) as f64,
        mean.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        o.ttft.len() as f64 / o.elapsed.as_secs_f64(),
        o.errors
    )
}

async fn wait_up(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn modelgate(bin: &Path, dir: &Path, port: u16, balance: &str, backends: &[SocketAddr]) -> Proc {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    let cfg = format!(
        "[listen]\nhttp = \"127.0.0.1:{port}\"\n[log]\naccess = \"off\"\n\
         [[route]]\nname = \"chat\"\npath = \"/v1\"\napi = \"openai\"\nupstream = \"m\"\n\
         [upstream.m]\nbackends = [{}]\nbalance = \"{balance}\"\nfirst_byte_timeout = \"300s\"\n\
         max_inflight = {}\nqueue = {{ size = 256, timeout = \"300s\" }}\n",
        list.join(", "),
        env_usize("MAX_INFLIGHT", SLOTS)
    );
    let file = dir.join(format!("modelgate-{balance}.toml"));
    std::fs::write(&file, cfg).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    Proc(
        Command::new(bin)
            .args(["run", "-c"])
            .arg(&file)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display())),
    )
}

fn sglang_router(python: &str, port: u16, backends: &[SocketAddr]) -> Option<Proc> {
    let mut cmd = Command::new(python);
    cmd.args([
        "-m",
        "sglang_router.launch_router",
        "--policy",
        "cache_aware",
    ])
    .args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--worker-urls",
    ])
    .args(backends.iter().map(|a| format!("http://{a}")))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd.spawn().ok().map(Proc)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(bench());
}

async fn mock_replicas() -> Vec<ReplicaHandle> {
    let mut out = Vec::new();
    for name in ["a", "b", "c"] {
        out.push(
            Replica::builder(name)
                .models(["m"])
                .concurrency(SLOTS)
                .prefill_per_token(Duration::from_micros(500))
                .token_interval(Duration::from_millis(10))
                .prefix_cache_blocks(env_usize("CACHE_BLOCKS", 300))
                .spawn()
                .await
                .unwrap_or_else(|e| panic!("replica: {e}")),
        );
    }
    out
}

async fn bench() {
    let bin = PathBuf::from(
        std::env::var("MODELGATE_BIN").unwrap_or_else(|_| "target/release/modelgate".into()),
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let external: Vec<SocketAddr> = std::env::var("REPLICAS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    let model = if external.is_empty() {
        "m"
    } else {
        "random-llama"
    };
    let system_words = env_usize("SYSTEM_WORDS", 1200);
    let workloads = [
        (
            "A: shared system prompts, multi-turn sessions",
            shared_workload(system_words),
        ),
        ("B: no shared prefixes", unique_workload(system_words)),
    ];
    let mut policies: Vec<&str> = vec!["cache_affinity", "least_outstanding", "round_robin"];
    let sglang = std::env::var("SGLANG_ROUTER").ok();
    if sglang.is_some() {
        policies.push("sglang-router cache_aware");
    }
    if let Ok(only) = std::env::var("POLICIES") {
        policies.retain(|p| only.split(',').any(|o| p.starts_with(o.trim())));
    }
    for (title, work) in &workloads {
        println!(
            "\nWorkload {title}; {} requests, {CLIENTS} clients\n",
            work.iter().map(Vec::len).sum::<usize>()
        );
        println!("| router | cache hit ratio | mean TTFT | p99 TTFT | req/s | errors |");
        println!("|---|---|---|---|---|---|");
        for policy in &policies {
            // Fresh replicas for each policy: every run starts with cold caches
            // (external replicas are restarted by `RESTART`, a shell command).
            if let Ok(cmd) = std::env::var("RESTART") {
                let ok = Command::new("bash").args(["-c", &cmd]).status();
                assert!(ok.is_ok_and(|s| s.success()), "{cmd} failed");
            }
            let mocks = if external.is_empty() {
                mock_replicas().await
            } else {
                Vec::new()
            };
            let backends: Vec<SocketAddr> = if external.is_empty() {
                mocks.iter().map(|r| r.addr()).collect()
            } else {
                external.clone()
            };
            let port = free_port();
            let proc = match (*policy, &sglang) {
                (p, Some(py)) if p.starts_with("sglang") => sglang_router(py, port, &backends),
                (p, _) => Some(modelgate(&bin, dir.path(), port, p, &backends)),
            };
            let Some(_proc) = proc else {
                println!("| {policy} | did not start | | | | |");
                continue;
            };
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            wait_up(addr).await;
            let o = run(addr, model, work).await;
            println!("{}", row(policy, &o));
            for m in &mocks {
                m.shutdown();
            }
        }
    }
}
