//! The status page's history: per upstream, the last 15 minutes as one point every
//! 5 s (a fixed ring of 180), sampled from the metrics registry and the live pools by
//! a background task. Nothing is added to the request path: the counters and
//! histograms it reads are the ones `/metrics` exposes.
//!
//! Each point holds the rates of the 5 s that ended at it (requests per second by
//! outcome), quantiles of what finished in them (estimated from histogram bucket
//! deltas by linear interpolation inside the bucket, as Prometheus'
//! `histogram_quantile` does), and the largest queue depth and in-flight total seen
//! by the once-a-second samples in them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::proto::MetricFamily;
use serde_json::{json, Value};

use crate::gateway::Reject;
use crate::snapshot::{SharedSnapshot, Snapshot};

/// Time between chart points.
pub(crate) const STEP: Duration = Duration::from_secs(5);
/// Points kept per upstream: 15 minutes.
pub(crate) const POINTS: usize = 180;
/// Queue depth and in-flight are read this many times per point.
const TICKS_PER_STEP: u32 = 5;
/// Weight of the newest in-flight sample in a backend's moving average (about one
/// minute of 1 s samples).
const SHARE_ALPHA: f64 = 1.0 / 60.0;

/// Rejects that mean "no capacity": the proxy answered 503 itself.
const CAPACITY_REJECTS: [Reject; 3] = [
    Reject::Overloaded,
    Reject::QueueTimeout,
    Reject::NoHealthyBackend,
];

/// One point of an upstream's charts. `None`: nothing finished in that step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Point {
    /// Unix time, seconds.
    pub t: u64,
    /// Requests per second: 1xx-3xx answers.
    pub ok: f64,
    /// 4xx answers (499: the client went away).
    pub client_error: f64,
    /// 503s the proxy answered itself for lack of capacity (queue full, waited too
    /// long, no healthy backend).
    pub rejected: f64,
    /// Other 5xx answers (backend failures, timeouts).
    pub failed: f64,
    /// Whole-request latency, seconds.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// Time to the backend's response headers, seconds.
    pub ttfb_p50: Option<f64>,
    pub ttfb_p99: Option<f64>,
    /// Time waited for an in-flight slot, seconds.
    pub wait_p50: Option<f64>,
    pub wait_p99: Option<f64>,
    /// Largest queue depth and in-flight total seen in the step.
    pub queue_depth: u64,
    pub inflight: u64,
}

/// A histogram's cumulative state: count per bucket (cumulative, as exposed), total.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Hist {
    /// (upper bound, cumulative count), finite bounds only, ascending.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
}

impl Hist {
    fn add(&mut self, h: &prometheus::proto::Histogram) {
        let b = h.get_bucket();
        if self.buckets.is_empty() {
            self.buckets = b
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect();
        } else {
            for (mine, theirs) in self.buckets.iter_mut().zip(b) {
                mine.1 += theirs.cumulative_count();
            }
        }
        self.count += h.get_sample_count();
    }

    /// What was observed since `prev` (same buckets; a counter going backwards counts
    /// as starting over).
    fn since(&self, prev: &Hist) -> Hist {
        if prev.buckets.len() != self.buckets.len() || prev.count > self.count {
            return self.clone();
        }
        Hist {
            buckets: self
                .buckets
                .iter()
                .zip(&prev.buckets)
                .map(|(a, b)| (a.0, a.1.saturating_sub(b.1)))
                .collect(),
            count: self.count - prev.count,
        }
    }

    /// The `q` quantile (0..1) of the observations, by linear interpolation inside the
    /// bucket that holds it; beyond the last finite bound, that bound. `None` when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut lower = (0.0, 0u64);
        for &(bound, cum) in &self.buckets {
            if cum as f64 >= rank && cum > lower.1 {
                let inside = (rank - lower.1 as f64) / (cum - lower.1) as f64;
                return Some(lower.0 + (bound - lower.0) * inside.clamp(0.0, 1.0));
            }
            lower = (bound, cum);
        }
        Some(lower.0)
    }
}

