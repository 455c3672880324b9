//! The wait queue's discipline on paused clocks: class order, the starvation
//! bound, share caps, per-class limits and fair share between flows.

use std::sync::Arc;
use std::time::Duration;

use pingora::http::RequestHeader;
use tokio::sync::mpsc;

use super::pool::Pool;
use super::queue::Admission;
use super::sched::Ticket;
use super::select::Tried;
use super::Lease;
use crate::config::{
    BackendAddr, BackendSource, FairShare, Priority, PriorityClass, Queue, Upstream,
};

const QUEUE: Queue = Queue {
    size: 64,
    timeout: Duration::from_secs(30),
};

fn class(name: &str) -> PriorityClass {
    PriorityClass {
        name: name.into(),
        queue: QUEUE,
        max_share: None,
    }
}

/// One backend with `slots` in-flight slots; interactive, default, batch.
fn upstream(slots: u32, batch: PriorityClass, fair: Option<FairShare>) -> Upstream {
    let backends = vec![BackendAddr {
        addr: "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}")),
        weight: 1,
    }];
    Upstream {
        max_inflight: slots,
        queue: QUEUE,
        priority: Some(Priority {
            header: "x-priority".into(),
            classes: vec![class("interactive"), class("default"), batch],
            default: 1,
            max_wait_behind: Duration::from_secs(10),
        }),
        fair_share: fair,
        ..Upstream::with_defaults("t", BackendSource::Static(backends))
    }
}

const INTERACTIVE: u8 = 0;
const DEFAULT: u8 = 1;
const BATCH: u8 = 2;

fn ticket(class: u8, flow: u64) -> Ticket {
    Ticket { class, flow }
}

