//! Integration tests: the real `modelgate` binary against real sockets.

// Tests fail loudly by design; unwrap is how they say what broke.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A failing test prints what it saw (server logs, timings) next to the assertion.
#![allow(clippy::print_stdout, clippy::print_stderr)]
// A test crate has no public API: `pub` here only shares helpers between its modules.
#![allow(unreachable_pub)]

mod admin;
mod admission;
mod affinity;
mod balance;
mod config_files;
mod demo;
mod deploy;
mod discovery;
mod edge;
mod failures;
mod framing;
mod grpc;
mod leaving;
mod load_reports;
mod logs;
mod memory;
mod observability;
mod openai;
mod reload;
mod replica;
mod routing;
mod scheduling;
mod slow_clients;
mod status_page;
mod streaming;
mod support;
mod tls;
mod wire;
