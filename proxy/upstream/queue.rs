//! The wait queue of an upstream: it admits requests (a slot now, or a place in
//! line) and dispatches freed slots to the oldest waiter.
//!
//! One queue serves an upstream across config generations; it dispatches through
//! the newest published [`Balancer`], so requests queued before a reload are served
//! by the new backends and caps. A dropped [`super::Lease`] tells the queue
//! directly; nothing calls up into a pool. Only the slow path takes the lock: a
//! request that finds a free slot never touches the queue, and releasing a slot
//! reads one atomic unless someone is waiting.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::oneshot;

use super::backend::Lease;
use super::balancer::{Balancer, Pick};
use super::select::Tried;

/// The outcome of asking for a slot, waiting in the queue if needed.
#[derive(Debug)]
pub enum Admission {
    /// A slot, and how long the request waited for it.
    Leased(Lease, Duration),
    NoneHealthy,
    /// Every backend busy and the queue full (or no queue).
    Overloaded,
    QueueTimeout,
    /// The client went away while waiting.
    ClientGone,
}

/// One waiting request.
#[derive(Debug)]
struct Waiter {
    id: u64,
    tx: oneshot::Sender<Lease>,
    tried: Tried,
    hash: u64,
}

#[derive(Debug, Default)]
struct Waiters {
    list: VecDeque<Waiter>,
    next_id: u64,
}

/// The FIFO wait queue of one upstream.
#[derive(Debug, Default)]
pub struct WaitQueue {
    /// Equals `list.len()` outside the lock.
    len: AtomicUsize,
    inner: Mutex<Waiters>,
    /// The newest published generation's balancer, which hands out freed slots.
    balancer: ArcSwapOption<Balancer>,
    /// In a cold period (no replica ready) whose wake call was made.
    cold: AtomicBool,
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

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        // A panic while holding this lock cannot leave the list inconsistent
        // (every mutation is a single push/remove), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `balancer` the one that serves waiters (a generation was published)
    /// and hands it every slot it can fill now.
    pub fn publish(self: &Arc<Self>, balancer: Arc<Balancer>) {
        self.balancer.store(Some(balancer));
        self.dispatch();
    }

    /// Takes a slot through `balancer` (the request's generation), waiting in line
    /// (up to the queue's size and timeout) when every backend is at
    /// `max_inflight`. `client_gone` resolves if the client disconnects; the waiter
    /// then leaves the queue without taking a slot.
    pub async fn admit<F>(
        self: &Arc<Self>,
        balancer: &Balancer,
        tried: &Tried,
        hash: u64,
        client_gone: F,
    ) -> Admission
    where
        F: Future<Output = ()>,
    {
        // Arrivals do not jump the queue: with waiters present, join them.
        if self.is_empty() {
            match balancer.pick(self, tried, hash) {
                Pick::Leased(lease) => return Admission::Leased(lease, Duration::ZERO),
                Pick::NoneHealthy => return Admission::NoneHealthy,
                Pick::AllBusy => {}
            }
        } else if !balancer.has_untried(tried) {
            return Admission::NoneHealthy;
        }
        let started = Instant::now();
        let Some((id, rx)) = self.push(balancer.queue().size, tried, hash) else {
            // No room to wait: a slower free backend beats a rejection.
            return match balancer.pick_now(self, tried, hash) {
                Pick::Leased(lease) => Admission::Leased(lease, Duration::ZERO),
                _ => Admission::Overloaded,
            };
        };
        let timeout = balancer.queue().timeout;
        self.wait(
            id,
            rx,
            started,
            timeout,
            Admission::QueueTimeout,
            client_gone,
        )
        .await
    }

    /// Waits in line, up to `hold` and the queue's size, for a replica to become
    /// ready when none is (`hold`): a replica coming up dispatches the queue.
    pub async fn hold<F>(
        self: &Arc<Self>,
        balancer: &Balancer,
        hold: Duration,
        tried: &Tried,
        hash: u64,
        client_gone: F,
    ) -> Admission
    where
        F: Future<Output = ()>,
    {
        let started = Instant::now();
        let Some((id, rx)) = self.push(balancer.queue().size, tried, hash) else {
            return Admission::NoneHealthy;
        };
        self.wait(id, rx, started, hold, Admission::NoneHealthy, client_gone)
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

    /// Marks the start of a cold period (no replica ready); true for the first
    /// caller of the period, who wakes the upstream (`wake`).
    pub fn begin_cold(&self) -> bool {
        !self.cold.swap(true, Ordering::AcqRel)
    }

    /// A replica is ready again: the next cold period wakes the upstream anew.
    pub fn end_cold(&self) {
        if self.cold.load(Ordering::Relaxed) {
            self.cold.store(false, Ordering::Release);
        }
    }

    /// Adds a waiter unless `capacity` are already waiting.
    fn push(
        &self,
        capacity: usize,
        tried: &Tried,
        hash: u64,
    ) -> Option<(u64, oneshot::Receiver<Lease>)> {
        let mut w = self.lock();
        if w.list.len() >= capacity {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let id = w.next_id;
        w.next_id += 1;
        w.list.push_back(Waiter {
            id,
            tx,
            tried: tried.clone(),
            hash,
        });
        self.len.store(w.list.len(), Ordering::SeqCst);
        Some((id, rx))
    }

    /// Removes waiter `id` if it is still queued (it timed out or its client left).
    fn remove(&self, id: u64) {
        let mut w = self.lock();
        if let Some(pos) = w.list.iter().position(|x| x.id == id) {
            w.list.remove(pos);
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

    /// Hands free slots to queued requests, oldest first. Called when a slot frees,
    /// a backend comes up, a generation is published, or a request joins the queue.
    pub fn dispatch(self: &Arc<Self>) {
        if self.is_empty() {
            return;
        }
        let Some(balancer) = self.balancer.load_full() else {
            return; // nothing published yet: the first publish dispatches
        };
        // Leases are never dropped under the lock: dropping one dispatches again.
        let mut spare: Vec<Lease> = Vec::new();
        {
            let mut w = self.lock();
            let mut i = 0;
            while i < w.list.len() {
                if w.list[i].tx.is_closed() {
                    w.list.remove(i);
                    continue;
                }
                let reusable = spare
                    .iter()
                    .position(|l| !w.list[i].tried.contains(l.backend().index()));
                let lease = match reusable {
                    Some(pos) => spare.swap_remove(pos),
                    None => match balancer.pick(self, &w.list[i].tried, w.list[i].hash) {
                        Pick::Leased(l) => l,
                        _ => {
                            i += 1;
                            continue;
                        }
                    },
                };
                if let Some(waiter) = w.list.remove(i) {
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
