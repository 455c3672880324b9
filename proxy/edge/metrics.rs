//! The edge's Prometheus series, read from the live state at scrape time:
//! `modelgate_rate_limit_keys{route}`, `modelgate_connections_open` and
//! `modelgate_connections_refused_total{reason}`. Each scrape builds them from
//! what is there now (as the pool gauges do), so a route whose rate limit is gone
//! has no series, and nothing is reset and re-set between scrapes.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::conn::{ConnectionLimits, Refused};
use crate::metrics::live::Family;
use crate::snapshot::SharedSnapshot;

/// Name and help of each series.
const RATE_LIMIT_KEYS: (&str, &str) = (
    "modelgate_rate_limit_keys",
    "Client keys a route's rate limit tracks now (at most its max_keys)",
);
const OPEN: (&str, &str) = (
    "modelgate_connections_open",
    "Client connections open on the proxy listeners",
);
const REFUSED: (&str, &str) = (
    "modelgate_connections_refused_total",
    "Client connections closed at accept by a connection limit",
);

/// Registered once on the metrics registry; every scrape reads the live values.
pub(crate) struct EdgeCollector {
    snapshot: SharedSnapshot,
    conns: Arc<ConnectionLimits>,
    descs: Vec<Desc>,
}

impl EdgeCollector {
    pub(crate) fn new(
        snapshot: SharedSnapshot,
        conns: Arc<ConnectionLimits>,
    ) -> prometheus::Result<Self> {
        let descs = families()
            .iter()
            .map(Family::desc)
            .collect::<prometheus::Result<_>>()?;
        Ok(EdgeCollector {
            snapshot,
            conns,
            descs,
        })
    }
}

/// The empty families, in a fixed order.
fn families() -> [Family; 3] {
    [
        Family::gauge(RATE_LIMIT_KEYS.0, RATE_LIMIT_KEYS.1, &["route"]),
        Family::gauge(OPEN.0, OPEN.1, &[]),
        Family::counter(REFUSED.0, REFUSED.1, &["reason"]),
    ]
}

impl Collector for EdgeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let [mut keys, mut open, mut refused] = families();
        let snapshot = self.snapshot.load();
        for (route, edge) in snapshot.named_edges() {
            if let Some(l) = &edge.rate_limit {
                keys.push(&[route], l.limit.keys() as f64);
            }
        }
        open.push(&[], self.conns.open() as f64);
        for reason in [Refused::MaxConnections, Refused::MaxConnectionsPerIp] {
            refused.push(&[reason.reason()], self.conns.refused(reason) as f64);
        }
        [keys, open, refused]
            .into_iter()
            .filter_map(Family::done)
            .collect()
    }
}
