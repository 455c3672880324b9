//! A mock model server on `127.0.0.1:0` that behaves like the ones users run: a
//! fixed number of request slots (one, like a Flask dev server; more wait inside
//! it, first come first served), a per-request work time (`?ms=N`, else the
//! default), an optional capacity knee (beyond `knee` requests at once each one
//! slows down in proportion), and engine load reports: a Prometheus `/metrics`
//! page in the names of vLLM, SGLang, TGI, Triton or llama.cpp (or any page given),
//! which can be made to fail or answer slowly, and an ORCA `endpoint-load-metrics`
//! header.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How a [`Model`] reports its load.
#[derive(Clone, Default)]
pub struct Reports {
    /// The `/metrics` body; `{waiting}` and `{running}` are replaced by the live
    /// numbers (requests queued inside the replica and being worked on).
    pub metrics: Option<String>,
    /// Answer each request that asks for it (`endpoint-load-metrics-format: TEXT`
    /// or `JSON`) with an `endpoint-load-metrics` header in that format.
    pub orca: bool,
}

/// A vLLM-style `/metrics` page (two models, so gauges must be summed).
pub const VLLM_METRICS: &str = "# HELP vllm:num_requests_waiting Requests waiting.\n\
# TYPE vllm:num_requests_waiting gauge\n\
vllm:num_requests_waiting{model_name=\"a\"} {waiting}\n\
vllm:num_requests_waiting{model_name=\"b\"} 0\n\
# HELP vllm:num_requests_running Requests running.\n\
# TYPE vllm:num_requests_running gauge\n\
vllm:num_requests_running{model_name=\"a\"} {running}\n\
vllm:num_requests_running{model_name=\"b\"} 0\n\
# HELP vllm:kv_cache_usage_perc KV cache usage.\n\
# TYPE vllm:kv_cache_usage_perc gauge\n\
vllm:kv_cache_usage_perc{model_name=\"a\"} 0.25\n";

/// An SGLang-style page.
pub const SGLANG_METRICS: &str =
    "# HELP sglang:num_queue_reqs The number of requests in the waiting queue\n\
# TYPE sglang:num_queue_reqs gauge\n\
sglang:num_queue_reqs{model_name=\"a\"} {waiting}\n\
# HELP sglang:num_running_reqs The number of running requests\n\
# TYPE sglang:num_running_reqs gauge\n\
sglang:num_running_reqs{model_name=\"a\"} {running}\n\
# HELP sglang:token_usage The token usage\n\
# TYPE sglang:token_usage gauge\n\
sglang:token_usage{model_name=\"a\"} 0.25\n";

/// A TGI-style page (unlabelled gauges, no HELP lines).
pub const TGI_METRICS: &str = "# TYPE tgi_queue_size gauge\n\
tgi_queue_size {waiting}\n\
# TYPE tgi_batch_current_size gauge\n\
tgi_batch_current_size {running}\n\
# TYPE tgi_request_count counter\n\
tgi_request_count 12\n";

/// A Triton TensorRT-LLM-style page (the kind of request in a label).
pub const TRITON_METRICS: &str = "# HELP nv_trt_llm_request_metrics TRT LLM request metrics\n\
# TYPE nv_trt_llm_request_metrics gauge\n\
nv_trt_llm_request_metrics{model=\"tensorrt_llm\",request_type=\"waiting\",version=\"1\"} {waiting}\n\
nv_trt_llm_request_metrics{model=\"tensorrt_llm\",request_type=\"scheduled\",version=\"1\"} {running}\n\
nv_trt_llm_request_metrics{model=\"tensorrt_llm\",request_type=\"max\",version=\"1\"} 512\n\
# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics\n\
# TYPE nv_trt_llm_kv_cache_block_metrics gauge\n\
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"fraction\",model=\"tensorrt_llm\",version=\"1\"} 0.25\n";

/// A llama.cpp-server-style page.
pub const LLAMACPP_METRICS: &str =
    "# HELP llamacpp:requests_processing Number of requests processing.\n\
# TYPE llamacpp:requests_processing gauge\n\
llamacpp:requests_processing {running}\n\
# HELP llamacpp:requests_deferred Number of requests deferred.\n\
# TYPE llamacpp:requests_deferred gauge\n\
llamacpp:requests_deferred {waiting}\n";

