//! modelgate: a reverse proxy and load balancer for replicated model servers.
//!
//! The request flows `gateway` (pingora hooks) → `routing` (route table) →
//! `upstream` (pool, selection, in-flight slots). `config` turns a TOML file into a
//! validated `Config`; `snapshot` builds one immutable generation of routes and pools
//! from it; `app` wires listeners, the admin endpoint and background work together.

mod admin;
mod app;
pub mod config;
pub mod demo;
mod discovery;
mod edge;
#[doc(hidden)]
pub mod fuzz;
mod gateway;
mod health;
mod listeners;
mod load;
pub mod logging;
mod metrics;
mod openai;
mod prepare;
mod probe;
mod reload;
mod routing;
mod snapshot;
mod supervise;
mod timefmt;
mod tls;
mod upstream;

pub use app::{App, StartOptions};
pub use prepare::{prepare, Prepared};
pub use probe::probe;
pub use tls::dev::write_leaf as write_dev_cert;

/// The per-request pieces the criterion benches in `benches/` time on their own.
#[doc(hidden)]
pub mod bench {
    pub use crate::gateway::headers;
    pub use crate::metrics::{access, Metrics};
    pub use crate::openai::{body, prompt, tokens};
    pub use crate::routing::{request_host, RouteTable};
    pub use crate::upstream::{Pick, Pool, PrefixIndex, Tried};
}
