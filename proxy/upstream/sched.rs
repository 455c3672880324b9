//! The order of an upstream's wait queue: priority classes served highest first
//! with a starvation bound, per-class queue limits and share caps, and fair share
//! between requesters within a class.
//!
//! The discipline follows llm-d's flow control (strict priority bands; within a
//! band, fairness between flows; within a flow, arrival order) with the
//! least-attained-service choice between flows of the Virtual Token Counter (Sheng
//! et al., "Fairness in Serving Large Language Models", OSDI 2024): each
//! backlogged flow has a counter of the requests it was served; the flow with the
//! smallest counter goes next, and a flow that joins the backlog starts at the
//! smallest counter of those already waiting, so idling earns no credit and one
//! flooding requester cannot hold the queue. Service is counted in requests.

use std::time::Duration;

use pingora::http::RequestHeader;
use tokio::time::Instant;

use crate::config::{FairShare, Queue, Upstream, MAX_CLASSES};

/// Where a request waits: its priority class (an index, 0 highest) and the flow
/// (hash of its requester) it is served fairly against. `Default` is class 0,
/// flow 0: what every request of an upstream without scheduling gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ticket {
    pub(crate) class: u8,
    pub(crate) flow: u64,
}

/// One class's limits.
#[derive(Debug, Clone)]
struct Class {
    name: Box<str>,
    queue: Queue,
    /// Percent of the upstream's in-flight slots, 1-100.
    max_share: Option<u8>,
}

/// The scheduling rules of one generation of an upstream (`priority`, `fair_share`).
#[derive(Debug, Clone)]
pub struct Discipline {
    /// The class header (lower-case), with `priority`.
    header: Option<Box<str>>,
    /// Highest first; one unnamed class without `priority`.
    classes: Box<[Class]>,
    default: u8,
    max_wait_behind: Option<Duration>,
    fair: Option<FairShare>,
}

impl Discipline {
    /// The rules `up` configures; without `priority` one class with the upstream's
    /// queue, without `fair_share` one flow per class (arrival order).
    pub(crate) fn from_config(up: &Upstream) -> Discipline {
        let (header, classes, default, max_wait_behind) = match &up.priority {
            Some(p) => (
                Some(p.header.as_str().into()),
                p.classes
                    .iter()
                    .take(MAX_CLASSES)
                    .map(|c| Class {
                        name: c.name.as_str().into(),
                        queue: c.queue,
                        max_share: c.max_share,
                    })
                    .collect(),
                p.default as u8,
                Some(p.max_wait_behind),
            ),
            None => (
                None,
                vec![Class {
                    name: "".into(),
                    queue: up.queue,
                    max_share: None,
                }]
                .into_boxed_slice(),
                0,
                None,
            ),
        };
        Discipline {
            header,
            classes,
            default,
            max_wait_behind,
            fair: up.fair_share.clone(),
        }
    }

    /// Are requests sorted into classes (`priority`)? Only then is each class's
    /// in-flight count kept.
    #[inline]
    pub(crate) fn has_classes(&self) -> bool {
        self.header.is_some()
    }

    /// The class names, highest first (empty without `priority`).
    pub(crate) fn class_names(&self) -> impl Iterator<Item = &str> {
        self.classes
            .iter()
            .filter(|_| self.has_classes())
            .map(|c| &*c.name)
    }

    /// The ticket of a request: its class from the priority header (absent or
    /// unknown: the default class) and its flow from `consumer` (the name the
    /// route's auth accepted) or the fair-share header. A request without a
    /// consumer or header value is in flow 0 with every other such request.
    pub(crate) fn ticket(&self, req: &RequestHeader, consumer: Option<&str>) -> Ticket {
        let class = match &self.header {
            Some(h) => req
                .headers
                .get(&**h)
                .and_then(|v| {
                    let v = v.as_bytes();
                    self.classes
                        .iter()
                        .position(|c| c.name.as_bytes().eq_ignore_ascii_case(v))
                })
                .map_or(self.default, |i| i as u8),
            None => 0,
        };
        let flow = match &self.fair {
            None => 0,
            Some(FairShare::Consumer) => consumer.map_or(0, |c| flow_hash(c.as_bytes())),
            Some(FairShare::Header(h)) => req
                .headers
                .get(h.as_str())
                .map_or(0, |v| flow_hash(v.as_bytes())),
        };
        Ticket { class, flow }
    }

