//! Finding the credential a client presented: `Authorization: Bearer TOKEN` or
//! `X-API-Key: KEY`, parsed strictly so an ambiguous request is refused, never guessed.

use http::HeaderMap;

/// The header clients may put an API key in instead of `Authorization`.
pub(crate) const X_API_KEY: &str = "x-api-key";

/// The credential of a request, borrowed from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presented<'a> {
    /// No credential at all.
    None,
    /// Exactly one credential (the bytes after `Bearer `, or the `X-API-Key` value).
    One(&'a [u8]),
    /// Something that cannot be read as one credential: several `Authorization` or
    /// `X-API-Key` fields, both headers with different values, another scheme than
    /// `Bearer`, or an empty token. Always refused.
    Malformed,
}

/// Reads the request's credential from `Authorization: Bearer` (RFC 6750, scheme
/// case-insensitive) or `X-API-Key`. Both may be sent only if they carry the same value.
pub(crate) fn presented(headers: &HeaderMap) -> Presented<'_> {
    let bearer = match single(headers, http::header::AUTHORIZATION) {
        Single::Absent => None,
        Single::Many => return Presented::Malformed,
        Single::One(v) => match bearer_token(v) {
            Some(t) => Some(t),
            None => return Presented::Malformed,
        },
    };
    let key = match single(headers, X_API_KEY) {
        Single::Absent => None,
        Single::Many => return Presented::Malformed,
        Single::One(v) => match trim(v) {
            [] => return Presented::Malformed,
            v => Some(v),
        },
    };
    match (bearer, key) {
        (None, None) => Presented::None,
        (Some(c), None) | (None, Some(c)) => Presented::One(c),
        (Some(a), Some(b)) if a == b => Presented::One(a),
        _ => Presented::Malformed,
    }
}

enum Single<'a> {
    Absent,
    One(&'a [u8]),
    Many,
}

fn single<K: http::header::AsHeaderName>(headers: &HeaderMap, name: K) -> Single<'_> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Single::Absent,
        (Some(v), None) => Single::One(v.as_bytes()),
        (Some(_), Some(_)) => Single::Many,
    }
}

/// The token of an `Authorization: Bearer TOKEN` value: the scheme matched without
/// regard to case, one or more spaces, then a token with no space or control byte.
pub(crate) fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = trim(value);
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = trim(rest);
    let valid = !token.is_empty() && token.iter().all(|b| b.is_ascii_graphic());
    valid.then_some(token)
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn bearer_and_api_key() {
        let p = |pairs: &[(&str, &str)]| match presented(&headers(pairs)) {
            Presented::One(c) => Ok(c.to_vec()),
            other => Err(other == Presented::None),
        };
        assert_eq!(p(&[]), Err(true));
        assert_eq!(p(&[("authorization", "Bearer abc")]), Ok(b"abc".to_vec()));
        assert_eq!(
            p(&[("authorization", "bEaReR   abc ")]),
            Ok(b"abc".to_vec())
        );
        assert_eq!(p(&[("x-api-key", " k1 ")]), Ok(b"k1".to_vec()));
        assert_eq!(
            p(&[("authorization", "Bearer k1"), ("x-api-key", "k1")]),
            Ok(b"k1".to_vec())
        );
        for bad in [
            vec![("authorization", "Basic dXNlcjpwYXNz")],
            vec![("authorization", "Bearer")],
            vec![("authorization", "Bearer ")],
            vec![("authorization", "Bearerabc")],
            vec![("authorization", "Bearer a b")],
            vec![("authorization", "Bearer a"), ("authorization", "Bearer a")],
            vec![("x-api-key", "a"), ("x-api-key", "b")],
            vec![("x-api-key", "")],
            vec![("authorization", "Bearer a"), ("x-api-key", "b")],
        ] {
            assert_eq!(p(&bad), Err(false), "{bad:?}");
        }
    }
}
