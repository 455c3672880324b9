//! The OpenAI front door: routing on the JSON body's `model`, `GET /v1/models`, and
//! the per-route API settings the gateway consults.
//!
//! pingora has no hook for routing on a request body (pingora issues 575 and 780), so
//! [`read_fields`] reads it whole in `request_filter`, no further than the route
//! group's limit. pingora's retry buffer keeps what was read (up to 64 KiB)
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
        if api.stream_usage && read.stream && !read.stream_options {
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

/// The body read by [`read_fields`] and the stream keys found in it.
#[derive(Debug)]
pub(crate) struct BodyRead {
    pub bytes: Bytes,
    pub stream: bool,
    pub stream_options: bool,
}

/// Why a body could not be routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// The body is larger than the limit.
    TooLarge,
    /// The body is not an OpenAI request the proxy can decide on.
    Invalid(body::Invalid),
}

/// Reads the whole request body, at most `limit` bytes (each read waits at most the
/// session's read timeout, `body_read_timeout`), finds its top-level `model`,
/// `stream` and `stream_options`, and hands the model to `decide` while the bytes it
/// borrows are alive. Turns on pingora's retry buffering first, so what is read here
/// is sent upstream too. Client connection errors come back as the outer `Err`, as
/// the client's (downstream) errors.
///
/// The body is read whole even when `model` comes first: a second `model` (or
/// `stream`) later in it would be the one most model servers act on.
pub(crate) async fn read_fields<T>(
    session: &mut Session,
    limit: u64,
    decide: impl FnOnce(Option<&str>) -> T,
) -> pingora::Result<Result<(T, BodyRead), BodyError>> {
    session.enable_retry_buffering();
    // A body that arrives in one read is scanned where it lies; more are joined.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut held = 0u64;
    loop {
        let c = match session.read_request_body().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err(e.into_down()),
        };
        if c.is_empty() {
            continue;
        }
        held += c.len() as u64;
        if held > limit {
            return Ok(Err(BodyError::TooLarge));
        }
        match &first {
            None => first = Some(c),
            Some(f) => {
                if joined.is_empty() {
                    joined.reserve(held as usize);
                    joined.extend_from_slice(f);
                }
                joined.extend_from_slice(&c);
            }
        }
    }
    let bytes = if joined.is_empty() {
        first.unwrap_or_default()
    } else {
        joined.freeze()
    };
    let (decided, stream, stream_options) = match body::scan(&bytes) {
        Ok(fields) => (
            decide(fields.model.as_deref()),
            fields.stream == Some(true),
            fields.stream_options,
        ),
        Err(why) => {
            log::debug!("request body refused: {why:?}");
            return Ok(Err(BodyError::Invalid(why)));
        }
    };
    let read = BodyRead {
        bytes,
        stream,
        stream_options,
    };
    Ok(Ok((decided, read)))
}
