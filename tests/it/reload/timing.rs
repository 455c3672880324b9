//! Reload timing for the README (ignored: a measurement, not a pass/fail test).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::*;

/// A config with `routes` routes over 10 upstreams of `backends`, plus `/new` if `with_new`.
fn big_config(proxy: &TestProxy, routes: usize, backends: &str, with_new: bool) -> String {
    let mut text = format!(
        "[listen]\nhttp = \"{}\"\nadmin = \"{}\"\nshutdown_grace = \"10s\"\n",
        proxy.http_addr(),
        proxy.admin_addr()
    );
    for i in 0..routes {
        text.push_str(&format!(
            "\n[[route]]\nname = \"r{i}\"\npath = \"/r{i}\"\nupstream = \"u{}\"\n",
            i % 10
        ));
    }
    if with_new {
        text.push_str("\n[[route]]\nname = \"new\"\npath = \"/new\"\nupstream = \"u1\"\n");
    }
    for u in 0..10 {
        text.push_str(&format!("\n[upstream.u{u}]\nbackends = [{backends}]\n"));
    }
    text
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Latencies of back-to-back requests by `clients` h1 clients for `for_`.
async fn latencies(proxy: &TestProxy, clients: usize, for_: Duration) -> Vec<Duration> {
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (c, url) = (h1(), proxy.url(&format!("/r{i}")));
            tokio::spawn(async move {
                let mut out = Vec::new();
                let start = Instant::now();
                while start.elapsed() < for_ {
                    let t = Instant::now();
                    let r = c.get(&url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    out.push(t.elapsed());
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

/// Reload timing for the closing note (not a pass/fail test):
/// `cargo test --release --test it -- --ignored reload_timing --nocapture`.
#[tokio::test]
#[ignore]
async fn reload_timing() {
    let r = replicas(&["a", "b"]).await;
    let backends = backend_list(&[&r[0], &r[1]]);
    let proxy = TestProxy::start(&pool_config(&backends, "")).await;
    std::fs::write(
        proxy.config_path(),
        big_config(&proxy, 1000, &backends, false),
    )
    .unwrap();
    let (s, v) = post_reload(&proxy).await;
    assert_eq!(s, 200, "{v}");
    let c = h1();
    for how in ["file watch", "POST /reload"] {
        let mut ends = Vec::new();
        for round in 0..5 {
            let with_new = round % 2 == 0;
            let text = big_config(&proxy, 1000, &backends, with_new);
            let t = Instant::now();
            let mut took = None;
            if how == "file watch" {
                write_atomically(proxy.config_path(), &text);
            } else {
                std::fs::write(proxy.config_path(), &text).unwrap();
                let (s, v) = post_reload(&proxy).await;
                assert_eq!(s, 200, "{v}");
                took = v["took_ms"].as_f64();
            }
            // First request on the new generation: /new/x turns 200 (or back to 404).
            let want = if with_new { 200 } else { 404 };
            while c.get(proxy.url("/new/x")).send().await.unwrap().status() != want {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            ends.push((t.elapsed(), took));
        }
        eprintln!("1,000 routes, {how}: change -> first request on the new generation: {ends:?}");
    }

    let quiet = latencies(&proxy, 4, Duration::from_secs(5)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let reloads = {
        let (stop, url, path) = (
            stop.clone(),
            proxy.admin_url("/reload"),
            proxy.config_path().to_path_buf(),
        );
        let texts = [
            big_config(&proxy, 1000, &backends, true),
            big_config(&proxy, 1000, &backends, false),
        ];
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                std::fs::write(&path, &texts[n % 2]).unwrap();
                let s = h1().post(&url).send().await.unwrap().status();
                assert_eq!(s, 200);
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n
        })
    };
    let busy = latencies(&proxy, 4, Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let n = reloads.await.unwrap();
    eprintln!(
        "latency without reloads: {} requests, p50 {:?}, p99 {:?}, max {:?}",
        quiet.len(),
        percentile(&quiet, 0.5),
        percentile(&quiet, 0.99),
        quiet[quiet.len() - 1]
    );
    eprintln!(
        "latency with a reload of 1,000 routes every 100 ms ({n} reloads): {} requests, p50 {:?}, p99 {:?}, max {:?}",
        busy.len(),
        percentile(&busy, 0.5),
        percentile(&busy, 0.99),
        busy[busy.len() - 1]
    );
}
