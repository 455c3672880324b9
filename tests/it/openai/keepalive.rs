//! `sse_keepalive`: a streaming request queued longer than the interval gets its
//! `200 text/event-stream` head early and `: keep-alive` comments until a replica
//! answers, then the replica's stream; failures become one SSE error event; a
//! client that leaves while queued leaves the queue.

use std::time::Duration;

use futures_util::StreamExt;
use modelgate::demo::replica::{Replica, ReplicaHandle};
use serde_json::{json, Value};

use super::{chat, sse_events};
use crate::support::*;

/// One replica with one slot behind a cap of 1, so a second request queues.
async fn setup(queue_timeout: &str) -> (ReplicaHandle, TestProxy) {
    let r = Replica::builder("r")
        .models(["m"])
        .concurrency(1)
        .token_interval(Duration::from_millis(50))
        .spawn()
        .await
        .unwrap();
    let proxy = TestProxy::start(&format!(
        r#"
[listen]
http = "{{http}}"
admin = "{{admin}}"

[[route]]
name = "chat"
path = "/v1"
model = "m"
api = "openai"
upstream = "m"
sse_keepalive = "200ms"

[upstream.m]
backends = ["{}"]
max_inflight = 1
queue = {{ size = 4, timeout = "{queue_timeout}" }}
"#,
        r.addr()
    ))
    .await;
    (r, proxy)
}

/// A streamed chat of `tokens` tokens (50 ms each on the replica).
fn stream_body(tokens: u64) -> Value {
    let mut body = chat("m", "hello", true);
    body["max_tokens"] = json!(tokens);
    body
}

async fn queued(proxy: &TestProxy) -> u64 {
    proxy.admin_json("/upstreams").await["upstreams"]["m"]["queued"]
        .as_u64()
        .unwrap_or(0)
}

/// Holds the only slot until the returned response is read to its end.
async fn occupy(client: &reqwest::Client, proxy: &TestProxy, tokens: u64) -> reqwest::Response {
    let resp = client
        .post(proxy.url("/v1/chat/completions"))
        .json(&stream_body(tokens))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

/// Reads the whole body as text, chunk by chunk, noting how many `: keep-alive`
/// comments came before the first `data:` event.
async fn read_stream(resp: reqwest::Response) -> (String, usize) {
    let mut text = String::new();
    let mut comments_first = None;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        if comments_first.is_none() && text.contains("data:") {
            let head = &text[..text.find("data:").unwrap_or(0)];
            comments_first = Some(head.matches(": keep-alive\n\n").count());
        }
    }
    (text, comments_first.unwrap_or(0))
}

async fn queued_stream_is_kept_alive_then_spliced(client: reqwest::Client) {
    let (r, proxy) = setup("30s").await;
    let blocker = occupy(&client, &proxy, 20).await; // about 1 s of tokens
    let waiting = tokio::spawn({
        let client = client.clone();
        let url = proxy.url("/v1/chat/completions");
        async move {
            let resp = client.post(url).json(&stream_body(3)).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-type"], "text/event-stream");
            assert!(resp.headers().contains_key("x-request-id"));
            read_stream(resp).await
        }
    });
    let (blocked, _) = read_stream(blocker).await;
    assert!(blocked.ends_with("data: [DONE]\n\n"), "{blocked}");
    let (text, comments) = waiting.await.unwrap();
    assert!(
        comments >= 2,
        "{comments} comments before the stream: {text:?}"
    );
    let events = sse_events(text.trim_start_matches(": keep-alive\n\n"));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(r.hits(), 2);

    // A request that gets its slot within the interval is proxied as usual: the
    // replica's own head.
    let resp = client
        .post(proxy.url("/v1/chat/completions"))
        .json(&stream_body(2))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-replica"], "r");
    let (text, comments) = read_stream(resp).await;
    assert_eq!(comments, 0, "{text}");
}

#[tokio::test]
async fn queued_stream_is_kept_alive_then_spliced_http1() {
    queued_stream_is_kept_alive_then_spliced(h1()).await;
}

#[tokio::test]
async fn queued_stream_is_kept_alive_then_spliced_h2c() {
    queued_stream_is_kept_alive_then_spliced(h2()).await;
}

async fn queue_timeout_ends_the_stream_with_an_error_event(client: reqwest::Client) {
    let (_r, proxy) = setup("700ms").await;
    let blocker = occupy(&client, &proxy, 60).await; // about 3 s
    let resp = client
        .post(proxy.url("/v1/chat/completions"))
        .header("accept", "text/event-stream")
        .json(&chat("m", "hello", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (text, comments) = read_stream(resp).await;
    assert!(comments >= 2, "{text:?}");
    let events = sse_events(text.trim_start_matches(": keep-alive\n\n"));
    assert_eq!(events.len(), 1, "{text:?}");
    let e: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(e["error"]["code"], "queue_timeout", "{e}");
    assert!(e["error"]["message"].is_string());
    drop(blocker);
}

#[tokio::test]
async fn queue_timeout_ends_the_stream_with_an_error_event_http1() {
    queue_timeout_ends_the_stream_with_an_error_event(h1()).await;
}

#[tokio::test]
async fn queue_timeout_ends_the_stream_with_an_error_event_h2c() {
    queue_timeout_ends_the_stream_with_an_error_event(h2()).await;
}

async fn client_leaving_a_kept_alive_stream_leaves_the_queue(client: reqwest::Client) {
    let (r, proxy) = setup("30s").await;
    let blocker = occupy(&client, &proxy, 40).await; // about 2 s
    let resp = client
        .post(proxy.url("/v1/chat/completions"))
        .json(&stream_body(3))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert_eq!(&first[..], b": keep-alive\n\n");
    assert_eq!(queued(&proxy).await, 1);
    drop(body);
    eventually("the waiter left", Duration::from_secs(10), || async {
        queued(&proxy).await == 0
    })
    .await;
    let (text, _) = read_stream(blocker).await;
    assert!(text.ends_with("data: [DONE]\n\n"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        r.hits(),
        1,
        "the request of the client that left was not sent"
    );
}

#[tokio::test]
async fn client_leaving_a_kept_alive_stream_leaves_the_queue_http1() {
    client_leaving_a_kept_alive_stream_leaves_the_queue(h1()).await;
}

#[tokio::test]
async fn client_leaving_a_kept_alive_stream_leaves_the_queue_h2c() {
    client_leaving_a_kept_alive_stream_leaves_the_queue(h2()).await;
}
