//! Integration tests: the real `modelgate` binary against real sockets.

mod balance;
mod config_files;
mod failures;
mod replica;
mod routing;
mod streaming;
mod support;
