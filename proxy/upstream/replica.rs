//! One replica of a model, kept across config generations: its address and
//! everything the proxy knows about it (in-flight count and age, typical time per
//! request, health state, failure streak, ejection, slow-start ramp, last check).
//!
//! A [`Replica`] is created once per upstream and address by the upstream's
//! [`super::ReplicaStore`] and shared by every generation's [`super::Backend`] for
//! that address, so a request running on an old generation and one on the new
//! generation count against the same cap. All state is atomic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::clock;
use super::limit::{Answer, Bounds, LimitLearner};
use super::report::LoadReport;
use crate::openai::models::ModelList;

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

/// Answers that start a replica's estimate (one long request is not a trend): the
/// estimate is the fastest of them so far, no more than twice the seed per answer.
const FIRST_SAMPLES: u32 = 4;

/// A running low quantile (about the 11th percentile) of a time, in µs, without a
/// lock: during the first `FIRST_SAMPLES` samples the fastest so far, at most the
/// seed (the fastest peer's estimate when the first sample came) times 2^n after
/// n samples; then moved 1/64 of itself up or 1/8 down toward each new one (see
/// [`Replica::record_latency_among`]).
#[derive(Debug, Default)]
struct LowQuantile {
    /// The estimate (0: no sample yet).
    value: AtomicU32,
    /// The fastest sample during the start (0: none yet).
    fastest: AtomicU32,
    /// The fastest peer's estimate when the first sample came (0: none).
    seed: AtomicU32,
    recorded: AtomicU32,
}

impl LowQuantile {
    #[inline]
    fn get(&self) -> u32 {
        self.value.load(Ordering::Relaxed)
    }

    /// Folds `took` in; `peers_fastest` (µs, 0: none) seeds the start and is
    /// called only on the first sample. Concurrent updates may lose a step.
    #[inline]
    fn record(&self, took: Duration, peers_fastest: impl FnOnce() -> u32) {
        let v = self;
        let sample = took.as_micros().clamp(1, u128::from(u32::MAX)) as u32;
        if v.recorded.load(Ordering::Relaxed) < FIRST_SAMPLES {
            let n = v.recorded.fetch_add(1, Ordering::Relaxed);
            if n == 0 {
                v.seed.store(peers_fastest(), Ordering::Relaxed);
            }
            if n < FIRST_SAMPLES {
                let prev = v.fastest.load(Ordering::Relaxed);
                let fastest = if prev == 0 { sample } else { prev.min(sample) };
                v.fastest.store(fastest, Ordering::Relaxed);
                let seed = v.seed.load(Ordering::Relaxed);
                let start = if seed == 0 {
                    fastest
                } else {
                    fastest.min(seed.saturating_mul(1 << (n + 1)))
                };
                v.value.store(start.max(1), Ordering::Relaxed);
                return;
            }
        }
        let old = v.value.load(Ordering::Relaxed);
        if old == 0 {
            return; // the first samples are still being folded in
        }
        let new = if sample > old {
            old.saturating_add((old / 64).max(1).min(sample - old))
        } else {
            (old - (old / 8).max(1).min(old - sample)).max(1)
        };
        v.value.store(new, Ordering::Relaxed);
    }
}

