//! Scenario (f): one requester floods a capped upstream.
//!
//! Two replicas that serve one request at a time (100 ms each: 20 req/s in all)
//! behind `max_inflight = 1`. Five requesters send open-loop Poisson arrivals, the
//! same seeded sequence for every configuration: `heavy` at 10x the rate of each
//! of four `light` ones, 110% of capacity in all, so a queue builds. `heavy`'s
//! requests are also marked `x-priority: batch`, the light ones `interactive`.
//! The table gives each side's queue wait (latency from the scheduled start minus
//! the 100 ms of work) behind HAProxy with `maxconn 1` (its queue in arrival order,
//! then ordered by `set-priority-class`: what a user can do today) and behind
//! modelgate with arrival order (FIFO), `fair_share`, `priority`, and both.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use modelgate::demo::replica::Replica;

use super::{free_port, haproxy_rules, modelgate_with, pct, print_table, wait_up, Proc};

const WORK: Duration = Duration::from_millis(100);
/// Capacity 2 replicas × 1 / 100 ms = 20 req/s; offered 110% of it.
const RATE: f64 = 22.0;
const LIGHT: usize = 4;
/// `heavy` sends this many times the rate of each light requester.
const FLOOD: f64 = 10.0;

struct Waits {
    light_p50: Duration,
    light_p99: Duration,
    heavy_p50: Duration,
    heavy_p99: Duration,
    /// Answers per second from the first scheduled start to the last answer: the
    /// capacity the proxy left of the replicas' 20 req/s.
    served: f64,
    errors: usize,
    total: usize,
}

/// The seeded workload: (offset from start in s, requester 0 = heavy, 1.. light).
fn arrivals(secs: u64) -> Vec<(f64, usize)> {
    let mut rng = fastrand::Rng::with_seed(11);
    let weights: Vec<f64> = std::iter::once(FLOOD)
        .chain(std::iter::repeat_n(1.0, LIGHT))
        .collect();
    let sum: f64 = weights.iter().sum();
    let mut out = Vec::new();
    let mut offset = 0.0;
    while offset < secs as f64 {
        offset += -(1.0 - rng.f64()).ln() / RATE;
        let mut pick = rng.f64() * sum;
        let who = weights
            .iter()
            .position(|w| {
                pick -= w;
                pick < 0.0
            })
            .unwrap_or(0);
        out.push((offset, who));
    }
    out
}

async fn load(addr: SocketAddr, work: &[(f64, usize)]) -> Waits {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now() + Duration::from_millis(100);
    let tasks: Vec<_> = work
        .iter()
        .map(|&(offset, who)| {
            let at = start + Duration::from_secs_f64(offset);
            let c = client.clone();
            let url = format!("http://{addr}/v1/predict");
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let (tenant, class) = if who == 0 {
                    ("heavy".to_string(), "batch")
                } else {
                    (format!("light-{who}"), "interactive")
                };
                let ok = match c
                    .post(url)
                    .header("x-tenant", tenant)
                    .header("x-priority", class)
                    .body("{\"input\":\"x\"}")
                    .timeout(Duration::from_secs(120))
                    .send()
                    .await
                {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                (who, at.elapsed().saturating_sub(WORK), ok)
            })
        })
        .collect();
    let (mut light, mut heavy, mut errors) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        match t.await {
            Ok((who, wait, true)) => {
                if who == 0 {
                    heavy.push(wait);
                } else {
                    light.push(wait);
                }
            }
            _ => errors += 1,
        }
    }
    let served = (light.len() + heavy.len()) as f64 / start.elapsed().as_secs_f64();
    light.sort();
    heavy.sort();
    Waits {
        light_p50: pct(&light, 0.5),
        light_p99: pct(&light, 0.99),
        heavy_p50: pct(&heavy, 0.5),
        heavy_p99: pct(&heavy, 0.99),
        served,
        errors,
        total: work.len(),
    }
}

pub(super) async fn flood(bin: &str, secs: u64) {
    let mut r = Vec::new();
    for name in ["one-a", "one-b"] {
        r.push(
            Replica::builder(name)
                .delay(WORK)
                .concurrency(1)
                .spawn()
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let base = "max_inflight = 1\nqueue = { size = 10000, timeout = \"120s\" }\n";
    let fair = "fair_share = \"header:x-tenant\"\n";
    let prio = "priority = { header = \"x-priority\", classes = [\"interactive\", \"default\", \"batch\"], max_wait_behind = \"30s\" }\n";
    // HAProxy's queue orders by priority class (lower first), then arrival.
    let haproxy_prio = "  http-request set-priority-class int(-1) if { req.hdr(x-priority) -m str interactive }\n  \
                        http-request set-priority-class int(1) if { req.hdr(x-priority) -m str batch }\n";
    type Start<'a> = Box<dyn Fn(u16) -> Proc + 'a>;
    let (dir, r) = (dir.path(), &r);
    let modelgate = |name: &'static str, upstream: String| -> Start<'_> {
        Box::new(move |port| modelgate_with(bin, dir, port, name, &upstream, r))
    };
    let systems: Vec<(&str, Start)> = vec![
        (
            "haproxy leastconn, maxconn 1 (arrival order)",
            Box::new(|port| haproxy_rules(dir, port, r, Some(1), "")),
        ),
        (
            "haproxy maxconn 1, set-priority-class from x-priority",
            Box::new(|port| haproxy_rules(dir, port, r, Some(1), haproxy_prio)),
        ),
        (
            "modelgate, arrival order (FIFO)",
            modelgate("f0", base.to_string()),
        ),
        (
            "modelgate fair_share = \"header:x-tenant\"",
            modelgate("f1", format!("{base}{fair}")),
        ),
        (
            "modelgate priority (light interactive, heavy batch)",
            modelgate("f2", format!("{base}{prio}")),
        ),
        (
            "modelgate fair_share + priority",
            modelgate("f3", format!("{base}{fair}{prio}")),
        ),
    ];
    let work = arrivals(secs);
    let mut rows = Vec::new();
    for (name, start) in &systems {
        let port = free_port();
        let _proc = start(port);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_up(addr).await;
        eprintln!("running {name} for {secs}s at {RATE} req/s ...");
        let w = load(addr, &work).await;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let row = format!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {}/{} |",
            ms(w.light_p50),
            ms(w.light_p99),
            ms(w.heavy_p50),
            ms(w.heavy_p99),
            w.served,
            w.errors,
            w.total
        );
        eprintln!("{row}");
        rows.push(row);
        // The flood's backlog drains before the next configuration starts.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    print_table(
        &format!("(f) {secs} s of Poisson arrivals at {RATE} req/s (110% of capacity) from 1 heavy requester (10x) and {LIGHT} light ones; 2 replicas serving one request at a time, 100 ms each, max_inflight = 1"),
        &["proxy and queue order", "light p50 wait ms", "light p99 wait ms", "heavy p50 wait ms", "heavy p99 wait ms", "served req/s", "errors"],
        &rows,
    );
}
