//! Streams kept alive while queued (`sse_keepalive`): a streaming request that
//! waits for a slot longer than the interval gets its `200 text/event-stream` head
//! at once and an SSE comment every interval, so idle timeouts in front of the
//! proxy do not cut it; the replica's stream then continues the response. Requests
//! held for a replica to come up (`hold`) are kept alive the same way.
//!
//! Once that head is out the replica's status and headers cannot reach the client:
//! a replica answer that is not 2xx (after retries), a queue timeout or a failure
//! before the replica's first byte becomes one SSE `data:` event holding the
//! OpenAI-shaped error, and the stream ends.

use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

use super::{client_gone, Reject, RequestCtx, X_REQUEST_ID};
use crate::upstream::Admission;

/// The comment sent every interval (ignored by SSE clients, RFC-less but in the
/// WHATWG event-stream grammar: a line starting with `:`).
const COMMENT: &[u8] = b": keep-alive\n\n";

/// Does this request want a stream? A body read to route it says so itself
/// (`"stream": true`; without `stream` OpenAI servers answer JSON, whatever the
/// `Accept`, and an early SSE head would then frame that JSON wrongly); a request
/// whose body was not read (not a POST of JSON) when it accepts `text/event-stream`.
pub(super) fn wants_stream(session: &Session, ctx: &RequestCtx) -> bool {
    match &ctx.pre {
        Some(p) => p.stream,
        None => accepts_event_stream(session.req_header()),
    }
}

/// The request's `Accept` lists `text/event-stream`, in any of its fields (a list may
/// be split over repeated fields, RFC 9110 §5.3).
pub(super) fn accepts_event_stream(req: &RequestHeader) -> bool {
    req.headers
        .get_all(http::header::ACCEPT)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|range| super::headers::media_type(range).eq_ignore_ascii_case(b"text/event-stream"))
}

/// Waits for `admission` (the pool's queue, or a `hold` for a replica to come up),
/// but once the request has waited `every` (or at once, when the head already went
/// out: a retry, or a hold after the queue) sends the stream's head and then a
/// comment every `every`. `admission` must not watch the client itself: a client that
/// leaves is seen here (while waiting for the first interval, or as a failed write),
/// and dropping `admission` takes the request out of the queue.
pub(super) async fn wait(
    session: &mut Session,
    early_head: &mut bool,
    request_id: Option<&http::HeaderValue>,
    every: Duration,
    admission: impl Future<Output = Admission>,
) -> Admission {
    tokio::pin!(admission);
    if !*early_head {
        tokio::select! {
            a = &mut admission => return a,
            () = client_gone(session) => return Admission::ClientGone,
            () = tokio::time::sleep(every) => {}
        }
        if send_head(session, request_id).await.is_err() {
            return Admission::ClientGone;
        }
        *early_head = true;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            a = &mut admission => return a,
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
