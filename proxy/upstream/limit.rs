//! Learned concurrency limit per replica, for `max_inflight = "auto"`.
//!
//! The limit is the number of requests the replica may run at once; more wait in
//! the upstream's queue, where they are visible and bounded. It is learned from
//! what the proxy sees, in the manner of TCP Vegas (Brakmo and Peterson, "TCP
//! Vegas: End to End Congestion Avoidance on a Global Internet", 1995) as adapted
//! to request concurrency by Netflix's concurrency-limits library (`VegasLimit`,
//! `AIMDLimit`): compare the time to answer when the replica is full with the time
//! when it is idle; a replica that queues inside answers later the more it holds.
//!
//! - **Baseline**: the times to response headers of the last [`BASELINE`]
//!   requests sent to an idle replica (nothing else of ours running there), and
//!   of the full windows that showed no queueing (so it follows the replica
//!   while it is never idle).
//! - **Full**: the times of requests sent while the replica held at least
//!   `limit` (and at least 2), over windows of [`WINDOW`] answers.
//! - At each full window, `ratio = full / baseline`, of medians for a probe and
//!   of lower quartiles for a settled limit (below). At most
//!   [`NO_QUEUEING_BELOW`] the replica does not queue: the limit steps up
//!   (doubling in slow start, as TCP does, then by one). One request queued
//!   inside a replica that runs `L − 1` at once makes the ratio up to
//!   `L / (L − 1)`, so above [`queueing_above`]`(L) = max(1.2, 1 + 1 / (3 (L − 1)))`
//!   in [`STRIKES`] windows in a row (fewer may be a busy host) it queues: the
//!   limit steps down (to the last good value while still in slow start). In
//!   between it holds. With the limit at 1 no request is ever sent to a full
//!   replica, so a window of answers at the limit lets it try 2; in slow start
//!   one round of [`MIN_BASELINE`] answers does (TCP's slow start likewise grows
//!   every round trip, RFC 5681 3.1), so a replica with room is not held at 1
//!   while the queue fills: measured on a replica with a knee at 4 behind 16
//!   clients, waiting for a window at 1 was most of what learning cost.
//! - An answer of 429 or 503 (the replica says it is overloaded) cuts the limit at
//!   once to at most 0.9 × limit and below the count it was sent at (AIMD's
//!   multiplicative decrease).
//! - A raised limit is a probe, and probing costs: requests sent above a replica's
//!   knee wait inside it, behind whatever it runs. So a probe is judged on its
//!   first [`PROBE_WINDOW`] answers at the new limit and stays only if most of
//!   them show no queueing; it is decided as soon as a majority agrees (the
//!   window median's verdict, reached early), and steps back at once otherwise
//!   (a wrongly failed probe only delays the next one). Answers to requests
//!   sent at the new limit while those of the old one still ran (not judged,
//!   below) count against it when they queued. One answer decides at once when
//!   it shows the request waiting for a slot (see `State::waited_for_a_slot`:
//!   answered a whole request's time after another answer that came well
//!   after it was sent), the signature of a replica that serves one at a time,
//!   which then waits 4x longer before the next probe, not 2x. A failed probe
//!   of such a replica thus costs the request that decided it and the one sent
//!   behind it meanwhile, where the majority took 4 answers and a whole window
//!   of 7 took 8.
//! - A step down of a settled limit is checked like a probe: queueing inside
//!   the replica makes it answer faster with one request fewer (by about `1 / L`
//!   when it slows in proportion past its knee), while a busy host, or harder
//!   requests, slow every concurrency alike. If the first [`PROBE_WINDOW`]
//!   answers at `L − 1` are not faster by a third of that, the limit goes back
//!   to `L` with no backoff, and the baseline moves to what the replica takes
//!   now (Vegas's base RTT likewise has to be re-measured when the path
//!   changes; Netflix's `VegasLimit` resets its no-load RTT every
//!   `probeMultiplier` × limit samples). Measured on a paused clock with a
//!   replica whose knee is 4 and a host 1.5x slower for 3 s in every 15 s: the
//!   limit sat below the knee at 74% of answers without the check, under 2%
//!   with it.
//! - After any change, requests sent before the last request of the old limit
//!   is answered are not judged: the replica ran them beside requests sent at the
//!   old limit, so on a replica whose knee lies between the two they look as
//!   fast as below it (measured: a probe from 4 to 8 on a replica with a knee at
//!   4 judged that way saw no queueing on a loaded host and doubled to 16).
//! - Every decrease doubles how many windows pass before the next step up (up to
//!   [`MAX_PROBE_BACKOFF`]; a probe answered by a request that waited for a
//!   slot quadruples it), and the next step up also waits [`PROBE_HOLD`] times
//!   that factor in time (15 s, 30 s, ... up to [`MAX_PROBE_HOLD`]; 15 s, 60 s,
//!   240 s, 320 s for a replica that serves one at a time), so a replica
//!   whose knee has been found is probed past it rarely in wall time too,
//!   however fast its windows fill; a step up whose first window finds no
//!   queueing resets that. Envoy's adaptive concurrency filter likewise
//!   re-measures its minimum RTT only every `min_rtt_calc_interval` (60 s by
//!   default).
//!
//! Medians and lower quartiles, never means: model requests vary in size by
//! orders of magnitude, and in a window of 16 with one request in ten 20x longer
//! the mean swings by half either way. A probe is kept only if its median shows
//! no queueing, so most of its answers must not have waited (on a loaded host
//! a few requests sent to a replica that serves one at a time find it idle
//! anyway, in the gaps the proxy leaves between answers and new requests, and
//! would carry a lower quartile); a wrong refusal only delays the next probe. A
//! settled limit steps down only when even the lower quartile of its windows
//! rises, because a busy host only adds time: window medians reached 1.9x the
//! baseline with no queueing on a loaded 2-core machine, while queueing inside
//! the replica delays even its quickest answers (TCP Vegas likewise keeps the
//! least round-trip time seen as its base).
//!
//! A replica that never fills up (light load) keeps its limit: nothing is learned
//! about a knee no request reached.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::clock;

