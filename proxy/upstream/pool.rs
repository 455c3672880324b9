//! A pool of replicas of one model, one config generation of one upstream: its
//! balancer (backends and selection), settings, retry budget and passive ejection.
//!
//! A pool is immutable once built. A reload builds the next generation with
//! [`Pool::build_next`]: settings, selector and peers are new (so changed caps,
//! balance, timeouts, retries and health apply at once), while the upstream's
//! [`ReplicaStore`] gives each kept address (same upstream, same address) the same
//! [`super::Replica`] and the same wait queue. [`Pool::publish`] (called once the
//! generation is live) commits the address list to the store and points the queue
//! at the new balancer, so requests queued before the reload are served by the new
//! backends and caps, and a removed backend only finishes what it already runs.
//!
//! A request that started before the swap stays on its generation's pool, retries
//! included (it may retry on a backend the new generation removed; it never lands
//! on one that is down). Its tried set holds that generation's indices; if a queued
//! request is handed a slot by the newer balancer, the index it records is the
//! newer one's, so at worst one of its retries skips or repeats one backend.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use super::affinity::{Affinity, PrefixIndex};
use super::backend::Backend;
use super::balancer::{Balancer, Cap, Pick};
use super::budget::Budget;
use super::peer::{peer_for, UpstreamTlsFiles};
use super::queue::{Admission, Asking};
use super::replica::BackendState;
use super::sched::{Discipline, Ticket};
use super::select::{Selector, Tried};
use super::store::ReplicaStore;
use crate::config::{
    BackendAddr, BackendSource, Balance, Discovery, Eject, HealthCheck, LoadReports, Protocol,
    Queue, RequestKey, Upstream, Wake,
};

/// Per-pool request settings, copied out of the config once.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub retries: u32,
    pub retry_non_idempotent: bool,
    /// Each backend's in-flight cap (`max_inflight`, fixed or learned).
    pub cap: Cap,
    pub queue: Queue,
    pub hash_key: Option<RequestKey>,
    pub eject: Option<Eject>,
    pub slow_start: Duration,
    pub health: Option<HealthCheck>,
    pub protocol: Protocol,
    /// Ask replicas for ORCA load reports on each request.
    pub orca: bool,
    /// `[upstream.NAME.load]`, for the pollers of the replicas' pages.
    pub load: Option<LoadReports>,
    /// The names this upstream's backends are looked up by, if any.
    pub discovery: Option<Discovery>,
    /// How long a request waits for a first ready replica (`hold`).
    pub hold: Option<Duration>,
    /// Called once per cold period (`wake`).
    pub wake: Option<Wake>,
    /// `balance = "cache_affinity"`: the key, threshold and the upstream's prefix index.
    pub(crate) affinity: Option<Affinity>,
}

/// How long a load report counts: three intervals of `load` (zero without reports).
fn report_ttl(load: Option<&LoadReports>) -> Duration {
    load.filter(|l| l.orca || l.metrics.is_some())
        .map_or(Duration::ZERO, |l| l.every * 3)
}

/// One generation of one upstream.
#[derive(Debug)]
pub struct Pool {
    name: Arc<str>,
    balancer: Arc<Balancer>,
    /// The wait queue's order (`priority`, `fair_share`).
    discipline: Arc<Discipline>,
    settings: PoolSettings,
    /// Shared with the other generations of this upstream.
    store: Arc<ReplicaStore>,
    budget: Budget,
    /// What the names of `settings.discovery` resolved to when this pool was built.
    resolved: Box<[BackendAddr]>,
}

impl Pool {
    /// Builds a pool from a validated upstream. Fails only when a file the upstream
    /// names cannot be read (its `tls` CA, client certificate or key), with a
    /// message for the operator that names the file.
    pub fn build(up: &Upstream) -> Result<Arc<Pool>, String> {
        Pool::build_next(up, None)
    }

