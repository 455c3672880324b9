//! One replica of a model: its address, weight, live in-flight count, health state
//! and passive-failure record.
//!
//! A `Backend` belongs to one pool of one config generation (its index, peer
//! settings and pool link are that generation's). What must survive a reload lives
//! in [`Vitals`], behind an `Arc` that the next generation's `Backend` for the same
//! upstream and address shares: in-flight count, health state, failure streak,
//! ejection and slow-start ramp. A request running on the old generation's
//! `Backend` and one on the new generation's count against the same cap.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;

use super::clock;
use super::pool::Pool;

/// Answers needed before a replica's speed counts (one long request is not a
/// trend); their lower median starts the running median.
const FIRST_SAMPLES: usize = 4;

/// Whether a backend may receive new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BackendState {
    /// Serving.
    Up = 0,
    /// Failing its health check or ejected; gets no new requests, running ones go on.
    Down = 1,
    /// Not checked yet; gets nothing until it passes once.
    Unknown = 2,
}

impl BackendState {
    pub fn name(self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Down => "down",
            BackendState::Unknown => "unknown",
        }
    }
}

/// The live state of a replica, carried from one config generation to the next
/// while the replica stays in its upstream. All atomic.
#[derive(Debug)]
pub struct Vitals {
    inflight: AtomicU32,
    /// Sum of the start times (clock µs) of the requests in flight: with the count it
    /// gives their total age without a list.
    started_sum_us: AtomicU64,
    /// Running median of the time per request, in microseconds (0: fewer than
    /// `FIRST_SAMPLES` answers so far).
    latency_us: AtomicU32,
    /// The first `FIRST_SAMPLES` samples, whose median starts the running one.
    first: [AtomicU32; FIRST_SAMPLES],
    recorded: AtomicU32,
    state: AtomicU8,
    /// Failures (connect errors, 5xx) in a row, for passive ejection.
    consecutive_failures: AtomicU32,
    /// How many times in a row this backend was ejected (the ejection time doubles).
    ejections: AtomicU32,
    /// Until when (clock ms) it stays ejected; 0 when not ejected.
    ejected_until: AtomicU64,
    /// Until when (clock ms) its share ramps up after (re)joining; 0 when not ramping.
    ramp_until: AtomicU64,
    /// When the last active health check finished (Unix ms); 0 before the first.
    last_check_unix_ms: AtomicU64,
}

impl Vitals {
    pub(crate) fn new(state: BackendState) -> Arc<Vitals> {
        Arc::new(Vitals {
            inflight: AtomicU32::new(0),
            started_sum_us: AtomicU64::new(0),
            latency_us: AtomicU32::new(0),
            first: Default::default(),
            recorded: AtomicU32::new(0),
            state: AtomicU8::new(state as u8),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ramp_until: AtomicU64::new(0),
            last_check_unix_ms: AtomicU64::new(0),
        })
    }
}

/// A replica in one generation's pool. Shared by every request that uses it.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    weight: u32,
    /// Position in its pool (for the per-request tried set).
    index: u32,
    /// `ip:port`, ready for logs and metric labels.
    label: Arc<str>,
    /// State shared with the same replica in other generations.
    vitals: Arc<Vitals>,
    /// The pool it belongs to, for handing a freed slot to a queued request.
    pool: Weak<Pool>,
    /// The pool's queue length, so releasing a slot checks for waiters with one load.
    queued: Arc<AtomicUsize>,
    /// The peer handed to pingora, cloned per attempt.
    peer: HttpPeer,
}

