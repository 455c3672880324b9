//! Backend selection policies: least outstanding, weighted round robin, consistent hash,
//! cache affinity.
//!
//! Each policy picks among backends that are available, not yet tried by this request,
//! and below their in-flight cap; the pool then takes the slot atomically.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::affinity;
use super::backend::Backend;
use super::balancer::Cap;
use super::clock;
use crate::config::AffinityGuard;

/// Most attempts one request can make (the first plus `retries`, which is at most 10).
pub(crate) const MAX_ATTEMPTS: usize = 12;

/// Backends this request already tried, by index in the pool. Fixed size, no allocation.
#[derive(Debug, Default, Clone)]
pub struct Tried {
    idx: [u32; MAX_ATTEMPTS],
    len: u8,
}

impl Tried {
    #[inline]
    pub fn contains(&self, i: usize) -> bool {
        self.idx[..self.len as usize]
            .iter()
            .any(|&t| t as usize == i)
    }

    pub fn push(&mut self, i: usize) {
        if (self.len as usize) < MAX_ATTEMPTS {
            self.idx[self.len as usize] = i as u32;
            self.len += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Pools up to this size are scanned whole by least-outstanding; larger ones sample.
const FULL_SCAN_MAX: usize = 16;
/// Round-robin schedules are cut at this length (proportions stay close for huge weights).
const MAX_SCHEDULE: usize = 1 << 16;
/// Ring points per unit of weight for consistent hashing.
const POINTS_PER_WEIGHT: usize = 64;
/// Ring size cap, so 1,000 heavy backends still build quickly.
const MAX_RING: usize = 1 << 18;

/// A selection policy with whatever precomputed state it needs.
#[derive(Debug)]
pub(crate) enum Selector {
    LeastOutstanding {
        /// How long a replica's own load report counts (ms; 0: reports off).
        report_ttl_ms: u64,
    },
    RoundRobin {
        schedule: Box<[u32]>,
        cursor: AtomicUsize,
    },
    ConsistentHash {
        /// Sorted by hash.
        ring: Box<[(u64, u32)]>,
    },
    /// The replica holding the request's prefix (named by the hint the pick is given),
    /// unless the balance guard passes it over (see [`affinity::pick`]); else least
    /// outstanding.
    CacheAffinity {
        report_ttl_ms: u64,
        guard: AffinityGuard,
    },
}

/// Can backend `i` take this request now? During slow start a rejoining backend is
/// passed over with a probability that shrinks as its ramp proceeds.
#[inline]
fn eligible(b: &Backend, i: usize, tried: &Tried, cap: u32, slow_start: Duration) -> bool {
    b.is_available()
        && (cap == 0 || b.inflight() < cap)
        && !tried.contains(i)
        && (slow_start.is_zero()
            || b.ramp(slow_start)
                .is_none_or(|share| fastrand::f64() < share))
}

impl Selector {
    /// Least outstanding; replicas' own load reports count for `report_ttl`
    /// after they arrive (zero: not used).
    pub(crate) fn least_outstanding(report_ttl: Duration) -> Self {
        Selector::LeastOutstanding {
            report_ttl_ms: report_ttl.as_millis() as u64,
        }
    }

    /// Interleaved weighted round robin (stride scheduling): weights 3,1 give a,a,b,a.
    pub(crate) fn round_robin(backends: &[Arc<Backend>]) -> Self {
        let total: usize = backends.iter().map(|b| b.weight() as usize).sum();
        let len = total.min(MAX_SCHEDULE);
        let mut heap: BinaryHeap<Reverse<(u64, u32)>> = backends
            .iter()
            .enumerate()
            .map(|(i, _)| Reverse((0u64, i as u32)))
            .collect();
        let stride = |i: u32| u64::from(u32::MAX) / u64::from(backends[i as usize].weight());
        let mut schedule = Vec::with_capacity(len);
        while schedule.len() < len {
            let Some(Reverse((pass, i))) = heap.pop() else {
                break;
            };
            schedule.push(i);
            heap.push(Reverse((pass + stride(i), i)));
        }
        Selector::RoundRobin {
            schedule: schedule.into_boxed_slice(),
            cursor: AtomicUsize::new(fastrand::usize(..len.max(1))),
        }
    }

    /// A Ketama-style ring: keys move only when their backend leaves.
    pub(crate) fn consistent_hash(backends: &[Arc<Backend>]) -> Self {
        let total: usize = backends.iter().map(|b| b.weight() as usize).sum();
        let per_weight = (MAX_RING / total.max(1)).clamp(1, POINTS_PER_WEIGHT);
        let mut ring = Vec::with_capacity(total * per_weight);
        for (i, b) in backends.iter().enumerate() {
            let points = b.weight() as usize * per_weight;
            for p in 0..points {
                let mut key = [0u8; 32];
                let label = b.label().as_bytes();
                let n = label.len().min(24);
                key[..n].copy_from_slice(&label[..n]);
                key[24..].copy_from_slice(&(p as u64).to_le_bytes());
                ring.push((xxhash_rust::xxh3::xxh3_64(&key), i as u32));
            }
        }
        ring.sort_unstable();
        Selector::ConsistentHash {
            ring: ring.into_boxed_slice(),
        }
    }

    /// Cache affinity with `guard`, falling back to least outstanding (reports as there).
    pub(crate) fn cache_affinity(report_ttl: Duration, guard: AffinityGuard) -> Self {
        Selector::CacheAffinity {
            report_ttl_ms: report_ttl.as_millis() as u64,
            guard,
        }
    }

    /// Index of the backend to try next, with the requests it was running when
    /// least outstanding chose it by that count (`None` for the other policies), or
    /// `None` when no backend is eligible.
    /// `hash` is read by consistent hashing (the key's hash) and cache affinity (the
    /// preferred replicas, see [`super::Affinity::hint`]).
    pub(crate) fn pick(
        &self,
        backends: &[Arc<Backend>],
        tried: &Tried,
        cap: Cap,
        hash: u64,
        slow_start: Duration,
    ) -> Option<(usize, Option<u32>)> {
        let ok = |i: usize| eligible(&backends[i], i, tried, cap.of(&backends[i]), slow_start);
        match self {
            Selector::LeastOutstanding { report_ttl_ms } => {
                least_outstanding(backends, *report_ttl_ms, ok)
            }
            Selector::RoundRobin { schedule, cursor } => {
                let n = schedule.len();
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| schedule[(start + k) % n] as usize)
                    .find(|&i| ok(i))
                    .map(|i| (i, None))
            }
            Selector::CacheAffinity {
                report_ttl_ms,
                guard,
            } => {
                let now_us = clock::now_us();
                match affinity::pick(backends, hash, *guard, cap, *report_ttl_ms, now_us, ok) {
                    affinity::Verdict::Stay(i) => Some((i, None)),
                    affinity::Verdict::PassOver(p) => {
                        least_outstanding(backends, *report_ttl_ms, |i| i != p && ok(i))
                            .or_else(|| least_outstanding(backends, *report_ttl_ms, ok))
                    }
                    affinity::Verdict::None => least_outstanding(backends, *report_ttl_ms, ok),
                }
            }
            Selector::ConsistentHash { ring } => {
                if ring.is_empty() {
                    return None;
                }
                let start = ring.partition_point(|&(h, _)| h < hash);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1 as usize)
                    .find(|&i| ok(i))
                    .map(|i| (i, None))
            }
        }
    }
}

/// Smallest expected time per request (µs): below it, differences between replicas
/// are scheduling jitter on a busy host, not speed (model replicas take far longer).
pub(super) const MIN_REQUEST_US: u64 = 50_000;
/// One pick in this many ignores speed, so every replica keeps being measured
/// (a replica that was slow once is not shunned forever).
const EXPLORE_ONE_IN: u8 = 16;

/// The expected wait of a new request on one backend, in µs per unit of weight,
/// as a fraction `work / weight` (compared by cross-multiplication).
#[derive(Clone, Copy)]
struct Wait {
    work: u64,
    age: u64,
    weight: u64,
    /// Our requests in flight on it, as read.
    inflight: u32,
}

impl Wait {
    /// The expected wait of a new request on `b`: each request it runs (or reports
    /// holding, queued or running, when it reports its own load) and the new
    /// one cost the replica's time per request, `per_request_us`; between equal
    /// costs, the one whose running requests are younger in total is shorter (a
    /// request that has run long is the likelier to run on, and on a replica that
    /// serves one at a time everything sent there waits for it).
    #[inline]
    fn of(b: &Backend, per_request_us: u64, now_us: u64, report_ttl_ms: u64) -> Wait {
        let (ours, age_us) = b.work(now_us);
        // A fresh report of the replica's own queue and running requests counts as
        // requests in flight do; the larger of the two views wins, so ours are not
        // counted twice and a report that predates our latest request cannot hide it.
        let inflight = ours.max(b.reported_load(now_us / 1000, report_ttl_ms));
        Wait {
            work: per_request_us.saturating_mul(u64::from(inflight) + 1),
            age: age_us,
            weight: u64::from(b.weight()),
            inflight: ours,
        }
    }

