//! The admin listener: liveness and readiness for orchestrators, and the upstream view.
//!
//! It runs as its own pingora service on its own thread, so a flood of proxy traffic
//! cannot starve health probes. Readiness is proven, not assumed: `/readyz` connects to
//! every proxy listener once before it first answers 200, and answers 503 while the
//! process drains.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::snapshot::SharedSnapshot;

/// Shared state of the admin endpoints.
pub struct Admin {
    snapshot: SharedSnapshot,
    /// The proxy listeners that must accept connections before `/readyz` says yes.
    listeners: Vec<SocketAddr>,
    ready: AtomicBool,
    draining: Arc<AtomicBool>,
}

impl Admin {
    pub fn new(
        snapshot: SharedSnapshot,
        listeners: Vec<SocketAddr>,
        draining: Arc<AtomicBool>,
    ) -> Self {
        Admin {
            snapshot,
            listeners,
            ready: AtomicBool::new(false),
            draining,
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

    fn upstreams(&self) -> serde_json::Value {
        let snap = self.snapshot.load();
        let upstreams: serde_json::Map<String, serde_json::Value> = snap
            .pools
            .iter()
            .map(|pool| {
                let backends: Vec<_> = pool
                    .backends()
                    .iter()
                    .map(|b| {
                        json!({
                            "addr": b.label(),
                            "healthy": b.is_available(),
                            "state": format!("{:?}", b.state()).to_lowercase(),
                            "inflight": b.inflight(),
                            "queued": 0,
                            "weight": b.weight(),
                        })
                    })
                    .collect();
                (pool.name().to_string(), json!({ "backends": backends }))
            })
            .collect();
        json!({ "generation": snap.generation, "upstreams": upstreams })
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&resp.body().len().to_string()) {
        resp.headers_mut().insert(http::header::CONTENT_LENGTH, v);
    }
    resp
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Vec<u8>> {
    let mut body = value.to_string().into_bytes();
    body.push(b'\n');
    respond(status, "application/json", body)
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => respond(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            ("GET", "/readyz") => {
                if self.is_ready().await {
                    respond(StatusCode::OK, "text/plain", b"ready\n".to_vec())
                } else {
                    respond(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        b"not ready\n".to_vec(),
                    )
                }
            }
            ("GET", "/upstreams") => json_response(StatusCode::OK, &self.upstreams()),
            (_, "/healthz" | "/readyz" | "/upstreams") => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({ "error": "method_not_allowed" }),
            ),
            _ => json_response(StatusCode::NOT_FOUND, &json!({ "error": "not_found" })),
        }
    }
}
