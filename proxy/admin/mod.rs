//! The admin listener: liveness and readiness for orchestrators, the upstream view,
//! Prometheus metrics and a status page.
//!
//! It runs on its own thread, outside pingora's listener shutdown, so it keeps
//! answering (`/readyz` = 503) while the proxy listeners drain, and a flood of proxy
//! traffic cannot starve health probes. Readiness is proven, not assumed: `/readyz` connects to
//! every proxy listener once before it first answers 200, and answers 503 while the
//! process drains.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod server;
pub use server::AdminService;

use http::StatusCode;
use serde_json::json;

use crate::metrics::{BackendState, Metrics, PoolState};
use crate::snapshot::SharedSnapshot;

/// The status page: self-contained, it polls `/upstreams` and renders it.
const STATUS_PAGE: &str = include_str!("status.html");

/// Shared state of the admin endpoints.
pub struct Admin {
    snapshot: SharedSnapshot,
    /// The proxy listeners that must accept connections before `/readyz` says yes.
    listeners: Vec<SocketAddr>,
    ready: AtomicBool,
    draining: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Admin {
    pub fn new(
        snapshot: SharedSnapshot,
        listeners: Vec<SocketAddr>,
        draining: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Admin {
            snapshot,
            listeners,
            ready: AtomicBool::new(false),
            draining,
            metrics,
        }
    }

    async fn is_ready(&self) -> bool {
        if self.draining.load(Ordering::Relaxed) {
            return false;
        }
        if self.ready.load(Ordering::Relaxed) {
            return true;
        }
        for addr in &self.listeners {
            let probe =
                tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr));
            if !matches!(probe.await, Ok(Ok(_))) {
                return false;
            }
        }
        self.ready.store(true, Ordering::Relaxed);
        true
    }

    /// The exposition, with the pool gauges read from the live snapshot now.
    fn metrics(&self) -> Vec<u8> {
        let snap = self.snapshot.load();
        self.metrics.set_generation(snap.generation);
        let pools: Vec<PoolState<'_>> = snap
            .pools
            .iter()
            .map(|pool| PoolState {
                upstream: pool.name(),
                queued: pool.queued(),
                backends: pool
                    .backends()
                    .iter()
                    .map(|b| BackendState {
                        addr: b.label(),
                        up: b.is_available(),
                        inflight: b.inflight(),
                    })
                    .collect(),
            })
            .collect();
        self.metrics.render(&pools)
    }

    fn upstreams(&self) -> serde_json::Value {
        let snap = self.snapshot.load();
        let totals = self.metrics.upstream_totals();
        let upstreams: serde_json::Map<String, serde_json::Value> = snap
            .pools
            .iter()
            .map(|pool| {
                let queued = pool.queued();
                let (requests, errors) = totals.get(&**pool.name()).copied().unwrap_or_default();
                let backends: Vec<_> = pool
                    .backends()
                    .iter()
                    .map(|b| {
                        json!({
                            "addr": b.label(),
                            "healthy": b.is_available(),
                            "state": b.state().name(),
                            "inflight": b.inflight(),
                            // One FIFO queue per upstream feeds every backend.
                            "queued": queued,
                            "weight": b.weight(),
                        })
                    })
                    .collect();
                (
                    pool.name().to_string(),
                    json!({
                        "queued": queued,
                        "requests": requests,
                        "errors": errors,
                        "backends": backends,
                    }),
                )
            })
            .collect();
        json!({ "generation": snap.generation, "upstreams": upstreams })
    }
}

/// A complete admin answer.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

fn text(status: StatusCode, body: &str) -> Answer {
    Answer {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.as_bytes().to_vec(),
    }
}

fn json_answer(status: StatusCode, value: &serde_json::Value) -> Answer {
    let mut body = value.to_string().into_bytes();
    body.push(b'\n');
    Answer {
        status,
        content_type: "application/json",
        body,
    }
}

impl Admin {
    /// Answers one admin request.
    pub async fn answer(&self, method: &http::Method, path: &str) -> Answer {
        match (method.as_str(), path) {
            ("GET", "/healthz") => text(StatusCode::OK, "ok\n"),
            ("GET", "/readyz") => {
                if self.is_ready().await {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            ("GET", "/upstreams") => json_answer(StatusCode::OK, &self.upstreams()),
            ("GET", "/metrics") => Answer {
                status: StatusCode::OK,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: self.metrics(),
            },
            ("GET", "/") => Answer {
                status: StatusCode::OK,
                content_type: "text/html; charset=utf-8",
                body: STATUS_PAGE.as_bytes().to_vec(),
            },
            (_, "/healthz" | "/readyz" | "/upstreams" | "/metrics" | "/") => json_answer(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({ "error": "method_not_allowed" }),
            ),
            _ => json_answer(StatusCode::NOT_FOUND, &json!({ "error": "not_found" })),
        }
    }
}
