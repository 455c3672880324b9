//! Made for slow replicas: per-backend caps, the FIFO queue and its answers, client
//! aborts while queued, health checks, passive ejection, safe retries, the retry
//! budget and graceful drain.

use std::time::{Duration, Instant};

use modelgate::demo::replica::{Replica, ReplicaHandle};
use serde_json::json;

use crate::support::*;

async fn queued(proxy: &TestProxy) -> u64 {
    proxy.admin_json("/upstreams").await["upstreams"]["pool"]["queued"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn max_inflight_is_never_exceeded_and_the_queue_serves_everyone() {
    let r = spawn_replicas(&["only"], Duration::from_millis(100)).await;
    let proxy = TestProxy::start(&pool_config(&backend_list(&[&r[0]]), "max_inflight = 1")).await;
    for client in [h1(), h2()] {
        let calls: Vec<_> = (0..10)
            .map(|i| {
                let (c, url) = (client.clone(), proxy.url(&format!("/job/{i}")));
                tokio::spawn(async move { c.get(url).send().await.unwrap().status().as_u16() })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), 200);
        }
    }
    assert_eq!(
        r[0].max_inflight(),
        1,
        "the replica saw more than one request at once"
    );
    assert_eq!(r[0].hits(), 20);
}

#[tokio::test]
async fn a_full_queue_answers_overloaded_at_once_and_a_long_wait_times_out() {
    let r = spawn_replicas(&["busy"], Duration::from_secs(3)).await;
    let proxy = TestProxy::start(&pool_config(
        &backend_list(&[&r[0]]),
        "max_inflight = 1\nqueue = { size = 2, timeout = \"1500ms\" }",
    ))
    .await;
    let running = tokio::spawn(h1().get(proxy.url("/running")).send());
    eventually("one request running", PATIENCE, || async {
        r[0].inflight() == 1
    })
    .await;
    let waiting: Vec<_> = (0..2)
        .map(|_| tokio::spawn(h1().get(proxy.url("/queued")).send()))
        .collect();
    eventually("two requests queued", PATIENCE, || async {
        queued(&proxy).await == 2
    })
    .await;

    for client in [h1(), h2()] {
        let started = Instant::now();
        let resp = client.get(proxy.url("/extra")).send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(
            status_and_body(resp).await,
            (503, json!({"error": "overloaded"}))
        );
        assert!(
            took < Duration::from_secs(1),
            "overloaded took {took:?}; it must not wait"
        );
        eprintln!("overloaded answered in {took:?}");
    }
    // The queued ones give up after the queue timeout, well before the 3 s job ends.
    for w in waiting {
        let resp = w.await.unwrap().unwrap();
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(
            status_and_body(resp).await,
            (503, json!({"error": "queue_timeout"}))
        );
    }
    assert_eq!(running.await.unwrap().unwrap().status(), 200);
    assert_eq!(
        r[0].hits(),
        1,
        "rejected requests never reached the replica"
    );
    // The waits that timed out are recorded (with the one that ran at once); the
    // requests refused at once did not wait.
    // (The running one is logged after its answer's last byte, maybe after this.)
    let waits = r#"modelgate_queue_wait_seconds_count{upstream="pool"} "#;
    eventually("three waits recorded", PATIENCE, || async {
        metric_value(&proxy, waits).await == 3.0
    })
    .await;
    let waited = r#"modelgate_queue_wait_seconds_sum{upstream="pool"} "#;
    assert!(metric_value(&proxy, waited).await >= 3.0);
    let timeouts: Vec<f64> = proxy
        .logs()
        .lines()
        .filter(|l| l.contains("\"reject\":\"queue_timeout\""))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|l| l["queue_wait"].as_f64())
        .collect();
    assert_eq!(timeouts.len(), 2, "{}", proxy.logs());
    assert!(timeouts.iter().all(|&w| w >= 1.5), "{timeouts:?}");
}

