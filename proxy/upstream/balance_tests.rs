//! Least-outstanding against nginx-style least connections in simulated replica
//! pools: seeded arrivals, mixed long and short requests, replicas that serve a
//! fixed number of requests at once (one, like a Flask dev server), on a paused
//! tokio clock so every run is the same and takes milliseconds.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use super::backend::Lease;
use super::balancer::Pick;
use super::pool::Pool;
use super::select::Tried;
use crate::config::{BackendAddr, BackendSource, Upstream};

const SHORT: Duration = Duration::from_millis(50);
const LONG: Duration = Duration::from_secs(1);

/// A least-outstanding pool of `n` unlimited backends (127.0.0.1:1, :2, ...).
pub(super) fn pool(n: usize) -> Arc<Pool> {
    let backends = (0..n)
        .map(|i| BackendAddr {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 1 + i as u16)),
            weight: 1,
        })
        .collect();
    let up = Upstream::with_defaults("sim", BackendSource::Static(backends));
    Pool::build(&up).unwrap_or_else(|e| panic!("{e}"))
}

/// Gives `b` a typical time per request of `took`.
fn measured(b: &super::Backend, took: Duration) {
    for _ in 0..8 {
        b.record_latency(took);
    }
}

/// How the simulated proxy picks a replica.
#[derive(Clone, Copy, Debug)]
enum Policy {
    /// modelgate's least outstanding (the pool's own pick).
    LeastOutstanding,
    /// nginx `least_conn`: fewest in flight, ties to a random one.
    LeastConn,
}

fn take(pool: &Pool, policy: Policy) -> Lease {
    match policy {
        Policy::LeastOutstanding => match pool.pick(&Tried::default(), 0) {
            Pick::Leased(l) => l,
            other => panic!("no pick: {other:?}"),
        },
        Policy::LeastConn => {
            let b = pool.backends();
            let start = fastrand::usize(..b.len());
            let i = (0..b.len())
                .map(|k| (start + k) % b.len())
                .min_by_key(|&i| b[i].inflight())
                .unwrap_or(0);
            b[i].try_acquire(0, pool.store().queue(), None)
                .unwrap_or_else(|| panic!("uncapped acquire"))
        }
    }
}

/// A workload: Poisson arrivals at `rate` per second for `secs`, a share `long_share`
/// of them taking `LONG` and the rest `SHORT`, on `replicas` replicas of `slots`
/// request slots each (more wait inside the replica, first come first served).
#[derive(Clone, Copy, Debug)]
struct Workload {
    replicas: usize,
    slots: usize,
    rate: f64,
    long_share: f64,
    secs: f64,
}

impl Workload {
    /// Arrival rate at `load` (0..1) of the pool's capacity.
    fn at_load(replicas: usize, slots: usize, long_share: f64, load: f64) -> Workload {
        let mean = long_share * LONG.as_secs_f64() + (1.0 - long_share) * SHORT.as_secs_f64();
        Workload {
            replicas,
            slots,
            rate: load * (replicas * slots) as f64 / mean,
            long_share,
            secs: 1000.0,
        }
    }
}

