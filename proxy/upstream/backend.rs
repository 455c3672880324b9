//! A replica as one config generation's pool sees it: the shared [`Replica`]
//! plus this generation's weight, position in the pool and pingora peer; and the
//! [`Lease`] on one of its in-flight slots.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;

use super::balancer::Cap;
use super::limit::Answer;
use super::queue::WaitQueue;
use super::replica::Replica;

/// A replica in one generation's pool. Shared by every request that uses it;
/// dereferences to its [`Replica`] for the live state.
#[derive(Debug)]
pub struct Backend {
    /// State shared with the same address in other generations.
    replica: Arc<Replica>,
    weight: u32,
    /// Position in its pool (for the per-request tried set).
    index: u32,
    /// The peer handed to pingora, cloned per attempt.
    peer: HttpPeer,
}

impl Deref for Backend {
    type Target = Replica;

    fn deref(&self) -> &Replica {
        &self.replica
    }
}

impl Backend {
    pub(crate) fn new(replica: Arc<Replica>, weight: u32, index: usize, peer: HttpPeer) -> Self {
        Backend {
            replica,
            weight: weight.max(1),
            index: index as u32,
            peer,
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight
    }

    pub fn index(&self) -> usize {
        self.index as usize
    }

    pub fn peer(&self) -> &HttpPeer {
        &self.peer
    }

    /// The replica behind this backend (the same object in every generation).
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    /// Is `other` the same replica (possibly of another generation)?
    pub fn same_replica(&self, other: &Backend) -> bool {
        Arc::ptr_eq(&self.replica, &other.replica)
    }

    /// Takes an in-flight slot if fewer than `cap` are taken (`cap == 0`: no
    /// limit) and, with `expect`, only if exactly that many are (see
    /// `Replica::take_slot`). The lease tells `queue` when it frees the slot.
    #[inline]
    pub(crate) fn try_acquire(
        self: &Arc<Self>,
        cap: u32,
        queue: &Arc<WaitQueue>,
        expect: Option<u32>,
    ) -> Option<Lease> {
        let (started_us, ahead) = self.replica.take_slot(cap, expect)?;
        Some(Lease {
            backend: Arc::clone(self),
            queue: Arc::clone(queue),
            started_us,
            ahead,
            class: NO_CLASS,
        })
    }
}

/// One in-flight request on a backend. Dropping it frees the slot and tells the
/// upstream's wait queue, which hands the slot to the oldest waiter; so the count
/// stays right on every exit path: success, error, client abort, retry elsewhere.
#[derive(Debug)]
pub struct Lease {
    backend: Arc<Backend>,
    queue: Arc<WaitQueue>,
    /// When the slot was taken (clock µs), to take it back out of the age sum.
    started_us: u64,
    /// Requests the backend was already running when this one was sent.
    ahead: u32,
    /// The priority class whose in-flight count this lease holds, or `NO_CLASS`.
    class: u8,
}

/// A lease counted in no class's in-flight count (upstreams without `priority`).
pub(crate) const NO_CLASS: u8 = u8::MAX;

impl Lease {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Records this request's time to response headers, `took`, as a sample of
    /// the backend's time per request: divided by the requests it ran at once
    /// (this one and those already running when it was sent). On a replica that
    /// serves one at a time that removes the time spent queued inside it, so a
    /// busy replica does not look slow for being busy (its load is counted
    /// already); on one that batches it understates every replica alike, which
    /// keeps them comparable. A replica's first answers are bounded by the
    /// fastest of its peers in the upstream (see [`Replica::record_latency_among`]).
    /// The whole time also feeds [`Replica::service_us`], how long a slot stays
    /// taken, which the wait-or-run choice reads.
    #[inline]
    pub fn record_latency(&self, took: Duration) {
        self.backend
            .record_latency_among(took / (self.ahead + 1), || self.queue.fastest_latency_us());
        self.backend.record_service(took);
    }

    /// Feeds this request's answer (time to response headers, status) to the
    /// backend's learned limit when `cap` is learned. When the limit grows, the
    /// wait queue gets the new slots at once.
    pub fn learn(&self, took: Duration, status: u16, cap: Cap) {
        let Cap::Learned(bounds) = cap else {
            return;
        };
        let answer = Answer {
            took_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            concurrency: self.ahead + 1,
            overloaded: status == 429 || status == 503,
            sent_us: self.started_us,
            inflight: self.backend.replica.inflight(),
        };
        if let Some(limit) = self.backend.replica.learn_limit(answer, bounds) {
            log::debug!(
                "backend {}: learned max_inflight {limit}",
                self.backend.label()
            );
            self.queue.dispatch();
        }
    }
}

impl Lease {
    /// Makes this lease hold one of `class`'s in-flight count (already taken by
    /// the queue), giving back the one it held before.
    #[inline]
    pub(crate) fn set_class(&mut self, class: u8) {
        if self.class != NO_CLASS {
            self.queue.release_class(self.class);
        }
        self.class = class;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.class != NO_CLASS {
            self.queue.release_class(self.class);
        }
        self.backend.replica.release_slot(self.started_us);
        if !self.queue.is_empty() {
            self.queue.dispatch();
        }
    }
}
