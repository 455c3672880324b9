//! `sse_keepalive`: a streaming request queued longer than the interval gets its
//! `200 text/event-stream` head early and `: keep-alive` comments until a replica
//! answers, then the replica's stream (also from a second replica when the first
//! refuses before its first byte); failures become one SSE error event; a client
//! that leaves while queued leaves the queue and is counted.

use std::time::Duration;

use futures_util::StreamExt;
use modelgate::demo::replica::ReplicaHandle;
use serde_json::Value;

use super::fixture::*;
use crate::support::*;

/// One replica with one slot behind a cap of 1, so a second request queues.
async fn setup(queue_timeout: &str) -> (ReplicaHandle, TestProxy) {
    let r = replica("r", 1, 50).await;
    let proxy = front(
        r#"sse_keepalive = "200ms""#,
        &format!(
            "{}\nmax_inflight = 1\nqueue = {{ size = 4, timeout = \"{queue_timeout}\" }}",
            backends(&[&r])
        ),
    )
    .await;
    (r, proxy)
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
    let events = events_after_keepalives(&text);
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
        .json(&chat("m", "hello", true))
        .send()
        .await
        .unwrap();
    expect_error_event(resp, "queue_timeout").await;
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

#[tokio::test]
async fn client_leaving_a_kept_alive_stream_frees_its_place_http1() {
    client_leaving_the_queue_frees_its_place(h1(), true, true).await;
}

#[tokio::test]
async fn client_leaving_a_kept_alive_stream_frees_its_place_h2c() {
    client_leaving_the_queue_frees_its_place(h2(), true, true).await;
}

#[tokio::test]
async fn client_leaving_the_queue_frees_its_place_http1() {
    client_leaving_the_queue_frees_its_place(h1(), true, false).await;
}

#[tokio::test]
async fn client_leaving_the_queue_frees_its_place_h2c() {
    client_leaving_the_queue_frees_its_place(h2(), true, false).await;
}

/// Two replicas of one slot each, both busy; the first to free up refuses (503)
/// before its first byte. The queued stream already has its early head: the retry
/// waits for the other replica with keep-alives and splices its stream in.
async fn retry_after_the_early_head_splices_the_second_stream(client: reqwest::Client) {
    let a = replica("a", 1, 50).await;
    let b = replica("b", 1, 50).await;
    let proxy = front(
        r#"sse_keepalive = "200ms""#,
        &format!(
            "{}\nmax_inflight = 1\nretries = 1\nqueue = {{ size = 4, timeout = \"30s\" }}",
            backends(&[&a, &b])
        ),
    )
    .await;
    let short = occupy(&client, &proxy, 16).await; // about 0.8 s
    let long = occupy(&client, &proxy, 60).await; // about 3 s
    let (refusing, other) = match short.headers()["x-replica"].to_str().unwrap() {
        "a" => (&a, &b),
        _ => (&b, &a),
    };
    assert_ne!(long.headers()["x-replica"], short.headers()["x-replica"]);
    refusing.set_fail(Some(503));
    let waiting = tokio::spawn({
        let req = client
            .post(proxy.url("/v1/chat/completions"))
            .json(&stream_body(3));
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-type"], "text/event-stream");
            read_stream(resp).await
        }
    });
    let (text, _) = read_stream(short).await;
    assert!(text.ends_with("data: [DONE]\n\n"));
    eventually("the refusal", Duration::from_secs(10), || async {
        refusing.hits() == 2
    })
    .await;
    let (text, _) = read_stream(long).await;
    assert!(text.ends_with("data: [DONE]\n\n"));
    let (text, comments) = waiting.await.unwrap();
    assert!(comments >= 2, "{text:?}");
    let events = events_after_keepalives(&text);
    assert!(!text.contains("\"error\""), "{text:?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!((refusing.hits(), other.hits()), (2, 2));
    // Metrics are recorded when a request is logged, which can follow its last byte.
    let retried = r#"modelgate_retries_total{upstream="m"} "#;
    eventually("the retry counted", PATIENCE, || async {
        metric_value(&proxy, retried).await == 1.0
    })
    .await;
}

#[tokio::test]
async fn retry_after_the_early_head_splices_the_second_stream_http1() {
    retry_after_the_early_head_splices_the_second_stream(h1()).await;
}

#[tokio::test]
async fn retry_after_the_early_head_splices_the_second_stream_h2c() {
    retry_after_the_early_head_splices_the_second_stream(h2()).await;
}

/// The proxy's own overload answers on an OpenAI route (a request that does not
/// stream): OpenAI's error shape with `Retry-After`, for a full queue and for a
/// queue timeout.
async fn overload_answers_take_openai_shape(client: reqwest::Client) {
    let r = replica("r", 1, 50).await;
    let proxy = front(
        "",
        &format!(
            "{}\nmax_inflight = 1\nqueue = {{ size = 1, timeout = \"700ms\" }}",
            backends(&[&r])
        ),
    )
    .await;
    let blocker = occupy(&client, &proxy, 60).await; // about 3 s
    let post = || {
        client
            .post(proxy.url("/v1/chat/completions"))
            .json(&chat("m", "hello", false))
            .send()
    };
    let waiting = tokio::spawn(post());
    eventually("one queued", Duration::from_secs(10), || async {
        queued(&proxy).await == 1
    })
    .await;
    for (resp, code) in [
        (post().await.unwrap(), "overloaded"),
        (waiting.await.unwrap().unwrap(), "queue_timeout"),
    ] {
        assert!(resp.headers().contains_key("retry-after"), "{code}");
        let (status, v) = status_and_body(resp).await;
        assert_eq!(status, 503);
        assert_eq!(v["error"]["code"], code, "{v}");
        assert_eq!(v["error"]["type"], "server_error", "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    drop(blocker);
}

#[tokio::test]
async fn overload_answers_take_openai_shape_http1() {
    overload_answers_take_openai_shape(h1()).await;
}

#[tokio::test]
async fn overload_answers_take_openai_shape_h2c() {
    overload_answers_take_openai_shape(h2()).await;
}

/// A client that leaves while queued is seen leaving at once, not at the next
/// keep-alive write (a write to a closed socket only fails once the reset is back).
/// The interval is long (3 s) and the queue holds one: the waiter must leave well
/// before a second comment could tell, a new client must get its place (not 503
/// overloaded), the freed slot must never carry the dead request to the replica,
/// and it is counted as a 499 and a client abort with its real queue wait.
/// `keepalive`: the route has `sse_keepalive`; `stream`: the request streams (with
/// both, its early head went out before the client left).
async fn client_leaving_the_queue_frees_its_place(
    client: reqwest::Client,
    keepalive: bool,
    stream: bool,
) {
    let r = replica("r", 1, 50).await;
    let proxy = front(
        if keepalive {
            r#"sse_keepalive = "3s""#
        } else {
            ""
        },
        &format!(
            "{}\nmax_inflight = 1\nqueue = {{ size = 1, timeout = \"60s\" }}",
            backends(&[&r])
        ),
    )
    .await;
    let blocker = occupy(&client, &proxy, 140).await; // about 7 s
    let body = if stream {
        stream_body(3)
    } else {
        chat("m", "hello", false)
    };
    let leaving = client
        .post(proxy.url("/v1/chat/completions"))
        .json(&body)
        .send();
    let early_head = keepalive && stream;
    if early_head {
        let resp = leaving.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.bytes_stream();
        let first = body.next().await.unwrap().unwrap();
        assert_eq!(&first[..], KEEPALIVE.as_bytes());
        assert_eq!(queued(&proxy).await, 1);
        drop(body);
    } else {
        let leaving = tokio::spawn(leaving);
        eventually("queued", PATIENCE, || async { queued(&proxy).await == 1 }).await;
        assert!(
            !leaving.is_finished(),
            "answered while the only slot was taken"
        );
        leaving.abort();
    }
    // Before the next comment (3 s on) could reveal the closed connection.
    eventually("the waiter left", Duration::from_secs(2), || async {
        queued(&proxy).await == 0
    })
    .await;
    // The place is free: the next request waits first in line and is served.
    let next = tokio::spawn(
        client
            .post(proxy.url("/v1/chat/completions"))
            .json(&chat("m", "next", false))
            .send(),
    );
    eventually("the next one queued", PATIENCE, || async {
        queued(&proxy).await == 1
    })
    .await;
    let (text, _) = read_stream(blocker).await;
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(next.await.unwrap().unwrap().status(), 200);
    assert_eq!(r.hits(), 2, "the request of the client that left was sent");
    // The access log line is queued last when a request is logged: its metrics are in.
    eventually("access log lines", PATIENCE, || async {
        access_lines(&proxy).len() == 3
    })
    .await;
    assert_eq!(aborts(&proxy).await, 1.0);
    assert_eq!(answered(&proxy, 499).await, 1.0);
    assert_eq!(answered(&proxy, 200).await, 2.0);
    let lines = access_lines(&proxy);
    let left: Vec<_> = lines.iter().filter(|l| l["status"] == 499).collect();
    assert_eq!(left.len(), 1, "{}", proxy.logs());
    let waited = left[0]["queue_wait"].as_f64().unwrap();
    let floor = if early_head { 3.0 } else { 0.0 };
    assert!(
        waited > floor && waited < 5.0,
        "queue_wait {waited}: {}",
        proxy.logs()
    );
}

#[tokio::test]
async fn client_leaving_a_stream_without_keepalive_frees_its_place_http1() {
    client_leaving_the_queue_frees_its_place(h1(), false, true).await;
}

#[tokio::test]
async fn client_leaving_a_stream_without_keepalive_frees_its_place_h2c() {
    client_leaving_the_queue_frees_its_place(h2(), false, true).await;
}

/// Sends a stream that queues behind `blocker` (long enough for its early head),
/// lets the blocker finish and returns the queued stream's one error event.
async fn queued_stream_error(
    client: &reqwest::Client,
    proxy: &TestProxy,
    blocker: reqwest::Response,
    before_slot_frees: impl FnOnce(),
) -> Value {
    let waiting = tokio::spawn({
        let req = client
            .post(proxy.url("/v1/chat/completions"))
            .json(&stream_body(3));
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            read_stream(resp).await
        }
    });
    eventually("queued", PATIENCE, || async { queued(proxy).await == 1 }).await;
    before_slot_frees();
    let (text, _) = read_stream(blocker).await;
    assert!(text.ends_with("data: [DONE]\n\n"));
    let (text, comments) = waiting.await.unwrap();
    assert!(comments >= 1, "{text:?}");
    let events = events_after_keepalives(&text);
    assert_eq!(events.len(), 1, "{text:?}");
    serde_json::from_str(&events[0]).unwrap()
}

/// A replica that answers a queued stream (its head already sent) with an error
/// before any byte: the error event carries the replica's status and message (its
/// own JSON when OpenAI-shaped, wrapped otherwise), and the request is counted and
/// logged with the replica's status, not as a 502 of the proxy.
async fn a_replica_error_after_the_early_head_is_relayed(client: reqwest::Client) {
    let (r, proxy) = setup("30s").await;

    // OpenAI-shaped (the mock answers an unknown model as vLLM does): passed on.
    let blocker = occupy(&client, &proxy, 20).await; // about 1 s
    let e = queued_stream_error(&client, &proxy, blocker, || r.set_models(["other"])).await;
    assert_eq!(e["error"]["code"], 404, "{e}");
    assert_eq!(
        e["error"]["message"], "The model `m` does not exist.",
        "{e}"
    );

    // Not OpenAI-shaped: wrapped, the replica's text as the message.
    r.set_models(["m"]);
    let blocker = occupy(&client, &proxy, 20).await;
    // The mock's body is `{"error": "injected", ...}`: that string is the message, and
    // the code a string, as OpenAI's and modelgate's own are.
    let e = queued_stream_error(&client, &proxy, blocker, || r.set_fail(Some(500))).await;
    assert_eq!(e["error"]["code"], "upstream_error", "{e}");
    assert_eq!(e["error"]["type"], "server_error", "{e}");
    assert_eq!(e["error"]["message"], "injected", "{e}");

    // The access log line is queued last when a request is logged: its metrics are in.
    eventually("access log lines", PATIENCE, || async {
        access_lines(&proxy).len() == 4
    })
    .await;
    assert_eq!(answered(&proxy, 404).await, 1.0);
    assert_eq!(answered(&proxy, 500).await, 1.0);
    assert_eq!(answered(&proxy, 502).await, 0.0);
    let mut statuses: Vec<_> = access_lines(&proxy)
        .iter()
        .map(|l| (l["status"].as_u64().unwrap(), l["reject"].clone()))
        .collect();
    statuses.sort_unstable_by_key(|(s, _)| *s);
    // The failed streams' log lines name why (not counted as the proxy's rejects).
    let failed = Value::from("upstream_error");
    assert_eq!(
        statuses,
        [
            (200, Value::Null),
            (200, Value::Null),
            (404, failed.clone()),
            (500, failed)
        ],
        "{}",
        proxy.logs()
    );
}

#[tokio::test]
async fn a_replica_error_after_the_early_head_is_relayed_http1() {
    a_replica_error_after_the_early_head_is_relayed(h1()).await;
}

#[tokio::test]
async fn a_replica_error_after_the_early_head_is_relayed_h2c() {
    a_replica_error_after_the_early_head_is_relayed(h2()).await;
}
