//! The retry budget: over a sliding window, retries may be at most a share of
//! requests, so a failing pool is not hit with a multiple of its normal load.

use std::sync::atomic::{AtomicU64, Ordering};

use super::clock;
use crate::config::RetryBudget;

const SLOTS: usize = 10;

/// Requests and retries per tenth of the window, in a ring of atomic counters.
#[derive(Debug)]
pub(super) struct Budget {
    percent: u64,
    min_retries: u64,
    slot_ms: u64,
    /// Per slot: the slot's epoch (clock ms / slot_ms), requests, retries.
    epochs: [AtomicU64; SLOTS],
    requests: [AtomicU64; SLOTS],
    retries: [AtomicU64; SLOTS],
}

impl Budget {
    pub(super) fn new(cfg: &RetryBudget) -> Self {
        Budget {
            percent: u64::from(cfg.percent),
            min_retries: u64::from(cfg.min_retries),
            slot_ms: (cfg.window.as_millis() as u64 / SLOTS as u64).max(1),
            epochs: Default::default(),
            requests: Default::default(),
            retries: Default::default(),
        }
    }

    /// The current slot, cleared first if it belongs to an older epoch.
    #[inline]
    fn slot(&self) -> usize {
        let epoch = clock::now_ms() / self.slot_ms;
        let i = (epoch % SLOTS as u64) as usize;
        let seen = self.epochs[i].load(Ordering::Relaxed);
        if seen != epoch
            && self.epochs[i]
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.requests[i].store(0, Ordering::Relaxed);
            self.retries[i].store(0, Ordering::Relaxed);
        }
        i
    }

    /// Counts a request (its first attempt).
    #[inline]
    pub(super) fn record_request(&self) {
        self.requests[self.slot()].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if the window allows it.
    pub(super) fn try_retry(&self) -> bool {
        let current = self.slot();
        let epoch = clock::now_ms() / self.slot_ms;
        let (mut requests, mut retries) = (0, 0);
        for i in 0..SLOTS {
            if epoch.saturating_sub(self.epochs[i].load(Ordering::Relaxed)) < SLOTS as u64 {
                requests += self.requests[i].load(Ordering::Relaxed);
                retries += self.retries[i].load(Ordering::Relaxed);
            }
        }
        let allowed = (requests * self.percent / 100).max(self.min_retries);
        if retries < allowed {
            self.retries[current].fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retries_are_capped_at_a_share_of_requests() {
        let b = Budget::new(&RetryBudget {
            percent: 20,
            window: Duration::from_secs(60),
            min_retries: 3,
        });
        for _ in 0..100 {
            b.record_request();
        }
        let granted = (0..100).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn a_few_retries_are_always_allowed() {
        let b = Budget::new(&RetryBudget {
            percent: 20,
            window: Duration::from_secs(60),
            min_retries: 3,
        });
        b.record_request();
        assert_eq!((0..10).filter(|_| b.try_retry()).count(), 3);
    }
}
