//! Process logs stay readable when backends fail: one WARN line per kind of failure
//! with the request's fields, then a count; no ERROR line per failed request.

use std::time::{Duration, Instant};

use modelgate::demo::replica::Replica;

use crate::support::*;

/// The summary is written when its window (10 s) closes.
const SUMMARY_PATIENCE: Duration = Duration::from_secs(40);

async fn scrape(proxy: &TestProxy) -> String {
    proxy.admin_text("/metrics").await
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn backend_failures_are_logged_once_then_summed_up() {
    let live = Replica::builder("live").spawn().await.unwrap();
    let (_held, dead) = refusing_addr();
    let dead = dead.to_string();
    let proxy = TestProxy::start(
        &pool_config(
            &format!("\"{dead}\", \"{}\"", live.addr()),
            "retries = 1\nbalance = \"round_robin\"\nretry_budget = { percent = 100 }",
        )
        .replace("[[route]]", "[log]\naccess = \"off\"\n\n[[route]]"),
    )
    .await;
    let c = h1();
    let started = std::time::Instant::now();
    for i in 0..40 {
        let resp = c
            .get(proxy.url("/x"))
            .header("x-request-id", format!("logs-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let took = started.elapsed();
    // A request's counters move when it is logged, after its answer went out: the
    // last request's retry may not be counted yet when its answer arrives.
    let served = "modelgate_requests_total{code=\"200\",route=\"all\",upstream=\"pool\"}";
    eventually("every request is counted", PATIENCE, || async {
        metric(&scrape(&proxy).await, served) == 40.0
    })
    .await;
    let metrics = scrape(&proxy).await;
    let failed = metric(&metrics, "modelgate_retries_total{upstream=\"pool\"}") as u64;
    assert!(
        failed >= 10,
        "round robin sent few requests to the dead backend"
    );

    // Each 10 s window logs its first failure in full and the rest as one count.
    // The 40 requests fit in one window unless the host is very slow; then every
    // failure must still be accounted for, window by window.
    let lines_about = |logs: &str| -> (Vec<String>, u64) {
        let about: Vec<String> = logs
            .lines()
            .filter(|l| l.contains(&dead))
            .map(str::to_string)
            .collect();
        let full = about
            .iter()
            .filter(|l| !l.contains(" in the last "))
            .count() as u64;
        let summaries: Vec<u64> = about
            .iter()
            .filter_map(|l| l.split("refused ").nth(1)?.split(' ').next()?.parse().ok())
            .collect();
        // A summary counts its window's full line too.
        let accounted = summaries.iter().sum::<u64>() + full - summaries.len() as u64;
        (about, accounted)
    };
    eventually(
        "every failure is logged or summed up",
        SUMMARY_PATIENCE,
        || async { lines_about(&proxy.logs()).1 == failed },
    )
    .await;
    let logs = proxy.logs();
    let (about_dead, _) = lines_about(&logs);
    let windows = took.as_secs() / 10 + 1;
    let full: Vec<&String> = about_dead
        .iter()
        .filter(|l| !l.contains(" in the last "))
        .collect();
    assert!(
        !full.is_empty() && full.len() as u64 <= windows,
        "one full line per window ({took:?}):\n{logs}"
    );
    if windows == 1 {
        assert_eq!(about_dead.len(), 2, "one line and one summary:\n{logs}");
        assert!(logs.contains(&format!("refused {failed} connections in the last")));
    }
    let first = full[0];
    for field in [
        "WARN",
        "request_id=logs-",
        "route=all",
        "upstream=pool",
        "reason=connection_refused",
        "trying another backend",
    ] {
        assert!(first.contains(field), "{field} missing in {first}");
    }
    assert!(!logs.contains("ERROR"), "{logs}");
}

/// The log lines written while the only replica of an upstream is down for a minute
/// under steady load. `cargo test --test it -- --ignored outage_log_lines --nocapture`;
/// `MODELGATE_BIN=path` measures another build, `OUTAGE_SECS` changes the minute.
#[tokio::test]
#[ignore]
async fn outage_log_lines() {
    let secs: u64 = std::env::var("OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let replica = Replica::builder("r").spawn().await.unwrap();
    let addr = replica.addr();
    let proxy = TestProxy::start(
        &pool_config(&format!("\"{addr}\""), "")
            .replace("[[route]]", "[log]\naccess = \"off\"\n\n[[route]]"),
    )
    .await;
    let before = proxy.logs().lines().count();
    replica.shutdown();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = proxy.url("/x");
        tasks.push(tokio::spawn(async move {
            let c = h1();
            let mut n = 0u64;
            while start.elapsed() < Duration::from_secs(secs) {
                let _ = c.get(&url).send().await;
                n += 1;
            }
            n
        }));
    }
    let mut requests = 0;
    for t in tasks {
        requests += t.await.unwrap();
    }
    // The last window (10 s) closes with its summary line.
    let summaries = || proxy.logs().matches(" in the last ").count();
    let written = summaries();
    eventually(
        "the last window's summary is written",
        Duration::from_secs(15),
        || async { summaries() > written },
    )
    .await;
    let logs = proxy.logs();
    let lines = logs.lines().count() - before;
    println!(
        "outage of {secs} s, {requests} requests: {lines} log lines ({})",
        modelgate_bin().display()
    );
    for l in logs.lines().skip(before).take(6) {
        println!("  {l}");
    }
}
