//! The request path: pingora's `ProxyHttp` hooks, from route lookup to backend choice,
//! header rewriting, retries and the error answers of SPEC.md.
//!
//! One config generation serves a request from start to end: `request_filter` takes
//! the route (and through it the pool) out of the current snapshot once and keeps it
//! in the request context, so a reload mid-request changes nothing for it.

mod headers;
mod redirect;
mod reject;

use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderValue;
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};

pub use redirect::HttpsRedirect;
pub use reject::Reject;

use crate::routing::request_host;
use crate::snapshot::{RouteEntry, SharedSnapshot};
use crate::upstream::{Lease, Pick, Tried};

pub(crate) const X_REQUEST_ID: &str = "x-request-id";

/// The proxy application: shared, immutable except through the snapshot swap.
pub struct Gateway {
    snapshot: SharedSnapshot,
    /// `X-Forwarded-Proto` for requests arriving on this service's listeners.
    scheme: &'static str,
    /// When set, every request is answered with a redirect to HTTPS instead.
    redirect: Option<HttpsRedirect>,
}

impl Gateway {
    pub fn new(snapshot: SharedSnapshot, scheme: &'static str) -> Self {
        Gateway {
            snapshot,
            scheme,
            redirect: None,
        }
    }

    /// Answers every request with 308 to the same URL on HTTPS (`redirect_http_to_https`).
    pub fn redirecting(mut self, redirect: HttpsRedirect) -> Self {
        self.redirect = Some(redirect);
        self
    }
}

/// Per-request state, created empty by `new_ctx` and filled as the hooks run.
#[derive(Default)]
pub struct RequestCtx {
    /// The matched route of the generation current when the request arrived.
    route: Option<Arc<RouteEntry>>,
    /// The in-flight slot on the backend of the current attempt.
    lease: Option<Lease>,
    /// Backends already attempted, so a retry goes elsewhere.
    tried: Tried,
    /// Hash of the consistent-hash key, when the pool uses one.
    hash: u64,
    request_id: Option<HeaderValue>,
    /// Set when the proxy decided the answer itself.
    reject: Option<Reject>,
    /// Request body bytes seen so far (for `max_body` without Content-Length).
    body_bytes: u64,
}

impl RequestCtx {
    pub fn route(&self) -> Option<&Arc<RouteEntry>> {
        self.route.as_ref()
    }

    pub fn backend_label(&self) -> Option<&str> {
        self.lease.as_ref().map(|l| l.backend().label())
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    /// Assigns the request id and resolves the route. Answers 308 (on a redirecting
    /// listener), 431 (headers too large), 404 (no route) and 413 (declared body too
    /// large) here; otherwise returns false to proxy on.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let request_id = headers::request_id(session.req_header());
        session
            .req_header_mut()
            .insert_header(X_REQUEST_ID, request_id.clone())?;
        ctx.request_id = Some(request_id);
        if let Some(redirect) = self.redirect {
            redirect.send(session, ctx.request_id.as_ref()).await?;
            return Ok(true);
        }
        if headers::header_bytes(session.req_header()) > headers::MAX_REQUEST_HEADER_BYTES {
            return self.reject(session, ctx, Reject::HeadersTooLarge).await;
        }

        let route = {
            let req = session.req_header();
            let host = request_host(req);
            let snapshot = self.snapshot.load();
            snapshot.routes.resolve(&host, req.uri.path()).cloned()
        };
        let Some(route) = route else {
            return self.reject(session, ctx, Reject::NoRoute).await;
        };
        if let (Some(max), Some(len)) = (
            route.max_body,
            headers::content_length(session.req_header()),
        ) {
            if len > max {
                ctx.route = Some(route);
                return self.reject(session, ctx, Reject::TooLarge).await;
            }
        }
        if let Some(key) = &route.pool.settings().hash_key {
            ctx.hash = headers::hash_key(session, key);
        }
        ctx.route = Some(route);
        Ok(false)
    }