/// Cumulative totals of one upstream at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Totals {
    pub ok: u64,
    pub client_error: u64,
    pub server_error: u64,
    pub rejected: u64,
    pub duration: Hist,
    pub ttfb: Hist,
    pub wait: Hist,
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map_or("", |l| l.value())
}

/// Totals per upstream, read from gathered metric families.
pub(crate) fn totals(families: &[MetricFamily]) -> HashMap<String, Totals> {
    let mut out: HashMap<String, Totals> = HashMap::new();
    for f in families {
        let name = f.name();
        for m in f.get_metric() {
            let up = label(m, "upstream");
            if up.is_empty() {
                continue; // requests that matched no route
            }
            let wanted = matches!(
                name,
                "modelgate_requests_total"
                    | "modelgate_request_duration_seconds"
                    | "modelgate_upstream_first_byte_seconds"
                    | "modelgate_queue_wait_seconds"
            ) || (name == "modelgate_rejected_total"
                && CAPACITY_REJECTS
                    .iter()
                    .any(|r| r.reason() == label(m, "reason")));
            if !wanted {
                continue;
            }
            let t = out.entry(up.to_string()).or_default();
            match name {
                "modelgate_requests_total" => {
                    let n = m.get_counter().get_value() as u64;
                    match label(m, "code").as_bytes().first() {
                        Some(b'4') => t.client_error += n,
                        Some(b'5') => t.server_error += n,
                        _ => t.ok += n,
                    }
                }
                "modelgate_rejected_total" => t.rejected += m.get_counter().get_value() as u64,
                "modelgate_request_duration_seconds" => t.duration.add(m.get_histogram()),
                "modelgate_upstream_first_byte_seconds" => t.ttfb.add(m.get_histogram()),
                "modelgate_queue_wait_seconds" => t.wait.add(m.get_histogram()),
                _ => {}
            }
        }
    }
    out
}

/// The point for the `secs` seconds between totals `prev` and `now`.
pub(crate) fn point(t: u64, prev: &Totals, now: &Totals, secs: f64) -> Point {
    let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
    let server = now.server_error.saturating_sub(prev.server_error);
    let rejected = now.rejected.saturating_sub(prev.rejected).min(server);
    let d = now.duration.since(&prev.duration);
    let f = now.ttfb.since(&prev.ttfb);
    let w = now.wait.since(&prev.wait);
    Point {
        t,
        ok: rate(now.ok, prev.ok),
        client_error: rate(now.client_error, prev.client_error),
        rejected: rejected as f64 / secs,
        failed: (server - rejected) as f64 / secs,
        p50: d.quantile(0.5),
        p99: d.quantile(0.99),
        ttfb_p50: f.quantile(0.5),
        ttfb_p99: f.quantile(0.99),
        wait_p50: w.quantile(0.5),
        wait_p99: w.quantile(0.99),
        queue_depth: 0,
        inflight: 0,
    }
}

#[derive(Debug, Default)]
struct Series {
    points: VecDeque<Point>,
    last: Option<Totals>,
    /// Largest queue depth and in-flight total since the last point.
    queue_max: u64,
    inflight_max: u64,
}

#[derive(Debug, Default)]
struct State {
    series: HashMap<String, Series>,
    /// (upstream, backend) -> moving average of its in-flight count.
    busy: HashMap<(String, String), f64>,
    ticks: u32,
    last_step: Option<std::time::Instant>,
}

