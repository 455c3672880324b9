//! modelgate: a reverse proxy and load balancer for replicated model servers.
//!
//! The request flows `gateway` (pingora hooks) → `routing` (route table) →
//! `upstream` (pool, selection, in-flight slots). `config` turns a TOML file into a
//! validated `Config`; `snapshot` builds one immutable generation of routes and pools
//! from it; `app` wires listeners, the admin endpoint and background work together.

pub mod admin;
pub mod app;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod edge;
#[doc(hidden)]
pub mod fuzz;
pub mod gateway;
pub mod health;
pub mod load;
pub mod logging;
pub mod metrics;
pub mod openai;
pub mod prepare;
pub mod probe;
pub mod reload;
pub mod routing;
pub mod snapshot;
pub mod supervise;
pub mod timefmt;
pub mod tls;
pub mod upstream;
