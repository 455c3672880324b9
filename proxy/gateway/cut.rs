//! The access-log line of a request cut when the process stops: when the shutdown
//! grace ends (or at once on SIGINT) pingora stops its runtimes, which drops each
//! running request's future, so `logging` never runs for it; its context's drop
//! writes the line instead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{HeaderValue, Method, Uri};
use pingora::proxy::Session;

use super::RequestCtx;
use crate::metrics::access::AccessLog;

/// The `reject` of a request cut because the process stopped.
pub(super) const SHUTDOWN: &str = "shutdown";
/// The `reject` of a request whose future was dropped while the process was not
/// stopping; pingora is not known to do that, but the line should not lie.
const DROPPED: &str = "dropped";

/// The request line and client of a request, as the access log shows them.
pub(super) struct Head {
    pub(super) method: Method,
    pub(super) uri: Uri,
    pub(super) host: Option<HeaderValue>,
    pub(super) client: Option<SocketAddr>,
}

impl Head {
    /// The request head as it is now.
    pub(super) fn of(session: &Session) -> Head {
        let req = session.req_header();
        Head {
            method: req.method.clone(),
            uri: req.uri.clone(),
            host: req.headers.get(http::header::HOST).cloned(),
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
        }
    }
}

/// Where cut requests write: the access log, and the flag telling a stop from
/// anything else.
pub(super) struct Sink {
    log: AccessLog,
    draining: Option<Arc<AtomicBool>>,
}

impl Sink {
    pub(super) fn new(log: AccessLog, draining: Option<Arc<AtomicBool>>) -> Sink {
        Sink { log, draining }
    }
}

/// What a request needs to write its access-log line without pingora's `logging`:
/// taken (by `logging`) when the request ends normally, still there when it is cut.
pub(super) struct Unlogged {
    pub(super) head: Head,
    sink: Arc<Sink>,
}

impl Unlogged {
    /// Kept from the moment the request head is final; the request line of the normal
    /// access-log line is then this one, so nothing is copied twice.
    pub(super) fn new(session: &Session, sink: &Arc<Sink>) -> Self {
        Unlogged {
            head: Head::of(session),
            sink: Arc::clone(sink),
        }
    }

    /// Writes the line of a request that ended without `logging`: the status already
    /// sent to the client (a body cut short), or 503 when none was, and `reject`
    /// `shutdown`. Body byte counts are not known here and are 0.
    pub(super) fn record_cut(self, ctx: &RequestCtx) {
        let stopping = self
            .sink
            .draining
            .as_ref()
            .is_none_or(|d| d.load(Ordering::Relaxed));
        let status = if ctx.early_head {
            200
        } else {
            ctx.sent.unwrap_or(503)
        };
        let reject = if stopping { SHUTDOWN } else { DROPPED };
        let total = ctx.start.elapsed();
        self.sink
            .log
            .record(ctx.entry(self.head, status, total, (0, 0), Some(reject)));
    }
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        if let Some(unlogged) = self.unlogged.take() {
            unlogged.record_cut(self);
        }
    }
}
