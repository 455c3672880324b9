//! Balancing policies: least outstanding, weighted round robin, consistent hash.

use std::collections::HashMap;
use std::time::Duration;

use modelgate::demo::replica::Replica;
use serde_json::Value;

use crate::support::*;

fn balanced(balance: &str, backends: &str, extra: &str) -> String {
    pool_config(backends, &format!("balance = \"{balance}\"\n{extra}"))
}

async fn replica_of(client: &reqwest::Client, url: String, headers: &[(&str, &str)]) -> String {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["replica"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn least_outstanding_sends_new_work_to_the_idle_replica() {
    let a = Replica::builder("a")
        .delay(Duration::from_secs(2))
        .spawn()
        .await
        .unwrap();
    let b = Replica::builder("b")
        .delay(Duration::from_secs(2))
        .spawn()
        .await
        .unwrap();
    let proxy =
        TestProxy::start(&balanced("least_outstanding", &backend_list(&[&a, &b]), "")).await;
    for client in [h1(), h2()] {
        // One request keeps a replica busy; the next must go to the other one.
        let (c, url) = (client.clone(), proxy.url("/first"));
        let first = tokio::spawn(async move { replica_of(&c, url, &[]).await });
        eventually("first request reaches a replica", PATIENCE, || async {
            a.inflight() + b.inflight() == 1
        })
        .await;
        let busy = if a.inflight() == 1 { "a" } else { "b" };
        let second = replica_of(&client, proxy.url("/second"), &[]).await;
        assert_ne!(second, busy, "the idle replica takes new work");
        assert_eq!(first.await.unwrap(), busy);
    }
}

#[tokio::test]
async fn weighted_round_robin_splits_by_weight() {
    let r = spawn_replicas(&["a", "b", "c"], Duration::ZERO).await;
    let backends = format!(
        r#"{{ addr = "{}", weight = 1 }}, {{ addr = "{}", weight = 1 }}, {{ addr = "{}", weight = 2 }}"#,
        r[0].addr(),
        r[1].addr(),
        r[2].addr()
    );
    let proxy = TestProxy::start(&balanced("round_robin", &backends, "")).await;
    let client = h1();
    let mut hits: HashMap<String, u32> = HashMap::new();
    for _ in 0..40 {
        *hits
            .entry(replica_of(&client, proxy.url("/"), &[]).await)
            .or_default() += 1;
    }
    assert_eq!((hits["a"], hits["b"], hits["c"]), (10, 10, 20), "{hits:?}");
}

#[tokio::test]
async fn consistent_hash_keeps_a_key_on_one_replica() {
    let r = spawn_replicas(&["a", "b", "c"], Duration::ZERO).await;
    let proxy = TestProxy::start(&balanced(
        "consistent_hash",
        &backend_list(&[&r[0], &r[1], &r[2]]),
        r#"hash_key = "header:x-session-id""#,
    ))
    .await;
    let mut owners: HashMap<String, String> = HashMap::new();
    for client in [h1(), h2()] {
        for round in 0..3 {
            for k in 0..30 {
                let key = format!("session-{k}");
                let got = replica_of(&client, proxy.url("/"), &[("x-session-id", &key)]).await;
                let owner = owners.entry(key.clone()).or_insert_with(|| got.clone());
                assert_eq!(*owner, got, "key {key} moved in round {round}");
            }
        }
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert!(
        distinct.len() >= 2,
        "30 keys spread over replicas: {owners:?}"
    );
}
