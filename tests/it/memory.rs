//! Memory per connection: idle keep-alive clients must cost the proxy a few KiB
//! each (as nginx), and what they used must go back to the OS once they leave.

use modelgate::demo::replica::{Replica, ReplicaHandle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::tls::{connect, TestCa};
use crate::support::{eventually, modelgate_bin, pool_config, TestProxy, PATIENCE};

/// Idle connections held at once; enough that a few KiB each dwarfs RSS noise.
const CONNS: usize = 2000;
/// Bound on the proxy's resident memory per idle keep-alive client connection:
/// 2,004-2,031 bytes measured (debug build, 2,000 connections, since the connection's
/// future no longer keeps room for the HTTP/1 session it builds; 3.2-3.3 KiB before,
/// 3.7 KiB before a waiting connection held no boxed peek future and the handshake's
/// state left the task, 5.5-6.1 before the next request was awaited before building
/// the session; nginx: under 1 KiB; pingora 0.9.1 as released: 91-105 KiB). The
/// margin absorbs allocator and RSS noise on a loaded host.
const MAX_BYTES_PER_CONN: u64 = 3 * 1024;
/// Idle TLS connections held at once (fewer: each costs a handshake on both sides).
const TLS_CONNS: usize = 1000;
/// Bound on the proxy's resident memory per idle keep-alive TLS client connection:
/// 8,052-8,318 bytes measured (debug build, 1,000 connections; 9.1-9.7 KiB before the
/// connection's future lost the HTTP/1 session's room, 17 KiB before the rustls
/// handshake slots were boxed and the session was freed while waiting). Most of what
/// remains is rustls' own: its connection state, its 4 KiB record buffer, its keys.
const MAX_BYTES_PER_TLS_CONN: u64 = 11 * 1024;

/// Sends one GET on `stream` and reads its whole answer (headers and the
/// Content-Length body), leaving the connection open and idle.
async fn one_request<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
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

/// Opens `n` TLS connections to `addr` (SNI `memory.test`), each served one request
/// and left open.
async fn idle_tls_connections(
    addr: std::net::SocketAddr,
    n: usize,
    ca: &TestCa,
) -> Vec<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = ca.client(&[b"http/1.1"]);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = connect(addr, Some("memory.test"), config.clone())
            .await
            .unwrap();
        one_request(&mut s).await;
        conns.push(s);
    }
    conns
}

/// A proxy over one replica, access log off (with an HTTPS listener for `memory.test`
/// when `tls` is given), warmed up with plain (and TLS) connections: its runtime,
/// upstream pool, TLS session cache and allocator have reached their steady state, so
/// the returned baseline RSS (KiB) holds everything but the per-connection cost.
/// Keep the replica (and the certificate directory) alive.
async fn warmed_up_proxy(
    tls: Option<&TestCa>,
) -> (ReplicaHandle, TestProxy, u64, Option<tempfile::TempDir>) {
    warmed_up_proxy_with(tls, "").await
}

/// [`warmed_up_proxy`] with `extra` added to the upstream's configuration.
async fn warmed_up_proxy_with(
    tls: Option<&TestCa>,
    extra: &str,
) -> (ReplicaHandle, TestProxy, u64, Option<tempfile::TempDir>) {
    let r = Replica::builder("r1").spawn().await.unwrap();
    let mut config =
        pool_config(&format!("\"{}\"", r.addr()), extra) + "\n[log]\naccess = \"off\"\n";
    let dir = tls.map(|ca| {
        let dir = tempfile::tempdir().unwrap();
        ca.issue(&["memory.test"]).write(dir.path(), "memory");
        config = config.replacen("[listen]\n", "[listen]\nhttps = \"{https}\"\n", 1)
            + &format!("\n[tls]\ncerts = \"{}\"\n", dir.path().display());
        dir
    });
    let proxy = TestProxy::start(&config).await;
    let fds = open_fds(&proxy);
    drop(idle_connections(proxy.http_addr(), 200).await);
    if let Some(ca) = tls {
        // more than the server's TLS session cache holds (256)
        drop(idle_tls_connections(proxy.https_addr(), 300, ca).await);
    }
    // The warm-up client connections are closed (a few upstream keep-alive ones stay).
    eventually(
        "the proxy closed the warm-up connections",
        PATIENCE,
        || async { open_fds(&proxy) <= fds + 16 },
    )
    .await;
    let baseline = proxy.rss_kib();
    (r, proxy, baseline, dir)
}

