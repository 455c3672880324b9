//! The OpenAI front door: routing on the JSON body's `model`, `GET /v1/models`, and
//! the per-route API settings the gateway consults.
//!
//! pingora has no hook for routing on a request body (pingora issues 575 and 780), so
//! [`read_fields`] reads it in `request_filter`, as far as needed and no further than
//! the route group's limit. pingora's retry buffer keeps what was read (up to 64 KiB)
//! and sends it upstream first; beyond that, or when the body is rewritten
//! (`stream_usage`), the gateway replays [`PreRead::replay`] from `request_body_filter`.

pub mod body;
pub(crate) mod models;
pub mod prompt;
pub(crate) mod route;
pub mod tokens;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

pub(crate) use body::{Scan, Want};
pub(crate) use route::{Pick, RouteGroup};

/// What a route does for OpenAI traffic (from its `api`, `stream_usage` and
/// `sse_keepalive` keys).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteApi {
    /// `api = "openai"`: answers of the proxy itself in OpenAI's error shape.
    pub openai: bool,
    pub stream_usage: bool,
    pub sse_keepalive: Option<Duration>,
}

/// What `request_filter` read of a body, and what the rest of the request needs of it.
#[derive(Debug, Default)]
pub(crate) struct PreRead {
    /// Bytes to send upstream in place of the first body chunk of each attempt (with
    /// that chunk appended, when it is one pingora read later): set when pingora's
    /// retry buffer could not keep the bytes read, or when the body was rewritten.
    pub replay: Option<Bytes>,
    /// The body was rewritten to ask for usage; the usage chunk is the proxy's, not
    /// the client's, and its new length replaces `Content-Length`.
    pub rewritten_len: Option<usize>,
    /// The request asked for a stream (`"stream": true`).
    pub stream: bool,
}

impl PreRead {
    /// Decides what to replay once the route is known: a streaming request on a
    /// `stream_usage` route that did not ask for usage gets it asked for.
    pub(crate) fn new(session: &Session, read: BodyRead, api: &RouteApi) -> PreRead {
        let mut pre = PreRead {
            stream: read.stream,
            ..PreRead::default()
        };
        if api.stream_usage && read.stream && !read.stream_options && read.complete {
            if let Some(body) = body::with_usage_requested(&read.bytes) {
                pre.rewritten_len = Some(body.len());
                pre.replay = Some(Bytes::from(body));
                return pre;
            }
        }
        if session.as_ref().retry_buffer_truncated() {
            pre.replay = Some(read.bytes);
        }
        pre
    }

    /// The first body chunk of an attempt: the replay, followed by `chunk` when that
    /// is body pingora read after `request_filter` (a rewritten body is complete, so
    /// only the replay goes).
    pub(crate) fn replay_with(&self, chunk: Option<Bytes>) -> Option<Bytes> {
        let replay = self.replay.as_ref()?;
        match chunk {
            Some(c) if !c.is_empty() && self.rewritten_len.is_none() => {
                let mut joined = BytesMut::with_capacity(replay.len() + c.len());
                joined.extend_from_slice(replay);
                joined.extend_from_slice(&c);
                Some(joined.freeze())
            }
            _ => Some(replay.clone()),
        }
    }
}

/// The body bytes read by [`read_fields`] and the stream keys found.
#[derive(Debug)]
pub(crate) struct BodyRead {
    pub bytes: Bytes,
    /// The whole body was read.
    pub complete: bool,
    pub stream: bool,
    pub stream_options: bool,
}

/// Why a body could not be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// More than the limit was read without finding what was needed.
    TooLarge,
    /// Not a JSON object, or the `model` is not a string.
    Invalid,
}

/// The most recent bytes kept to spot a key split across two chunks.
const KEY_OVERLAP: usize = 8;

/// Reads the request body until the `want`ed top-level keys are known (or it ends),
/// at most `limit` bytes, and hands the model found to `decide` while the bytes it
/// borrows are alive. Turns on pingora's retry buffering first, so what is read here
/// is sent upstream too. Client connection errors come back as the outer `Err`.
pub(crate) async fn read_fields<T>(
    session: &mut Session,
    want: Want,
    limit: u64,
    decide: impl FnOnce(Option<&str>) -> T,
) -> pingora::Result<Result<(T, BodyRead), BodyError>> {
    session.enable_retry_buffering();
    // One chunk is scanned where it lies; more are joined (one copy of what is read).
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    loop {
        let chunk = session.read_request_body().await?;
        let complete = chunk.is_none();
        let mut hint = complete;
        if let Some(c) = chunk {
            if c.is_empty() {
                continue;
            }
            let held = first.as_ref().map_or(0, |f| f.len().max(joined.len()));
            if (held + c.len()) as u64 > limit {
                return Ok(Err(BodyError::TooLarge));
            }
            // Scan only when the new bytes may hold a wanted key, or at the end: a
            // body is then walked once or twice, not once per chunk.
            match &first {
                None => {
                    hint = may_hold_key(&[], &c);
                    first = Some(c);
                }
                Some(f) => {
                    if joined.is_empty() {
                        joined.extend_from_slice(f);
                    }
                    hint = may_hold_key(&joined[joined.len().saturating_sub(KEY_OVERLAP)..], &c);
                    joined.extend_from_slice(&c);
                }
            }
        }
        if !hint {
            continue;
        }
        let buf: &[u8] = match &first {
            Some(f) if joined.is_empty() => f,
            Some(_) => &joined,
            None => &[],
        };
        let (decided, stream, stream_options) = match body::scan(buf, want, complete) {
            Scan::NeedMore => continue,
            Scan::Invalid(why) => {
                log::debug!("request body is not an OpenAI request: {why}");
                return Ok(Err(BodyError::Invalid));
            }
            Scan::Done(fields) => (
                decide(fields.model.as_deref()),
                fields.stream == Some(true),
                fields.stream_options,
            ),
        };
        let bytes = if joined.is_empty() {
            first.unwrap_or_default()
        } else {
            joined.freeze()
        };
        let read = BodyRead {
            bytes,
            complete: complete || session.is_body_done(),
            stream,
            stream_options,
        };
        return Ok(Ok((decided, read)));
    }
}

/// Whether `"model"` or `"stream` may appear in `tail` followed by `chunk`.
fn may_hold_key(tail: &[u8], chunk: &[u8]) -> bool {
    let found = |hay: &[u8]| {
        memchr::memmem::find(hay, b"\"model\"").is_some()
            || memchr::memmem::find(hay, b"\"stream").is_some()
    };
    if found(chunk) {
        return true;
    }
    if tail.is_empty() {
        return false;
    }
    let mut seam = [0u8; 2 * KEY_OVERLAP];
    let edge = chunk.len().min(KEY_OVERLAP);
    seam[..tail.len()].copy_from_slice(tail);
    seam[tail.len()..tail.len() + edge].copy_from_slice(&chunk[..edge]);
    found(&seam[..tail.len() + edge])
}
