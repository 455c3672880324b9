//! Replica load reports by polling: every replica of an upstream with
//! `[upstream.X.load] metrics = "/metrics"` has its Prometheus page read every
//! `every`, and its queue, running and KV-cache gauges become the replica's load
//! report, exactly as an ORCA header does ([`crate::upstream::Replica`] keeps
//! whichever report came last).
//!
//! Pollers are keyed by replica, as health checkers are: a reload restarts only
//! the pollers of replicas that are new or whose load settings or protocol
//! changed. A poll that fails (connect error, non-200, no answer within `every`,
//! a page that does not parse or has none of the gauges) never takes a replica
//! out: its last report expires after three intervals and it is judged by what the
//! proxy sees alone. Each failure counts in
//! `modelgate_load_report_errors_total{upstream}`; a streak of them is logged once.

mod fetch;
mod page;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;

pub(crate) use page::{parse_page, PageReport};

use crate::config::MetricsPage;
use crate::metrics::Metrics;
use crate::snapshot::SharedSnapshot;
use crate::supervise::supervise;
use crate::upstream::Backend;

/// The background service that polls every replica's page.
pub(crate) struct LoadService {
    snapshot: SharedSnapshot,
    metrics: Arc<Metrics>,
}

impl LoadService {
    pub(crate) fn new(snapshot: SharedSnapshot, metrics: Arc<Metrics>) -> Self {
        LoadService { snapshot, metrics }
    }
}

#[async_trait]
impl BackgroundService for LoadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // A poller runs while the live generation has its replica with the same
        // page, interval and protocol.
        supervise(&self.snapshot, &mut shutdown, |snap, tasks| {
            for pool in &snap.pools {
                let settings = pool.settings();
                let Some((page, every)) = settings
                    .load
                    .as_ref()
                    .and_then(|l| Some((l.metrics.as_ref()?, l.every)))
                else {
                    continue;
                };
                for backend in pool.backends() {
                    let same = (page.clone(), every, settings.protocol);
                    tasks.keep(pool.name(), backend, same, || {
                        tokio::spawn(poll_backend(
                            Arc::clone(pool.name()),
                            Arc::clone(backend),
                            page.clone(),
                            every,
                            self.metrics.load_report_errors(pool.name()),
                        ))
                    });
                }
            }
        })
        .await;
    }
}

/// Polls one backend's page every `every` (each poll bounded by `every`) for as
/// long as the supervisor keeps it.
async fn poll_backend(
    upstream: Arc<str>,
    backend: Arc<Backend>,
    page: MetricsPage,
    every: Duration,
    errors: IntCounter,
) {
    let connector = pingora::connectors::http::Connector::new(None);
    let mut streak = Streak::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let polled = match tokio::time::timeout(
            every,
            fetch::fetch(&connector, &backend, &page.path, every * 3),
        )
        .await
        {
            Err(_) => Err(format!("no answer within {every:?}")),
            Ok(Err(why)) => Err(why),
            Ok(Ok(text)) => parse_page(&text, &page).map_err(|e| e.to_string()),
        };
        if let Ok(r) = &polled {
            backend.record_report(&r.report);
        } else {
            errors.inc();
        }
        let who = format_args!("upstream {upstream}: {}{}", backend.label(), page.path);
        match streak.next(&polled) {
            Some(Note::Failing(why)) => log::warn!(
                "{who}: no load report ({why}); the replica keeps serving, judged by what the proxy sees"
            ),
            Some(Note::Recovered(n)) => log::info!("{who}: load reports again after {n} failed polls"),
            Some(Note::Engine(name)) => log::info!("{who}: reading {name} load gauges"),
            None => {}
        }
    }
}

/// What is worth a log line after a poll.
#[derive(Debug, PartialEq)]
enum Note<'a> {
    /// The first failure of a streak.
    Failing(&'a str),
    /// A report after a streak of this many failures.
    Recovered(u32),
    /// A report from an engine other than the last one (or the first report).
    Engine(&'static str),
}

/// Failures in a row and the engine last seen, so each streak and each engine
/// change is logged once rather than every poll.
#[derive(Debug, Default)]
struct Streak {
    failures: u32,
    engine: Option<&'static str>,
    reported: bool,
}

impl Streak {
    fn next<'a>(&mut self, polled: &'a Result<PageReport, String>) -> Option<Note<'a>> {
        match polled {
            Err(why) => {
                self.failures += 1;
                (self.failures == 1).then_some(Note::Failing(why))
            }
            Ok(r) => {
                let failed = std::mem::take(&mut self.failures);
                let new_engine = !self.reported || r.engine != self.engine;
                self.reported = true;
                self.engine = r.engine;
                if failed > 0 {
                    Some(Note::Recovered(failed))
                } else if new_engine {
                    r.engine.map(Note::Engine)
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::LoadReport;

    fn ok(engine: Option<&'static str>) -> Result<PageReport, String> {
        Ok(PageReport {
            report: LoadReport {
                queue: Some(1.0),
                ..LoadReport::default()
            },
            engine,
        })
    }

    #[test]
    fn a_streak_of_failures_is_noted_once() {
        let mut s = Streak::default();
        let fail = Err("status 500".to_string());
        assert_eq!(s.next(&ok(Some("vLLM"))), Some(Note::Engine("vLLM")));
        assert_eq!(s.next(&ok(Some("vLLM"))), None);
        assert_eq!(s.next(&fail), Some(Note::Failing("status 500")));
        for _ in 0..20 {
            assert_eq!(s.next(&fail), None);
        }
        assert_eq!(s.next(&ok(Some("vLLM"))), Some(Note::Recovered(21)));
        assert_eq!(s.next(&ok(Some("vLLM"))), None);
        assert_eq!(s.next(&ok(Some("SGLang"))), Some(Note::Engine("SGLang")));
        assert_eq!(s.next(&fail), Some(Note::Failing("status 500")));
    }
}