/// Resident memory per connection in bytes, from RSS in KiB before and after `n`.
fn bytes_per_conn(baseline_kib: u64, held_kib: u64, n: usize) -> u64 {
    held_kib.saturating_sub(baseline_kib) * 1024 / n as u64
}

#[tokio::test]
async fn idle_keepalive_connections_cost_a_few_kib_each() {
    let (_replica, proxy, baseline, _) = warmed_up_proxy(None).await;

    // Held open (not dropped) until the end of the test.
    let _conns = idle_connections(proxy.http_addr(), CONNS).await;
    let held = proxy.rss_kib();
    let per_conn = bytes_per_conn(baseline, held, CONNS);
    assert!(
        per_conn <= MAX_BYTES_PER_CONN,
        "{CONNS} idle connections took {} KiB ({per_conn} bytes each, bound \
         {MAX_BYTES_PER_CONN}); RSS {baseline} -> {held} KiB",
        held.saturating_sub(baseline)
    );
}

#[tokio::test]
async fn idle_keepalive_tls_connections_cost_a_few_kib_each() {
    let ca = TestCa::new();
    let (_replica, proxy, baseline, _dir) = warmed_up_proxy(Some(&ca)).await;

    let _conns = idle_tls_connections(proxy.https_addr(), TLS_CONNS, &ca).await;
    let held = proxy.rss_kib();
    let per_conn = bytes_per_conn(baseline, held, TLS_CONNS);
    assert!(
        per_conn <= MAX_BYTES_PER_TLS_CONN,
        "{TLS_CONNS} idle TLS connections took {} KiB ({per_conn} bytes each, bound \
         {MAX_BYTES_PER_TLS_CONN}); RSS {baseline} -> {held} KiB",
        held.saturating_sub(baseline)
    );
}

/// Opens an SSE stream of `tokens` tokens `interval_ms` apart (the demo replica's
/// `/v1/stream`) on a new connection and reads until `until` has arrived.
async fn sse_stream(
    addr: std::net::SocketAddr,
    tokens: u32,
    interval_ms: u64,
    until: &[u8],
) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/stream?tokens={tokens}&interval_ms={interval_ms} HTTP/1.1\r\n\
         Host: memory.test\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::with_capacity(1024);
    while !buf.windows(until.len()).any(|w| w == until) {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "proxy closed an SSE stream: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    s
}

/// SSE streams held in progress at once.
const SSE_STREAMS: usize = 1000;
/// Bound on the proxy's resident memory per SSE stream in progress (waiting for its
/// next token), client and replica connections included: 32,677-32,718 bytes
/// measured (debug build, 1,000 streams, since the request's future holds no dead
/// copy of the proxy session; 33,128-33,234 before, 42,250 before the 4 KiB header
/// buffers of the request and the response were given back once their heads were
/// parsed and the connection's future lost the HTTP/1 session's room).
const MAX_BYTES_PER_SSE_STREAM: u64 = 36 * 1024;

#[tokio::test]
async fn sse_streams_in_progress_cost_a_bounded_amount_each() {
    // No cap on the replica's requests in flight: all streams run at once.
    let (replica, proxy, _, _) = warmed_up_proxy_with(None, "max_inflight = 0").await;
    for _ in 0..20 {
        sse_stream(proxy.http_addr(), 2, 0, b"data: [DONE]").await;
    }
    eventually("the warm-up streams ended", PATIENCE, || async {
        replica.inflight() == 0
    })
    .await;
    let baseline = proxy.rss_kib();

    // Each stream's first token has arrived; the next is minutes away.
    let mut streams = Vec::with_capacity(SSE_STREAMS);
    for _ in 0..SSE_STREAMS {
        streams.push(sse_stream(proxy.http_addr(), 2, 600_000, b"data: {").await);
    }
    eventually(
        &format!("{SSE_STREAMS} streams in progress at the replica"),
        PATIENCE,
        || async { replica.inflight() == SSE_STREAMS as u64 },
    )
    .await;
    let held = proxy.rss_kib();
    let per_stream = bytes_per_conn(baseline, held, SSE_STREAMS);
    assert!(
        per_stream <= MAX_BYTES_PER_SSE_STREAM,
        "{SSE_STREAMS} SSE streams in progress took {} KiB ({per_stream} bytes each, \
         bound {MAX_BYTES_PER_SSE_STREAM}); RSS {baseline} -> {held} KiB",
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
    let (_replica, proxy, baseline, _) = warmed_up_proxy(None).await;
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
