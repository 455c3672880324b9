//! An in-process mock model replica: a real HTTP server (HTTP/1.1 and h2c with
//! prior knowledge on the same port) that answers health checks, "predictions"
//! over streamed request bodies, token streams as server-sent events and a JSON
//! echo of anything else. It backs `modelgate demo` and serves as the upstream
//! in the integration tests, so it counts hits and in-flight requests, lets its
//! health, latency and failure mode be changed at run time, and can be killed
//! abruptly with [`ReplicaHandle::shutdown`] to simulate a dying model server.
//!
//! It also speaks the OpenAI API like a vLLM server (see `openai.rs`): streamed
//! and whole chat completions with usage, `/v1/models` and vLLM's `/metrics` gauges.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Sleep;
use xxhash_rust::xxh3::Xxh3;

use super::openai;

const DEFAULT_TOKEN_INTERVAL: Duration = Duration::from_millis(50);
const DEFAULT_TOKENS: u64 = 8;
const DEFAULT_PREFILL_PER_TOKEN: Duration = Duration::from_micros(200);
const OUTPUT_PREFIX: usize = 64;
pub(super) const WORDS: &[&str] = &[
    "the",
    "gate",
    "routes",
    "every",
    "token",
    "to",
    "a",
    "happy",
    "replica",
    "and",
    "nobody",
    "waits",
    "too",
    "long",
    "for",
    "inference",
];

/// Namespace for [`Replica::builder`].
pub struct Replica;

impl Replica {
    /// Starts configuring a replica called `name` (reported in `x-replica` and bodies).
    pub fn builder(name: impl Into<String>) -> ReplicaBuilder {
        ReplicaBuilder {
            name: name.into(),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            delay: Duration::ZERO,
            token_interval: DEFAULT_TOKEN_INTERVAL,
            health_status: 200,
            fail: None,
            concurrency: None,
            knee: None,
            models: vec!["demo".to_owned()],
            prefill_per_token: DEFAULT_PREFILL_PER_TOKEN,
            cache_blocks: openai::DEFAULT_CACHE_BLOCKS,
        }
    }
}

/// Configuration of a replica before it is spawned.
#[derive(Debug, Clone)]
pub struct ReplicaBuilder {
    name: String,
    addr: SocketAddr,
    delay: Duration,
    token_interval: Duration,
    health_status: u16,
    fail: Option<u16>,
    concurrency: Option<usize>,
    knee: Option<usize>,
    models: Vec<String>,
    prefill_per_token: Duration,
    cache_blocks: usize,
}

