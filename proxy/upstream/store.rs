//! The replicas of one upstream by address, kept across config generations, and
//! the upstream's wait queue: what outlives any one pool.
//!
//! A reload (or, later, service discovery) sets the upstream's address list: a
//! kept address keeps its [`Replica`] (in-flight count, health, streaks, ejection,
//! ramp, typical latency), a new address gets a fresh one, a removed one is
//! forgotten here while its running requests finish on the `Arc`s they hold.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::queue::WaitQueue;
use super::replica::{BackendState, Replica};

/// The replicas and wait queue of one upstream.
#[derive(Debug)]
pub struct ReplicaStore {
    replicas: Mutex<HashMap<SocketAddr, Arc<Replica>>>,
    queue: Arc<WaitQueue>,
}

impl ReplicaStore {
    pub fn new() -> Arc<ReplicaStore> {
        Arc::new(ReplicaStore {
            replicas: Mutex::new(HashMap::new()),
            queue: WaitQueue::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Arc<Replica>>> {
        // Every mutation is a whole-map replacement or single insert: a poisoned
        // lock holds a consistent map.
        self.replicas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The upstream's wait queue (one for every generation).
    pub fn queue(&self) -> &Arc<WaitQueue> {
        &self.queue
    }

    /// The replicas for `addrs`, in order: the one already known for an address,
    /// else a new one in state `initial`. Changes nothing, so a generation that is
    /// built and then thrown away (another part of the config failed) leaves the
    /// store as it was; [`ReplicaStore::keep_only`] commits.
    pub fn resolve(&self, addrs: &[SocketAddr], initial: BackendState) -> Vec<Arc<Replica>> {
        let known = self.lock();
        addrs
            .iter()
            .map(|a| {
                known
                    .get(a)
                    .map_or_else(|| Replica::new(*a, initial), Arc::clone)
            })
            .collect()
    }

    /// Makes `replicas` the upstream's whole set; any other address is forgotten.
    pub fn keep_only(&self, replicas: &[Arc<Replica>]) {
        *self.lock() = replicas.iter().map(|r| (r.addr(), Arc::clone(r))).collect();
    }

    /// Sets the upstream's address list in place (for service discovery): kept
    /// addresses keep their state, new ones start in `initial`, removed ones are
    /// forgotten. Returns the replicas in `addrs` order, for building the pool
    /// that serves them.
    pub fn set_addresses(&self, addrs: &[SocketAddr], initial: BackendState) -> Vec<Arc<Replica>> {
        let replicas = self.resolve(addrs, initial);
        self.keep_only(&replicas);
        replicas
    }

    /// The replica at `addr`, if the upstream has it.
    pub fn get(&self, addr: SocketAddr) -> Option<Arc<Replica>> {
        self.lock().get(&addr).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn kept_addresses_keep_their_replica_and_removed_ones_are_forgotten() {
        let store = ReplicaStore::new();
        let first = store.set_addresses(&[addr(1), addr(2)], BackendState::Unknown);
        first[1].set_state(BackendState::Up, std::time::Duration::ZERO);
        let next = store.set_addresses(&[addr(2), addr(3)], BackendState::Unknown);
        assert!(Arc::ptr_eq(&first[1], &next[0]), "2 kept");
        assert_eq!(next[0].state(), BackendState::Up);
        assert_eq!(next[1].state(), BackendState::Unknown, "3 is new");
        assert!(store.get(addr(1)).is_none(), "1 forgotten");
    }

    #[test]
    fn resolving_alone_changes_nothing() {
        let store = ReplicaStore::new();
        let first = store.set_addresses(&[addr(1)], BackendState::Up);
        let _thrown_away = store.resolve(&[addr(2)], BackendState::Up);
        assert!(store.get(addr(2)).is_none());
        assert!(Arc::ptr_eq(
            &store.get(addr(1)).unwrap_or_else(|| panic!()),
            &first[0]
        ));
    }
}