/// The sampled history of every upstream. One per admin listener.
#[derive(Debug, Default)]
pub(crate) struct History {
    state: Mutex<State>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl History {
    pub(crate) fn new() -> Arc<History> {
        Arc::new(History::default())
    }

    /// Samples forever, once a second (a chart point every [`STEP`]).
    pub(crate) async fn run(
        self: Arc<Self>,
        snapshot: SharedSnapshot,
        registry: prometheus::Registry,
    ) {
        let mut tick = tokio::time::interval(STEP / TICKS_PER_STEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let snap = snapshot.load_full();
            let families = {
                let mut s = self.lock();
                s.ticks += 1;
                s.ticks % TICKS_PER_STEP == 1
            }
            .then(|| registry.gather());
            self.sample(&snap, families.as_deref(), std::time::Instant::now());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the live pools (every tick) and, with `families`, closes a point.
    pub(crate) fn sample(
        &self,
        snap: &Snapshot,
        families: Option<&[MetricFamily]>,
        now: std::time::Instant,
    ) {
        let mut s = self.lock();
        let st = &mut *s;
        st.series
            .retain(|name, _| snap.pools.iter().any(|p| &**p.name() == name));
        // Backends gone from their pool (a reload, DNS) are forgotten.
        st.busy.retain(|(up, addr), _| {
            snap.pools
                .iter()
                .any(|p| &**p.name() == up && p.backends().iter().any(|b| b.label() == addr))
        });
        for pool in &snap.pools {
            let series = st.series.entry(pool.name().to_string()).or_default();
            let mut inflight = 0u64;
            for b in pool.backends() {
                let n = b.inflight();
                inflight += u64::from(n);
                let avg = st
                    .busy
                    .entry((pool.name().to_string(), b.label().to_string()))
                    .or_insert(f64::from(n));
                *avg += (f64::from(n) - *avg) * SHARE_ALPHA;
            }
            series.queue_max = series.queue_max.max(pool.queued() as u64);
            series.inflight_max = series.inflight_max.max(inflight);
        }
        let Some(families) = families else {
            return;
        };
        let secs = st
            .last_step
            .map_or(STEP.as_secs_f64(), |l| now.duration_since(l).as_secs_f64())
            .max(0.001);
        st.last_step = Some(now);
        let mut totals = totals(families);
        let t = unix_now();
        for (name, series) in st.series.iter_mut() {
            let now_totals = totals.remove(name).unwrap_or_default();
            if let Some(prev) = &series.last {
                let mut p = point(t, prev, &now_totals, secs);
                p.queue_depth = series.queue_max;
                p.inflight = series.inflight_max;
                if series.points.len() == POINTS {
                    series.points.pop_front();
                }
                series.points.push_back(p);
            }
            series.last = Some(now_totals);
            series.queue_max = 0;
            series.inflight_max = 0;
        }
    }

    /// Each backend's share of the in-flight work of its upstream over about the last
    /// minute (0..1), by `(upstream, backend)`.
    fn shares(st: &State, upstream: &str) -> HashMap<String, f64> {
        let total: f64 = st
            .busy
            .iter()
            .filter(|((u, _), _)| u == upstream)
            .map(|(_, v)| v)
            .sum();
        st.busy
            .iter()
            .filter(|((u, _), _)| u == upstream)
            .map(|((_, b), v)| (b.clone(), if total > 0.0 { v / total } else { 0.0 }))
            .collect()
    }

    /// The charts of upstream `name` as columns (`t`, `ok`, ... each an array, `null`
    /// where nothing finished), and each backend's share of the work.
    pub(crate) fn upstream_json(&self, name: &str) -> (Value, HashMap<String, f64>) {
        let st = self.lock();
        let shares = History::shares(&st, name);
        let Some(series) = st.series.get(name) else {
            return (json!({}), shares);
        };
        let col = |f: &dyn Fn(&Point) -> Value| -> Value {
            Value::Array(series.points.iter().map(f).collect())
        };
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        let opt = |x: Option<f64>| x.map_or(Value::Null, |v| json!((v * 1e6).round() / 1e6));
        let charts = json!({
            "t": col(&|p| json!(p.t)),
            "ok": col(&|p| json!(round(p.ok))),
            "client_error": col(&|p| json!(round(p.client_error))),
            "rejected": col(&|p| json!(round(p.rejected))),
            "failed": col(&|p| json!(round(p.failed))),
            "p50": col(&|p| opt(p.p50)),
            "p99": col(&|p| opt(p.p99)),
            "ttfb_p50": col(&|p| opt(p.ttfb_p50)),
            "ttfb_p99": col(&|p| opt(p.ttfb_p99)),
            "wait_p50": col(&|p| opt(p.wait_p50)),
            "wait_p99": col(&|p| opt(p.wait_p99)),
            "queue_depth": col(&|p| json!(p.queue_depth)),
            "inflight": col(&|p| json!(p.inflight)),
        });
        (charts, shares)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(buckets: &[(f64, u64)]) -> Hist {
        Hist {
            buckets: buckets.to_vec(),
            count: buckets.last().map_or(0, |b| b.1),
        }
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        // 10 observations in (0.1, 0.25], none elsewhere.
        let h = hist(&[(0.1, 0), (0.25, 10), (0.5, 10)]);
        assert_eq!(h.quantile(0.5), Some(0.175));
        assert!((h.quantile(0.99).unwrap() - 0.2485).abs() < 1e-9);
        assert_eq!(hist(&[(0.1, 0)]).quantile(0.5), None);
        // Above the last finite bound: that bound.
        let over = Hist {
            buckets: vec![(1.0, 0)],
            count: 3,
        };
        assert_eq!(over.quantile(0.5), Some(1.0));
    }

    #[test]
    fn points_are_rates_and_quantiles_of_the_step() {
        let prev = Totals {
            ok: 10,
            server_error: 2,
            rejected: 1,
            duration: hist(&[(0.1, 5), (1.0, 10)]),
            ..Totals::default()
        };
        let now = Totals {
            ok: 60,
            client_error: 5,
            server_error: 12,
            rejected: 9,
            duration: hist(&[(0.1, 5), (1.0, 70)]),
            ..Totals::default()
        };
        let p = point(7, &prev, &now, 5.0);
        assert_eq!((p.ok, p.client_error), (10.0, 1.0));
        assert_eq!((p.rejected, p.failed), (8.0 / 5.0, 2.0 / 5.0));
        // All 60 new observations are in (0.1, 1.0].
        assert!((p.p50.unwrap() - 0.55).abs() < 1e-9);
        assert_eq!(p.ttfb_p50, None);
    }

    fn snapshot(backends: &str) -> Snapshot {
        let src = format!(
            "[listen]\nhttp = \"127.0.0.1:8080\"\n[[route]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\n[upstream.u]\nbackends = [{backends}]\n"
        );
        let loaded = crate::config::parse(&src, std::path::Path::new("t.toml")).unwrap();
        Snapshot::build(&loaded.config).unwrap()
    }

    #[test]
    fn the_ring_keeps_fifteen_minutes_and_forgets_removed_backends() {
        let h = History::default();
        let snap = snapshot("\"127.0.0.1:1\", \"127.0.0.1:2\"");
        let start = std::time::Instant::now();
        for i in 0..(POINTS as u64 + 20) {
            let at = start + STEP * u32::try_from(i).unwrap();
            h.sample(&snap, Some(&[]), at);
        }
        let (charts, shares) = h.upstream_json("u");
        assert_eq!(charts["t"].as_array().unwrap().len(), POINTS);
        assert_eq!(charts["ok"][0], 0.0);
        assert_eq!(charts["p50"][0], Value::Null);
        assert_eq!(shares.len(), 2);
        // A generation without the second backend.
        h.sample(&snapshot("\"127.0.0.1:1\""), None, start);
        assert_eq!(h.upstream_json("u").1.len(), 1);
    }

    #[test]
    fn totals_group_codes_and_capacity_rejects_by_upstream() {
        let registry = prometheus::Registry::new();
        let m = crate::metrics::Metrics::new(registry.clone()).unwrap();
        let r = m.route("chat", "llm");
        r.request(200, Some(0.2));
        r.request(404, Some(0.01));
        r.request(503, Some(0.001));
        r.request(502, Some(0.001));
        r.upstream().rejected(crate::gateway::Reject::Overloaded);
        r.upstream().rejected(crate::gateway::Reject::BadGateway);
        r.upstream().first_byte(0.1);
        let t = &totals(&registry.gather())["llm"];
        assert_eq!(
            (t.ok, t.client_error, t.server_error, t.rejected),
            (1, 1, 2, 1)
        );
        assert_eq!((t.duration.count, t.ttfb.count, t.wait.count), (4, 1, 0));
    }
}