impl ReplicaBuilder {
    /// Runs at most `n` requests' service time at once; the rest wait inside the
    /// replica, as a model server with `n` slots does (default: unlimited).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n.max(1));
        self
    }

    /// A capacity knee: with more than `n` requests running at once, each one's
    /// service time grows in proportion (`delay × running / n`), as a GPU replica
    /// past its batch size does.
    pub fn knee(mut self, n: usize) -> Self {
        self.knee = Some(n.max(1));
        self
    }

    /// Model names served on the OpenAI endpoints and listed by `/v1/models`
    /// (default `["demo"]`); a request for any other model gets vLLM's 404.
    pub fn models<S: Into<String>>(mut self, models: impl IntoIterator<Item = S>) -> Self {
        self.models = models.into_iter().map(Into::into).collect();
        self
    }

    /// Prefix-cache blocks (of 16 prompt tokens) the replica holds before its cache is
    /// emptied, as a full KV cache is (default 100,000).
    pub fn prefix_cache_blocks(mut self, n: usize) -> Self {
        self.cache_blocks = n.max(1);
        self
    }

    /// Prefill time per prompt token not in the prefix cache (default 200µs): the
    /// time to first token is `delay` plus this times the uncached prompt tokens.
    pub fn prefill_per_token(mut self, d: Duration) -> Self {
        self.prefill_per_token = d;
        self
    }

    /// Address to listen on (default `127.0.0.1:0`).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Service time added before answering predict and echo requests.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// Default gap between streamed tokens (default 50ms).
    pub fn token_interval(mut self, d: Duration) -> Self {
        self.token_interval = d;
        self
    }

    /// Status answered on `GET /health` (default 200).
    pub fn health_status(mut self, code: u16) -> Self {
        self.health_status = code;
        self
    }

    /// Answer every request except `/health` with this status.
    pub fn fail_with(mut self, code: u16) -> Self {
        self.fail = Some(code);
        self
    }

    /// Binds the listener and starts serving in the background.
    pub async fn spawn(self) -> std::io::Result<ReplicaHandle> {
        let listener = TcpListener::bind(self.addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            name: self.name,
            addr,
            token_interval: self.token_interval,
            hits: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            max_inflight: AtomicU64::new(0),
            health_checks: AtomicU64::new(0),
            health_status: AtomicU16::new(self.health_status),
            delay_nanos: AtomicU64::new(duration_nanos(self.delay)),
            fail: AtomicU16::new(self.fail.unwrap_or(0)),
            slots: self
                .concurrency
                .map(|n| (n, Arc::new(tokio::sync::Semaphore::new(n)))),
            waiting: AtomicU64::new(0),
            running: AtomicU64::new(0),
            knee: self.knee,
            openai: openai::State::new(self.models, self.prefill_per_token, self.cache_blocks),
            shutdown,
            dead_port: std::sync::Mutex::new(None),
        });
        tokio::spawn(accept_loop(listener, Arc::clone(&inner)));
        Ok(ReplicaHandle { inner })
    }
}

/// Handle on a running replica; cheap to clone.
#[derive(Clone)]
pub struct ReplicaHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ReplicaHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaHandle")
            .field("name", &self.inner.name)
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl ReplicaHandle {
    /// The address the replica listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The replica's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Requests received, excluding `/health`.
    pub fn hits(&self) -> u64 {
        self.inner.hits.load(Ordering::SeqCst)
    }

    /// Requests (excluding `/health`) whose response has not been fully sent yet.
    pub fn inflight(&self) -> u64 {
        self.inner.inflight.load(Ordering::SeqCst)
    }

    /// Highest number of concurrent in-flight requests seen.
    pub fn max_inflight(&self) -> u64 {
        self.inner.max_inflight.load(Ordering::SeqCst)
    }

    /// Number of `/health` requests answered.
    pub fn health_checks(&self) -> u64 {
        self.inner.health_checks.load(Ordering::SeqCst)
    }

    /// Changes the status answered on `/health`.
    pub fn set_health_status(&self, code: u16) {
        self.inner.health_status.store(code, Ordering::SeqCst);
    }

    /// Changes the service time of predict and echo requests.
    pub fn set_delay(&self, d: Duration) {
        self.inner
            .delay_nanos
            .store(duration_nanos(d), Ordering::SeqCst);
    }

    /// Turns failure injection on (`Some(status)`) or off (`None`).
    pub fn set_fail(&self, code: Option<u16>) {
        self.inner.fail.store(code.unwrap_or(0), Ordering::SeqCst);
    }

    /// Replaces the models served (as a replica reloading other weights would).
    pub fn set_models<S: Into<String>>(&self, models: impl IntoIterator<Item = S>) {
        self.inner
            .openai
            .set_models(models.into_iter().map(Into::into).collect());
    }

    /// The JSON body of the last OpenAI completion request received.
    pub fn last_openai_request(&self) -> Option<serde_json::Value> {
        self.inner.openai.last_request()
    }

    /// Requests waiting for a slot and requests holding one, as `/metrics` reports.
    pub fn slot_counts(&self) -> (u64, u64) {
        self.inner.slot_counts()
    }

    /// Kills the replica: stops accepting and drops every open connection at
    /// once, including those mid-request. Its port stays bound, refusing
    /// connections, while a handle lives. Idempotent.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }
}

