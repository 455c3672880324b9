//! Slow replicas under load, side by side: modelgate (least_outstanding and
//! round_robin), nginx `least_conn` and HAProxy `leastconn` with `maxconn`, in
//! front of the same three in-process replicas in the same run.
//!
//! Replicas run at most 2 requests at once (more wait inside the replica, as a
//! model server's batch slots do); two take 50 ms per request, one 200 ms (4x
//! slower). Capacity is 2/0.05 + 2/0.05 + 2/0.2 = 90 req/s; the load is an open
//! loop of Poisson arrivals at 80% of that (the same seeded sequence for every proxy), and latency is measured from each request's scheduled start,
//! so a stalled proxy cannot hide its queueing (no coordinated omission).
//!
//! Then (scenario c, [`outside_load`]): two replicas, one of them also loaded by
//! clients that do not go through the proxy, so its queue shows only in its own
//! `/metrics`; the share of proxied requests it gets and their p99 with
//! `[upstream.m.load] metrics` on and off, beside nginx and HAProxy.
//!
//! Scenarios (b) and (d) are in [`mixed`]: replicas that serve one request at a
//! time under mixed long and short requests, and a replica with a capacity knee
//! behind a learned `max_inflight`.
//!
//! Scenario (f) is in [`fairness`]: one requester flooding a capped upstream, with
//! and without `fair_share` and `priority` (modelgate only; `benches/fairness.sh`).
//!
//! Run with `bash benches/balance_compare.sh` (it builds the release binary and
//! finds nginx and haproxy); `SCENARIO=b`, `c`, `d` or `f` runs only that table,
//! `SECS` sets the seconds per system (default 60). With `taskset` and two CPUs
//! the proxies run on CPU 0 and this process (load generator and replicas) on
//! CPU 1, as in `benches/compare.sh` (`PROXY_CPU`, `LOAD_CPU` override).

#![allow(clippy::print_stdout, clippy::print_stderr)] // the tables are the output
#![allow(unreachable_pub)] // a bench crate has no public API

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use modelgate::demo::replica::{Replica, ReplicaHandle};

const RATE: f64 = 72.0; // 80% of 90 req/s
const FAST: Duration = Duration::from_millis(50);
const SLOW: Duration = Duration::from_millis(200);

#[path = "support/procs.rs"]
mod procs;
use procs::{free_port, Proc};

fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    p
}

/// The CPU the proxies run on and the one the load generator and replicas run
/// on (this process), as `benches/compare.sh` pins them; `PROXY_CPU` and
/// `LOAD_CPU` override. `None` without `taskset` or with one CPU.
fn cpus() -> Option<(String, String)> {
    static CPUS: std::sync::OnceLock<Option<(String, String)>> = std::sync::OnceLock::new();
    CPUS.get_or_init(|| {
        let two = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
        let taskset = Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        (two && taskset).then(|| {
            let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
            (var("PROXY_CPU", "0"), var("LOAD_CPU", "1"))
        })
    })
    .clone()
}

/// Pins this process (every thread; call it before starting any) to the load CPU.
fn pin_self() {
    match cpus() {
        Some((_, load)) => {
            let pid = std::process::id().to_string();
            let ok = Command::new("taskset")
                .args(["-a", "-p", "-c", &load, &pid])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            eprintln!(
                "load generator and replicas on CPU {load}{}",
                if ok { "" } else { " (taskset failed)" }
            );
        }
        None => eprintln!("taskset missing or one CPU: not pinning"),
    }
}

