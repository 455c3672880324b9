//! Request header work on the hot path: request ids, forwarding headers, prefix
//! stripping and hash keys. Formatting goes into stack buffers, not `format!`.

use std::io::Write;

use http::uri::PathAndQuery;
use http::{HeaderValue, Uri};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::X_REQUEST_ID;
use crate::config::RequestKey;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
/// Longest client-supplied request id kept as is; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// The client's `X-Request-Id` if it sent a usable one, else a new random 128-bit id.
pub fn request_id(req: &RequestHeader) -> HeaderValue {
    if let Some(id) = req.headers.get(X_REQUEST_ID) {
        if !id.is_empty() && id.len() <= MAX_REQUEST_ID {
            return id.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    let mut bits = fastrand::u128(..);
    for b in buf.iter_mut() {
        *b = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Size of the request head (URI plus header names and values), as counted against
/// `listen.max_header_bytes` (default 64 KiB, like Envoy's 60 KiB; larger heads get 431).
pub fn header_bytes(req: &RequestHeader) -> usize {
    let uri = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    req.headers
        .iter()
        .fold(uri, |n, (k, v)| n + k.as_str().len() + v.len())
}

/// The declared request body length, if any.
pub fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The consistent-hash key of a request: the named header, or the client address
/// when the header is absent.
pub fn hash_key(session: &Session, key: &RequestKey) -> u64 {
    if let RequestKey::Header(name) = key {
        if let Some(v) = session.req_header().headers.get(name.as_str()) {
            return xxhash_rust::xxh3::xxh3_64(v.as_bytes());
        }
    }
    match session.client_addr().and_then(|a| a.as_inet()) {
        Some(addr) => match addr.ip() {
            std::net::IpAddr::V4(ip) => xxhash_rust::xxh3::xxh3_64(&ip.octets()),
            std::net::IpAddr::V6(ip) => xxhash_rust::xxh3::xxh3_64(&ip.octets()),
        },
        None => 0,
    }
}

/// Sets `X-Forwarded-For` (appending the client to any existing chain),
/// `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub fn add_forwarded(
    session: &Session,
    upstream: &mut RequestHeader,
    scheme: &'static str,
) -> Result<()> {
    if let Some(ip) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
    {
        let mut buf = [0u8; 512];
        let mut w = &mut buf[..];
        let prior = upstream.headers.get(X_FORWARDED_FOR).map(|v| v.as_bytes());
        let written = match prior {
            Some(p) if p.len() < 400 => w.write_all(p).and_then(|_| write!(w, ", {ip}")),
            _ => write!(w, "{ip}"),
        };
        if written.is_ok() {
            let len = 512 - w.len();
            if let Ok(v) = HeaderValue::from_bytes(&buf[..len]) {
                upstream.insert_header(X_FORWARDED_FOR, v)?;
            }
        }
    }
    upstream.insert_header(X_FORWARDED_PROTO, HeaderValue::from_static(scheme))?;
    let host = match session.req_header().uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => session
            .req_header()
            .headers
            .get(http::header::HOST)
            .cloned(),
    };
    if let Some(host) = host {
        upstream.insert_header(X_FORWARDED_HOST, host)?;
    }
    Ok(())
}

/// Removes the route prefix from the request path, keeping the query, scheme and
/// authority (HTTP/2 requests carry their host in the URI).
pub fn strip_prefix(upstream: &mut RequestHeader, prefix: &str) -> Result<()> {
    let path = crate::routing::strip_prefix(upstream.uri.path(), prefix);
    let path_and_query = match upstream.uri.query() {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
        None => PathAndQuery::try_from(path),
    }
    .or_err(ErrorType::InvalidHTTPHeader, "rewriting path")?;
    let mut parts = upstream.uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    let uri = Uri::from_parts(parts).or_err(ErrorType::InvalidHTTPHeader, "rewriting path")?;
    upstream.set_uri(uri);
    Ok(())
}
