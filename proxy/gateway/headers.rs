//! Request header work on the hot path: request ids, forwarding headers, path
//! normalisation, prefix stripping, the HTTP/1 request shape and hash keys. Formatting goes into stack buffers, not `format!`.

use std::borrow::Cow;
use std::io::Write;

use http::uri::PathAndQuery;
use http::{HeaderValue, Uri};
use pingora::http::authority::raw_target_authority;
use pingora::http::{RequestHeader, ResponseHeader, StaticHeaderName};
use pingora::prelude::*;
use pingora::proxy::Session;

use super::X_REQUEST_ID;
use crate::config::RequestKey;
use crate::routing::{normalize_path, PathError};
use crate::upstream::Backend;

// Inserted or looked up, a `StaticHeaderName` is neither parsed nor copied (a `&str`
// name outside the standard table is both, on every request).
static X_FORWARDED_FOR: StaticHeaderName = StaticHeaderName::new("x-forwarded-for");
static X_FORWARDED_PROTO: StaticHeaderName = StaticHeaderName::new("x-forwarded-proto");
static X_FORWARDED_HOST: StaticHeaderName = StaticHeaderName::new("x-forwarded-host");
/// Longest client-supplied request id kept as is; longer ones are replaced.
pub(super) const MAX_REQUEST_ID: usize = 128;

/// The client's `X-Request-Id` if it sent a usable one, else a new random 128-bit id.
///
/// The value is marked sensitive, which HPACK encodes as a never-indexed literal
/// (RFC 7541 §6.2.3): an id differs on every request, so indexing it would only evict
/// useful entries from the h2 dynamic table and cost the encoder a table search.
pub fn request_id(req: &RequestHeader) -> HeaderValue {
    let mut id = client_or_new_request_id(req);
    id.set_sensitive(true);
    id
}

fn client_or_new_request_id(req: &RequestHeader) -> HeaderValue {
    if let Some(id) = req.headers.get(X_REQUEST_ID.name()) {
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
    // Hex digits are always a valid header value. Owned by a `Bytes` that shares
    // from the start, so the id's clones (request, response, log) are reference
    // counts: a copied slice would be promoted into a second allocation by the
    // first clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Size of the request head (URI plus header names and values), as counted against
/// `listen.max_header_bytes` (default 64 KiB, like Envoy's 60 KiB; larger heads get 431).
pub fn header_bytes(req: &RequestHeader) -> usize {
    let uri = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    req.headers
        .iter()
        .fold(uri, |n, (k, v)| n + k.as_str().len() + v.len())
}

/// The declared request body length, if any. pingora has already refused differing
/// values, so the first of a list (`5, 5`) or of repeated fields is the length.
pub fn content_length(req: &RequestHeader) -> Option<u64> {
    let value = req.headers.get(http::header::CONTENT_LENGTH)?.as_bytes();
    let first = value.split(|&b| b == b',').next()?;
    std::str::from_utf8(first).ok()?.trim().parse().ok()
}

/// The media type of a `Content-Type` value or of one element of an `Accept` list:
/// what precedes any `;` parameters, without surrounding spaces. Media types compare
/// case-insensitively (RFC 9110 §8.3.1).
pub(crate) fn media_type(value: &[u8]) -> &[u8] {
    let end = memchr::memchr(b';', value).unwrap_or(value.len());
    value[..end].trim_ascii()
}

/// Sends a `Content-Length` that arrived as a list or as repeated fields (identical
/// values: RFC 9110 8.6 lets a recipient take them as one) on as one plain value, so
/// no replica's parser has to agree with ours about lists.
pub fn single_content_length(upstream: &mut RequestHeader) -> Result<()> {
    let mut values = upstream
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter();
    let (Some(first), more) = (values.next(), values.next().is_some()) else {
        return Ok(());
    };
    if !more && !first.as_bytes().contains(&b',') {
        return Ok(());
    }
    if let Some(n) = content_length(upstream) {
        upstream.insert_header(http::header::CONTENT_LENGTH, n)?;
    }
    Ok(())
}

/// The cache-affinity key of a request keyed by header `name`: one block for its value
/// (none without the header, so such requests are balanced by load alone).
pub fn affinity_blocks(session: &Session, name: &str) -> Vec<u64> {
    session
        .req_header()
        .headers
        .get(name)
        .map_or_else(Vec::new, |v| crate::upstream::affinity_key(v.as_bytes()))
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
        // The address goes through a stack buffer just long enough for any IP's text,
        // the value into an allocation of its exact length: one allocation, as copying
        // into a `HeaderValue` costs anyway, and no 512-byte buffer zeroed per request.
        let mut ip_text = [0u8; MAX_IP_TEXT];
        let mut w = &mut ip_text[..];
        let written = write_ip(&mut w, ip).map(|()| MAX_IP_TEXT - w.len());
        if let Ok(len) = written {
            let ip_text = &ip_text[..len];
            let prior = upstream
                .headers
                .get(X_FORWARDED_FOR.name())
                .map(|v| v.as_bytes())
                .filter(|p| p.len() < 400);
            let mut value = Vec::with_capacity(prior.map_or(0, |p| p.len() + 2) + ip_text.len());
            if let Some(prior) = prior {
                value.extend_from_slice(prior);
                value.extend_from_slice(b", ");
            }
            value.extend_from_slice(ip_text);
            // A `Vec` whose length is its capacity becomes `Bytes` without copying,
            // which the value keeps as it is.
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
                upstream.insert_header(&X_FORWARDED_FOR, v)?;
            }
        }
    }
    upstream.insert_header(&X_FORWARDED_PROTO, HeaderValue::from_static(scheme))?;
    let host = match session.req_header().uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => session
            .req_header()
            .headers
            .get(http::header::HOST)
            .cloned(),
    };
    if let Some(host) = host {
        upstream.insert_header(&X_FORWARDED_HOST, host)?;
    }
    Ok(())
}

