//! Request bodies the proxy decides on (routes by `model`, streams by `stream`, keys
//! cache affinity by `messages` or `prompt`): a key it reads that appears twice, a `stream` that is not a boolean and a missing
//! `model` are refused with 400 in OpenAI's shape before any replica sees them, the
//! same whichever other keys the endpoint's routes set. A client that leaves while its
//! body is read is a 499, one that stalls a 408, never a 502.

use std::time::{Duration, Instant};

use modelgate::demo::replica::{Replica, ReplicaHandle};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const KEY: &str = "sk-premium-0123456789";

/// Routes `premium` (model `llama-3-8b-lora-premium`, with `auth`) and `free` (model
/// `llama-3-8b`) on `/v1`, both to one replica, and a sibling route for `qwen/`
/// models that sets `sibling` (e.g. `stream_usage = true`, or nothing); the plain route
/// `plain` on `/plain`; a 2 s `body_read_timeout`.
async fn endpoint(sibling: &str) -> (ReplicaHandle, TestProxy, tempfile::TempDir) {
    endpoint_with(sibling, "").await
}

/// [`endpoint`] with `llama` lines added to `[upstream.llama]`.
async fn endpoint_with(
    sibling: &str,
    llama: &str,
) -> (ReplicaHandle, TestProxy, tempfile::TempDir) {
    let replica = Replica::builder("r")
        .models(["llama-3-8b", "llama-3-8b-lora-premium", "qwen/x"])
        .spawn()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, format!("premium: {KEY}\n")).unwrap();
    let backends = backend_list(&[&replica]);
    let proxy = TestProxy::start(&format!(
        r#"
[listen]
http = "{{http}}"
admin = "{{admin}}"
body_read_timeout = "2s"

[[route]]
name = "plain"
path = "/plain"
upstream = "llama"

[[route]]
name = "premium"
path = "/v1"
model = "llama-3-8b-lora-premium"
api = "openai"
upstream = "llama"
auth = {{ api_keys_file = "{}" }}

[[route]]
name = "free"
path = "/v1"
model = "llama-3-8b"
api = "openai"
upstream = "llama"

[[route]]
name = "qwen"
path = "/v1"
model_prefix = "qwen/"
api = "openai"
upstream = "qwen"
{sibling}

[upstream.llama]
backends = [{backends}]
{llama}

[upstream.qwen]
backends = [{backends}]
"#,
        keys.display()
    ))
    .await;
    (replica, proxy, dir)
}

/// The route configurations every case runs on: no sibling setting that needs the
/// whole body, and the ones that do.
const SIBLINGS: [&str; 3] = ["", "stream_usage = true", "sse_keepalive = \"5s\""];

async fn post(client: &reqwest::Client, proxy: &TestProxy, body: &str, key: bool) -> (u16, Value) {
    let mut req = client
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if key {
        req = req.bearer_auth(KEY);
    }
    status_and_body(req.send().await.unwrap()).await
}