#[tokio::test]
async fn a_client_that_leaves_the_queue_never_takes_a_slot() {
    let r = spawn_replicas(&["busy"], Duration::from_millis(1500)).await;
    let proxy = TestProxy::start(&pool_config(&backend_list(&[&r[0]]), "max_inflight = 1")).await;
    let running = tokio::spawn(h1().get(proxy.url("/running")).send());
    eventually("one request running", PATIENCE, || async {
        r[0].inflight() == 1
    })
    .await;
    // Two clients queue and hang up (one per protocol); a third queues and stays.
    for client in [h1(), h2()] {
        let req = client
            .get(proxy.url("/leaves"))
            .timeout(Duration::from_millis(300))
            .send();
        assert!(req.await.is_err(), "the impatient client timed out");
    }
    eventually("the impatient clients left the queue", PATIENCE, || async {
        queued(&proxy).await == 0
    })
    .await;
    let stays = tokio::spawn(h1().get(proxy.url("/stays")).send());
    assert_eq!(running.await.unwrap().unwrap().status(), 200);
    assert_eq!(stays.await.unwrap().unwrap().status(), 200);
    assert_eq!(
        r[0].hits(),
        2,
        "only the running and the patient request reached the replica"
    );
}

#[tokio::test]
async fn killing_a_replica_under_load_fails_no_request() {
    let r = spawn_replicas(&["a", "b", "c"], Duration::from_millis(20)).await;
    let proxy = TestProxy::start(&pool_config(
        &backend_list(&[&r[0], &r[1], &r[2]]),
        "retries = 2\neject = { consecutive = 3, for = \"30s\" }",
    ))
    .await;
    let client = h1();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(100));
    let mut calls = Vec::new();
    for i in 0..500 {
        if i == 150 {
            r[1].shutdown();
        }
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (c, url) = (client.clone(), proxy.url(&format!("/item/{i}")));
        calls.push(tokio::spawn(async move {
            let s = c.get(url).send().await.map(|r| r.status().as_u16());
            drop(permit);
            s
        }));
    }
    let mut failed = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        match call.await.unwrap() {
            Ok(200) => {}
            other => failed.push((i, other.map_err(|e| e.to_string()))),
        }
    }
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert!(r[1].hits() > 0 && r[0].hits() + r[2].hits() > 300);
}

fn health(extra: &str) -> String {
    format!("[upstream.pool.health]\npath = \"/health\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\nhealthy_after = 2\nunhealthy_after = 2\n{extra}")
}

async fn served_by(client: &reqwest::Client, proxy: &TestProxy, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (s, v) = status_and_body(client.get(proxy.url("/who")).send().await.unwrap()).await;
        assert_eq!(s, 200, "{v}");
        out.push(v["replica"].as_str().unwrap().to_string());
    }
    out
}

#[tokio::test]
async fn health_checks_take_a_failing_replica_out_and_bring_it_back() {
    let r = spawn_replicas(&["a", "b"], Duration::ZERO).await;
    let proxy = TestProxy::start(&format!(
        "{}\n{}",
        pool_config(&backend_list(&[&r[0], &r[1]]), ""),
        health("")
    ))
    .await;
    let client = h1();
    eventually("both replicas pass their first check", PATIENCE, || async {
        proxy.admin_json("/upstreams").await["upstreams"]["pool"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["state"] == "up")
    })
    .await;
    r[1].set_health_status(503);
    // interval 300 ms × unhealthy_after 2: out within a second (allow slack for a loaded machine).
    let marked = Instant::now();
    eventually("b is marked down", PATIENCE, || async {
        proxy.admin_json("/upstreams").await["upstreams"]["pool"]["backends"][1]["state"] == "down"
    })
    .await;
    eprintln!("b was marked down after {:?}", marked.elapsed());
    let hits = r[1].hits();
    assert!(served_by(&client, &proxy, 20)
        .await
        .iter()
        .all(|n| n == "a"));
    assert_eq!(r[1].hits(), hits, "a down replica gets no requests");

    r[1].set_health_status(200);
    eventually(
        "b comes back after healthy_after passes",
        PATIENCE,
        || async {
            served_by(&client, &proxy, 10)
                .await
                .iter()
                .any(|n| n == "b")
        },
    )
    .await;
}

