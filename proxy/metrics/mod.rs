//! Every Prometheus metric of SPEC.md, in one struct registered on an injected registry.
//!
//! The request path never looks a label up: a route resolves its handles (one
//! histogram, one counter per status code seen, per-upstream histograms and
//! counters) once per config generation, and a new generation gets the same series
//! back from the registry instead of new ones. Gauges describing the pools
//! (backend up, in-flight, queue depth) cost nothing per request: `pools` reads
//! them from the live snapshot when `/metrics` is scraped.

pub mod access;
mod classes;
pub(crate) mod live;
pub(crate) mod pools;

pub(crate) use classes::ClassMetrics;

use std::sync::{Arc, OnceLock};

use crate::gateway::Reject;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets for model servers: 5 ms to 5 minutes.
pub(crate) const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Inter-token latency buckets: 1 ms to 5 s.
pub(crate) const TOKEN_GAP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Status codes with a cached counter handle; any other code takes a label lookup.
const CODES: [u16; 20] = [
    200, 201, 204, 206, 301, 302, 304, 308, 400, 401, 403, 404, 413, 429, 431, 499, 500, 502, 503,
    504,
];

/// All of modelgate's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    first_byte: HistogramVec,
    queue_wait: HistogramVec,
    rejected: IntCounterVec,
    retries: IntCounterVec,
    client_aborts: IntCounterVec,
    load_report_errors: IntCounterVec,
    reloads: IntCounterVec,
    generation: IntGauge,
    access_log_dropped: IntCounter,
    discovery_errors: IntCounterVec,
    wake_calls: IntCounterVec,
    time_to_first_token: HistogramVec,
    inter_token_latency: HistogramVec,
    tokens: IntCounterVec,
    /// Per priority class of a wait queue.
    classes: classes::ClassFamilies,
    /// Handles for requests that matched no route (`route=""`, `upstream=""`).
    unrouted: OnceLock<Arc<RouteMetrics>>,
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let v = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let v = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    let v = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
        labels,
    )?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