/// Answers per decision.
pub(super) const WINDOW: usize = 16;
/// Answers at a just-raised limit that decide whether it stays (by majority),
/// and answers after a step down that check it. Five, not more: in a seeded
/// simulation of three replicas that serve one request at a time under mixed
/// 1 s / 50 ms requests (`upstream::sed_tests`), probes decided by the majority
/// of 7 sent 1.2x as many requests behind a busy replica.
pub(super) const PROBE_WINDOW: usize = 5;
/// Answers of a probe's first window that decide it (a majority).
pub(super) const PROBE_MAJORITY: usize = PROBE_WINDOW / 2 + 1;
/// The least time between a step down and the next step up, per unit of backoff.
/// Each probe of a replica that serves one request at a time sends a few
/// requests behind a running one: in the seeded simulation of benchmark (b)
/// (`upstream::sed_tests`, 80 minutes) the short requests' p99 was 4.4% over a
/// hand-set limit of 1 with holds from 5 s, 2.9% from 10 s, 1.9% from 20 s
/// (1.2% with no probe after slow start's).
pub(super) const PROBE_HOLD: Duration = Duration::from_secs(15);
/// The longest hold before a step up.
pub(super) const MAX_PROBE_HOLD: Duration = Duration::from_secs(320);
/// Answers to an idle replica kept for the baseline.
pub(super) const BASELINE: usize = 32;
/// `full / baseline` at or below which the limit may grow.
pub(super) const NO_QUEUEING_BELOW: f64 = 1.1;
/// The most windows skipped before trying a higher limit again.
pub(super) const MAX_PROBE_BACKOFF: u32 = 64;
/// Windows in a row at a settled limit that must show queueing before it steps down.
pub(super) const STRIKES: u32 = 3;
/// Baseline answers needed before any judgement.
pub(super) const MIN_BASELINE: usize = 4;

/// `full / baseline` above which a replica at limit `limit` (at least 2) is judged
/// to queue inside: a third of the way to what one queued request would show at
/// most, and never under 1.2 so noise at large limits does not read as queueing.
pub(super) fn queueing_above(limit: u32) -> f64 {
    (1.0 + 1.0 / (3.0 * f64::from(limit.max(2) - 1))).max(1.2)
}

/// The bounds of a learned limit (`max_inflight_min`, `max_inflight_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
}

/// One answer, as the limit learner sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answer {
    /// Time to response headers, in microseconds.
    pub took_us: u64,
    /// Requests of ours the replica was running when this one was sent, this one
    /// included (so at least 1).
    pub concurrency: u32,
    /// The replica answered 429 or 503.
    pub overloaded: bool,
    /// When the request was sent (µs on the balancing clock).
    pub sent_us: u64,
    /// Requests of ours the replica holds as this answer arrives, this one
    /// included.
    pub inflight: u32,
}

/// A replica's learned concurrency limit. The current limit is one atomic read;
/// answers are folded in under a short lock (only on upstreams with
/// `max_inflight = "auto"`).
#[derive(Debug)]
pub(crate) struct LimitLearner {
    limit: AtomicU32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The last answers to an idle replica (a ring), and how many were ever seen.
    baseline: [u64; BASELINE],
    baseline_n: usize,
    /// This window's answers from a full replica.
    full: [u64; WINDOW],
    full_n: usize,
    /// Answers at the limit while the limit is 1 (no full samples can exist).
    at_limit_n: usize,
    slow_start: bool,
    last_good: u32,
    /// Windows left before the next step up, and the current backoff.
    probe_wait: u32,
    probe_backoff: u32,
    /// No step up before this clock time (µs).
    hold_until_us: u64,
    /// The limit was just raised and its first full window is not judged yet.
    probing: bool,
    /// Full windows in a row that showed queueing.
    strikes: u32,
    /// The longest answer since the limit last changed (µs).
    round_us: u64,
    /// When the limit last changed (µs), and how many requests sent before are
    /// still unanswered.
    changed_us: u64,
    unanswered: u32,
    /// Requests sent before this clock time (µs) are not judged at the current
    /// limit: some of what the replica ran beside them was sent at the last one.
    judge_from_us: u64,
    /// Requests in flight as the answer being folded in arrived.
    held: u32,
    /// A step down of a settled limit waiting for its check.
    check: Option<Check>,
    /// When (clock µs) the answer before the one being folded in arrived.
    last_answer_us: u64,
}

