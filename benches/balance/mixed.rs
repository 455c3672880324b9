//! Scenarios (b) and (d) of the balancing comparison.
//!
//! (b) The setup users describe: three replicas that serve one request at a time
//! (a Flask or gunicorn-sync server), 10% of requests take 1 s and 90% take 50 ms,
//! open-loop Poisson arrivals at 70% of capacity, the same seeded sequence for
//! every proxy. The p99 of the short requests, first with no caps anywhere
//! (modelgate least_outstanding, nginx `least_conn`, HAProxy `leastconn`), then
//! with caps (modelgate `max_inflight = "auto"` and `= 1`, HAProxy `maxconn 1`).
//!
//! (d) One replica whose true capacity is 4 (beyond 4 at once each request slows
//! in proportion), 16 clients in a closed loop: `max_inflight = "auto"` against
//! unlimited and a hand-set 4; p50/p99 and the learned cap.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use modelgate::demo::replica::Replica;

use super::{
    free_port, haproxy_with, modelgate_listening, modelgate_with, nginx, pct, print_table, wait_up,
    Proc,
};

const SHORT_MS: u64 = 50;
const LONG_MS: u64 = 1000;
/// Mean service time 0.1 × 1 s + 0.9 × 50 ms = 145 ms; 3 replicas serve 20.7/s.
const RATE_B: f64 = 0.7 * 3.0 / 0.145;

struct Mixed {
    short_p50: Duration,
    short_p99: Duration,
    long_p99: Duration,
    errors: usize,
    total: usize,
}

/// Open-loop Poisson load with one request in ten long, latency from each
/// request's scheduled start (no coordinated omission).
async fn load_mixed(addr: SocketAddr, secs: u64, seed: u64) -> Mixed {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let n = (RATE_B * secs as f64) as usize;
    let start = Instant::now() + Duration::from_millis(100);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut offset = 0.0;
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        offset += -(1.0 - rng.f64()).ln() / RATE_B;
        let long = rng.u8(..10) == 0;
        let ms = if long { LONG_MS } else { SHORT_MS };
        let at = start + Duration::from_secs_f64(offset);
        let (c, url) = (client.clone(), format!("http://{addr}/v1/predict?ms={ms}"));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let ok = match c
                .post(url)
                .body("{\"input\":\"x\"}")
                .timeout(Duration::from_secs(120))
                .send()
                .await
            {
                Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            (at.elapsed(), ok, long)
        }));
    }
    let (mut short, mut long, mut errors) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        match t.await {
            Ok((d, true, false)) => short.push(d),
            Ok((d, true, true)) => long.push(d),
            _ => errors += 1,
        }
    }
    short.sort();
    long.sort();
    Mixed {
        short_p50: pct(&short, 0.5),
        short_p99: pct(&short, 0.99),
        long_p99: pct(&long, 0.99),
        errors,
        total: n,
    }
}

