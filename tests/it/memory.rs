//! Memory per connection: idle keep-alive clients must cost the proxy a few KiB
//! each (as nginx), and what they used must go back to the OS once they leave.

use modelgate::demo::replica::{Replica, ReplicaHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{eventually, modelgate_bin, pool_config, TestProxy, PATIENCE};

/// Idle connections held at once; enough that a few KiB each dwarfs RSS noise.
const CONNS: usize = 2000;
/// Bound on the proxy's resident memory per idle keep-alive client connection:
/// 3.6-3.7 KiB measured (release and debug builds, 2,000 connections, since the
/// connection waits for its next request before building the session; 5.5-6.1 KiB
/// before; nginx: under 1 KiB; pingora 0.9.1 as released: 91-105 KiB). The margin
/// absorbs allocator and RSS noise.
const MAX_KIB_PER_CONN: u64 = 5;

/// Sends one GET on `stream` and reads its whole answer (headers and the
/// Content-Length body), leaving the connection open and idle.
async fn one_request(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /idle HTTP/1.1\r\nHost: memory.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::with_capacity(2048);
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "proxy closed a keep-alive connection");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "answer: {head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("the answer has a Content-Length");
        if buf.len() >= end + 4 + len {
            return;
        }
    }
}

/// File descriptors the proxy process holds open.
fn open_fds(proxy: &TestProxy) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", proxy.pid())).map_or(0, Iterator::count)
}

/// Opens `n` connections to `addr`, each served one request and left open.
async fn idle_connections(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        one_request(&mut s).await;
        conns.push(s);
    }
    conns
}

/// A proxy over one replica, access log off, warmed up: its runtime, upstream pool
/// and allocator have reached their steady state, so the returned baseline RSS (KiB)
/// holds everything but the per-connection cost. Keep the replica alive.
async fn warmed_up_proxy() -> (ReplicaHandle, TestProxy, u64) {
    let r = Replica::builder("r1").spawn().await.unwrap();
    let config = pool_config(&format!("\"{}\"", r.addr()), "") + "\n[log]\naccess = \"off\"\n";
    let proxy = TestProxy::start(&config).await;
    let fds = open_fds(&proxy);
    drop(idle_connections(proxy.http_addr(), 200).await);
    // The 200 client connections are closed (a few upstream keep-alive ones stay).
    eventually(
        "the proxy closed the warm-up connections",
        PATIENCE,
        || async { open_fds(&proxy) <= fds + 16 },
    )
    .await;
    let baseline = proxy.rss_kib();
    (r, proxy, baseline)
}

#[tokio::test]
async fn idle_keepalive_connections_cost_a_few_kib_each() {
    let (_replica, proxy, baseline) = warmed_up_proxy().await;

    // Held open (not dropped) until the end of the test.
    let _conns = idle_connections(proxy.http_addr(), CONNS).await;
    let held = proxy.rss_kib();
    let per_conn = held.saturating_sub(baseline) / CONNS as u64;
    assert!(
        per_conn <= MAX_KIB_PER_CONN,
        "{CONNS} idle connections took {} KiB ({per_conn} KiB each, bound {MAX_KIB_PER_CONN}); \
         RSS {baseline} -> {held} KiB",
        held.saturating_sub(baseline)
    );
}

/// The target of returning freed memory: RSS back within 10% of the baseline once
/// idle connections close. The binary now runs mimalloc with
/// `MIMALLOC_ARENA_EAGER_COMMIT=0` (and a purge delay of 0): with eagerly committed
/// arenas the purged pages stayed resident (anonymous RSS +18-53% after the close).
/// Measured by hand once since (debug build, 2,000 connections): total RSS +7.9%,
/// close to the bound, so the test stays ignored until it has passed repeatedly on a
/// loaded host. Run with `--ignored`.
#[tokio::test]
#[ignore = "not yet confirmed on a loaded host: measured once at +7.9% of a 10% bound"]
async fn memory_returns_to_the_os_after_idle_connections_close() {
    let (_replica, proxy, baseline) = warmed_up_proxy().await;
    let conns = idle_connections(proxy.http_addr(), CONNS).await;
    let held = proxy.rss_kib();
    drop(conns);
    // Freed memory goes back to the OS: RSS returns to within 10% of the baseline.
    let limit = baseline + baseline / 10;
    eventually(
        &format!("RSS back under {limit} KiB (baseline {baseline} KiB, held {held} KiB)"),
        PATIENCE,
        || async { proxy.rss_kib() <= limit },
    )
    .await;
}

/// `modelgate allocator-env` prints the settings a running proxy re-executed itself
/// with (the bench scripts export them before starting it under valgrind).
#[tokio::test]
async fn allocator_env_prints_what_the_process_runs_with() {
    let out = std::process::Command::new(modelgate_bin())
        .arg("allocator-env")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let vars: Vec<&str> = printed.lines().collect();
    assert!(!vars.is_empty());
    let replica = Replica::builder("r").spawn().await.unwrap();
    let proxy = TestProxy::start(&pool_config(&format!("\"{}\"", replica.addr()), "")).await;
    let environ = std::fs::read(format!("/proc/{}/environ", proxy.pid())).unwrap();
    let environ: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
    for var in vars {
        let (name, _) = var.split_once('=').expect("VAR=VALUE");
        assert!(name.starts_with("MIMALLOC_"), "{var}");
        if std::env::var_os(name).is_none() {
            assert!(
                environ.contains(&var.as_bytes()),
                "{var} not set in the proxy"
            );
        }
    }
}