    /// Builds the next generation of upstream `up` after `prev` (same name): kept
    /// backends share their replica with `prev`'s, the store and queue are shared.
    /// Nothing live changes until [`Pool::publish`], so a build that is thrown
    /// away changes nothing.
    ///
    /// Names in the backends start from what `prev` last resolved (or, when `prev`
    /// looked nothing up, from `prev`'s backends) until the first lookup under the
    /// new settings answers and replaces them: a reload that changes the names, the
    /// resolver or `every` never leaves the upstream with fewer backends while the
    /// new lookups are pending, or failing.
    pub fn build_next(up: &Upstream, prev: Option<&Pool>) -> Result<Arc<Pool>, String> {
        let resolved = match (&up.backends, prev) {
            (BackendSource::Dns(_), Some(p)) if p.settings.discovery.is_some() => {
                p.resolved.to_vec()
            }
            (BackendSource::Dns(_), Some(p)) => p
                .backends()
                .iter()
                .map(|b| BackendAddr {
                    addr: b.addr(),
                    weight: b.weight(),
                })
                .collect(),
            _ => Vec::new(),
        };
        Pool::build_resolved(up, prev, resolved)
    }

    /// The next generation of this pool (built from `up`, its upstream) whose names now
    /// resolve to `resolved`: kept addresses keep their vitals, new ones start as a
    /// new backend does, removed ones only finish what they run. Fails as
    /// [`Pool::build_next`] does.
    pub fn rediscovered(
        &self,
        up: &Upstream,
        resolved: Vec<BackendAddr>,
    ) -> Result<Arc<Pool>, String> {
        Pool::build_resolved(up, Some(self), resolved)
    }

    /// What the upstream's names resolved to for this pool (empty without names).
    pub fn resolved(&self) -> &[BackendAddr] {
        &self.resolved
    }

    fn build_resolved(
        up: &Upstream,
        prev: Option<&Pool>,
        resolved: Vec<BackendAddr>,
    ) -> Result<Arc<Pool>, String> {
        let addrs = match &up.backends {
            BackendSource::Static(list) => list.clone(),
            BackendSource::Dns(d) => {
                let mut all = d.fixed.clone();
                for r in &resolved {
                    if !all.iter().any(|b| b.addr == r.addr) {
                        all.push(*r);
                    }
                }
                all
            }
        };
        let tls = match up.protocol {
            Protocol::Https => Some(UpstreamTlsFiles::load(up)?),
            _ => None,
        };
        // With active health checks a backend starts unknown and earns its traffic.
        let initial = if up.health.is_some() {
            BackendState::Unknown
        } else {
            BackendState::Up
        };
        let store = prev.map_or_else(ReplicaStore::new, |p| Arc::clone(&p.store));
        let just_addrs: Vec<_> = addrs.iter().map(|b| b.addr).collect();
        let replicas = store.resolve(&just_addrs, initial);
        let backends: Box<[Arc<Backend>]> = addrs
            .iter()
            .zip(replicas)
            .enumerate()
            .map(|(i, (b, replica))| {
                Arc::new(Backend::new(
                    replica,
                    b.weight,
                    i,
                    peer_for(b.addr, up, tls.as_ref()),
                ))
            })
            .collect();
        let report_ttl = report_ttl(up.load.as_ref());
        let selector = match (up.balance, &up.affinity) {
            (Balance::RoundRobin, _) => Selector::round_robin(&backends),
            (Balance::ConsistentHash, _) => Selector::consistent_hash(&backends),
            (Balance::CacheAffinity, Some(a)) => Selector::cache_affinity(report_ttl, a.guard),
            _ => Selector::least_outstanding(report_ttl),
        };
        let affinity = up.affinity.as_ref().map(|a| Affinity {
            key: a.key.clone(),
            threshold: a.threshold,
            // What the upstream's replicas hold outlives a reload; a new bound starts over.
            index: prev
                .and_then(|p| p.settings.affinity.as_ref())
                .filter(|pa| pa.index.capacity() == a.blocks)
                .map_or_else(
                    || {
                        Arc::new(PrefixIndex::new(
                            a.blocks.try_into().unwrap_or(NonZeroUsize::MIN),
                        ))
                    },
                    |pa| Arc::clone(&pa.index),
                ),
        });
        let balancer = Arc::new(Balancer::new(
            backends,
            selector,
            Cap::from_config(up.max_inflight, up.max_inflight_auto),
            up.slow_start,
            up.queue,
        ));
        let discipline = Arc::new(Discipline::from_config(up));
        if prev.is_none() {
            // A new upstream's store and queue serve this generation from the start
            // (nothing else uses them yet); a kept upstream's move over on publish.
            let replicas: Vec<_> = balancer
                .backends()
                .iter()
                .map(|b| Arc::clone(b.replica()))
                .collect();
            store.keep_only(&replicas);
            store
                .queue()
                .publish(Arc::clone(&balancer), Arc::clone(&discipline));
        }
        Ok(Arc::new(Pool {
            name: up.name.as_str().into(),
            balancer,
            discipline,
            settings: PoolSettings {
                retries: up.retries,
                retry_non_idempotent: up.retry_non_idempotent,
                cap: Cap::from_config(up.max_inflight, up.max_inflight_auto),
                queue: up.queue,
                hash_key: (up.balance == Balance::ConsistentHash).then(|| up.hash_key.clone()),
                eject: up.eject,
                slow_start: up.slow_start,
                health: up.health.clone(),
                protocol: up.protocol,
                orca: up.load.as_ref().is_some_and(|l| l.orca),
                load: up.load.clone(),
                discovery: match &up.backends {
                    BackendSource::Dns(d) => Some(d.clone()),
                    BackendSource::Static(_) => None,
                },
                hold: up.hold,
                wake: up.wake.clone(),
                affinity,
            },
            store,
            budget: Budget::new(&up.retry_budget),
            resolved: resolved.into_boxed_slice(),
        }))
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        self.balancer.backends()
    }

