//! Cache affinity's balance guard on paused clocks with seeded randomness: a replica
//! that would queue the request is passed over for one that would start it at once,
//! one with a free slot keeps it however busy it looks by count, a reported queue
//! counts as full, and only without a known capacity does the abs/rel guard decide.

use std::time::Duration;

use super::affinity::{self, Verdict};
use super::balance_tests::pool;
use super::balancer::Cap;
use super::limit::Bounds;
use super::pool::Pool;
use super::report::LoadReport;
use super::select::{Selector, Tried};
use super::Lease;
use crate::config::AffinityGuard;

/// How long a load report counts in these tests (three polls of 250 ms).
const REPORT_TTL: Duration = Duration::from_millis(750);
/// The preferred replica in every test.
const P: usize = 0;

/// Puts `n` requests in flight on backend `i` (as running requests do).
fn busy(pool: &Pool, i: usize, n: u32) -> Vec<Lease> {
    let b = &pool.backends()[i];
    (0..n)
        .map(|_| {
            b.try_acquire(0, pool.store().queue(), None)
                .unwrap_or_else(|| panic!("backend {i} is unlimited"))
        })
        .collect()
}

/// Backend `i` reports `queue` waiting and `running` running, now.
fn report(pool: &Pool, i: usize, queue: f64, running: f64) {
    pool.backends()[i].replica().record_report(&LoadReport {
        queue: Some(queue),
        running: Some(running),
        cache_usage: None,
    });
}

/// The hint of a request whose prefix replica `P` holds.
fn hint(pool: &Pool) -> u64 {
    affinity::pack(&[pool.backends()[P].replica().affinity_id()])
}

/// Where 50 picks (slots not taken) send a request preferring `P`, as counts per backend.
fn picks(pool: &Pool, guard: AffinityGuard, cap: Cap) -> Vec<usize> {
    let sel = Selector::cache_affinity(REPORT_TTL, guard);
    let mut got = vec![0; pool.backends().len()];
    for _ in 0..50 {
        let (i, _) = sel
            .pick(
                pool.backends(),
                &Tried::default(),
                cap,
                hint(pool),
                Duration::ZERO,
            )
            .unwrap_or_else(|| panic!("no backend picked"));
        got[i] += 1;
    }
    got
}

/// The guard's verdict alone, with every backend eligible.
fn verdict(pool: &Pool, guard: AffinityGuard, cap: Cap) -> Verdict {
    let now_us = super::clock::now_us();
    let ttl_ms = REPORT_TTL.as_millis() as u64;
    affinity::pick(
        pool.backends(),
        hint(pool),
        guard,
        cap,
        ttl_ms,
        now_us,
        |_| true,
    )
}

#[tokio::test(start_paused = true)]
async fn a_full_preferred_replica_is_passed_over_for_one_with_a_free_slot() {
    fastrand::seed(1);
    let pool = pool(3);
    let _p = busy(&pool, P, 2);
    let _q = busy(&pool, 1, 2);
    // Two slots each, by `max_inflight = 2` or learned: the request would queue on P
    // (and on 1) while 2 is idle, so it goes to 2.
    for cap in [Cap::Fixed(2), Cap::Learned(Bounds { min: 2, max: 2 })] {
        assert_eq!(
            picks(&pool, AffinityGuard::default(), cap),
            [0, 0, 50],
            "{cap:?}"
        );
        // The rule itself, not only the in-flight cap, passes P over.
        assert_eq!(
            verdict(&pool, AffinityGuard::default(), cap),
            Verdict::PassOver(P)
        );
    }
    // With every replica full the request would queue anywhere: the abs/rel guard
    // weighs the prefix hit (P is no busier than the least loaded).
    let _r = busy(&pool, 2, 2);
    assert_eq!(
        verdict(&pool, AffinityGuard::default(), Cap::Fixed(2)),
        Verdict::Stay(P)
    );
}

