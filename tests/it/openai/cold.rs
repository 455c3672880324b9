//! `hold` and `wake`: requests to an upstream with no ready replica wait for one
//! (bounded by `hold` and the queue) instead of a 503 at once, and the wake URL is
//! called once per cold period.

use std::time::Duration;

use modelgate::demo::replica::{Replica, ReplicaHandle};

use super::chat;
use crate::support::*;

struct Cold {
    model: ReplicaHandle,
    /// Stands in for an autoscaler: counts the wake calls it gets.
    scaler: ReplicaHandle,
    proxy: TestProxy,
}

async fn cold(hold: &str) -> Cold {
    let model = Replica::builder("m")
        .models(["m"])
        .health_status(503) // loading its weights
        .spawn()
        .await
        .unwrap();
    let scaler = Replica::builder("scaler").spawn().await.unwrap();
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

[upstream.m]
backends = ["{}"]
hold = "{hold}"
wake = {{ url = "http://{}/wake", method = "POST" }}
[upstream.m.health]
path = "/health"
interval = "100ms"
timeout = "80ms"
unhealthy_after = 1
"#,
        model.addr(),
        scaler.addr()
    ))
    .await;
    Cold {
        model,
        scaler,
        proxy,
    }
}

async fn queued(proxy: &TestProxy) -> u64 {
    proxy.admin_json("/upstreams").await["upstreams"]["m"]["queued"]
        .as_u64()
        .unwrap_or(0)
}

async fn state(proxy: &TestProxy) -> String {
    proxy.admin_json("/upstreams").await["upstreams"]["m"]["backends"][0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn send(client: &reqwest::Client, c: &Cold) -> tokio::task::JoinHandle<u16> {
    let req = client
        .post(c.proxy.url("/v1/chat/completions"))
        .json(&chat("m", "hello", false));
    tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
}

async fn held_requests_are_served_when_a_replica_is_ready(client: reqwest::Client) {
    let c = cold("30s").await;
    // Cold period 1: replica loading. Requests wait; one wake call for all.
    let held: Vec<_> = (0..3).map(|_| send(&client, &c)).collect();
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
    let held: Vec<_> = (0..2).map(|_| send(&client, &c)).collect();
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
    c.model.set_health_status(200);
    eventually("up", Duration::from_secs(10), || async {
        state(&c.proxy).await == "up"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.model.hits(), 0);
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
