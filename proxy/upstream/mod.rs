//! Upstreams: each one's replicas kept across reloads (the store), per-replica
//! in-flight caps and the wait queue, selection policies, passive ejection and the
//! retry budget.

mod affinity;
#[cfg(test)]
mod affinity_tests;
mod backend;
#[cfg(test)]
mod balance_tests;
mod balancer;
mod budget;
mod clock;
mod cold;
mod limit;
mod peer;
mod pool;
mod queue;
mod replica;
mod report;
mod sched;
#[cfg(test)]
mod sched_tests;
#[cfg(test)]
mod sed_tests;
mod select;
mod store;

pub use balancer::Pick;
pub use pool::Pool;
pub use select::Tried;

pub use affinity::PrefixIndex;
pub(crate) use affinity::{affinity_key, PrefixKey};
pub(crate) use backend::{Backend, Lease};
pub(crate) use balancer::Cap;
pub(crate) use cold::AfterWake;
pub(crate) use queue::{Admission, WaitQueue};
pub(crate) use replica::{BackendState, Replica};
pub(crate) use report::{parse_orca, LoadReport, ORCA_FORMAT_HEADER, ORCA_HEADER};
pub(crate) use sched::Ticket;
