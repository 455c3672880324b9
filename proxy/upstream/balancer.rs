//! One generation's choice of backend: its backends, the selection policy, the
//! in-flight cap, and whether a request should rather wait for a faster backend.

use std::sync::Arc;
use std::time::Duration;

use super::backend::{Backend, Lease};
use super::limit::Bounds;
use super::queue::WaitQueue;
use super::select::{Selector, Tried};
use crate::config::{AutoLimit, Queue};

/// The in-flight cap of each backend of one generation (`max_inflight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// `max_inflight = 0`.
    Unlimited,
    /// The same number for every backend.
    Fixed(u32),
    /// `max_inflight = "auto"`: each replica's learned limit, within these bounds.
    Learned(Bounds),
}

impl Cap {
    /// The cap that `max_inflight` (and `max_inflight_auto`) configure.
    pub fn from_config(max_inflight: u32, auto: Option<AutoLimit>) -> Cap {
        match (auto, max_inflight) {
            (Some(a), _) => Cap::Learned(Bounds {
                min: a.min,
                max: a.max,
            }),
            (None, 0) => Cap::Unlimited,
            (None, n) => Cap::Fixed(n),
        }
    }

    /// Backend `b`'s cap now (0: unlimited).
    #[inline]
    pub fn of(self, b: &Backend) -> u32 {
        match self {
            Cap::Unlimited => 0,
            Cap::Fixed(n) => n,
            Cap::Learned(bounds) => b.replica().learned_limit(bounds),
        }
    }

    pub fn is_limited(self) -> bool {
        self != Cap::Unlimited
    }
}

/// Pools larger than this skip the wait-or-run estimate (it scans every backend).
const WAIT_ESTIMATE_MAX_BACKENDS: usize = 64;

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

/// The backends of one generation of an upstream and how to pick among them.
/// Immutable; the wait queue holds the newest published one.
#[derive(Debug)]
pub struct Balancer {
    backends: Box<[Arc<Backend>]>,
    selector: Selector,
    cap: Cap,
    slow_start: Duration,
    queue: Queue,
}

impl Balancer {
    pub(crate) fn new(
        backends: Box<[Arc<Backend>]>,
        selector: Selector,
        cap: Cap,
        slow_start: Duration,
        queue: Queue,
    ) -> Self {
        Balancer {
            backends,
            selector,
            cap,
            slow_start,
            queue,
        }
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// The queue settings (size, timeout) of this generation.
    pub fn queue(&self) -> Queue {
        self.queue
    }

    /// Picks a backend not in `tried` and takes an in-flight slot on it, without
    /// waiting; declines a slow free backend (`AllBusy`) when waiting in `queue` for
    /// a faster one is expected to be quicker (see `better_to_wait`). `hash` is the
    /// request's key hash for consistent hashing (ignored otherwise).
    pub fn pick(&self, queue: &Arc<WaitQueue>, tried: &Tried, hash: u64) -> Pick {
        self.pick_with(queue, tried, hash, true)
    }

    /// `pick`, taking any free backend rather than waiting.
    pub fn pick_now(&self, queue: &Arc<WaitQueue>, tried: &Tried, hash: u64) -> Pick {
        self.pick_with(queue, tried, hash, false)
    }

    fn pick_with(&self, queue: &Arc<WaitQueue>, tried: &Tried, hash: u64, may_wait: bool) -> Pick {
        let cap = self.cap;
        // A slot can be taken between the check and the acquire (by a pick on another
        // thread): try again a few times, the last time whatever the count is now.
        const TRIES: usize = 4;
        for attempt in 0..TRIES {
            match self
                .selector
                .pick(&self.backends, tried, cap, hash, self.slow_start)
            {
                Some((i, seen)) => {
                    if may_wait && self.better_to_wait(&self.backends[i], tried, queue.len()) {
                        return Pick::AllBusy;
                    }
                    let b = &self.backends[i];
                    let expect = seen.filter(|_| attempt + 1 < TRIES);
                    if let Some(lease) = b.try_acquire(cap.of(b), queue, expect) {
                        return Pick::Leased(lease);
                    }
                }
                None => break,
            }
        }
        if cap.is_limited() && self.has_untried(tried) {
            Pick::AllBusy
        } else {
            Pick::NoneHealthy
        }
    }

    /// With least-outstanding balancing, caps and a queue: is waiting for a slot on
    /// a faster, full backend expected to finish in under half the time of running
    /// now on `chosen`? Slots on full backends free up at `cap / latency` each; the
    /// request would wait behind the `queued` already waiting. A 4x slower replica
    /// then only takes work when the queue in front of the fast ones grows long.
    fn better_to_wait(&self, chosen: &Backend, tried: &Tried, queued: usize) -> bool {
        let cap = self.cap;
        let chosen_us = chosen.latency_us();
        if !cap.is_limited()
            || chosen_us == 0
            || self.queue.size == 0
            || self.backends.len() > WAIT_ESTIMATE_MAX_BACKENDS
            || !matches!(self.selector, Selector::LeastOutstanding { .. })
        {
            return false;
        }
        let (mut slots_per_us, mut fastest_us) = (0.0f64, u32::MAX);
        for b in self.backends.iter() {
            let us = b.latency_us();
            let slots = cap.of(b);
            if us != 0
                && us < chosen_us
                && b.inflight() >= slots
                && b.is_available()
                && !tried.contains(b.index())
            {
                slots_per_us += f64::from(slots) / f64::from(us);
                fastest_us = fastest_us.min(us);
            }
        }
        if slots_per_us == 0.0 {
            return false;
        }
        let wait_us = (queued + 1) as f64 / slots_per_us;
        // Only a clear win: the greedy estimate ignores the requests arriving behind
        // this one, and a queue that grows while a replica idles costs everyone.
        2.0 * (wait_us + f64::from(fastest_us)) < f64::from(chosen_us)
    }

    /// The in-flight slots of the available backends together (the base of the
    /// priority classes' share caps); `u32::MAX` when unlimited.
    pub(crate) fn slots(&self) -> u32 {
        if !self.cap.is_limited() {
            return u32::MAX;
        }
        self.backends
            .iter()
            .filter(|b| b.is_available())
            .fold(0u32, |n, b| n.saturating_add(self.cap.of(b)))
    }

    /// Does a refused pick for one request mean a refusal for any other that has
    /// tried nothing yet? True unless the choice is bound to the request's key
    /// (cache affinity only prefers a replica, falling back to any eligible one).
    pub(crate) fn picks_alike(&self) -> bool {
        matches!(
            self.selector,
            Selector::LeastOutstanding { .. }
                | Selector::RoundRobin { .. }
                | Selector::CacheAffinity { .. }
        )
    }

    /// Is there a backend this request has not tried that could take it?
    pub fn has_untried(&self, tried: &Tried) -> bool {
        self.backends
            .iter()
            .any(|b| b.is_available() && !tried.contains(b.index()))
    }
}