pub(super) struct Inner {
    name: String,
    addr: SocketAddr,
    token_interval: Duration,
    hits: AtomicU64,
    inflight: AtomicU64,
    max_inflight: AtomicU64,
    health_checks: AtomicU64,
    health_status: AtomicU16,
    delay_nanos: AtomicU64,
    /// 0 means "not failing".
    fail: AtomicU16,
    /// Service slots (count, semaphore) when the replica's concurrency is limited.
    slots: Option<(usize, Arc<tokio::sync::Semaphore>)>,
    /// Requests waiting for a slot, and holding one (vLLM's waiting/running).
    waiting: AtomicU64,
    running: AtomicU64,
    /// Requests run at once before each slows down (see [`ReplicaBuilder::knee`]).
    knee: Option<usize>,
    pub(super) openai: openai::State,
    shutdown: watch::Sender<bool>,
    /// After [`ReplicaHandle::shutdown`], the port, bound but not listening.
    dead_port: std::sync::Mutex<Option<tokio::net::TcpSocket>>,
}

/// One of the replica's service slots, held while a request is being worked on.
pub(super) struct Slot {
    inner: Arc<Inner>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Inner {
    /// The service time of one request (`base`, or the replica's delay), spent in
    /// one of the replica's slots and stretched past the knee.
    async fn work(self: &Arc<Self>, base: Option<Duration>) {
        let _slot = self.slot().await;
        let mut took = base.unwrap_or_else(|| self.delay());
        if let Some(knee) = self.knee {
            let running = self.running.load(Ordering::SeqCst).max(1) as u32;
            if running as usize > knee {
                took = took * running / knee as u32;
            }
        }
        tokio::time::sleep(took).await;
    }

    /// Waits for a free slot (counted as waiting meanwhile) and takes it.
    pub(super) async fn slot(self: &Arc<Self>) -> Slot {
        /// Counts the request as waiting until dropped (also if its client leaves).
        struct Waiting<'a>(&'a AtomicU64);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let waiting = Waiting(&self.waiting);
        let permit = match &self.slots {
            Some((_, s)) => Arc::clone(s).acquire_owned().await.ok(),
            None => None,
        };
        self.running.fetch_add(1, Ordering::SeqCst);
        drop(waiting);
        Slot {
            inner: Arc::clone(self),
            _permit: permit,
        }
    }

    /// (waiting, running) right now.
    pub(super) fn slot_counts(&self) -> (u64, u64) {
        (
            self.waiting.load(Ordering::SeqCst),
            self.running.load(Ordering::SeqCst),
        )
    }

