//! `GET /status`: everything the status page shows, in one JSON document: the config
//! generation and last reload error, the routes, and per upstream its charts (see
//! [`super::history`]) and its backends now.

use serde_json::{json, Value};

use super::Admin;
use crate::config::HostMatch;
use crate::upstream::Cap;

impl Admin {
    /// The status page's data.
    ///
    /// ```json
    /// { "config": {"generation":3, "loaded_at":"...", "file":"...", "last_error":null, ...},
    ///   "step_s": 5, "points": 180,
    ///   "routes": [{"name":"chat", "host":null, "path":"/v1", "models":[], "upstream":"llm"}],
    ///   "upstreams": {"llm": {
    ///       "max_inflight": 2, "queue_size": 4, "queued": 0,
    ///       "charts": {"t":[..], "ok":[..], "client_error":[..], "rejected":[..], "failed":[..],
    ///                  "p50":[..], "p99":[..], "ttfb_p50":[..], "ttfb_p99":[..],
    ///                  "wait_p50":[..], "wait_p99":[..], "queue_depth":[..], "inflight":[..]},
    ///       "backends": [{"addr":"..", "state":"up", "inflight":1, "weight":1,
    ///                     "share":0.5, "latency_ms":120.0}]}}}
    /// ```
    /// Rates are per second, times in seconds, `null` where no request finished in a
    /// step; `share` is the backend's part of the upstream's in-flight work over about
    /// the last minute (0..1).
    pub(super) fn status(&self) -> Value {
        let snap = self.snapshot.load();
        let routes: Vec<Value> = snap
            .config
            .routes
            .iter()
            .map(|r| {
                let host = match &r.host {
                    Some(HostMatch::Exact(h)) => Some(h.clone()),
                    Some(HostMatch::Wildcard(suffix)) => Some(format!("*{suffix}")),
                    None => None,
                };
                let mut models = r.openai.models.clone();
                models.extend(r.openai.model_prefixes.iter().map(|p| format!("{p}*")));
                json!({
                    "name": r.name,
                    "host": host,
                    "path": r.path,
                    "models": models,
                    "upstream": r.upstream,
                })
            })
            .collect();
        let mut upstreams = serde_json::Map::new();
        for pool in &snap.pools {
            let (charts, shares) = self.history.upstream_json(pool.name());
            let backend = |b: &crate::upstream::Backend, state: &str| {
                json!({
                    "addr": b.label(),
                    "state": state,
                    "inflight": b.inflight(),
                    "max_inflight": pool.settings().cap.of(b),
                    "weight": b.weight(),
                    "share": shares.get(b.label()).copied(),
                    "latency_ms": (b.latency_us() > 0).then(|| f64::from(b.latency_us()) / 1000.0),
                })
            };
            let mut backends: Vec<Value> = pool
                .backends()
                .iter()
                .map(|b| backend(b, b.state().name()))
                .collect();
            backends.extend(
                snap.draining()
                    .filter(|(name, _)| *name == pool.name())
                    .map(|(_, b)| backend(b, "draining")),
            );
            let s = pool.settings();
            upstreams.insert(
                pool.name().to_string(),
                json!({
                    "max_inflight": match s.cap {
                        Cap::Unlimited => json!(0),
                        Cap::Fixed(n) => json!(n),
                        Cap::Learned(_) => json!("auto"),
                    },
                    "queue_size": s.queue.size,
                    "queued": pool.queued(),
                    "charts": charts,
                    "backends": backends,
                }),
            );
        }
        json!({
            "config": self.config_status(),
            "step_s": super::history::STEP.as_secs(),
            "points": super::history::POINTS,
            "routes": routes,
            "upstreams": upstreams,
        })
    }
}