/// One replica of one upstream, the same object in every config generation.
#[derive(Debug)]
pub struct Replica {
    addr: SocketAddr,
    /// `ip:port`, ready for logs and metric labels.
    label: Arc<str>,
    inflight: AtomicU32,
    /// Sum of the start times (clock µs) of the requests in flight: with the count it
    /// gives their total age without a list.
    started_sum_us: AtomicU64,
    /// Time per request: each answer's time divided by the requests the replica
    /// ran at once (see [`Replica::record_latency_among`]).
    latency: LowQuantile,
    /// Time of one whole request (to response headers), not divided: how long a
    /// slot stays taken (see [`Replica::service_us`]).
    service: LowQuantile,
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
    /// The replica's last own load report, in thousandths (`NONE`: not reported).
    reported_queue: AtomicU32,
    reported_running: AtomicU32,
    reported_cache: AtomicU32,
    /// When it came (clock ms; 0: never) and its wall-clock time (Unix ms).
    reported_at_ms: AtomicU64,
    reported_unix_ms: AtomicU64,
    /// Its learned concurrency limit (used with `max_inflight = "auto"`).
    limit: LimitLearner,
    /// The models the replica last listed on its `/v1/models` (`health.models`).
    models: ArcSwapOption<ModelList>,
    /// Its name in the cache-affinity index; renewed when it goes down or is ejected.
    affinity_id: AtomicU32,
}

/// A gauge the last report did not carry.
const NONE: u32 = u32::MAX;

fn milli(x: Option<f64>) -> u32 {
    x.map_or(NONE, |x| {
        (x * 1000.0).round().clamp(0.0, f64::from(NONE - 1)) as u32
    })
}

fn unmilli(x: u32) -> Option<f64> {
    (x != NONE).then(|| f64::from(x) / 1000.0)
}

impl Replica {
    pub(crate) fn new(addr: SocketAddr, state: BackendState) -> Arc<Replica> {
        Arc::new(Replica {
            addr,
            label: addr.to_string().into(),
            inflight: AtomicU32::new(0),
            started_sum_us: AtomicU64::new(0),
            latency: LowQuantile::default(),
            service: LowQuantile::default(),
            state: AtomicU8::new(state as u8),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ramp_until: AtomicU64::new(0),
            last_check_unix_ms: AtomicU64::new(0),
            reported_queue: AtomicU32::new(NONE),
            reported_running: AtomicU32::new(NONE),
            reported_cache: AtomicU32::new(NONE),
            reported_at_ms: AtomicU64::new(0),
            reported_unix_ms: AtomicU64::new(0),
            limit: LimitLearner::new(1),
            models: ArcSwapOption::empty(),
            affinity_id: AtomicU32::new(super::affinity::next_id()),
        })
    }

    /// Its learned concurrency limit now, within `bounds`.
    #[inline]
    pub fn learned_limit(&self, bounds: Bounds) -> u32 {
        self.limit.limit(bounds)
    }