/// A step down of a settled limit, to be checked (see [`State::verify_step_down`]).
#[derive(Debug, Clone, Copy)]
struct Check {
    /// The limit it stepped down from.
    from: u32,
    /// The lower quartile (µs) of the last slow window there.
    slow_us: u64,
    /// `probe_wait`, `hold_until_us` and `probe_backoff` before the step.
    undo: (u32, u64, u32),
}

impl LimitLearner {
    /// A learner starting at `initial` (the bounds' minimum, normally), in slow start.
    pub(crate) fn new(initial: u32) -> Self {
        LimitLearner {
            limit: AtomicU32::new(initial.max(1)),
            state: Mutex::new(State {
                baseline: [0; BASELINE],
                baseline_n: 0,
                full: [0; WINDOW],
                full_n: 0,
                at_limit_n: 0,
                slow_start: true,
                last_good: initial.max(1),
                probe_wait: 0,
                probe_backoff: 1,
                hold_until_us: 0,
                probing: false,
                strikes: 0,
                round_us: 0,
                changed_us: 0,
                unanswered: 0,
                judge_from_us: 0,
                held: 0,
                check: None,
                last_answer_us: 0,
            }),
        }
    }

    /// The current limit, within `b`.
    #[inline]
    pub(crate) fn limit(&self, b: Bounds) -> u32 {
        self.limit
            .load(Ordering::Relaxed)
            .clamp(b.min.max(1), b.max.max(1))
    }

    /// Folds one answer in; returns the new limit when it changed.
    pub(crate) fn on_answer(&self, a: Answer, b: Bounds) -> Option<u32> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let limit = self.limit(b);
        let next = s.fold(a, limit, b);
        let next = next.clamp(b.min.max(1), b.max.max(1));
        if next == limit {
            return None;
        }
        self.limit.store(next, Ordering::Relaxed);
        Some(next)
    }
}

impl State {
    fn fold(&mut self, a: Answer, limit: u32, b: Bounds) -> u32 {
        self.held = a.inflight;
        let now_us = clock::now_us();
        let previous_us = std::mem::replace(&mut self.last_answer_us, now_us);
        if a.overloaded {
            let cut = ((f64::from(limit) * 0.9) as u32)
                .min(a.concurrency.saturating_sub(1))
                .max(b.min.max(1));
            return self.stepped_down(cut);
        }
        if a.concurrency <= 1 {
            self.baseline[self.baseline_n % BASELINE] = a.took_us;
            self.baseline_n = self.baseline_n.saturating_add(1);
        }
        self.round_us = self.round_us.max(a.took_us);
        if a.sent_us < self.changed_us && self.unanswered > 0 {
            self.unanswered -= 1;
            if self.unanswered == 0 {
                // The last request sent at the old limit is answered: from now on
                // the replica runs only requests sent at this one.
                self.judge_from_us = self.judge_from_us.min(clock::now_us());
            }
        }
        if a.sent_us < self.judge_from_us {
            // Sent at a raised limit beside requests of the old one, an answer
            // cannot show that the probe does not queue (those made it look as
            // fast as the old limit), but one that did queue counts against it.
            if self.probing
                && a.sent_us >= self.changed_us
                && a.concurrency > self.last_good
                && self
                    .probe_base()
                    .is_some_and(|fast| a.took_us as f64 > fast)
            {
                if self.waited_for_a_slot(&a, previous_us, now_us) {
                    return self.step_back_serial(limit);
                }
                self.full[self.full_n] = a.took_us;
                self.full_n += 1;
                return self.judge_probe(limit);
            }
            return limit;
        }
        if let Some(c) = self.check {
            if a.concurrency >= limit {
                self.full[self.full_n] = a.took_us;
                self.full_n += 1;
                if self.full_n >= PROBE_WINDOW {
                    self.check = None;
                    return self.verify_step_down(limit, c);
                }
            }
            return limit;
        }
        if limit == 1 {
            if a.concurrency == 1 {
                self.at_limit_n += 1;
            }
            // In slow start one round of answers at 1 (enough for a baseline) lets
            // it try 2, as TCP's slow start grows its window every round trip
            // (RFC 5681, 3.1); after a step down it waits for a whole window.
            let round = if self.slow_start {
                MIN_BASELINE
            } else {
                WINDOW
            };
            if self.at_limit_n < round || self.baseline_n < MIN_BASELINE {
                return limit;
            }
            self.at_limit_n = 0;
            return self.step_up(limit);
        }
        if a.concurrency < limit.max(2) {
            return limit;
        }
        if self.probing && self.waited_for_a_slot(&a, previous_us, now_us) {
            return self.step_back_serial(limit);
        }
        self.full[self.full_n] = a.took_us;
        self.full_n += 1;
        if self.probing {
            return self.judge_probe(limit);
        }
        if self.full_n < WINDOW {
            return limit;
        }
        self.full_n = 0;
        if self.baseline_n < MIN_BASELINE {
            return limit;
        }
        // A settled limit steps down only when even the quickest quarter slows.
        // Copies: selection reorders, and the baseline is a ring.
        let (mut full, mut base) = (self.full, self.baseline);
        let full = lower_quartile(&mut full);
        let base = lower_quartile(&mut base[..self.baseline_n.min(BASELINE)]).max(1);
        let ratio = full as f64 / base as f64;
        log::debug!(
            "limit {limit}: lower quartile {full} us at the limit, baseline {base} us, ratio {ratio:.2}"
        );
        if ratio <= NO_QUEUEING_BELOW {
            self.strikes = 0;
            // An uncongested window is a baseline sample too: the baseline follows
            // the replica (and the host) while the replica is never idle.
            self.rebase(full, 1);
            return self.step_up(limit);
        }
        if ratio > queueing_above(limit) {
            // A slow window may be the host, not the replica: act only when
            // STRIKES windows in a row say so, and then check (below).
            self.strikes += 1;
            if self.strikes < STRIKES {
                return limit;
            }
            return self.step_down_checked(limit, full);
        }
        self.strikes = 0;
        self.probe_wait = self.probe_wait.saturating_sub(1);
        limit
    }

