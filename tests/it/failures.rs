//! Failures: retry on another backend, 502, 504, 503 at the cap, malformed requests.

use std::time::Duration;

use modelgate::demo::replica::Replica;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// An address where nothing listens (quoted for a `backends` list), refusing for
/// as long as the returned socket lives.
fn dead_backend() -> (tokio::net::TcpSocket, String) {
    let (held, addr) = refusing_addr();
    (held, format!("\"{addr}\""))
}

#[tokio::test]
async fn connect_failures_are_retried_on_a_live_backend() {
    let live = Replica::builder("live").spawn().await.unwrap();
    let (_held, dead) = dead_backend();
    let backends = format!("{dead}, \"{}\"", live.addr());
    let proxy = TestProxy::start(&pool_config(
        &backends,
        "retries = 1\nbalance = \"round_robin\"\nretry_budget = { percent = 100 }",
    ))
    .await;
    for client in [h1(), h2()] {
        for i in 0..20 {
            let resp = client
                .post(proxy.url("/v1/predict"))
                .body(format!("req {i}"))
                .send()
                .await
                .unwrap();
            let (s, v) = status_and_body(resp).await;
            assert_eq!(
                (s, v["replica"].as_str()),
                (200, Some("live")),
                "request {i}"
            );
        }
    }
}

#[tokio::test]
async fn all_backends_dead_is_502_bad_gateway() {
    let ((_a, dead_a), (_b, dead_b)) = (dead_backend(), dead_backend());
    let backends = format!("{dead_a}, {dead_b}");
    let proxy = TestProxy::start(&pool_config(&backends, "retries = 1")).await;
    for client in [h1(), h2()] {
        let (s, v) = status_and_body(client.get(proxy.url("/x")).send().await.unwrap()).await;
        assert_eq!((s, v), (502, json!({"error": "bad_gateway"})));
    }
    // The proxy closes the connection after an error answer and says so, so a
    // pooling client never sends its next request into a closed socket.
    let client = h1();
    for _ in 0..5 {
        let resp = client.get(proxy.url("/x")).send().await.unwrap();
        assert_eq!(resp.headers()["connection"], "close");
        assert_eq!(resp.status(), 502);
    }
}

#[tokio::test]
async fn no_response_headers_in_time_is_504_gateway_timeout() {
    let slow = Replica::builder("slow")
        .delay(Duration::from_secs(5))
        .spawn()
        .await
        .unwrap();
    let backends = format!("\"{}\"", slow.addr());
    let proxy = TestProxy::start(&pool_config(
        &backends,
        "first_byte_timeout = \"300ms\"\nidle_timeout = \"300ms\"",
    ))
    .await;
    for client in [h1(), h2()] {
        let started = std::time::Instant::now();
        let (s, v) = status_and_body(client.get(proxy.url("/x")).send().await.unwrap()).await;
        assert_eq!((s, v), (504, json!({"error": "gateway_timeout"})));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_full_pool_without_a_queue_answers_503_overloaded_at_once() {
    let slow = Replica::builder("slow")
        .delay(Duration::from_secs(3))
        .spawn()
        .await
        .unwrap();
    let backends = format!("\"{}\"", slow.addr());
    let proxy = TestProxy::start(&pool_config(
        &backends,
        "max_inflight = 1\nqueue = { size = 0 }",
    ))
    .await;
    let busy = tokio::spawn(h1().get(proxy.url("/busy")).send());
    eventually("the slow replica is busy", PATIENCE, || async {
        slow.inflight() == 1
    })
    .await;
    for client in [h1(), h2()] {
        let resp = client.get(proxy.url("/extra")).send().await.unwrap();
        assert_eq!(resp.headers()["retry-after"], "1");
        let (s, v) = status_and_body(resp).await;
        assert_eq!((s, v), (503, json!({"error": "overloaded"})));
    }
    assert_eq!(busy.await.unwrap().unwrap().status(), 200);
    assert_eq!(slow.max_inflight(), 1, "the cap held");
}

#[tokio::test]
async fn malformed_requests_get_400_and_others_keep_being_served() {
    let ok = Replica::builder("ok").spawn().await.unwrap();
    let proxy = TestProxy::start(&pool_config(&format!("\"{}\"", ok.addr()), "")).await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"[..],
        &b"\x16\x03\x01\x00\xa5garbage that is not http\r\n\r\n"[..],
        &b"GET /\x01\x02 HTTP/1.1\r\n\r\n"[..],
    ] {
        let mut s = tokio::net::TcpStream::connect(proxy.http_addr())
            .await
            .unwrap();
        s.write_all(garbage).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 400"),
            "a 400 or a closed connection, got {text:?}"
        );
        let resp = h1().get(proxy.url("/still-ok")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let ok = Replica::builder("ok").spawn().await.unwrap();
    let proxy = TestProxy::start(&pool_config(&format!("\"{}\"", ok.addr()), "")).await;
    // Over HTTP/2 the h2 layer itself answers 431 (header list over its limit), without a body.
    for (client, body) in [
        (h1(), json!({"error": "headers_too_large"})),
        (h2(), Value::Null),
    ] {
        let big = "x".repeat(8 * 1024);
        let mut req = client.get(proxy.url("/"));
        for i in 0..10 {
            req = req.header(format!("x-big-{i}"), &big);
        }
        let (s, v) = status_and_body(req.send().await.unwrap()).await;
        assert_eq!((s, v), (431, body));
        assert_eq!(
            client.get(proxy.url("/")).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(
        ok.hits(),
        2,
        "the oversized requests never reached the replica"
    );
}

/// In-flight counts as the admin endpoint reports them, per backend address.
async fn proxy_inflight(proxy: &TestProxy) -> Vec<u64> {
    let v: Value = proxy.admin_json("/upstreams").await;
    v["upstreams"]["pool"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["inflight"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn inflight_counts_return_to_zero_on_every_exit_path() {
    let fast = Replica::builder("fast").spawn().await.unwrap();
    let slow = Replica::builder("slow")
        .delay(Duration::from_secs(30))
        .spawn()
        .await
        .unwrap();
    let (_held, dead) = dead_backend();
    let backends = format!("{dead}, \"{}\", \"{}\"", fast.addr(), slow.addr());
    let proxy = TestProxy::start(&pool_config(
        &backends,
        "retries = 2\nbalance = \"round_robin\"",
    ))
    .await;

    // Successes and retries past the dead backend.
    for _ in 0..6 {
        let _ = h1()
            .get(proxy.url("/quick"))
            .timeout(Duration::from_millis(200))
            .send()
            .await;
    }
    // Client aborts while the slow replica works: the proxy must drop the upstream
    // request too, so the replica sees its connection close long before 30 s.
    for client in [h1(), h2()] {
        let req = client
            .get(proxy.url("/abandoned"))
            .timeout(Duration::from_millis(300))
            .send();
        let _ = tokio::spawn(req).await;
    }
    eventually("proxy in-flight counts return to 0", PATIENCE, || async {
        proxy_inflight(&proxy).await.iter().all(|&n| n == 0)
    })
    .await;
    eventually(
        "the slow replica sees the aborted requests go",
        PATIENCE,
        || async { slow.inflight() == 0 },
    )
    .await;
    assert!(slow.hits() >= 1, "some requests reached the slow replica");
}
