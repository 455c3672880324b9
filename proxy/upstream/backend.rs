//! One replica of a model: its address, weight, live in-flight count and state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

use pingora::upstreams::peer::HttpPeer;

/// Whether a backend may receive new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BackendState {
    /// Serving.
    Up = 0,
    /// Failing; gets no new requests, running ones are not cut.
    Down = 1,
    /// Not checked yet.
    Unknown = 2,
}

/// A replica. Shared by every request that uses it; all mutable state is atomic.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    weight: u32,
    /// `ip:port`, ready for logs and metric labels.
    label: Box<str>,
    inflight: AtomicU32,
    state: AtomicU8,
    /// The peer handed to pingora, cloned per attempt.
    peer: HttpPeer,
}

impl Backend {
    pub fn new(addr: SocketAddr, weight: u32, peer: HttpPeer) -> Self {
        Backend {
            addr,
            weight: weight.max(1),
            label: addr.to_string().into_boxed_str(),
            inflight: AtomicU32::new(0),
            state: AtomicU8::new(BackendState::Up as u8),
            peer,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn weight(&self) -> u32 {
        self.weight
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn peer(&self) -> &HttpPeer {
        &self.peer
    }

    /// Requests this proxy has on the backend right now.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> BackendState {
        match self.state.load(Ordering::Relaxed) {
            0 => BackendState::Up,
            1 => BackendState::Down,
            _ => BackendState::Unknown,
        }
    }

    pub fn set_state(&self, state: BackendState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// May this backend be given a new request?
    #[inline]
    pub fn is_available(&self) -> bool {
        self.state.load(Ordering::Relaxed) == BackendState::Up as u8
    }

    /// Takes an in-flight slot if fewer than `cap` are taken (`cap == 0`: no limit).
    #[inline]
    pub(crate) fn try_acquire(self: &Arc<Self>, cap: u32) -> Option<Lease> {
        if cap == 0 {
            self.inflight.fetch_add(1, Ordering::Relaxed);
        } else {
            self.inflight
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < cap).then_some(n + 1)
                })
                .ok()?;
        }
        Some(Lease(Arc::clone(self)))
    }
}

/// One in-flight request on a backend. Dropping it frees the slot, so the count stays
/// right on every exit path: success, error, client abort, retry elsewhere.
#[derive(Debug)]
pub struct Lease(Arc<Backend>);

impl Lease {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Release);
    }
}
