//! What a reload keeps: streams on removed backends, queued requests (which get
//! the new caps) and health state.

use futures_util::StreamExt;
use modelgate::demo::replica::Replica;

use super::*;

/// (address, state) of each backend of `pool` in an `/upstreams` answer.
fn states(v: Value) -> Vec<(String, String)> {
    v["upstreams"]["pool"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["addr"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_sse_stream_survives_a_reload_that_removes_its_backend() {
    let r = replicas(&["streamer", "other"]).await;
    let proxy = TestProxy::start(&pool_config(&backend_list(&[&r[0]]), "")).await;
    let resp = h1()
        .get(proxy.url("/v1/stream?tokens=8&interval_ms=250"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    // First token arrived: the stream runs on the old generation.
    while !text.contains("data:") {
        text.push_str(&String::from_utf8_lossy(
            &stream.next().await.unwrap().unwrap(),
        ));
    }
    reload_to(&proxy, &with_backends(&proxy, &backend_list(&[&r[1]]), "")).await;
    assert_eq!(served_by(&proxy).await, "other");
    // The removed backend shows as draining while its stream runs.
    assert_eq!(
        states(proxy.admin_json("/upstreams").await),
        vec![
            (r[1].addr().to_string(), "up".to_string()),
            (r[0].addr().to_string(), "draining".to_string()),
        ]
    );
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert_eq!(text.matches("data:").count(), 9, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    eventually(
        "the drained backend leaves /upstreams",
        PATIENCE,
        || async { states(proxy.admin_json("/upstreams").await).len() == 1 },
    )
    .await;
}

#[tokio::test]
async fn health_state_survives_a_reload() {
    let up = Replica::builder("up").spawn().await.unwrap();
    let down = Replica::builder("down").spawn().await.unwrap();
    let health = "[upstream.pool.health]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nhealthy_after = 1\nunhealthy_after = 1";
    let proxy = TestProxy::start(&pool_config(&backend_list(&[&up, &down]), health)).await;
    let want = vec![
        (up.addr().to_string(), "up".to_string()),
        (down.addr().to_string(), "down".to_string()),
    ];
    eventually("both up", PATIENCE, || async {
        states(proxy.admin_json("/upstreams").await)
            .iter()
            .all(|(_, s)| s == "up")
    })
    .await;
    down.set_health_status(503);
    eventually("one backend up, one down", PATIENCE, || async {
        states(proxy.admin_json("/upstreams").await) == want
    })
    .await;
    // Slow checks after the reload: any state the new generation shows is carried over.
    let slow = health
        .replace("200ms", "60s")
        .replace("healthy_after = 1", "healthy_after = 3");
    let v = reload_to(
        &proxy,
        &with_backends(
            &proxy,
            &backend_list(&[&up, &down]),
            &format!("retries = 0\n{slow}"),
        ),
    )
    .await;
    // Right after the swap: the up one serves (no trip through unknown), the down
    // one stays down even though it now passes its checks.
    down.set_health_status(200);
    for _ in 0..10 {
        assert_eq!(served_by(&proxy).await, "up");
    }
    let after = proxy.admin_json("/upstreams").await;
    assert_eq!(after["generation"].as_u64(), v["generation"].as_u64());
    assert_eq!(states(after), want);
}

#[tokio::test]
async fn queued_requests_survive_a_reload_and_use_the_new_caps() {
    let r = spawn_replicas(&["slow"], Duration::from_millis(700)).await;
    let proxy = TestProxy::start(&pool_config(
        &backend_list(&[&r[0]]),
        "max_inflight = 1\nqueue = { size = 10, timeout = \"20s\" }",
    ))
    .await;
    let calls: Vec<_> = (0..4)
        .map(|i| tokio::spawn(h1().get(proxy.url(&format!("/q/{i}"))).send()))
        .collect();
    eventually("three requests queued", PATIENCE, || async {
        proxy.admin_json("/upstreams").await["upstreams"]["pool"]["queued"] == 3
    })
    .await;
    reload_to(
        &proxy,
        &with_backends(
            &proxy,
            &backend_list(&[&r[0]]),
            "max_inflight = 4\nqueue = { size = 10, timeout = \"20s\" }",
        ),
    )
    .await;
    // The raised cap lets the queued requests run at once.
    eventually("the queue drained into the new cap", PATIENCE, || async {
        r[0].inflight() >= 3
    })
    .await;
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(r[0].hits(), 4);
}
