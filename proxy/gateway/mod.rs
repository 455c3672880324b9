//! The request path: pingora's `ProxyHttp` hooks, from route lookup to backend choice,
//! header rewriting, retries and the error answers of SPEC.md.
//!
//! One config generation serves a request from start to end: `request_filter` takes
//! the route (and through it the pool) out of the current snapshot once and keeps it
//! in the request context, so a reload mid-request changes nothing for it.

mod cold;
mod cut;
pub(crate) mod failures;
mod gone;
pub mod headers;
mod keepalive;
mod models;
mod redirect;
mod reject;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use http::HeaderValue;
use pingora::prelude::*;
use pingora::protocols::ALPN;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType, RetryType};

use gone::client_gone;
pub(crate) use redirect::HttpsRedirect;
pub(crate) use reject::Reject;

use crate::config::{AffinityKey, ConnLimits};
use crate::edge::credentials::X_API_KEY;
use crate::edge::gate::{self, Passed};
use crate::edge::{Consumer, RouteAuth};
use crate::metrics::access::{AccessLog, Entry};
use crate::metrics::{Metrics, RouteMetrics};
use crate::openai::body::{Invalid, Key};
use crate::openai::tokens::{Kind, LocalGaps, TokenMeter, Usage};
use crate::openai::{self, BodyError, Pick, PreRead, RouteGroup};
use crate::routing::request_host;
use crate::snapshot::{RouteEntry, SharedSnapshot};
use crate::upstream::{
    parse_orca, Admission, Lease, Ticket, Tried, ORCA_FORMAT_HEADER, ORCA_HEADER,
};

/// Inserting a `StaticHeaderName` neither parses nor copies the name.
pub(crate) static X_REQUEST_ID: pingora::http::StaticHeaderName =
    pingora::http::StaticHeaderName::new("x-request-id");

/// The proxy application: shared, immutable except through the snapshot swap.
pub(crate) struct Gateway {
    snapshot: SharedSnapshot,
    /// `X-Forwarded-Proto` for requests arriving on this service's listeners.
    scheme: &'static str,
    /// When set, every request is answered with a redirect to HTTPS instead.
    redirect: Option<HttpsRedirect>,
    /// Requests in progress on every listener, for draining on shutdown.
    active: Arc<AtomicUsize>,
    /// Set once the process drains (SIGTERM, or SIGQUIT for a graceful upgrade).
    draining: Option<Arc<AtomicBool>>,
    metrics: Arc<Metrics>,
    /// `None` when `[log] access = "off"`.
    access_log: Option<AccessLog>,
    /// Where a request cut at shutdown writes its line: one shared handle, so keeping
    /// it per request costs one reference count (`None` with the access log off).
    cut_sink: Option<Arc<cut::Sink>>,
    /// Request-head limits and keep-alive of `[listen]`.
    limits: ConnLimits,
}

/// Logs a failed attempt on the request's current backend (see [`failures`]).
fn log_failure(
    ctx: &RequestCtx,
    reason: failures::Reason,
    detail: &dyn std::fmt::Display,
    retrying: bool,
) {
    let (Some(route), Some(lease)) = (&ctx.route, &ctx.lease) else {
        return;
    };
    let request_id = ctx
        .request_id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    failures::record(&failures::Failure {
        request_id,
        route: &route.name,
        upstream: route.pool.name(),
        backend: lease.backend().label(),
        reason,
        detail,
        retrying,
    });
}

impl Gateway {
    pub(crate) fn new(
        snapshot: SharedSnapshot,
        scheme: &'static str,
        active: Arc<AtomicUsize>,
        metrics: Arc<Metrics>,
        access_log: Option<AccessLog>,
    ) -> Self {
        Gateway {
            snapshot,
            scheme,
            redirect: None,
            active,
            draining: None,
            metrics,
            cut_sink: access_log
                .clone()
                .map(|log| Arc::new(cut::Sink::new(log, None))),
            access_log,
            limits: crate::config::DEFAULT_LIMITS,
        }
    }

    /// Applies the `[listen]` limits: header count and size (431), keep-alive timeout.
    pub(crate) fn with_limits(mut self, limits: ConnLimits) -> Self {
        self.limits = limits;
        self
    }

    /// While `flag` is set, HTTP/1.1 responses close their connection, so clients
    /// stop reusing it before the listener goes away (pingora drops idle
    /// keep-alive connections when it stops, racing a client's next request).
    pub(crate) fn closing_when(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cut_sink = self
            .access_log
            .clone()
            .map(|log| Arc::new(cut::Sink::new(log, Some(Arc::clone(&flag)))));
        self.draining = Some(flag);
        self
    }

    /// Answers every request with 308 to the same URL on HTTPS (`redirect_http_to_https`).
    pub(crate) fn redirecting(mut self, redirect: HttpsRedirect) -> Self {
        self.redirect = Some(redirect);
        self
    }

