//! Whether a request is a stream is the body's to say: `"stream": false` (or no
//! `stream`) with `Accept: text/event-stream` is answered as the replica answers it,
//! JSON, never an early `text/event-stream` head followed by raw JSON.

use serde_json::{json, Value};

use super::fixture::*;
use crate::support::*;

async fn accept_does_not_make_a_json_request_a_stream(client: reqwest::Client) {
    let r = replica("r", 1, 50).await;
    let proxy = front(
        r#"sse_keepalive = "200ms""#,
        &format!(
            "{}\nmax_inflight = 1\nqueue = {{ size = 4, timeout = \"30s\" }}",
            backends(&[&r])
        ),
    )
    .await;
    let url = proxy.url("/v1/chat/completions");
    let mut no_stream = chat("m", "hello", false);
    no_stream.as_object_mut().unwrap().remove("stream");
    for body in [chat("m", "hello", false), no_stream] {
        // The only slot is busy for about a second: the request waits past the interval.
        let blocker = occupy(&client, &proxy, 20).await;
        let resp = client
            .post(&url)
            .header("accept", "text/event-stream")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{body}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{body}");
        assert_eq!(resp.headers()["x-replica"], "r", "{body}");
        let text = resp.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert_eq!(v["object"], "chat.completion", "{text}");
        let (blocked, _) = read_stream(blocker).await;
        assert!(blocked.ends_with("data: [DONE]\n\n"), "{blocked}");
    }

    // `"stream": true` is kept alive whatever the Accept says.
    let blocker = occupy(&client, &proxy, 20).await;
    let resp = client
        .post(&url)
        .header("accept", "application/json")
        .json(&json!({"model": "m", "stream": true, "max_tokens": 2, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (text, comments) = read_stream(resp).await;
    assert!(comments >= 1, "{text:?}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    read_stream(blocker).await;
}

#[tokio::test]
async fn accept_does_not_make_a_json_request_a_stream_http1() {
    accept_does_not_make_a_json_request_a_stream(h1()).await;
}

#[tokio::test]
async fn accept_does_not_make_a_json_request_a_stream_h2c() {
    accept_does_not_make_a_json_request_a_stream(h2()).await;
}
