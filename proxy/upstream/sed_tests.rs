//! Shortest expected delay between fast and slow replicas with caps and a queue,
//! on paused clocks: who waits for a fast slot, who takes the slow one, that a
//! declined slot is offered again as time passes, that equal replicas never hold
//! a request back, and the whole benchmark (a) workload simulated.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::pool::Pool;
use super::queue::Admission;
use super::sched::Ticket;
use super::sched_tests::queued;
use super::select::Tried;
use super::{Lease, Pick};
use crate::config::{BackendAddr, BackendSource, Queue, Upstream};

const FAST: Duration = Duration::from_millis(50);
const SLOW: Duration = Duration::from_millis(200);

/// `n` backends behind least outstanding with a queue.
fn upstream(n: usize) -> Upstream {
    let backends = (0..n)
        .map(|i| BackendAddr {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 1 + i as u16)),
            weight: 1,
        })
        .collect();
    Upstream {
        queue: Queue {
            size: 1000,
            timeout: Duration::from_secs(30),
        },
        ..Upstream::with_defaults("sed", BackendSource::Static(backends))
    }
}

/// Least outstanding over replicas measured at `times`, `slots` each, a queue.
fn pool(times: &[Duration], slots: u32) -> Arc<Pool> {
    let up = Upstream {
        max_inflight: slots,
        ..upstream(times.len())
    };
    let pool = Pool::build(&up).unwrap_or_else(|e| panic!("{e}"));
    pool.publish();
    for (b, &t) in pool.backends().iter().zip(times) {
        for _ in 0..8 {
            b.record_latency(t);
        }
    }
    pool
}

/// Takes every slot of backend `i` directly (as running requests do).
fn fill(pool: &Pool, i: usize, slots: u32) -> Vec<Lease> {
    let b = &pool.backends()[i];
    (0..slots)
        .map(|_| {
            b.try_acquire(slots, pool.store().queue(), None)
                .unwrap_or_else(|| panic!("backend {i} has a free slot"))
        })
        .collect()
}

/// Sends request `n` into the queue; its slot arrives on the channel.
fn request(pool: &Arc<Pool>, tx: &mpsc::UnboundedSender<(usize, Lease)>, n: usize) {
    let (pool, tx) = (Arc::clone(pool), tx.clone());
    tokio::spawn(async move {
        let t = Ticket { class: 0, flow: 0 };
        match pool
            .admit(&Tried::default(), t, 0, std::future::pending())
            .await
        {
            Admission::Leased(l, _) => {
                let _ = tx.send((n, l));
            }
            other => panic!("request {n}: {other:?}"),
        }
    });
}