/// A command that runs `program` on the proxy CPU (as is without pinning).
fn on_proxy_cpu(program: impl AsRef<std::ffi::OsStr>) -> Command {
    match cpus() {
        Some((proxy, _)) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(proxy).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn spawn(cmd: &mut Command) -> Proc {
    Proc(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}")),
    )
}

fn modelgate(
    bin: &str,
    dir: &std::path::Path,
    port: u16,
    balance: &str,
    r: &[ReplicaHandle],
) -> Proc {
    let upstream = format!("balance = \"{balance}\"\nmax_inflight = 2\nqueue = {{ size = 10000, timeout = \"60s\" }}\n");
    modelgate_with(bin, dir, port, balance, &upstream, r)
}

/// modelgate with `upstream` as the lines of `[upstream.m]` (after `backends`).
fn modelgate_with(
    bin: &str,
    dir: &std::path::Path,
    port: u16,
    name: &str,
    upstream: &str,
    r: &[ReplicaHandle],
) -> Proc {
    modelgate_listening(
        bin,
        dir,
        &format!("http = \"127.0.0.1:{port}\""),
        name,
        upstream,
        r,
    )
}

/// modelgate with `listen` as the lines of `[listen]` besides `workers = 1`.
fn modelgate_listening(
    bin: &str,
    dir: &std::path::Path,
    listen: &str,
    name: &str,
    upstream: &str,
    r: &[ReplicaHandle],
) -> Proc {
    let backends: Vec<String> = r.iter().map(|r| format!("\"{}\"", r.addr())).collect();
    let cfg = format!(
        "[listen]\n{listen}\nworkers = 1\n[log]\naccess = \"off\"\n[[route]]\nname = \"m\"\npath = \"/\"\nupstream = \"m\"\n\
         [upstream.m]\nbackends = [{}]\n{upstream}",
        backends.join(", ")
    );
    let file = write(dir, &format!("modelgate-{name}.toml"), &cfg);
    spawn(
        on_proxy_cpu(bin)
            .args(["run", "-c"])
            .arg(file)
            .env("RUST_LOG", "error"),
    )
}

fn nginx(dir: &std::path::Path, port: u16, r: &[ReplicaHandle]) -> Proc {
    let servers: String = r
        .iter()
        .map(|r| format!("    server {};\n", r.addr()))
        .collect();
    let cfg = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  upstream m {{\n    least_conn;\n{servers}    keepalive 64;\n  }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://m;\n      proxy_http_version 1.1;\n\
         proxy_set_header Connection \"\";\n      proxy_read_timeout 60s;\n    }}\n  }}\n}}\n",
        d = dir.display()
    );
    let file = write(dir, "nginx.conf", &cfg);
    spawn(on_proxy_cpu("nginx").arg("-c").arg(file).arg("-p").arg(dir))
}

fn haproxy(dir: &std::path::Path, port: u16, r: &[ReplicaHandle]) -> Proc {
    haproxy_with(dir, port, r, Some(2))
}

/// HAProxy `leastconn` with `maxconn` per server (`None`: no per-server cap).
fn haproxy_with(
    dir: &std::path::Path,
    port: u16,
    r: &[ReplicaHandle],
    maxconn: Option<u32>,
) -> Proc {
    haproxy_rules(dir, port, r, maxconn, "")
}

/// [`haproxy_with`] plus `rules`, lines of its backend section (e.g. `http-request`).
fn haproxy_rules(
    dir: &std::path::Path,
    port: u16,
    r: &[ReplicaHandle],
    maxconn: Option<u32>,
    rules: &str,
) -> Proc {
    let cap = maxconn.map_or(String::new(), |n| format!(" maxconn {n}"));
    let servers: String = r
        .iter()
        .enumerate()
        .map(|(i, r)| format!("  server r{i} {}{cap}\n", r.addr()))
        .collect();
    let cfg = format!(
        "global\n  maxconn 4000\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  timeout queue 60s\n\
         frontend f\n  bind 127.0.0.1:{port}\n  default_backend m\nbackend m\n  balance leastconn\n  http-reuse always\n{rules}{servers}"
    );
    let file = write(dir, "haproxy.cfg", &cfg);
    spawn(on_proxy_cpu("haproxy").arg("-db").arg("-f").arg(file))
}

async fn wait_up(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Outcome {
    p50: Duration,
    p99: Duration,
    max: Duration,
    errors: usize,
    total: usize,
    slow_share: f64,
}

/// Open-loop load at `rate` for `secs`; latency counted from the scheduled start;
/// the share of answers that came from the replica named `slow` (its `x-replica`).
async fn load(addr: SocketAddr, secs: u64, rate: f64, slow: &str) -> Outcome {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://{addr}/v1/predict");
    let n = (rate * secs as f64) as usize;
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::with_capacity(n);
    // Poisson arrivals (exponential gaps, fixed seed): real clients come in bursts.
    let mut rng = fastrand::Rng::with_seed(7);
    let mut offset = 0.0;
    for _ in 0..n {
        offset += -(1.0 - rng.f64()).ln() / rate;
        let at = start + Duration::from_secs_f64(offset);
        let (c, url, slow) = (client.clone(), url.clone(), slow.to_string());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let (ok, to_slow) = match c
                .post(url)
                .body("{\"input\":\"x\"}")
                .timeout(Duration::from_secs(60))
                .send()
                .await
            {
                Ok(r) => {
                    let to_slow = r
                        .headers()
                        .get("x-replica")
                        .is_some_and(|v| v == slow.as_str());
                    (r.status() == 200 && r.bytes().await.is_ok(), to_slow)
                }
                Err(_) => (false, false),
            };
            (at.elapsed(), ok, to_slow)
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut errors = 0;
    let mut slow_hits = 0;
    for t in tasks {
        let (d, ok, to_slow) = t.await.unwrap_or((Duration::MAX, false, false));
        slow_hits += usize::from(to_slow);
        if ok {
            lat.push(d);
        } else {
            errors += 1;
        }
    }
    lat.sort();
    Outcome {
        p50: pct(&lat, 0.50),
        p99: pct(&lat, 0.99),
        max: lat.last().copied().unwrap_or_default(),
        errors,
        total: n,
        slow_share: slow_hits as f64 / n as f64,
    }
}

/// The `p` quantile (0..1) of sorted latencies; zero when there are none.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / `cargo bench -- --list`: nothing to list
    }
    let Ok(bin) = std::env::var("MODELGATE_BIN") else {
        eprintln!("set MODELGATE_BIN (run benches/balance_compare.sh)");
        return;
    };
    let secs: u64 = std::env::var("SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    pin_self();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    match std::env::var("SCENARIO").as_deref() {
        Ok("b") => return rt.block_on(mixed::one_at_a_time(&bin, secs)),
        Ok("c") => return rt.block_on(outside_load(&bin, secs)),
        Ok("d") => return rt.block_on(mixed::knee(&bin, secs)),
        Ok("f") => return rt.block_on(fairness::flood(&bin, secs)),
        _ => {}
    }
    rt.block_on(async {
        let r = vec![
            Replica::builder("fast-a").delay(FAST).concurrency(2).spawn().await.unwrap_or_else(|e| panic!("{e}")),
            Replica::builder("fast-b").delay(FAST).concurrency(2).spawn().await.unwrap_or_else(|e| panic!("{e}")),
            Replica::builder("slow-c").delay(SLOW).concurrency(2).spawn().await.unwrap_or_else(|e| panic!("{e}")),
        ];
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut rows = Vec::new();
        type Start<'a> = Box<dyn Fn(u16) -> Proc + 'a>;
        let systems: Vec<(&str, Start)> = vec![
            ("modelgate least_outstanding, max_inflight=2", Box::new(|p| modelgate(&bin, dir.path(), p, "least_outstanding", &r))),
            ("modelgate round_robin, max_inflight=2", Box::new(|p| modelgate(&bin, dir.path(), p, "round_robin", &r))),
            ("nginx least_conn", Box::new(|p| nginx(dir.path(), p, &r))),
            ("haproxy leastconn, maxconn 2/server", Box::new(|p| haproxy(dir.path(), p, &r))),
        ];
        for (name, start) in &systems {
            let port = free_port();
            let _proc = start(port);
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            wait_up(addr).await;
            eprintln!("running {name} for {secs}s at {RATE} req/s ...");
            let o = load(addr, secs, RATE, r[2].name()).await;
            let row = format!(
                "| {name} | {:.0} | {:.0} | {:.0} | {}/{} | {:.1}% |",
                o.p50.as_secs_f64() * 1e3,
                o.p99.as_secs_f64() * 1e3,
                o.max.as_secs_f64() * 1e3,
                o.errors,
                o.total,
                o.slow_share * 100.0
            );
            eprintln!("{row}");
            rows.push(row);
            // Let in-flight work drain so the next system starts on idle replicas.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        print_table(
            &format!("{secs} s of Poisson arrivals at {RATE} req/s (80% of capacity); 3 replicas with 2 slots each, 50/50/200 ms"),
            &["proxy", "p50 ms", "p99 ms", "max ms", "errors", "share to slow replica"],
            &rows,
        );
    });
    rt.block_on(mixed::one_at_a_time(&bin, secs));
    rt.block_on(outside_load(&bin, secs));
    rt.block_on(mixed::knee(&bin, secs));
}

#[path = "balance/fairness.rs"]
mod fairness;
#[path = "balance/mixed.rs"]
mod mixed;

/// Proxied load in scenario c: 50% of one replica's capacity (2 slots / 50 ms).
const RATE_C: f64 = 20.0;
/// Clients that load replica A directly, each sending its next request as soon as
/// the last is answered: A always runs 2 and has 4 waiting.
const OUTSIDE_CLIENTS: usize = 6;

/// Keeps `OUTSIDE_CLIENTS` requests on `r` until `stop`; counts the answers.
fn outside_clients(r: &ReplicaHandle, stop: &Arc<AtomicBool>, done: &Arc<AtomicU64>) {
    let url = format!("http://{}/v1/predict", r.addr());
    for _ in 0..OUTSIDE_CLIENTS {
        let (url, stop, done) = (url.clone(), Arc::clone(stop), Arc::clone(done));
        tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            while !stop.load(Ordering::Relaxed) {
                if c.post(&url)
                    .body("{\"input\":\"outside\"}")
                    .send()
                    .await
                    .is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Scenario c: replica A is kept busy by clients that do not use the proxy; only
/// its `/metrics` page (vLLM gauges) shows it. Each proxy gets the same Poisson
/// load at `RATE_C`; the table gives the share that went to A and the latency.
async fn outside_load(bin: &str, secs: u64) {
    let r = vec![
        Replica::builder("a-busy")
            .delay(FAST)
            .concurrency(2)
            .spawn()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Replica::builder("b")
            .delay(FAST)
            .concurrency(2)
            .spawn()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let outside = Arc::new(AtomicU64::new(0));
    outside_clients(&r[0], &stop, &outside);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut rows = Vec::new();
    type Start<'a> = Box<dyn Fn(u16) -> Proc + 'a>;
    let plain = "balance = \"least_outstanding\"\n";
    let polled = "balance = \"least_outstanding\"\n[upstream.m.load]\nmetrics = \"/metrics\"\nevery = \"250ms\"\n";
    let systems: Vec<(&str, Start)> = vec![
        (
            "modelgate least_outstanding, load.metrics off",
            Box::new(|p| modelgate_with(bin, dir.path(), p, "c-off", plain, &r)),
        ),
        (
            "modelgate least_outstanding, load.metrics on",
            Box::new(|p| modelgate_with(bin, dir.path(), p, "c-on", polled, &r)),
        ),
        ("nginx least_conn", Box::new(|p| nginx(dir.path(), p, &r))),
        (
            "haproxy leastconn, maxconn 2/server",
            Box::new(|p| haproxy(dir.path(), p, &r)),
        ),
    ];
    for (name, start) in &systems {
        let port = free_port();
        let _proc = start(port);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_up(addr).await;
        // A first poll of the page (modelgate) before the load starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        eprintln!("running {name} for {secs}s at {RATE_C} req/s, A loaded from outside ...");
        let before = outside.load(Ordering::Relaxed);
        let o = load(addr, secs, RATE_C, r[0].name()).await;
        let outside_rate = (outside.load(Ordering::Relaxed) - before) as f64 / secs as f64;
        let row = format!(
            "| {name} | {:.1}% | {:.0} | {:.0} | {:.0} | {}/{} | {outside_rate:.0} |",
            o.slow_share * 100.0,
            o.p50.as_secs_f64() * 1e3,
            o.p99.as_secs_f64() * 1e3,
            o.max.as_secs_f64() * 1e3,
            o.errors,
            o.total,
        );
        eprintln!("{row}");
        rows.push(row);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    print_table(
        &format!("(c) {secs} s of Poisson arrivals at {RATE_C} req/s through the proxy; 2 replicas with 2 slots of 50 ms; A also kept busy by {OUTSIDE_CLIENTS} clients that do not use the proxy"),
        &["proxy", "share to A", "p50 ms", "p99 ms", "max ms", "errors", "outside req/s on A"],
        &rows,
    );
}

/// Prints one result table: a caption line, the header row of `columns` with its
/// Markdown separator, and the rows already formatted as `| a | b |` lines.
fn print_table(caption: &str, columns: &[&str], rows: &[String]) {
    println!("\n{caption}\n");
    println!("| {} |", columns.join(" | "));
    println!("|{}", "---|".repeat(columns.len()));
    for row in rows {
        println!("{row}");
    }
}
