//! Tests for the in-process mock replica and the WebSocket echo helper.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use modelgate::demo::replica::{Replica, ReplicaHandle};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::support::*;

fn url(r: &ReplicaHandle, path: &str) -> String {
    format!("http://{}{path}", r.addr())
}

fn xhex(h: u64) -> String {
    format!("{h:016x}")
}

async fn json(resp: reqwest::Response) -> Value {
    resp.json().await.expect("JSON body")
}

/// Splits an SSE text into its `data:` payloads.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|ev| ev.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

async fn exercise_endpoints(client: reqwest::Client, version: &str) {
    let r = Replica::builder("alpha").spawn().await.unwrap();

    // health
    let resp = client.get(url(&r, "/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-replica"], "alpha");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.version(), client_version(version));
    let body = json(resp).await;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["replica"], "alpha");
    assert_eq!(r.health_checks(), 1);
    assert_eq!(r.hits(), 0);

    // predict
    let resp = client
        .post(url(&r, "/v1/predict"))
        .body("hello world")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-replica"], "alpha");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = json(resp).await;
    assert_eq!(body["replica"], "alpha");
    assert_eq!(body["model"], "demo");
    assert_eq!(body["bytes"], 11);
    assert_eq!(body["xxh3"], xhex(xxh3_64(b"hello world")));
    assert_eq!(body["output"], "dlrow olleh");

    // echo
    let resp = client
        .put(url(&r, "/some/where?x=1&y=two"))
        .header("x-test", "a")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .body(vec![7u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-replica"], "alpha");
    let body = json(resp).await;
    assert_eq!(body["replica"], "alpha");
    assert_eq!(body["method"], "PUT");
    assert_eq!(body["path"], "/some/where?x=1&y=two");
    assert_eq!(body["version"], version);
    assert_eq!(body["headers"]["x-test"], "a");
    assert_eq!(body["headers"]["x-multi"], "one, two");
    assert_eq!(body["bytes"], 1000);
    assert_eq!(body["xxh3"], xhex(xxh3_64(&[7u8; 1000])));

    // GET echo without body
    let body = json(client.get(url(&r, "/")).send().await.unwrap()).await;
    assert_eq!(body["method"], "GET");
    assert_eq!(body["path"], "/");
    assert_eq!(body["bytes"], 0);

    // stream
    let resp = client
        .get(url(&r, "/v1/stream?tokens=3&interval_ms=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert_eq!(resp.headers()["x-replica"], "alpha");
    let data = sse_data(&resp.text().await.unwrap());
    assert_eq!(data.len(), 4, "{data:?}");
    for (i, d) in data[..3].iter().enumerate() {
        let ev: Value = serde_json::from_str(d).unwrap();
        assert_eq!(ev["replica"], "alpha");
        assert_eq!(ev["index"], i);
        assert!(ev["token"].is_string());
    }
    assert_eq!(data[3], "[DONE]");

    assert_eq!(r.hits(), 4);
    assert_eq!(r.health_checks(), 1);
    eventually("inflight back to 0", PATIENCE, || async {
        r.inflight() == 0
    })
    .await;
    r.shutdown();
}

fn client_version(v: &str) -> reqwest::Version {
    match v {
        "HTTP/2.0" => reqwest::Version::HTTP_2,
        _ => reqwest::Version::HTTP_11,
    }
}

#[tokio::test]
async fn endpoints_over_http1() {
    exercise_endpoints(h1(), "HTTP/1.1").await;
}

#[tokio::test]
async fn endpoints_over_h2c() {
    exercise_endpoints(h2(), "HTTP/2.0").await;
}

#[tokio::test]
async fn default_stream_has_eight_tokens() {
    let r = Replica::builder("d")
        .token_interval(Duration::from_millis(1))
        .spawn()
        .await
        .unwrap();
    let text = h1()
        .get(url(&r, "/v1/stream"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    assert_eq!(data.len(), 9, "{text}");
    assert_eq!(data[8], "[DONE]");
}

async fn sse_is_spaced(client: reqwest::Client) {
    let r = Replica::builder("sse").spawn().await.unwrap();
    let start = Instant::now();
    let resp = client
        .get(url(&r, "/v1/stream?tokens=5&interval_ms=100"))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut seen = 0;
    let mut arrivals = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        let complete = buf.matches("\n\n").count();
        for _ in seen..complete {
            arrivals.push(start.elapsed());
        }
        seen = complete;
    }
    let end = start.elapsed();
    let data = sse_data(&buf);
    assert_eq!(data.len(), 6, "{buf}");
    assert_eq!(data[5], "[DONE]");
    // The first token comes right away, long before the stream ends.
    assert!(
        end - arrivals[0] >= Duration::from_millis(300),
        "first token at {:?}, end at {end:?}",
        arrivals[0]
    );
    // Tokens arrive one interval apart, not in one burst.
    for w in arrivals[..5].windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(60),
            "tokens not spaced: {arrivals:?}"
        );
    }
    r.shutdown();
}

#[tokio::test]
async fn sse_tokens_arrive_spaced_http1() {
    sse_is_spaced(h1()).await;
}

#[tokio::test]
async fn sse_tokens_arrive_spaced_h2c() {
    sse_is_spaced(h2()).await;
}

async fn shutdown_kills_in_flight(client: reqwest::Client) {
    let r = Replica::builder("doomed")
        .delay(Duration::from_secs(30))
        .spawn()
        .await
        .unwrap();
    let addr = r.addr();
    let req = tokio::spawn(client.post(url(&r, "/v1/predict")).body("x").send());
    eventually("request in flight", PATIENCE, || async {
        r.inflight() == 1
    })
    .await;

    // A stream that is mid-way is cut too.
    let resp = client
        .get(url(&r, "/v1/stream?tokens=100000&interval_ms=5"))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    assert_eq!(r.inflight(), 2);

    let t = Instant::now();
    r.shutdown();
    r.shutdown(); // idempotent
    let res = tokio::time::timeout(Duration::from_secs(5), req)
        .await
        .expect("in-flight request should fail promptly after shutdown")
        .unwrap();
    assert!(res.is_err(), "expected a connection error, got {res:?}");
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(item) = stream.next().await {
            if item.is_err() {
                return true;
            }
        }
        false
    })
    .await
    .expect("stream should end promptly after shutdown");
    assert!(rest, "stream should end with an error, not cleanly");
    assert!(t.elapsed() < Duration::from_secs(5));

    eventually("inflight drops to 0", PATIENCE, || async {
        r.inflight() == 0
    })
    .await;
    eventually("new connections refused", PATIENCE, || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
}

/// A killed replica's port stays bound while its handle lives: connections are
/// refused, as by a dead server, rather than reaching another test's listener that a
/// bind to port 0 was handed the port (a port left in TIME_WAIT by cut connections
/// is not handed out either, but one that never served is free at once). A replica
/// can still be started again on the address.
#[tokio::test]
async fn a_killed_replica_keeps_its_port_refusing() {
    let r = Replica::builder("gone").spawn().await.unwrap();
    let addr = r.addr();
    r.shutdown();
    eventually("new connections refused", PATIENCE, || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    // A bind that does not share addresses, as a bind to port 0 never does.
    let exclusive = tokio::net::TcpSocket::new_v4().unwrap().bind(addr);
    assert_eq!(
        exclusive.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::AddrInUse)
    );
    let again = Replica::builder("again").bind(addr).spawn().await.unwrap();
    let resp = h1().get(url(&again, "/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn shutdown_kills_in_flight_http1() {
    shutdown_kills_in_flight(h1()).await;
}

#[tokio::test]
async fn shutdown_kills_in_flight_h2c() {
    shutdown_kills_in_flight(h2()).await;
}

#[tokio::test]
async fn inflight_and_max_inflight() {
    let r = Replica::builder("busy")
        .delay(Duration::from_millis(500))
        .spawn()
        .await
        .unwrap();
    let client = h1();
    let reqs: Vec<_> = (0..5)
        .map(|i| {
            tokio::spawn(
                client
                    .post(url(&r, "/v1/predict"))
                    .body(format!("req {i}"))
                    .send(),
            )
        })
        .collect();
    eventually("5 in flight", PATIENCE, || async { r.inflight() == 5 }).await;
    for req in reqs {
        let resp = req.await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    eventually("all done", PATIENCE, || async { r.inflight() == 0 }).await;
    assert_eq!(r.max_inflight(), 5);
    assert_eq!(r.hits(), 5);
    r.shutdown();
}

async fn big_streamed_post(client: reqwest::Client) {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 20 * 1024 * 1024;
    let r = Replica::builder("big").spawn().await.unwrap();
    let chunks: Vec<bytes::Bytes> = (0..TOTAL / CHUNK)
        .map(|i| {
            bytes::Bytes::from(
                (0..CHUNK)
                    .map(|j| ((i * 31 + j * 7) % 251) as u8)
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let mut hasher = Xxh3::new();
    for c in &chunks {
        hasher.update(c);
    }
    let expected = xhex(hasher.digest());
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let resp = client
        .post(url(&r, "/v1/predict"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    assert_eq!(body["bytes"], TOTAL);
    assert_eq!(body["xxh3"], expected);
    assert!(body["output"].is_string());
    r.shutdown();
}

#[tokio::test]
async fn big_streamed_post_http1() {
    big_streamed_post(h1()).await;
}

#[tokio::test]
async fn big_streamed_post_h2c() {
    big_streamed_post(h2()).await;
}

#[tokio::test]
async fn fail_mode_and_health_toggles() {
    let r = Replica::builder("flaky")
        .fail_with(503)
        .health_status(500)
        .spawn()
        .await
        .unwrap();
    let client = h1();
    for path in ["/v1/predict", "/anything"] {
        let resp = client.post(url(&r, path)).body("x").send().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["x-replica"], "flaky");
        let body = json(resp).await;
        assert_eq!(body["error"], "injected");
        assert_eq!(body["replica"], "flaky");
    }
    let resp = client.get(url(&r, "/v1/stream")).send().await.unwrap();
    assert_eq!(resp.status(), 503);

    let resp = client.get(url(&r, "/health")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(json(resp).await["status"], "unhealthy");

    r.set_fail(None);
    r.set_health_status(200);
    let resp = client
        .post(url(&r, "/v1/predict"))
        .body("ab")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["output"], "ba");
    let resp = client.get(url(&r, "/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["status"], "ok");

    r.set_fail(Some(500));
    let resp = client.get(url(&r, "/x")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(r.hits(), 5);
    assert_eq!(r.health_checks(), 2);
    eventually("inflight back to 0", PATIENCE, || async {
        r.inflight() == 0
    })
    .await;
    r.shutdown();
}

#[tokio::test]
async fn set_delay_and_bind() {
    let port = free_port();
    let r = Replica::builder("slow")
        .bind(([127, 0, 0, 1], port).into())
        .spawn()
        .await
        .unwrap();
    assert_eq!(r.addr().port(), port);
    assert_eq!(r.name(), "slow");
    let r2 = r.clone();
    r2.set_delay(Duration::from_millis(300));
    let t = Instant::now();
    let resp = h2()
        .post(url(&r, "/v1/predict"))
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    // /health is never delayed.
    r.set_delay(Duration::from_secs(30));
    let resp = tokio::time::timeout(Duration::from_secs(10), h1().get(url(&r, "/health")).send())
        .await
        .expect("/health must not be delayed")
        .unwrap();
    assert_eq!(resp.status(), 200);
    r.shutdown();
}

#[tokio::test]
async fn ws_echo_server_echoes() {
    let addr = ws_echo_server().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/chat"))
        .await
        .expect("ws connect");
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("hello".into())
    );
    ws.send(Message::Binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Binary(vec![1, 2, 3])
    );
    ws.close(None).await.unwrap();
    // The server completes the close handshake.
    while let Some(msg) = ws.next().await {
        if msg.is_err() {
            break;
        }
    }
}