    /// The name of class number `class`, with `priority`.
    pub(crate) fn class_name(&self, class: u8) -> Option<&str> {
        self.has_classes().then(|| &*self.class(class).name)
    }

    /// The queue limits of `class` (the upstream's, without `priority`).
    #[inline]
    pub(crate) fn queue(&self, class: u8) -> Queue {
        self.class(class).queue
    }

    fn class(&self, class: u8) -> &Class {
        // A class index from an older generation with more classes maps to the lowest.
        let i = usize::from(class).min(self.classes.len() - 1);
        &self.classes[i]
    }

    /// How many of `slots` (the upstream's in-flight slots) `class` may use; `None`: all.
    #[inline]
    pub(crate) fn share_cap(&self, class: u8, slots: u32) -> Option<u32> {
        self.class(class)
            .max_share
            .map(|pct| (u64::from(slots) * u64::from(pct) / 100).max(1) as u32)
    }

    /// The service order of a waiter: smaller goes first. A waiter that has waited
    /// `max_wait_behind` goes before every waiter that has not (oldest first);
    /// otherwise by class, then its flow's attained service, then arrival.
    #[inline]
    pub(crate) fn rank(
        &self,
        class: u8,
        served: u64,
        id: u64,
        since: Instant,
        now: Instant,
    ) -> Rank {
        let promoted = self
            .max_wait_behind
            .is_some_and(|m| now.saturating_duration_since(since) >= m);
        if promoted {
            (0, 0, 0, id)
        } else {
            (1, class, served, id)
        }
    }
}

/// See [`Discipline::rank`].
pub(crate) type Rank = (u8, u8, u64, u64);

/// A requester's flow id: a 64-bit hash, so no name is kept or allocated.
fn flow_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// A backlogged flow of one class: its attained service and waiters.
#[derive(Debug, Clone, Copy)]
struct Flow {
    class: u8,
    key: u64,
    served: u64,
    queued: u32,
}

/// The backlogged flows of a queue, in slots that are reused (no allocation once
/// the queue has been this deep), and the waiters per class.
#[derive(Debug, Default)]
pub(crate) struct Flows {
    slots: Vec<Flow>,
    free: Vec<u32>,
    class_len: [u32; MAX_CLASSES],
}

impl Flows {
    /// Waiters of `class` now.
    #[inline]
    pub(crate) fn class_len(&self, class: u8) -> u32 {
        self.class_len[usize::from(class) % MAX_CLASSES]
    }

    pub(crate) fn class_lens(&self) -> [u32; MAX_CLASSES] {
        self.class_len
    }

    /// A waiter of `t` joins: returns its flow's slot. A flow that was not
    /// backlogged starts at the least service of its class's backlogged flows.
    pub(crate) fn join(&mut self, t: Ticket) -> u32 {
        self.class_len[usize::from(t.class) % MAX_CLASSES] += 1;
        let mut least = None::<u64>;
        for (i, f) in self.slots.iter_mut().enumerate() {
            if f.queued == 0 || f.class != t.class {
                continue;
            }
            if f.key == t.flow {
                f.queued += 1;
                return i as u32;
            }
            least = Some(least.map_or(f.served, |l| l.min(f.served)));
        }
        let flow = Flow {
            class: t.class,
            key: t.flow,
            served: least.unwrap_or(0),
            queued: 1,
        };
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = flow;
                i
            }
            None => {
                self.slots.push(flow);
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// A waiter of `class` in flow slot `flow` leaves; `served`: it got a slot.
    pub(crate) fn leave(&mut self, class: u8, flow: u32, served: bool) {
        let c = &mut self.class_len[usize::from(class) % MAX_CLASSES];
        *c = c.saturating_sub(1);
        let Some(f) = self.slots.get_mut(flow as usize) else {
            return;
        };
        f.served += u64::from(served);
        f.queued = f.queued.saturating_sub(1);
        if f.queued == 0 {
            self.free.push(flow);
        }
    }

    /// The attained service of flow slot `flow`.
    #[inline]
    pub(crate) fn served(&self, flow: u32) -> u64 {
        self.slots.get(flow as usize).map_or(0, |f| f.served)
    }
}
