//! Active health checks: every backend of every pool with `[upstream.X.health]` is
//! probed on its pool's own schedule, independent of other pools, and pools that
//! appear later (a reload) are picked up by the supervisor.
//!
//! A backend starts `unknown` and gets traffic only after one passing check (a
//! replica still loading weights gets nothing); `unhealthy_after` failures in a row
//! take it down, `healthy_after` passes bring it back. Requests already running on a
//! backend that goes down are never cut.

mod probe;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::task::JoinSet;

use crate::config::HealthCheck;
use crate::snapshot::SharedSnapshot;
use crate::upstream::{Backend, BackendState, Pool};

/// How often the supervisor looks for new or removed pools. Short, because a
/// backend added by a reload gets traffic only after its first passing check.
const SUPERVISE_EVERY: Duration = Duration::from_millis(100);

/// The background service that runs all health checks.
pub struct HealthService {
    snapshot: SharedSnapshot,
}

impl HealthService {
    pub fn new(snapshot: SharedSnapshot) -> Self {
        HealthService { snapshot }
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Checkers by pool identity: a pool is checked as long as some generation uses it.
        let mut running: HashMap<usize, JoinSet<()>> = HashMap::new();
        loop {
            let snap = self.snapshot.load_full();
            let mut live = Vec::with_capacity(snap.pools.len());
            for pool in &snap.pools {
                let Some(check) = pool.settings().health.clone() else {
                    continue;
                };
                let key = Arc::as_ptr(pool) as usize;
                live.push(key);
                running.entry(key).or_insert_with(|| {
                    let mut set = JoinSet::new();
                    for backend in pool.backends() {
                        set.spawn(check_backend(
                            Arc::clone(pool),
                            Arc::clone(backend),
                            check.clone(),
                        ));
                    }
                    set
                });
            }
            // Dropping a JoinSet aborts its tasks.
            running.retain(|key, _| live.contains(key));
            tokio::select! {
                _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Probes one backend forever on the pool's interval, moving its state.
async fn check_backend(pool: Arc<Pool>, backend: Arc<Backend>, check: HealthCheck) {
    let connector = pingora::connectors::http::Connector::new(None);
    let slow_start = pool.settings().slow_start;
    let (mut passes, mut fails) = (0u32, 0u32);
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
            match &result {
                Ok(()) => log::info!(
                    "upstream {}: {} is {} ({} passing checks)",
                    pool.name(),
                    backend.label(),
                    next.name(),
                    passes
                ),
                Err(why) => log::warn!(
                    "upstream {}: {} is {} after {} failed checks: {why}",
                    pool.name(),
                    backend.label(),
                    next.name(),
                    fails
                ),
            }
        } else if let (BackendState::Unknown, Err(why)) = (state, &result) {
            if fails == 1 || fails % 10 == 0 {
                log::info!(
                    "upstream {}: {} not ready yet: {why}",
                    pool.name(),
                    backend.label()
                );
            }
        }
    }
}
