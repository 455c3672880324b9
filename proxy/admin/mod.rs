//! The admin listener: liveness and readiness for orchestrators, the upstream view,
//! the config status and `POST /reload`.
//!
//! With `listen.admin_token_file` set, every request but `/healthz` and `/readyz`
//! (orchestrator probes) must carry `Authorization: Bearer <token>` (401 otherwise).
//! Prometheus metrics and a status page with 15 minutes of charts (`history`, `status`).
//!
//! It runs on its own thread, outside pingora's listener shutdown, so it keeps
//! answering (`/readyz` = 503) while the proxy listeners drain, and a flood of proxy
//! traffic cannot starve health probes. Readiness is proven, not assumed: `/readyz` connects to
//! every proxy listener and sees a backend in every upstream before it first answers
//! 200, and answers 503 (with the reason) while the process drains.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub(crate) mod history;
mod server;
mod status;
pub(crate) use server::AdminService;

use http::StatusCode;
use serde_json::json;

use crate::metrics::Metrics;
use crate::reload::{ReloadOutcome, Reloader, Trigger};
use crate::snapshot::SharedSnapshot;
use crate::timefmt::rfc3339;

/// The status page: self-contained, it polls `/status` (and `/upstreams`) and draws
/// its charts as inline SVG.
const STATUS_PAGE: &str = include_str!("status.html");

/// Shared state of the admin endpoints.
pub(crate) struct Admin {
    snapshot: SharedSnapshot,
    /// The proxy listeners that must accept connections before `/readyz` says yes.
    listeners: Vec<SocketAddr>,
    ready: AtomicBool,
    draining: Arc<AtomicBool>,
    /// None when the config did not come from a file (the demo).
    reloader: Option<Arc<Reloader>>,
    file: std::path::PathBuf,
    token: Option<String>,
    metrics: Arc<Metrics>,
    history: Arc<history::History>,
}

