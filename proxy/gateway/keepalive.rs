//! Streams kept alive while queued (`sse_keepalive`): a streaming request that
//! waits for a slot longer than the interval gets its `200 text/event-stream` head
//! at once and an SSE comment every interval, so idle timeouts in front of the
//! proxy do not cut it; the replica's stream then continues the response. Requests
//! held for a replica to come up (`hold`) are kept alive the same way.
//!
//! Once that head is out the replica's status and headers cannot reach the client:
//! a replica answer that is not 2xx (after retries) becomes one SSE `data:` event
//! holding the replica's own error (its status and message, OpenAI-shaped), and a
//! queue timeout or a failure before the replica's first byte one holding the
//! proxy's; then the stream ends. The access log and metrics count the replica's
//! status, or the proxy's.

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
/// leaves is seen here (a closed connection or reset stream at any time, or a failed
/// write), and dropping `admission` takes the request out of the queue at once.
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
        // The client is watched between comments too: a write to a closed socket
        // only fails once the peer's reset is back, a tick or two later, and the
        // request would hold its place (or take a freed slot) until then.
        tokio::select! {
            a = &mut admission => return a,
            () = client_gone(session) => return Admission::ClientGone,
            _ = tick.tick() => {}
        }
        let sent = session
            .write_response_body(Some(Bytes::from_static(COMMENT)), false)
            .await;
        if sent.is_err() {
            return Admission::ClientGone;
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
        h.insert_header(&X_REQUEST_ID, id.clone())?;
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

/// The `code` of an error event built from a replica's error answer (when it gave
/// none), and that stream's `reject` in the access log: a string, as OpenAI's codes
/// and modelgate's own events' are.
pub(super) const REPLICA_ERROR: &str = "upstream_error";

/// The most of a replica's error body kept for its error event; the rest is dropped.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A replica's error answer (not 2xx, not retried) to a stream whose head went out
/// early: its body is held back and, at its end, sent as one SSE error event
/// carrying the replica's status and message (see [`error_event`]).
#[derive(Debug)]
pub(super) struct RelayedError {
    /// The replica's status: the request's status in the access log and metrics.
    pub(super) status: u16,
    body: BytesMut,
}

impl RelayedError {
    pub(super) fn new(status: u16) -> Self {
        RelayedError {
            status,
            body: BytesMut::new(),
        }
    }

    /// Takes the replica's body chunk out of the response; at the end of the body,
    /// puts the error event in its place.
    pub(super) fn absorb(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) {
        if let Some(chunk) = body.take() {
            let room = MAX_ERROR_BODY.saturating_sub(self.body.len());
            self.body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        if end_of_stream {
            *body = Some(error_event(self.status, &self.body));
        }
    }
}

/// `data: ERROR\n\n`: the replica's own error JSON when it is OpenAI-shaped
/// (`{"error":{"message":..}}`, its `code` set to [`REPLICA_ERROR`] when it has none),
/// else `{"error":{"message","type","param","code"}}` built from it: the `message` of
/// a JSON object that has one (vLLM's older `{"object":"error","message":..}`) or the
/// string `error` of one (`{"error":"..."}`), else the body's text; `type` from
/// `status` as OpenAI names its errors, `code` [`REPLICA_ERROR`].
pub(super) fn error_event(status: u16, body: &[u8]) -> Bytes {
    use serde_json::{json, Value};
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = match parsed {
        Some(Value::Object(mut top))
            if top
                .get("error")
                .and_then(|e| e.get("message"))
                .is_some_and(Value::is_string) =>
        {
            if let Some(Value::Object(e)) = top.get_mut("error") {
                if e.get("code").is_none_or(Value::is_null) {
                    e.insert("code".into(), json!(REPLICA_ERROR));
                }
            }
            Value::Object(top)
        }
        parsed => {
            let message = match parsed.as_ref().and_then(|v| {
                v.get("message")
                    .and_then(Value::as_str)
                    .or_else(|| v.get("error").and_then(Value::as_str))
            }) {
                Some(m) => m.to_owned(),
                None => {
                    let text = String::from_utf8_lossy(body);
                    match text.trim() {
                        "" => format!("The model server answered {status}."),
                        t => t.to_owned(),
                    }
                }
            };
            json!({"error": {
                "message": message,
                "type": openai_error_type(status),
                "param": null,
                "code": REPLICA_ERROR,
            }})
        }
    };
    let mut event = BytesMut::with_capacity(body.len() + 64);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(error.to_string().as_bytes());
    event.extend_from_slice(b"\n\n");
    event.freeze()
}

/// OpenAI's error `type` for an HTTP status (its API reference's error codes).
fn openai_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(status: u16, body: &str) -> serde_json::Value {
        let e = error_event(status, body.as_bytes());
        let text = std::str::from_utf8(&e).unwrap_or_default();
        let json = text
            .strip_prefix("data: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .unwrap_or_default();
        serde_json::from_str(json).unwrap_or_default()
    }

    #[test]
    fn replica_errors_become_openai_error_events() {
        // OpenAI-shaped: passed on, its code kept or set to the status.
        let e = event(
            400,
            r#"{"error":{"message":"bad","type":"BadRequestError","code":"x"}}"#,
        );
        assert_eq!(e["error"]["message"], "bad");
        assert_eq!(e["error"]["type"], "BadRequestError");
        assert_eq!(e["error"]["code"], "x");
        let e = event(404, r#"{"error":{"message":"no such model","code":null}}"#);
        assert_eq!(e["error"]["code"], "upstream_error");
        // vLLM's older shape: its message, wrapped.
        let e = event(400, r#"{"object":"error","message":"too long","code":400}"#);
        assert_eq!(e["error"]["message"], "too long");
        assert_eq!(e["error"]["type"], "invalid_request_error");
        // Anything else: its text as the message; nothing: the status said.
        let e = event(500, "  Internal Server Error\n");
        assert_eq!(e["error"]["message"], "Internal Server Error");
        assert_eq!(e["error"]["type"], "server_error");
        assert_eq!(e["error"]["code"], "upstream_error");
        // A JSON object whose error is a string (Flask-style): that string.
        let e = event(500, r#"{"error": "mock"}"#);
        assert_eq!(e["error"]["message"], "mock");
        assert_eq!(e["error"]["code"], "upstream_error");
        let e = event(429, "");
        assert_eq!(e["error"]["message"], "The model server answered 429.");
        assert_eq!(e["error"]["type"], "rate_limit_error");
        // A huge body is cut at the cap, not held whole.
        let mut r = RelayedError::new(502);
        let mut chunk = Some(Bytes::from(vec![b'x'; MAX_ERROR_BODY + 10]));
        r.absorb(&mut chunk, false);
        assert!(chunk.is_none());
        r.absorb(&mut chunk, true);
        let out = chunk.unwrap_or_default();
        assert!(out.len() < MAX_ERROR_BODY + 200, "{}", out.len());
    }
}