type Granted = mpsc::UnboundedReceiver<(&'static str, Admission)>;

/// Sends a request of `t` into the queue; its admission arrives on the channel,
/// labelled.
fn request(
    pool: &Arc<Pool>,
    tx: &mpsc::UnboundedSender<(&'static str, Admission)>,
    label: &'static str,
    t: Ticket,
) {
    let (pool, tx) = (Arc::clone(pool), tx.clone());
    tokio::spawn(async move {
        let a = pool
            .admit(&Tried::default(), t, 0, std::future::pending())
            .await;
        let _ = tx.send((label, a));
    });
}

/// Lets spawned requests run until `n` wait in the queue.
pub(super) async fn queued(pool: &Pool, n: usize) {
    for _ in 0..1000 {
        if pool.queued() == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("expected {n} queued, found {}", pool.queued());
}

async fn lease_now(pool: &Pool, t: Ticket) -> Lease {
    match pool
        .admit(&Tried::default(), t, 0, std::future::pending())
        .await
    {
        Admission::Leased(l, _) => l,
        other => panic!("expected a slot at once, got {other:?}"),
    }
}

/// Frees `held` and returns who got the slot (holding it).
async fn next(granted: &mut Granted, held: Lease) -> (&'static str, Lease) {
    drop(held);
    match granted.recv().await {
        Some((label, Admission::Leased(l, _))) => (label, l),
        Some((label, other)) => panic!("{label}: {other:?}"),
        None => panic!("no grant"),
    }
}

async fn order(pool: &Pool, granted: &mut Granted, mut held: Lease, n: usize) -> Vec<&'static str> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let (label, l) = next(granted, held).await;
        seen.push(label);
        held = l;
    }
    assert_eq!(pool.queued(), 0);
    seen
}

fn built(up: &Upstream) -> Arc<Pool> {
    let pool = Pool::build(up).unwrap_or_else(|e| panic!("{e}"));
    pool.publish();
    pool
}

#[tokio::test(start_paused = true)]
async fn higher_classes_are_served_first_and_each_class_in_arrival_order() {
    let pool = built(&upstream(1, class("batch"), None));
    let (tx, mut granted) = mpsc::unbounded_channel();
    let held = lease_now(&pool, ticket(DEFAULT, 0)).await;
    for (i, (label, c)) in [
        ("batch-1", BATCH),
        ("default-1", DEFAULT),
        ("batch-2", BATCH),
        ("interactive-1", INTERACTIVE),
        ("default-2", DEFAULT),
        ("interactive-2", INTERACTIVE),
    ]
    .into_iter()
    .enumerate()
    {
        request(&pool, &tx, label, ticket(c, 0));
        queued(&pool, i + 1).await;
    }
    let seen = order(&pool, &mut granted, held, 6).await;
    assert_eq!(
        seen,
        [
            "interactive-1",
            "interactive-2",
            "default-1",
            "default-2",
            "batch-1",
            "batch-2"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_max_wait_behind_is_served_before_newer_higher_classes() {
    let pool = built(&upstream(1, class("batch"), None));
    let (tx, mut granted) = mpsc::unbounded_channel();
    let held = lease_now(&pool, ticket(DEFAULT, 0)).await;
    request(&pool, &tx, "batch-old", ticket(BATCH, 0));
    queued(&pool, 1).await;
    tokio::time::advance(Duration::from_secs(6)).await;
    request(&pool, &tx, "batch-young", ticket(BATCH, 0));
    request(&pool, &tx, "interactive-1", ticket(INTERACTIVE, 0));
    queued(&pool, 3).await;
    // 6 s in: nothing promoted yet, interactive first.
    let (first, held) = next(&mut granted, held).await;
    assert_eq!(first, "interactive-1");
    request(&pool, &tx, "interactive-2", ticket(INTERACTIVE, 0));
    queued(&pool, 3).await;
    // 10 s in: the old batch request has waited max_wait_behind, the young one not.
    tokio::time::advance(Duration::from_secs(4)).await;
    let seen = order(&pool, &mut granted, held, 3).await;
    assert_eq!(seen, ["batch-old", "interactive-2", "batch-young"]);
}

#[tokio::test(start_paused = true)]
async fn a_class_at_its_share_cap_waits_while_others_take_free_slots() {
    let batch = PriorityClass {
        max_share: Some(50),
        ..class("batch")
    };
    let pool = built(&upstream(4, batch, None));
    let (tx, mut granted) = mpsc::unbounded_channel();
    let b1 = lease_now(&pool, ticket(BATCH, 0)).await;
    let _b2 = lease_now(&pool, ticket(BATCH, 0)).await;
    // Half of 4 slots run batch work: the third waits though two slots are free.
    request(&pool, &tx, "batch-3", ticket(BATCH, 0));
    queued(&pool, 1).await;
    assert!(granted.try_recv().is_err());
    // Other classes still get the free slots at once, past the waiting batch request.
    let _i = lease_now(&pool, ticket(INTERACTIVE, 0)).await;
    let _d = lease_now(&pool, ticket(DEFAULT, 0)).await;
    assert_eq!(pool.queued(), 1);
    // A batch request finishing lets the waiting one in.
    let (label, _b3) = next(&mut granted, b1).await;
    assert_eq!(label, "batch-3");
    let counts = pool.class_counts();
    assert_eq!(counts[2], ("batch", 0, 2));
    assert_eq!(counts[0], ("interactive", 0, 1));
}

#[tokio::test(start_paused = true)]
async fn each_class_has_its_own_queue_size_and_timeout() {
    let batch = PriorityClass {
        queue: Queue {
            size: 1,
            timeout: Duration::from_secs(5),
        },
        ..class("batch")
    };
    let pool = built(&upstream(1, batch, None));
    let (tx, mut granted) = mpsc::unbounded_channel();
    let _held = lease_now(&pool, ticket(DEFAULT, 0)).await;
    request(&pool, &tx, "batch-1", ticket(BATCH, 0));
    queued(&pool, 1).await;
    // The batch queue (size 1) is full; the default class still has room.
    let full = pool
        .admit(
            &Tried::default(),
            ticket(BATCH, 0),
            0,
            std::future::pending(),
        )
        .await;
    assert!(matches!(full, Admission::Overloaded), "{full:?}");
    request(&pool, &tx, "default-1", ticket(DEFAULT, 0));
    queued(&pool, 2).await;
    // Batch gives up after its 5 s, default waits on (30 s).
    tokio::time::advance(Duration::from_secs(6)).await;
    match granted.recv().await {
        Some(("batch-1", Admission::QueueTimeout)) => {}
        Some((label, a)) => panic!("{label}: {a:?}"),
        None => panic!("no answer"),
    }
    queued(&pool, 1).await;
    assert!(granted.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_flooding_flow_is_served_in_turn_with_a_light_one() {
    let pool = built(&upstream(1, class("batch"), Some(FairShare::Consumer)));
    let (tx, mut granted) = mpsc::unbounded_channel();
    let held = lease_now(&pool, ticket(DEFAULT, 7)).await;
    let flood = ["a1", "a2", "a3", "a4", "a5", "a6"];
    for (i, label) in flood.iter().enumerate() {
        request(&pool, &tx, label, ticket(DEFAULT, 7));
        queued(&pool, i + 1).await;
    }
    request(&pool, &tx, "b1", ticket(DEFAULT, 9));
    request(&pool, &tx, "b2", ticket(DEFAULT, 9));
    queued(&pool, 8).await;
    let seen = order(&pool, &mut granted, held, 8).await;
    // Least attained service: b joins at a's count and then alternates with it.
    assert_eq!(seen, ["a1", "b1", "a2", "b2", "a3", "a4", "a5", "a6"]);
}

#[tokio::test(start_paused = true)]
async fn without_fair_share_one_flow_is_served_in_arrival_order() {
    let pool = built(&upstream(1, class("batch"), None));
    let (tx, mut granted) = mpsc::unbounded_channel();
    let held = lease_now(&pool, ticket(DEFAULT, 0)).await;
    for (i, label) in ["a1", "a2", "a3", "b1"].iter().enumerate() {
        request(&pool, &tx, label, ticket(DEFAULT, 0));
        queued(&pool, i + 1).await;
    }
    assert_eq!(
        order(&pool, &mut granted, held, 4).await,
        ["a1", "a2", "a3", "b1"]
    );
}

#[tokio::test(start_paused = true)]
async fn fairness_applies_within_a_class_after_priority() {
    let pool = built(&upstream(1, class("batch"), Some(FairShare::Consumer)));
    let (tx, mut granted) = mpsc::unbounded_channel();
    let held = lease_now(&pool, ticket(DEFAULT, 1)).await;
    for (i, (label, c, f)) in [
        ("a-batch", BATCH, 1),
        ("a-int-1", INTERACTIVE, 1),
        ("a-int-2", INTERACTIVE, 1),
        ("b-batch", BATCH, 2),
        ("b-int", INTERACTIVE, 2),
    ]
    .into_iter()
    .enumerate()
    {
        request(&pool, &tx, label, ticket(c, f));
        queued(&pool, i + 1).await;
    }
    assert_eq!(
        order(&pool, &mut granted, held, 5).await,
        ["a-int-1", "b-int", "a-int-2", "a-batch", "b-batch"]
    );
}

#[test]
fn tickets_come_from_the_priority_header_and_the_requester() {
    let up = upstream(
        1,
        class("batch"),
        Some(FairShare::Header("x-tenant".into())),
    );
    let d = super::sched::Discipline::from_config(&up);
    let req = |headers: &[(&'static str, &'static str)]| {
        let mut r =
            RequestHeader::build("POST", b"/v1/chat", None).unwrap_or_else(|e| panic!("{e}"));
        for (k, v) in headers {
            r.insert_header(*k, *v).unwrap_or_else(|e| panic!("{e}"));
        }
        r
    };
    assert_eq!(d.ticket(&req(&[]), None), ticket(DEFAULT, 0));
    assert_eq!(
        d.ticket(&req(&[("x-priority", "Batch")]), None).class,
        BATCH
    );
    assert_eq!(
        d.ticket(&req(&[("x-priority", "urgent")]), None).class,
        DEFAULT,
        "an unknown class is the default"
    );
    let a = d.ticket(&req(&[("x-tenant", "a")]), Some("ignored"));
    let b = d.ticket(&req(&[("x-tenant", "b")]), None);
    assert_ne!(a.flow, b.flow);
    assert_eq!(a, d.ticket(&req(&[("x-tenant", "a")]), None));
    let by_consumer = super::sched::Discipline::from_config(&Upstream {
        fair_share: Some(FairShare::Consumer),
        ..up
    });
    assert_ne!(
        by_consumer.ticket(&req(&[]), Some("alice")).flow,
        by_consumer.ticket(&req(&[]), Some("bob")).flow
    );
}