    /// See [`crate::routing::RouteTable::params_change_route`].
    fn params_change_route(&self, req: &RequestHeader) -> bool {
        let path = req.uri.path();
        path.contains(';')
            && self
                .snapshot
                .load()
                .routes
                .params_change_route(&request_host(req), path)
    }
}

/// Counts a request as in progress until its context is dropped.
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// Per-request state, created empty by `new_ctx` and filled as the hooks run.
pub(crate) struct RequestCtx {
    _active: Active,
    /// The matched route of the generation current when the request arrived.
    route: Option<Arc<RouteEntry>>,
    /// The in-flight slot on the backend of the current attempt.
    lease: Option<Lease>,
    /// Backends already attempted, so a retry goes elsewhere.
    tried: Tried,
    /// Hash of the consistent-hash key, or the cache-affinity hint (preferred
    /// replicas), when the pool uses one.
    hash: u64,
    /// Its priority class and fair-share flow in the pool's wait queue.
    ticket: Ticket,
    /// The request's cache-affinity prefix blocks (empty: none).
    affinity: Vec<u64>,
    request_id: Option<HeaderValue>,
    /// Set when the proxy decided the answer itself.
    reject: Option<Reject>,
    /// The proxy's own answers take OpenAI's error shape (`api = "openai"`).
    openai: bool,
    /// The body read in `request_filter` to route on its `model`.
    pre: Option<PreRead>,
    /// The current attempt has not sent `pre.replay` yet.
    replay_pending: bool,
    /// The body's `model`, for the access log.
    model: Option<Arc<str>>,
    /// Token accounting of an OpenAI answer.
    tokens: Option<TokenMeter>,
    /// Its inter-token gaps, observed locally (streams).
    gaps: Option<LocalGaps>,
    /// Time spent in the pool's wait queue (or held for a replica), slots or not.
    queue_wait: Duration,
    /// It waited and left without a slot (queue timeout, hold expiry, client gone):
    /// its wait is recorded although no backend was tried.
    waited_unserved: bool,
    /// When the current attempt got its backend.
    attempt_started: Option<Instant>,
    /// The current attempt failed on a retryable status (502/503/429); retry it
    /// whatever the method, the backend refused before doing the work.
    status_retry: bool,
    /// The authenticated client, on routes with `auth`.
    consumer: Option<Consumer>,
    /// The authenticator that accepted the credential before the body was read
    /// (model-routed endpoints); a route with the same `auth` does not check again.
    gate_auth: Option<Arc<RouteAuth>>,
    /// The current attempt broke on a reused connection before any answer: send it
    /// again to the same backend, on another connection, without counting a retry.
    resend: bool,
    /// When the request arrived.
    start: Instant,
    /// Arrival to the (last attempt's) response headers.
    first_byte: Option<Duration>,
    /// The stream's head was sent while queued (`sse_keepalive`).
    early_head: bool,
    /// A replica's answer continues the early head: failures can no longer be
    /// reported as an SSE error event.
    spliced: bool,
    /// The status of the response head sent to the client (from a replica).
    sent: Option<u16>,
    /// A replica's error answer to a stream whose head went out early, sent on
    /// as an SSE error event.
    relayed: Option<keepalive::RelayedError>,
    /// With the access log on: what the line of a request cut at shutdown needs
    /// (`logging` takes it; see [`cut`]).
    unlogged: Option<cut::Unlogged>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// None: modelgate does not compress answers. pingora's default, a compression
    /// module at level 0 that passes everything through, cost each request four
    /// allocations (its context and three boxed hook futures).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        self.active.fetch_add(1, Ordering::Acquire);
        RequestCtx {
            _active: Active(Arc::clone(&self.active)),
            route: None,
            lease: None,
            tried: Tried::default(),
            hash: 0,
            ticket: Ticket::default(),
            affinity: Vec::new(),
            request_id: None,
            reject: None,
            openai: false,
            pre: None,
            replay_pending: false,
            model: None,
            tokens: None,
            gaps: None,
            queue_wait: Duration::ZERO,
            waited_unserved: false,
            attempt_started: None,
            status_retry: false,
            consumer: None,
            gate_auth: None,
            resend: false,
            start: Instant::now(),
            first_byte: None,
            early_head: false,
            spliced: false,
            sent: None,
            relayed: None,
            unlogged: None,
        }
    }

    /// Assigns the request id and resolves the route, reading the body's `model`
    /// first where routes differ by model. Answers 308 (on a redirecting listener), 431
    /// (headers too large), 404 (no route, or no route for the model), 400 (a body to
    /// route on that is not a JSON object) and 413 (body too large) here; otherwise
    /// returns false to proxy on.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // HTTP/1.1 clients may send their next request before this one is answered
        // (RFC 9112 section 9.3.2); pingora answers them in order once this is on (it
        // carries over to the connection's next requests), and refuses them otherwise.
        session.set_pipelining_enabled(true);
        let request_id = headers::request_id(session.req_header());
        session
            .req_header_mut()
            .insert_header(&X_REQUEST_ID, request_id.clone())?;
        ctx.request_id = Some(request_id);
        headers::absolute_form_to_host(session.req_header_mut())?;
        if let Some(redirect) = self.redirect {
            redirect.send(session, ctx.request_id.as_ref()).await?;
            return Ok(true);
        }
        if headers::header_bytes(session.req_header()) > self.limits.max_header_bytes
            || session.req_header().headers.len() > self.limits.max_header_count
        {
            return self.reject(session, ctx, Reject::HeadersTooLarge).await;
        }
        // pingora keeps an HTTP/1.1 connection idle for the next request forever (or
        // as long as the client's `Keep-Alive: timeout=` asks) unless told otherwise.
        let idle = self.limits.keepalive_timeout.as_secs().max(1);
        let downstream = session.as_downstream_mut();
        if downstream
            .get_keepalive()
            .is_some_and(|t| t == 0 || t > idle)
        {
            downstream.set_keepalive(Some(idle));
        }
        // pingora's session (HTTP/1 and HTTP/2) waits this long for each read of the body.
        downstream.set_read_timeout(Some(self.limits.body_read_timeout));
        // Route and forward on the normalised path only.
        if headers::normalize_target(session.req_header_mut()).is_err()
            || self.params_change_route(session.req_header())
        {
            session.set_keepalive(None);
            return self.reject(session, ctx, Reject::BadRequest).await;
        }
        // The head is final from here on: a request that may run long (routed on its
        // body, queued, streaming) can still be logged if shutdown cuts it.
        if let Some(sink) = &self.cut_sink {
            ctx.unlogged = Some(cut::Unlogged::new(session, sink));
        }
        if let Some(group) = self.models_endpoint(session) {
            return self.answer_models(session, ctx, &group).await;
        }

        let picked = {
            let req = session.req_header();
            let host = request_host(req);
            let snapshot = self.snapshot.load();
            snapshot
                .routes
                .resolve(&host, req.uri.path())
                .map(|group| {
                    ctx.openai = group.openai();
                    let content_type = req.headers.get(http::header::CONTENT_TYPE);
                    match group.pick(&req.method, content_type.map(|v| v.as_bytes())) {
                        Pick::Route(r) => Ok(Arc::clone(r)),
                        Pick::ByModel => Err(Some(Arc::clone(group))),
                        Pick::None => Err(None),
                    }
                })
                .unwrap_or(Err(None))
        };
        let route = match picked {
            Ok(route) => route,
            Err(Some(group)) => {
                // Who may send and how fast is settled before any body byte is read.
                if let Some(r) = self.gate_check(session, ctx, &group) {
                    session.set_keepalive(None);
                    return self.reject(session, ctx, r).await;
                }
                match self.route_by_model(session, ctx, &group).await? {
                    Ok(route) => route,
                    Err(r) => return self.reject(session, ctx, r).await,
                }
            }
            Err(None) => return self.reject(session, ctx, Reject::NoRoute).await,
        };
        ctx.openai = route.api.openai;
        let declared = headers::content_length(session.req_header());
        if let Some(max) = route.max_body {
            if declared.unwrap_or(0) > max || session.body_bytes_read() as u64 > max {
                ctx.route = Some(route);
                return self.reject(session, ctx, Reject::TooLarge).await;
            }
        }
        if let Some(r) = self.edge_check(session, ctx, &route) {
            ctx.route = Some(route);
            return self.reject(session, ctx, r).await;
        }
        if let Some(key) = &route.pool.settings().hash_key {
            ctx.hash = headers::hash_key(session, key);
        }
        ctx.ticket = route.pool.discipline().ticket(
            session.req_header(),
            ctx.consumer.as_ref().map(Consumer::name),
        );
        if let Some(aff) = &route.pool.settings().affinity {
            if let AffinityKey::Header(name) = &aff.key {
                ctx.affinity = headers::affinity_blocks(session, name);
            }
            ctx.hash = aff.hint(&ctx.affinity);
        }
        route.pool.record_request();
        ctx.route = Some(route);
        Ok(false)
    }

    /// Picks a backend of the route's pool not tried yet by this request and takes
    /// one of its in-flight slots, waiting in the pool's queue when every backend is
    /// at `max_inflight`. Called again for each retry.
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
        ctx.replay_pending = ctx.pre.as_ref().is_some_and(|p| p.replay.is_some());
        if std::mem::take(&mut ctx.resend) {
            if let Some(lease) = &ctx.lease {
                return Ok(peer_for(lease, session));
            }
        }
        // Free the previous attempt's slot before queueing for the next one.
        ctx.lease = None;
        let keepalive = route
            .api
            .sse_keepalive
            .filter(|_| keepalive::wants_stream(session, ctx));
        let asked = Instant::now();
        let mut admission = match keepalive {
            Some(every) => {
                let queued =
                    route
                        .pool
                        .admit(&ctx.tried, ctx.ticket, ctx.hash, std::future::pending());
                let id = ctx.request_id.as_ref();
                keepalive::wait(session, &mut ctx.early_head, id, every, queued).await
            }
            None => {
                route
                    .pool
                    .admit(&ctx.tried, ctx.ticket, ctx.hash, client_gone(session))
                    .await
            }
        };
        if matches!(admission, Admission::NoneHealthy) && ctx.tried.is_empty() {
            admission = self.cold_start(session, ctx, &route.pool, keepalive).await;
        }
        match admission {
            Admission::Leased(lease, waited) => {
                if let Some(aff) = &route.pool.settings().affinity {
                    aff.record(&ctx.affinity, lease.backend());
                }
                ctx.tried.push(lease.backend().index());
                ctx.queue_wait += waited;
                ctx.attempt_started = Some(Instant::now());
                let peer = peer_for(&lease, session);
                ctx.lease = Some(lease);
                Ok(peer)
            }
            Admission::NoneHealthy if ctx.tried.is_empty() => {
                self.fail(ctx, Reject::NoHealthyBackend)
            }
            Admission::NoneHealthy => self.fail(ctx, Reject::BadGateway),
            Admission::Overloaded => self.fail(ctx, Reject::Overloaded),
            Admission::QueueTimeout => {
                ctx.waited_in_vain(asked);
                self.fail(ctx, Reject::QueueTimeout)
            }
            Admission::HoldExpired => {
                ctx.waited_in_vain(asked);
                self.fail(ctx, Reject::NoHealthyBackend)
            }
            Admission::ClientGone => {
                ctx.waited_in_vain(asked);
                Err(
                    Error::explain(ErrorType::ConnectionClosed, "client left while queued")
                        .into_down(),
                )
            }
        }
    }

    /// Adds the forwarding headers, applies `strip_prefix` and, for HTTP/1
    /// replicas, sends origin-form with a Host and one Cookie field.
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
            if route
                .edge
                .auth
                .as_ref()
                .is_some_and(|a| a.config.strip_credentials)
            {
                upstream.remove_header(&http::header::AUTHORIZATION);
                upstream.remove_header(X_API_KEY);
            }
            if route.pool.settings().orca {
                upstream.insert_header(ORCA_FORMAT_HEADER, "TEXT")?;
            }
        }
        if upstream.version != http::Version::HTTP_2 {
            headers::single_content_length(upstream)?;
            let backend = ctx.lease.as_ref().map(|l| l.backend());
            headers::for_http1(upstream, backend.map_or("", |b| headers::backend_host(b)))?;
        }
        if let Some(len) = ctx.pre.as_ref().and_then(|p| p.rewritten_len) {
            if upstream.headers.contains_key(http::header::CONTENT_LENGTH) {
                upstream.insert_header(http::header::CONTENT_LENGTH, len)?;
            }
        }
        Ok(())
    }

    /// Counts request bytes read from the client against the route's `max_body`, and
    /// replays a body read in `request_filter` that pingora's retry buffer did not keep
    /// (or that was rewritten) at the start of each attempt.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(max) = ctx.route.as_ref().and_then(|r| r.max_body) {
            if session.body_bytes_read() as u64 > max {
                return self.fail(ctx, Reject::TooLarge);
            }
        }
        if std::mem::take(&mut ctx.replay_pending) {
            if let Some(pre) = &ctx.pre {
                *body = pre.replay_with(body.take());
            }
        }
        Ok(())
    }

    /// Feeds passive health and turns a 502/503 (or 429 with `Retry-After`) into a
    /// retry on another backend while nothing has reached the client yet.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (Some(route), Some(lease)) = (&ctx.route, &ctx.lease) else {
            return Ok(());
        };
        // One clock read serves both the request's TTFB and the backend's latency.
        let now = Instant::now();
        ctx.first_byte = Some(now.saturating_duration_since(ctx.start));
        let status = upstream_response.status.as_u16();
        if let Some(started) = ctx.attempt_started {
            let took = now.saturating_duration_since(started);
            lease.record_latency(took);
            lease.learn(took, status, route.pool.settings().cap);
        }
        if status < 500 {
            lease.backend().record_success();
        } else {
            route.pool.record_failure(lease.backend());
        }
        if route.pool.settings().orca {
            // The report is for the proxy, not the client. A replica that sends
            // garbage keeps serving; the failure is counted.
            if let Some(value) = upstream_response.remove_header(ORCA_HEADER) {
                match parse_orca(value.as_bytes()) {
                    Some(report) => lease.backend().record_report(&report),
                    None => route
                        .metrics
                        .get_or_init(|| self.metrics.route(&route.name, route.pool.name()))
                        .upstream()
                        .load_report_error(),
                }
            }
        }
        if refused(upstream_response)
            && !session.as_ref().retry_buffer_truncated()
            && route.pool.may_retry(&ctx.tried)
        {
            ctx.status_retry = true;
            log_failure(
                ctx,
                failures::Reason::Status(status),
                &format_args!("answered {status}"),
                true,
            );
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                "backend refused; retrying elsewhere",
            );
            e.set_retry(true);
            return Err(e.into_up());
        }
        if ctx.early_head {
            if !upstream_response.status.is_success() {
                // The client already has a 200 head: the replica's answer becomes one
                // error event carrying its status and message.
                if status >= 500 {
                    log_failure(
                        ctx,
                        failures::Reason::Status(status),
                        &format_args!("answered {status} to a stream already started"),
                        false,
                    );
                }
                ctx.relayed = Some(keepalive::RelayedError::new(status));
            }
            ctx.spliced = true;
        }
        Ok(())
    }

    /// Returns the request id to the client, and starts token accounting on a
    /// successful OpenAI answer (a stream, or JSON).
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.route.as_ref().is_some_and(|r| r.api.openai) && upstream_response.status.is_success()
        {
            if let Some(kind) = answer_kind(upstream_response) {
                let strip = ctx.pre.as_ref().is_some_and(|p| p.rewritten_len.is_some());
                if strip && kind == Kind::Stream {
                    // The usage event is cut out, so the length changes.
                    headers::unknown_length(session, upstream_response)?;
                }
                ctx.tokens = Some(TokenMeter::new(kind, strip));
                if kind == Kind::Stream {
                    if let Some(route) = &ctx.route {
                        let m = route
                            .metrics
                            .get_or_init(|| self.metrics.route(&route.name, route.pool.name()));
                        ctx.gaps = Some(LocalGaps::new(&m.tokens().inter_token_latency));
                    }
                }
            }
        }
        if let Some(id) = &ctx.request_id {
            upstream_response.insert_header(&X_REQUEST_ID, id.clone())?;
        }
        ctx.sent = Some(upstream_response.status.as_u16());
        if self
            .draining
            .as_ref()
            .is_some_and(|d| d.load(Ordering::Relaxed))
        {
            session.set_keepalive(None);
        }
        Ok(())
    }

    /// A connect failure counts against the backend (passive ejection) and is
    /// retried on another backend while `retries` and the retry budget allow.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(route), Some(lease)) = (&ctx.route, &ctx.lease) {
            route.pool.record_failure(lease.backend());
        }
        e.set_retry(self.may_retry(ctx));
        log_failure(ctx, failures::Reason::of_connect(&e), &e, e.retry());
        e
    }

    /// A backend connection that breaks before the response started (a replica
    /// killed mid-request) is retried on another backend only when the body can be
    /// replayed and the method is idempotent (or the upstream sets
    /// `retry_non_idempotent`). Timeouts are not retried: the work may still be running.
    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        if std::mem::take(&mut ctx.status_retry) {
            return e; // decided in upstream_response_filter
        }
        // A head sent early (`sse_keepalive`) is not the replica's: nothing of the
        // replica's answer has reached the client until it is spliced in.
        let replayable_body = !session.as_ref().retry_buffer_truncated()
            && (session.response_written().is_none() || (ctx.early_head && !ctx.spliced));
        // A pooled connection that broke before any answer was most likely closed by
        // the replica while idle (keep-alive timeout, restart), not a failure of the
        // replica: send the request again to it, whatever the method, and count no
        // retry. A failure on a new connection is not resent.
        if client_reused && e.retry == RetryType::ReusedOnly && replayable_body {
            ctx.resend = true;
            e.set_retry(true);
            return e;
        }
        let broken = broke(&e);
        let replayable = replayable_body
            && replayable_method(
                &session.req_header().method,
                ctx.route
                    .as_ref()
                    .is_some_and(|r| r.pool.settings().retry_non_idempotent),
            );
        if broken {
            if let (Some(route), Some(lease)) = (&ctx.route, &ctx.lease) {
                route.pool.record_failure(lease.backend());
            }
        }
        e.set_retry(broken && replayable && self.may_retry(ctx));
        // Only the backend's failures: a client that went away is not one.
        if e.esource() == &ErrorSource::Upstream {
            log_failure(ctx, failures::Reason::of_proxy(&e), &e, e.retry());
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
        ctx.reject = reject;
        let code = match reject {
            Some(r) if session.response_written().is_none() => {
                // The connection is closed after an error answer (its request body
                // may be half read): say so, so clients do not reuse it and fail.
                session.set_keepalive(None);
                if let Err(err) = r.send(session, ctx.request_id.as_ref(), ctx.openai).await {
                    log::debug!("could not send {} to client: {err}", r.status());
                }
                r.status()
            }
            Some(r) if ctx.early_head && !ctx.spliced => {
                if let Err(err) = keepalive::send_error(session, r).await {
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

    /// Every backend failure is logged by [`failures`] (one WARN line per kind per
    /// window, then a count) and every request in the access log, so pingora's own
    /// ERROR line per failed request would only repeat them, one line each.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    /// Scans OpenAI answers for tokens and usage as they pass (see `openai::tokens`).
    /// Kept out of line so that `benches/openai_cost.sh` finds the accounting's cost
    /// under this name in every build.
    #[inline(never)]
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(relayed) = ctx.relayed.as_mut() {
            relayed.absorb(body, end_of_stream);
            return Ok(None);
        }
        if let Some(meter) = ctx.tokens.as_mut() {
            match ctx.gaps.as_mut() {
                Some(gaps) => meter.scan(body, end_of_stream, Instant::now(), gaps),
                None => meter.scan(body, end_of_stream, Instant::now(), &mut ()),
            }
        }
        Ok(None)
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

    /// Runs once for every request, however it ended: records its metrics and
    /// queues its access log line. Doing nothing would leave both blind.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let total = ctx.start.elapsed();
        let aborted = e.is_some_and(client_went_away);
        let status = match session.response_written() {
            // A head sent early (`sse_keepalive`) that no replica's answer followed
            // counts as what the stream stands for: the error its event carried,
            // or 499 when the client left first.
            Some(_) if ctx.early_head && !ctx.spliced => match ctx.reject {
                Some(r) if !aborted => r.status(),
                _ if aborted => 499,
                _ => 200,
            },
            // A replica's error relayed as an event on a head sent early.
            Some(_) if ctx.relayed.is_some() => match &ctx.relayed {
                Some(r) if !aborted => r.status,
                _ => 499,
            },
            Some(r) => r.status.as_u16(),
            // 499 (as nginx): the client left before any answer reached it.
            None => 499,
        };
        let retries = ctx.tried.len().saturating_sub(1) as u32;
        let m: &RouteMetrics = match &ctx.route {
            Some(route) => route
                .metrics
                .get_or_init(|| self.metrics.route(&route.name, route.pool.name())),
            None => self.metrics.unrouted(),
        };
        m.request(status, ctx.route.is_some().then_some(total.as_secs_f64()));
        let up = m.upstream();
        if let Some(r) = ctx.reject {
            up.rejected(r);
        }
        let waited = !ctx.tried.is_empty() || ctx.waited_unserved;
        if waited {
            up.queue_wait(ctx.queue_wait.as_secs_f64());
            up.retries(u64::from(retries));
        }
        if let Some(route) = &ctx.route {
            let class = ctx.ticket.class;
            if let Some(c) = route
                .pool
                .discipline()
                .class_name(class)
                .and_then(|name| up.class(class, name))
            {
                if let Some(r) = ctx.reject {
                    c.rejected(r);
                }
                if waited {
                    c.queue_wait(ctx.queue_wait.as_secs_f64());
                }
            }
        }
        if let Some(t) = ctx.first_byte {
            up.first_byte(t.as_secs_f64());
        }
        if aborted {
            up.client_abort();
        }
        let (ttft, usage, completion) = ctx.token_figures();
        if let Some(gaps) = ctx.gaps.as_mut() {
            gaps.flush();
        }
        if ctx.tokens.is_some() {
            let t = m.tokens();
            if let Some(ttft) = ttft {
                t.time_to_first_token.observe(ttft.as_secs_f64());
            }
            if let Some(u) = usage {
                t.prompt.inc_by(u.prompt_tokens);
            }
            if let Some(n) = completion {
                t.completion.inc_by(n);
            }
        }

        let Some(log) = &self.access_log else {
            return;
        };
        let head = match ctx.unlogged.take() {
            Some(unlogged) => unlogged.head,
            None => cut::Head::of(session),
        };
        let bytes = (
            session.body_bytes_read() as u64,
            session.body_bytes_sent() as u64,
        );
        // A replica's error relayed on a head sent early is not the proxy's answer
        // (not in modelgate_rejected_total), but the stream failed: the log says why.
        let reject = ctx
            .reject
            .map(Reject::reason)
            .or_else(|| ctx.relayed.as_ref().map(|_| keepalive::REPLICA_ERROR));
        log.record(ctx.entry(head, status, total, bytes, reject));
    }
}

impl RequestCtx {
    /// Counts the wait since `asked` of a request that left the queue (or its hold)
    /// without a slot.
    fn waited_in_vain(&mut self, asked: Instant) {
        self.queue_wait += asked.elapsed();
        self.waited_unserved = true;
    }

    /// An OpenAI answer's time to first token, `usage` and completion tokens counted.
    fn token_figures(&self) -> (Option<Duration>, Option<Usage>, Option<u64>) {
        let Some(t) = &self.tokens else {
            return (None, None, None);
        };
        let ttft = t
            .first_token
            .map(|at| at.saturating_duration_since(self.start));
        (ttft, t.usage, Some(t.completion_tokens()))
    }

    /// The access-log line of this request: `head`, what the context gathered, and
    /// the final `status`, `total` time, body bytes `(in, out)` and `reject` reason.
    fn entry(
        &self,
        head: cut::Head,
        status: u16,
        total: Duration,
        (bytes_in, bytes_out): (u64, u64),
        reject: Option<&'static str>,
    ) -> Entry {
        let (ttft, usage, completion) = self.token_figures();
        Entry {
            time: SystemTime::now(),
            request_id: self.request_id.clone(),
            client: head.client,
            method: head.method,
            host: head.host,
            uri: head.uri,
            route: self.route.as_ref().map(|r| Arc::clone(&r.name)),
            upstream: self.route.as_ref().map(|r| Arc::clone(r.pool.name())),
            backend: self
                .lease
                .as_ref()
                .map(|l| Arc::clone(l.backend().label_shared())),
            consumer: self.consumer.as_ref().map(|c| Arc::clone(c.shared())),
            status,
            bytes_in,
            bytes_out,
            queue_wait: self.queue_wait,
            ttfb: self.first_byte,
            total,
            retries: self.tried.len().saturating_sub(1) as u32,
            reject,
            model: self.model.clone(),
            ttft,
            prompt_tokens: usage.map(|u| u.prompt_tokens),
            completion_tokens: completion,
        }
    }
}

/// The backend refused the request before doing its work, so it may go to another
/// backend whatever its method: 502, 503, or 429 with `Retry-After` (a 429 without
/// it is the replica's own rate limit answer, passed on).
fn refused(answer: &ResponseHeader) -> bool {
    matches!(answer.status.as_u16(), 502 | 503)
        || (answer.status == 429 && answer.headers.contains_key(http::header::RETRY_AFTER))
}

/// How the tokens of a successful OpenAI answer are counted, from its `Content-Type`:
/// an SSE stream, one JSON document, or not at all.
fn answer_kind(answer: &ResponseHeader) -> Option<Kind> {
    let ct = headers::media_type(answer.headers.get(http::header::CONTENT_TYPE)?.as_bytes());
    if ct.eq_ignore_ascii_case(b"text/event-stream") {
        Some(Kind::Stream)
    } else if ct.eq_ignore_ascii_case(b"application/json") {
        Some(Kind::Json)
    } else {
        None
    }
}

/// The backend's connection broke (refused, reset, closed): the request may be sent
/// elsewhere. A timeout is not a break: the work may still be running on the replica.
fn broke(e: &Error) -> bool {
    e.esource() == &ErrorSource::Upstream
        && !matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        )
}

/// A request whose backend broke may be sent to another one: an idempotent method
/// (RFC 9110 §9.2.2), or any method where the upstream sets `retry_non_idempotent`.
fn replayable_method(method: &http::Method, retry_non_idempotent: bool) -> bool {
    method.is_idempotent() || retry_non_idempotent
}

/// The client hung up (while queued, or before the answer was complete).
fn client_went_away(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}

impl Gateway {
    /// The route's rate limit and auth, in [`gate::admit`]'s order; an `auth` the
    /// request already passed at its endpoint's gate is not checked again. Returns
    /// the answer when the request may not go on.
    fn edge_check(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        route: &RouteEntry,
    ) -> Option<Reject> {
        let edge = &route.edge;
        if edge.auth.is_none() && edge.rate_limit.is_none() {
            return None;
        }
        let req = session.req_header();
        let passed = Passed {
            consumer: ctx.consumer.take(),
            auth: ctx.gate_auth.take(),
        };
        let authenticate = edge
            .auth
            .as_deref()
            .filter(|a| !passed.covers(a))
            .map(|a| move || a.check.check(&req.headers));
        let admitted = gate::admit(
            edge.rate_limit.as_deref(),
            authenticate.as_ref().map(|f| f as _),
            client_ip(session),
            &req.headers,
            passed.consumer,
        );
        match admitted {
            Ok(consumer) => {
                ctx.consumer = consumer;
                None
            }
            Err(r) => Some(r.into()),
        }
    }

    /// The checks of a model-routed endpoint before its body is read (see
    /// [`gate`]): 401 or 429 when no route of it could take the request.
    fn gate_check(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        group: &RouteGroup,
    ) -> Option<Reject> {
        match group
            .gate()
            .check(client_ip(session), &session.req_header().headers)
        {
            Ok(passed) => {
                ctx.consumer = passed.consumer;
                ctx.gate_auth = passed.auth;
                None
            }
            Err(r) => Some(r.into()),
        }
    }

    async fn reject(&self, session: &mut Session, ctx: &mut RequestCtx, r: Reject) -> Result<bool> {
        ctx.reject = Some(r);
        r.send(session, ctx.request_id.as_ref(), ctx.openai).await?;
        Ok(true)
    }

    /// Reads the body to know its `model` and whether it streams, and picks the
    /// group's route for it.
    async fn route_by_model(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        group: &RouteGroup,
    ) -> Result<std::result::Result<Arc<RouteEntry>, Reject>> {
        let limit = group.read_limit();
        if headers::content_length(session.req_header()).is_some_and(|n| n > limit) {
            return Ok(Err(Reject::TooLarge));
        }
        let read = openai::read_fields(session, limit, |model| {
            model.map(|m| group.by_model(Some(m)).ok_or(Reject::ModelNotFound))
        })
        .await?;
        let (picked, read) = match read {
            Ok(r) => r,
            Err(BodyError::TooLarge) => return Ok(Err(Reject::TooLarge)),
            Err(BodyError::Invalid(why)) => return Ok(Err(refusal(&why))),
        };
        let (route, model) = match picked {
            Some(Ok(found)) => found,
            Some(Err(r)) => return Ok(Err(r)),
            // No model: the route that names none, if the endpoint has one.
            None => match group.by_model(None) {
                Some(found) => found,
                None => return Ok(Err(Reject::ModelMissing)),
            },
        };
        if route
            .pool
            .settings()
            .affinity
            .as_ref()
            .is_some_and(|a| a.key == AffinityKey::Prompt)
        {
            ctx.affinity = match openai::prompt::prompt_blocks(&read.bytes) {
                Ok(blocks) => blocks,
                Err(why) => return Ok(Err(refusal(&why))),
            };
        }
        ctx.pre = Some(PreRead::new(session, read, &route.api));
        ctx.model = model;
        Ok(Ok(route))
    }

    fn fail<T>(&self, ctx: &mut RequestCtx, r: Reject) -> Result<T> {
        ctx.reject = Some(r);
        Err(Error::explain(
            ErrorType::HTTPStatus(r.status()),
            r.reason(),
        ))
    }

    fn may_retry(&self, ctx: &RequestCtx) -> bool {
        ctx.route
            .as_ref()
            .is_some_and(|r| r.pool.may_retry(&ctx.tried))
    }
}

/// The client's IP address (none on a Unix socket).
fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// The peer for an attempt on `lease`'s backend.
fn peer_for(lease: &Lease, session: &Session) -> Box<HttpPeer> {
    let mut peer = Box::new(lease.backend().peer().clone());
    peer.options.alpn = alpn_for(&peer.options.alpn, session.is_upgrade_req());
    peer
}

/// The ALPN offered to a backend that offers `offer`: an upgrade (WebSocket) needs
/// HTTP/1.1 end to end, so h2 is not offered for it when HTTP/1.1 is an option.
fn alpn_for(offer: &ALPN, upgrade: bool) -> ALPN {
    if upgrade && *offer == ALPN::H2H1 {
        ALPN::H1
    } else {
        offer.clone()
    }
}

/// The answer to a body the proxy cannot decide on.
fn refusal(why: &Invalid) -> Reject {
    match why {
        Invalid::NotObject(_) => Reject::NotJsonObject,
        Invalid::ModelNotString => Reject::ModelMissing,
        Invalid::StreamNotBool => Reject::StreamNotBool,
        Invalid::Duplicate(key) => match key {
            Key::Model => Reject::DuplicateModel,
            Key::Stream => Reject::DuplicateStream,
            Key::StreamOptions => Reject::DuplicateStreamOptions,
            Key::Messages => Reject::DuplicateMessages,
            Key::Prompt => Reject::DuplicatePrompt,
        },
    }
}

/// Maps a pingora error to the answer the client gets; `None` when nobody can hear it.
fn classify(e: &Error) -> Option<Reject> {
    use ErrorType::*;
    match (e.esource(), e.etype()) {
        (_, HTTPStatus(413)) => Some(Reject::TooLarge),
        (ErrorSource::Downstream, ReadTimedout) => Some(Reject::RequestTimeout),
        (ErrorSource::Upstream, ReadTimedout) => Some(Reject::GatewayTimeout),
        (ErrorSource::Upstream, _) => Some(Reject::BadGateway),
        (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => None,
        (ErrorSource::Downstream, _) => Some(Reject::BadRequest),
        _ => Some(Reject::BadGateway),
    }
}
