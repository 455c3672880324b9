//! `hold` and `wake`: requests to an upstream with no ready replica wait for one
//! (bounded by `hold` and the queue) instead of a 503 at once, and the wake URL is
//! called once per cold period.

use std::time::Duration;

use futures_util::StreamExt;
use modelgate::demo::replica::{Replica, ReplicaHandle};
use serde_json::Value;

use super::fixture::*;
use crate::support::dns::{Answer, DnsServer};
use crate::support::*;

struct Cold {
    model: ReplicaHandle,
    /// Stands in for an autoscaler: counts the wake calls it gets.
    scaler: ReplicaHandle,
    proxy: TestProxy,
}

/// An upstream whose one replica is loading its weights (failing its health
/// check), with `hold` and `wake`, and `route` lines on its route.
async fn cold_with(hold: &str, route: &str) -> Cold {
    let model = Replica::builder("m")
        .models(["m"])
        .token_interval(Duration::from_millis(20))
        .health_status(503) // loading its weights
        .spawn()
        .await
        .unwrap();
    let scaler = Replica::builder("scaler").spawn().await.unwrap();
    let proxy = front(route, &cold_upstream(&model, hold, scaler.addr())).await;
    Cold {
        model,
        scaler,
        proxy,
    }
}

async fn cold(hold: &str) -> Cold {
    cold_with(hold, "").await
}

/// The `wake` line calling `scaler`.
fn wake(scaler: std::net::SocketAddr) -> String {
    format!(r#"wake = {{ url = "http://{scaler}/wake", method = "POST" }}"#)
}

/// The upstream `m` of `model`, checked every 100 ms, with `hold` and a wake URL
/// on `scaler`.
fn cold_upstream(model: &ReplicaHandle, hold: &str, scaler: std::net::SocketAddr) -> String {
    format!(
        r#"{}
hold = "{hold}"
{}
[upstream.m.health]
path = "/health"
interval = "100ms"
timeout = "80ms"
unhealthy_after = 1
"#,
        backends(&[model]),
        wake(scaler)
    )
}

async fn held_requests_are_served_when_a_replica_is_ready(client: reqwest::Client) {
    let c = cold("30s").await;
    // Cold period 1: replica loading. Requests wait; one wake call for all.
    let held: Vec<_> = (0..3).map(|_| send(&client, &c.proxy)).collect();
    eventually("three held", Duration::from_secs(10), || async {
        queued(&c.proxy).await == 3
    })
    .await;
    eventually("one wake call", Duration::from_secs(10), || async {
        c.scaler.hits() == 1
    })
    .await;
    assert!(held.iter().all(|h| !h.is_finished()));
    c.model.set_health_status(200);
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(c.scaler.hits(), 1);

    // Cold period 2: the replica goes down; the next request wakes again, once.
    c.model.set_health_status(503);
    eventually("down", Duration::from_secs(10), || async {
        state(&c.proxy).await == "down"
    })
    .await;
    let held: Vec<_> = (0..2).map(|_| send(&client, &c.proxy)).collect();
    eventually("second wake call", Duration::from_secs(10), || async {
        c.scaler.hits() == 2
    })
    .await;
    c.model.set_health_status(200);
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(c.scaler.hits(), 2);
}

#[tokio::test]
async fn held_requests_are_served_when_a_replica_is_ready_http1() {
    held_requests_are_served_when_a_replica_is_ready(h1()).await;
}

#[tokio::test]
async fn held_requests_are_served_when_a_replica_is_ready_h2c() {
    held_requests_are_served_when_a_replica_is_ready(h2()).await;
}

async fn hold_ends_and_clients_that_leave_are_let_go(client: reqwest::Client) {
    // A client that leaves while held leaves the queue (long before the hold ends)
    // and is never sent.
    let c = cold("60s").await;
    let gone = client
        .post(c.proxy.url("/v1/chat/completions"))
        .json(&chat("m", "hello", false))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gone.is_err());
    eventually("the held request left", Duration::from_secs(10), || async {
        queued(&c.proxy).await == 0
    })
    .await;
    eventually("counted as a client abort", PATIENCE, || async {
        aborts(&c.proxy).await == 1.0
    })
    .await;
    assert_eq!(answered(&c.proxy, 499).await, 1.0);
    // Metrics are recorded when the request is logged, after its answer is written.
    let waits = r#"modelgate_queue_wait_seconds_count{upstream="m"} "#;
    eventually("the wait of a client gone", PATIENCE, || async {
        metric_value(&c.proxy, waits).await == 1.0
    })
    .await;
    c.model.set_health_status(200);
    eventually("up", Duration::from_secs(10), || async {
        state(&c.proxy).await == "up"
    })
    .await;
    holds_for(
        "nothing reaches the replica",
        Duration::from_millis(200),
        || async { c.model.hits() == 0 },
    )
    .await;
    assert_eq!(c.scaler.hits(), 1, "one cold period, one wake call");
    let ok = r#"modelgate_wake_calls_total{result="ok",upstream="m"}"#;
    assert_eq!(metric_value(&c.proxy, ok).await, 1.0);

    // Nobody comes up within the hold: 503 in OpenAI's shape when it ends. A wake
    // URL that cannot be reached is counted and logged, nothing more.
    let c = cold("700ms").await;
    c.scaler.shutdown();
    let resp = client
        .post(c.proxy.url("/v1/chat/completions"))
        .json(&chat("m", "hello", false))
        .send()
        .await
        .unwrap();
    let (status, v) = status_and_body(resp).await;
    assert_eq!(status, 503);
    assert_eq!(v["error"]["code"], "no_healthy_backend", "{v}");
    // The wait of a hold that ended unserved is recorded, in the log and the metric.
    // (recorded when the request is logged, which may follow the answer's last byte)
    let waits = r#"modelgate_queue_wait_seconds_count{upstream="m"} "#;
    let waited = r#"modelgate_queue_wait_seconds_sum{upstream="m"} "#;
    eventually("the unserved wait recorded", PATIENCE, || async {
        metric_value(&c.proxy, waits).await == 1.0 && metric_value(&c.proxy, waited).await >= 0.7
    })
    .await;
    eventually("the access log line", PATIENCE, || async {
        access_lines(&c.proxy).len() == 1
    })
    .await;
    let line = &access_lines(&c.proxy)[0];
    assert!(line["queue_wait"].as_f64().unwrap() >= 0.7, "{line}");
    let failed = r#"modelgate_wake_calls_total{result="error",upstream="m"}"#;
    eventually("failed wake counted", Duration::from_secs(10), || async {
        metric_value(&c.proxy, failed).await == 1.0
    })
    .await;
    assert!(
        c.proxy.logs().contains("wake call to"),
        "{}",
        c.proxy.logs()
    );
}

