//! Hot reload: read -> validate -> build -> swap, all or nothing, triggered by a
//! change of the config file, `SIGHUP` or `POST /reload` on the admin listener.
//!
//! A reload reads the file, validates and builds it with [`crate::prepare`] exactly
//! as `modelgate check` and `modelgate run` do (which also refuses changes that only a
//! restart can apply: the `[listen]` and `[log]` sections, turning TLS on or off),
//! building the next [`Snapshot`] from the live one (kept backends keep their health state, in-flight
//! counts and queued requests; see `upstream::pool`), and publishes it in one
//! atomic swap. Anything short of that leaves the live generation untouched, and the
//! errors are logged and kept for `GET /config`.
//!
//! [`Reloader::reload`] is the single entry point of every trigger and returns a
//! [`ReloadOutcome`], also counted in `modelgate_config_reloads_total{result}`.

mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub(crate) use watch::ConfigWatch;

use crate::config::{self, Config, Tls};
use crate::metrics::Metrics;
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::tls::CertWatcher;

/// What asked for a reload (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// `SIGHUP`.
    Signal,
    /// `POST /reload`.
    Admin,
    /// The config file changed.
    FileWatch,
}

impl Trigger {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::Admin => "POST /reload",
            Trigger::FileWatch => "file change",
        }
    }
}

/// The result of one reload attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ReloadOutcome {
    /// The new generation is live.
    Applied { generation: u64, took: Duration },
    /// Nothing changed; the live generation keeps serving. Each line is ready for
    /// an operator (`FILE:LINE:COL: key: what is wrong`).
    Rejected { errors: Vec<String> },
}

/// What `GET /config` shows.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub file: PathBuf,
    pub generation: u64,
    pub loaded_at: SystemTime,
    /// The errors of the last reload attempt, if it failed.
    pub last_error: Option<Vec<String>>,
    pub last_error_at: Option<SystemTime>,
}

/// Reloads the config file into the live snapshot. Reloads run one at a time.
pub(crate) struct Reloader {
    path: PathBuf,
    shared: SharedSnapshot,
    certs: Option<Arc<CertWatcher>>,
    /// Counts reloads and shows the generation serving.
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

struct State {
    status: Status,
    /// The `[tls]` section now served (to tell the cert watcher about a new source).
    tls: Option<Tls>,
    /// Hash of the file content the last attempt read (good or bad), so the file
    /// watch does not retry content it has already seen.
    seen: Option<u64>,
}

impl Reloader {
    /// A reloader for the file `config` was loaded from, now served by `shared`.
    /// `certs` is the HTTPS listener's certificate watcher, if any.
    pub(crate) fn new(
        config: &Config,
        shared: SharedSnapshot,
        certs: Option<Arc<CertWatcher>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let live = shared.load();
        let seen = std::fs::read(&config.source).ok().map(|b| content_hash(&b));
        Reloader {
            path: config.source.clone(),
            certs,
            metrics,
            state: Mutex::new(State {
                status: Status {
                    file: config.source.clone(),
                    generation: live.generation,
                    loaded_at: live.loaded_at,
                    last_error: None,
                    last_error_at: None,
                },
                tls: config.tls.clone(),
                seen,
            }),
            shared,
        }
    }

    /// The config file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update of the state is a plain assignment: a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `GET /config` shows.
    pub(crate) fn status(&self) -> Status {
        self.lock().status.clone()
    }

    /// Hash of the file content last read by a reload attempt.
    pub(crate) fn seen(&self) -> Option<u64> {
        self.lock().seen
    }

    /// Reads, validates, builds and swaps in the config file. On any error the live
    /// generation keeps serving and the errors are logged and kept for `/config`.
    pub(crate) fn reload(&self, trigger: Trigger) -> ReloadOutcome {
        let started = Instant::now();
        let mut state = self.lock();
        let publishing = crate::snapshot::publishing();
        let outcome = match self.try_reload(&mut state) {
            Ok(generation) => {
                let took = started.elapsed();
                log::info!(
                    "config reloaded ({}): generation {generation} is live, built in {took:?}",
                    trigger.name()
                );
                ReloadOutcome::Applied { generation, took }
            }
            Err(errors) => {
                log::error!(
                    "config reload ({}) refused; generation {} keeps serving; {} error(s):",
                    trigger.name(),
                    state.status.generation,
                    errors.len()
                );
                for e in &errors {
                    log::error!("{e}");
                }
                state.status.last_error = Some(errors.clone());
                state.status.last_error_at = Some(SystemTime::now());
                ReloadOutcome::Rejected { errors }
            }
        };
        drop(publishing);
        drop(state);
        match &outcome {
            ReloadOutcome::Applied { generation, .. } => self.metrics.reload(true, *generation),
            ReloadOutcome::Rejected { .. } => self.metrics.reload(false, 0),
        }
        outcome
    }

    fn try_reload(&self, state: &mut State) -> Result<u64, Vec<String>> {
        let text = std::fs::read(&self.path).map_err(|e| {
            vec![format!(
                "{}: cannot read: {e}; nothing was changed",
                self.path.display()
            )]
        })?;
        state.seen = Some(content_hash(&text));
        let text = String::from_utf8(text).map_err(|_| {
            vec![format!(
                "{}: not UTF-8 text; nothing was changed",
                self.path.display()
            )]
        })?;
        let loaded = config::parse(&text, &self.path)
            .map_err(|e| e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
        for w in &loaded.warnings {
            log::warn!("{w}");
        }
        let config = loaded.config;
        let prepared = crate::prepare::prepare(&config, Some(&self.shared.load()))?;
        for w in &prepared.warnings {
            log::warn!("{w}");
        }
        let next = Snapshot::publish(&self.shared, prepared.snapshot);
        if let (Some(watcher), Some(tls)) = (&self.certs, &config.tls) {
            if state.tls.as_ref() != Some(tls) {
                watcher.set_source(tls.certs.clone());
            }
        }
        state.tls = config.tls;
        state.status.generation = next.generation;
        state.status.loaded_at = next.loaded_at;
        state.status.last_error = None;
        state.status.last_error_at = None;
        Ok(next.generation)
    }
}

/// Hash of a config file's bytes.
pub(crate) fn content_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}
