//! The wait queue of an upstream: it admits requests (a slot now, or a place in
//! line) and dispatches freed slots to waiters in the order of its
//! [`Discipline`] (arrival order unless `priority` or `fair_share` say otherwise).
//! A slow replica's free slot that the first in line declines (waiting for a
//! faster replica is expected to answer it sooner) goes to the last in line, the
//! one with the longest wait ahead of it, when taking it is the quicker answer.
//!
//! One queue serves an upstream across config generations; it dispatches through
//! the newest published [`Balancer`], so requests queued before a reload are served
//! by the new backends and caps. A dropped [`super::Lease`] tells the queue
//! directly; nothing calls up into a pool. Only the slow path takes the lock: a
//! request that finds a free slot never touches the queue, and releasing a slot
//! reads one atomic unless someone is waiting.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::oneshot;

use super::backend::Lease;
use super::balancer::{Balancer, Pick};
use super::cold::ColdPeriod;
use super::sched::{Discipline, Flows, Ticket};
use super::select::Tried;
use crate::config::MAX_CLASSES;

/// The outcome of asking for a slot, waiting in the queue if needed.
#[derive(Debug)]
pub enum Admission {
    /// A slot, and how long the request waited for it.
    Leased(Lease, Duration),
    NoneHealthy,
    /// Every backend busy and the queue full (or no queue).
    Overloaded,
    QueueTimeout,
    /// Held for a replica to come up (`hold`), and none did in time.
    HoldExpired,
    /// The client went away while waiting.
    ClientGone,
}

/// What the queue needs to know of a request asking for a slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asking<'a> {
    /// Backends it already tried (a retry goes elsewhere).
    pub tried: &'a Tried,
    pub ticket: Ticket,
    /// Its key hash, for consistent hashing.
    pub hash: u64,
}

/// One waiting request.
#[derive(Debug)]
struct Waiter {
    id: u64,
    tx: oneshot::Sender<Lease>,
    tried: Tried,
    hash: u64,
    class: u8,
    /// Its flow's slot in [`Flows`].
    flow: u32,
    /// When it joined (tokio's clock, for the starvation bound).
    since: tokio::time::Instant,
    /// Passed over in the current dispatch (no slot it may take).
    skip: bool,
}

#[derive(Debug, Default)]
struct Waiters {
    /// In arrival order.
    list: VecDeque<Waiter>,
    next_id: u64,
    flows: Flows,
}

impl Waiters {
    /// Takes waiter `i` out of the line; `served`: it is about to get a slot.
    fn take(&mut self, i: usize, served: bool) -> Option<Waiter> {
        let w = self.list.remove(i)?;
        self.flows.leave(w.class, w.flow, served);
        Some(w)
    }
}

/// The wait queue of one upstream, ordered by its [`Discipline`].
#[derive(Debug, Default)]
pub struct WaitQueue {
    /// Equals `list.len()` outside the lock.
    len: AtomicUsize,
    inner: Mutex<Waiters>,
    /// The newest published generation's balancer, which hands out freed slots.
    balancer: ArcSwapOption<Balancer>,
    /// The newest published generation's queue order.
    discipline: ArcSwapOption<Discipline>,
    /// Requests in flight per priority class (kept with `priority` only).
    class_inflight: [AtomicU32; MAX_CLASSES],
    /// Cold periods (no replica ready) and their wake calls.
    cold: ColdPeriod,
    /// A dispatch is scheduled to offer a declined free slot again.
    recheck: AtomicBool,
}

impl WaitQueue {
    pub fn new() -> Arc<Self> {
        Arc::new(WaitQueue::default())
    }