    /// How long a replica's load report counts (three polling intervals); zero
    /// when the upstream takes no reports.
    pub(crate) fn report_ttl(&self) -> Duration {
        report_ttl(self.settings.load.as_ref())
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// The upstream's replicas and wait queue, shared by every generation.
    pub fn store(&self) -> &Arc<ReplicaStore> {
        &self.store
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        self.store.queue().len()
    }

    /// Commits this generation once it is live: the store keeps exactly its
    /// addresses, the wait queue dispatches through its balancer (and gets any slot
    /// its new caps or backends free up).
    pub fn publish(&self) {
        let replicas: Vec<_> = self
            .backends()
            .iter()
            .map(|b| Arc::clone(b.replica()))
            .collect();
        self.store.keep_only(&replicas);
        if self.settings.health.is_none() {
            // Active checks were switched off: nothing would probe a down or unknown
            // backend back in. Without checks a backend is up unless ejected.
            for b in self.backends() {
                if b.state() == BackendState::Up {
                    continue;
                }
                if b.is_ejected() {
                    self.return_after_ejection(b, b.ejected_for());
                } else {
                    b.set_state(BackendState::Up, self.settings.slow_start);
                }
            }
        }
        let queue = self.store.queue();
        if self.backends().iter().any(|b| b.is_available()) {
            // However the replica got ready (a check, a lookup, a reload, checks
            // switched off), the cold period is over: the next one wakes anew.
            queue.end_cold();
        }
        queue.publish(Arc::clone(&self.balancer), Arc::clone(&self.discipline));
    }

    /// Per priority class of this generation, highest first: its name, requests
    /// waiting and in flight (empty without `priority`). For the scrape.
    pub(crate) fn class_counts(&self) -> Vec<(&str, u32, u32)> {
        if !self.discipline.has_classes() {
            return Vec::new();
        }
        let counts = self.store.queue().class_counts();
        self.discipline
            .class_names()
            .zip(counts)
            .map(|(name, (waiting, inflight))| (name, waiting, inflight))
            .collect()
    }

    /// The wait queue's order of this generation (`priority`, `fair_share`).
    pub(crate) fn discipline(&self) -> &Discipline {
        &self.discipline
    }

    /// Brings an ejected backend back when its ejection ends (pools without checks).
    fn return_after_ejection(&self, backend: &Arc<Backend>, dur: Duration) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = Arc::clone(backend);
        let queue = Arc::clone(self.store.queue());
        let slow_start = self.settings.slow_start;
        let name = Arc::clone(&self.name);
        rt.spawn(async move {
            tokio::time::sleep(dur).await;
            if me.state() == BackendState::Down {
                log::info!("upstream {name}: {} back after ejection", me.label());
                me.set_state(BackendState::Up, slow_start);
                queue.end_cold();
                queue.dispatch();
            }
        });
    }

    /// Picks a backend not in `tried` and takes an in-flight slot on it, without waiting.
    /// `hash` is the request's key hash for consistent hashing (ignored otherwise).
    pub fn pick(&self, tried: &Tried, hash: u64) -> Pick {
        self.balancer.pick(self.store.queue(), tried, hash)
    }

