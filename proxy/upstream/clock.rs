//! The monotonic clock behind every balancing timer (request ages, ejection, slow
//! start, the retry budget), read through tokio so unit tests can pause and advance it.

use std::sync::OnceLock;

use tokio::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the first call in this process (never 0 after the first µs).
///
/// tokio's clock is the system's monotonic clock, except under a paused test
/// runtime, where it only moves with `tokio::time::advance`.
#[inline]
pub(super) fn now_us() -> u64 {
    let start = *START.get_or_init(Instant::now);
    Instant::now().saturating_duration_since(start).as_micros() as u64 + 1
}

/// Milliseconds since the first call in this process (never 0 after the first ms).
#[inline]
pub(super) fn now_ms() -> u64 {
    now_us() / 1000 + 1
}
