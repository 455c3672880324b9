//! The config file watch: polls the content of the file (through any symlinks) and
//! reloads once a new content has stayed the same for one poll.
//!
//! Polling the content, not inotify events on the path, is what makes it robust to
//! the ways files get replaced: editors that write a temp file and rename it over
//! the original, and Kubernetes ConfigMaps, whose `..data` symlink is swapped to a
//! new directory (the watched path itself never changes). Waiting for one stable
//! poll is the debounce: a file caught half-written is not applied.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{content_hash, Reloader, Trigger};

/// How often the file is read.
pub(super) const POLL_EVERY: Duration = Duration::from_millis(200);

/// The background service that watches the config file.
pub(crate) struct ConfigWatch {
    reloader: Arc<Reloader>,
}

impl ConfigWatch {
    pub(crate) fn new(reloader: Arc<Reloader>) -> Self {
        ConfigWatch { reloader }
    }
}

#[async_trait]
impl BackgroundService for ConfigWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let path = self.reloader.path().to_path_buf();
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The content seen at the previous poll.
        let mut previous: Option<u64> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            // A missing file (mid-rename, mid-swap) is not a change: wait for it.
            let Ok(bytes) = tokio::fs::read(&path).await else {
                continue;
            };
            let now = content_hash(&bytes);
            let stable = previous == Some(now);
            previous = Some(now);
            if stable && self.reloader.seen() != Some(now) {
                let reloader = Arc::clone(&self.reloader);
                // Building a large config is CPU work: keep it off the timer thread.
                let _ =
                    tokio::task::spawn_blocking(move || reloader.reload(Trigger::FileWatch)).await;
            }
        }
    }
}