/// 400 in OpenAI's shape naming `param`.
#[track_caller]
fn refused(answer: &(u16, Value), param: &str, body: &str) {
    let (status, v) = answer;
    assert_eq!(*status, 400, "{body}: {v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{body}: {v}");
    assert_eq!(v["error"]["code"], "bad_request", "{body}: {v}");
    assert_eq!(v["error"]["param"], param, "{body}: {v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(param), "{body}: {v}");
}

#[tokio::test]
async fn a_second_model_key_cannot_reach_a_route_with_auth() {
    for sibling in SIBLINGS {
        let (replica, proxy, _dir) = endpoint(sibling).await;
        for client in [h1(), h2()] {
            for body in [
                r#"{"model":"llama-3-8b","model":"llama-3-8b-lora-premium"}"#,
                r#"{"model":"llama-3-8b-lora-premium","messages":[],"model":"llama-3-8b"}"#,
                // Escaped, the key is still `model` to the replica's parser.
                r#"{"model":"llama-3-8b","messages":[],"mod\u0065l":"llama-3-8b-lora-premium"}"#,
                r#"{"model":"qwen/x","model":"llama-3-8b"}"#,
                r#"{"model":null,"model":"llama-3-8b-lora-premium"}"#,
            ] {
                refused(&post(&client, &proxy, body, false).await, "model", body);
                // A credential does not make it acceptable either.
                refused(&post(&client, &proxy, body, true).await, "model", body);
            }
            for (body, param) in [
                (
                    r#"{"model":"llama-3-8b","stream":false,"messages":[],"stream":true}"#,
                    "stream",
                ),
                (
                    r#"{"model":"qwen/x","stream":true,"stream_options":{"include_usage":false},"stream_options":{"include_usage":true}}"#,
                    "stream_options",
                ),
            ] {
                refused(&post(&client, &proxy, body, false).await, param, body);
            }
        }
        assert_eq!(
            replica.hits(),
            0,
            "{sibling}: a refused body reached the replica"
        );

        // Keys of the same name inside messages or other values are not top-level.
        for client in [h1(), h2()] {
            let nested = r#"{"model":"llama-3-8b","messages":[{"role":"user","content":"hi","model":"llama-3-8b-lora-premium","stream":"x"}],"metadata":{"model":"qwen/x"},"max_tokens":2}"#;
            let (status, v) = post(&client, &proxy, nested, false).await;
            assert_eq!(
                (status, &v["model"]),
                (200, &Value::from("llama-3-8b")),
                "{v}"
            );
            assert_eq!(
                replica.last_openai_request().unwrap()["model"],
                "llama-3-8b"
            );
            // The premium model itself still needs the key.
            let premium = r#"{"model":"llama-3-8b-lora-premium","max_tokens":2}"#;
            assert_eq!(post(&client, &proxy, premium, false).await.0, 401);
            assert_eq!(post(&client, &proxy, premium, true).await.0, 200);
        }
        let metrics = proxy.admin_text("/metrics").await;
        assert!(
            metrics.contains(r#"modelgate_rejected_total{reason="bad_request",upstream=""} 24"#),
            "{sibling}: {metrics}"
        );
        assert_eq!(replica.hits(), 4, "{sibling}");
    }
}

/// Cache affinity by prompt reads `messages` and `prompt`: where it does, either twice is
/// refused like a second `model` (the replica caches the last one; a key of the first
/// would send the request where the wrong prefix is cached); where it does not, the
/// proxy reads neither and passes them on.
#[tokio::test]
async fn a_second_prompt_key_is_refused_where_cache_affinity_reads_it() {
    let (replica, proxy, _dir) = endpoint_with("", "balance = \"cache_affinity\"").await;
    let twice = [
        (
            r#"{"model":"llama-3-8b","messages":[{"role":"system","content":"a"}],"max_tokens":2,"messages":[{"role":"system","content":"b"}]}"#,
            "messages",
        ),
        // Escaped, the key is still `prompt` to the replica's parser.
        (
            r#"{"prompt":"a","model":"llama-3-8b-lora-premium","pr\u006fmpt":"b","max_tokens":2}"#,
            "prompt",
        ),
    ];
    for client in [h1(), h2()] {
        for (body, param) in twice {
            refused(&post(&client, &proxy, body, false).await, param, body);
            refused(&post(&client, &proxy, body, true).await, param, body);
        }
    }
    assert_eq!(replica.hits(), 0, "a refused body reached the replica");
    // The `qwen/` route's upstream has no affinity: the same bodies pass there.
    for client in [h1(), h2()] {
        for (body, _) in twice {
            let body = body
                .replace("llama-3-8b-lora-premium", "qwen/x")
                .replace("llama-3-8b", "qwen/x");
            let (status, v) = post(&client, &proxy, &body, false).await;
            assert_eq!(status, 200, "{body}: {v}");
        }
    }
    assert_eq!(replica.hits(), 4);
}

#[tokio::test]
async fn stream_must_be_a_boolean_on_every_route() {
    for sibling in SIBLINGS {
        let (replica, proxy, _dir) = endpoint(sibling).await;
        for client in [h1(), h2()] {
            for model in ["llama-3-8b", "qwen/x"] {
                for value in [r#""true""#, "1", "0", r#""false""#, "{}"] {
                    let body = format!(r#"{{"model":"{model}","stream":{value}}}"#);
                    refused(&post(&client, &proxy, &body, false).await, "stream", &body);
                }
                // `null` is no stream, as for OpenAI's servers.
                let body = format!(r#"{{"model":"{model}","stream":null,"max_tokens":2}}"#);
                let (status, v) = post(&client, &proxy, &body, false).await;
                assert_eq!(status, 200, "{sibling} {body}: {v}");
            }
        }
        assert_eq!(replica.hits(), 4, "{sibling}");
    }
}

#[tokio::test]
async fn a_body_without_a_string_model_is_a_bad_request_where_every_route_names_one() {
    for sibling in SIBLINGS {
        let (replica, proxy, _dir) = endpoint(sibling).await;
        for client in [h1(), h2()] {
            for body in [
                r#"{"messages":[{"role":"user","content":"hi"}]}"#,
                r#"{"model":null}"#,
                r#"{"model":7}"#,
                r#"{"model":["llama-3-8b"]}"#,
                "{}",
            ] {
                refused(&post(&client, &proxy, body, false).await, "model", body);
            }
            for body in ["not json", "[1,2]", r#"{"model":"llama-3-8b"} {}"#] {
                let (status, v) = post(&client, &proxy, body, false).await;
                assert_eq!(status, 400, "{body}: {v}");
                assert_eq!(v["error"]["type"], "invalid_request_error", "{body}: {v}");
                assert_eq!(v["error"]["code"], "bad_request", "{body}: {v}");
            }
            // An unknown model is still 404.
            let (status, v) = post(&client, &proxy, r#"{"model":"gpt-9"}"#, false).await;
            assert_eq!(
                (status, &v["error"]["code"]),
                (404, &Value::from("model_not_found"))
            );
        }
        assert_eq!(replica.hits(), 0, "{sibling}");
    }
}

/// The access log line of the request with `id`, once it is written.
async fn logged(proxy: &TestProxy, id: &str) -> Value {
    proxy.access_line(id, |v| v["request_id"] == id).await
}

/// Sends an HTTP/1.1 head announcing 1000 body bytes to `path`, then 38 of them.
async fn partial_h1(proxy: &TestProxy, path: &str, id: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(proxy.http_addr())
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: {id}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(br#"{"messages":[{"role":"user","content":""#)
        .await
        .unwrap();
    s
}

/// A request body of one chunk, then an error (the client gives up: HTTP/2 resets the
/// stream) or nothing more (`stall`).
fn partial_body(stall: bool) -> reqwest::Body {
    let first = futures_util::stream::once(async {
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(
            br#"{"messages":[{"role":"user","content":""#,
        ))
    });
    let rest = futures_util::stream::once(async move {
        if stall {
            std::future::pending::<()>().await;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(std::io::Error::other("client gave up"))
    });
    reqwest::Body::wrap_stream(futures_util::StreamExt::chain(first, rest))
}

#[tokio::test]
async fn a_client_that_leaves_while_its_body_is_read_is_499_not_a_gateway_error() {
    let (_replica, proxy, _dir) = endpoint("stream_usage = true").await;
    // HTTP/1.1: part of the body, then the connection closes.
    for (path, id) in [
        ("/v1/chat/completions", "abort-h1-model"),
        ("/plain/chat", "abort-h1-plain"),
    ] {
        let s = partial_h1(&proxy, path, id).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(s);
        let line = logged(&proxy, id).await;
        assert_eq!(line["status"], 499, "{line}");
        assert_eq!(line["reject"], Value::Null, "{line}");
    }
    // HTTP/2: part of the body, then the stream is reset.
    let resp = h2()
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-request-id", "abort-h2-model")
        .body(partial_body(false))
        .send()
        .await;
    assert!(resp.is_err(), "{resp:?}");
    let line = logged(&proxy, "abort-h2-model").await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["reject"], Value::Null, "{line}");

    let metrics = proxy.admin_text("/metrics").await;
    assert!(!metrics.contains(r#"code="502""#), "{metrics}");
    assert!(!metrics.contains(r#"reason="bad_gateway""#), "{metrics}");
}

#[tokio::test]
async fn a_client_that_stalls_while_its_body_is_read_gets_408() {
    let (_replica, proxy, _dir) = endpoint("stream_usage = true").await;
    for (path, id) in [
        ("/v1/chat/completions", "stall-h1-model"),
        ("/plain/chat", "stall-h1-plain"),
    ] {
        let started = Instant::now();
        let mut s = partial_h1(&proxy, path, id).await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "{id}: no answer, connection not closed");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{id}: {text}");
        assert!(text.contains("request_timeout"), "{id}: {text}");
        assert!(started.elapsed() >= Duration::from_millis(1900), "{id}");
        let line = logged(&proxy, id).await;
        assert_eq!(
            (&line["status"], &line["reject"]),
            (&Value::from(408), &Value::from("request_timeout")),
            "{line}"
        );
    }
    // HTTP/2: read to route on the body, and forwarded as it comes.
    for (path, id) in [
        ("/v1/chat/completions", "stall-h2-model"),
        ("/plain/chat", "stall-h2-plain"),
    ] {
        let started = Instant::now();
        let resp = h2()
            .post(proxy.url(path))
            .header("content-type", "application/json")
            .header("x-request-id", id)
            .body(partial_body(true))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        let (status, v) = status_and_body(resp).await;
        assert_eq!(status, 408, "{id}: {v}");
        assert!(started.elapsed() >= Duration::from_millis(1900), "{id}");
        let line = logged(&proxy, id).await;
        assert_eq!(
            (&line["status"], &line["reject"]),
            (&Value::from(408), &Value::from("request_timeout")),
            "{line}"
        );
        if path.starts_with("/v1") {
            assert_eq!(v["error"]["code"], "request_timeout", "{v}");
        }
    }
}

/// Routes `small` (model `llama-3-8b`, `max_body = "64KiB"`) and `big` (prefix `qwen/`,
/// `max_body = "1MiB"`) on `/v1`, the first with `sibling`, and `default` on `/d`
/// (model `llama-3-8b`, no `max_body`).
async fn limits(sibling: &str) -> (ReplicaHandle, TestProxy) {
    let replica = Replica::builder("r")
        .models(["llama-3-8b", "qwen/x"])
        .spawn()
        .await
        .unwrap();
    let backends = backend_list(&[&replica]);
    let proxy = TestProxy::start(&format!(
        r#"
[listen]
http = "{{http}}"
admin = "{{admin}}"

[[route]]
name = "small"
path = "/v1"
model = "llama-3-8b"
api = "openai"
upstream = "m"
max_body = "64KiB"
{sibling}

[[route]]
name = "big"
path = "/v1"
model_prefix = "qwen/"
api = "openai"
upstream = "m"
max_body = "1MiB"

[[route]]
name = "default"
path = "/d"
model = "llama-3-8b"
api = "openai"
upstream = "m"

[upstream.m]
backends = [{backends}]
"#
    ))
    .await;
    (replica, proxy)
}

/// A chat body for `model` (first) of about `len` bytes.
fn sized(model: &str, len: usize) -> Vec<u8> {
    let mut body =
        format!(r#"{{"model":"{model}","max_tokens":1,"messages":[{{"role":"user","content":""#)
            .into_bytes();
    body.resize(len.saturating_sub(4), b'a');
    body.extend_from_slice(br#""}]}"#);
    body
}

/// The status of `body` posted to `path` over HTTP/1.1 (raw, so an answer that comes
/// before the whole body is sent is read, as curl does) or HTTP/2, with
/// `Content-Length` or chunked in 16 KiB chunks.
async fn status_of(proxy: &TestProxy, h2c: bool, path: &str, body: &[u8], chunked: bool) -> u16 {
    let chunks = || body.chunks(16 * 1024).map(bytes::Bytes::copy_from_slice);
    if h2c {
        let req = h2()
            .post(proxy.url(path))
            .header("content-type", "application/json");
        let req = if chunked {
            let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = chunks().map(Ok).collect();
            req.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
        } else {
            req.body(body.to_vec())
        };
        return req.send().await.unwrap().status().as_u16();
    }
    let s = tokio::net::TcpStream::connect(proxy.http_addr())
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {}", body.len())
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\nConnection: close\r\n\r\n"
    );
    let mut raw = head.into_bytes();
    if chunked {
        for c in chunks() {
            raw.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            raw.extend_from_slice(&c);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\n");
    } else {
        raw.extend_from_slice(body);
    }
    // The proxy may answer and close before reading it all: writing then fails.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&raw).await;
        wr
    });
    let mut answer = [0u8; 12];
    rd.read_exact(&mut answer).await.unwrap();
    drop(writer);
    let text = String::from_utf8_lossy(&answer);
    text[9..12].parse().unwrap_or_else(|_| panic!("{text:?}"))
}

#[tokio::test]
async fn body_limits_are_the_same_for_both_framings_and_every_sibling() {
    for sibling in SIBLINGS {
        let (_replica, proxy) = limits(sibling).await;
        for h2c in [false, true] {
            for chunked in [false, true] {
                for (model, len, want) in [
                    ("llama-3-8b", 60 * 1024, 200),
                    ("llama-3-8b", 100 * 1024, 413), // over its own 64 KiB
                    ("qwen/x", 900 * 1024, 200),     // the sibling's 64 KiB does not apply
                    ("qwen/x", 2 * 1024 * 1024, 413),
                ] {
                    let body = sized(model, len);
                    let got = status_of(&proxy, h2c, "/v1/chat/completions", &body, chunked).await;
                    assert_eq!(
                        got, want,
                        "{sibling:?} {model} {len} h2c={h2c} chunked={chunked}"
                    );
                }
            }
        }
        // Without max_body, a body to route on is held up to 32 MiB.
        let path = "/d/chat/completions";
        let huge = sized("llama-3-8b", 33 * 1024 * 1024);
        for chunked in [false, true] {
            let got = status_of(&proxy, false, path, &huge, chunked).await;
            assert_eq!(got, 413, "chunked={chunked}");
        }
        let fits = sized("llama-3-8b", 3 * 1024 * 1024);
        assert_eq!(status_of(&proxy, true, path, &fits, true).await, 200);
    }
}