    /// Requests waiting now.
    #[inline]
    pub fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Requests waiting and in flight now, per priority class (highest first; in
    /// flight is counted on upstreams with `priority` only).
    pub(crate) fn class_counts(&self) -> [(u32, u32); MAX_CLASSES] {
        let waiting = self.lock().flows.class_lens();
        std::array::from_fn(|i| (waiting[i], self.class_inflight[i].load(Ordering::Relaxed)))
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        // A panic while holding this lock cannot leave the list inconsistent
        // (every mutation is a single push/remove), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `balancer` and `discipline` the ones that serve waiters (a generation
    /// was published) and hands them every slot they can fill now.
    pub fn publish(self: &Arc<Self>, balancer: Arc<Balancer>, discipline: Arc<Discipline>) {
        self.discipline.store(Some(discipline));
        self.balancer.store(Some(balancer));
        self.dispatch();
    }

    /// Counts a request of `class` in flight, unless that would take the class
    /// past its share cap of `balancer`'s slots. Always true without `priority`.
    #[inline]
    fn reserve(&self, d: &Discipline, balancer: &Balancer, class: u8) -> bool {
        if !d.has_classes() {
            return true;
        }
        let counter = &self.class_inflight[usize::from(class) % MAX_CLASSES];
        let now = counter.fetch_add(1, Ordering::AcqRel);
        match d.share_cap(class, balancer.slots()) {
            Some(cap) if now >= cap => {
                counter.fetch_sub(1, Ordering::AcqRel);
                false
            }
            _ => true,
        }
    }

    /// Gives back a count taken by `reserve` (held by a lease, or unused).
    #[inline]
    pub(crate) fn release_class(&self, class: u8) {
        let counter = &self.class_inflight[usize::from(class) % MAX_CLASSES];
        // Never below zero, even for a lease counted before a reload changed classes.
        let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// A lease taken after `reserve`: it holds the class's count from now on.
    #[inline]
    fn charged(d: &Discipline, mut lease: Lease, class: u8) -> Lease {
        if d.has_classes() {
            lease.set_class(class);
        }
        lease
    }

    /// Takes a slot through `balancer` (the request's generation), waiting in line
    /// when every backend is at `max_inflight` or the request's class is at its
    /// share cap, up to its class's queue size and timeout (and the upstream's
    /// queue size for all classes). Waiters are served in `discipline`'s order.
    /// `client_gone` resolves if the client disconnects; the waiter then leaves the
    /// queue without taking a slot.
    pub(crate) async fn admit<F>(
        self: &Arc<Self>,
        balancer: &Balancer,
        discipline: &Discipline,
        asking: Asking<'_>,
        client_gone: F,
    ) -> Admission
    where
        F: Future<Output = ()>,
    {
        let Asking {
            tried,
            ticket,
            hash,
        } = asking;
        let class = ticket.class;
        // Arrivals do not jump the queue: with waiters present, join them.
        if self.is_empty() {
            if self.reserve(discipline, balancer, class) {
                match balancer.pick(self, tried, hash) {
                    Pick::Leased(lease) => {
                        let lease = Self::charged(discipline, lease, class);
                        return Admission::Leased(lease, Duration::ZERO);
                    }
                    Pick::NoneHealthy => {
                        self.unreserve(discipline, class);
                        return Admission::NoneHealthy;
                    }
                    Pick::AllBusy | Pick::Wait(_) => self.unreserve(discipline, class),
                }
            } else if !balancer.has_untried(tried) {
                return Admission::NoneHealthy;
            }
        } else if !balancer.has_untried(tried) {
            return Admission::NoneHealthy;
        }
        let started = Instant::now();
        let limits = discipline.queue(class);
        let Some((id, rx)) = self.push(balancer.queue().size, limits.size, asking) else {
            // No room to wait: a slower free backend beats a rejection.
            if self.reserve(discipline, balancer, class) {
                if let Pick::Leased(lease) = balancer.pick_now(self, tried, hash) {
                    let lease = Self::charged(discipline, lease, class);
                    return Admission::Leased(lease, Duration::ZERO);
                }
                self.unreserve(discipline, class);
            }
            return Admission::Overloaded;
        };
        self.wait(
            id,
            rx,
            started,
            limits.timeout,
            Admission::QueueTimeout,
            client_gone,
        )
        .await
    }

    #[inline]
    fn unreserve(&self, d: &Discipline, class: u8) {
        if d.has_classes() {
            self.release_class(class);
        }
    }

    /// Waits in line, up to `hold` and the queue's size, for a replica to become
    /// ready when none is (`hold`): a replica coming up dispatches the queue.
    pub(crate) async fn hold<F>(
        self: &Arc<Self>,
        balancer: &Balancer,
        discipline: &Discipline,
        hold: Duration,
        asking: Asking<'_>,
        client_gone: F,
    ) -> Admission
    where
        F: Future<Output = ()>,
    {
        let started = Instant::now();
        let class_size = discipline.queue(asking.ticket.class).size;
        let Some((id, rx)) = self.push(balancer.queue().size, class_size, asking) else {
            return Admission::NoneHealthy;
        };
        self.wait(id, rx, started, hold, Admission::HoldExpired, client_gone)
            .await
    }

    /// Waits for waiter `id`'s slot, for at most `timeout` (then `expired`).
    async fn wait<F>(
        self: &Arc<Self>,
        id: u64,
        rx: oneshot::Receiver<Lease>,
        started: Instant,
        timeout: Duration,
        expired: Admission,
        client_gone: F,
    ) -> Admission
    where
        F: Future<Output = ()>,
    {
        let mut guard = Dequeue {
            queue: self,
            id: Some(id),
        };
        // A slot may have freed between the pick and the push.
        self.dispatch();
        let outcome = tokio::select! {
            lease = rx => match lease {
                Ok(lease) => Admission::Leased(lease, started.elapsed()),
                Err(_) => Admission::NoneHealthy,
            },
            _ = tokio::time::sleep(timeout) => expired,
            _ = client_gone => Admission::ClientGone,
        };
        if matches!(outcome, Admission::Leased(..)) {
            guard.id = None; // dispatch already removed it
        }
        outcome
    }

    /// Cold periods (no replica ready) and their wake calls.
    pub(crate) fn cold(&self) -> &ColdPeriod {
        &self.cold
    }

    /// A replica is ready again: the next cold period wakes the upstream anew.
    pub fn end_cold(&self) {
        self.cold.end();
    }

    /// Adds a waiter unless `capacity` are already waiting, or `class_capacity`
    /// of its class.
    fn push(
        &self,
        capacity: usize,
        class_capacity: usize,
        asking: Asking<'_>,
    ) -> Option<(u64, oneshot::Receiver<Lease>)> {
        let Asking {
            tried,
            ticket,
            hash,
        } = asking;
        let mut w = self.lock();
        if w.list.len() >= capacity || w.flows.class_len(ticket.class) as usize >= class_capacity {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let id = w.next_id;
        w.next_id += 1;
        let flow = w.flows.join(ticket);
        w.list.push_back(Waiter {
            id,
            tx,
            tried: tried.clone(),
            hash,
            class: ticket.class,
            flow,
            since: tokio::time::Instant::now(),
            skip: false,
        });
        self.len.store(w.list.len(), Ordering::SeqCst);
        Some((id, rx))
    }

    /// Removes waiter `id` if it is still queued (it timed out or its client left).
    fn remove(&self, id: u64) {
        let mut w = self.lock();
        if let Some(pos) = w.list.iter().position(|x| x.id == id) {
            w.take(pos, false);
            self.len.store(w.list.len(), Ordering::SeqCst);
        }
    }

    /// The fastest typical time per request (µs) among the backends of the
    /// newest published generation; 0 when none is measured yet.
    pub(crate) fn fastest_latency_us(&self) -> u32 {
        self.balancer.load().as_ref().map_or(0, |b| {
            b.backends()
                .iter()
                .map(|b| b.latency_us())
                .filter(|&us| us != 0)
                .min()
                .unwrap_or(0)
        })
    }

    /// Hands free slots to queued requests in the discipline's order (see
    /// [`Discipline::rank`]). Called when a slot frees, a backend comes up, a
    /// generation is published, or a request joins the queue.
    pub fn dispatch(self: &Arc<Self>) {
        if self.is_empty() {
            return;
        }
        let (Some(balancer), Some(discipline)) =
            (self.balancer.load_full(), self.discipline.load_full())
        else {
            return; // nothing published yet: the first publish dispatches
        };
        let now = tokio::time::Instant::now();
        // Leases are never dropped under the lock: dropping one dispatches again.
        let mut spare: Vec<Lease> = Vec::new();
        {
            let mut w = self.lock();
            let mut i = 0;
            while i < w.list.len() {
                if w.list[i].tx.is_closed() {
                    w.take(i, false);
                } else {
                    w.list[i].skip = false;
                    i += 1;
                }
            }
            loop {
                // The first and the last waiter in the discipline's order.
                let mut best: Option<(usize, super::sched::Rank)> = None;
                let mut last: Option<(usize, super::sched::Rank)> = None;
                let mut waiting = 0;
                for (i, x) in w.list.iter().enumerate() {
                    if x.skip {
                        continue;
                    }
                    waiting += 1;
                    let rank = discipline.rank(x.class, w.flows.served(x.flow), x.id, x.since, now);
                    if best.is_none_or(|(_, b)| rank < b) {
                        best = Some((i, rank));
                    }
                    if last.is_none_or(|(_, b)| rank >= b) {
                        last = Some((i, rank));
                    }
                }
                let Some((i, _)) = best else { break };
                let class = w.list[i].class;
                if !self.reserve(&discipline, &balancer, class) {
                    // At its share cap: nobody of this class gets a slot now.
                    for x in w.list.iter_mut().filter(|x| x.class == class) {
                        x.skip = true;
                    }
                    continue;
                }
                let reusable = spare
                    .iter()
                    .position(|l| !w.list[i].tried.contains(l.backend().index()));
                let picked = match reusable {
                    Some(pos) => Pick::Leased(spare.swap_remove(pos)),
                    None => balancer.pick(self, &w.list[i].tried, w.list[i].hash),
                };
                let (i, lease) = match picked {
                    Pick::Leased(l) => (i, l),
                    Pick::Wait(after) => {
                        self.unreserve(&discipline, class);
                        // The first in line is better off waiting for a fast slot; the
                        // last, with everyone else ahead of it, may not be: the free
                        // slow slot is its (see `Balancer::pick_behind`).
                        let tail = last.map(|(j, _)| j).filter(|&j| j != i).and_then(|j| {
                            self.offer_behind(&w.list[j], waiting - 1, &balancer, &discipline)
                                .map(|l| (j, l))
                        });
                        match tail {
                            Some(taken) => taken,
                            None => {
                                self.recheck_after(after);
                                if w.list[i].tried.is_empty() {
                                    break; // every waiter would be told the same
                                }
                                w.list[i].skip = true;
                                continue;
                            }
                        }
                    }
                    Pick::AllBusy | Pick::NoneHealthy => {
                        self.unreserve(&discipline, class);
                        if w.list[i].tried.is_empty() && balancer.picks_alike() {
                            // Every waiter would be refused the same way.
                            break;
                        }
                        w.list[i].skip = true;
                        continue;
                    }
                };
                let lease = Self::charged(&discipline, lease, w.list[i].class);
                if let Some(waiter) = w.take(i, true) {
                    if let Err(lease) = waiter.tx.send(lease) {
                        spare.push(lease); // its client just left; offer the slot on
                    }
                }
            }
            self.len.store(w.list.len(), Ordering::SeqCst);
        }
        // Released outside the lock: dropping a lease may dispatch again.
        drop(spare);
    }

    /// A free slot for `waiter`, who has `ahead` waiters in front of it, if taking
    /// one now beats waiting for a faster one; its class's count is reserved with it.
    fn offer_behind(
        self: &Arc<Self>,
        waiter: &Waiter,
        ahead: usize,
        balancer: &Balancer,
        discipline: &Discipline,
    ) -> Option<Lease> {
        if !self.reserve(discipline, balancer, waiter.class) {
            return None;
        }
        match balancer.pick_behind(self, &waiter.tried, waiter.hash, ahead) {
            Pick::Leased(l) => Some(l),
            _ => {
                self.unreserve(discipline, waiter.class);
                None
            }
        }
    }

    /// Dispatches again `after` from now (once, however many ask meanwhile): a free
    /// slot declined for a faster one is offered again as time passes, since the
    /// requests on the fast replicas age (see `Balancer::pick_behind`).
    fn recheck_after(self: &Arc<Self>, after: Duration) {
        if self.recheck.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.recheck.store(false, Ordering::Release);
            return;
        };
        let queue = Arc::downgrade(self);
        rt.spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(queue) = queue.upgrade() {
                queue.recheck.store(false, Ordering::Release);
                queue.dispatch();
            }
        });
    }
}

/// Removes a waiter that leaves without a slot (timeout, client gone, cancelled).
struct Dequeue<'a> {
    queue: &'a WaitQueue,
    id: Option<u64>,
}

impl Drop for Dequeue<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.queue.remove(id);
        }
    }
}
