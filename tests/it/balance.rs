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

/// Requests the proxy has in flight on all backends, from `/upstreams`.
async fn proxy_inflight(proxy: &TestProxy) -> u64 {
    let v: Value = h1()
        .get(proxy.admin_url("/upstreams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["upstreams"]["pool"]["backends"]
        .as_array()
        .map_or(0, |b| b.iter().filter_map(|b| b["inflight"].as_u64()).sum())
}

async fn served_by(client: &reqwest::Client, url: String) -> String {
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["replica"].as_str().unwrap().to_string()
}

/// Panics with the proxy's view of its backends when a short request had to wait
/// inside a replica (the only thing a replica that serves one at a time can be
/// busy with in these tests is the long request).
async fn assert_none_queued(proxy: &TestProxy, models: &[&Model], what: &str) {
    if models.iter().all(|m| m.queued() == 0) {
        return;
    }
    let up = proxy.admin_json("/upstreams").await;
    let queued: Vec<String> = models
        .iter()
        .map(|m| format!("{} ({}) {}", m.name(), m.addr(), m.queued()))
        .collect();
    panic!(
        "{what} queued behind the long one; queued per replica: {queued:?}; backends: {}",
        up["upstreams"]["pool"]["backends"]
    );
}

/// The setup users describe: replicas that serve one request at a time. One
/// request runs for 1.5 s; short requests sent meanwhile, one after another,
/// must all go elsewhere (nginx `least_conn` sends none to the busy replica): none
/// may wait inside a replica. When the long requests of the first rounds all land
/// on one replica, its first answers are all long: it must still not look slower
/// than its busy peer. (On a loaded host the ten short requests may outlast the
/// long one; those sent after it ended may go anywhere, and wait nowhere.)
#[tokio::test]
async fn short_requests_never_queue_behind_a_long_one() {
    let a = Model::builder("a").spawn().await;
    let b = Model::builder("b").spawn().await;
    let proxy = TestProxy::start(&pool_config(&model_list(&[&a, &b]), "")).await;
    let client = h1();
    for round in 0..8 {
        // A slot is freed just after its answer is sent: start each round clean.
        eventually("the last round's slots are free", PATIENCE, || async {
            proxy_inflight(&proxy).await == 0
        })
        .await;
        let (c, url) = (client.clone(), proxy.url("/long?ms=1500"));
        let long = tokio::spawn(async move { served_by(&c, url).await });
        eventually("the long request reaches a replica", PATIENCE, || async {
            a.inflight() + b.inflight() == 1
        })
        .await;
        let busy = if a.inflight() == 1 { "a" } else { "b" };
        for k in 0..10 {
            served_by(&client, proxy.url("/short?ms=5")).await;
            assert_none_queued(
                &proxy,
                &[&a, &b],
                &format!("round {round}: short request {k}"),
            )
            .await;
        }
        assert_eq!(long.await.unwrap(), busy);
    }
}

/// Relatives: three single-request replicas, one busy with a long request,
/// shorts sent two at a time; and a replica whose running request has run long
/// loses a tie against one whose request just started.
#[tokio::test]
async fn concurrent_short_requests_spread_over_the_free_replicas() {
    let m: Vec<Model> =
        futures_util::future::join_all(["a", "b", "c"].map(|n| Model::builder(n).spawn())).await;
    let all = [&m[0], &m[1], &m[2]];
    let proxy = TestProxy::start(&pool_config(&model_list(&all), "")).await;
    let client = h2();
    let (c, url) = (client.clone(), proxy.url("/long?ms=3000"));
    let long = tokio::spawn(async move { served_by(&c, url).await });
    eventually("the long request reaches a replica", PATIENCE, || async {
        m.iter().map(Model::inflight).sum::<u64>() == 1
    })
    .await;
    let busy = m.iter().find(|r| r.inflight() == 1).unwrap();
    let busy_name = busy.name().to_string();
    for k in 0..6 {
        eventually("only the long request holds a slot", PATIENCE, || async {
            proxy_inflight(&proxy).await == 1
        })
        .await;
        let (x, y) = tokio::join!(
            served_by(&client, proxy.url("/short?ms=20")),
            served_by(&client, proxy.url("/short?ms=20"))
        );
        // Each to a free replica of its own: neither waits.
        assert_none_queued(&proxy, &all, &format!("pair {k} ({x}, {y})")).await;
    }
    // With one fresh request on each free replica, a third short one ties on
    // count with the long one's replica and goes to a younger one, where it waits
    // for the fresh one, not for the long one. (A finished request's slot is
    // freed just after its answer is sent: wait for it.)
    eventually("only the long request holds a slot", PATIENCE, || async {
        proxy_inflight(&proxy).await == 1
    })
    .await;
    let (x, y, z) = tokio::join!(
        served_by(&client, proxy.url("/short?ms=300")),
        served_by(&client, proxy.url("/short?ms=300")),
        async {
            eventually("both fresh requests hold a slot", PATIENCE, || async {
                proxy_inflight(&proxy).await == 3
            })
            .await;
            served_by(&client, proxy.url("/short?ms=5")).await
        }
    );
    assert_eq!(
        busy.queued(),
        0,
        "the third short one ({z}; pair {x}, {y}) queued behind the long one on {busy_name}"
    );
    assert_eq!(long.await.unwrap(), busy_name);
}

/// A replica loaded by clients that do not go through the proxy shows its queue
/// only in its own ORCA reports: with `orca = true` the proxy reads them (TEXT
/// and JSON), sends that replica less, strips the header from the answer, and
/// shows the report on `/upstreams` and `/metrics`.
#[tokio::test]
async fn orca_reports_steer_work_away_from_a_replica_busy_with_other_clients() {
    let (busy, idle) = crate::support::model::busy_and_idle(Reports {
        metrics: None,
        orca: true,
    })
    .await;
    let proxy = TestProxy::start(&pool_config(
        &model_list(&[&busy, &idle]),
        "[upstream.pool.load]\norca = true\nevery = \"2s\"",
    ))
    .await;
    let client = h1();
    // The first answers from each replica carry their reports.
    let mut to_busy = 0;
    for _ in 0..40 {
        let resp = client.get(proxy.url("/x?ms=2")).send().await.unwrap();
        assert!(
            resp.headers().get("endpoint-load-metrics").is_none(),
            "the report reached the client"
        );
        let v: Value = resp.json().await.unwrap();
        to_busy += usize::from(v["replica"] == "busy");
    }
    assert_eq!(busy.last_orca_request().as_deref(), Some("TEXT"));
    assert!(
        to_busy <= 3,
        "{to_busy} of 40 went to the replica reporting a queue of 20"
    );
    let up: Value = h1()
        .get(proxy.admin_url("/upstreams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b = up["upstreams"]["pool"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == busy.addr().to_string())
        .unwrap()
        .clone();
    assert_eq!(b["reported"]["queue"], 20.0, "{b}");
    assert!(b["reported"]["at"].is_string(), "{b}");
    let metrics = proxy.admin_text("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "modelgate_backend_reported_queue{{backend=\"{}\",upstream=\"pool\"}} 20",
            busy.addr()
        )),
        "{metrics}"
    );
    // Once its queue drains and the old report expires (3 x every), it is tried
    // again, reports an empty queue and gets its share.
    busy.set_external_waiting(0);
    eventually("the drained replica gets work again", PATIENCE, || async {
        served_by(&h1(), proxy.url("/x?ms=2")).await == "busy"
    })
    .await;
}

/// Garbage in the report header never takes a replica out; it is counted.
#[tokio::test]
async fn unreadable_orca_reports_are_counted_and_never_fail_closed() {
    let m = Model::builder("m").spawn().await;
    let proxy = TestProxy::start(&pool_config(
        &model_list(&[&m]),
        "[upstream.pool.load]\norca = true",
    ))
    .await;
    // The mock answers without a report (reports off), then with garbage.
    for _ in 0..3 {
        assert_eq!(served_by(&h1(), proxy.url("/x")).await, "m");
    }
    m.set_reports(Reports {
        metrics: None,
        orca: true,
    });
    m.set_garbage_reports(true);
    for _ in 0..3 {
        assert_eq!(served_by(&h1(), proxy.url("/x")).await, "m");
    }
    let metrics = proxy.admin_text("/metrics").await;
    assert!(
        metrics.contains("modelgate_load_report_errors_total{upstream=\"pool\"} 3"),
        "{metrics}"
    );
}

/// `n` clients, each sending `each` requests to `path` one after another; every
/// answer must be a 200.
async fn closed_loop(proxy: &TestProxy, n: usize, each: usize, path: &str) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url) = (h1(), proxy.url(path));
            tokio::spawn(async move {
                for _ in 0..each {
                    let resp = client.get(&url).send().await.unwrap();
                    assert_eq!(resp.status(), 200);
                    resp.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Each backend's `max_inflight` as `/upstreams` shows it.
async fn limits(proxy: &TestProxy) -> Vec<u64> {
    let v = proxy.admin_json("/upstreams").await;
    v["upstreams"]["pool"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["max_inflight"].as_u64().unwrap())
        .collect()
}

const AUTO: &str = "max_inflight = \"auto\"\nqueue = { size = 64, timeout = \"60s\" }";

/// The learner's judgements in the proxy's log, shown when a learned-limit test fails.
const LEARNER_LOG: &[(&str, &str)] = &[("RUST_LOG", "info,modelgate::upstream=debug")];

/// A replica that serves one request at a time (a Flask dev server) behind
/// `max_inflight = "auto"`: the proxy tries 2, sees most of its first answers
/// at 2 take longer, and keeps 1, so requests wait in its own queue rather
/// than inside the replica. Probes after a failed one wait 15 s, then 30 s, so a
/// run of a few seconds (up to 35 s on a loaded host) sees at most two, each
/// sending about 4 requests to wait inside the replica (9 allowed: a loaded
/// host delays answers); without the learned cap four of the five clients'
/// requests would wait there all the time.
#[tokio::test]
async fn learned_limit_is_one_for_a_replica_that_serves_one_at_a_time() {
    let m = Model::builder("serial")
        .work(Duration::from_millis(25))
        .spawn()
        .await;
    let proxy =
        TestProxy::start_with_env(&pool_config(&model_list(&[&m]), AUTO), LEARNER_LOG).await;
    assert_eq!(limits(&proxy).await, [1], "starts at max_inflight_min");
    let started = std::time::Instant::now();
    closed_loop(&proxy, 5, 46, "/work").await;
    assert_eq!(m.hits(), 230);
    let probes = if started.elapsed() < Duration::from_secs(15) {
        1
    } else {
        2
    };
    assert!(
        m.queued() <= probes * 9,
        "{} of 230 requests waited inside the replica in {:?}\n{}",
        m.queued(),
        started.elapsed(),
        proxy.logs()
    );
    assert!(limits(&proxy).await[0] <= 2);
}

/// A replica that runs 4 at once and slows down in proportion beyond 4 (a
/// capacity knee), 12 clients: the learned limit settles at the knee.
#[tokio::test]
async fn learned_limit_finds_a_replica_s_capacity_knee() {
    let m = Model::builder("knee")
        .slots(64)
        .knee(4)
        .work(Duration::from_millis(60))
        .spawn()
        .await;
    let proxy = TestProxy::start_with_env(
        &pool_config(
            &model_list(&[&m]),
            &format!("{AUTO}\nmax_inflight_max = 32"),
        ),
        LEARNER_LOG,
    )
    .await;
    closed_loop(&proxy, 12, 40, "/work").await;
    let learned = limits(&proxy).await[0];
    assert!(
        (3..=5).contains(&learned),
        "learned {learned}\n{}",
        proxy.logs()
    );
}

/// Fast and slow replicas with slots behind caps and a queue (shortest expected
/// delay): two fast replicas of 100 ms and one of 1 s, one slot each. While few
/// requests wait, they wait for a fast slot (one frees every 50 ms) rather than
/// take the free slow one; a burst that makes the wait for a fast slot longer
/// than the slow replica's extra 900 ms sends the newest requests there.
#[tokio::test]
async fn the_slow_replica_is_used_only_when_the_fast_queue_is_long() {
    let fast_a = Model::builder("fast-a")
        .work(Duration::from_millis(100))
        .spawn()
        .await;
    let fast_b = Model::builder("fast-b")
        .work(Duration::from_millis(100))
        .spawn()
        .await;
    let slow = Model::builder("slow")
        .work(Duration::from_millis(1000))
        .spawn()
        .await;
    let extra = "max_inflight = 1\nqueue = { size = 64, timeout = \"60s\" }";
    let proxy =
        TestProxy::start(&pool_config(&model_list(&[&fast_a, &fast_b, &slow]), extra)).await;
    // Every replica measured: rounds of three at once, one on each (a replica not
    // measured yet is never declined), until the slow one has answered (its own
    // first answer gives its time per request).
    for _ in 0..20 {
        if slow.hits() >= 1 {
            break;
        }
        closed_loop(&proxy, 3, 1, "/work").await;
    }
    assert!(slow.hits() >= 1, "the slow replica was never measured");
    let measured = slow.hits();
    // Three clients in a closed loop: at most one waits, 50 ms for a fast slot.
    closed_loop(&proxy, 3, 12, "/work").await;
    assert_eq!(
        slow.hits(),
        measured,
        "a short wait for a fast slot beats 1 s"
    );
    assert!(fast_a.hits() + fast_b.hits() >= 36);
    // Thirty at once: the last of them would wait about 1.5 s for a fast slot.
    closed_loop(&proxy, 30, 1, "/work").await;
    let burst = slow.hits() - measured;
    assert!(
        (1..=3).contains(&burst),
        "the slow replica took {burst} of a burst of 30"
    );
}
