//! Background tasks kept one per replica across config generations (health checks,
//! load polls): started when a replica appears, restarted only when the settings
//! it was started with change, stopped when the replica leaves.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::server::ShutdownWatch;

use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::upstream::{Backend, Replica};

/// How often the live generation is looked at for new, changed or removed
/// replicas. Short, because a backend added by a reload gets traffic only after
/// its first passing health check.
const SUPERVISE_EVERY: Duration = Duration::from_millis(100);

/// A task per (upstream, replica address) and the settings `S` it runs with.
pub(crate) struct ReplicaTasks<S> {
    running: HashMap<(Arc<str>, SocketAddr), Running<S>>,
    /// Kept since the last [`ReplicaTasks::sweep`].
    live: HashSet<(Arc<str>, SocketAddr)>,
}

struct Running<S> {
    replica: Arc<Replica>,
    settings: S,
    _task: AbortOnDrop,
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<S: PartialEq> Default for ReplicaTasks<S> {
    fn default() -> Self {
        ReplicaTasks {
            running: HashMap::new(),
            live: HashSet::new(),
        }
    }
}

impl<S: PartialEq> ReplicaTasks<S> {
    /// Keeps `backend` of `upstream` running with `settings`: its task goes on when
    /// one runs for the same replica object with equal settings; otherwise `start`
    /// spawns a new one (and the old one, if any, is aborted).
    pub(crate) fn keep(
        &mut self,
        upstream: &Arc<str>,
        backend: &Arc<Backend>,
        settings: S,
        start: impl FnOnce() -> tokio::task::JoinHandle<()>,
    ) {
        let key = (Arc::clone(upstream), backend.addr());
        let same = self
            .running
            .get(&key)
            .is_some_and(|r| Arc::ptr_eq(&r.replica, backend.replica()) && r.settings == settings);
        if !same {
            let task = AbortOnDrop(start().abort_handle());
            self.running.insert(
                key.clone(),
                Running {
                    replica: Arc::clone(backend.replica()),
                    settings,
                    _task: task,
                },
            );
        }
        self.live.insert(key);
    }

    /// Stops the tasks not kept since the last sweep.
    pub(crate) fn sweep(&mut self) {
        let live = std::mem::take(&mut self.live);
        self.running.retain(|key, _| live.contains(key));
    }
}

/// Calls `each` with the live generation every 100 ms, then stops the tasks it
/// did not keep, until `shutdown`.
pub(crate) async fn supervise<S: PartialEq>(
    snapshot: &SharedSnapshot,
    shutdown: &mut ShutdownWatch,
    mut each: impl FnMut(&Snapshot, &mut ReplicaTasks<S>),
) {
    let mut tasks = ReplicaTasks::default();
    loop {
        each(&snapshot.load_full(), &mut tasks);
        tasks.sweep();
        tokio::select! {
            _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    use arc_swap::ArcSwap;

    use super::*;

    fn snapshot(backends: &[u16], interval: &str, prev: Option<&Snapshot>) -> Snapshot {
        let list: Vec<String> = backends
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        let src = format!(
            "[listen]\nhttp = \"127.0.0.1:8080\"\n[[route]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\n\
             [upstream.u]\nbackends = [{}]\n[upstream.u.health]\npath = \"/health\"\ninterval = \"{interval}\"\ntimeout = \"100ms\"\n",
            list.join(", ")
        );
        let loaded = crate::config::parse(&src, std::path::Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        Snapshot::build_next(&loaded.config, prev).unwrap_or_else(|e| panic!("{e:?}"))
    }

    /// Per backend port: tasks started, and ticks of the running ones.
    #[derive(Default)]
    struct Seen {
        starts: Mutex<HashMap<u16, u32>>,
        ticks: Mutex<HashMap<u16, Arc<AtomicU32>>>,
    }

    impl Seen {
        fn starts(&self, port: u16) -> u32 {
            self.starts.lock().unwrap().get(&port).copied().unwrap_or(0)
        }
        fn ticks(&self, port: u16) -> u32 {
            self.ticks
                .lock()
                .unwrap()
                .get(&port)
                .map_or(0, |t| t.load(Ordering::SeqCst))
        }
    }

    /// The supervisor on a paused clock, with pollers that tick on their
    /// upstream's health interval as the health checkers and load pollers do:
    /// they tick on time, a reload with the same settings restarts nothing, a
    /// changed interval restarts them at the new pace, a removed replica's poller
    /// stops, and shutdown ends the supervisor.
    #[tokio::test(start_paused = true)]
    async fn pollers_keep_time_survive_unchanged_reloads_and_stop_with_their_replica() {
        let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(snapshot(&[1, 2], "1s", None)));
        let seen = Arc::new(Seen::default());
        let (stop, mut watch) = tokio::sync::watch::channel(false);
        let supervisor = {
            let (shared, seen) = (Arc::clone(&shared), Arc::clone(&seen));
            tokio::spawn(async move {
                supervise(&shared, &mut watch, |snap, tasks| {
                    for pool in &snap.pools {
                        let Some(check) = &pool.settings().health else {
                            continue;
                        };
                        let every = check.interval;
                        for backend in pool.backends() {
                            tasks.keep(pool.name(), backend, every, || {
                                let port = backend.addr().port();
                                *seen.starts.lock().unwrap().entry(port).or_default() += 1;
                                let ticks = Arc::new(AtomicU32::new(0));
                                seen.ticks.lock().unwrap().insert(port, Arc::clone(&ticks));
                                tokio::spawn(async move {
                                    let mut tick = tokio::time::interval(every);
                                    loop {
                                        tick.tick().await;
                                        ticks.fetch_add(1, Ordering::SeqCst);
                                    }
                                })
                            });
                        }
                    }
                })
                .await;
            })
        };
        // Ticks at 0, 1, 2 and 3 s.
        tokio::time::sleep(Duration::from_millis(3050)).await;
        assert_eq!((seen.ticks(1), seen.ticks(2)), (4, 4));
        // A reload with the same settings: nothing restarts, the pace holds.
        let same = snapshot(&[1, 2], "1s", Some(shared.load_full().as_ref()));
        shared.store(Arc::new(same));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!((seen.starts(1), seen.starts(2)), (1, 1));
        assert_eq!((seen.ticks(1), seen.ticks(2)), (6, 6));
        // A new interval restarts both at the new pace; a removed replica stops.
        let slower = snapshot(&[1], "2s", Some(shared.load_full().as_ref()));
        shared.store(Arc::new(slower));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!((seen.starts(1), seen.starts(2)), (2, 1));
        let before = seen.ticks(2);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(seen.ticks(1), 3, "ticks at 0, 2 and 4 s of the new pace");
        assert_eq!(
            seen.ticks(2),
            before,
            "the removed replica's poller stopped"
        );
        // Shutdown ends the supervisor and with it every poller.
        stop.send(true).unwrap_or_else(|e| panic!("{e}"));
        supervisor.await.unwrap_or_else(|e| panic!("{e}"));
        let after = seen.ticks(1);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(seen.ticks(1), after);
    }
}
