//! Per-route rate limits: GCRA (governor) over a key store of bounded size.
//!
//! Each route keeps one GCRA state per key (client IP, a header's value, or the
//! consumer), stored as a 64-bit hash of the key so an entry costs the same whatever
//! the key. The store never holds more than `max_keys` entries: a key that arrives
//! when it is full shares one overflow bucket with every other such key until
//! [`RateLimit::evict`] (run every second) drops the keys whose bucket is full again.
//! A flood of new keys is thus limited as one client and cannot push out, or reset,
//! the buckets of clients already known.

use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::Quota;

use crate::config::RateLimit as RateLimitConfig;

/// A key store of at most `cap` GCRA states plus a shared overflow state.
#[derive(Debug)]
pub(crate) struct BoundedStore {
    map: DashMap<u64, InMemoryState, foldhash::fast::FixedState>,
    overflow: InMemoryState,
    cap: usize,
    /// Entries in `map` (DashMap's own `len` locks every shard).
    len: AtomicUsize,
}

impl BoundedStore {
    fn new(cap: usize) -> Self {
        BoundedStore {
            map: DashMap::with_hasher(foldhash::fast::FixedState::default()),
            overflow: InMemoryState::default(),
            cap,
            len: AtomicUsize::new(0),
        }
    }
}

impl StateStore for BoundedStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if self.len.load(Ordering::Relaxed) >= self.cap {
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let entry = self.map.entry(*key).or_insert_with(|| {
            self.len.fetch_add(1, Ordering::Relaxed);
            InMemoryState::default()
        });
        entry.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<u64> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let mut removed = 0;
        self.map.retain(|_, state| {
            // Reads the state's theoretical arrival time without changing it.
            let tat = state
                .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>)
                .err()
                .flatten()
                .map_or(0, Nanos::as_u64);
            let keep = tat > drop_below.as_u64();
            removed += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(removed, Ordering::Relaxed);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type Limiter<C> =
    governor::RateLimiter<u64, BoundedStore, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One route's rate limit.
pub struct RateLimit<C: Clock = DefaultClock> {
    limiter: Limiter<C>,
    /// Seeds key hashes, so clients cannot aim many keys at one entry.
    hasher: foldhash::fast::RandomState,
    config: RateLimitConfig,
}

impl<C: Clock> std::fmt::Debug for RateLimit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("config", &self.config)
            .field("keys", &self.keys())
            .finish()
    }
}

impl RateLimit<DefaultClock> {
    pub fn new(config: &RateLimitConfig) -> Self {
        RateLimit::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock> RateLimit<C> {
    /// A limit of `requests_per_second` with bursts of `burst`, on `clock`.
    pub fn with_clock(config: &RateLimitConfig, clock: C) -> Self {
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        let period =
            Duration::from_secs_f64(1.0 / config.requests_per_second).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        RateLimit {
            limiter: governor::RateLimiter::new(quota, BoundedStore::new(config.max_keys), clock),
            hasher: foldhash::fast::RandomState::default(),
            config: config.clone(),
        }
    }

    /// The settings this limit was built from (kept across reloads when unchanged).
    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Takes one token from `key`'s bucket. `Err` carries the whole seconds until a
    /// token is free (at least 1), for `Retry-After`.
    pub fn check(&self, key: &[u8]) -> Result<(), u64> {
        let hash = self.hasher.hash_one(key);
        self.limiter.check_key(&hash).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
        })
    }

    /// Drops the keys whose bucket is full again (indistinguishable from a new key),
    /// and returns the memory of a map that shrank by more than half.
    pub fn evict(&self) {
        let before = self.keys();
        self.limiter.retain_recent();
        if self.keys() < before / 2 {
            self.limiter.shrink_to_fit();
        }
    }

    /// Keys tracked now (never more than `max_keys`).
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;
    use crate::config::RateKey;

    fn config(rps: f64, burst: u32, max_keys: usize) -> RateLimitConfig {
        RateLimitConfig {
            requests_per_second: rps,
            burst,
            key: RateKey::ClientAddr,
            max_keys,
        }
    }

    #[test]
    fn burst_then_steady_rate_with_retry_after() {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::with_clock(&config(0.5, 3, 10), clock.clone());
        for _ in 0..3 {
            assert_eq!(limit.check(b"a"), Ok(()));
        }
        // One token every 2 s.
        assert_eq!(limit.check(b"a"), Err(2));
        assert_eq!(limit.check(b"b"), Ok(()), "keys have their own buckets");
        clock.advance(Duration::from_millis(1500));
        assert_eq!(limit.check(b"a"), Err(1));
        clock.advance(Duration::from_millis(500));
        assert_eq!(limit.check(b"a"), Ok(()));
        assert_eq!(limit.check(b"a"), Err(2));
    }

    #[test]
    fn a_million_keys_stay_within_max_keys_and_idle_keys_go() {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::with_clock(&config(10.0, 2, 50_000), clock.clone());
        // A known client, then a flood of one-off keys.
        assert_eq!(limit.check(b"known"), Ok(()));
        let mut overflow_limited = 0;
        for i in 0u32..1_000_000 {
            if limit.check(&i.to_le_bytes()).is_err() {
                overflow_limited += 1;
            }
            assert!(limit.keys() <= 50_000);
        }
        assert_eq!(limit.keys(), 50_000);
        // Keys beyond the cap share one bucket: nearly all of them were refused.
        assert!(
            overflow_limited >= 1_000_000 - 50_000 - 2,
            "{overflow_limited}"
        );
        // The known client keeps its own bucket through the flood.
        assert_eq!(limit.check(b"known"), Ok(()));
        assert_eq!(limit.check(b"known"), Err(1));
        // Once buckets are full again (burst 2 at 10/s: 200 ms; governor keeps a key
        // one emission interval longer), eviction empties the store.
        clock.advance(Duration::from_millis(300));
        limit.evict();
        assert_eq!(limit.keys(), 0);
        assert_eq!(limit.check(&7u32.to_le_bytes()), Ok(()));
        assert_eq!(limit.keys(), 1);
    }

    #[test]
    fn recently_used_keys_survive_eviction() {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::with_clock(&config(1.0, 1, 100), clock.clone());
        assert_eq!(limit.check(b"a"), Ok(()));
        clock.advance(Duration::from_millis(500));
        assert_eq!(limit.check(b"b"), Ok(()));
        // governor drops a key one emission interval (1 s) after its bucket is full:
        // a's at 2 s, b's at 2.5 s.
        clock.advance(Duration::from_millis(1700));
        limit.evict();
        assert_eq!(limit.keys(), 1, "a is evicted, b is kept");
        assert_eq!(limit.check(b"b"), Ok(()));
        assert_eq!(limit.keys(), 1, "b was still there");
        assert_eq!(limit.check(b"a"), Ok(()));
        assert_eq!(limit.keys(), 2, "a came back as a new key");
    }
}
