//! One generation's choice of backend: its backends, the selection policy, the
//! in-flight cap, and whether a request should rather wait for a faster backend.

use std::sync::Arc;
use std::time::Duration;

use super::backend::{Backend, Lease};
use super::clock;
use super::limit::Bounds;
use super::queue::WaitQueue;
use super::select::{Selector, Tried, MIN_REQUEST_US};
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
/// The shortest time before a declined free slot is offered again (µs).
const RECHECK_MIN_US: u64 = 1_000;

/// The outcome of a non-waiting pick.
#[derive(Debug)]
pub enum Pick {
    /// A slot on this backend.
    Leased(Lease),
    /// Every untried backend is down.
    NoneHealthy,
    /// Healthy backends exist but all are at `max_inflight`.
    AllBusy,
    /// A slower backend has a free slot, but waiting in the queue for a faster,
    /// full one is expected to answer sooner (shortest expected delay, see
    /// [`Balancer::pick`]). Ask again after this long if no slot frees before.
    Wait(Duration),
}

/// The shortest expected delay's verdict on the free backend least outstanding chose.
enum Sed {
    /// Take it.
    Run,
    /// Take this faster free backend (by index) instead.
    RunOn(usize),
    /// Wait in the queue; ask again after this long.
    Wait(Duration),
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
    /// waiting, for a request with nobody ahead of it in the queue; declines a slow
    /// free backend (`Wait`) when waiting for a faster one is expected to answer
    /// sooner (see [`Balancer::pick_behind`]). `hash` is the request's key hash for
    /// consistent hashing (ignored otherwise).
    pub fn pick(&self, queue: &Arc<WaitQueue>, tried: &Tried, hash: u64) -> Pick {
        self.pick_with(queue, tried, hash, Some(0))
    }

    /// `pick` for a request with `ahead` waiters in front of it in the queue: the
    /// further back, the longer its wait for a fast slot, and the sooner a slow
    /// free one is the better choice.
    pub(crate) fn pick_behind(
        &self,
        queue: &Arc<WaitQueue>,
        tried: &Tried,
        hash: u64,
        ahead: usize,
    ) -> Pick {
        self.pick_with(queue, tried, hash, Some(ahead))
    }

    /// `pick`, taking any free backend rather than waiting.
    pub fn pick_now(&self, queue: &Arc<WaitQueue>, tried: &Tried, hash: u64) -> Pick {
        self.pick_with(queue, tried, hash, None)
    }

    /// `ahead`: waiters in front of the request (`None`: it may not wait).
    fn pick_with(
        &self,
        queue: &Arc<WaitQueue>,
        tried: &Tried,
        hash: u64,
        ahead: Option<usize>,
    ) -> Pick {
        let cap = self.cap;
        // A slot can be taken between the check and the acquire (by a pick on another
        // thread): try again a few times, the last time whatever the count is now.
        const TRIES: usize = 4;
        for attempt in 0..TRIES {
            match self
                .selector
                .pick(&self.backends, tried, cap, hash, self.slow_start)
            {
                Some((mut i, mut seen)) => {
                    match ahead.map_or(Sed::Run, |n| self.sed(&self.backends[i], tried, n)) {
                        Sed::Run => {}
                        Sed::RunOn(faster) => (i, seen) = (faster, None),
                        Sed::Wait(recheck) => return Pick::Wait(recheck),
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

    /// Shortest expected delay between the free backend least outstanding chose and
    /// the faster backends that are full, for a request with `ahead` waiters in front
    /// of it (with least-outstanding balancing, caps and a queue only).
    ///
    /// The expected delay of a backend is the wait for one of its slots plus its time
    /// per request, `service(i)` ([`super::Replica::service_us`]), and the request
    /// goes where it is shortest: the SED rule of LVS (`ip_vs_sed`: `(C_i + 1) / U_i`)
    /// and of dispatching to heterogeneous servers (Harchol-Balter, "Performance
    /// Modeling and Design of Computer Systems", 2013, on task assignment). On the
    /// free `chosen` the wait is nil. The faster full ones share the queue, so their
    /// slots free together, at `Σ cap(j) / service(j)` (a replica whose requests in
    /// flight have run longer than `service(j)` on average frees them at the rate its
    /// ages show, so a stalled replica stops holding requests back); the request waits
    /// for the `ahead + 1`-th of them. Waiting wins when
    /// `(ahead + 1) / Σ cap(j)/service(j) + min service(j) < service(chosen)`: a slow
    /// replica takes work only once the wait for a fast slot exceeds its extra time.
    /// A faster replica with a free slot beats `chosen` outright (least outstanding
    /// may choose a slow free replica to keep measuring it, which with a queue only
    /// costs: it is measured whenever the queue makes it worth using). Only
    /// replicas at least twice as fast count, and only when `chosen` takes at least
    /// 50 ms, so noise between equal replicas never holds a request back.
    fn sed(&self, chosen: &Backend, tried: &Tried, ahead: usize) -> Sed {
        let cap = self.cap;
        let chosen_us = u64::from(chosen.service_us());
        if !cap.is_limited()
            || chosen_us < MIN_REQUEST_US
            || self.queue.size == 0
            || self.backends.len() > WAIT_ESTIMATE_MAX_BACKENDS
            || !matches!(self.selector, Selector::LeastOutstanding { .. })
        {
            return Sed::Run;
        }
        let now_us = clock::now_us();
        let (mut slots_per_us, mut fastest_us) = (0.0f64, u64::MAX);
        for b in self.backends.iter() {
            let us = u64::from(b.service_us());
            let slots = cap.of(b);
            if us == 0
                || us.saturating_mul(2) > chosen_us
                || !b.is_available()
                || tried.contains(b.index())
            {
                continue;
            }
            let (running, age_us) = b.work(now_us);
            if running < slots {
                return Sed::RunOn(b.index());
            }
            let per_request_us = us.max(age_us / u64::from(running.max(1)));
            slots_per_us += f64::from(slots) / per_request_us as f64;
            fastest_us = fastest_us.min(us);
        }
        if slots_per_us == 0.0 {
            return Sed::Run;
        }
        let wait_us = (ahead as f64 + 1.0) / slots_per_us;
        let gain_us = chosen_us.saturating_sub(fastest_us);
        if wait_us >= gain_us as f64 {
            return Sed::Run;
        }
        // Ask again a quarter of the slow replica's extra time later: a fast slot
        // usually frees before, and if none does its requests have aged meanwhile.
        Sed::Wait(Duration::from_micros((gain_us / 4).max(RECHECK_MIN_US)))
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