impl Metrics {
    /// Registers every metric (and, on Linux, the process metrics) on `registry`.
    /// Fails only if `registry` already holds one of these names.
    pub fn new(registry: Registry) -> prometheus::Result<Arc<Metrics>> {
        let r = &registry;
        let build_info = gauge_vec(
            r,
            "modelgate_build_info",
            "Always 1; the version label names the running build.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let reloads = counter_vec(
            r,
            "modelgate_config_reloads_total",
            "Config reloads attempted, by result (ok or error).",
            &["result"],
        )?;
        reloads.with_label_values(&["ok"]);
        reloads.with_label_values(&["error"]);
        let generation = IntGauge::new(
            "modelgate_config_generation",
            "Generation number of the config now serving.",
        )?;
        r.register(Box::new(generation.clone()))?;
        let access_log_dropped = IntCounter::new(
            "modelgate_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind.",
        )?;
        r.register(Box::new(access_log_dropped.clone()))?;
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Arc::new(Metrics {
            requests: counter_vec(
                r,
                "modelgate_requests_total",
                "Requests answered, by route, upstream and status code (499: client went away).",
                &["route", "upstream", "code"],
            )?,
            duration: histogram_vec(
                r,
                "modelgate_request_duration_seconds",
                "Whole request time, from arrival to the last byte sent.",
                &["route", "upstream"],
            )?,
            first_byte: histogram_vec(
                r,
                "modelgate_upstream_first_byte_seconds",
                "Time from the request's arrival to the backend's response headers.",
                &["upstream"],
            )?,
            queue_wait: histogram_vec(
                r,
                "modelgate_queue_wait_seconds",
                "Time requests waited for an in-flight slot.",
                &["upstream"],
            )?,
            rejected: counter_vec(
                r,
                "modelgate_rejected_total",
                "Requests answered by the proxy itself, by reason.",
                &["upstream", "reason"],
            )?,
            retries: counter_vec(
                r,
                "modelgate_retries_total",
                "Attempts on another backend after a failed one.",
                &["upstream"],
            )?,
            client_aborts: counter_vec(
                r,
                "modelgate_client_aborts_total",
                "Requests whose client went away before the answer was complete.",
                &["upstream"],
            )?,
            load_report_errors: counter_vec(
                r,
                "modelgate_load_report_errors_total",
                "Load reports from replicas that could not be read (the replica keeps serving).",
                &["upstream"],
            )?,
            discovery_errors: counter_vec(
                r,
                "modelgate_discovery_errors_total",
                "DNS lookups of an upstream's names that failed or came back empty (the last known backends stay).",
                &["upstream"],
            )?,
            wake_calls: counter_vec(
                r,
                "modelgate_wake_calls_total",
                "Calls of an upstream's wake URL, one per cold period (failed ones retried with backoff), by result (ok: a 2xx answer).",
                &["upstream", "result"],
            )?,
            time_to_first_token: histogram_vec(
                r,
                "modelgate_time_to_first_token_seconds",
                "Time from the request's arrival to the first generated token of its answer.",
                &["route", "upstream"],
            )?,
            inter_token_latency: {
                let v = HistogramVec::new(
                    HistogramOpts::new(
                        "modelgate_inter_token_latency_seconds",
                        "Time between successive generated tokens of streamed answers.",
                    )
                    .buckets(TOKEN_GAP_BUCKETS.to_vec()),
                    &["route", "upstream"],
                )?;
                r.register(Box::new(v.clone()))?;
                v
            },
            tokens: counter_vec(
                r,
                "modelgate_tokens_total",
                "Tokens of answered requests as the model server counted them, by kind (prompt or completion).",
                &["route", "upstream", "kind"],
            )?,
            classes: classes::ClassFamilies::new(r)?,
            reloads,
            generation,
            access_log_dropped,
            unrouted: OnceLock::new(),
            registry,
        }))
    }

    /// The handles of one route of one upstream. Called once per route and config
    /// generation; the same names give back the same series.
    pub fn route(&self, route: &str, upstream: &str) -> RouteMetrics {
        RouteMetrics {
            tokens: TokenMetrics {
                time_to_first_token: self
                    .time_to_first_token
                    .with_label_values(&[route, upstream]),
                inter_token_latency: self
                    .inter_token_latency
                    .with_label_values(&[route, upstream]),
                prompt: self.tokens.with_label_values(&[route, upstream, "prompt"]),
                completion: self
                    .tokens
                    .with_label_values(&[route, upstream, "completion"]),
            },
            duration: self.duration.with_label_values(&[route, upstream]),
            requests: self.requests.clone(),
            route: route.into(),
            codes: Default::default(),
            upstream: UpstreamMetrics {
                name: upstream.into(),
                first_byte: self.first_byte.with_label_values(&[upstream]),
                queue_wait: self.queue_wait.with_label_values(&[upstream]),
                retries: self.retries.with_label_values(&[upstream]),
                client_aborts: self.client_aborts.with_label_values(&[upstream]),
                load_report_errors: self.load_report_errors.with_label_values(&[upstream]),
                rejected: self.rejected.clone(),
                reasons: Default::default(),
                classes: classes::ClassHandles::new(&self.classes, upstream),
            },
        }
    }

    /// The handles for requests that matched no route.
    pub fn unrouted(&self) -> &RouteMetrics {
        self.unrouted.get_or_init(|| {
            Arc::new(RouteMetrics {
                tokens: TokenMetrics {
                    time_to_first_token: self.time_to_first_token.with_label_values(&["", ""]),
                    inter_token_latency: self.inter_token_latency.with_label_values(&["", ""]),
                    prompt: self.tokens.with_label_values(&["", "", "prompt"]),
                    completion: self.tokens.with_label_values(&["", "", "completion"]),
                },
                duration: self.duration.with_label_values(&["", ""]),
                requests: self.requests.clone(),
                route: "".into(),
                codes: Default::default(),
                upstream: UpstreamMetrics {
                    name: "".into(),
                    first_byte: self.first_byte.with_label_values(&[""]),
                    queue_wait: self.queue_wait.with_label_values(&[""]),
                    retries: self.retries.with_label_values(&[""]),
                    client_aborts: self.client_aborts.with_label_values(&[""]),
                    load_report_errors: self.load_report_errors.with_label_values(&[""]),
                    rejected: self.rejected.clone(),
                    reasons: Default::default(),
                    classes: classes::ClassHandles::new(&self.classes, ""),
                },
            })
        })
    }

    /// Records a reload attempt: `ok` moves the generation gauge too. For the reloader.
    pub fn reload(&self, ok: bool, generation: u64) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
        if ok {
            self.set_generation(generation);
        }
    }

    /// Counts a failed or empty DNS lookup for `upstream` (a background task, not the
    /// request path).
    pub fn discovery_error(&self, upstream: &str) {
        self.discovery_errors.with_label_values(&[upstream]).inc();
    }

    /// Counts a call of `upstream`'s wake URL (once per cold period, not per request;
    /// a failed call is retried with backoff).
    pub fn wake_call(&self, upstream: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.wake_calls.with_label_values(&[upstream, result]).inc();
    }

    /// The `modelgate_load_report_errors_total` series of `upstream`, for the
    /// pollers of the replicas' pages (a background task, not the request path).
    pub fn load_report_errors(&self, upstream: &str) -> IntCounter {
        self.load_report_errors.with_label_values(&[upstream])
    }

    /// The generation now serving.
    pub fn set_generation(&self, generation: u64) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// The registry every metric is on (for collectors registered by other modules).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// One access log line could not be queued.
    pub fn access_log_dropped(&self) {
        self.access_log_dropped.inc();
    }

    /// The Prometheus text exposition of every metric (collectors registered by
    /// other modules, such as the pool gauges, read their live state now).
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::warn!("metrics: cannot encode: {e}");
        }
        out
    }

    /// Total requests and 5xx answers per upstream, for the status page.
    pub fn upstream_totals(&self) -> std::collections::HashMap<String, (u64, u64)> {
        use prometheus::core::Collector;
        let mut totals = std::collections::HashMap::new();
        for family in self.requests.collect() {
            for m in family.get_metric() {
                let (mut upstream, mut code) = ("", "");
                for l in m.get_label() {
                    match l.name() {
                        "upstream" => upstream = l.value(),
                        "code" => code = l.value(),
                        _ => {}
                    }
                }
                let n = m.get_counter().get_value() as u64;
                let e: &mut (u64, u64) = totals.entry(upstream.to_string()).or_default();
                e.0 += n;
                if code.starts_with('5') {
                    e.1 += n;
                }
            }
        }
        totals
    }
}