/// The longest text of an IP address, in bytes: an IPv6 address with an embedded IPv4
/// one (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`) is 45.
const MAX_IP_TEXT: usize = 48;

/// Writes `ip` as text: an IPv4 address octet by octet through `itoa` (`write!`
/// through `Display` cost about 1,000 instructions per request), IPv6 through `Display`.
fn write_ip(w: &mut &mut [u8], ip: std::net::IpAddr) -> std::io::Result<()> {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            let [a, b, c, d] = v4.octets();
            w.write_all(digits.format(a).as_bytes())?;
            for octet in [b, c, d] {
                w.write_all(b".")?;
                w.write_all(digits.format(octet).as_bytes())?;
            }
            Ok(())
        }
        std::net::IpAddr::V6(v6) => write!(w, "{v6}"),
    }
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

/// Rewrites the request target to its normalised path ([`normalize_path`]), keeping
/// scheme, authority and query. Allocates only when the path changes.
pub fn normalize_target(req: &mut RequestHeader) -> std::result::Result<(), PathError> {
    let path = match normalize_path(req.uri.path())? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(path) => path,
    };
    let path_and_query = match req.uri.query() {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
        None => PathAndQuery::try_from(path),
    }
    .map_err(|_| PathError::AmbiguousSeparator)?;
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    let uri = Uri::from_parts(parts).map_err(|_| PathError::AmbiguousSeparator)?;
    req.set_uri(uri);
    Ok(())
}

/// Makes an absolute-form HTTP/1 request (`GET http://host/x`) an origin-form one
/// whose `Host` is the target's authority, which replaces any `Host` the client sent
/// (RFC 9112 §3.2.2; pingora has already refused a `Host` naming another origin).
/// Routing, `X-Forwarded-Host`, the access log and the replica then all see that one
/// host, also for an HTTP/1.0 request that sent no `Host`. Nothing to do for
/// origin-form targets and HTTP/2 requests (their authority is in the URI).
pub fn absolute_form_to_host(req: &mut RequestHeader) -> Result<()> {
    if req.uri.authority().is_some() {
        return Ok(());
    }
    let Some(authority) = raw_target_authority(req.raw_path()).authority() else {
        return Ok(());
    };
    let host = HeaderValue::from_bytes(authority)
        .or_err(ErrorType::InvalidHTTPHeader, "request authority as Host")?;
    to_origin_form(req, host)
}