    /// Picks a backend of the route's pool not tried yet by this request and takes
    /// one of its in-flight slots. Called again for each retry.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no route in context",
            ));
        };
        match route.pool.pick(&ctx.tried, ctx.hash) {
            Pick::Leased(i, lease) => {
                ctx.tried.push(i);
                let mut peer = Box::new(lease.backend().peer().clone());
                // An upgrade (WebSocket) needs HTTP/1.1 end to end; don't let ALPN pick h2.
                if peer.options.alpn == ALPN::H2H1 && session.is_upgrade_req() {
                    peer.options.alpn = ALPN::H1;
                }
                ctx.lease = Some(lease);
                Ok(peer)
            }
            Pick::NoneHealthy if ctx.tried.is_empty() => self.fail(ctx, Reject::NoHealthyBackend),
            Pick::NoneHealthy => self.fail(ctx, Reject::BadGateway),
            Pick::AllBusy => self.fail(ctx, Reject::Overloaded),
        }
    }

    /// Adds the forwarding headers and applies `strip_prefix`.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        headers::add_forwarded(session, upstream, self.scheme)?;
        if let Some(route) = &ctx.route {
            if route.strip_prefix {
                headers::strip_prefix(upstream, &route.prefix)?;
            }
        }
        Ok(())
    }

    /// Counts streamed request bytes against the route's `max_body`.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(chunk), Some(max)) =
            (body.as_ref(), ctx.route.as_ref().and_then(|r| r.max_body))
        {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > max {
                return self.fail(ctx, Reject::TooLarge);
            }
        }
        Ok(())
    }

    /// Returns the request id to the client.
    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(id) = &ctx.request_id {
            upstream_response.insert_header(X_REQUEST_ID, id.clone())?;
        }
        Ok(())
    }

    /// A connect failure is retried on another backend while `retries` allow.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        e.set_retry(self.may_retry(ctx));
        e
    }

    /// A broken backend connection is retried only before any response byte reached
    /// the client, only when the body can be replayed, and (unless the upstream sets
    /// `retry_non_idempotent`) only for idempotent methods.
    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let replayable = !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none()
            && (session.req_header().method.is_idempotent()
                || ctx
                    .route
                    .as_ref()
                    .is_some_and(|r| r.pool.settings().retry_non_idempotent));
        if replayable && self.may_retry(ctx) {
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        e
    }

    /// Writes the JSON error answer of SPEC.md for whatever went wrong.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let reject = ctx.reject.or_else(|| classify(e));
        let code = match reject {
            Some(r) if session.response_written().is_none() => {
                if let Err(err) = r.send(session, ctx.request_id.as_ref()).await {
                    log::debug!("could not send {} to client: {err}", r.status());
                }
                r.status()
            }
            Some(r) => r.status(),
            None => 0, // the client is gone, or the response had already started
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Retries are expected under failure; keep pingora's per-retry warning quiet.
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        true
    }
}

impl Gateway {
    async fn reject(&self, session: &mut Session, ctx: &mut RequestCtx, r: Reject) -> Result<bool> {
        ctx.reject = Some(r);
        r.send(session, ctx.request_id.as_ref()).await?;
        Ok(true)
    }

    fn fail<T>(&self, ctx: &mut RequestCtx, r: Reject) -> Result<T> {
        ctx.reject = Some(r);
        Err(Error::explain(
            ErrorType::HTTPStatus(r.status()),
            r.reason(),
        ))
    }

    fn may_retry(&self, ctx: &RequestCtx) -> bool {
        ctx.route.as_ref().is_some_and(|r| {
            let pool = &r.pool;
            ctx.tried.len() <= pool.settings().retries as usize && pool.has_untried(&ctx.tried)
        })
    }
}

/// Maps a pingora error to the answer the client gets; `None` when nobody can hear it.
fn classify(e: &Error) -> Option<Reject> {
    use ErrorType::*;
    match (e.esource(), e.etype()) {
        (_, HTTPStatus(413)) => Some(Reject::TooLarge),
        (ErrorSource::Upstream, ReadTimedout) => Some(Reject::GatewayTimeout),
        (ErrorSource::Upstream, _) => Some(Reject::BadGateway),
        (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => None,
        (ErrorSource::Downstream, _) => Some(Reject::BadRequest),
        _ => Some(Reject::BadGateway),
    }
}