impl Backend {
    pub(crate) fn new(
        addr: SocketAddr,
        weight: u32,
        index: usize,
        vitals: Arc<Vitals>,
        pool: (Weak<Pool>, Arc<AtomicUsize>),
        peer: HttpPeer,
    ) -> Self {
        let (pool, queued) = pool;
        Backend {
            addr,
            weight: weight.max(1),
            index: index as u32,
            label: addr.to_string().into(),
            vitals,
            pool,
            queued,
            peer,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn weight(&self) -> u32 {
        self.weight
    }

    pub fn index(&self) -> usize {
        self.index as usize
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The label, shared (for access log lines written on another thread).
    pub fn label_shared(&self) -> &Arc<str> {
        &self.label
    }

    pub fn peer(&self) -> &HttpPeer {
        &self.peer
    }

    /// The state this replica shares with its counterparts in other generations.
    pub fn vitals(&self) -> &Arc<Vitals> {
        &self.vitals
    }

    /// Is `other` the same replica (possibly of another generation)?
    pub fn same_replica(&self, other: &Backend) -> bool {
        Arc::ptr_eq(&self.vitals, &other.vitals)
    }

    /// Requests this proxy has on the backend right now.
    pub fn inflight(&self) -> u32 {
        self.vitals.inflight.load(Ordering::Relaxed)
    }

    /// Requests in flight and their total age at clock time `now_us` (µs), read
    /// consistently without a lock: the start-time sum is read on both sides of
    /// the count, and a change in between means a slot was taken or freed
    /// meanwhile, so the read is repeated (after three misses the age is left out).
    #[inline]
    pub(crate) fn work(&self, now_us: u64) -> (u32, u64) {
        let v = &self.vitals;
        for _ in 0..3 {
            let before = v.started_sum_us.load(Ordering::Acquire);
            let n = v.inflight.load(Ordering::Acquire);
            if v.started_sum_us.load(Ordering::Acquire) == before {
                return (n, (u64::from(n) * now_us).saturating_sub(before));
            }
        }
        (self.inflight(), 0)
    }

    /// Typical time per request (a running median), in microseconds; 0 until a
    /// few answers came back.
    pub fn latency_us(&self) -> u32 {
        self.vitals.latency_us.load(Ordering::Relaxed)
    }

    /// Folds one time per request into the running median.
    ///
    /// The median starts as the lower median of the first `FIRST_SAMPLES`, then
    /// moves 1/16 of itself toward each sample, up or down whatever the sample's
    /// size (Ma, Muthukrishnan and Sandler, "Frugal Streaming for Estimating
    /// Quantiles", 2013): the one long request in ten that a mixed workload sends a
    /// replica does not make it look slow, while a replica that really slows down
    /// is seen within a few dozen answers. Lock-free; concurrent updates may lose a step.
    #[inline]
    pub fn record_latency(&self, took: Duration) {
        let v = &self.vitals;
        let sample = took.as_micros().clamp(1, u128::from(u32::MAX)) as u32;
        let n = v.recorded.load(Ordering::Relaxed) as usize;
        if n < FIRST_SAMPLES {
            let n = v.recorded.fetch_add(1, Ordering::Relaxed) as usize;
            if let Some(slot) = v.first.get(n) {
                slot.store(sample, Ordering::Relaxed);
            }
            if n + 1 == FIRST_SAMPLES {
                let mut first = [0u32; FIRST_SAMPLES];
                for (f, s) in first.iter_mut().zip(&v.first) {
                    *f = s.load(Ordering::Relaxed);
                }
                first.sort_unstable();
                v.latency_us
                    .store(first[(FIRST_SAMPLES - 1) / 2].max(1), Ordering::Relaxed);
            }
            return;
        }
        let old = v.latency_us.load(Ordering::Relaxed);
        if old == 0 {
            return; // the first samples are still being folded in
        }
        let step = (old / 16).max(1);
        let new = if sample > old {
            old.saturating_add(step.min(sample - old))
        } else {
            (old - step.min(old - sample)).max(1)
        };
        v.latency_us.store(new, Ordering::Relaxed);
    }

    pub fn state(&self) -> BackendState {
        match self.vitals.state.load(Ordering::Relaxed) {
            0 => BackendState::Up,
            1 => BackendState::Down,
            _ => BackendState::Unknown,
        }
    }

    /// Moves to `state`; returns the previous one. Joining (to Up) starts the slow-start
    /// ramp and lets queued requests at the new capacity.
    pub(crate) fn set_state(&self, state: BackendState, slow_start: Duration) -> BackendState {
        let prev = self.vitals.state.swap(state as u8, Ordering::AcqRel);
        let prev = match prev {
            0 => BackendState::Up,
            1 => BackendState::Down,
            _ => BackendState::Unknown,
        };
        if prev != state && state == BackendState::Up {
            if !slow_start.is_zero() {
                self.vitals.ramp_until.store(
                    clock::now_ms() + slow_start.as_millis() as u64,
                    Ordering::Relaxed,
                );
            }
            if let Some(pool) = self.pool.upgrade() {
                pool.dispatch();
            }
        }
        prev
    }

    /// May this backend be given a new request?
    #[inline]
    pub fn is_available(&self) -> bool {
        self.vitals.state.load(Ordering::Relaxed) == BackendState::Up as u8
    }

    /// During slow start, the share (0.1..1) of new requests this backend should get;
    /// `None` once fully in.
    #[inline]
    pub(crate) fn ramp(&self, slow_start: Duration) -> Option<f64> {
        let until = self.vitals.ramp_until.load(Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        let now = clock::now_ms();
        if now >= until {
            self.vitals.ramp_until.store(0, Ordering::Relaxed);
            return None;
        }
        let total = slow_start.as_millis().max(1) as f64;
        let elapsed = total - (until - now) as f64;
        Some((elapsed / total).clamp(0.1, 1.0))
    }

    /// Takes an in-flight slot if fewer than `cap` are taken (`cap == 0`: no limit).
    #[inline]
    pub(crate) fn try_acquire(self: &Arc<Self>, cap: u32) -> Option<Lease> {
        let v = &self.vitals;
        let started_us = clock::now_us();
        // The start time goes in before the count (and out after it), so a pick that
        // reads between the two sees the in-flight work younger, never older.
        v.started_sum_us.fetch_add(started_us, Ordering::Release);
        let ahead = if cap == 0 {
            v.inflight.fetch_add(1, Ordering::Release)
        } else {
            match v
                .inflight
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < cap).then_some(n + 1)
                }) {
                Ok(n) => n,
                Err(_) => {
                    v.started_sum_us.fetch_sub(started_us, Ordering::Release);
                    return None;
                }
            }
        };
        Some(Lease {
            backend: Arc::clone(self),
            started_us,
            ahead,
        })
    }

    /// Records an answer that was not a failure; clears the failure streak.
    #[inline]
    pub fn record_success(&self) {
        if self.vitals.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.vitals.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a connect failure or 5xx; returns the streak length.
    pub fn record_failure(&self) -> u32 {
        self.vitals
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1
    }

    /// Takes the backend out for `base` doubled per ejection in a row (capped at 32×);
    /// returns how long. A backend that stayed in for 5× `base` since its last
    /// ejection starts its streak over.
    pub(crate) fn eject(&self, base: Duration) -> Duration {
        let now = clock::now_ms();
        let last_until = self.vitals.ejected_until.load(Ordering::Relaxed);
        if last_until != 0 && now > last_until + 5 * base.as_millis() as u64 {
            self.vitals.ejections.store(0, Ordering::Relaxed);
        }
        let n = self.vitals.ejections.fetch_add(1, Ordering::Relaxed).min(5);
        let dur = base * (1u32 << n);
        self.vitals
            .ejected_until
            .store(now + dur.as_millis() as u64, Ordering::Relaxed);
        self.vitals.consecutive_failures.store(0, Ordering::Relaxed);
        self.vitals
            .state
            .store(BackendState::Down as u8, Ordering::Release);
        dur
    }

    /// How long the running ejection still lasts (zero when none).
    pub fn ejected_for(&self) -> Duration {
        let until = self.vitals.ejected_until.load(Ordering::Relaxed);
        Duration::from_millis(until.saturating_sub(clock::now_ms()))
    }

    /// Notes that an active health check just finished.
    pub(crate) fn record_check(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.vitals.last_check_unix_ms.store(now, Ordering::Relaxed);
    }

    /// When the last active health check finished, if any.
    pub fn last_check(&self) -> Option<std::time::SystemTime> {
        match self.vitals.last_check_unix_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(std::time::UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// Is an ejection still running?
    pub fn is_ejected(&self) -> bool {
        let until = self.vitals.ejected_until.load(Ordering::Relaxed);
        until != 0 && clock::now_ms() < until
    }
}

/// One in-flight request on a backend. Dropping it frees the slot (or hands it
/// straight to the oldest queued request), so the count stays right on every exit
/// path: success, error, client abort, retry elsewhere.
#[derive(Debug)]
pub struct Lease {
    backend: Arc<Backend>,
    /// When the slot was taken (clock µs), to take it back out of the age sum.
    started_us: u64,
    /// Requests the backend was already running when this one was sent.
    ahead: u32,
}

impl Lease {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Records this request's time to response headers, `took`, as a sample of
    /// the backend's time per request: divided by the requests it ran at once
    /// (this one and those already running when it was sent). On a replica that
    /// serves one at a time that removes the time spent queued inside it, so a
    /// busy replica does not look slow for being busy (its load is counted
    /// already); on one that batches it understates every replica alike, which
    /// keeps them comparable.
    #[inline]
    pub fn record_latency(&self, took: Duration) {
        self.backend.record_latency(took / (self.ahead + 1));
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let v = &self.backend.vitals;
        v.inflight.fetch_sub(1, Ordering::SeqCst);
        v.started_sum_us
            .fetch_sub(self.started_us, Ordering::Release);
        if self.backend.queued.load(Ordering::SeqCst) > 0 {
            if let Some(pool) = self.backend.pool.upgrade() {
                pool.dispatch();
            }
        }
    }
}