    /// Folds one answer into the learned limit; returns the new limit if it moved.
    pub(crate) fn learn_limit(&self, answer: Answer, bounds: Bounds) -> Option<u32> {
        self.limit.on_answer(answer, bounds)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The label, shared (for access log lines written on another thread).
    pub fn label_shared(&self) -> &Arc<str> {
        &self.label
    }

    /// Requests this proxy has on the backend right now.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Requests in flight and their total age at clock time `now_us` (µs), read
    /// consistently without a lock: the start-time sum is read on both sides of
    /// the count, and a change in between means a slot was taken or freed
    /// meanwhile, so the read is repeated (after three misses the age is left out).
    #[inline]
    pub(crate) fn work(&self, now_us: u64) -> (u32, u64) {
        let v = self;
        for _ in 0..3 {
            let before = v.started_sum_us.load(Ordering::Acquire);
            let n = v.inflight.load(Ordering::Acquire);
            if v.started_sum_us.load(Ordering::Acquire) == before {
                return (n, (u64::from(n) * now_us).saturating_sub(before));
            }
        }
        (self.inflight(), 0)
    }

    /// Typical time per request of this replica (a running low quantile, see
    /// [`Replica::record_latency_among`]), in microseconds; 0 until the first answer came back.
    pub fn latency_us(&self) -> u32 {
        self.latency.get()
    }

    /// Typical time of one whole request on this replica, to response headers and
    /// not divided by the requests it ran beside (the same low quantile as
    /// [`Replica::latency_us`]), in microseconds; 0 until the first answer came back.
    /// With a cap of `c` slots, a full replica frees one about every `service / c`.
    pub fn service_us(&self) -> u32 {
        self.service.get()
    }

    /// Folds one answer that took `took` with nothing else running into both
    /// estimates, for a replica with no peers (see [`Replica::record_latency_among`]).
    #[inline]
    pub fn record_latency(&self, took: Duration) {
        self.record_latency_among(took, || 0);
        self.record_service(took);
    }

    /// Folds one whole request's time into [`Replica::service_us`].
    #[inline]
    pub(crate) fn record_service(&self, took: Duration) {
        self.service.record(took, || 0);
    }

    /// Folds one time per request into the running low quantile. `peers_fastest`
    /// gives the fastest typical time of the other replicas of the upstream (µs,
    /// 0: none measured); it is called once, on the first answer.
    ///
    /// For the first `FIRST_SAMPLES` answers the estimate is the fastest of them
    /// so far, but no more than the fastest peer's times 2^n after n answers; then
    /// it moves toward each sample by a step proportional to itself: 1/64 up, 1/8
    /// down, so it settles where one sample in nine is faster, about the 11th
    /// percentile (Ma, Muthukrishnan and Sandler, "Frugal Streaming for Estimating
    /// Quantiles", 2013: a step up with weight q and down with weight 1 − q tracks
    /// the q-quantile). A low quantile measures the replica rather than the
    /// requests it happened to get: a replica that served a run of long requests
    /// (as the idle one does when the balancer keeps short work off a busy one)
    /// still looks as fast as it is (thirty long answers in a row move it 1.6x),
    /// while a replica that really slows down for everything is seen within about
    /// a hundred answers (8x slower: 3x within 70). The start reflects the
    /// replica's own answers from the first one (a replica 20x slower than its
    /// peer shows 2x after one answer, 16x after four and 20x some fifteen
    /// answers later), where the 1/64 step from the peer's time alone would take
    /// some 190 answers to climb 20x; the doubling bound keeps a
    /// replica whose first answers happened to be long requests (the one left
    /// idle gets the next long request while short ones go around the busy one)
    /// from starting out 300x slower than its peers, which would make a busy peer
    /// look cheaper than it: after four long answers it is at most 16x its peer,
    /// and the 1/8 step down corrects that within twenty short answers.
    /// Lock-free; concurrent updates may lose a step.
    #[inline]
    pub(crate) fn record_latency_among(&self, took: Duration, peers_fastest: impl FnOnce() -> u32) {
        self.latency.record(took, peers_fastest);
    }

    pub fn state(&self) -> BackendState {
        match self.state.load(Ordering::Relaxed) {
            0 => BackendState::Up,
            1 => BackendState::Down,
            _ => BackendState::Unknown,
        }
    }

    /// Moves to `state`; returns the previous one. Joining (to Up) starts the
    /// slow-start ramp; the caller then lets queued requests at the new capacity
    /// ([`super::WaitQueue::dispatch`]).
    pub(crate) fn set_state(&self, state: BackendState, slow_start: Duration) -> BackendState {
        let prev = self.state.swap(state as u8, Ordering::AcqRel);
        let prev = match prev {
            0 => BackendState::Up,
            1 => BackendState::Down,
            _ => BackendState::Unknown,
        };
        if prev != state && state == BackendState::Down {
            self.forget_affinity();
        }
        if prev != state && state == BackendState::Up && !slow_start.is_zero() {
            self.ramp_until.store(
                clock::now_ms() + slow_start.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        prev
    }

    /// Its name in the cache-affinity index (see [`super::affinity`]).
    #[inline]
    pub fn affinity_id(&self) -> u32 {
        self.affinity_id.load(Ordering::Relaxed)
    }

    /// Its cache is presumed lost (it went down or was ejected): prefixes remembered
    /// for it no longer match.
    fn forget_affinity(&self) {
        self.affinity_id
            .store(super::affinity::next_id(), Ordering::Relaxed);
    }

    /// May this replica be given a new request?
    #[inline]
    pub fn is_available(&self) -> bool {
        self.state.load(Ordering::Relaxed) == BackendState::Up as u8
    }

    /// During slow start, the share (0.1..1) of new requests this replica should get;
    /// `None` once fully in.
    #[inline]
    pub(crate) fn ramp(&self, slow_start: Duration) -> Option<f64> {
        let until = self.ramp_until.load(Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        let now = clock::now_ms();
        if now >= until {
            self.ramp_until.store(0, Ordering::Relaxed);
            return None;
        }
        let total = slow_start.as_millis().max(1) as f64;
        let elapsed = total - (until - now) as f64;
        Some((elapsed / total).clamp(0.1, 1.0))
    }

    /// Records an answer that was not a failure; clears the failure streak.
    #[inline]
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a connect failure or 5xx; returns the streak length.
    pub fn record_failure(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Takes the backend out for `base` doubled per ejection in a row (capped at 32×);
    /// returns how long. A backend that stayed in for 5× `base` since its last
    /// ejection starts its streak over.
    pub(crate) fn eject(&self, base: Duration) -> Duration {
        let now = clock::now_ms();
        let last_until = self.ejected_until.load(Ordering::Relaxed);
        if last_until != 0 && now > last_until + 5 * base.as_millis() as u64 {
            self.ejections.store(0, Ordering::Relaxed);
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(5);
        let dur = base * (1u32 << n);
        self.ejected_until
            .store(now + dur.as_millis() as u64, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.state
            .store(BackendState::Down as u8, Ordering::Release);
        self.forget_affinity();
        dur
    }

    /// How long the running ejection still lasts (zero when none).
    pub fn ejected_for(&self) -> Duration {
        let until = self.ejected_until.load(Ordering::Relaxed);
        Duration::from_millis(until.saturating_sub(clock::now_ms()))
    }

    /// Notes that an active health check just finished.
    pub(crate) fn record_check(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_check_unix_ms.store(now, Ordering::Relaxed);
    }

    /// When the last active health check finished, if any.
    pub fn last_check(&self) -> Option<std::time::SystemTime> {
        match self.last_check_unix_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(std::time::UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// Is an ejection still running?
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && clock::now_ms() < until
    }

    /// Stores the replica's own load report, just received.
    pub(crate) fn record_report(&self, r: &LoadReport) {
        self.reported_queue.store(milli(r.queue), Ordering::Relaxed);
        self.reported_running
            .store(milli(r.running), Ordering::Relaxed);
        self.reported_cache
            .store(milli(r.cache_usage), Ordering::Relaxed);
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.reported_unix_ms.store(unix, Ordering::Relaxed);
        self.reported_at_ms
            .store(clock::now_ms(), Ordering::Release);
    }

    /// The last load report and when it came, if any.
    pub fn reported(&self) -> Option<(LoadReport, std::time::SystemTime)> {
        if self.reported_at_ms.load(Ordering::Acquire) == 0 {
            return None;
        }
        let report = LoadReport {
            queue: unmilli(self.reported_queue.load(Ordering::Relaxed)),
            running: unmilli(self.reported_running.load(Ordering::Relaxed)),
            cache_usage: unmilli(self.reported_cache.load(Ordering::Relaxed)),
        };
        let at = std::time::UNIX_EPOCH
            + Duration::from_millis(self.reported_unix_ms.load(Ordering::Relaxed));
        Some((report, at))
    }

    /// The last load report if it came within `ttl` (as the balancer counts it);
    /// `None` when there is none, it is older, or `ttl` is zero (reports off).
    pub(crate) fn fresh_report(&self, ttl: Duration) -> Option<LoadReport> {
        let ttl_ms = ttl.as_millis() as u64;
        let at = self.reported_at_ms.load(Ordering::Acquire);
        if ttl_ms == 0 || at == 0 || clock::now_ms().saturating_sub(at) > ttl_ms {
            return None;
        }
        self.reported().map(|(report, _)| report)
    }

    /// Keeps the model list the replica just served on its `/v1/models`.
    pub(crate) fn record_models(&self, models: ModelList) {
        self.models.store(Some(Arc::new(models)));
    }

    /// The replica's last model list, if it ever served one.
    pub fn models(&self) -> Option<Arc<ModelList>> {
        self.models.load_full()
    }

    /// Requests the replica said it holds (queued + running, rounded up) if it said
    /// so within `ttl_ms` of clock time `now_ms`; 0 otherwise (no report, too old,
    /// or reports off with `ttl_ms == 0`), so a silent replica is judged by what the
    /// proxy sees alone.
    #[inline]
    pub(crate) fn reported_load(&self, now_ms: u64, ttl_ms: u64) -> u32 {
        self.reported_milli(now_ms, ttl_ms)
            .map_or(0, |(queue, running)| {
                u32::try_from((queue + running).div_ceil(1000)).unwrap_or(u32::MAX)
            })
    }

    /// Requests the replica said it has queued and running (each rounded to the
    /// nearest whole one; a gauge it did not report counts 0) if it said so within
    /// `ttl_ms` of clock time `now_ms`, as [`Replica::reported_load`] judges freshness.
    #[inline]
    pub(crate) fn reported_counts(&self, now_ms: u64, ttl_ms: u64) -> Option<(u32, u32)> {
        let whole = |milli: u64| u32::try_from((milli + 500) / 1000).unwrap_or(u32::MAX);
        self.reported_milli(now_ms, ttl_ms)
            .map(|(queue, running)| (whole(queue), whole(running)))
    }

    /// The fresh report's queue and running gauges in thousandths (missing: 0).
    #[inline]
    fn reported_milli(&self, now_ms: u64, ttl_ms: u64) -> Option<(u64, u64)> {
        if ttl_ms == 0 {
            return None;
        }
        let at = self.reported_at_ms.load(Ordering::Acquire);
        if at == 0 || now_ms.saturating_sub(at) > ttl_ms {
            return None;
        }
        let part = |a: &AtomicU32| match a.load(Ordering::Relaxed) {
            NONE => 0,
            x => u64::from(x),
        };
        Some((part(&self.reported_queue), part(&self.reported_running)))
    }

    /// Takes an in-flight slot if fewer than `cap` are taken (`cap == 0`: no limit);
    /// returns when (clock µs) and how many requests were running before it.
    #[inline]
    /// With `expect`, only while the replica still runs exactly that many requests
    /// (the count the pick that chose it read): two picks at the same moment on two
    /// threads then cannot both take the one free replica; the loser picks again.
    pub(crate) fn take_slot(&self, cap: u32, expect: Option<u32>) -> Option<(u64, u32)> {
        let v = self;
        let started_us = clock::now_us();
        // The start time goes in before the count (and out after it), so a pick that
        // reads between the two sees the in-flight work younger, never older.
        v.started_sum_us.fetch_add(started_us, Ordering::Release);
        let ahead = if cap == 0 && expect.is_none() {
            v.inflight.fetch_add(1, Ordering::Release)
        } else {
            let limit = if cap == 0 { u32::MAX } else { cap };
            match v
                .inflight
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < limit && expect.is_none_or(|e| e == n)).then_some(n + 1)
                }) {
                Ok(n) => n,
                Err(_) => {
                    v.started_sum_us.fetch_sub(started_us, Ordering::Release);
                    return None;
                }
            }
        };
        Some((started_us, ahead))
    }

    /// Frees a slot taken at `started_us`.
    #[inline]
    pub(crate) fn release_slot(&self, started_us: u64) {
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        self.started_sum_us.fetch_sub(started_us, Ordering::Release);
    }
}