    /// Takes a slot, waiting in the upstream's queue (up to its size and timeout,
    /// or those of the ticket's class) when every backend is at `max_inflight`;
    /// waiters are served in the order of [`Pool::discipline`]. `client_gone`
    /// resolves if the client disconnects; the waiter then leaves the queue
    /// without a slot.
    pub async fn admit<F>(
        &self,
        tried: &Tried,
        ticket: Ticket,
        hash: u64,
        client_gone: F,
    ) -> Admission
    where
        F: Future<Output = ()>,
    {
        self.store
            .queue()
            .admit(
                &self.balancer,
                &self.discipline,
                Asking {
                    tried,
                    ticket,
                    hash,
                },
                client_gone,
            )
            .await
    }

    /// Waits in the upstream's queue, up to `hold` (and the queue's size), for a
    /// replica to become ready when none is; [`Admission::HoldExpired`] when none
    /// does in time, [`Admission::NoneHealthy`] when the queue is full.
    pub async fn hold<F>(
        &self,
        hold: Duration,
        tried: &Tried,
        ticket: Ticket,
        hash: u64,
        client_gone: F,
    ) -> Admission
    where
        F: Future<Output = ()>,
    {
        self.store
            .queue()
            .hold(
                &self.balancer,
                &self.discipline,
                hold,
                Asking {
                    tried,
                    ticket,
                    hash,
                },
                client_gone,
            )
            .await
    }

    /// Is there a backend this request has not tried that could take it?
    pub fn has_untried(&self, tried: &Tried) -> bool {
        self.balancer.has_untried(tried)
    }

    /// Counts a new request against the retry budget's window.
    #[inline]
    pub fn record_request(&self) {
        self.budget.record_request();
    }

    /// May this request try another backend? Checks `retries`, a live untried
    /// backend, and takes one retry from the budget.
    pub fn may_retry(&self, tried: &Tried) -> bool {
        tried.len() <= self.settings.retries as usize
            && self.has_untried(tried)
            && self.budget.try_retry()
    }