/// Per-route handles, resolved once per config generation.
pub struct RouteMetrics {
    route: Box<str>,
    requests: IntCounterVec,
    codes: [OnceLock<IntCounter>; CODES.len()],
    duration: Histogram,
    upstream: UpstreamMetrics,
    tokens: TokenMetrics,
}

/// Token accounting handles of one route (OpenAI answers).
pub struct TokenMetrics {
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub prompt: IntCounter,
    pub completion: IntCounter,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.route)
            .field("upstream", &self.upstream.name)
            .finish_non_exhaustive()
    }
}

impl RouteMetrics {
    /// Counts one answered request with its status code and whole duration.
    pub fn request(&self, code: u16, seconds: Option<f64>) {
        let up = &*self.upstream.name;
        match CODES.iter().position(|&c| c == code) {
            Some(i) => self.codes[i]
                .get_or_init(|| {
                    self.requests
                        .with_label_values(&[&self.route, up, &code.to_string()])
                })
                .inc(),
            None => self
                .requests
                .with_label_values(&[&self.route, up, &code.to_string()])
                .inc(),
        }
        if let Some(s) = seconds {
            self.duration.observe(s);
        }
    }

    pub fn upstream(&self) -> &UpstreamMetrics {
        &self.upstream
    }

    pub fn tokens(&self) -> &TokenMetrics {
        &self.tokens
    }
}

/// Per-upstream handles.
pub struct UpstreamMetrics {
    name: Box<str>,
    first_byte: Histogram,
    queue_wait: Histogram,
    retries: IntCounter,
    client_aborts: IntCounter,
    load_report_errors: IntCounter,
    rejected: IntCounterVec,
    /// One handle per reject reason, resolved by its first use.
    reasons: [OnceLock<IntCounter>; Reject::REASONS.len()],
    classes: classes::ClassHandles,
}

impl UpstreamMetrics {
    pub fn first_byte(&self, seconds: f64) {
        self.first_byte.observe(seconds);
    }

    pub fn queue_wait(&self, seconds: f64) {
        self.queue_wait.observe(seconds);
    }

    pub fn retries(&self, n: u64) {
        if n > 0 {
            self.retries.inc_by(n);
        }
    }

    pub fn client_abort(&self) {
        self.client_aborts.inc();
    }

    /// A replica's load report could not be read.
    pub fn load_report_error(&self) {
        self.load_report_errors.inc();
    }

    /// The handles of priority class number `i`, named `name` (at most 8 classes).
    pub(crate) fn class(&self, i: u8, name: &str) -> Option<&ClassMetrics> {
        self.classes.get(i, name)
    }

    /// Counts a request the proxy answered itself (`reason` label: [`Reject::reason`]).
    pub(crate) fn rejected(&self, r: Reject) {
        self.reasons[r.slot()]
            .get_or_init(|| self.rejected.with_label_values(&[&self.name, r.reason()]))
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.render()).unwrap()
    }

    #[test]
    fn a_new_generation_reuses_the_series() {
        let m = Metrics::new(Registry::new()).unwrap();
        let a = m.route("chat", "llm");
        a.request(200, Some(0.2));
        let b = m.route("chat", "llm"); // the next generation
        b.request(200, Some(0.3));
        b.request(777, None);
        let t = text(&m);
        assert!(
            t.contains("modelgate_requests_total{code=\"200\",route=\"chat\",upstream=\"llm\"} 2")
        );
        assert!(t.contains("code=\"777\""));
        assert!(t.contains(
            "modelgate_request_duration_seconds_count{route=\"chat\",upstream=\"llm\"} 2"
        ));
    }

    #[test]
    fn reloads_move_counter_and_generation() {
        let m = Metrics::new(Registry::new()).unwrap();
        m.reload(true, 2);
        m.reload(false, 3);
        m.reload(true, 4);
        let t = text(&m);
        assert!(t.contains("modelgate_config_reloads_total{result=\"ok\"} 2"));
        assert!(t.contains("modelgate_config_reloads_total{result=\"error\"} 1"));
        assert!(t.contains("modelgate_config_generation 4"));
    }
}
