//! Upstream pools: replicas, per-replica in-flight caps and the wait queue,
//! selection policies, passive ejection and the retry budget.

mod backend;
#[cfg(test)]
mod balance_tests;
mod budget;
mod clock;
mod pool;
mod queue;
mod select;

pub use backend::{Backend, BackendState, Lease, Vitals};
pub use pool::{Admission, Pick, Pool, PoolSettings};
pub use select::{Selector, Tried, MAX_ATTEMPTS};