    #[inline]
    fn shorter_than(self, other: Wait) -> bool {
        let (w, ow) = (u128::from(self.weight), u128::from(other.weight));
        let (mine, theirs) = (u128::from(self.work) * ow, u128::from(other.work) * w);
        mine < theirs || (mine == theirs && u128::from(self.age) * ow < u128::from(other.age) * w)
    }
}

/// Time per request charged to a backend whose typical time is `us` (0: not
/// measured yet) in a set whose fastest measured one takes `fastest_us` (0: none
/// is): only what it takes beyond twice the fastest counts, and never less than
/// the fastest. Replicas within 3x of the fastest are charged the same, so neither
/// noise between equal replicas nor a mixed workload's uneven luck outweighs a
/// request in flight; a replica 4x slower is charged 2x, 10x slower 8x.
/// Unmeasured counts as fastest, so it is tried soon.
#[inline]
fn per_request_us(us: u32, fastest_us: u64, explore: bool) -> u64 {
    let floor = fastest_us.max(MIN_REQUEST_US);
    if explore {
        floor
    } else {
        u64::from(us).saturating_sub(2 * fastest_us).max(floor)
    }
}

/// Least outstanding work: the backend on which a new request is expected to be
/// answered soonest, per unit of weight (see [`Wait::of`] and [`per_request_us`];
/// the formula is in the README). Small
/// pools are scanned whole (ties go to a random backend); large pools use the power
/// of two random choices (Mitzenmacher, "The Power of Two Choices in Randomized
/// Load Balancing", 2001).
fn least_outstanding(
    backends: &[Arc<Backend>],
    report_ttl_ms: u64,
    ok: impl Fn(usize) -> bool,
) -> Option<(usize, Option<u32>)> {
    let n = backends.len();
    if n == 0 {
        return None;
    }
    let explore = fastrand::u8(..EXPLORE_ONE_IN) == 0;
    let now_us = clock::now_us();
    let mut cand = [0u32; FULL_SCAN_MAX];
    let mut found = 0;
    if n > FULL_SCAN_MAX {
        for _ in 0..8 {
            let i = fastrand::usize(..n);
            if (found == 0 || cand[0] as usize != i) && ok(i) {
                cand[found] = i as u32;
                found += 1;
                if found == 2 {
                    break;
                }
            }
        }
        // Sampling kept missing (most backends are out): fall back to a full scan.
    }
    if found < 2 {
        found = 0;
        let mut seen = 0;
        let start = fastrand::usize(..n);
        for k in 0..n {
            let i = (start + k) % n;
            if ok(i) {
                seen += 1;
                if found == FULL_SCAN_MAX {
                    // Beyond the scan size, keep a uniform sample of the candidates.
                    let j = fastrand::usize(..seen);
                    if j < FULL_SCAN_MAX {
                        cand[j] = i as u32;
                    }
                    continue;
                }
                cand[found] = i as u32;
                found += 1;
            }
        }
    }
    let cand = &cand[..found];
    let fastest_us = cand
        .iter()
        .map(|&i| u64::from(backends[i as usize].latency_us()))
        .filter(|&us| us != 0)
        .min()
        .unwrap_or(0);
    let mut best: Option<(usize, Wait)> = None;
    for &i in cand {
        let b = &backends[i as usize];
        let per_request = per_request_us(b.latency_us(), fastest_us, explore);
        let wait = Wait::of(b, per_request, now_us, report_ttl_ms);
        if best.is_none_or(|(_, w)| wait.shorter_than(w)) {
            best = Some((i as usize, wait));
        }
    }
    best.map(|(i, w)| (i, Some(w.inflight)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendAddr, BackendSource, Upstream};
    use crate::upstream::pool::Pool;

    /// A pool of backends with these weights (addresses 127.0.0.1:1, :2, ...).
    fn pool(weights: &[u32]) -> Arc<Pool> {
        let backends = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| BackendAddr {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 1 + i as u16)),
                weight,
            })
            .collect();
        let up = Upstream::with_defaults("sel", BackendSource::Static(backends));
        Pool::build(&up).unwrap_or_else(|e| panic!("{e}"))
    }

    fn pick(sel: &Selector, pool: &Pool, tried: &Tried, hash: u64) -> Option<usize> {
        sel.pick(pool.backends(), tried, Cap::Unlimited, hash, Duration::ZERO)
            .map(|(i, _)| i)
    }

    #[test]
    fn round_robin_follows_the_weights_interleaved() {
        let pool = pool(&[3, 1]);
        let sel = Selector::round_robin(pool.backends());
        let picks: Vec<usize> = (0..40)
            .map(|_| pick(&sel, &pool, &Tried::default(), 0).unwrap_or(usize::MAX))
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 30, "{picks:?}");
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 10, "{picks:?}");
        // Interleaved, not in blocks: the light backend comes at least every 4 picks.
        assert!(picks.windows(5).all(|w| w.contains(&1)), "{picks:?}");
    }

    #[test]
    fn round_robin_skips_a_backend_already_tried() {
        let pool = pool(&[1, 1, 1]);
        let sel = Selector::round_robin(pool.backends());
        let mut tried = Tried::default();
        tried.push(1);
        for _ in 0..9 {
            assert_ne!(pick(&sel, &pool, &tried, 0), Some(1));
        }
        tried.push(0);
        tried.push(2);
        assert_eq!(pick(&sel, &pool, &tried, 0), None);
    }

    #[test]
    fn consistent_hash_moves_only_the_keys_of_a_backend_that_is_out() {
        let pool = pool(&[1, 1, 1, 1]);
        let sel = Selector::consistent_hash(pool.backends());
        let mut rng = fastrand::Rng::with_seed(7);
        let keys: Vec<u64> = (0..2000).map(|_| rng.u64(..)).collect();
        let home: Vec<usize> = keys
            .iter()
            .map(|&k| pick(&sel, &pool, &Tried::default(), k).unwrap_or(usize::MAX))
            .collect();
        // Every backend holds a fair share of the keys (within 2x of a quarter).
        for b in 0..4 {
            let n = home.iter().filter(|&&h| h == b).count();
            assert!((250..=1000).contains(&n), "backend {b} holds {n} of 2000");
        }
        // The same key always lands on the same backend.
        for (&k, &h) in keys.iter().zip(&home) {
            assert_eq!(pick(&sel, &pool, &Tried::default(), k), Some(h));
        }
        // With backend 2 out, only its keys move, and they spread over the others.
        let mut out = Tried::default();
        out.push(2);
        let mut moved_to = [0usize; 4];
        for (&k, &h) in keys.iter().zip(&home) {
            let now = pick(&sel, &pool, &out, k).unwrap_or(usize::MAX);
            if h == 2 {
                assert_ne!(now, 2);
                moved_to[now] += 1;
            } else {
                assert_eq!(now, h, "a key of backend {h} moved");
            }
        }
        assert!(
            moved_to.iter().filter(|&&n| n > 0).count() >= 2,
            "{moved_to:?}"
        );
    }
}
