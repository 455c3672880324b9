//! Certificate rotation without restart: polls the certificate files about once a
//! second and swaps changed or added pairs into the resolver for new handshakes.
//!
//! A pair is re-read when its files' size, mtime or inode change (and every
//! [`FULL_READ_EVERY`] polls regardless, for rewrites that keep all three), and is
//! replaced only when its bytes' digest changed and the new pair passes every check.
//! A broken new pair keeps the previous good certificate for that name, is logged
//! once per distinct content, and counted in [`TlsStats::rejected`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::cert;
use super::resolver::SniResolver;
use super::source::{self, CertSet, PairPaths, Slot};
use super::TlsStats;
use crate::config::CertSource;

/// How often the files are looked at.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Every this many polls, files are read and hashed even if their metadata did not change.
const FULL_READ_EVERY: u32 = 10;

/// Metadata that changes when a file is rewritten or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    ino: u64,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        ino: m.ino(),
    })
}

#[derive(Debug)]
struct Watched {
    slot: Slot,
    stamps: (Option<Stamp>, Option<Stamp>),
}

#[derive(Debug, Default)]
struct State {
    watched: Vec<Watched>,
    /// Digest of the last rejected content per pair name, so it is logged and counted once.
    rejected: HashMap<String, u64>,
    /// The last problem with the source itself (directory unreadable...), logged once.
    source_error: Option<String>,
    polls: u32,
}

/// The background service that keeps the resolver's certificates current.
pub(crate) struct CertWatcher {
    source: Mutex<CertSource>,
    resolver: Arc<SniResolver>,
    stats: Arc<TlsStats>,
    state: Mutex<State>,
}

impl CertWatcher {
    /// Watches the pairs of `set` (already loaded from `source` and served by `resolver`).
    pub(crate) fn new(
        source: CertSource,
        set: CertSet,
        resolver: Arc<SniResolver>,
        stats: Arc<TlsStats>,
    ) -> CertWatcher {
        let watched = set
            .slots
            .into_iter()
            .map(|slot| Watched {
                stamps: (stamp(&slot.pair.cert), stamp(&slot.pair.key)),
                slot,
            })
            .collect();
        CertWatcher {
            source: Mutex::new(source),
            resolver,
            stats,
            state: Mutex::new(State {
                watched,
                ..State::default()
            }),
        }
    }

    /// Switches to another certificate source (a config reload changed `[tls].certs`);
    /// the next poll loads it, pair by pair, with the same keep-the-good-one rule.
    pub(crate) fn set_source(&self, source: CertSource) {
        if let Ok(mut s) = self.source.lock() {
            *s = source;
        }
        if let Ok(mut st) = self.state.lock() {
            st.polls = 0; // force a full read
        }
    }

    /// Looks at every file once and swaps in what changed. Returns whether the
    /// served set changed.
    pub(crate) fn poll(&self, now: SystemTime) -> bool {
        let source = match self.source.lock() {
            Ok(s) => s.clone(),
            Err(_) => return false,
        };
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let full = state.polls % FULL_READ_EVERY == 0;
        state.polls = state.polls.wrapping_add(1);

        let pairs = match source::pairs(&source) {
            // A .crt without its .key is usually a copy in progress: wait for it.
            Ok((pairs, _orphans)) => pairs,
            Err(e) => {
                if state.source_error.as_ref() != Some(&e) {
                    log::warn!("tls: {e}; still serving the certificates loaded before");
                    state.source_error = Some(e);
                }
                return false;
            }
        };

        let mut changed = false;
        let mut next: Vec<Watched> = Vec::with_capacity(pairs.len());
        let mut previous: HashMap<String, Watched> = state
            .watched
            .drain(..)
            .map(|w| (w.slot.pair.name.clone(), w))
            .collect();
        for pair in pairs {
            let old = previous.remove(&pair.name);
            if let (Some(w), c) = self.refresh(&mut state.rejected, pair, old, full, now) {
                changed |= c;
                next.push(w);
            }
        }
        if next.is_empty() {
            // Every pair is gone or broken: keep serving what we had rather than nothing.
            let e = format!(
                "no usable certificate pair left in {}; still serving the previous ones",
                describe(&source)
            );
            if state.source_error.as_ref() != Some(&e) {
                log::warn!("tls: {e}");
                state.source_error = Some(e);
            }
            state.watched = previous.into_values().collect();
            state
                .watched
                .sort_by(|a, b| a.slot.pair.name.cmp(&b.slot.pair.name));
            return false;
        }
        state.source_error = None;
        for gone in previous.keys() {
            log::info!("tls: certificate pair {gone} was removed; no longer served");
            changed = true;
        }
        if changed {
            let set = CertSet {
                slots: next.iter().map(|w| w.slot.clone()).collect(),
            };
            if let Some(store) = set.store() {
                self.resolver.replace(store);
                self.stats.reloaded.fetch_add(1, Ordering::Relaxed);
            }
        }
        state.watched = next;
        changed
    }