/// Response times of the short requests, sorted.
async fn run(w: Workload, policy: Policy, seed: u64) -> Vec<Duration> {
    fastrand::seed(seed);
    let mut rng = fastrand::Rng::with_seed(seed);
    let pool = pool(w.replicas);
    // Per replica, when each of its slots is next free (time since the start).
    let mut slots = vec![vec![Duration::ZERO; w.slots]; w.replicas];
    // Requests in flight: (answered at, seq) -> lease, dispatched at, short?
    let mut running: BinaryHeap<Reverse<(Duration, u64)>> = BinaryHeap::new();
    let mut leases: std::collections::HashMap<u64, (Lease, Duration, bool)> = Default::default();
    let mut now = Duration::ZERO;
    let mut arrival = Duration::ZERO;
    let mut short = Vec::new();
    let end = Duration::from_secs_f64(w.secs);
    let mut seq = 0u64;
    let advance = |now: &mut Duration, to: Duration| {
        let step = to.saturating_sub(*now);
        *now = (*now).max(to);
        tokio::time::advance(step)
    };
    while arrival < end {
        arrival += Duration::from_secs_f64(-(1.0 - rng.f64()).ln() / w.rate);
        // Answers that come before this arrival.
        while let Some(&Reverse((at, id))) = running.peek() {
            if at > arrival {
                break;
            }
            running.pop();
            advance(&mut now, at).await;
            if let Some((lease, sent, is_short)) = leases.remove(&id) {
                lease.record_latency(at - sent);
                if is_short {
                    short.push(at - sent);
                }
            }
        }
        advance(&mut now, arrival).await;
        let is_short = rng.f64() >= w.long_share;
        let work = if is_short { SHORT } else { LONG };
        let lease = take(&pool, policy);
        let r = lease.backend().index();
        let slot = (0..w.slots).min_by_key(|&s| slots[r][s]).unwrap_or(0);
        let done = slots[r][slot].max(now) + work;
        slots[r][slot] = done;
        seq += 1;
        running.push(Reverse((done, seq)));
        leases.insert(seq, (lease, now, is_short));
    }
    short.sort();
    short
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Short-request p50 and p99 over three seeds pooled, for modelgate and least_conn;
/// fails unless modelgate's are no worse.
///
/// Without knowing which request is long, no policy can do much better than
/// least connections on replicas that serve one request at a time; what must
/// not happen is worse. A pooled p99 still moves a few percent with the tie
/// draws and the 1 pick in 16 that explores, hence 5% of slack on it.
async fn never_worse_than_least_conn(w: Workload) {
    let (mut ours, mut nginx) = (Vec::new(), Vec::new());
    for seed in 1..4 {
        ours.extend(run(w, Policy::LeastOutstanding, seed).await);
        nginx.extend(run(w, Policy::LeastConn, seed).await);
    }
    ours.sort();
    nginx.sort();
    let (o50, o99, n50, n99) = (
        pct(&ours, 0.5),
        pct(&ours, 0.99),
        pct(&nginx, 0.5),
        pct(&nginx, 0.99),
    );
    assert!(
        o50 <= n50 && o99.as_secs_f64() <= n99.as_secs_f64() * 1.05,
        "{w:?}: short requests p50/p99 {o50:?}/{o99:?}, least_conn {n50:?}/{n99:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn single_threaded_replicas_mixed_work_never_worse_than_least_conn() {
    // The setup users describe: three replicas that serve one request at a time,
    // 10% of requests take 1 s and 90% take 50 ms, 70% load.
    never_worse_than_least_conn(Workload::at_load(3, 1, 0.1, 0.7)).await;
}

#[tokio::test(start_paused = true)]
async fn replicas_with_a_few_slots_mixed_work_never_worse_than_least_conn() {
    for w in [
        Workload::at_load(2, 1, 0.2, 0.5),
        Workload::at_load(4, 2, 0.1, 0.8),
        Workload::at_load(8, 4, 0.05, 0.7),
    ] {
        never_worse_than_least_conn(w).await;
    }
}

#[tokio::test(start_paused = true)]
async fn short_requests_avoid_the_replica_busy_with_a_long_one() {
    for seed in 0..20 {
        fastrand::seed(seed);
        let pool = pool(2);
        // Both replicas measured equally fast, with sub-millisecond noise apart.
        measured(&pool.backends()[0], Duration::from_micros(300));
        measured(&pool.backends()[1], Duration::from_micros(900));
        let long = take(&pool, Policy::LeastOutstanding);
        let busy = long.backend().index();
        for k in 0..10 {
            tokio::time::advance(Duration::from_millis(3)).await;
            let short = take(&pool, Policy::LeastOutstanding);
            assert_ne!(
                short.backend().index(),
                busy,
                "seed {seed}: short request {k} went to the busy replica"
            );
            short.backend().record_latency(Duration::from_micros(400));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_just_started_request_outweighs_latency_noise_between_equal_replicas() {
    for seed in 0..50 {
        fastrand::seed(seed);
        let pool = pool(2);
        let (a, b) = (&pool.backends()[0], &pool.backends()[1]);
        // Equally fast in truth; measured 40 and 75 ms apart by noise.
        measured(a, Duration::from_millis(40));
        measured(b, Duration::from_millis(75));
        let _running = a.try_acquire(0, pool.store().queue(), None);
        match pool.pick(&Tried::default(), 0) {
            Pick::Leased(l) => assert_eq!(l.backend().index(), 1, "seed {seed}"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn between_equal_counts_the_replica_running_younger_work_wins() {
    for seed in 0..50 {
        fastrand::seed(seed);
        let pool = pool(2);
        let (a, b) = (&pool.backends()[0], &pool.backends()[1]);
        measured(a, SHORT);
        measured(b, SHORT);
        // a runs one request that has run for 400 ms (8x the usual), b a fresh one.
        let _old = a.try_acquire(0, pool.store().queue(), None);
        tokio::time::advance(Duration::from_millis(400)).await;
        let _young = b.try_acquire(0, pool.store().queue(), None);
        tokio::time::advance(Duration::from_millis(5)).await;
        match pool.pick(&Tried::default(), 0) {
            Pick::Leased(l) => assert_eq!(l.backend().index(), 1, "seed {seed}"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_much_slower_replica_gets_work_only_when_the_fast_ones_are_busy() {
    fastrand::seed(3);
    let pool = pool(2);
    let (fast, slow) = (&pool.backends()[0], &pool.backends()[1]);
    measured(fast, Duration::from_millis(50));
    measured(slow, Duration::from_millis(400));
    let mut held = Vec::new();
    let mut to_slow = 0;
    for _ in 0..200 {
        if let Pick::Leased(l) = pool.pick(&Tried::default(), 0) {
            to_slow += usize::from(l.backend().index() == 1);
            held.push(l);
        }
        if held.len() == 2 {
            held.clear();
        }
    }
    // Two at a time, the second still prefers the fast replica: (1 + 1) x 50 ms is
    // well under 400 - 50 ms. Only the 1 pick in 16 that ignores speed explores.
    assert!(to_slow < 30, "{to_slow} of 200 went to the slow replica");
    assert!(
        to_slow > 0,
        "the slow replica is still measured now and then"
    );
}

#[test]
fn the_typical_time_ignores_one_long_request_in_ten_and_follows_a_slowdown() {
    let pool = pool(1);
    let b = &pool.backends()[0];
    assert_eq!(b.latency_us(), 0, "not measured yet");
    b.record_latency(LONG);
    assert_eq!(b.latency_us(), 1_000_000, "measured from its first answer");
    for i in 0..200 {
        b.record_latency(if i % 10 == 9 { LONG } else { SHORT });
    }
    let ms = f64::from(b.latency_us()) / 1000.0;
    assert!((45.0..60.0).contains(&ms), "typical time {ms} ms");
    for _ in 0..120 {
        b.record_latency(Duration::from_millis(400));
    }
    let ms = f64::from(b.latency_us()) / 1000.0;
    assert!(ms > 300.0, "a replica that slows down is seen: {ms} ms");
}

/// The idle replica in a mixed workload is the one the long requests land on (the
/// short ones rightly go around the busy one), so it may answer nothing but long
/// requests for a while; that must not make it look slower than the replica that
/// is busy with one.
#[test]
fn a_run_of_long_requests_does_not_make_a_replica_look_slow() {
    let pool = pool(2);
    let (a, b) = (&pool.backends()[0], &pool.backends()[1]);
    for _ in 0..40 {
        a.record_latency(SHORT);
        b.record_latency(SHORT);
    }
    for _ in 0..30 {
        a.record_latency(LONG);
    }
    let (a_ms, b_ms) = (
        f64::from(a.latency_us()) / 1000.0,
        f64::from(b.latency_us()) / 1000.0,
    );
    assert!(
        a_ms < 2.0 * b_ms,
        "after 30 long answers {a_ms} ms vs {b_ms} ms"
    );
    // Busy with one long request, b must cost more than the idle a.
    let _long = b
        .try_acquire(0, pool.store().queue(), None)
        .unwrap_or_else(|| panic!("uncapped acquire"));
    let mut to_a = 0;
    for _ in 0..100 {
        if let Pick::Leased(l) = pool.pick(&Tried::default(), 0) {
            to_a += usize::from(l.backend().addr() == a.addr());
        }
    }
    assert_eq!(to_a, 100, "every short request goes to the idle replica");
}

/// A new replica 20x slower than its measured peer (answers through a lease, as
/// the proxy records them, so the peer seeds its start): seen slower from its
/// first answer, 16x after four and at its own speed within twenty, where the
/// 1/64 step from the peer's time alone would take some 190 answers.
#[test]
fn a_replica_20x_slower_than_its_peer_is_seen_slower_within_five_answers() {
    let pool = pool(2);
    pool.publish();
    let (fast, slow) = (&pool.backends()[0], &pool.backends()[1]);
    measured(fast, SHORT);
    let fast_us = fast.latency_us();
    assert_eq!(fast_us, 50_000);
    let mut seen = Vec::new();
    for _ in 0..5 {
        let l = slow
            .try_acquire(0, pool.store().queue(), None)
            .unwrap_or_else(|| panic!("uncapped acquire"));
        l.record_latency(LONG);
        seen.push(slow.latency_us());
    }
    assert!(
        seen.iter().all(|&us| us > fast_us),
        "slower than the peer after every answer: {seen:?} µs vs {fast_us} µs"
    );
    assert_eq!(seen, [100_000, 200_000, 400_000, 800_000, 812_500]);
    assert_eq!(slow.service_us(), 1_000_000, "a slot's time is its own");
    for _ in 0..15 {
        slow.record_latency(LONG);
    }
    assert_eq!(
        slow.latency_us(),
        1_000_000,
        "at its own speed within 20 answers"
    );
}

/// A replica's first answers may all be long requests: while one replica is busy
/// with a long request the short ones go around it to the other, and the next
/// long one finds the pool idle and may land on the same replica again. Its
/// first estimate must not then make it look slower than a peer busy with a long
/// request (two replicas that serve one at a time: 1.5 s and 5 ms requests, the
/// long ones of the first four rounds all on `a`).
#[tokio::test(start_paused = true)]
async fn a_replica_whose_first_answers_were_long_is_not_judged_slower_than_a_busy_peer() {
    const LONG_ONE: Duration = Duration::from_millis(1500);
    const SHORT_ONE: Duration = Duration::from_millis(5);
    for seed in 0..20 {
        fastrand::seed(seed);
        let pool = pool(2);
        let queue = pool.store().queue();
        let (a, b) = (&pool.backends()[0], &pool.backends()[1]);
        for round in 0..8 {
            let long = if round < 4 {
                a.try_acquire(0, queue, None)
                    .unwrap_or_else(|| panic!("uncapped acquire"))
            } else {
                take(&pool, Policy::LeastOutstanding)
            };
            let busy = long.backend().index();
            for k in 0..10 {
                let short = take(&pool, Policy::LeastOutstanding);
                assert_ne!(
                    short.backend().index(),
                    busy,
                    "seed {seed}, round {round}: short request {k} went to the busy replica \
                     (typical a {} µs, b {} µs)",
                    a.latency_us(),
                    b.latency_us()
                );
                tokio::time::advance(SHORT_ONE).await;
                short.record_latency(SHORT_ONE);
            }
            tokio::time::advance(LONG_ONE).await;
            long.record_latency(LONG_ONE);
        }
    }
}

/// Two picks at the same moment on two threads, one replica busy and two free:
/// each takes a free replica of its own (a pick whose chosen replica was taken
/// meanwhile picks again), never both the same one.
#[test]
fn simultaneous_picks_take_different_free_replicas() {
    let pool = pool(3);
    let _busy = pool.backends()[0]
        .try_acquire(0, pool.store().queue(), None)
        .unwrap_or_else(|| panic!("uncapped acquire"));
    for round in 0..500 {
        let barrier = std::sync::Barrier::new(2);
        let (x, y) = std::thread::scope(|s| {
            let pick = || {
                barrier.wait();
                match pool.pick(&Tried::default(), 0) {
                    Pick::Leased(l) => l,
                    other => panic!("no pick: {other:?}"),
                }
            };
            let x = s.spawn(pick);
            let y = s.spawn(pick);
            (x.join(), y.join())
        });
        let (x, y) = (
            x.unwrap_or_else(|_| panic!("x")),
            y.unwrap_or_else(|_| panic!("y")),
        );
        let (i, j) = (x.backend().index(), y.backend().index());
        assert!(
            i != 0 && j != 0 && i != j,
            "round {round}: picks {i} and {j}"
        );
    }
}