    /// Passive health: a connect failure or 5xx from `backend`. Ejects it after
    /// `eject.consecutive` in a row, unless it is the pool's last available backend.
    pub fn record_failure(&self, backend: &Arc<Backend>) {
        let Some(eject) = self.settings.eject else {
            return;
        };
        if backend.record_failure() < eject.consecutive || !backend.is_available() {
            return;
        }
        let others_up = self
            .backends()
            .iter()
            .any(|b| !b.same_replica(backend) && b.is_available());
        if !others_up {
            log::warn!(
                "upstream {}: not ejecting {} after {} failures: it is the last available backend",
                self.name,
                backend.label(),
                eject.consecutive
            );
            return;
        }
        let dur = backend.eject(eject.duration);
        log::warn!(
            "upstream {}: ejected {} for {:?} after {} failures in a row",
            self.name,
            backend.label(),
            dur,
            eject.consecutive
        );
        if self.settings.health.is_none() {
            // Nothing else will bring it back: return it when the time is up.
            self.return_after_ejection(backend, dur);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendAddr;

    fn upstream(slow_start: Duration) -> Upstream {
        let backends = ["127.0.0.1:1", "127.0.0.1:2"]
            .iter()
            .map(|a| BackendAddr {
                addr: a.parse().unwrap_or_else(|e| panic!("{e}")),
                weight: 1,
            })
            .collect();
        Upstream {
            balance: Balance::RoundRobin,
            queue: Queue {
                size: 0,
                timeout: Duration::from_secs(1),
            },
            slow_start,
            ..Upstream::with_defaults("t", BackendSource::Static(backends))
        }
    }

    fn share_of_first(pool: &Pool, picks: usize) -> f64 {
        let mut first = 0;
        for _ in 0..picks {
            if let Pick::Leased(l) = pool.pick(&Tried::default(), 0) {
                first += usize::from(l.backend().index() == 0);
            }
        }
        first as f64 / picks as f64
    }

    #[test]
    fn a_rejoining_backend_ramps_up_during_slow_start() {
        // Slow start admits a ramping backend by a random draw.
        fastrand::seed(1);
        let pool =
            Pool::build(&upstream(Duration::from_secs(60))).unwrap_or_else(|e| panic!("{e}"));
        let b = &pool.backends()[0];
        assert!((0.4..0.6).contains(&share_of_first(&pool, 2000)));
        b.set_state(BackendState::Down, pool.settings().slow_start);
        b.set_state(BackendState::Up, pool.settings().slow_start);
        let ramping = share_of_first(&pool, 2000);
        assert!(
            ramping < 0.25,
            "a just-rejoined backend got {ramping} of new requests"
        );
    }

    fn with_backends(mut up: Upstream, addrs: &[&str]) -> Upstream {
        up.backends = BackendSource::Static(
            addrs
                .iter()
                .map(|a| BackendAddr {
                    addr: a.parse().unwrap_or_else(|e| panic!("{e}")),
                    weight: 1,
                })
                .collect(),
        );
        up
    }

    #[test]
    fn the_next_generation_keeps_the_state_of_kept_backends_only() {
        let first = upstream(Duration::ZERO);
        let pool = Pool::build(&first).unwrap_or_else(|e| panic!("{e}"));
        pool.publish();
        let lease = match pool.pick(&Tried::default(), 0) {
            Pick::Leased(l) => l,
            other => panic!("{other:?}"),
        };
        let busy = lease.backend().addr();
        let other = pool
            .backends()
            .iter()
            .find(|b| b.addr() != busy)
            .map(Arc::clone)
            .unwrap_or_else(|| panic!("two backends"));
        other.set_state(BackendState::Down, Duration::ZERO);

        // Next generation: the busy one kept (moved to the end), the down one kept,
        // a new one added; round robin -> least outstanding, cap 0 -> 1.
        let mut next_up = with_backends(
            first.clone(),
            &["127.0.0.1:3", other.label(), &busy.to_string()],
        );
        next_up.balance = Balance::LeastOutstanding;
        next_up.max_inflight = 1;
        let next = Pool::build_next(&next_up, Some(&pool)).unwrap_or_else(|e| panic!("{e}"));
        let by_addr = |a: std::net::SocketAddr| {
            next.backends()
                .iter()
                .find(|b| b.addr() == a)
                .map(Arc::clone)
                .unwrap_or_else(|| panic!("{a} missing"))
        };
        let kept_busy = by_addr(busy);
        assert_eq!(kept_busy.inflight(), 1, "in-flight count carried over");
        assert!(kept_busy.same_replica(lease.backend()));
        assert_eq!(by_addr(other.addr()).state(), BackendState::Down);
        assert_eq!(next.settings().cap, Cap::Fixed(1));
        // The kept busy backend is at the new cap; the new one takes the next request.
        match next.pick(&Tried::default(), 0) {
            Pick::Leased(l) => assert_eq!(l.backend().label(), "127.0.0.1:3"),
            other => panic!("{other:?}"),
        }
        drop(lease);
        assert_eq!(
            kept_busy.inflight(),
            0,
            "the old lease frees the shared slot"
        );
    }

    #[test]
    fn a_much_slower_free_backend_loses_to_a_short_wait_for_a_fast_one() {
        let mut up = upstream(Duration::ZERO);
        up.balance = Balance::LeastOutstanding;
        up.max_inflight = 1;
        up.queue.size = 10;
        let pool = Pool::build(&up).unwrap_or_else(|e| panic!("{e}"));
        let (fast, slow) = (&pool.backends()[0], &pool.backends()[1]);
        for _ in 0..8 {
            fast.record_latency(Duration::from_millis(50));
            slow.record_latency(Duration::from_millis(400));
        }
        let _busy = fast
            .try_acquire(1, pool.store().queue(), None)
            .unwrap_or_else(|| panic!("the fast backend is free"));
        // The fast one is full: ~50 ms of waiting + 50 ms of work is well under 400 ms.
        assert!(matches!(pool.pick(&Tried::default(), 0), Pick::Wait(_)));
        // Without a queue there is nothing to wait in: the slow one takes it.
        let mut no_queue = up.clone();
        no_queue.queue.size = 0;
        let pool = Pool::build(&no_queue).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..8 {
            pool.backends()[0].record_latency(Duration::from_millis(50));
            pool.backends()[1].record_latency(Duration::from_millis(400));
        }
        let _busy = pool.backends()[0]
            .try_acquire(1, pool.store().queue(), None)
            .unwrap_or_else(|| panic!("the fast backend is free"));
        assert!(
            matches!(pool.pick(&Tried::default(), 0), Pick::Leased(l) if l.backend().index() == 1)
        );
    }

    #[test]
    fn without_slow_start_a_rejoining_backend_takes_its_full_share() {
        fastrand::seed(2);
        let pool = Pool::build(&upstream(Duration::ZERO)).unwrap_or_else(|e| panic!("{e}"));
        let b = &pool.backends()[0];
        b.set_state(BackendState::Down, Duration::ZERO);
        b.set_state(BackendState::Up, Duration::ZERO);
        assert!((0.4..0.6).contains(&share_of_first(&pool, 2000)));
    }
}