/// Lets spawned requests run (without moving the paused clock) until `n` wait.
#[tokio::test(start_paused = true)]
async fn the_first_in_line_waits_for_a_fast_slot_and_the_last_takes_the_slow_one() {
    let pool = pool(&[FAST, FAST, SLOW], 1);
    let _a = fill(&pool, 0, 1);
    let mut b = fill(&pool, 1, 1);
    // Fast slots free every 25 ms: waiting behind k others takes (k + 1) × 25 ms
    // + 50 ms, under the slow replica's 200 ms for up to 4 ahead.
    assert!(matches!(pool.pick(&Tried::default(), 0), Pick::Wait(_)));
    let (tx, mut granted) = mpsc::unbounded_channel();
    for n in 0..5 {
        request(&pool, &tx, n);
        queued(&pool, n + 1).await;
    }
    assert_eq!(pool.backends()[2].inflight(), 0, "the slow slot sat idle");
    // The sixth would wait 6 × 25 + 50 = 200 ms: the slow replica is no worse, and
    // it goes to the last in line, not to the first, who has waited longest.
    request(&pool, &tx, 5);
    let (n, slow) = granted.recv().await.unwrap_or_else(|| panic!("no grant"));
    assert_eq!((n, slow.backend().index()), (5, 2));
    assert_eq!(pool.queued(), 5);
    // A fast slot frees: the first in line gets it.
    drop(b.pop());
    let (n, fast) = granted.recv().await.unwrap_or_else(|| panic!("no grant"));
    assert_eq!((n, fast.backend().index()), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_declined_slot_is_offered_again_when_the_fast_replicas_stall() {
    let pool = pool(&[FAST, FAST, SLOW], 1);
    let _held = [fill(&pool, 0, 1), fill(&pool, 1, 1)];
    let (tx, mut granted) = mpsc::unbounded_channel();
    request(&pool, &tx, 0);
    queued(&pool, 1).await;
    // The fast requests run on past their 50 ms; once they average 300 ms, one
    // frees every 150 ms at best, and 150 + 50 ms is no better than 200 ms.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(pool.queued(), 1, "taken while waiting still paid");
    let started = tokio::time::Instant::now();
    let (_, l) = granted.recv().await.unwrap_or_else(|| panic!("no grant"));
    assert_eq!(l.backend().index(), 2);
    assert!(
        started.elapsed() <= Duration::from_millis(100),
        "offered again only {:?} later",
        started.elapsed() + Duration::from_millis(250)
    );
}

#[tokio::test(start_paused = true)]
async fn equal_replicas_never_hold_a_request_back() {
    // Within 2x: noise between equal replicas, whatever the queue.
    let pool = pool(&[FAST, FAST, FAST.mul_f64(1.9)], 1);
    let _held = [fill(&pool, 0, 1), fill(&pool, 1, 1)];
    assert!(matches!(pool.pick(&Tried::default(), 0), Pick::Leased(l) if l.backend().index() == 2));
    // Unmeasured or faster than 50 ms: never.
    let quick = Duration::from_millis(5);
    let pool = self::pool(&[quick, quick, quick * 8], 1);
    let _held = [fill(&pool, 0, 1), fill(&pool, 1, 1)];
    assert!(matches!(pool.pick(&Tried::default(), 0), Pick::Leased(l) if l.backend().index() == 2));
}

/// A slot for a request arriving at `arrive`, waiting in the queue if need be.
async fn admitted_at(pool: &Pool, arrive: tokio::time::Instant) -> Lease {
    tokio::time::sleep_until(arrive).await;
    let t = Ticket { class: 0, flow: 0 };
    match pool
        .admit(&Tried::default(), t, 0, std::future::pending())
        .await
    {
        Admission::Leased(lease, _) => lease,
        other => panic!("no slot: {other:?}"),
    }
}

/// Benchmark (a) on a paused clock: replicas of 2 slots at 50, 50 and 200 ms,
/// Poisson arrivals at 72 req/s (80% of the 90 req/s of all three, 90% of the
/// two fast ones) for 60 s, `max_inflight = 2` and a queue.
#[tokio::test(start_paused = true)]
async fn the_slow_replica_takes_only_what_the_fast_queue_cannot() {
    fastrand::seed(7);
    let pool = pool(&[FAST, FAST, SLOW], 2);
    let mut rng = fastrand::Rng::with_seed(7);
    let start = tokio::time::Instant::now();
    let (tx, mut done) = mpsc::unbounded_channel();
    let mut at = 0.0;
    let n = 72 * 60;
    for _ in 0..n {
        at += -(1.0 - rng.f64()).ln() / 72.0;
        let (pool, tx) = (Arc::clone(&pool), tx.clone());
        let arrive = start + Duration::from_secs_f64(at);
        tokio::spawn(async move {
            let lease = admitted_at(&pool, arrive).await;
            let took = if lease.backend().index() == 2 {
                SLOW
            } else {
                FAST
            };
            tokio::time::sleep(took).await;
            lease.record_latency(took);
            let _ = tx.send((arrive.elapsed(), lease.backend().index() == 2));
        });
    }
    drop(tx);
    let mut lat = Vec::with_capacity(n);
    let mut slow = 0;
    while let Some((d, to_slow)) = done.recv().await {
        lat.push(d);
        slow += usize::from(to_slow);
    }
    lat.sort();
    let p99 = lat[lat.len() * 99 / 100];
    let share = slow as f64 / lat.len() as f64;
    assert_eq!(lat.len(), n);
    // Greedy (any free slot at once) sends ~10% to the slow replica and its p99 is
    // over 250 ms; nothing waits more than the slow replica's time beyond its own.
    assert!(p99 <= Duration::from_millis(230), "p99 {p99:?}");
    assert!(
        share < 0.05,
        "share to the slow replica {share} (p99 {p99:?})"
    );
}

/// Benchmark (b) on a paused clock through the queue and the learned limit:
/// three replicas that serve one request at a time (more wait inside, first
/// come first served), 10% of requests 1 s and 90% 50 ms, Poisson arrivals at
/// 70% of capacity; the p99 of the short requests (ms), and answers sent to a
/// busy replica.
async fn serial_mixed(cap: &str, seed: u64, secs: f64) -> (f64, usize) {
    let run = mixed_on_slots(cap, 1, seed, secs).await;
    (run.p99_ms, run.behind)
}

/// What [`mixed_on_slots`] saw.
struct MixedRun {
    /// The short requests' p99 (ms).
    p99_ms: f64,
    /// Requests sent to a replica already running one of ours.
    behind: usize,
    /// Each replica's cap at the end.
    caps: Vec<u32>,
}

/// [`serial_mixed`] on replicas of `slots` slots each (more wait inside, first
/// come first served), at 70% of their capacity.
async fn mixed_on_slots(cap: &str, slots: usize, seed: u64, secs: f64) -> MixedRun {
    fastrand::seed(seed);
    let (max_inflight, max_inflight_auto) = match cap {
        "auto" => (0, Some(crate::config::AutoLimit { min: 1, max: 256 })),
        n => (n.parse().unwrap_or(1), None),
    };
    let up = Upstream {
        max_inflight,
        max_inflight_auto,
        ..upstream(3)
    };
    let pool = Pool::build(&up).unwrap_or_else(|e| panic!("{e}"));
    pool.publish();
    let replicas: Vec<Arc<tokio::sync::Semaphore>> = (0..3)
        .map(|_| Arc::new(tokio::sync::Semaphore::new(slots)))
        .collect();
    let rate = 0.7 * 3.0 * slots as f64 / 0.145;
    let mut rng = fastrand::Rng::with_seed(seed);
    let start = tokio::time::Instant::now();
    let (tx, mut done) = mpsc::unbounded_channel();
    let mut at = 0.0;
    let n = (rate * secs) as usize;
    for _ in 0..n {
        at += -(1.0 - rng.f64()).ln() / rate;
        let long = rng.u8(..10) == 0;
        let (pool, tx, replicas) = (Arc::clone(&pool), tx.clone(), replicas.clone());
        let arrive = start + Duration::from_secs_f64(at);
        tokio::spawn(async move {
            let lease = admitted_at(&pool, arrive).await;
            let sent = tokio::time::Instant::now();
            let busy = lease.backend().inflight() > 1;
            let own = if long { Duration::from_secs(1) } else { FAST };
            {
                let replica = &replicas[lease.backend().index()];
                let _slot = replica.acquire().await;
                tokio::time::sleep(own).await;
            }
            let took = sent.elapsed();
            lease.record_latency(took);
            lease.learn(took, 200, pool.settings().cap);
            drop(lease);
            let _ = tx.send((arrive.elapsed(), long, busy));
        });
    }
    drop(tx);
    let (mut short, mut behind) = (Vec::with_capacity(n), 0);
    while let Some((d, long, busy)) = done.recv().await {
        if !long {
            short.push(d);
        }
        behind += usize::from(busy);
    }
    short.sort();
    let p99 = short[short.len() * 99 / 100];
    MixedRun {
        p99_ms: p99.as_secs_f64() * 1e3,
        behind,
        caps: pool
            .backends()
            .iter()
            .map(|b| pool.settings().cap.of(b))
            .collect(),
    }
}

/// `max_inflight = "auto"` in benchmark (b): each replica learns 1, and what
/// learning costs (slow start's probe of 2, then a probe after 15 s, 60 s ...
/// of backoff, each sending a request or two behind a running one) keeps the
/// short requests' p99 within a few percent of a hand-set `max_inflight = 1`,
/// over 20 seeded minutes. Probes decided by the majority of 5 answers and
/// held 15 s doubling sent 37 requests a minute behind a busy replica and cost
/// 3.6% on average; decided by the first answer that waited for the running
/// request and held 4x longer after each such failure, 12 and 0.9%.
#[tokio::test(start_paused = true)]
async fn serial_replicas_a_learned_limit_costs_little_over_a_hand_set_one() {
    let (mut ratios, mut behind) = (Vec::new(), 0);
    for seed in 1..=20 {
        let (one, _) = serial_mixed("1", seed, 60.0).await;
        let (auto, b) = serial_mixed("auto", seed, 60.0).await;
        ratios.push(auto / one);
        behind += b;
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let behind = behind as f64 / ratios.len() as f64;
    let say =
        format!("mean {mean:.3}, {behind:.1} sent behind a busy replica per minute: {ratios:.2?}");
    assert!(mean <= 1.02, "{say}");
    assert!(behind <= 20.0, "{say}");
}

/// A replica with two slots (a third request waits inside for one to free) is
/// not taken for one that serves one at a time: under the mixed work of
/// benchmark (b), at 70% of two slots each, every replica learns 2 and the
/// short requests' p99 stays within a few percent of a hand-set
/// `max_inflight = 2` (10 seeded minutes).
#[tokio::test(start_paused = true)]
async fn replicas_with_two_slots_learn_two_under_mixed_work() {
    let mut ratios = Vec::new();
    for seed in 1..=10 {
        let two = mixed_on_slots("2", 2, seed, 60.0).await;
        let auto = mixed_on_slots("auto", 2, seed, 60.0).await;
        assert!(
            auto.caps.iter().all(|&c| c >= 2),
            "seed {seed}: caps {:?}",
            auto.caps
        );
        ratios.push(auto.p99_ms / two.p99_ms);
    }
    let (mean, _, hi) = spread(&ratios);
    assert!(mean <= 1.05, "mean {mean:.3}, worst {hi:.3}: {ratios:.2?}");
}

/// Benchmark (b)'s arrivals for `seed` over `secs`: (arrival s, long?), as
/// [`serial_mixed`] draws them.
fn serial_arrivals(seed: u64, secs: f64) -> Vec<(f64, bool)> {
    let rate = 0.7 * 3.0 / 0.145;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut at = 0.0;
    (0..(rate * secs) as usize)
        .map(|_| {
            at += -(1.0 - rng.f64()).ln() / rate;
            (at, rng.u8(..10) == 0)
        })
        .collect()
}

fn own_s(long: bool) -> f64 {
    if long {
        1.0
    } else {
        FAST.as_secs_f64()
    }
}

/// The short requests' p99 (ms) of a sorted list of times (s).
fn p99_ms(mut short: Vec<f64>) -> f64 {
    short.sort_by(f64::total_cmp);
    short[short.len() * 99 / 100] * 1e3
}

/// nginx `least_conn` in front of benchmark (b)'s replicas (no cap): each
/// request goes at once to a replica with the fewest in flight (ties to a
/// random one, seeded), where it waits its turn.
fn least_conn_model(seed: u64, secs: f64) -> f64 {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    // Per replica, the completion times of its requests in flight, in order.
    let mut flight: [Vec<f64>; 3] = Default::default();
    let mut short = Vec::new();
    for (at, long) in serial_arrivals(seed, secs) {
        for f in &mut flight {
            f.retain(|&done| done > at);
        }
        let start = rng.usize(..3);
        let i = (0..3)
            .map(|k| (start + k) % 3)
            .min_by_key(|&i| flight[i].len())
            .unwrap_or(0);
        let done = flight[i].last().copied().unwrap_or(at).max(at) + own_s(long);
        flight[i].push(done);
        if !long {
            short.push(done - at);
        }
    }
    p99_ms(short)
}

/// HAProxy `maxconn 1` in front of benchmark (b)'s replicas: one central
/// first-come-first-served queue, each request to the first replica free.
fn fifo_cap_one_model(seed: u64, secs: f64) -> f64 {
    let mut free = [0.0f64; 3];
    let mut short = Vec::new();
    for (at, long) in serial_arrivals(seed, secs) {
        let i = (0..3)
            .min_by(|&a, &b| free[a].total_cmp(&free[b]))
            .unwrap_or(0);
        free[i] = free[i].max(at) + own_s(long);
        if !long {
            short.push(free[i] - at);
        }
    }
    p99_ms(short)
}

/// An age-aware least-work model in front of benchmark (b)'s replicas (no
/// cap): each request goes at once to the replica where it is expected to
/// start soonest, counting for the running request its expected remaining time
/// given how long it has run, `E[S − age | S > age]` over the service times
/// observed so far, and the mean for each one waiting inside (ties to a random
/// one, seeded). What the proxy could know without knowing sizes in advance.
fn expected_remaining_model(seed: u64, secs: f64) -> f64 {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    // Per replica, (service start, completion) of its requests in flight.
    let mut flight: [Vec<(f64, f64)>; 3] = Default::default();
    let (mut seen, mut short) = (Vec::<f64>::new(), Vec::new());
    for (at, long) in serial_arrivals(seed, secs) {
        for f in &mut flight {
            while f.first().is_some_and(|&(_, done)| done <= at) {
                let (start, done) = f.remove(0);
                let k = seen.partition_point(|&x| x < done - start);
                seen.insert(k, done - start);
            }
        }
        let mean = seen.iter().sum::<f64>() / seen.len().max(1) as f64;
        let remaining = |age: f64| {
            let longer = &seen[seen.partition_point(|&x| x <= age)..];
            if longer.is_empty() {
                0.0
            } else {
                longer.iter().sum::<f64>() / longer.len() as f64 - age
            }
        };
        let wait = |f: &Vec<(f64, f64)>| match f.first() {
            None => 0.0,
            Some(&(start, _)) => remaining(at - start) + (f.len() - 1) as f64 * mean,
        };
        let start = rng.usize(..3);
        let i = (0..3)
            .map(|k| (start + k) % 3)
            .min_by(|&a, &b| wait(&flight[a]).total_cmp(&wait(&flight[b])))
            .unwrap_or(0);
        let begin = flight[i].last().map_or(at, |&(_, done)| done.max(at));
        let done = begin + own_s(long);
        flight[i].push((begin, done));
        if !long {
            short.push(done - at);
        }
    }
    p99_ms(short)
}

/// Mean, least and greatest of `xs`.
fn spread(xs: &[f64]) -> (f64, f64, f64) {
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(0.0, f64::max);
    (mean, lo, hi)
}

/// Benchmark (b) over many seeds: modelgate with no cap against the least_conn
/// model, and with `max_inflight = "auto"` and `= 1` against the central FIFO
/// with cap 1, as ratios of the short requests' p99 (mean, least, greatest).
/// `SIM_SECS` (default 60) and `SIM_SEEDS` (default 20) set the runs.
#[tokio::test(start_paused = true)]
#[ignore = "a report, not a check: run with --ignored --nocapture"]
#[allow(clippy::print_stderr)]
async fn serial_replicas_report() {
    let var = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (secs, seeds) = (var("SIM_SECS", 60.0), var("SIM_SEEDS", 20.0) as u64);
    let (mut plain, mut auto, mut one, mut fifo_lc) = (vec![], vec![], vec![], vec![]);
    let mut aged = vec![];
    for seed in 1..=seeds {
        let lc = least_conn_model(seed, secs);
        let fifo = fifo_cap_one_model(seed, secs);
        plain.push(serial_mixed("0", seed, secs).await.0 / lc);
        let (a, behind) = serial_mixed("auto", seed, secs).await;
        auto.push(a / fifo);
        if std::env::var("SIM_VERBOSE").is_ok() {
            eprintln!("seed {seed}: auto {a:.0} ms, FIFO {fifo:.0} ms, {behind} sent behind a busy replica");
        }
        one.push(serial_mixed("1", seed, secs).await.0 / fifo);
        fifo_lc.push(fifo / lc);
        aged.push(expected_remaining_model(seed, secs) / lc);
    }
    for (name, r) in [
        ("no cap / least_conn", &plain),
        ("auto / FIFO cap 1", &auto),
        ("1 / FIFO cap 1", &one),
        ("FIFO cap 1 / least_conn", &fifo_lc),
        ("age-aware least work model / least_conn", &aged),
    ] {
        let (mean, lo, hi) = spread(r);
        eprintln!("{name}: mean {mean:.3} [{lo:.3}, {hi:.3}] over {seeds} seeds of {secs} s");
    }
}
