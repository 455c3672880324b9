//! Streaming: SSE tokens arrive as they are sent, WebSocket upgrades, large uploads
//! stream through without being held in memory.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use modelgate::demo::replica::Replica;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn sse_tokens_reach_the_client_before_the_stream_ends() {
    let r = Replica::builder("sse").spawn().await.unwrap();
    let proxy = TestProxy::start(&pool_config(&format!("\"{}\"", r.addr()), "")).await;
    for client in [h1(), h2()] {
        let started = Instant::now();
        let resp = client
            .get(proxy.url("/v1/stream?tokens=5&interval_ms=400"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut stream = resp.bytes_stream();
        let mut arrivals = Vec::new();
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            arrivals.push(started.elapsed());
        }
        let tokens = text.matches("data: {").count();
        assert_eq!(tokens, 5, "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"));
        // 5 tokens 400 ms apart take 1.6 s; the first must arrive long before that.
        let first = arrivals[0];
        let last = *arrivals.last().unwrap();
        assert!(last >= Duration::from_millis(1500), "stream took {last:?}");
        assert!(
            last - first >= Duration::from_millis(1000),
            "chunks were held back: first {first:?}, last {last:?}"
        );
    }
}

#[tokio::test]
async fn websocket_upgrades_are_proxied() {
    let echo = ws_echo_server().await;
    let proxy = TestProxy::start(&pool_config(&format!("\"{echo}\""), "")).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.http_addr()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let got = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::text(format!("hello {i}")));
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let got = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::binary(vec![1u8, 2, 3]));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn a_50_mib_upload_arrives_intact_and_memory_stays_flat() {
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 200; // 50 MiB
    let r = Replica::builder("sink").spawn().await.unwrap();
    let proxy = TestProxy::start(&pool_config(&format!("\"{}\"", r.addr()), "")).await;
    let client = h1();
    // Warm up so the baseline includes the proxy's steady-state buffers.
    client
        .post(proxy.url("/v1/predict"))
        .body(vec![7u8; CHUNK])
        .send()
        .await
        .unwrap();
    let before = proxy.peak_rss_kib();

    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let chunks: Vec<bytes::Bytes> = (0..CHUNKS)
        .map(|i| {
            let c = bytes::Bytes::from(vec![(i % 251) as u8; CHUNK]);
            hasher.update(&c);
            c
        })
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        chunks.into_iter().map(Ok::<_, std::io::Error>),
    ));
    let resp = client
        .post(proxy.url("/v1/predict"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["bytes"], (CHUNK * CHUNKS) as u64);
    assert_eq!(v["xxh3"], format!("{:016x}", hasher.digest()));
    let grew_kib = proxy.peak_rss_kib().saturating_sub(before);
    assert!(
        grew_kib < 16 * 1024,
        "peak RSS grew {grew_kib} KiB for a 50 MiB upload"
    );
}