/// Scenario (b). `SEED` picks the arrival sequence (default 9: one sequence for
/// every row, comparable between runs; one 60 s sequence decides the p99 as much
/// as the policy does, so compare policies over several seeds); `ONLY` keeps the
/// rows whose name contains one of its comma-separated parts (e.g.
/// `ONLY="no cap,nginx"`).
pub async fn one_at_a_time(bin: &str, secs: u64) {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9);
    let only = std::env::var("ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|p| name.contains(p));
    let mut r = Vec::new();
    for name in ["one-a", "one-b", "one-c"] {
        r.push(
            Replica::builder(name)
                .concurrency(1)
                .spawn()
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let queue = "queue = { size = 10000, timeout = \"120s\" }\n";
    let auto = format!("max_inflight = \"auto\"\n{queue}");
    let one = format!("max_inflight = 1\n{queue}");
    type Start<'a> = Box<dyn Fn(u16) -> Proc + 'a>;
    let systems: Vec<(&str, Start)> = vec![
        (
            "modelgate least_outstanding, no cap",
            Box::new(|p| modelgate_with(bin, dir.path(), p, "b-plain", "", &r)),
        ),
        ("nginx least_conn", Box::new(|p| nginx(dir.path(), p, &r))),
        (
            "haproxy leastconn",
            Box::new(|p| haproxy_with(dir.path(), p, &r, None)),
        ),
        (
            "modelgate max_inflight = \"auto\"",
            Box::new(|p| modelgate_with(bin, dir.path(), p, "b-auto", &auto, &r)),
        ),
        (
            "modelgate max_inflight = 1",
            Box::new(|p| modelgate_with(bin, dir.path(), p, "b-one", &one, &r)),
        ),
        (
            "haproxy leastconn, maxconn 1",
            Box::new(|p| haproxy_with(dir.path(), p, &r, Some(1))),
        ),
    ];
    let mut rows = Vec::new();
    for (name, start) in systems.iter().filter(|(n, _)| wanted(n)) {
        let port = free_port();
        let _proc = start(port);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_up(addr).await;
        eprintln!("(b) running {name} for {secs}s at {RATE_B:.1} req/s ...");
        let o = load_mixed(addr, secs, seed).await;
        let row = format!(
            "| {name} | {:.0} | {:.0} | {:.0} | {}/{} |",
            o.short_p50.as_secs_f64() * 1e3,
            o.short_p99.as_secs_f64() * 1e3,
            o.long_p99.as_secs_f64() * 1e3,
            o.errors,
            o.total
        );
        eprintln!("{row}");
        rows.push(row);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    print_table(
        &format!("(b) {secs} s of Poisson arrivals at {RATE_B:.1} req/s (70% of capacity, seed {seed}); 3 replicas serving one request at a time; 10% of requests 1 s, 90% 50 ms"),
        &["proxy", "short p50 ms", "short p99 ms", "long p99 ms", "errors"],
        &rows,
    );
}

/// The learned `max_inflight` of the only backend, from the admin API.
async fn learned(admin: SocketAddr) -> Option<u64> {
    let v: serde_json::Value = reqwest::get(format!("http://{admin}/upstreams"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["upstreams"]["m"]["backends"][0]["max_inflight"].as_u64()
}

/// Scenario (d).
pub async fn knee(bin: &str, secs: u64) {
    const CLIENTS: usize = 16;
    let r = vec![Replica::builder("knee-4")
        .knee(4)
        .delay(Duration::from_millis(100))
        .spawn()
        .await
        .unwrap_or_else(|e| panic!("{e}"))];
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut rows = Vec::new();
    for (name, cap) in [
        ("max_inflight = \"auto\"", "\"auto\""),
        ("unlimited", "0"),
        ("max_inflight = 4", "4"),
    ] {
        let (port, admin) = (free_port(), free_port());
        let upstream =
            format!("max_inflight = {cap}\nqueue = {{ size = 1000, timeout = \"60s\" }}\n");
        let listen = format!("http = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin}\"");
        let _proc = modelgate_listening(
            bin,
            dir.path(),
            &listen,
            &format!("d-{port}"),
            &upstream,
            &r,
        );
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_up(addr).await;
        eprintln!("(d) running {name} for {secs}s, {CLIENTS} clients ...");
        let url = format!("http://{addr}/v1/predict");
        let started = Instant::now();
        let until = started + Duration::from_secs(secs);
        // The learned limit over time, every 100 ms (changes only).
        let timeline = (cap == "\"auto\"").then(|| {
            tokio::spawn(async move {
                let mut changes: Vec<(f64, u64)> = Vec::new();
                while Instant::now() < until {
                    if let Some(l) = learned(([127, 0, 0, 1], admin).into()).await {
                        if changes.last().is_none_or(|&(_, last)| last != l) {
                            changes.push((started.elapsed().as_secs_f64(), l));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                changes
            })
        });
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    let c = reqwest::Client::builder()
                        .no_proxy()
                        .build()
                        .unwrap_or_else(|e| panic!("{e}"));
                    let mut lat = Vec::new();
                    while Instant::now() < until {
                        let t = Instant::now();
                        if c.post(&url)
                            .body("{}")
                            .send()
                            .await
                            .is_ok_and(|r| r.status() == 200)
                        {
                            lat.push(t.elapsed());
                        }
                    }
                    lat
                })
            })
            .collect();
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap_or_default());
        }
        lat.sort();
        let cap_now = learned(([127, 0, 0, 1], admin).into()).await;
        if let Some(t) = timeline {
            let changes = t.await.unwrap_or_default();
            let line: Vec<String> = changes
                .iter()
                .map(|(at, l)| format!("{at:.1}s:{l}"))
                .collect();
            eprintln!("(d) learned max_inflight over time: {}", line.join(" "));
            let below = changes.iter().filter(|(_, l)| *l < 4).count();
            eprintln!(
                "(d) limit below the knee at {below} of {} changes",
                changes.len()
            );
        }
        let row = format!(
            "| {name} | {:.0} | {:.0} | {:.1} | {} |",
            pct(&lat, 0.5).as_secs_f64() * 1e3,
            pct(&lat, 0.99).as_secs_f64() * 1e3,
            lat.len() as f64 / secs as f64,
            cap_now.map_or("-".to_string(), |c| c.to_string())
        );
        eprintln!("{row}");
        rows.push(row);
    }
    print_table(
        &format!("(d) {secs} s, {CLIENTS} clients in a closed loop; one replica that runs 4 at once at 100 ms and slows in proportion beyond 4"),
        &["modelgate", "p50 ms", "p99 ms", "req/s", "cap at the end"],
        &rows,
    );
}
