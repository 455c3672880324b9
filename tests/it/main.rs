//! Integration tests: the real binary and real sockets.
mod replica;
mod support;