#[tokio::test(start_paused = true)]
async fn a_preferred_replica_with_a_free_slot_keeps_the_request() {
    fastrand::seed(2);
    let pool = pool(3);
    // 7 of 8 slots taken while the others are idle: by count far past abs 4 / rel 1.5,
    // but the request starts at once on P, and its prefix is cached there.
    let _p = busy(&pool, P, 7);
    let guard = AffinityGuard { abs: 4, rel: 1.5 };
    assert_eq!(picks(&pool, guard, Cap::Fixed(8)), [50, 0, 0]);
    assert_eq!(
        picks(&pool, guard, Cap::Learned(Bounds { min: 8, max: 8 })),
        [50, 0, 0]
    );
    // Two slots, one taken: stays too.
    let pool = self::pool(3);
    let _p = busy(&pool, P, 1);
    assert_eq!(picks(&pool, guard, Cap::Fixed(2)), [50, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_reported_queue_sends_the_request_elsewhere_while_the_report_is_fresh() {
    fastrand::seed(3);
    let pool = pool(3);
    // P runs only 1 of ours (of 4 slots) but says it has 2 waiting (other clients'):
    // the request would queue there, and 1 and 2 start it at once.
    let _p = busy(&pool, P, 1);
    report(&pool, P, 2.0, 4.0);
    let got = picks(&pool, AffinityGuard::default(), Cap::Fixed(4));
    assert_eq!(got[P], 0, "{got:?}");
    // Once the report is older than its time to live it no longer counts.
    tokio::time::advance(REPORT_TTL + Duration::from_millis(10)).await;
    assert_eq!(
        picks(&pool, AffinityGuard::default(), Cap::Fixed(4)),
        [50, 0, 0]
    );
}

#[tokio::test(start_paused = true)]
async fn without_max_inflight_a_queueing_replica_shows_its_slots() {
    fastrand::seed(4);
    let pool = pool(3);
    // No `max_inflight`: P says 1 waiting, 2 running, so it runs 2 at once. Replica 1
    // reports 1 running, replica 2 has 1 of ours: both would start the request.
    let _p = busy(&pool, P, 2);
    report(&pool, P, 1.0, 2.0);
    report(&pool, 1, 0.0, 1.0);
    let _r = busy(&pool, 2, 1);
    let got = picks(&pool, AffinityGuard::default(), Cap::Unlimited);
    assert_eq!(got[P], 0, "{got:?}");
    // With both others at 2 as well, it would queue anywhere: the abs/rel guard decides
    // (P's load 3 is within abs 4 of the least, 2), and keeps it.
    report(&pool, 1, 0.0, 2.0);
    let _r2 = busy(&pool, 2, 1);
    assert_eq!(
        picks(&pool, AffinityGuard::default(), Cap::Unlimited),
        [50, 0, 0]
    );
}

#[tokio::test(start_paused = true)]
async fn with_capacity_unknown_the_abs_rel_guard_decides() {
    fastrand::seed(5);
    let pool = pool(3);
    let guard = AffinityGuard { abs: 4, rel: 1.5 };
    // No cap and no reports: 4 more than the least loaded is within abs 4.
    let mut p = busy(&pool, P, 4);
    assert_eq!(verdict(&pool, guard, Cap::Unlimited), Verdict::Stay(P));
    assert_eq!(picks(&pool, guard, Cap::Unlimited), [50, 0, 0]);
    // 5 is past it (and past 1.5x): least outstanding among the others.
    p.extend(busy(&pool, P, 1));
    assert_eq!(verdict(&pool, guard, Cap::Unlimited), Verdict::PassOver(P));
    let got = picks(&pool, guard, Cap::Unlimited);
    assert_eq!(got[P], 0, "{got:?}");
    // The relative threshold too: 5 against a least of 4 is within 1.5x, so even with
    // abs 0 P keeps the request.
    let _q = busy(&pool, 1, 4);
    let _r = busy(&pool, 2, 4);
    assert_eq!(
        verdict(&pool, AffinityGuard { abs: 0, rel: 1.5 }, Cap::Unlimited),
        Verdict::Stay(P)
    );
    // A smaller abs passes over sooner: 2 against 0.
    let pool = self::pool(3);
    let _p = busy(&pool, P, 2);
    assert_eq!(
        verdict(&pool, AffinityGuard { abs: 1, rel: 1.5 }, Cap::Unlimited),
        Verdict::PassOver(P)
    );
}

#[test]
fn no_hint_or_no_eligible_holder_means_no_preference() {
    let pool = pool(2);
    let now_us = super::clock::now_us();
    let guard = AffinityGuard::default();
    let none = affinity::pick(pool.backends(), 0, guard, Cap::Unlimited, 0, now_us, |_| {
        true
    });
    assert_eq!(none, Verdict::None);
    let tried = affinity::pick(
        pool.backends(),
        hint(&pool),
        guard,
        Cap::Unlimited,
        0,
        now_us,
        |i| i != P,
    );
    assert_eq!(tried, Verdict::None);
}

#[tokio::test(start_paused = true)]
async fn a_holder_queueing_with_nothing_running_shows_no_slots_and_an_idle_peer_takes_the_request()
{
    fastrand::seed(6);
    let pool = pool(3);
    // No `max_inflight`. P is preempted, or its KV cache is full: 3 waiting, none
    // running. That shows no slot count (0 would judge every peer full); its load 3
    // against the idle peers' 0 is within abs 4, so only the reported queue passes P
    // over, to a peer with nothing in flight and nothing reported.
    report(&pool, P, 3.0, 0.0);
    let guard = AffinityGuard::default();
    assert_eq!(verdict(&pool, guard, Cap::Unlimited), Verdict::PassOver(P));
    let got = picks(&pool, guard, Cap::Unlimited);
    assert_eq!(got[P], 0, "{got:?}");
    // A report of the queue alone (ORCA's `num_requests_waiting` without a running
    // gauge) is the same, with requests of ours on P too.
    pool.backends()[P].replica().record_report(&LoadReport {
        queue: Some(2.0),
        running: None,
        cache_usage: None,
    });
    let _p = busy(&pool, P, 1);
    assert_eq!(verdict(&pool, guard, Cap::Unlimited), Verdict::PassOver(P));
    // Once P's report is stale nothing says the request would wait there: the
    // fallback weighs its one request in flight, and keeps it.
    tokio::time::advance(REPORT_TTL + Duration::from_millis(10)).await;
    assert_eq!(verdict(&pool, guard, Cap::Unlimited), Verdict::Stay(P));
}

#[tokio::test(start_paused = true)]
async fn a_holder_queueing_with_nothing_running_passes_only_to_an_idle_peer() {
    fastrand::seed(7);
    let pool = pool(3);
    let guard = AffinityGuard::default();
    // Peer 1 has one of ours; peer 2 reports 2 running (other clients'), no queue.
    // Neither is idle and their slots are unknown: the fallback decides (P's 3 is
    // within abs 4 of the least, 1) and keeps the request.
    report(&pool, P, 3.0, 0.0);
    let _q = busy(&pool, 1, 1);
    report(&pool, 2, 0.0, 2.0);
    assert_eq!(verdict(&pool, guard, Cap::Unlimited), Verdict::Stay(P));
    // Peer 2's report goes stale (its poll lags) while P's is renewed: with nothing
    // in flight and nothing reported, peer 2 is idle, and takes every request.
    tokio::time::advance(REPORT_TTL + Duration::from_millis(10)).await;
    report(&pool, P, 3.0, 0.0);
    assert_eq!(verdict(&pool, guard, Cap::Unlimited), Verdict::PassOver(P));
    assert_eq!(picks(&pool, guard, Cap::Unlimited), [0, 0, 50]);
    // A peer reporting its own queue is not idle, whatever it has in flight.
    report(&pool, 2, 1.0, 0.0);
    assert_eq!(verdict(&pool, guard, Cap::Unlimited), Verdict::Stay(P));
}

#[tokio::test(start_paused = true)]
async fn with_every_replica_reporting_a_queue_the_abs_rel_guard_decides() {
    fastrand::seed(8);
    let pool = pool(3);
    let guard = AffinityGuard { abs: 4, rel: 1.5 };
    // The request would wait anywhere: the prefix hit weighs against the queues.
    report(&pool, P, 3.0, 0.0);
    report(&pool, 1, 1.0, 2.0);
    report(&pool, 2, 2.0, 2.0);
    assert_eq!(verdict(&pool, guard, Cap::Unlimited), Verdict::Stay(P));
    assert_eq!(picks(&pool, guard, Cap::Unlimited), [50, 0, 0]);
    // 9 waiting against a least of 3 is past abs 4 and rel 1.5: the shortest queue.
    report(&pool, P, 9.0, 0.0);
    assert_eq!(verdict(&pool, guard, Cap::Unlimited), Verdict::PassOver(P));
    assert_eq!(picks(&pool, guard, Cap::Unlimited), [0, 50, 0]);
}

#[tokio::test(start_paused = true)]
async fn with_a_learned_limit_peers_are_judged_by_their_own_limits_beside_the_reports() {
    fastrand::seed(9);
    let pool = pool(3);
    let guard = AffinityGuard::default();
    // `max_inflight = "auto"` with a learned limit of 1; P's engine queues 2 of other
    // clients' requests with none running. Peer 1 is at its limit, peer 2 is not.
    let cap = Cap::Learned(Bounds { min: 1, max: 1 });
    report(&pool, P, 2.0, 0.0);
    let _q = busy(&pool, 1, 1);
    assert_eq!(verdict(&pool, guard, cap), Verdict::PassOver(P));
    assert_eq!(picks(&pool, guard, cap), [0, 0, 50]);
    // P running 3 shows 3 slots, but each peer's own learned limit counts: peer 2
    // at its limit of 1 would queue the request too, so the fallback keeps it on P
    // (its load 4 is within abs 4 of the least, 1).
    report(&pool, P, 1.0, 3.0);
    let _r = busy(&pool, 2, 1);
    assert_eq!(verdict(&pool, guard, cap), Verdict::Stay(P));
}
