//! Clients that hang up while their request waits in the queue, on a plain forwarded
//! route (the proxy has not read the body): the request leaves the queue at once,
//! whatever its body (whole with a length, chunked, in part, none) and however the
//! client goes (FIN, reset, TLS close, HTTP/2 stream reset or connection close). Its
//! place goes to a live request, which is then queued and served instead of
//! answered 503; it is counted as 499 with its real queue wait; it never reaches
//! the replica; and the bodies the replica does get arrive whole.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::support::tls::{connect, TestCa};
use crate::support::*;

/// A replica that serves one request at a time, as a Flask dev server does, and
/// holds requests to `/hold` until the test releases them. It records the path and
/// body length of every request it reads to the end.
struct Gated {
    addr: SocketAddr,
    state: Arc<GateState>,
    task: tokio::task::JoinHandle<()>,
}

struct GateState {
    /// Requests being answered right now.
    inflight: AtomicUsize,
    /// (path, body length) of each request, in arrival order.
    seen: Mutex<Vec<(String, usize)>>,
    /// Permits to answer `/hold` requests.
    gate: Semaphore,
}

impl Drop for Gated {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Gated {
    async fn spawn() -> Gated {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(GateState {
            inflight: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
        });
        let s = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = Arc::clone(&s);
                        async move { Ok::<_, Infallible>(answer(s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Gated { addr, state, task }
    }

    fn inflight(&self) -> usize {
        self.state.inflight.load(Ordering::SeqCst)
    }

    /// Lets one held `/hold` request answer.
    fn release(&self) {
        self.state.gate.add_permits(1);
    }

    fn seen(&self) -> Vec<(String, usize)> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn answer(state: Arc<GateState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    struct Inflight<'a>(&'a AtomicUsize);
    impl Drop for Inflight<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    state.inflight.fetch_add(1, Ordering::SeqCst);
    let _inflight = Inflight(&state.inflight);
    let path = req.uri().path().to_string();
    let len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => return Response::new(Full::new(Bytes::new())),
    };
    state.seen.lock().unwrap().push((path.clone(), len));
    if path == "/hold" {
        if let Ok(permit) = state.gate.acquire().await {
            permit.forget();
        }
    }
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

/// A proxy in front of `replica` with one slot and room for one waiter;
/// `listen_extra` adds `[listen]` keys, `tail` tables at the end.
async fn proxy(replica: &Gated, listen_extra: &str, tail: &str) -> TestProxy {
    let toml = pool_config(
        &format!("\"{}\"", replica.addr),
        "max_inflight = 1\nqueue = { size = 1, timeout = \"60s\" }",
    );
    let toml = toml.replacen("[listen]\n", &format!("[listen]\n{listen_extra}"), 1);
    TestProxy::start(&format!("{toml}\n{tail}")).await
}

async fn queued(proxy: &TestProxy) -> u64 {
    proxy.admin_json("/upstreams").await["upstreams"]["pool"]["queued"]
        .as_u64()
        .unwrap()
}

/// The access-log line of the request to `path`, once it is written.
async fn line_of(proxy: &TestProxy, path: &str) -> Value {
    proxy.access_line(path, |v| v["path"] == path).await
}

/// The body of the live request that takes the freed place; the replica must get
/// all of it.
const LIVE_BODY: &[u8] = &[b'x'; 3000];

/// One client that queues and hangs up: `start` sends its request (on a new
/// connection), `leave` hangs up.
trait Leaver {
    async fn leave(self);
}

/// Runs one hang-up: a request holds the only slot, the leaver's request queues
/// (filling the queue: a live request now gets 503), the leaver hangs up, and the
/// queue must empty at once. A live request then queues, is served when the slot
/// frees, and the leaver's request never reaches the replica.
async fn hang_up_frees_the_place<L: Leaver>(
    proxy: &TestProxy,
    replica: &Gated,
    live: &reqwest::Client,
    path: &str,
    start: impl std::future::Future<Output = L>,
) {
    let before = replica.seen().len();
    let holder = tokio::spawn(h1().get(proxy.url("/hold")).send());
    eventually("the slot is taken", PATIENCE, || async {
        replica.inflight() == 1
    })
    .await;
    let leaver = start.await;
    eventually(&format!("{path} queued"), PATIENCE, || async {
        queued(proxy).await == 1
    })
    .await;
    // The queue is full while the request waits.
    let refused = live.get(proxy.url(&format!("{path}/refused"))).send();
    assert_eq!(refused.await.unwrap().status(), 503);

    leaver.leave().await;
    let left_at = std::time::Instant::now();
    eventually(
        &format!("{path} left the queue at once"),
        Duration::from_secs(3),
        || async { queued(proxy).await == 0 },
    )
    .await;
    eprintln!("{path}: left the queue within {:?}", left_at.elapsed());
    let next = format!("{path}/next");
    let admitted = tokio::spawn(live.post(proxy.url(&next)).body(LIVE_BODY).send());
    eventually(&format!("{next} queued"), PATIENCE, || async {
        queued(proxy).await == 1
    })
    .await;
    replica.release();
    assert_eq!(holder.await.unwrap().unwrap().status(), 200);
    assert_eq!(admitted.await.unwrap().unwrap().status(), 200);

    let left = line_of(proxy, path).await;
    assert_eq!(left["status"], 499, "{left}");
    let waited = left["queue_wait"].as_f64().unwrap();
    assert!(waited > 0.0 && waited < 10.0, "{left}");
    line_of(proxy, &next).await;
    let seen = replica.seen()[before..].to_vec();
    assert_eq!(
        seen,
        [("/hold".to_string(), 0), (next, LIVE_BODY.len())],
        "the request of the client that left must never reach the replica"
    );
}

/// Checks the counters after `n` hang-ups on `proxy`.
async fn counted(proxy: &TestProxy, n: f64) {
    eventually("the 499s counted", PATIENCE, || async {
        metric_value(
            proxy,
            r#"modelgate_requests_total{code="499",route="all",upstream="pool"} "#,
        )
        .await
            == n
    })
    .await;
    assert_eq!(
        metric_value(proxy, r#"modelgate_client_aborts_total{upstream="pool"} "#).await,
        n
    );
    // Every request that asked for a slot has its wait recorded (the holders' is
    // 0); those refused at once did not wait.
    eventually("the queue waits recorded", PATIENCE, || async {
        metric_value(
            proxy,
            r#"modelgate_queue_wait_seconds_count{upstream="pool"} "#,
        )
        .await
            == 3.0 * n
    })
    .await;
}

/// An HTTP/1.1 client on a raw connection (plain or TLS).
struct H1<S> {
    conn: S,
    how: Hangup,
}

#[derive(Clone, Copy)]
enum Hangup {
    /// Close (FIN; over TLS, `close_notify` first).
    Close,
    /// Reset (RST: `SO_LINGER` 0).
    Reset,
}

impl<S: AsyncRead + AsyncWrite + Unpin> H1<S> {
    async fn send(mut conn: S, raw: &[u8], how: Hangup) -> Self {
        conn.write_all(raw).await.unwrap();
        conn.flush().await.unwrap();
        H1 { conn, how }
    }
}

impl Leaver for H1<TcpStream> {
    async fn leave(self) {
        if let Hangup::Reset = self.how {
            self.conn.set_zero_linger().unwrap();
        }
        drop(self.conn);
    }
}

impl Leaver for H1<tokio_rustls::client::TlsStream<TcpStream>> {
    async fn leave(mut self) {
        match self.how {
            Hangup::Close => {
                let _ = self.conn.shutdown().await;
            }
            Hangup::Reset => self.conn.get_ref().0.set_zero_linger().unwrap(),
        }
        drop(self.conn);
    }
}

/// The raw HTTP/1.1 requests a leaver sends, by case: (path, request bytes, hang-up).
fn h1_cases() -> Vec<(&'static str, Vec<u8>, Hangup)> {
    let post = |path: &str, framing: &str, body: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: api.test\r\n{framing}\r\n{body}").into_bytes()
    };
    vec![
        (
            "/length",
            post("/length", "Content-Length: 11\r\n", "hello world"),
            Hangup::Close,
        ),
        (
            "/chunked",
            post(
                "/chunked",
                "Transfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            ),
            Hangup::Close,
        ),
        (
            "/get",
            b"GET /get HTTP/1.1\r\nHost: api.test\r\n\r\n".to_vec(),
            Hangup::Close,
        ),
        (
            "/part",
            post("/part", "Content-Length: 1000\r\n", "only the start"),
            Hangup::Close,
        ),
        (
            "/chunked-part",
            post(
                "/chunked-part",
                "Transfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n",
            ),
            Hangup::Close,
        ),
        // Past what pingora reads with the head (64 KiB): the rest lies unread in the
        // kernel's buffer when the FIN comes.
        (
            "/large",
            post("/large", "Content-Length: 81920\r\n", &"x".repeat(80 << 10)),
            Hangup::Close,
        ),
        (
            "/length-reset",
            post("/length-reset", "Content-Length: 11\r\n", "hello world"),
            Hangup::Reset,
        ),
        (
            "/part-reset",
            post("/part-reset", "Content-Length: 1000\r\n", "only the start"),
            Hangup::Reset,
        ),
    ]
}

#[tokio::test]
async fn http1_clients_that_hang_up_while_queued_leave_at_once() {
    let replica = Gated::spawn().await;
    let proxy = proxy(&replica, "", "").await;
    let cases = h1_cases();
    for (path, raw, how) in &cases {
        let start = async {
            let tcp = TcpStream::connect(proxy.http_addr()).await.unwrap();
            H1::send(tcp, raw, *how).await
        };
        hang_up_frees_the_place(&proxy, &replica, &h1(), path, start).await;
    }
    counted(&proxy, cases.len() as f64).await;
}

#[tokio::test]
async fn tls_clients_that_hang_up_while_queued_leave_at_once() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(&["api.test"]).write(dir.path(), "api");
    let replica = Gated::spawn().await;
    let tls = format!("[tls]\ncerts = \"{}\"\n", dir.path().display());
    let proxy = proxy(&replica, "https = \"{https}\"\n", &tls).await;
    let cases = h1_cases();
    for (path, raw, how) in &cases {
        let start = async {
            let tls = connect(
                proxy.https_addr(),
                Some("api.test"),
                ca.client(&[b"http/1.1"]),
            )
            .await
            .unwrap();
            H1::send(tls, raw, *how).await
        };
        hang_up_frees_the_place(&proxy, &replica, &h1(), path, start).await;
    }
    counted(&proxy, cases.len() as f64).await;
}

/// An h2c client with one stream open.
struct H2 {
    connection: tokio::task::JoinHandle<()>,
    stream: h2::SendStream<Bytes>,
    _response: h2::client::ResponseFuture,
    how: H2Hangup,
}

#[derive(Clone, Copy)]
enum H2Hangup {
    /// `RST_STREAM` (CANCEL) on the request's stream, the connection kept.
    ResetStream,
    /// The TCP connection closed, with no GOAWAY.
    CloseConnection,
}

/// A body larger than an HTTP/2 stream's initial window (64 KiB).
static LARGE: [u8; 256 << 10] = [b'x'; 256 << 10];

/// An h2c request of a leaver: `length` is its `content-length` field, if any;
/// `end` ends the stream after `body` (else the body is left unfinished).
struct H2Request {
    path: &'static str,
    method: &'static str,
    length: Option<usize>,
    body: &'static [u8],
    end: bool,
    how: H2Hangup,
}

impl H2Request {
    const fn new(path: &'static str, method: &'static str, how: H2Hangup) -> Self {
        H2Request {
            path,
            method,
            length: None,
            body: b"",
            end: true,
            how,
        }
    }

    const fn body(mut self, length: Option<usize>, body: &'static [u8], end: bool) -> Self {
        self.length = length;
        self.body = body;
        self.end = end;
        self
    }
}

impl H2 {
    /// Opens a connection and sends `r` on it.
    async fn send(addr: SocketAddr, r: &H2Request) -> H2 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.unwrap();
        let mut req = http::Request::builder()
            .method(r.method)
            .uri(format!("http://api.test{}", r.path));
        if let Some(n) = r.length {
            req = req.header("content-length", n);
        }
        let no_body = r.body.is_empty() && r.end;
        let (response, mut stream) = client.send_request(req.body(()).unwrap(), no_body).unwrap();
        if !no_body {
            stream.send_data(Bytes::from_static(r.body), r.end).unwrap();
        }
        H2 {
            connection,
            stream,
            _response: response,
            how: r.how,
        }
    }
}

impl Leaver for H2 {
    async fn leave(mut self) {
        match self.how {
            H2Hangup::ResetStream => self.stream.send_reset(h2::Reason::CANCEL),
            H2Hangup::CloseConnection => self.connection.abort(),
        }
        // Keep the connection (for a stream reset) until the proxy has seen it.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(self);
        });
    }
}

#[tokio::test]
async fn h2c_clients_that_hang_up_while_queued_leave_at_once() {
    use H2Hangup::*;
    let replica = Gated::spawn().await;
    let proxy = proxy(&replica, "", "").await;
    let addr = proxy.http_addr();
    let whole = |path, how| H2Request::new(path, "POST", how).body(Some(11), b"hello world", true);
    let part =
        |path, how| H2Request::new(path, "POST", how).body(Some(1000), b"only the start", false);
    let cases = [
        whole("/length", ResetStream),
        H2Request::new("/no-length", "POST", ResetStream).body(None, b"hello world", true),
        H2Request::new("/get", "GET", ResetStream),
        part("/part", ResetStream),
        whole("/length-close", CloseConnection),
        H2Request::new("/get-close", "GET", CloseConnection),
        part("/part-close", CloseConnection),
        // More than the stream's flow-control window: the client holds the rest.
        H2Request::new("/large", "POST", ResetStream).body(None, &LARGE, true),
        H2Request::new("/large-close", "POST", CloseConnection).body(None, &LARGE, true),
    ];
    for case in &cases {
        let start = H2::send(addr, case);
        hang_up_frees_the_place(&proxy, &replica, &h2(), case.path, start).await;
    }
    counted(&proxy, cases.len() as f64).await;
}

/// An HTTP/1.1 client may send its next requests before the first is answered
/// (RFC 9112 section 9.3.2). Bytes that arrive while the first waits in the queue
/// are a pipelined request, not a hang-up: the first keeps its place, and every
/// request on the connection is answered in order, with its body whole.
#[tokio::test]
async fn pipelined_requests_behind_a_queued_one_are_answered_in_order() {
    let replica = Gated::spawn().await;
    let proxy = proxy(&replica, "", "").await;
    let holder = tokio::spawn(h1().get(proxy.url("/hold")).send());
    eventually("the slot is taken", PATIENCE, || async {
        replica.inflight() == 1
    })
    .await;
    let mut conn = TcpStream::connect(proxy.http_addr()).await.unwrap();
    conn.write_all(b"POST /p1 HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\nhello world")
        .await
        .unwrap();
    eventually("/p1 queued", PATIENCE, || async {
        queued(&proxy).await == 1
    })
    .await;
    conn.write_all(
        b"GET /p2 HTTP/1.1\r\nhost: x\r\n\r\n\
          POST /p3 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    // Give the watch time to see those bytes before the slot frees.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        queued(&proxy).await,
        1,
        "a pipelined request is not a hang-up"
    );
    replica.release();
    assert_eq!(holder.await.unwrap().unwrap().status(), 200);

    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, conn.read_to_end(&mut out))
        .await
        .expect("the proxy answers all three and closes")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
    let seen = replica.seen();
    let paths: Vec<_> = seen.iter().map(|(p, n)| (p.as_str(), *n)).collect();
    assert_eq!(paths, [("/hold", 0), ("/p1", 11), ("/p2", 0), ("/p3", 5)]);
    let first = line_of(&proxy, "/p1").await;
    assert_eq!(first["status"], 200, "{first}");
    assert!(first["queue_wait"].as_f64().unwrap() > 0.0, "{first}");
}
