//! Active health checks: every replica of every upstream with
//! `[upstream.X.health]` is probed on its upstream's own schedule, independent of
//! other upstreams. Checkers are keyed by replica: a reload restarts only the
//! checkers of replicas that are new or whose check, peer settings or slow start
//! changed, so pass/fail streaks survive every other reload.
//!
//! A backend starts `unknown` and gets traffic only after one passing check (a
//! replica still loading weights gets nothing); `unhealthy_after` failures in a row
//! take it down, `healthy_after` passes bring it back. Requests already running on a
//! backend that goes down are never cut.
//!
//! With `health.models`, a passing check is followed by `GET /v1/models` on the
//! same schedule; its list is kept on the replica for modelgate's own `/v1/models`.
//! A failed or unreadable list keeps the previous one and never moves the state.

mod probe;
pub(crate) mod wake;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::HealthCheck;
use crate::snapshot::SharedSnapshot;
use crate::supervise::supervise;
use crate::upstream::{Backend, BackendState, WaitQueue};

/// The background service that runs all health checks.
pub(crate) struct HealthService {
    snapshot: SharedSnapshot,
}

impl HealthService {
    pub(crate) fn new(snapshot: SharedSnapshot) -> Self {
        HealthService { snapshot }
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // A checker runs while the live generation has its replica with the same
        // check, slow start and protocol.
        supervise(&self.snapshot, &mut shutdown, |snap, tasks| {
            for pool in &snap.pools {
                let settings = pool.settings();
                let Some(check) = &settings.health else {
                    continue;
                };
                for backend in pool.backends() {
                    let same = (check.clone(), settings.slow_start, settings.protocol);
                    tasks.keep(pool.name(), backend, same, || {
                        tokio::spawn(check_backend(
                            Arc::clone(pool.name()),
                            Arc::clone(backend),
                            Arc::clone(pool.store().queue()),
                            settings.slow_start,
                            check.clone(),
                        ))
                    });
                }
            }
        })
        .await;
    }
}

/// Probes one backend forever on its upstream's interval, moving its state.
async fn check_backend(
    upstream: Arc<str>,
    backend: Arc<Backend>,
    queue: Arc<WaitQueue>,
    slow_start: Duration,
    check: HealthCheck,
) {
    let connector = pingora::connectors::http::Connector::new(None);
    let (mut passes, mut fails) = (0u32, 0u32);
    // The last `/v1/models` fetch worked (a failure is logged once per streak).
    let mut models_ok = true;
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = probe::probe(&connector, &backend, &check).await;
        backend.record_check();
        match &result {
            Ok(()) => {
                passes += 1;
                fails = 0;
            }
            Err(_) => {
                fails += 1;
                passes = 0;
            }
        }
        if check.models && result.is_ok() {
            match probe::fetch_models(&connector, &backend, check.timeout).await {
                Ok(list) => {
                    backend.record_models(list);
                    models_ok = true;
                }
                Err(why) => {
                    if std::mem::replace(&mut models_ok, false) {
                        log::warn!(
                            "upstream {}: {} /v1/models not read ({why}); keeping its last list",
                            upstream,
                            backend.label()
                        );
                    }
                }
            }
        }
        let state = backend.state();
        let next = match state {
            BackendState::Unknown if passes >= 1 => BackendState::Up,
            BackendState::Down if passes >= check.healthy_after && !backend.is_ejected() => {
                BackendState::Up
            }
            BackendState::Up if fails >= check.unhealthy_after => BackendState::Down,
            other => other,
        };
        if next != state {
            backend.set_state(next, slow_start);
            if next == BackendState::Up {
                queue.end_cold(); // a later cold period wakes the upstream again
                queue.dispatch(); // queued (and held) requests may take the new capacity
            }
            match &result {
                Ok(()) => log::info!(
                    "upstream {}: {} is {} ({} passing checks)",
                    upstream,
                    backend.label(),
                    next.name(),
                    passes
                ),
                Err(why) => log::warn!(
                    "upstream {}: {} is {} after {} failed checks: {why}",
                    upstream,
                    backend.label(),
                    next.name(),
                    fails
                ),
            }
        } else if let (BackendState::Unknown, Err(why)) = (state, &result) {
            if fails == 1 || fails % 10 == 0 {
                log::info!(
                    "upstream {}: {} not ready yet: {why}",
                    upstream,
                    backend.label()
                );
            }
        }
    }
}