    /// The pair's new state (`None`: nothing to serve for it) and whether what it
    /// serves changed.
    fn refresh(
        &self,
        rejected: &mut HashMap<String, u64>,
        pair: PairPaths,
        old: Option<Watched>,
        full: bool,
        now: SystemTime,
    ) -> (Option<Watched>, bool) {
        let stamps = (stamp(&pair.cert), stamp(&pair.key));
        let old = match old {
            Some(w) if !full && w.stamps == stamps && w.slot.pair == pair => {
                return (Some(w), false)
            }
            other => other,
        };
        let keep = |old: Option<Watched>| {
            old.map(|w| Watched {
                stamps,
                slot: w.slot,
            })
        };
        let bytes = cert::read(&pair.cert).and_then(|c| Ok((c, cert::read(&pair.key)?)));
        let (digest, parsed) = match bytes {
            Ok((c, k)) => {
                let digest = cert::digest(&c, &k);
                if old.as_ref().is_some_and(|w| w.slot.digest == digest) {
                    return (keep(old), false);
                }
                if rejected.get(&pair.name) == Some(&digest) {
                    return (keep(old), false);
                }
                (digest, cert::parse(&pair.cert, &c, &pair.key, &k, now))
            }
            Err(e) => {
                let digest = xxhash_rust::xxh3::xxh3_64(e.as_bytes());
                if rejected.get(&pair.name) == Some(&digest) {
                    return (keep(old), false);
                }
                (digest, Err(e))
            }
        };
        match parsed {
            Ok(loaded) => {
                log::info!(
                    "tls: serving {} certificate {} for {}",
                    if old.is_some() { "new" } else { "added" },
                    pair.cert.display(),
                    loaded.names.join(", ")
                );
                if let Some(w) = &loaded.warning {
                    log::warn!("tls: {w}");
                }
                rejected.remove(&pair.name);
                let slot = Slot {
                    pair,
                    cert: loaded,
                    digest,
                };
                (Some(Watched { slot, stamps }), true)
            }
            Err(e) => {
                let keeping = if old.is_some() {
                    format!("still serving the previous certificate for {}", pair.name)
                } else {
                    format!("{} is not served until it is fixed", pair.name)
                };
                log::warn!("tls: rejected a changed certificate: {e}; {keeping}");
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                rejected.insert(pair.name, digest);
                (keep(old), false)
            }
        }
    }
}

fn describe(source: &CertSource) -> String {
    match source {
        CertSource::Dir(d) => d.display().to_string(),
        CertSource::List(l) => format!("the {} listed pairs", l.len()),
    }
}

#[async_trait]
impl BackgroundService for CertWatcher {
    /// Polls until shutdown. Does nothing else; a failed poll changes nothing served.
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; the set was just loaded
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => { self.poll(SystemTime::now()); }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn write_pair(dir: &Path, name: &str, host: &str) -> Vec<u8> {
        let params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    fn served(resolver: &SniResolver, sni: &str) -> Vec<u8> {
        resolver.current().pick(Some(sni)).cert[0].to_vec()
    }

    /// Polls until the served set changes; at most one full-read cycle.
    fn poll_until_changed(w: &CertWatcher) -> bool {
        (0..=FULL_READ_EVERY).any(|_| w.poll(SystemTime::now()))
    }

    fn watcher(dir: &Path) -> (CertWatcher, Arc<SniResolver>, Arc<TlsStats>) {
        let source = CertSource::Dir(dir.to_path_buf());
        let (set, _) = CertSet::load(&source, SystemTime::now()).unwrap();
        let resolver = Arc::new(SniResolver::new(set.store().unwrap()));
        let stats = Arc::new(TlsStats::default());
        let w = CertWatcher::new(source, set, Arc::clone(&resolver), Arc::clone(&stats));
        (w, resolver, stats)
    }

    #[test]
    fn changed_added_and_removed_pairs_are_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = write_pair(dir.path(), "api", "api.test");
        let (w, resolver, stats) = watcher(dir.path());
        assert!(!w.poll(SystemTime::now()), "nothing changed yet");
        assert_eq!(served(&resolver, "api.test"), v1);

        let v2 = write_pair(dir.path(), "api", "api.test");
        assert!(poll_until_changed(&w));
        assert_eq!(served(&resolver, "api.test"), v2);

        let b = write_pair(dir.path(), "b", "b.test");
        assert!(poll_until_changed(&w));
        assert_eq!(served(&resolver, "b.test"), b);

        std::fs::remove_file(dir.path().join("b.crt")).unwrap();
        std::fs::remove_file(dir.path().join("b.key")).unwrap();
        assert!(poll_until_changed(&w));
        assert_eq!(served(&resolver, "b.test"), v2, "the default again");
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 0);
        assert_eq!(stats.reloaded.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_broken_pair_keeps_the_previous_certificate_and_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = write_pair(dir.path(), "api", "api.test");
        let (w, resolver, stats) = watcher(dir.path());
        std::fs::write(dir.path().join("api.key"), "not a key").unwrap();
        for _ in 0..=2 * FULL_READ_EVERY {
            assert!(!w.poll(SystemTime::now()));
        }
        assert_eq!(served(&resolver, "api.test"), v1);
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 1);

        // Removing every pair keeps the last good ones too.
        std::fs::remove_file(dir.path().join("api.crt")).unwrap();
        std::fs::remove_file(dir.path().join("api.key")).unwrap();
        assert!(!w.poll(SystemTime::now()));
        assert_eq!(served(&resolver, "api.test"), v1);
    }
}
