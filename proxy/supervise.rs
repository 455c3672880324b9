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
