//! Backend selection policies: least outstanding, weighted round robin, consistent hash.
//!
//! Each policy picks among backends that are available, not yet tried by this request,
//! and below their in-flight cap; the pool then takes the slot atomically.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::backend::Backend;

/// Most attempts one request can make (the first plus `retries`, which is at most 10).
pub const MAX_ATTEMPTS: usize = 12;

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
pub enum Selector {
    LeastOutstanding,
    RoundRobin {
        schedule: Box<[u32]>,
        cursor: AtomicUsize,
    },
    ConsistentHash {
        /// Sorted by hash.
        ring: Box<[(u64, u32)]>,
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
    pub fn least_outstanding() -> Self {
        Selector::LeastOutstanding
    }

    /// Interleaved weighted round robin (stride scheduling): weights 3,1 give a,a,b,a.
    pub fn round_robin(backends: &[Arc<Backend>]) -> Self {
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
    pub fn consistent_hash(backends: &[Arc<Backend>]) -> Self {
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

    /// Index of the backend to try next, or `None` when no backend is eligible.
    /// `hash` is only read by consistent hashing.
    pub fn pick(
        &self,
        backends: &[Arc<Backend>],
        tried: &Tried,
        cap: u32,
        hash: u64,
        slow_start: Duration,
    ) -> Option<usize> {
        let ok = |i: usize| eligible(&backends[i], i, tried, cap, slow_start);
        match self {
            Selector::LeastOutstanding => least_outstanding(backends, ok),
            Selector::RoundRobin { schedule, cursor } => {
                let n = schedule.len();
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| schedule[(start + k) % n] as usize)
                    .find(|&i| ok(i))
            }
            Selector::ConsistentHash { ring } => {
                if ring.is_empty() {
                    return None;
                }
                let start = ring.partition_point(|&(h, _)| h < hash);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1 as usize)
                    .find(|&i| ok(i))
            }
        }
    }
}

/// Latency assumed for a backend not measured yet: low, so it is tried soon.
const UNMEASURED_US: u32 = 1_000;
/// One pick in this many ignores latency, so every replica keeps being measured
/// (a replica that was slow once is not shunned forever).
const EXPLORE_ONE_IN: u8 = 16;

/// Latency class: replicas within 2x of each other count as equally fast (ties go
/// to a random one); each doubling doubles the weight of a request in flight.
#[inline]
fn latency_class(b: &Backend) -> u32 {
    b.latency_us().max(UNMEASURED_US).ilog2()
}

/// Least in-flight per unit of weight, each request in flight weighed by the
/// backend's recent latency class, so a replica that answers 4x slower gets work
/// only when the fast ones are 4x as busy. Small pools are scanned from a random offset
/// (ties go to a random backend); large pools use the power of two random choices.
fn least_outstanding(backends: &[Arc<Backend>], ok: impl Fn(usize) -> bool) -> Option<usize> {
    let n = backends.len();
    if n == 0 {
        return None;
    }
    // Expected wait on a backend: (in flight + this one) x its latency class, per
    // unit of weight. a is lighter than b when cost_a / w_a < cost_b / w_b.
    let by_latency = fastrand::u8(..EXPLORE_ONE_IN) != 0;
    let cost = |b: &Backend| {
        let queue = u64::from(b.inflight()) + 1;
        if by_latency {
            queue << latency_class(b).min(31)
        } else {
            queue
        }
    };
    let lighter = |a: usize, b: usize| {
        let (ba, bb) = (&backends[a], &backends[b]);
        cost(ba) * u64::from(bb.weight()) < cost(bb) * u64::from(ba.weight())
    };
    if n > FULL_SCAN_MAX {
        let mut picks = [usize::MAX; 2];
        let mut found = 0;
        for _ in 0..8 {
            let i = fastrand::usize(..n);
            if picks[0] != i && ok(i) {
                picks[found] = i;
                found += 1;
                if found == 2 {
                    break;
                }
            }
        }
        if found == 2 {
            let [a, b] = picks;
            return Some(if lighter(b, a) { b } else { a });
        }
        // Sampling kept missing: most backends are out; fall back to a full scan.
    }
    let start = fastrand::usize(..n);
    let mut best: Option<usize> = None;
    for k in 0..n {
        let i = (start + k) % n;
        if ok(i) && best.is_none_or(|b| lighter(i, b)) {
            best = Some(i);
        }
    }
    best
}