#[tokio::test]
async fn hold_ends_and_clients_that_leave_are_let_go_http1() {
    hold_ends_and_clients_that_leave_are_let_go(h1()).await;
}

#[tokio::test]
async fn hold_ends_and_clients_that_leave_are_let_go_h2c() {
    hold_ends_and_clients_that_leave_are_let_go(h2()).await;
}

/// A held stream on a route with `sse_keepalive` gets its head early and comments
/// until the replica is ready, then the replica's stream; one that is never served
/// ends with an OpenAI error event; one whose client leaves frees its place.
async fn held_streams_are_kept_alive(client: reqwest::Client) {
    let c = cold_with("30s", r#"sse_keepalive = "200ms""#).await;
    let url = c.proxy.url("/v1/chat/completions");
    let resp = client
        .post(&url)
        .json(&stream_body(3))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.bytes_stream();
    for _ in 0..2 {
        let chunk = body.next().await.unwrap().unwrap();
        assert_eq!(&chunk[..], KEEPALIVE.as_bytes());
    }
    assert_eq!(queued(&c.proxy).await, 1);
    c.model.set_health_status(200);
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let events = events_after_keepalives(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(c.model.hits(), 1);
    assert_eq!(c.scaler.hits(), 1);

    // Nobody comes up within the hold: one error event, counted as the 503 it is.
    let c = cold_with("2s", r#"sse_keepalive = "200ms""#).await;
    let url = c.proxy.url("/v1/chat/completions");
    let resp = client
        .post(&url)
        .json(&stream_body(3))
        .send()
        .await
        .unwrap();
    expect_error_event(resp, "no_healthy_backend").await;
    // (counted when the request is logged, which can follow the event's last byte)
    eventually("the 503 counted", PATIENCE, || async {
        answered(&c.proxy, 503).await == 1.0
    })
    .await;
    assert_eq!(answered(&c.proxy, 200).await, 0.0);

    // A client that leaves a held stream leaves the queue and is counted.
    let resp = client
        .post(&url)
        .json(&stream_body(3))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let chunk = body.next().await.unwrap().unwrap();
    assert_eq!(&chunk[..], KEEPALIVE.as_bytes());
    drop(body);
    eventually("the held stream left", Duration::from_secs(10), || async {
        queued(&c.proxy).await == 0 && aborts(&c.proxy).await == 1.0
    })
    .await;
    assert_eq!(answered(&c.proxy, 499).await, 1.0);
    eventually("access log lines", PATIENCE, || async {
        access_lines(&c.proxy).len() == 2
    })
    .await;
    let statuses: Vec<_> = access_lines(&c.proxy)
        .iter()
        .map(|l| (l["status"].clone(), l["reject"].clone()))
        .collect();
    assert_eq!(
        statuses,
        [
            (503.into(), "no_healthy_backend".into()),
            (499.into(), Value::Null)
        ]
    );
    assert_eq!(c.model.hits(), 0);
}

#[tokio::test]
async fn held_streams_are_kept_alive_http1() {
    held_streams_are_kept_alive(h1()).await;
}

#[tokio::test]
async fn held_streams_are_kept_alive_h2c() {
    held_streams_are_kept_alive(h2()).await;
}

/// Without health checks a cold period ends when a replica is there by any other
/// way (here a DNS answer; then a reload to a new upstream whose name does not
/// resolve yet starts the next one: a reload of the same upstream keeps its last
/// addresses until the new name answers), and each period calls `wake` once.
#[tokio::test]
async fn a_cold_period_ends_without_health_checks() {
    let dns = DnsServer::start().await;
    let model = replica("m", 0, 5).await;
    let scaler = Replica::builder("scaler").spawn().await.unwrap();
    let port = model.addr().port();
    dns.set("first.test", Answer::Fail);
    dns.set("second.test", Answer::Fail);
    let proxy = front(
        "",
        &format!(
            r#"discover = {{ dns = "first.test:{port}", every = "100ms", resolver = "{}" }}
hold = "30s"
{}"#,
            dns.addr(),
            wake(scaler.addr())
        ),
    )
    .await;
    let client = h1();
    // Period 1: no replica known yet.
    let held = send(&client, &proxy);
    eventually("first wake call", PATIENCE, || async { scaler.hits() == 1 }).await;
    dns.set("first.test", Answer::Addrs(vec![model.addr().ip()]));
    assert_eq!(held.await.unwrap(), 200);

    // Period 2: the route now goes to a new upstream naming a service with no
    // replica yet.
    let text = std::fs::read_to_string(proxy.config_path())
        .unwrap()
        .replace("first.test", "second.test")
        .replace("upstream = \"m\"", "upstream = \"m2\"")
        .replace("[upstream.m]", "[upstream.m2]");
    std::fs::write(proxy.config_path(), text).unwrap();
    let resp = client
        .post(proxy.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let held: Vec<_> = (0..2).map(|_| send(&client, &proxy)).collect();
    eventually("second wake call", PATIENCE, || async {
        scaler.hits() == 2
    })
    .await;
    dns.set("second.test", Answer::Addrs(vec![model.addr().ip()]));
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(scaler.hits(), 2);
    assert_eq!(model.hits(), 3);
}

/// An autoscaler not reachable at first (its port refuses connections): the
/// failed wake call is made again (after 1 s) while a request is held, and once
/// one succeeds no more are made in the same cold period, however many requests
/// arrive or wait.
#[tokio::test]
async fn a_failed_wake_call_is_retried_while_requests_are_held() {
    let model = Replica::builder("m")
        .models(["m"])
        .health_status(503) // loading its weights
        .spawn()
        .await
        .unwrap();
    // Held, so no other test's listener takes the port (and the wake calls) meanwhile.
    let (_held, scaler_addr) = refusing_addr();
    let proxy = front("", &cold_upstream(&model, "30s", scaler_addr)).await;
    let client = h1();
    let held = send(&client, &proxy);
    let failed = r#"modelgate_wake_calls_total{result="error",upstream="m"}"#;
    let ok = r#"modelgate_wake_calls_total{result="ok",upstream="m"}"#;
    eventually(
        "the first wake call failed",
        Duration::from_secs(10),
        || async { metric_value(&proxy, failed).await >= 1.0 },
    )
    .await;
    let scaler = Replica::builder("scaler")
        .bind(scaler_addr)
        .spawn()
        .await
        .unwrap();
    eventually(
        "the wake call made again while the request is held",
        Duration::from_secs(10),
        || async { scaler.hits() == 1 },
    )
    .await;
    assert!(!held.is_finished());
    eventually("the success counted", PATIENCE, || async {
        metric_value(&proxy, ok).await == 1.0
    })
    .await;
    let second = send(&client, &proxy);
    eventually("two held", Duration::from_secs(10), || async {
        queued(&proxy).await == 2
    })
    .await;
    holds_for(
        "a successful wake call is not repeated",
        Duration::from_millis(2500),
        || async { scaler.hits() == 1 },
    )
    .await;
    model.set_health_status(200);
    assert_eq!(held.await.unwrap(), 200);
    assert_eq!(second.await.unwrap(), 200);
    assert_eq!(scaler.hits(), 1);
    assert_eq!(metric_value(&proxy, ok).await, 1.0);
}
