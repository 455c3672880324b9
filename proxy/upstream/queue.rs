//! The wait queue of a pool: requests that found every backend at `max_inflight`
//! wait here in arrival order, and a freed slot is handed to the oldest one directly.
//!
//! Only the slow path takes the lock: a request that finds a free slot never touches
//! the queue, and releasing a slot reads one atomic unless someone is waiting.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::oneshot;

use super::backend::Lease;
use super::pool::Pool;
use super::select::Tried;

/// One waiting request.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub id: u64,
    pub tx: oneshot::Sender<Lease>,
    pub tried: Tried,
    pub hash: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Waiters {
    pub list: VecDeque<Waiter>,
    next_id: u64,
}

#[derive(Debug)]
pub(crate) struct WaitQueue {
    /// Shared with the pool's backends; equals `list.len()` outside the lock.
    len: Arc<AtomicUsize>,
    inner: Mutex<Waiters>,
    /// The newest pool of the upstream, which hands out slots to the waiters.
    owner: Mutex<Weak<Pool>>,
}

impl WaitQueue {
    pub fn new() -> Self {
        WaitQueue {
            len: Arc::new(AtomicUsize::new(0)),
            inner: Mutex::new(Waiters::default()),
            owner: Mutex::new(Weak::new()),
        }
    }

    /// The pool that serves this queue (slow path only: someone is waiting).
    pub fn owner(&self) -> Weak<Pool> {
        self.owner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_owner(&self, pool: Weak<Pool>) {
        *self.owner.lock().unwrap_or_else(|p| p.into_inner()) = pool;
    }

    pub fn len_handle(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.len)
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    pub fn lock(&self) -> MutexGuard<'_, Waiters> {
        // A panic while holding this lock cannot leave the list inconsistent
        // (every mutation is a single push/remove), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a waiter unless `capacity` are already waiting.
    pub fn push(
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
    pub fn remove(&self, id: u64) {
        let mut w = self.lock();
        if let Some(pos) = w.list.iter().position(|x| x.id == id) {
            w.list.remove(pos);
            self.len.store(w.list.len(), Ordering::SeqCst);
        }
    }

    /// Call after changing the list under the lock.
    pub fn sync_len(&self, w: &Waiters) {
        self.len.store(w.list.len(), Ordering::SeqCst);
    }
}
