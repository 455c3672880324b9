//! Upstreams: each one's replicas kept across reloads (the store), per-replica
//! in-flight caps and the wait queue, selection policies, passive ejection and the
//! retry budget.

mod affinity;
mod backend;
#[cfg(test)]
mod balance_tests;
mod balancer;
mod budget;
mod clock;
mod limit;
mod peer;
mod pool;
mod queue;
mod replica;
mod report;
mod select;
mod store;

pub use affinity::{affinity_key, Affinity, PrefixIndex, PrefixKey};
pub use backend::{Backend, Lease};
pub use balancer::{Balancer, Cap, Pick};
pub use limit::{Answer, LimitLearner};
pub use pool::{Pool, PoolSettings};
pub use queue::{Admission, WaitQueue};
pub use replica::{BackendState, Replica};
pub use report::{parse_orca, LoadReport, ORCA_FORMAT_HEADER, ORCA_HEADER};
pub use select::{Selector, Tried, MAX_ATTEMPTS};
pub use store::ReplicaStore;
