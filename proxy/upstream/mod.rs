//! Upstream pools: replicas, per-replica in-flight accounting and selection policies.

mod backend;
mod pool;
mod select;

pub use backend::{Backend, BackendState, Lease};
pub use pool::{Pick, Pool, PoolSettings};
pub use select::{Selector, Tried, MAX_ATTEMPTS};