/// What `/metrics` does besides answering its page.
#[derive(Clone, Copy, Debug, Default)]
pub enum PageFault {
    #[default]
    None,
    /// Answers this status and no page.
    Status(u16),
    /// Answers the page after this long.
    Slow(Duration),
}

/// Builder for a [`Model`].
pub struct ModelBuilder {
    name: String,
    slots: usize,
    work: Duration,
    knee: Option<usize>,
    reports: Reports,
}

impl ModelBuilder {
    /// Requests worked on at once; more wait inside the replica.
    pub fn slots(mut self, n: usize) -> Self {
        self.slots = n.max(1);
        self
    }

    /// Work time of a request without `?ms=`.
    pub fn work(mut self, d: Duration) -> Self {
        self.work = d;
        self
    }

    /// Beyond `n` requests at once, each takes `work x running / n`.
    pub fn knee(mut self, n: usize) -> Self {
        self.knee = Some(n.max(1));
        self
    }

    pub fn reports(mut self, r: Reports) -> Self {
        self.reports = r;
        self
    }

    pub async fn spawn(self) -> Model {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            name: self.name,
            work: self.work,
            knee: self.knee,
            slots: Semaphore::new(self.slots),
            reports: Mutex::new(self.reports),
            hits: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            running: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            external_waiting: AtomicU64::new(0),
            metrics_scrapes: AtomicU64::new(0),
            page_fault: Mutex::new(PageFault::None),
            garbage: Default::default(),
            last_orca_request: Mutex::new(None),
        });
        let task = tokio::spawn(serve(listener, Arc::clone(&inner)));
        Model {
            addr,
            inner,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Inner {
    name: String,
    work: Duration,
    knee: Option<usize>,
    slots: Semaphore,
    reports: Mutex<Reports>,
    hits: AtomicU64,
    waiting: AtomicU64,
    running: AtomicU64,
    /// Inference requests that found every slot taken and waited inside.
    queued: AtomicU64,
    /// Queue from clients that do not go through the proxy (shows in /metrics only).
    external_waiting: AtomicU64,
    metrics_scrapes: AtomicU64,
    page_fault: Mutex<PageFault>,
    /// Send unreadable reports instead.
    garbage: std::sync::atomic::AtomicBool,
    /// The `endpoint-load-metrics-format` of the last request that sent one.
    last_orca_request: Mutex<Option<String>>,
}

/// A running mock model server; stops when the last clone is dropped.
#[derive(Clone)]
pub struct Model {
    addr: SocketAddr,
    inner: Arc<Inner>,
    /// Held for its drop: the server stops with the last handle.
    _task: Arc<AbortOnDrop>,
}

impl Model {
    pub fn builder(name: &str) -> ModelBuilder {
        ModelBuilder {
            name: name.to_string(),
            slots: 1,
            work: Duration::from_millis(10),
            knee: None,
            reports: Reports::default(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Inference requests received.
    pub fn hits(&self) -> u64 {
        self.inner.hits.load(Ordering::SeqCst)
    }

    /// Inference requests so far that found every slot taken on arrival and
    /// waited inside the replica for one.
    pub fn queued(&self) -> u64 {
        self.inner.queued.load(Ordering::SeqCst)
    }

    /// Requests inside the replica (waiting or running).
    pub fn inflight(&self) -> u64 {
        self.inner.waiting.load(Ordering::SeqCst) + self.inner.running.load(Ordering::SeqCst)
    }

    pub fn metrics_scrapes(&self) -> u64 {
        self.inner.metrics_scrapes.load(Ordering::SeqCst)
    }

    /// The format asked for in the last `endpoint-load-metrics-format` request header.
    pub fn last_orca_request(&self) -> Option<String> {
        self.inner.last_orca_request.lock().unwrap().clone()
    }

    /// Adds queued requests that only the replica's own reports show.
    pub fn set_external_waiting(&self, n: u64) {
        self.inner.external_waiting.store(n, Ordering::SeqCst);
    }

    /// Sends `endpoint-load-metrics: TEXT garbage` from now on.
    pub fn set_garbage_reports(&self, on: bool) {
        self.inner.garbage.store(on, Ordering::SeqCst);
    }

    /// Makes `/metrics` fail or slow from now on.
    pub fn set_page_fault(&self, f: PageFault) {
        *self.inner.page_fault.lock().unwrap() = f;
    }

    pub fn set_reports(&self, r: Reports) {
        *self.inner.reports.lock().unwrap() = r;
    }
}

/// `"ip:port", ...` for a TOML backends array of mock model servers.
pub fn model_list(list: &[&Model]) -> String {
    list.iter()
        .map(|m| format!("\"{}\"", m.addr()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Two 4-slot replicas that report with `reports`, named `busy` and `idle`; `busy`
/// also holds a queue of 20 from clients that do not go through the proxy (seen
/// only in its reports).
pub async fn busy_and_idle(reports: Reports) -> (Model, Model) {
    let busy = Model::builder("busy")
        .slots(4)
        .reports(reports.clone())
        .spawn()
        .await;
    let idle = Model::builder("idle")
        .slots(4)
        .reports(reports)
        .spawn()
        .await;
    busy.set_external_waiting(20);
    (busy, idle)
}

async fn serve(listener: TcpListener, inner: Arc<Inner>) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let inner = Arc::clone(&inner);
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let inner = Arc::clone(&inner);
                async move { Ok::<_, Infallible>(handle(inner, req).await) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn text(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/health" => return text(200, "ok".into()),
        "/metrics" => {
            inner.metrics_scrapes.fetch_add(1, Ordering::SeqCst);
            let fault = *inner.page_fault.lock().unwrap();
            match fault {
                PageFault::None => {}
                PageFault::Status(code) => return text(code, "engine error".into()),
                PageFault::Slow(d) => tokio::time::sleep(d).await,
            }
            let page = inner.reports.lock().unwrap().metrics.clone();
            return match page {
                Some(p) => text(200, fill(&inner, &p)),
                None => text(404, "no metrics".into()),
            };
        }
        _ => {}
    }
    inner.hits.fetch_add(1, Ordering::SeqCst);
    let orca = req
        .headers()
        .get("endpoint-load-metrics-format")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if orca.is_some() {
        *inner.last_orca_request.lock().unwrap() = orca.clone();
    }
    let work = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
        .and_then(|ms| ms.parse().ok())
        .map_or(inner.work, Duration::from_millis);
    inner.waiting.fetch_add(1, Ordering::SeqCst);
    let permit = match inner.slots.try_acquire() {
        Ok(permit) => permit,
        Err(_) => {
            inner.queued.fetch_add(1, Ordering::SeqCst);
            inner.slots.acquire().await.unwrap()
        }
    };
    inner.waiting.fetch_sub(1, Ordering::SeqCst);
    let running = inner.running.fetch_add(1, Ordering::SeqCst) + 1;
    let took = match inner.knee {
        Some(knee) if running as usize > knee => work * running as u32 / knee as u32,
        _ => work,
    };
    tokio::time::sleep(took).await;
    let mut resp = text(200, format!("{{\"replica\":\"{}\"}}", inner.name));
    let reported = inner.reports.lock().unwrap().orca;
    if let (true, Some(format)) = (reported, orca) {
        let (waiting, running) = load(&inner);
        let value = if inner.garbage.load(Ordering::SeqCst) {
            "TEXT named_metrics.num_requests_waiting=lots".to_string()
        } else if format.eq_ignore_ascii_case("JSON") {
            format!(
                "JSON {{\"named_metrics\":{{\"num_requests_waiting\":{waiting},\"num_requests_running\":{running}}}}}"
            )
        } else {
            format!(
                "TEXT named_metrics.num_requests_waiting={waiting}, named_metrics.num_requests_running={running}"
            )
        };
        resp.headers_mut()
            .insert("endpoint-load-metrics", value.parse().unwrap());
    }
    inner.running.fetch_sub(1, Ordering::SeqCst);
    drop(permit);
    resp
}

/// (waiting, running) as the replica would report them.
fn load(inner: &Inner) -> (u64, u64) {
    (
        inner.waiting.load(Ordering::SeqCst) + inner.external_waiting.load(Ordering::SeqCst),
        inner.running.load(Ordering::SeqCst),
    )
}

fn fill(inner: &Inner, page: &str) -> String {
    let (waiting, running) = load(inner);
    page.replace("{waiting}", &waiting.to_string())
        .replace("{running}", &running.to_string())
}
