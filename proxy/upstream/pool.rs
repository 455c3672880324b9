//! A pool of replicas of one model: the backends, how to choose among them, their
//! in-flight caps and wait queue, the retry budget, and how to reach them.
//!
//! A pool is one generation of one upstream and is immutable once built. A reload
//! builds the next generation with [`Pool::build_next`]: settings, selector and peers
//! are new (so changed caps, balance, timeouts, retries and health apply at once),
//! while each backend kept (same address) shares its [`Vitals`] with its
//! predecessor, and the FIFO wait queue itself is handed over. The queue always
//! names its newest pool (its *owner*): a slot freed in any generation dispatches
//! through the owner, so requests queued before the reload are served by the new
//! backends and caps, and a removed backend only finishes what it already runs.
//!
//! A request that started before the swap stays on its generation's pool, retries
//! included (it may retry on a backend the new generation removed; it never lands
//! on one that is down). Its tried set holds that generation's indices; if a queued
//! request is handed a slot by the newer pool, the index it records is the newer
//! pool's, so at worst one of its retries skips or repeats one backend.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{CertKey, WrappedX509};

use super::backend::{Backend, BackendState, Lease, Vitals};
use super::budget::Budget;
use super::queue::WaitQueue;
use super::select::{Selector, Tried};
use crate::config::{
    BackendAddr, BackendSource, Balance, Discovery, Eject, HealthCheck, Protocol, Queue,
    RequestKey, Upstream,
};

/// How long an idle upstream connection stays in pingora's keep-alive pool.
const UPSTREAM_KEEPALIVE: Duration = Duration::from_secs(60);
/// Pools larger than this skip the wait-or-run estimate (it scans every backend).
const WAIT_ESTIMATE_MAX_BACKENDS: usize = 64;
/// Concurrent streams per h2 / h2c connection (pingora's default is 1).
const H2_STREAMS: usize = 128;

/// Per-pool request settings, copied out of the config once.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub retries: u32,
    pub retry_non_idempotent: bool,
    pub max_inflight: u32,
    pub queue: Queue,
    pub hash_key: Option<RequestKey>,
    pub eject: Option<Eject>,
    pub slow_start: Duration,
    pub health: Option<HealthCheck>,
    pub protocol: Protocol,
    /// The names this upstream's backends are looked up by, if any.
    pub discovery: Option<Discovery>,
}

/// The backends of one upstream and the policy that picks among them.
#[derive(Debug)]
pub struct Pool {
    name: Arc<str>,
    backends: Box<[Arc<Backend>]>,
    selector: Selector,
    settings: PoolSettings,
    /// Shared with the other generations of this upstream.
    queue: Arc<WaitQueue>,
    budget: Budget,
    /// What the names of `settings.discovery` resolved to when this pool was built.
    resolved: Box<[BackendAddr]>,
}

/// The outcome of a non-waiting pick.
#[derive(Debug)]
pub enum Pick {
    /// A slot on this backend.
    Leased(Lease),
    /// Every untried backend is down.
    NoneHealthy,
    /// Healthy backends exist but all are at `max_inflight`.
    AllBusy,
}

/// The outcome of asking for a slot, waiting in the queue if needed.
#[derive(Debug)]
pub enum Admission {
    /// A slot, and how long the request waited for it.
    Leased(Lease, Duration),
    NoneHealthy,
    /// Every backend busy and the queue full (or no queue).
    Overloaded,
    QueueTimeout,
    /// The client went away while waiting.
    ClientGone,
}

impl Pool {
    /// Builds a pool from a validated upstream. Fails only for features this build
    /// cannot serve yet, with a message for the operator.
    pub fn build(up: &Upstream) -> Result<Arc<Pool>, String> {
        Pool::build_next(up, None)
    }