    /// Judges a probe (a just-raised limit) as its answers arrive: it stays when
    /// most of its first [`PROBE_WINDOW`] answers show no queueing, and steps back
    /// as soon as most cannot. That is the verdict of the window's median, reached
    /// as soon as it is known: a probe of a replica that serves one at a time
    /// fails after 3 answers that each waited behind another request, not 7.
    fn judge_probe(&mut self, limit: u32) -> u32 {
        let n = self.full_n;
        let Some(fast) = self.probe_base() else {
            if n >= PROBE_WINDOW {
                self.full_n = 0;
            }
            return limit;
        };
        let good = self.full[..n].iter().filter(|&&t| t as f64 <= fast).count();
        if good < PROBE_MAJORITY && n - good < PROBE_MAJORITY {
            return limit;
        }
        self.full_n = 0;
        let mut full = self.full;
        let med = median(&mut full[..n]);
        log::debug!(
            "limit {limit} (probe): {good} of {n} answers within {fast:.0} us, median {med} us"
        );
        if good >= PROBE_MAJORITY {
            self.strikes = 0;
            self.rebase(med, 1);
            // The raised limit did not queue: the next probe may come soon.
            self.probe_backoff = 1;
            return self.step_up(limit);
        }
        // A probe stays only if it showed no queueing: one that is merely not
        // clearly worse (a replica that queues a little, or a busy host) costs its
        // users as much, and is tried again after the backoff.
        self.step_back(limit)
    }

    /// Did this answer, to a request sent at a raised limit, wait for a slot
    /// inside the replica? It did when the replica answered another request
    /// after this one was sent, a good while after (at least a quarter of a
    /// typical request's time), and then this one about one whole request's
    /// time later (between 0.9x the baseline's lower quartile and 1.1x its
    /// median), having taken longer than a request to an idle replica: it
    /// started when the other ended, the signature of a replica that serves one
    /// request at a time (or all its slots were taken). One such answer decides
    /// a probe; answers that run beside others (a replica with room, or one that
    /// slows every request in proportion past its knee) come closer after the
    /// previous answer than a whole request and leave the verdict to the
    /// majority of the probe's window.
    fn waited_for_a_slot(&self, a: &Answer, previous_us: u64, now_us: u64) -> bool {
        if a.concurrency < 2 || previous_us <= a.sent_us || self.baseline_n < MIN_BASELINE {
            return false;
        }
        let mut base = self.baseline;
        let base = &mut base[..self.baseline_n.min(BASELINE)];
        let (median, low) = (median(base) as f64, lower_quartile(base) as f64);
        let waited = (previous_us - a.sent_us) as f64;
        let own = now_us.saturating_sub(previous_us) as f64;
        a.took_us as f64 > median * NO_QUEUEING_BELOW
            && waited >= median / 4.0
            && (0.9 * low..=median * NO_QUEUEING_BELOW).contains(&own)
    }

    /// The longest time (µs) of an answer that shows no queueing at a probe:
    /// [`NO_QUEUEING_BELOW`] times the baseline's median; `None` before
    /// [`MIN_BASELINE`] answers.
    fn probe_base(&self) -> Option<f64> {
        if self.baseline_n < MIN_BASELINE {
            return None;
        }
        let mut base = self.baseline;
        let base = median(&mut base[..self.baseline_n.min(BASELINE)]).max(1);
        Some(base as f64 * NO_QUEUEING_BELOW)
    }

