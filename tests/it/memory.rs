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

/// Bound on the proxy's resident memory once idle connections have closed, in percent
/// over the warmed-up baseline (the target of issue #16). jemalloc's background
/// threads purge what the connections freed within about a second of its dirty decay
/// (`.cargo/config.toml`), idle proxy or not: +3.3-4.9% measured (debug build, 2,000
/// connections); mimalloc with a purge delay of 0 and lazily committed arenas, +7.9%.
const MAX_RSS_AFTER_CLOSE_PERCENT: u64 = 10;
/// Idle connections opened and closed for that. At about 2.8 KiB each, 2,000 raise the
/// debug build's RSS (about 33 MiB, most of it the binary's pages) by barely more than
/// the bound. What stays after the close grows with the count (+4.9% after 2,000,
/// +8.2% after 4,000; +15-21% after 10,000 in a release build): memory still in use,
/// not freed pages.
const CLOSED_CONNS: usize = 3000;

/// Memory that idle connections used goes back to the OS once they close: RSS comes
/// back near the baseline while the proxy is idle (nothing else makes it free or
/// allocate). The connections must have raised RSS past that bound first, or the test
/// would prove nothing.
#[tokio::test]
async fn memory_returns_to_the_os_after_idle_connections_close() {
    let (_replica, proxy, baseline, _) = warmed_up_proxy(None).await;
    let conns = idle_connections(proxy.http_addr(), CLOSED_CONNS).await;
    let held = proxy.rss_kib();
    let limit = baseline + baseline * MAX_RSS_AFTER_CLOSE_PERCENT / 100;
    assert!(
        held > limit,
        "{CLOSED_CONNS} idle connections raised RSS only {baseline} -> {held} KiB, within \
         {MAX_RSS_AFTER_CLOSE_PERCENT}% of the baseline: the test measures nothing"
    );
    let fds = open_fds(&proxy);
    drop(conns);
    eventually(
        "the proxy closed the idle connections",
        PATIENCE,
        || async { open_fds(&proxy) + CLOSED_CONNS <= fds + 16 },
    )
    .await;
    eventually(
        &format!(
            "RSS back under {limit} KiB, {MAX_RSS_AFTER_CLOSE_PERCENT}% over the baseline \
             (baseline {baseline} KiB, {held} KiB with {CLOSED_CONNS} idle connections)"
        ),
        PATIENCE,
        || async { proxy.rss_kib() <= limit },
    )
    .await;
}

/// Threads of process `pid` whose name is `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .count()
}

/// jemalloc's own report of its option settings, which it prints to stderr at exit with
/// `stats_print:true`, of `modelgate --version` run with `_RJEM_MALLOC_CONF=conf`.
fn allocator_options(conf: &str) -> String {
    let out = std::process::Command::new(modelgate_bin())
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The allocator runs with the options `.cargo/config.toml` compiles in (purging
/// background threads, a one-second dirty decay, no muzzy stage), which is what gives
/// freed memory back while the proxy is idle; `_RJEM_MALLOC_CONF` at run time
/// overrides them. A running proxy has the purging thread.
#[tokio::test]
async fn the_allocator_runs_with_the_compiled_in_options() {
    let compiled = allocator_options("stats_print:true");
    for opt in [
        "opt.background_thread: true",
        "opt.dirty_decay_ms: 1000",
        "opt.muzzy_decay_ms: 0",
    ] {
        assert!(compiled.contains(opt), "no {opt:?} in:\n{compiled}");
    }
    let overridden = allocator_options("stats_print:true,dirty_decay_ms:5000");
    assert!(
        overridden.contains("opt.dirty_decay_ms: 5000"),
        "_RJEM_MALLOC_CONF did not override the decay:\n{overridden}"
    );

    let replica = Replica::builder("r").spawn().await.unwrap();
    let proxy = TestProxy::start(&pool_config(&format!("\"{}\"", replica.addr()), "")).await;
    eventually(
        "the proxy has a jemalloc purging thread",
        PATIENCE,
        || async { threads_named(proxy.pid(), "jemalloc_bg_thd") > 0 },
    )
    .await;
}