    /// The number of slots, when limited.
    pub(super) fn slot_limit(&self) -> Option<usize> {
        self.slots.as_ref().map(|(n, _)| *n)
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn token_interval(&self) -> Duration {
        self.token_interval
    }

    /// Adds the `x-replica` header naming this replica.
    pub(super) fn name_response(&self, resp: Response<RespBody>) -> Response<RespBody> {
        add_replica_header(self, resp)
    }

    pub(super) fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::SeqCst))
    }

    fn fail(&self) -> Option<u16> {
        match self.fail.load(Ordering::SeqCst) {
            0 => None,
            code => Some(code),
        }
    }

    fn enter(self: &Arc<Self>) -> InflightGuard {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let now = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_inflight.fetch_max(now, Ordering::SeqCst);
        InflightGuard(Arc::clone(self))
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

async fn wait_shutdown(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, i.e. every handle was dropped: keep serving.
    if rx.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let rx = inner.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = wait_shutdown(rx.clone()) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(err) => {
                log::debug!("replica {}: accept failed: {err}", inner.name);
                // Avoid spinning on persistent errors such as EMFILE.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let inner = Arc::clone(&inner);
        let rx = rx.clone();
        tokio::spawn(async move {
            let svc_inner = Arc::clone(&inner);
            let service = hyper::service::service_fn(move |req| {
                let inner = Arc::clone(&svc_inner);
                async move { Ok::<_, Infallible>(handle(inner, req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                res = conn => {
                    if let Err(err) = res {
                        log::debug!("replica {}: connection from {peer}: {err}", inner.name);
                    }
                }
                _ = wait_shutdown(rx) => {
                    log::debug!("replica {}: dropping connection from {peer} (shutdown)", inner.name);
                }
            }
        });
    }
    log::debug!("replica {} stopped accepting on {}", inner.name, inner.addr);
    drop(listener);
    hold_dead_port(&inner);
}

/// Keeps the port of a killed replica bound (not listening) while its handles live,
/// so connections to it are refused, as to a dead server, rather than reaching
/// whichever program binds port 0 next and is handed the port. The socket allows
/// address reuse, so a replica started again on the address can still bind it
/// (Linux never hands such a port to a bind to port 0).
fn hold_dead_port(inner: &Inner) {
    match (crate::listeners::bind(inner.addr), inner.dead_port.lock()) {
        (Ok(s), Ok(mut held)) => *held = Some(s),
        (Err(e), _) => log::debug!("replica {}: cannot hold {}: {e}", inner.name, inner.addr),
        (_, Err(_)) => {}
    }
}

type RespBody = InflightBody;

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Response<RespBody> {
    if req.uri().path() == "/health" {
        inner.health_checks.fetch_add(1, Ordering::SeqCst);
        let code = inner.health_status.load(Ordering::SeqCst);
        let status = if (200..300).contains(&code) {
            "ok"
        } else {
            "unhealthy"
        };
        let body = serde_json::json!({"status": status, "replica": inner.name});
        return json_response(&inner, code, &body, None);
    }

    let guard = inner.enter();
    if let Some(code) = inner.fail() {
        let body = serde_json::json!({"error": "injected", "replica": inner.name});
        return json_response(&inner, code, &body, Some(guard));
    }

    let path = req.uri().path();
    if let Some(endpoint) = openai::Endpoint::of(req.method(), path) {
        openai::serve(&inner, endpoint, req, guard).await
    } else if req.method() == Method::POST && path == "/v1/predict" {
        inner.work(work_param(req.uri().query())).await;
        match digest(req.into_body()).await {
            Ok(d) => {
                let body = serde_json::json!({
                    "replica": inner.name,
                    "model": "demo",
                    "bytes": d.bytes,
                    "xxh3": d.hex(),
                    "output": d.output(),
                });
                json_response(&inner, 200, &body, Some(guard))
            }
            Err(err) => body_error(&inner, &err, guard),
        }
    } else if req.method() == Method::GET && path == "/v1/stream" {
        let (tokens, interval) = stream_params(req.uri().query(), inner.token_interval);
        let body = TokenStream {
            replica: inner.name.clone(),
            next: 0,
            total: tokens,
            interval,
            sleep: None,
            done: false,
        };
        let mut resp = Response::new(InflightBody::new(body.boxed(), Some(guard)));
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        add_replica_header(&inner, resp)
    } else {
        inner.work(work_param(req.uri().query())).await;
        let method = req.method().to_string();
        let path_query = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
        let version = format!("{:?}", req.version());
        let mut headers = serde_json::Map::new();
        for name in req.headers().keys() {
            let joined = req
                .headers()
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ");
            headers.insert(name.as_str().to_owned(), serde_json::Value::String(joined));
        }
        match digest(req.into_body()).await {
            Ok(d) => {
                let body = serde_json::json!({
                    "replica": inner.name,
                    "method": method,
                    "path": path_query,
                    "version": version,
                    "headers": headers,
                    "bytes": d.bytes,
                    "xxh3": d.hex(),
                });
                json_response(&inner, 200, &body, Some(guard))
            }
            Err(err) => body_error(&inner, &err, guard),
        }
    }
}

fn body_error(inner: &Inner, err: &hyper::Error, guard: InflightGuard) -> Response<RespBody> {
    log::debug!("replica {}: reading request body: {err}", inner.name);
    let body = serde_json::json!({"error": "bad request body", "replica": inner.name});
    json_response(inner, 400, &body, Some(guard))
}

fn json_response(
    inner: &Inner,
    code: u16,
    body: &serde_json::Value,
    guard: Option<InflightGuard>,
) -> Response<RespBody> {
    let bytes = Bytes::from(body.to_string());
    let mut resp = Response::new(InflightBody::new(Full::new(bytes).boxed(), guard));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    add_replica_header(inner, resp)
}

fn add_replica_header(inner: &Inner, mut resp: Response<RespBody>) -> Response<RespBody> {
    if let Ok(v) = HeaderValue::from_str(&inner.name) {
        resp.headers_mut().insert("x-replica", v);
    }
    resp
}

/// The service time asked for with `?ms=N`, if any.
fn work_param(query: Option<&str>) -> Option<Duration> {
    query?
        .split('&')
        .find_map(|p| p.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

fn stream_params(query: Option<&str>, default_interval: Duration) -> (u64, Duration) {
    let mut tokens = DEFAULT_TOKENS;
    let mut interval = default_interval;
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "tokens" => tokens = v.parse().unwrap_or(tokens),
            "interval_ms" => {
                if let Ok(ms) = v.parse() {
                    interval = Duration::from_millis(ms);
                }
            }
            _ => {}
        }
    }
    (tokens, interval)
}

/// Byte count, hash and head of a request body read as a stream.
struct Digest {
    bytes: u64,
    hash: u64,
    head: Vec<u8>,
}

impl Digest {
    fn hex(&self) -> String {
        format!("{:016x}", self.hash)
    }

    fn output(&self) -> String {
        if self.bytes == 0 {
            return "(silence)".to_owned();
        }
        let text = match std::str::from_utf8(&self.head) {
            Ok(s) => Some(s),
            // Only the cut at the end of the head is incomplete: keep the valid part.
            Err(e) if e.error_len().is_none() => {
                std::str::from_utf8(&self.head[..e.valid_up_to()]).ok()
            }
            Err(_) => None,
        };
        match text {
            Some(s) => s.chars().rev().collect(),
            None => {
                let mut out = format!("{} bytes of binary, starting", self.bytes);
                for b in self.head.iter().take(4) {
                    let _ = write!(out, " {b:02x}");
                }
                out
            }
        }
    }
}

async fn digest(mut body: Incoming) -> Result<Digest, hyper::Error> {
    let mut hasher = Xxh3::new();
    let mut bytes = 0u64;
    let mut head = Vec::with_capacity(OUTPUT_PREFIX);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            hasher.update(&data);
            bytes += data.len() as u64;
            let room = OUTPUT_PREFIX - head.len();
            head.extend_from_slice(&data[..room.min(data.len())]);
        }
    }
    Ok(Digest {
        bytes,
        hash: hasher.digest(),
        head,
    })
}

/// Keeps a request counted as in flight while alive.
pub(super) struct InflightGuard(Arc<Inner>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Response body that releases the in-flight guard once the body has been
/// fully produced, or when the connection drops it.
pub(super) struct InflightBody {
    inner: BoxBody<Bytes, Infallible>,
    guard: Option<InflightGuard>,
}

impl InflightBody {
    pub(super) fn new(inner: BoxBody<Bytes, Infallible>, guard: Option<InflightGuard>) -> Self {
        Self { inner, guard }
    }
}

impl Body for InflightBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Server-sent events body producing one token per interval.
struct TokenStream {
    replica: String,
    next: u64,
    total: u64,
    interval: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl Body for TokenStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let this = &mut *self;
        let chunk = if this.next < this.total {
            let i = this.next;
            let word = WORDS[usize::try_from(i).unwrap_or(0) % WORDS.len()];
            let event = serde_json::json!({"replica": this.replica, "index": i, "token": word});
            this.next += 1;
            if this.next < this.total {
                let deadline = tokio::time::Instant::now() + this.interval;
                match this.sleep.as_mut() {
                    Some(sleep) => sleep.as_mut().reset(deadline),
                    None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
            } else {
                // The end marker follows the last token right away.
                this.sleep = None;
            }
            format!("data: {event}\n\n")
        } else {
            this.done = true;
            "data: [DONE]\n\n".to_owned()
        };
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
