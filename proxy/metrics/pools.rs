//! The pool gauges of SPEC.md, read from the live snapshot at each scrape:
//! `modelgate_backend_up`, `modelgate_backend_inflight`, `modelgate_queue_depth` and
//! what replicas last reported (`modelgate_backend_reported_{queue,running,cache_usage}`),
//! and per priority class of a wait queue `modelgate_class_queue_depth` and
//! `modelgate_class_inflight`.
//! They cost the request path nothing, and a removed backend's series is gone at the
//! next scrape, as is a report series once the report expires.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::live::Family;
use crate::snapshot::SharedSnapshot;

const BACKEND: &[&str] = &["upstream", "backend"];
const UPSTREAM: &[&str] = &["upstream"];
const CLASS: &[&str] = &["upstream", "class"];

/// Name and help of each pool gauge.
const UP: (&str, &str) = (
    "modelgate_backend_up",
    "1 when the backend takes new requests, else 0.",
);
const INFLIGHT: (&str, &str) = (
    "modelgate_backend_inflight",
    "Requests in flight on the backend.",
);
const QUEUE_DEPTH: (&str, &str) = (
    "modelgate_queue_depth",
    "Requests waiting for an in-flight slot.",
);
const REPORTED_QUEUE: (&str, &str) = (
    "modelgate_backend_reported_queue",
    "Requests waiting inside the backend, as it last reported.",
);
const REPORTED_RUNNING: (&str, &str) = (
    "modelgate_backend_reported_running",
    "Requests the backend is working on, as it last reported.",
);
const REPORTED_CACHE_USAGE: (&str, &str) = (
    "modelgate_backend_reported_cache_usage",
    "KV cache in use (0..1), as the backend last reported.",
);

const CLASS_DEPTH: (&str, &str) = (
    "modelgate_class_queue_depth",
    "Requests of a priority class waiting for an in-flight slot.",
);
const CLASS_INFLIGHT: (&str, &str) = (
    "modelgate_class_inflight",
    "Requests of a priority class in flight on the upstream's backends.",
);

/// Registered once on the metrics registry; every scrape reads the live pools.
pub(crate) struct PoolCollector {
    snapshot: SharedSnapshot,
    descs: Vec<Desc>,
}

impl PoolCollector {
    pub(crate) fn new(snapshot: SharedSnapshot) -> prometheus::Result<PoolCollector> {
        let descs = families()
            .iter()
            .map(Family::desc)
            .collect::<prometheus::Result<_>>()?;
        Ok(PoolCollector { snapshot, descs })
    }
}