#[tokio::test]
async fn a_replica_still_loading_gets_nothing_until_it_passes() {
    let ready = Replica::builder("ready").spawn().await.unwrap();
    let loading = Replica::builder("loading")
        .health_status(503)
        .spawn()
        .await
        .unwrap();
    let proxy = TestProxy::start(&format!(
        "{}\n{}",
        pool_config(&backend_list(&[&ready, &loading]), ""),
        health("")
    ))
    .await;
    let client = h2();
    eventually("the ready replica passes", PATIENCE, || async {
        client.get(proxy.url("/who")).send().await.unwrap().status() == 200
    })
    .await;
    assert!(served_by(&client, &proxy, 30)
        .await
        .iter()
        .all(|n| n == "ready"));
    assert_eq!(loading.hits(), 0);
    eventually("the loading replica is being checked", PATIENCE, || async {
        loading.health_checks() >= 3
    })
    .await;
    assert_eq!(loading.hits(), 0, "unknown/unhealthy replicas get nothing");
    loading.set_health_status(200);
    eventually("the loaded replica joins", PATIENCE, || async {
        served_by(&client, &proxy, 10)
            .await
            .iter()
            .any(|n| n == "loading")
    })
    .await;
}

#[tokio::test]
async fn every_backend_down_is_503_no_healthy_backend() {
    let sick = Replica::builder("sick")
        .health_status(500)
        .spawn()
        .await
        .unwrap();
    let proxy = TestProxy::start(&format!(
        "{}\n{}",
        pool_config(&backend_list(&[&sick]), ""),
        health("")
    ))
    .await;
    eventually("the replica was checked", PATIENCE, || async {
        sick.health_checks() >= 1
    })
    .await;
    for client in [h1(), h2()] {
        let resp = client.get(proxy.url("/x")).send().await.unwrap();
        assert_eq!(resp.headers()["retry-after"], "5");
        assert_eq!(
            status_and_body(resp).await,
            (503, json!({"error": "no_healthy_backend"}))
        );
    }
}