impl Admin {
    pub(crate) fn new(
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
            history: history::History::new(),
            reloader: None,
            file: std::path::PathBuf::new(),
            token: None,
        }
    }

    /// Enables `POST /reload` and names the config file on `GET /config`.
    pub(crate) fn with_reload(
        mut self,
        reloader: Option<Arc<Reloader>>,
        file: std::path::PathBuf,
    ) -> Self {
        self.reloader = reloader;
        self.file = file;
        self
    }

    /// Requires `Authorization: Bearer <token>` on every request.
    pub(crate) fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Does this request carry the token (or is none required)? As a bearer token,
    /// or as the password of HTTP Basic authentication (any user name), which is what
    /// a browser sends for the status page after asking for it.
    pub(crate) fn authorized(&self, authorization: Option<&http::HeaderValue>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(value) = authorization.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let basic = value.strip_prefix("Basic ").and_then(|b| {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()?;
            let text = String::from_utf8(raw).ok()?;
            text.split_once(':')
                .map(|(_, password)| password.to_string())
        });
        let Some(given) = basic.as_deref().or_else(|| value.strip_prefix("Bearer ")) else {
            return false;
        };
        // Constant time in the token's length: no timing hint of the prefix matched.
        given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    fn config_status(&self) -> serde_json::Value {
        match &self.reloader {
            Some(r) => {
                let s = r.status();
                json!({
                    "generation": s.generation,
                    "loaded_at": rfc3339(s.loaded_at),
                    "file": s.file.display().to_string(),
                    "last_error": s.last_error,
                    "last_error_at": s.last_error_at.map(rfc3339),
                })
            }
            None => {
                let snap = self.snapshot.load();
                json!({
                    "generation": snap.generation,
                    "loaded_at": rfc3339(snap.loaded_at),
                    "file": self.file.display().to_string(),
                    "last_error": null,
                    "last_error_at": null,
                })
            }
        }
    }

    async fn reload(&self) -> Answer {
        let Some(reloader) = self.reloader.clone() else {
            return json_answer(
                StatusCode::CONFLICT,
                &json!({ "result": "error", "errors": ["this config was not read from a file; nothing to reload"] }),
            );
        };
        let outcome = tokio::task::spawn_blocking(move || reloader.reload(Trigger::Admin)).await;
        match outcome {
            Ok(ReloadOutcome::Applied { generation, took }) => json_answer(
                StatusCode::OK,
                &json!({ "result": "ok", "generation": generation, "took_ms": took.as_secs_f64() * 1000.0 }),
            ),
            Ok(ReloadOutcome::Rejected { errors }) => json_answer(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({ "result": "error", "errors": errors }),
            ),
            Err(e) => json_answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({ "result": "error", "errors": [format!("reload task failed: {e}")] }),
            ),
        }
    }

    /// The task that samples the status page's history; runs until the process ends.
    pub(crate) fn history_sampler(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        Arc::clone(&self.history).run(Arc::clone(&self.snapshot), self.metrics.registry().clone())
    }

    /// `Ok` when the instance may take traffic, else why not. Until it first says
    /// yes: every proxy listener accepts a connection, and every upstream has at
    /// least one backend (an address listed, or one its names resolved to), except
    /// those that scale from zero (`hold` or `wake`: a request must reach them to
    /// start a replica). Backend health is not asked: a replica outage is answered by every instance alike
    /// (503 `no_healthy_backend` with `Retry-After`), which taking the instances out
    /// of their load balancer would only turn into connection errors, for every
    /// model. After the first yes only draining turns it to no: a reload that adds
    /// an upstream whose names do not resolve yet does not take a serving instance out.
    async fn is_ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        if self.ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        for addr in &self.listeners {
            let probe =
                tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr));
            if !matches!(probe.await, Ok(Ok(_))) {
                return Err(format!("listener {addr} does not accept connections yet"));
            }
        }
        if let Some(why) = self.upstream_without_backends() {
            return Err(why);
        }
        self.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The first upstream with no backend at all that needs one to serve, as a
    /// reason not to be ready.
    fn upstream_without_backends(&self) -> Option<String> {
        let snap = self.snapshot.load();
        let pool = snap.pools.iter().find(|p| {
            let s = p.settings();
            p.backends().is_empty() && s.hold.is_none() && s.wake.is_none()
        })?;
        let names = pool
            .settings()
            .discovery
            .as_ref()
            .map_or(String::new(), |d| {
                let names: Vec<String> = d.names.iter().map(ToString::to_string).collect();
                format!(" ({} not resolved yet)", names.join(", "))
            });
        Some(format!("upstream {} has no backend{names}", pool.name()))
    }

    /// The exposition; the pool gauges are read from the live snapshot now.
    fn metrics(&self) -> Vec<u8> {
        self.metrics.set_generation(self.snapshot.load().generation);
        self.metrics.render()
    }

    fn upstreams(&self) -> serde_json::Value {
        let snap = self.snapshot.load();
        let backend = |b: &crate::upstream::Backend, state: &str, queued: usize, cap: u32| {
            let reported = b.reported().map(|(r, at)| {
                json!({
                    "queue": r.queue,
                    "running": r.running,
                    "cache_usage": r.cache_usage,
                    "at": rfc3339(at),
                })
            });
            json!({
                "addr": b.label(),
                "healthy": b.is_available(),
                "state": state,
                "inflight": b.inflight(),
                // One FIFO queue per upstream feeds every backend.
                "queued": queued,
                "weight": b.weight(),
                // null until the replica's first answer.
                "latency_ms": (b.latency_us() > 0).then(|| f64::from(b.latency_us()) / 1000.0),
                "last_check": b.last_check().map(rfc3339),
                // Per backend; 0 = unlimited.
                "max_inflight": cap,
                "reported": reported,
            })
        };
        let totals = self.metrics.upstream_totals();
        let mut upstreams: serde_json::Map<String, serde_json::Value> = snap
            .pools
            .iter()
            .map(|pool| {
                let queued = pool.queued();
                let (requests, errors) = totals.get(&**pool.name()).copied().unwrap_or_default();
                let backends: Vec<_> = pool
                    .backends()
                    .iter()
                    .map(|b| backend(b, b.state().name(), queued, pool.settings().cap.of(b)))
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
        for (name, b) in snap.draining() {
            let entry = upstreams
                .entry(name.to_string())
                .or_insert_with(|| json!({ "queued": 0, "backends": [] }));
            if let Some(list) = entry["backends"].as_array_mut() {
                list.push(backend(b, "draining", 0, 0));
            }
        }
        json!({ "generation": snap.generation, "upstreams": upstreams })
    }
}

/// A complete admin answer.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// The admin bearer token: the file's content without surrounding whitespace. Fails,
/// naming the file, when it cannot be read or holds only whitespace.
pub(crate) fn read_token(path: &std::path::Path) -> Result<String, String> {
    // Not a device or a pipe: the config loader reads it too, and must not block.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(format!(
            "{} is not a regular file; put the bearer token in a file",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read {}: {e}; put the bearer token in that file",
            path.display()
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "{} is empty; put the bearer token in it",
            path.display()
        ));
    }
    Ok(token.to_string())
}

fn text(status: StatusCode, body: &str) -> Answer {
    Answer {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.as_bytes().to_vec(),
    }
}

/// 401 for a request without the admin bearer token.
pub(crate) fn unauthorized() -> Answer {
    json_answer(
        StatusCode::UNAUTHORIZED,
        &json!({ "error": "unauthorized" }),
    )
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
    pub(crate) async fn answer(&self, method: &http::Method, path: &str) -> Answer {
        match (method.as_str(), path) {
            ("GET", "/healthz") => text(StatusCode::OK, "ok\n"),
            ("GET", "/readyz") => match self.is_ready().await {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {why}\n"),
                ),
            },
            ("GET", "/upstreams") => json_answer(StatusCode::OK, &self.upstreams()),
            ("GET", "/config") => json_answer(StatusCode::OK, &self.config_status()),
            ("GET", "/status") => json_answer(StatusCode::OK, &self.status()),
            ("POST", "/reload") => self.reload().await,

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
            (
                _,
                "/healthz" | "/readyz" | "/upstreams" | "/config" | "/status" | "/reload"
                | "/metrics" | "/",
            ) => json_answer(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({ "error": "method_not_allowed" }),
            ),
            _ => json_answer(StatusCode::NOT_FOUND, &json!({ "error": "not_found" })),
        }
    }
}
