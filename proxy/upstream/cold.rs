//! An upstream's cold periods (no replica ready) and its `wake` call in each: one
//! call at a time, none after a success in the same period, a failed one retried
//! with capped exponential backoff.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::clock;

/// The wait after the first failed wake call of a period; it doubles per failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two wake calls of a period.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Whether the upstream is in a cold period, and the state of its wake call.
#[derive(Debug, Default)]
pub(crate) struct ColdPeriod {
    /// In a cold period; read without the lock so that a ready replica's health
    /// checks cost one atomic load.
    cold: AtomicBool,
    wake: Mutex<WakeCall>,
}

#[derive(Debug, Default)]
struct WakeCall {
    /// Which cold period (counted from 1) the state below belongs to.
    period: u64,
    in_flight: bool,
    succeeded: bool,
    /// Failed calls in a row this period.
    failures: u32,
    /// Not before this clock time (ms) may the next call be made.
    retry_at_ms: u64,
}

/// What a finished wake call leaves to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterWake {
    /// Nothing: it succeeded, or its cold period is over.
    Done,
    /// It failed: call again after this long, if requests are still waiting
    /// ([`ColdPeriod::retry_due`]) or a new one arrives ([`ColdPeriod::wake_due`]).
    RetryIn(Duration),
}

impl ColdPeriod {
    fn lock(&self) -> MutexGuard<'_, WakeCall> {
        // Every change under this lock is a few plain stores: a poisoned lock is usable.
        self.wake.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request found no replica ready: starts a cold period if none is running.
    /// Returns the period's number when this caller must make the wake call: the
    /// first of the period, or the first after a failed call's backoff ran out;
    /// `None` while a call is in flight, after a success, or during the backoff.
    pub(crate) fn wake_due(&self) -> Option<u64> {
        let mut w = self.lock();
        if !self.cold.swap(true, Ordering::AcqRel) {
            *w = WakeCall {
                period: w.period + 1,
                in_flight: true,
                ..WakeCall::default()
            };
            return Some(w.period);
        }
        Self::take_retry(&mut w)
    }

    /// After a failed call's backoff, while requests of `period` are still
    /// waiting: `true` when the caller must call again (nothing else did).
    pub(crate) fn retry_due(&self, period: u64) -> bool {
        let mut w = self.lock();
        w.period == period
            && self.cold.load(Ordering::Acquire)
            && Self::take_retry(&mut w).is_some()
    }

    fn take_retry(w: &mut WakeCall) -> Option<u64> {
        if w.in_flight || w.succeeded || w.failures == 0 || clock::now_ms() < w.retry_at_ms {
            return None;
        }
        w.in_flight = true;
        Some(w.period)
    }

    /// The wake call of `period` finished (`ok`: a 2xx answer).
    pub(crate) fn wake_finished(&self, period: u64, ok: bool) -> AfterWake {
        let mut w = self.lock();
        if w.period != period {
            return AfterWake::Done; // a later period has its own call
        }
        w.in_flight = false;
        if ok {
            w.succeeded = true;
            return AfterWake::Done;
        }
        w.failures += 1;
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << (w.failures - 1).min(16))
            .min(MAX_BACKOFF);
        w.retry_at_ms = clock::now_ms() + backoff.as_millis() as u64;
        if self.cold.load(Ordering::Acquire) {
            AfterWake::RetryIn(backoff)
        } else {
            AfterWake::Done
        }
    }

    /// A replica is ready again: the next cold period wakes the upstream anew.
    pub(crate) fn end(&self) {
        if self.cold.load(Ordering::Relaxed) {
            let _w = self.lock();
            self.cold.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failed_wake_is_retried_with_backoff_and_a_success_is_not_repeated() {
        let c = ColdPeriod::default();
        let p = c
            .wake_due()
            .unwrap_or_else(|| panic!("the first request wakes"));
        assert_eq!(c.wake_due(), None, "never two calls in flight");
        assert_eq!(c.wake_finished(p, false), AfterWake::RetryIn(FIRST_BACKOFF));
        assert_eq!(c.wake_due(), None, "not during the backoff");
        assert!(!c.retry_due(p));
        tokio::time::advance(FIRST_BACKOFF).await;
        assert!(c.retry_due(p), "held requests retry after 1 s");
        assert_eq!(c.wake_due(), None, "the retry is in flight");
        assert!(!c.retry_due(p));
        assert_eq!(
            c.wake_finished(p, false),
            AfterWake::RetryIn(2 * FIRST_BACKOFF)
        );
        tokio::time::advance(2 * FIRST_BACKOFF).await;
        assert_eq!(c.wake_due(), Some(p), "a new request retries after 2 s");
        assert_eq!(c.wake_finished(p, true), AfterWake::Done);
        tokio::time::advance(MAX_BACKOFF).await;
        assert_eq!(c.wake_due(), None, "never again after a success");
        assert!(!c.retry_due(p));
        // A new cold period wakes anew; the old period's late answer changes nothing.
        c.end();
        let q = c.wake_due().unwrap_or_else(|| panic!("a new period wakes"));
        assert_eq!(q, p + 1);
        assert_eq!(c.wake_finished(p, false), AfterWake::Done);
        assert_eq!(
            c.wake_due(),
            None,
            "the new period's call is still in flight"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_doubles_up_to_30_s_and_ends_with_the_period() {
        let c = ColdPeriod::default();
        let p = c
            .wake_due()
            .unwrap_or_else(|| panic!("the first request wakes"));
        let mut waits = Vec::new();
        for _ in 0..7 {
            match c.wake_finished(p, false) {
                AfterWake::RetryIn(d) => waits.push(d.as_secs()),
                AfterWake::Done => panic!("still cold"),
            }
            tokio::time::advance(MAX_BACKOFF).await;
            assert!(c.retry_due(p));
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        c.end();
        assert_eq!(c.wake_finished(p, false), AfterWake::Done);
        assert!(!c.retry_due(p), "a period that ended is not retried");
    }
}