#[tokio::test]
async fn consecutive_failures_eject_a_replica_for_a_while() {
    let good = Replica::builder("good").spawn().await.unwrap();
    let bad = Replica::builder("bad")
        .fail_with(500)
        .spawn()
        .await
        .unwrap();
    let proxy = TestProxy::start(&pool_config(
        &backend_list(&[&good, &bad]),
        "balance = \"round_robin\"\nretries = 0\neject = { consecutive = 3, for = \"2s\" }",
    ))
    .await;
    let client = h1();
    let mut errors = 0;
    for _ in 0..12 {
        if client.get(proxy.url("/x")).send().await.unwrap().status() == 500 {
            errors += 1;
        }
    }
    assert_eq!(errors, 3, "three 500s in a row eject the bad replica");
    let hits = bad.hits();
    for _ in 0..10 {
        assert_eq!(
            client.get(proxy.url("/x")).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(bad.hits(), hits, "an ejected replica gets nothing");
    bad.set_fail(None);
    eventually(
        "the ejected replica returns after its time",
        PATIENCE,
        || async {
            client.get(proxy.url("/x")).send().await.unwrap();
            bad.hits() > hits
        },
    )
    .await;
}

#[tokio::test]
async fn a_503_answer_is_retried_on_another_replica() {
    let refusing = Replica::builder("refusing")
        .fail_with(503)
        .spawn()
        .await
        .unwrap();
    let ok = Replica::builder("ok").spawn().await.unwrap();
    let proxy = TestProxy::start(&pool_config(
        &backend_list(&[&refusing, &ok]),
        "balance = \"round_robin\"\nretries = 1\nretry_budget = { percent = 100 }",
    ))
    .await;
    for client in [h1(), h2()] {
        for _ in 0..10 {
            let resp = client
                .post(proxy.url("/v1/predict"))
                .body("{}")
                .send()
                .await
                .unwrap();
            let (s, v) = status_and_body(resp).await;
            assert_eq!((s, v["replica"].as_str()), (200, Some("ok")));
        }
    }
    assert!(
        refusing.hits() >= 5,
        "round robin sent work to the refusing replica first"
    );
}

#[tokio::test]
async fn a_post_whose_body_was_sent_is_not_replayed_unless_allowed() {
    // The first replica takes the request and dies before answering.
    for (allow, body_len, expect_retry) in [
        (false, 100, false),
        (true, 100, true),
        (true, 1 << 20, false),
    ] {
        let dying = Replica::builder("dying")
            .delay(Duration::from_secs(30))
            .spawn()
            .await
            .unwrap();
        let other = Replica::builder("other").spawn().await.unwrap();
        let proxy = TestProxy::start(&pool_config(
            &backend_list(&[&dying, &other]),
            &format!("balance = \"round_robin\"\nretries = 1\nretry_non_idempotent = {allow}"),
        ))
        .await;
        // Round robin starts at a random place: send until a POST lands on the dying one.
        let client = h1();
        let call = loop {
            let before = other.hits();
            let (c, url) = (client.clone(), proxy.url("/v1/predict"));
            let call =
                tokio::spawn(async move { c.post(url).body(vec![b'x'; body_len]).send().await });
            // An answer that reached neither replica ends the wait too, and is shown.
            eventually("the request reached a replica", PATIENCE, || async {
                dying.inflight() == 1 || other.hits() > before || call.is_finished()
            })
            .await;
            if dying.inflight() == 1 {
                break call;
            }
            let answer = call
                .await
                .unwrap()
                .map(|r| (r.status(), r.headers().clone()));
            assert!(
                other.hits() > before,
                "the POST reached neither replica; the proxy answered {answer:?}"
            );
            // it went to the other one; try again
        };
        let other_before = other.hits();
        dying.shutdown();
        let (s, v) = status_and_body(call.await.unwrap().unwrap()).await;
        if expect_retry {
            assert_eq!(
                (s, v["replica"].as_str()),
                (200, Some("other")),
                "allow={allow} len={body_len}"
            );
            assert_eq!(other.hits(), other_before + 1);
        } else {
            assert_eq!(
                (s, v),
                (502, json!({"error": "bad_gateway"})),
                "allow={allow} len={body_len}"
            );
            assert_eq!(
                other.hits(),
                other_before,
                "the POST was replayed (allow={allow} len={body_len})"
            );
        }
    }
}

#[tokio::test]
async fn the_retry_budget_caps_retries_when_every_backend_fails() {
    let r: Vec<ReplicaHandle> = vec![
        Replica::builder("a").fail_with(503).spawn().await.unwrap(),
        Replica::builder("b").fail_with(503).spawn().await.unwrap(),
        Replica::builder("c").fail_with(503).spawn().await.unwrap(),
    ];
    let proxy = TestProxy::start(&pool_config(
        &backend_list(&[&r[0], &r[1], &r[2]]),
        "retries = 2\nretry_budget = { percent = 20, window = \"60s\", min_retries = 3 }",
    ))
    .await;
    let client = h1();
    for _ in 0..50 {
        assert_eq!(
            client.get(proxy.url("/x")).send().await.unwrap().status(),
            503
        );
    }
    let hits: u64 = r.iter().map(|r| r.hits()).sum();
    // Without a budget: 150 attempts. With it: 50 first attempts + at most 20% retries.
    assert!((50..=60).contains(&hits), "{hits} attempts for 50 requests");
}

#[tokio::test]
async fn sigterm_lets_a_running_request_finish_then_exits_at_once() {
    let r = spawn_replicas(&["slow"], Duration::from_secs(2)).await;
    let mut proxy = TestProxy::start(&pool_config(&backend_list(&[&r[0]]), "")).await;
    let running = tokio::spawn(h1().get(proxy.url("/long")).send());
    eventually("the request is running", PATIENCE, || async {
        r[0].inflight() == 1
    })
    .await;
    proxy.signal("TERM");
    eventually("readyz turns 503 while draining", PATIENCE, || async {
        matches!(h1().get(proxy.admin_url("/readyz")).send().await, Ok(r) if r.status() == 503)
    })
    .await;
    let resp = running.await.unwrap().unwrap();
    let done = Instant::now();
    assert_eq!(resp.status(), 200);
    let status = proxy
        .wait_exit(PATIENCE)
        .await
        .expect("the proxy exits after draining");
    assert!(status.success(), "{status:?}");
    let after = done.elapsed();
    assert!(
        after < Duration::from_secs(5),
        "exited {after:?} after the last request (grace is 10 s)"
    );
    eprintln!("exited {after:?} after the last request finished");
}

/// A proxy with a 1 s shutdown grace and the access log in `access.log`, in front of
/// `replica`.
async fn short_grace(replica: &ReplicaHandle) -> TestProxy {
    TestProxy::start(&format!(
        r#"
[listen]
http = "{{http}}"
admin = "{{admin}}"
shutdown_grace = "1s"

[log]
access = "access.log"

[[route]]
name = "all"
path = "/"
upstream = "pool"

[upstream.pool]
backends = ["{}"]
"#,
        replica.addr()
    ))
    .await
}

/// The access-log lines of `proxy` whose `reject` is `shutdown`.
fn cut_lines(proxy: &TestProxy) -> Vec<serde_json::Value> {
    std::fs::read_to_string(proxy.dir().join("access.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["reject"] == "shutdown")
        .collect()
}

#[tokio::test]
async fn requests_the_grace_does_not_cover_are_cut_counted_and_logged() {
    let r = spawn_replicas(&["slow"], Duration::from_secs(60)).await;
    let mut proxy = short_grace(&r[0]).await;
    // One waits for its answer (no head sent yet), one streams (head 200 sent).
    let waiting = tokio::spawn(h1().get(proxy.url("/slow")).send());
    let stream = h1()
        .get(proxy.url("/v1/stream?tokens=1000&interval_ms=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    eventually("both requests run", PATIENCE, || async {
        r[0].inflight() == 2
    })
    .await;
    proxy.signal("TERM");
    let status = proxy
        .wait_exit(PATIENCE)
        .await
        .expect("the proxy exits when the grace ends");
    assert!(status.success(), "{status:?}");
    let logs = proxy.logs();
    assert!(
        logs.contains(
            "shutdown grace (1s) is over with 2 request(s) still in progress; cutting them"
        ),
        "{logs}"
    );
    let mut cut: Vec<(String, u64, String, String)> = cut_lines(&proxy)
        .iter()
        .map(|v| {
            assert_eq!(v["route"], "all");
            assert_eq!(v["upstream"], "pool");
            assert_eq!(v["method"], "GET");
            assert!(v["request_id"].is_string(), "{v}");
            (
                v["path"].as_str().unwrap().to_string(),
                v["status"].as_u64().unwrap(),
                v["backend"].as_str().unwrap().to_string(),
                v["reject"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    cut.sort();
    let backend = r[0].addr().to_string();
    assert_eq!(
        cut,
        [
            ("/slow".into(), 503, backend.clone(), "shutdown".into()),
            (
                "/v1/stream?tokens=1000&interval_ms=100".into(),
                200,
                backend,
                "shutdown".into()
            ),
        ]
    );
    assert!(
        waiting.await.unwrap().is_err(),
        "the waiting request was cut"
    );
}

#[tokio::test]
async fn sigint_stops_at_once_and_says_what_it_cut() {
    let r = spawn_replicas(&["slow"], Duration::from_secs(60)).await;
    let mut proxy = short_grace(&r[0]).await;
    let waiting = tokio::spawn(h1().get(proxy.url("/slow")).send());
    eventually("the request runs", PATIENCE, || async {
        r[0].inflight() == 1
    })
    .await;
    proxy.signal("INT");
    proxy
        .wait_exit(PATIENCE)
        .await
        .expect("the proxy exits at once");
    let logs = proxy.logs();
    assert!(
        logs.contains("SIGINT: stopping at once; cutting 1 request(s) in progress"),
        "{logs}"
    );
    // No grace period was waited (pingora logs one when it does).
    assert!(!logs.contains("grace period"), "{logs}");
    assert!(waiting.await.unwrap().is_err(), "the request was cut");
    let cut = cut_lines(&proxy);
    assert_eq!(cut.len(), 1, "{cut:?}");
    assert_eq!(
        (&cut[0]["path"], &cut[0]["status"]),
        (&json!("/slow"), &json!(503))
    );
}