    /// Builds the next generation of upstream `up` after `prev` (same name): kept
    /// backends share their vitals with `prev`'s, the wait queue is shared. The
    /// queue keeps dispatching through `prev` until [`Pool::adopt_queue`] is called
    /// on the published pool, so a build that is thrown away changes nothing.
    ///
    /// Names in the backends keep what they resolved to in `prev` when `prev` looked
    /// up the same names; otherwise they have no address until discovery answers.
    pub fn build_next(up: &Upstream, prev: Option<&Pool>) -> Result<Arc<Pool>, String> {
        let resolved = match (&up.backends, prev) {
            (BackendSource::Dns(d), Some(p))
                if p.settings
                    .discovery
                    .as_ref()
                    .is_some_and(|pd| pd.names == d.names && pd.resolver == d.resolver) =>
            {
                p.resolved.to_vec()
            }
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
        let vitals: Vec<Arc<Vitals>> = addrs
            .iter()
            .map(|b| {
                let kept = prev.and_then(|p| p.backends.iter().find(|o| o.addr() == b.addr));
                match kept {
                    Some(old) => Arc::clone(old.vitals()),
                    None => Vitals::new(initial),
                }
            })
            .collect();
        let fresh = prev.is_none();
        let queue = prev.map_or_else(|| Arc::new(WaitQueue::new()), |p| Arc::clone(&p.queue));
        let queued = queue.len_handle();
        Ok(Arc::new_cyclic(|me: &Weak<Pool>| {
            if fresh {
                queue.set_owner(me.clone());
            }
            let backends: Box<[Arc<Backend>]> = addrs
                .iter()
                .zip(vitals)
                .enumerate()
                .map(|(i, (b, vitals))| {
                    Arc::new(Backend::new(
                        b.addr,
                        b.weight,
                        i,
                        vitals,
                        (me.clone(), Arc::clone(&queued)),
                        peer_for(b.addr, up, tls.as_ref()),
                    ))
                })
                .collect();
            let selector = match up.balance {
                Balance::LeastOutstanding => Selector::least_outstanding(),
                Balance::RoundRobin => Selector::round_robin(&backends),
                Balance::ConsistentHash => Selector::consistent_hash(&backends),
            };
            Pool {
                name: up.name.as_str().into(),
                backends,
                selector,
                settings: PoolSettings {
                    retries: up.retries,
                    retry_non_idempotent: up.retry_non_idempotent,
                    max_inflight: up.max_inflight,
                    queue: up.queue,
                    hash_key: (up.balance == Balance::ConsistentHash).then(|| up.hash_key.clone()),
                    eject: up.eject,
                    slow_start: up.slow_start,
                    health: up.health.clone(),
                    protocol: up.protocol,
                    discovery: match &up.backends {
                        BackendSource::Dns(d) => Some(d.clone()),
                        BackendSource::Static(_) => None,
                    },
                },
                queue,
                budget: Budget::new(&up.retry_budget),
                resolved: resolved.into_boxed_slice(),
            }
        }))
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Makes this pool the one that serves the upstream's wait queue (called once it
    /// is published), and hands it any slot its new caps or backends free up.
    pub fn adopt_queue(self: &Arc<Self>) {
        self.queue.set_owner(Arc::downgrade(self));
        if self.settings.health.is_none() {
            // Active checks were switched off: nothing would probe a down or unknown
            // backend back in. Without checks a backend is up unless ejected.
            for b in self.backends.iter() {
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
        self.dispatch();
    }

    /// Brings an ejected backend back when its ejection ends (pools without checks).
    fn return_after_ejection(&self, backend: &Arc<Backend>, dur: Duration) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = Arc::clone(backend);
        let slow_start = self.settings.slow_start;
        let name = Arc::clone(&self.name);
        rt.spawn(async move {
            tokio::time::sleep(dur).await;
            if me.state() == BackendState::Down {
                log::info!("upstream {name}: {} back after ejection", me.label());
                me.set_state(BackendState::Up, slow_start);
            }
        });
    }

    /// Picks a backend not in `tried` and takes an in-flight slot on it, without waiting.
    /// `hash` is the request's key hash for consistent hashing (ignored otherwise).
    pub fn pick(&self, tried: &Tried, hash: u64) -> Pick {
        self.pick_with(tried, hash, true)
    }

    /// `pick`, optionally declining a slow free backend when waiting for a faster
    /// one is expected to be quicker (see `better_to_wait`).
    fn pick_with(&self, tried: &Tried, hash: u64, may_wait: bool) -> Pick {
        let cap = self.settings.max_inflight;
        let slow_start = self.settings.slow_start;
        // A slot can be taken between the check and the acquire; try again a few times.
        for _ in 0..4 {
            match self
                .selector
                .pick(&self.backends, tried, cap, hash, slow_start)
            {
                Some(i) => {
                    if may_wait && self.better_to_wait(&self.backends[i], tried) {
                        return Pick::AllBusy;
                    }
                    if let Some(lease) = self.backends[i].try_acquire(cap) {
                        return Pick::Leased(lease);
                    }
                }
                None => break,
            }
        }
        if cap > 0 && self.has_untried(tried) {
            Pick::AllBusy
        } else {
            Pick::NoneHealthy
        }
    }

    /// With least-outstanding balancing, caps and a queue: is waiting for a slot on
    /// a faster, full backend expected to finish in under half the time of running
    /// now on `chosen`? Slots on full backends free up at `cap / latency` each; the request
    /// would wait behind everyone already queued. A 4x slower replica then only takes
    /// work when the queue in front of the fast ones grows long.
    fn better_to_wait(&self, chosen: &Backend, tried: &Tried) -> bool {
        let cap = self.settings.max_inflight;
        let chosen_us = chosen.latency_us();
        if cap == 0
            || chosen_us == 0
            || self.settings.queue.size == 0
            || self.backends.len() > WAIT_ESTIMATE_MAX_BACKENDS
            || !matches!(self.selector, Selector::LeastOutstanding)
        {
            return false;
        }
        let (mut slots_per_us, mut fastest_us) = (0.0f64, u32::MAX);
        for b in self.backends.iter() {
            let us = b.latency_us();
            if us != 0
                && us < chosen_us
                && b.inflight() >= cap
                && b.is_available()
                && !tried.contains(b.index())
            {
                slots_per_us += f64::from(cap) / f64::from(us);
                fastest_us = fastest_us.min(us);
            }
        }
        if slots_per_us == 0.0 {
            return false;
        }
        let wait_us = (self.queue.len() + 1) as f64 / slots_per_us;
        // Only a clear win: the greedy estimate ignores the requests arriving behind
        // this one, and a queue that grows while a replica idles costs everyone.
        2.0 * (wait_us + f64::from(fastest_us)) < f64::from(chosen_us)
    }

    /// Takes a slot, waiting in the pool's FIFO queue (up to its size and timeout)
    /// when every backend is at `max_inflight`. `client_gone` resolves if the client
    /// disconnects; the waiter then leaves the queue without taking a slot.
    pub async fn admit<F>(&self, tried: &Tried, hash: u64, client_gone: F) -> Admission
    where
        F: std::future::Future<Output = ()>,
    {
        // Arrivals do not jump the queue: with waiters present, join them.
        if self.queue.len() == 0 {
            match self.pick(tried, hash) {
                Pick::Leased(lease) => return Admission::Leased(lease, Duration::ZERO),
                Pick::NoneHealthy => return Admission::NoneHealthy,
                Pick::AllBusy => {}
            }
        } else if !self.has_untried(tried) {
            return Admission::NoneHealthy;
        }
        let started = Instant::now();
        let Some((id, rx)) = self.queue.push(self.settings.queue.size, tried, hash) else {
            // No room to wait: a slower free backend beats a rejection.
            return match self.pick_with(tried, hash, false) {
                Pick::Leased(lease) => Admission::Leased(lease, Duration::ZERO),
                _ => Admission::Overloaded,
            };
        };
        let mut guard = Dequeue {
            pool: self,
            id: Some(id),
        };
        // A slot may have freed between the pick and the push.
        self.dispatch();
        let outcome = tokio::select! {
            lease = rx => match lease {
                Ok(lease) => Admission::Leased(lease, started.elapsed()),
                Err(_) => Admission::NoneHealthy,
            },
            _ = tokio::time::sleep(self.settings.queue.timeout) => Admission::QueueTimeout,
            _ = client_gone => Admission::ClientGone,
        };
        if matches!(outcome, Admission::Leased(..)) {
            guard.id = None; // dispatch already removed it
        }
        outcome
    }

    /// Hands free slots to queued requests, oldest first. Called when a slot frees, a
    /// backend comes up, or a request joins the queue.
    pub(crate) fn dispatch(&self) {
        if self.queue.len() == 0 {
            return;
        }
        // The queue outlives generations: its newest pool serves it.
        match self.queue.owner().upgrade() {
            Some(owner) if !std::ptr::eq(Arc::as_ptr(&owner), self) => owner.dispatch_own(),
            _ => self.dispatch_own(),
        }
    }

    fn dispatch_own(&self) {
        // Leases are never dropped under the lock: dropping one dispatches again.
        let mut spare: Vec<Lease> = Vec::new();
        {
            let mut w = self.queue.lock();
            let mut i = 0;
            while i < w.list.len() {
                if w.list[i].tx.is_closed() {
                    w.list.remove(i);
                    continue;
                }
                let reusable = spare
                    .iter()
                    .position(|l| !w.list[i].tried.contains(l.backend().index()));
                let lease = match reusable {
                    Some(pos) => spare.swap_remove(pos),
                    None => match self.pick(&w.list[i].tried, w.list[i].hash) {
                        Pick::Leased(l) => l,
                        _ => {
                            i += 1;
                            continue;
                        }
                    },
                };
                if let Some(waiter) = w.list.remove(i) {
                    if let Err(lease) = waiter.tx.send(lease) {
                        spare.push(lease); // its client just left; offer the slot on
                    }
                }
            }
            self.queue.sync_len(&w);
        }
        // Released outside the lock: dropping a lease may dispatch again.
        drop(spare);
    }

    /// Is there a backend this request has not tried that could take it?
    pub fn has_untried(&self, tried: &Tried) -> bool {
        self.backends
            .iter()
            .any(|b| b.is_available() && !tried.contains(b.index()))
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
            .backends
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

/// Removes a waiter that leaves without a slot (timeout, client gone, cancelled).
struct Dequeue<'a> {
    pool: &'a Pool,
    id: Option<u64>,
}

impl Drop for Dequeue<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.pool.queue.remove(id);
        }
    }
}

/// What an `https` upstream verifies backends against and presents to them, read
/// and checked once per pool (pingora's own loaders panic on bad files).
struct UpstreamTlsFiles {
    ca: Option<Arc<[WrappedX509]>>,
    client: Option<Arc<CertKey>>,
    /// pingora's connection pool does not key connections by CA: this does, so a
    /// connection verified under one upstream's CA never serves another upstream.
    group_key: u64,
}

impl UpstreamTlsFiles {
    fn load(up: &Upstream) -> Result<UpstreamTlsFiles, String> {
        use crate::tls::cert;
        let name = &up.name;
        let mut group = xxhash_rust::xxh3::Xxh3::new();
        group.update(name.as_bytes());
        let ca = match &up.tls.ca {
            Some(path) => {
                let pem = cert::read(path).map_err(|e| format!("upstream.{name}.ca: {e}"))?;
                group.update(&pem);
                let certs = cert::parse_certs(path, &pem)
                    .map_err(|e| format!("upstream.{name}.ca: {e}"))?;
                Some(
                    certs
                        .into_iter()
                        .map(|c| WrappedX509::new(c.to_vec(), pingora::utils::tls::parse_x509))
                        .collect::<Vec<_>>()
                        .into(),
                )
            }
            None => None,
        };
        let client = match (&up.tls.client_cert, &up.tls.client_key) {
            (Some(c), Some(k)) => {
                let (chain, key) = cert::load_client_pair(c, k, std::time::SystemTime::now())
                    .map_err(|e| format!("upstream.{name}.client_cert: {e}"))?;
                Some(Arc::new(CertKey::new(chain, key)))
            }
            _ => None,
        };
        Ok(UpstreamTlsFiles {
            ca,
            client,
            group_key: group.digest(),
        })
    }
}

/// The pingora peer for one backend, with the upstream's timeouts and protocol.
/// An `https` backend is verified against `ca` (else the system roots) under the
/// name `sni` (else its IP address), offers h2 and http/1.1, and presents the
/// client certificate when one is configured.
fn peer_for(addr: std::net::SocketAddr, up: &Upstream, tls: Option<&UpstreamTlsFiles>) -> HttpPeer {
    let sni = match tls {
        Some(_) => up.tls.sni.clone().unwrap_or_else(|| addr.ip().to_string()),
        None => String::new(),
    };
    let mut peer = HttpPeer::new(addr, tls.is_some(), sni);
    let o = &mut peer.options;
    o.connection_timeout = Some(up.connect_timeout);
    o.total_connection_timeout = Some(up.connect_timeout);
    // pingora applies one timeout to every upstream read, headers and body alike:
    // a response must start within first_byte_timeout, and a stream may pause
    // between chunks for the longer of the two.
    o.read_timeout = Some(up.first_byte_timeout.max(up.idle_timeout));
    o.write_timeout = Some(up.idle_timeout);
    o.idle_timeout = Some(UPSTREAM_KEEPALIVE);
    o.tcp_keepalive = None;
    match up.protocol {
        Protocol::Http1 => {}
        Protocol::H2c => {
            o.alpn = ALPN::H2;
            o.max_h2_streams = H2_STREAMS;
        }
        Protocol::Https => {
            o.alpn = ALPN::H2H1;
            o.max_h2_streams = H2_STREAMS;
            o.verify_cert = true;
            o.verify_hostname = true;
        }
    }
    if let Some(files) = tls {
        peer.options.ca = files.ca.clone();
        peer.client_cert_key = files.client.clone();
        peer.group_key = files.group_key;
    }
    peer
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
        assert_eq!(next.settings().max_inflight, 1);
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
            .try_acquire(1)
            .unwrap_or_else(|| panic!("the fast backend is free"));
        // The fast one is full: ~50 ms of waiting + 50 ms of work is well under 400 ms.
        assert!(matches!(pool.pick(&Tried::default(), 0), Pick::AllBusy));
        // Without a queue there is nothing to wait in: the slow one takes it.
        let mut no_queue = up.clone();
        no_queue.queue.size = 0;
        let pool = Pool::build(&no_queue).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..8 {
            pool.backends()[0].record_latency(Duration::from_millis(50));
            pool.backends()[1].record_latency(Duration::from_millis(400));
        }
        let _busy = pool.backends()[0]
            .try_acquire(1)
            .unwrap_or_else(|| panic!("the fast backend is free"));
        assert!(
            matches!(pool.pick(&Tried::default(), 0), Pick::Leased(l) if l.backend().index() == 1)
        );
    }

    #[test]
    fn without_slow_start_a_rejoining_backend_takes_its_full_share() {
        let pool = Pool::build(&upstream(Duration::ZERO)).unwrap_or_else(|e| panic!("{e}"));
        let b = &pool.backends()[0];
        b.set_state(BackendState::Down, Duration::ZERO);
        b.set_state(BackendState::Up, Duration::ZERO);
        assert!((0.4..0.6).contains(&share_of_first(&pool, 2000)));
    }
}
