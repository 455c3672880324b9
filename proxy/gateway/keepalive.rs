//! Streams kept alive while queued (`sse_keepalive`): a streaming request that
//! waits for a slot longer than the interval gets its `200 text/event-stream` head
//! at once and an SSE comment every interval, so idle timeouts in front of the
//! proxy do not cut it; the replica's stream then continues the response.
//!
//! Once that head is out the replica's status and headers cannot reach the client:
//! a replica answer that is not 2xx (after retries), a queue timeout or a failure
//! before the replica's first byte becomes one SSE `data:` event holding the
//! OpenAI-shaped error, and the stream ends.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::{client_gone, Reject, RequestCtx, X_REQUEST_ID};
use crate::upstream::{Admission, Pool};

/// The comment sent every interval (ignored by SSE clients, RFC-less but in the
/// WHATWG event-stream grammar: a line starting with `:`).
const COMMENT: &[u8] = b": keep-alive\n\n";

/// Does this request want a stream: `"stream": true` in the body read to route
/// it, or `Accept: text/event-stream`?
pub(super) fn wants_stream(session: &Session, ctx: &RequestCtx) -> bool {
    ctx.pre.as_ref().is_some_and(|p| p.stream)
        || session
            .req_header()
            .headers
            .get(http::header::ACCEPT)
            .is_some_and(|v| memchr::memmem::find(v.as_bytes(), b"text/event-stream").is_some())
}

/// Waits for a slot like [`Pool::admit`], but once the request has waited `every`
/// (or at once, on a retry after the head went out) sends the stream's head and
/// then a comment every `every`. A client that leaves (seen while waiting for the
/// first interval, or as a failed write) leaves the queue.
pub(super) async fn admit(
    session: &mut Session,
    ctx: &mut RequestCtx,
    pool: &Pool,
    every: Duration,
) -> Admission {
    let admit = pool.admit(&ctx.tried, ctx.ticket, ctx.hash, std::future::pending());
    tokio::pin!(admit);
    if !ctx.early_head {
        tokio::select! {
            a = &mut admit => return a,
            () = client_gone(session) => return Admission::ClientGone,
            () = tokio::time::sleep(every) => {}
        }
        if send_head(session, ctx.request_id.as_ref()).await.is_err() {
            return Admission::ClientGone;
        }
        ctx.early_head = true;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            a = &mut admit => return a,
            _ = tick.tick() => {
                let sent = session
                    .write_response_body(Some(Bytes::from_static(COMMENT)), false)
                    .await;
                if sent.is_err() {
                    return Admission::ClientGone;
                }
            }
        }
    }
}

async fn send_head(
    session: &mut Session,
    request_id: Option<&http::HeaderValue>,
) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header(http::header::CONTENT_TYPE, "text/event-stream")?;
    h.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
    if session.req_header().version < http::Version::HTTP_2 {
        h.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    if let Some(id) = request_id {
        h.insert_header(X_REQUEST_ID, id.clone())?;
    }
    session.write_response_header(Box::new(h), false).await
}

/// Ends a stream whose head went out early with `r` as one SSE error event.
pub(super) async fn send_error(session: &mut Session, r: Reject) -> pingora::Result<()> {
    let body = r.openai_body();
    let mut event = BytesMut::with_capacity(body.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(body);
    event.extend_from_slice(b"\n\n");
    session
        .write_response_body(Some(event.freeze()), true)
        .await
}