    /// Steps a settled `limit` whose windows slowed (lower quartile `slow_us`) down
    /// by one, to be checked on the first [`PROBE_WINDOW`] answers at the lower
    /// limit (see [`State::verify_step_down`]).
    fn step_down_checked(&mut self, limit: u32, slow_us: u64) -> u32 {
        let undo = (self.probe_wait, self.hold_until_us, self.probe_backoff);
        let down = self.step_back(limit);
        if down < limit {
            self.check = Some(Check {
                from: limit,
                slow_us,
                undo,
            });
        }
        down
    }

    /// The first answers after a step down of a settled limit: queueing inside
    /// the replica makes one request fewer answer faster (by about `1 / from` on
    /// a replica that slows in proportion past its knee); a busy host, or harder
    /// requests, slow every concurrency alike. So the step stays only if the
    /// lower limit's lower quartile beat the slow windows' by a third of that;
    /// otherwise the limit goes back up with no backoff, and the baseline moves
    /// to what the replica takes now (TCP Vegas likewise re-measures its base
    /// round-trip time when the path changes, and Netflix's `VegasLimit` resets
    /// its no-load RTT every `probeMultiplier` × limit samples).
    fn verify_step_down(&mut self, limit: u32, c: Check) -> u32 {
        let mut full = self.full;
        let now_us = lower_quartile(&mut full[..PROBE_WINDOW]);
        self.full_n = 0;
        let needed = c.slow_us as f64 * (1.0 - 1.0 / (3.0 * f64::from(c.from)));
        log::debug!(
            "limit {limit} (after a step down from {}): lower quartile {now_us} us, {} us before, kept below {needed:.0} us",
            c.from,
            c.slow_us
        );
        if (now_us as f64) < needed {
            return limit;
        }
        (self.probe_wait, self.hold_until_us, self.probe_backoff) = c.undo;
        self.rebase(now_us, BASELINE);
        self.strikes = 0;
        self.settle(self.held);
        c.from
    }

    /// Puts `us` into the baseline `times` times (all of it with `BASELINE`).
    fn rebase(&mut self, us: u64, times: usize) {
        for _ in 0..times {
            self.baseline[self.baseline_n % BASELINE] = us;
            self.baseline_n = self.baseline_n.saturating_add(1);
        }
    }

    /// Steps down from `limit`: to the last good limit while in slow start, by
    /// one after.
    fn step_back(&mut self, limit: u32) -> u32 {
        let down = if self.slow_start {
            self.last_good.min(limit - 1)
        } else {
            limit - 1
        };
        self.stepped_down(down)
    }

    /// Steps back from a probe whose answer waited for a slot (see
    /// [`State::waited_for_a_slot`]): the replica showed it cannot run the
    /// raised limit at all, so the backoff grows 4x rather than 2x.
    fn step_back_serial(&mut self, limit: u32) -> u32 {
        let down = self.step_back(limit);
        self.probe_backoff = (self.probe_backoff * 2).min(MAX_PROBE_BACKOFF);
        down
    }

    fn step_up(&mut self, limit: u32) -> u32 {
        self.probing = false;
        if self.probe_wait > 0 {
            self.probe_wait -= 1;
            return limit;
        }
        if self.hold_until_us > clock::now_us() {
            return limit;
        }
        self.probing = true;
        self.last_good = limit;
        self.settle(self.held);
        if self.slow_start {
            limit.saturating_mul(2)
        } else {
            limit + 1
        }
    }

    fn stepped_down(&mut self, to: u32) -> u32 {
        self.slow_start = false;
        self.check = None;
        self.probing = false;
        self.strikes = 0;
        self.full_n = 0;
        self.at_limit_n = 0;
        self.probe_wait = self.probe_backoff;
        self.hold_until_us =
            clock::now_us().saturating_add(Self::hold(self.probe_backoff).as_micros() as u64);
        self.probe_backoff = (self.probe_backoff * 2).min(MAX_PROBE_BACKOFF);
        self.settle(self.held);
        to.max(1)
    }

    /// The hold before a step up after a step down at backoff `backoff`.
    fn hold(backoff: u32) -> Duration {
        PROBE_HOLD.saturating_mul(backoff).min(MAX_PROBE_HOLD)
    }

    /// After a change of limit (the answer that caused it arrived with `held`
    /// requests in flight), judges only requests sent once everything in
    /// flight at the change has been answered: until then the replica still
    /// runs requests sent at the old limit beside them, so what they take
    /// describes neither limit (TCP Vegas likewise changes its window only
    /// every other round trip in slow start, so that a valid comparison can be
    /// made in between).
    fn settle(&mut self, held: u32) {
        let now = clock::now_us();
        // Requests lost without an answer (an error, a client gone) never
        // report: the longest answer since the last change bounds the wait.
        self.judge_from_us = now.saturating_add(self.round_us);
        self.changed_us = now;
        self.unanswered = held.saturating_sub(1);
        if self.unanswered == 0 {
            self.judge_from_us = now;
        }
        self.round_us = 0;
        self.full_n = 0;
        self.at_limit_n = 0;
    }
}

