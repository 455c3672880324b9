//! Hot reload: read -> validate -> build -> swap, all or nothing, triggered by a
//! change of the config file, `SIGHUP` or `POST /reload` on the admin listener.
//!
//! A reload reads the file, validates it exactly as `modelgate check` does (every
//! error with file:line:col), refuses changes that only a restart can apply (the
//! `[listen]` and `[log]` sections, turning TLS on or off), builds the next
//! [`Snapshot`] from the live one (kept backends keep their health state, in-flight
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

use crate::config::{self, Config, Listen, Log, Tls};
use crate::metrics::Metrics;
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::tls::CertWatcher;
use crate::upstream::Backend;

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

/// Settings only a restart (or a graceful upgrade) can change.
#[derive(Debug, Clone, PartialEq)]
struct Fixed {
    listen: Listen,
    log: Log,
    tls: bool,
}

impl Fixed {
    fn of(config: &Config) -> Fixed {
        Fixed {
            listen: config.listen.clone(),
            log: config.log.clone(),
            tls: config.tls.is_some(),
        }
    }

    /// One message per setting that differs, naming the key.
    fn changes(&self, next: &Fixed, file: &Path) -> Vec<String> {
        let (a, b) = (&self.listen, &next.listen);
        let mut changed: Vec<(&str, String, String)> = Vec::new();
        let mut diff = |key: &'static str, x: String, y: String| {
            if x != y {
                changed.push((key, x, y));
            }
        };
        let addr = |a: Option<std::net::SocketAddr>| a.map_or("none".into(), |a| a.to_string());
        diff("listen.http", addr(a.http), addr(b.http));
        diff("listen.https", addr(a.https), addr(b.https));
        diff("listen.admin", addr(a.admin), addr(b.admin));
        diff(
            "listen.admin_token_file",
            format!("{:?}", a.admin_token_file),
            format!("{:?}", b.admin_token_file),
        );
        diff(
            "listen.redirect_http_to_https",
            a.redirect_http_to_https.to_string(),
            b.redirect_http_to_https.to_string(),
        );
        diff(
            "listen.shutdown_grace",
            format!("{:?}", a.shutdown_grace),
            format!("{:?}", b.shutdown_grace),
        );
        diff(
            "listen.workers",
            a.workers.to_string(),
            b.workers.to_string(),
        );
        diff(
            "listen (connection and header limits)",
            format!("{:?}", a.limits),
            format!("{:?}", b.limits),
        );
        diff(
            "log.access",
            format!("{:?}", self.log.access),
            format!("{:?}", next.log.access),
        );
        diff(
            "tls",
            if self.tls { "on" } else { "off" }.into(),
            if next.tls { "on" } else { "off" }.into(),
        );
        changed
            .into_iter()
            .map(|(key, from, to)| {
                format!(
                    "{}: {key}: changed from {from} to {to}; this cannot be applied by a reload: \
                     restart modelgate, or start a new one with `modelgate run --upgrade` and send \
                     SIGQUIT to this one (graceful upgrade)",
                    file.display()
                )
            })
            .collect()
    }
}

/// Reloads the config file into the live snapshot. Reloads run one at a time.
pub(crate) struct Reloader {
    path: PathBuf,
    shared: SharedSnapshot,
    fixed: Fixed,
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
    /// Backends removed by a reload that still run requests, by upstream name.
    draining: Vec<(Arc<str>, Arc<Backend>)>,
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
            fixed: Fixed::of(config),
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
                draining: Vec::new(),
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

    /// Backends removed by a reload that still finish requests (`draining` on
    /// `/upstreams`), by upstream name; those done are forgotten.
    pub(crate) fn draining(&self) -> Vec<(Arc<str>, Arc<Backend>)> {
        let mut state = self.lock();
        state.draining.retain(|(_, b)| b.inflight() > 0);
        state.draining.clone()
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
        let config = loaded.config;
        for w in &loaded.warnings {
            log::warn!("{w}");
        }
        let refused = self.fixed.changes(&Fixed::of(&config), &self.path);
        if !refused.is_empty() {
            return Err(refused);
        }
        let mut errors = Vec::new();
        if let Err(e) = crate::tls::check(&config) {
            errors.extend(e);
        }
        let live = self.shared.load_full();
        let next = Snapshot::build_next(&config, Some(&live));
        let next = match next {
            Ok(next) if errors.is_empty() => next,
            Ok(_) => return Err(errors),
            Err(e) => {
                errors.extend(e);
                return Err(errors);
            }
        };
        let next = Snapshot::publish(&self.shared, next);
        for pool in &live.pools {
            let successor = next.pool(pool.name());
            for b in pool.backends() {
                let kept =
                    successor.is_some_and(|s| s.backends().iter().any(|n| n.same_replica(b)));
                if !kept && b.inflight() > 0 {
                    state
                        .draining
                        .push((Arc::clone(pool.name()), Arc::clone(b)));
                }
            }
        }
        state.draining.retain(|(_, b)| b.inflight() > 0);
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