/// Sets `host` as the `Host` and leaves only the path and query in the target.
fn to_origin_form(req: &mut RequestHeader, host: HeaderValue) -> Result<()> {
    let origin = req
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    req.insert_header(http::header::HOST, host)?;
    req.set_uri(Uri::from(origin));
    Ok(())
}

/// The `Host` for requests to `backend` that carry none: its TLS name when one is
/// set, else `ip:port` (nginx sends the upstream's address by default).
pub fn backend_host(backend: &Backend) -> &str {
    let sni = &backend.peer().sni;
    if sni.is_empty() {
        backend.label()
    } else {
        sni
    }
}

/// Shapes a request for an HTTP/1 replica:
/// - an HTTP/2 request's URI goes out in origin-form, its authority as the `Host`
///   (absolute-form HTTP/1 targets were made so by [`absolute_form_to_host`]);
/// - a request without `Host` (HTTP/1.0 allows it, HTTP/1.1 replicas refuse it)
///   gets `default_host`;
/// - HTTP/2 `cookie` fields are joined with `; ` into one (RFC 9113 §8.2.3).
pub fn for_http1(upstream: &mut RequestHeader, default_host: &str) -> Result<()> {
    if let Some(authority) = upstream.uri.authority() {
        let host = HeaderValue::from_str(authority.as_str())
            .or_err(ErrorType::InvalidHTTPHeader, "request authority as Host")?;
        to_origin_form(upstream, host)?;
    } else if !upstream.headers.contains_key(http::header::HOST) && !default_host.is_empty() {
        let host = HeaderValue::from_str(default_host)
            .or_err(ErrorType::InvalidHTTPHeader, "backend address as Host")?;
        upstream.insert_header(http::header::HOST, host)?;
    }
    let mut cookies = upstream.headers.get_all(http::header::COOKIE).iter();
    if let (Some(first), Some(_)) = (cookies.next(), cookies.next()) {
        let mut joined = first.as_bytes().to_vec();
        for c in upstream
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .skip(1)
        {
            joined.extend_from_slice(b"; ");
            joined.extend_from_slice(c.as_bytes());
        }
        let joined = HeaderValue::from_bytes(&joined)
            .or_err(ErrorType::InvalidHTTPHeader, "joining cookies")?;
        upstream.insert_header(http::header::COOKIE, joined)?;
    }
    Ok(())
}

/// A response whose body the proxy changes (so its `Content-Length` no longer holds)
/// is framed without it: chunked to an HTTP/1.1 client; closed after the body for an
/// HTTP/1.0 one (the only framing left, and the close must be said, or the client
/// cannot tell a truncated body from a whole one). HTTP/2 frames itself.
pub(crate) fn unknown_length(session: &mut Session, resp: &mut ResponseHeader) -> Result<()> {
    if resp.remove_header(&http::header::CONTENT_LENGTH).is_none() {
        return Ok(());
    }
    match session.req_header().version {
        http::Version::HTTP_11 => {
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        http::Version::HTTP_10 | http::Version::HTTP_09 => session.set_keepalive(None),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_lists_and_repeats_go_on_as_one_value() {
        let head = |values: &[&str]| {
            let mut h = RequestHeader::build("POST", b"/", None).unwrap();
            for v in values {
                h.append_header(http::header::CONTENT_LENGTH, *v).unwrap();
            }
            h
        };
        for values in [&["5, 5"][..], &["5", "5"], &[" 5 ,5"]] {
            let mut h = head(values);
            assert_eq!(content_length(&h), Some(5), "{values:?}");
            single_content_length(&mut h).unwrap();
            let sent: Vec<_> = h
                .headers
                .get_all(http::header::CONTENT_LENGTH)
                .iter()
                .collect();
            assert_eq!(sent, ["5"], "{values:?}");
        }
        let mut plain = head(&["7"]);
        single_content_length(&mut plain).unwrap();
        assert_eq!(plain.headers[http::header::CONTENT_LENGTH], "7");
        assert_eq!(content_length(&head(&[])), None);
    }
}