/// The lower median of `v` (reordered); 0 for an empty slice.
fn median(v: &mut [u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    *v.select_nth_unstable((v.len() - 1) / 2).1
}

/// The lower quartile of `v` (reordered); 0 for an empty slice.
fn lower_quartile(v: &mut [u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    *v.select_nth_unstable((v.len() - 1) / 4).1
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds { min: 1, max: 256 };
    const T: u64 = 50_000;

    /// Feeds `n` answers from a replica that is always full (closed-loop clients,
    /// more than the limit): each is sent at the current limit and takes
    /// `took(limit)`; the paused clock moves by `took / limit` per answer (that
    /// many run at once). Returns the limit seen at each answer.
    async fn saturate(l: &LimitLearner, n: usize, took: impl FnMut(u32) -> u64) -> Vec<u32> {
        drive(l, n, u32::MAX, took).await
    }

    /// Feeds `n` answers from a replica that `demand` closed-loop clients keep
    /// busy: each request is sent at `min(limit, demand)` and takes
    /// `took(concurrency)`; the paused clock moves by `took / concurrency` per
    /// answer. Returns the limit seen at each answer.
    async fn drive(
        l: &LimitLearner,
        n: usize,
        demand: u32,
        mut took: impl FnMut(u32) -> u64,
    ) -> Vec<u32> {
        let mut seen = Vec::with_capacity(n);
        for _ in 0..n {
            let limit = l.limit(B);
            let at = limit.min(demand);
            let took_us = took(at);
            tokio::time::advance(Duration::from_micros(took_us / u64::from(at))).await;
            l.on_answer(sent_at(at, took_us), B);
            seen.push(limit);
        }
        seen
    }

    /// A replica that runs `knee` at once in `T` and slows in proportion beyond.
    fn knee(knee: u32) -> impl Fn(u32) -> u64 {
        move |n| T * u64::from(n.max(knee)) / u64::from(knee)
    }

    /// Index of the answer after which slow start is over (the first step down).
    fn after_slow_start(limits: &[u32]) -> usize {
        (1..limits.len())
            .find(|&i| limits[i] < limits[i - 1])
            .unwrap_or(limits.len())
    }

    /// An answer that took `took_us` to a request sent at `concurrency` (so sent
    /// `took_us` ago).
    fn sent_at(concurrency: u32, took_us: u64) -> Answer {
        Answer {
            took_us,
            concurrency,
            overloaded: false,
            sent_us: clock::now_us().saturating_sub(took_us),
            // Saturated: the answering request and as many as the limit.
            inflight: concurrency,
        }
    }

    fn share(limits: &[u32], f: impl Fn(u32) -> bool) -> f64 {
        limits.iter().filter(|&&l| f(l)).count() as f64 / limits.len() as f64
    }

    /// Indexes at which the limit rose above 1.
    fn probes(limits: &[u32]) -> Vec<usize> {
        (1..limits.len())
            .filter(|&i| limits[i] > 1 && limits[i - 1] == 1)
            .collect()
    }

    /// A replica that runs 4 at once and slows down in proportion beyond that.
    #[tokio::test(start_paused = true)]
    async fn finds_the_knee_of_a_replica_with_four_slots() {
        let l = LimitLearner::new(1);
        let limits = saturate(&l, 4000, |n| T * u64::from(n.max(4)) / 4).await;
        let late = &limits[1000..];
        assert!(share(late, |l| l == 4) > 0.9, "{:?}", &late[..64]);
        assert!(late.iter().all(|&l| (3..=8).contains(&l)));
    }

    /// Demand below the knee: the replica is never full at its limit, so
    /// nothing pushes the limit down; once it reaches the demand it stays.
    #[tokio::test(start_paused = true)]
    async fn steady_below_the_knee_keeps_the_limit() {
        let l = LimitLearner::new(1);
        let limits = drive(&l, 4000, 3, knee(8)).await;
        let reached = limits.iter().position(|&l| l >= 3);
        let reached = reached.unwrap_or_else(|| panic!("never reached 3: {:?}", &limits[..64]));
        assert!(reached < 40, "{:?}", &limits[..64]);
        assert!(
            limits[reached..].iter().all(|&l| l >= 3),
            "fell below the demand: {:?}",
            &limits[reached..reached + 64]
        );
    }

    /// Saturated at the knee: once slow start has found 4, the limit never
    /// goes below it, and probes above it are short.
    #[tokio::test(start_paused = true)]
    async fn at_the_knee_never_steps_below_it() {
        let l = LimitLearner::new(1);
        let limits = saturate(&l, 6000, knee(4)).await;
        let settled = after_slow_start(&limits);
        assert!(
            settled < 64,
            "slow start took {settled} answers: {limits:?}"
        );
        let late = &limits[settled..];
        assert!(late.iter().all(|&l| l >= 4), "{late:?}");
        assert!(share(late, |l| l == 4) > 0.95, "{:?}", &late[..64]);
    }

    /// A busy host slows every answer alike (for 3 s in every 15 s, 1.5x, and
    /// up to 10% jitter always): that is not queueing inside the replica, and a
    /// lower limit would not help, so the limit stays at the knee.
    #[tokio::test(start_paused = true)]
    async fn host_noise_does_not_push_the_limit_below_the_knee() {
        let mut rng = fastrand::Rng::with_seed(3);
        let start = tokio::time::Instant::now();
        let l = LimitLearner::new(1);
        let base = knee(4);
        let limits = saturate(&l, 8000, |n| {
            let busy = start.elapsed().as_secs() % 15 >= 12;
            let slow = if busy { 1.5 } else { 1.0 } * (1.0 + 0.1 * rng.f64());
            (base(n) as f64 * slow) as u64
        })
        .await;
        let settled = after_slow_start(&limits);
        let late = &limits[settled..];
        assert!(
            share(late, |l| l < 4) < 0.02,
            "below the knee at {:.1}% of answers",
            100.0 * share(late, |l| l < 4)
        );
        assert!(late.iter().all(|&l| l >= 3), "{late:?}");
        assert!(
            share(late, |l| l == 4) > 0.85,
            "{:.2}",
            share(late, |l| l == 4)
        );
    }

    /// A replica whose knee drops from 8 to 4 (another tenant took half of it):
    /// each step down shows the replica answering faster with one request fewer,
    /// so the steps stay and the limit comes down to the new knee.
    #[tokio::test(start_paused = true)]
    async fn follows_a_knee_that_drops() {
        let l = LimitLearner::new(1);
        let mut answers = 0;
        let limits = saturate(&l, 6000, |n| {
            answers += 1;
            knee(if answers < 2000 { 8 } else { 4 })(n)
        })
        .await;
        assert!(share(&limits[1000..2000], |l| l == 8) > 0.9);
        let late = &limits[3000..];
        assert!(share(late, |l| l == 4) > 0.9, "{:?}", &late[..64]);
        assert!(late.iter().all(|&l| (4..=6).contains(&l)));
    }

    /// Slow start leaves 1 after one round of answers, not a window (TCP's slow
    /// start grows every round trip): behind a queue, every answer at 1 on a
    /// replica with room is a request that waited for nothing.
    #[tokio::test(start_paused = true)]
    async fn slow_start_leaves_one_after_one_round() {
        let l = LimitLearner::new(1);
        let limits = saturate(&l, 64, |n| T * u64::from(n.max(4)) / 4).await;
        let at_one = limits.iter().take_while(|&&l| l == 1).count();
        assert_eq!(at_one, MIN_BASELINE, "{limits:?}");
        let to_four = limits.iter().position(|&l| l >= 4);
        assert!(
            to_four.is_some_and(|i| i <= 4 + 2 * PROBE_WINDOW + 2),
            "{limits:?}"
        );
    }

    /// A replica that serves one request at a time (a Flask dev server), with
    /// 10% of requests 20x longer: every request waits for all sent before it.
    #[tokio::test(start_paused = true)]
    async fn learns_one_for_a_replica_that_serves_one_at_a_time() {
        fastrand::seed(7);
        let size = || if fastrand::u8(..10) == 0 { 20 * T } else { T };
        let l = LimitLearner::new(1);
        let limits = saturate(&l, 4000, |n| (0..n).map(|_| size()).sum()).await;
        let late = &limits[500..];
        assert!(share(late, |l| l == 1) > 0.97, "{:?}", &late[..64]);
    }

    /// A probe above the knee of a replica that serves one at a time is decided
    /// by its first answer that waited for the one running before it (see
    /// `State::waited_for_a_slot`), not by the majority of its window.
    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_of_a_serial_replica_steps_back_at_its_first_answer() {
        let l = LimitLearner::new(1);
        let limits = saturate(&l, 400, |n| T * u64::from(n)).await;
        // 20 s of answers: slow start's probe, and one more after 15 s.
        let starts = probes(&limits);
        assert_eq!(starts.len(), 2, "{limits:?}");
        for i in starts {
            let raised = limits[i..].iter().take_while(|&&l| l == 2).count();
            // The answer to a request sent while the one of the old limit still
            // ran (not judged at the new limit), then the one that decides.
            assert!(raised <= 2, "{raised}: {limits:?}");
        }
    }

    /// A probe that fails by the majority of its window (a replica that slows
    /// every request in proportion past its knee, so no answer shows one waiting
    /// for another) costs that majority, not the whole window.
    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_steps_back_once_most_of_its_window_queued() {
        let l = LimitLearner::new(1);
        let limits = saturate(&l, 3000, knee(4)).await;
        let settled = after_slow_start(&limits);
        let late = &limits[settled..];
        let starts: Vec<usize> = (1..late.len())
            .filter(|&i| late[i] == 5 && late[i - 1] == 4)
            .collect();
        assert!(!starts.is_empty(), "never probed 5: {late:?}");
        for i in starts {
            let raised = late[i..].iter().take_while(|&&l| l == 5).count();
            // The majority, plus the answers to requests sent while those of
            // the old limit still ran (not judged at the new one).
            assert!(raised <= PROBE_MAJORITY + 4, "{raised}: {late:?}");
        }
    }

    /// However fast a replica answers, after a failed probe the next waits at
    /// least `PROBE_HOLD` (then 2x, 4x, ...) in time: a replica that answers in
    /// 1 ms fills a window every 16 ms and would otherwise be probed every
    /// fraction of a second.
    #[tokio::test(start_paused = true)]
    async fn probes_after_a_failed_one_are_spaced_in_time() {
        let l = LimitLearner::new(1);
        let start = tokio::time::Instant::now();
        let mut at = Vec::new();
        let mut last = 1;
        // 1 ms per request, one at a time; 10 minutes.
        for _ in 0..600_000 {
            let limit = l.limit(B);
            if limit > 1 && last == 1 {
                at.push(start.elapsed());
            }
            last = limit;
            let took_us = 1000 * u64::from(limit);
            tokio::time::advance(Duration::from_micros(took_us / u64::from(limit))).await;
            l.on_answer(sent_at(limit, took_us), B);
        }
        let gaps: Vec<f64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        // Holds of 15, 30, 60, 120, 240, 320 s (plus the probe itself).
        assert!(at.len() <= 7, "probes at {at:?}");
        for (k, gap) in gaps.iter().enumerate() {
            let hold = State::hold(1 << k.min(6)).as_secs_f64();
            assert!(
                *gap >= hold,
                "probe {} came {gap} s after the last ({at:?})",
                k + 1
            );
        }
    }

    /// A replica that answered a probe by making a request wait for the one
    /// before it cannot run the raised limit at all: each such failure grows
    /// the hold before the next probe 4x (15 s, 60 s, 240 s, then the 320 s
    /// most), not 2x. One at a time, 1 ms per request, 20 minutes.
    #[tokio::test(start_paused = true)]
    async fn probes_of_a_serial_replica_back_off_four_times_over() {
        let l = LimitLearner::new(1);
        let start = tokio::time::Instant::now();
        let (mut at, mut last) = (Vec::new(), 1);
        while start.elapsed() < Duration::from_secs(1200) {
            let limit = l.limit(B);
            if limit > 1 && last == 1 {
                at.push(start.elapsed().as_secs_f64());
            }
            last = limit;
            tokio::time::advance(Duration::from_millis(1)).await;
            l.on_answer(sent_at(limit, 1000 * u64::from(limit)), B);
        }
        let gaps: Vec<f64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(at.len(), 6, "probes at {at:?} s");
        for (k, gap) in gaps.iter().enumerate() {
            let hold = (15.0 * 4f64.powi(k as i32)).min(320.0);
            assert!((hold..hold + 1.0).contains(gap), "gaps {gaps:?} s");
        }
    }

    /// The mixed workload of benchmark (b) on one replica that serves one at a
    /// time: at 4.8 answers a second for a minute, the limit is above 1 for a
    /// few probes' first windows only (plus, each, the answers to requests sent
    /// before it, a long one among them, which are not judged at the new limit).
    #[tokio::test(start_paused = true)]
    async fn a_serial_replica_under_mixed_work_is_rarely_probed() {
        fastrand::seed(5);
        let l = LimitLearner::new(1);
        let start = tokio::time::Instant::now();
        let mut raised = 0;
        let mut answers = 0;
        while start.elapsed() < Duration::from_secs(60) {
            let limit = l.limit(B);
            let took_us: u64 = (0..limit)
                .map(|_| if fastrand::u8(..10) == 0 { 20 * T } else { T })
                .sum();
            // 70% busy: one answer every 208 ms on average.
            tokio::time::advance(Duration::from_millis(208)).await;
            raised += usize::from(limit > 1);
            answers += 1;
            l.on_answer(sent_at(limit, took_us), B);
        }
        assert!(
            raised <= 4 * (PROBE_WINDOW + 2),
            "{raised} of {answers} answers at a raised limit"
        );
    }

    /// A replica that batches (vLLM-like: 64 at once at the same speed), with the
    /// same mixed sizes: the limit grows far past where a serial one stops.
    #[tokio::test(start_paused = true)]
    async fn grows_for_a_replica_that_runs_many_at_once() {
        fastrand::seed(11);
        let l = LimitLearner::new(1);
        let limits = saturate(&l, 4000, |n| {
            let own = if fastrand::u8(..10) == 0 { 20 * T } else { T };
            own * u64::from(n.max(64)) / 64
        })
        .await;
        assert!(
            limits[3000..].iter().all(|&l| l >= 16),
            "{:?}",
            &limits[3000..3064]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_overloaded_answer_cuts_the_limit_at_once() {
        let l = LimitLearner::new(1);
        saturate(&l, 300, |_| T).await;
        let before = l.limit(B);
        assert!(before >= 10, "grew to {before}");
        let cut = l.on_answer(
            Answer {
                took_us: T,
                concurrency: 8,
                overloaded: true,
                sent_us: clock::now_us(),
                inflight: 8,
            },
            B,
        );
        assert_eq!(cut, Some(7), "below the count it was sent at");
        assert_eq!(l.limit(B), 7);
        let bounds = Bounds { min: 9, max: 12 };
        assert_eq!(l.limit(bounds), 9, "never below max_inflight_min");
    }
}