/// The empty families, in a fixed order.
fn families() -> [Family; 8] {
    [
        Family::gauge(UP.0, UP.1, BACKEND),
        Family::gauge(INFLIGHT.0, INFLIGHT.1, BACKEND),
        Family::gauge(QUEUE_DEPTH.0, QUEUE_DEPTH.1, UPSTREAM),
        Family::gauge(REPORTED_QUEUE.0, REPORTED_QUEUE.1, BACKEND),
        Family::gauge(REPORTED_RUNNING.0, REPORTED_RUNNING.1, BACKEND),
        Family::gauge(REPORTED_CACHE_USAGE.0, REPORTED_CACHE_USAGE.1, BACKEND),
        Family::gauge(CLASS_DEPTH.0, CLASS_DEPTH.1, CLASS),
        Family::gauge(CLASS_INFLIGHT.0, CLASS_INFLIGHT.1, CLASS),
    ]
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let [mut up, mut inflight, mut depth, mut queue, mut running, mut cache, mut class_depth, mut class_inflight] =
            families();
        let snapshot = self.snapshot.load();
        for pool in &snapshot.pools {
            let upstream: &str = pool.name();
            let report_ttl = pool.report_ttl();
            depth.push(&[upstream], pool.queued() as f64);
            for (class, waiting, running) in pool.class_counts() {
                class_depth.push(&[upstream, class], f64::from(waiting));
                class_inflight.push(&[upstream, class], f64::from(running));
            }
            for b in pool.backends() {
                let labels = [upstream, b.label()];
                up.push(&labels, f64::from(u8::from(b.is_available())));
                inflight.push(&labels, f64::from(b.inflight()));
                // A report the balancer no longer counts (older than three
                // intervals: the replica stopped answering) is not shown either.
                let Some(report) = b.fresh_report(report_ttl) else {
                    continue;
                };
                for (family, value) in [
                    (&mut queue, report.queue),
                    (&mut running, report.running),
                    (&mut cache, report.cache_usage),
                ] {
                    if let Some(v) = value {
                        family.push(&labels, v);
                    }
                }
            }
        }
        [
            up,
            inflight,
            depth,
            queue,
            running,
            cache,
            class_depth,
            class_inflight,
        ]
        .into_iter()
        .filter_map(Family::done)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arc_swap::ArcSwap;

    use super::*;
    use crate::metrics::Metrics;
    use crate::snapshot::Snapshot;

    fn snapshot(backends: &str) -> Snapshot {
        snapshot_with(backends, "")
    }

    /// `extra`: more keys of `[upstream.llm]`.
    fn snapshot_with(backends: &str, extra: &str) -> Snapshot {
        let src = format!(
            "[listen]\nhttp = \"127.0.0.1:8080\"\n[[route]]\nname = \"r\"\npath = \"/\"\n\
             upstream = \"llm\"\n[upstream.llm]\nbackends = [{backends}]\n{extra}"
        );
        let loaded = crate::config::parse(&src, std::path::Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        Snapshot::build(&loaded.config).unwrap_or_else(|e| panic!("{e:?}"))
    }

    /// Metrics with a pool collector reading `first` (replace it through the handle).
    fn registered(first: Snapshot) -> (Arc<Metrics>, SharedSnapshot) {
        let m = Metrics::new(prometheus::Registry::new()).unwrap_or_else(|e| panic!("{e}"));
        let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(first));
        let collector = PoolCollector::new(Arc::clone(&shared)).unwrap_or_else(|e| panic!("{e}"));
        m.registry()
            .register(Box::new(collector))
            .unwrap_or_else(|e| panic!("{e}"));
        (m, shared)
    }

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.render()).unwrap_or_default()
    }

    #[test]
    fn pool_gauges_follow_the_live_pools() {
        let (m, shared) = registered(snapshot("\"10.0.0.1:80\", \"10.0.0.2:80\""));
        let t = text(&m);
        assert!(
            t.contains("modelgate_queue_depth{upstream=\"llm\"} 0"),
            "{t}"
        );
        assert!(
            t.contains("modelgate_backend_up{backend=\"10.0.0.2:80\",upstream=\"llm\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("modelgate_backend_inflight{backend=\"10.0.0.1:80\",upstream=\"llm\"} 0"),
            "{t}"
        );
        // Nothing reported yet: no series.
        assert!(!t.contains("modelgate_backend_reported_queue{"), "{t}");
        // A backend removed from the config disappears at the next scrape.
        shared.store(Arc::new(snapshot("\"10.0.0.1:80\"")));
        let t = text(&m);
        assert!(!t.contains("10.0.0.2:80"), "{t}");
        assert!(t.contains("10.0.0.1:80"), "{t}");
    }

    #[test]
    fn class_gauges_follow_the_live_classes() {
        let (m, shared) = registered(snapshot_with(
            "\"10.0.0.1:80\"",
            "max_inflight = 1\npriority = { header = \"x-priority\", classes = [\"interactive\", \"default\"] }\n",
        ));
        let t = text(&m);
        for class in ["interactive", "default"] {
            for family in ["modelgate_class_queue_depth", "modelgate_class_inflight"] {
                let series = format!("{family}{{class=\"{class}\",upstream=\"llm\"}} 0");
                assert!(t.contains(&series), "{series} in {t}");
            }
        }
        // Without `priority` the classes are gone at the next scrape.
        shared.store(Arc::new(snapshot("\"10.0.0.1:80\"")));
        let t = text(&m);
        assert!(!t.contains("modelgate_class_"), "{t}");
    }
}
