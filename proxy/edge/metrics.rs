//! The edge's Prometheus series, read from the live state at scrape time:
//! `modelgate_rate_limit_keys{route}`, `modelgate_connections_open` and
//! `modelgate_connections_refused_total{reason}`.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};

use super::conn::{ConnectionLimits, Refused};
use crate::snapshot::SharedSnapshot;

/// Registered once on the metrics registry; every scrape reads the live values.
pub(crate) struct EdgeCollector {
    snapshot: SharedSnapshot,
    conns: Arc<ConnectionLimits>,
    rate_limit_keys: IntGaugeVec,
    open: IntGauge,
    refused: IntCounterVec,
}

impl EdgeCollector {
    pub(crate) fn new(
        snapshot: SharedSnapshot,
        conns: Arc<ConnectionLimits>,
    ) -> prometheus::Result<Self> {
        Ok(EdgeCollector {
            snapshot,
            conns,
            rate_limit_keys: IntGaugeVec::new(
                Opts::new(
                    "modelgate_rate_limit_keys",
                    "Client keys a route's rate limit tracks now (at most its max_keys)",
                ),
                &["route"],
            )?,
            open: IntGauge::new(
                "modelgate_connections_open",
                "Client connections open on the proxy listeners",
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "modelgate_connections_refused_total",
                    "Client connections closed at accept by a connection limit",
                ),
                &["reason"],
            )?,
        })
    }
}

impl Collector for EdgeCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.rate_limit_keys.desc();
        d.extend(self.open.desc());
        d.extend(self.refused.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.rate_limit_keys.reset();
        let snapshot = self.snapshot.load();
        for (route, edge) in snapshot.named_edges() {
            if let Some(l) = &edge.rate_limit {
                self.rate_limit_keys
                    .with_label_values(&[route])
                    .set(i64::try_from(l.limit.keys()).unwrap_or(i64::MAX));
            }
        }
        self.open
            .set(i64::try_from(self.conns.open()).unwrap_or(i64::MAX));
        for reason in [Refused::MaxConnections, Refused::MaxConnectionsPerIp] {
            let c = self.refused.with_label_values(&[reason.reason()]);
            let now = self.conns.refused(reason);
            c.inc_by(now.saturating_sub(c.get()));
        }
        let mut out = self.rate_limit_keys.collect();
        out.extend(self.open.collect());
        out.extend(self.refused.collect());
        out
    }
}
