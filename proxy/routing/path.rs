//! Request path normalisation: the one form of a path that routing and replicas see.
//!
//! Routes match and requests are forwarded on the normalised path, so a path can
//! never match one route and then, once a replica resolves it, name something the
//! route does not cover (`/v1/chat/../../admin`). The rules follow Envoy's
//! `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action =
//! REJECT_REQUEST`:
//! - dot-segments are removed as in RFC 3986 §5.2.4 (`remove_dot_segments`), a
//!   `..` at the root staying at the root;
//! - a dot-segment written with percent-encoded dots (`%2e`, `%2E`, `.%2e`, ...) is
//!   one, since `%2e` and `.` are equivalent (RFC 3986 §2.3, unreserved); other
//!   encodings are left as they are;
//! - runs of `/` are merged into one;
//! - `%2f`, `%5c` (encoded `/` and `\`) and a raw `\` are refused: replicas disagree
//!   on whether they separate segments, which is what path-confusion attacks use;
//! - a dot-segment carrying `;` parameters (`..;`, `.;x`, `%2e%2e;`) is refused: RFC
//!   3986 makes it an ordinary segment, but Java servlet containers (Tomcat, Jetty,
//!   Spring) drop the parameters and then climb, so it exists only to climb unseen.
//!
//! Other `;` parameters stay in the path ([`without_params`] gives the servlet view
//! that routing checks against).
//!
//! The `url` crate is not used: it implements WHATWG URL parsing, which differs from
//! RFC 3986 (a `\` is a `/` there) and needs a base URL built for every request.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2f` or `%5c` (any case), or a raw `\`.
    AmbiguousSeparator,
    /// A `.` or `..` segment with `;` parameters.
    DotSegmentParams,
}

/// The normalised form of `path` (the path component only, without the query).
/// Borrows when `path` is already normal, which is the common case and costs one
/// scan. Paths that do not start with `/` (`*` of `OPTIONS *`) are returned as is.
pub(crate) fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.contains(&b'\\') {
        return Err(PathError::AmbiguousSeparator);
    }
    if bytes.contains(&b'%') && has_encoded_separator(bytes) {
        return Err(PathError::AmbiguousSeparator);
    }
    if bytes.contains(&b';')
        && path
            .split('/')
            .any(|s| s.contains(';') && dots(s.split(';').next().unwrap_or(s)) != Dots::None)
    {
        return Err(PathError::DotSegmentParams);
    }
    if !path.starts_with('/') || is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match dots(segment) {
            Dots::One => {}
            Dots::Two => {
                // Drop the previous segment; at the root there is none to drop.
                let cut = out.rfind('/').unwrap_or(0);
                out.truncate(cut);
            }
            Dots::None if segment.is_empty() => {}
            Dots::None => {
                out.push('/');
                out.push_str(segment);
                continue;
            }
        }
        // A dot-segment or an empty segment at the end leaves a directory: `/a/.` is `/a/`.
        if last {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// The path as a Java servlet container resolves it: `;` parameters dropped from
/// every segment (`/a;x=1/b;y` → `/a/b`), then normalised. `None` when `path` has no
/// `;`, the common case, which costs one scan.
pub(crate) fn without_params(path: &str) -> Option<String> {
    if !path.contains(';') {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment.split(';').next().unwrap_or(""));
    }
    Some(match normalize_path(&out) {
        Ok(Cow::Owned(normal)) => normal,
        _ => out,
    })
}

/// No dot-segment and no empty segment (`//`) except a trailing slash.
fn is_normal(path: &str) -> bool {
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || dots(segment) != Dots::None {
            return false;
        }
    }
    true
}

#[derive(Debug, PartialEq, Eq)]
enum Dots {
    None,
    One,
    Two,
}

/// Whether `segment` is `.` or `..`, with each dot possibly written `%2e`.
fn dots(segment: &str) -> Dots {
    let b = segment.as_bytes();
    if b.is_empty() || b.len() > 6 || !(b[0] == b'.' || b[0] == b'%') {
        return Dots::None;
    }
    let mut count = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b[i..].len() >= 3 && b[i] == b'%' && b[i + 1] == b'2' && (b[i + 2] | 0x20) == b'e'
        {
            i += 3;
        } else {
            return Dots::None;
        }
        count += 1;
    }
    match count {
        1 => Dots::One,
        2 => Dots::Two,
        _ => Dots::None,
    }
}

/// `%2f` or `%5c` in any case.
fn has_encoded_separator(b: &[u8]) -> bool {
    b.windows(3).any(|w| {
        w[0] == b'%'
            && ((w[1] == b'2' && (w[2] | 0x20) == b'f') || (w[1] == b'5' && (w[2] | 0x20) == b'c'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        normalize_path(p)
            .unwrap_or_else(|e| panic!("{p}: {e:?}"))
            .into_owned()
    }

    #[test]
    fn rfc3986_remove_dot_segments_examples() {
        // RFC 3986 §5.2.4 and §5.4 (the reference-resolution examples, as paths).
        assert_eq!(norm("/a/b/c/./../../g"), "/a/g");
        assert_eq!(norm("/mid/content=5/../6"), "/mid/6");
        assert_eq!(norm("/a/b/c/."), "/a/b/c/");
        assert_eq!(norm("/a/b/c/./"), "/a/b/c/");
        assert_eq!(norm("/a/b/c/.."), "/a/b/");
        assert_eq!(norm("/a/b/c/../"), "/a/b/");
        assert_eq!(norm("/a/b/c/../g"), "/a/b/g");
        assert_eq!(norm("/a/b/c/../../../g"), "/g");
        assert_eq!(norm("/a/b/c/../../../../g"), "/g");
        assert_eq!(norm("/a/b/c/g."), "/a/b/c/g.");
        assert_eq!(norm("/a/b/c/.g"), "/a/b/c/.g");
        assert_eq!(norm("/a/b/c/g.."), "/a/b/c/g..");
        assert_eq!(norm("/a/b/c/..g"), "/a/b/c/..g");
        assert_eq!(norm("/a/b/c/./../g"), "/a/b/g");
        assert_eq!(norm("/a/b/c/./g/."), "/a/b/c/g/");
        assert_eq!(norm("/a/b/c/g/./h"), "/a/b/c/g/h");
        assert_eq!(norm("/a/b/c/g/../h"), "/a/b/c/h");
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm("/."), "/");
        assert_eq!(norm("/../a"), "/a");
    }

    #[test]
    fn encoded_dots_are_dots_only_as_whole_segments() {
        assert_eq!(norm("/v1/chat/%2e%2e/%2E%2E/admin"), "/admin");
        assert_eq!(norm("/v1/chat/.%2e/x"), "/v1/x");
        assert_eq!(norm("/v1/chat/%2e./x"), "/v1/x");
        assert_eq!(norm("/v1/%2e/x"), "/v1/x");
        assert_eq!(norm("/v1/file%2etxt"), "/v1/file%2etxt");
        assert_eq!(norm("/v1/%2e%2e%2e"), "/v1/%2e%2e%2e");
        assert_eq!(norm("/v1/%41"), "/v1/%41");
    }

    #[test]
    fn slashes_merge() {
        assert_eq!(norm("//"), "/");
        assert_eq!(norm("/v1//chat///b"), "/v1/chat/b");
        assert_eq!(norm("/v1/chat//"), "/v1/chat/");
        assert_eq!(norm("//../x"), "/x");
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/v1/chat/completions",
            "/a/b/",
            "/a.b/c..d/.e",
            "*",
            "",
        ] {
            assert!(matches!(normalize_path(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn encoded_separators_and_backslashes_are_refused() {
        for p in [
            "/a%2fb",
            "/a%2Fb",
            "/..%2f..%2fadmin",
            "/a%5cb",
            "/a%5C..",
            "/a\\b",
        ] {
            assert_eq!(normalize_path(p), Err(PathError::AmbiguousSeparator), "{p}");
        }
        assert_eq!(norm("/a%25b"), "/a%25b");
        assert_eq!(norm("/a%2"), "/a%2");
    }

    #[test]
    fn dot_segments_with_params_are_refused() {
        for p in [
            "/v1/chat/..;/..;/admin",
            "/v1/chat/..;x=1/admin",
            "/a/.;/b",
            "/a/%2e%2e;/b",
            "/a/.%2E;jsessionid=1",
            "/..;",
        ] {
            assert_eq!(normalize_path(p), Err(PathError::DotSegmentParams), "{p}");
        }
        assert_eq!(norm("/a;v=1/b;c"), "/a;v=1/b;c");
        assert_eq!(norm("/a/...;/b"), "/a/...;/b");
        assert_eq!(norm("/a/;/b"), "/a/;/b");
    }

    #[test]
    fn servlet_view_drops_params_from_every_segment() {
        assert_eq!(without_params("/v1/chat"), None);
        assert_eq!(
            without_params("/v1/chat;x=1/y;jsessionid=2").as_deref(),
            Some("/v1/chat/y")
        );
        assert_eq!(without_params("/v1;x/chat").as_deref(), Some("/v1/chat"));
        assert_eq!(without_params("/a/;/b").as_deref(), Some("/a/b"));
        assert_eq!(without_params("/a/b;x/../c").as_deref(), Some("/a/c"));
    }

    #[test]
    fn the_result_is_a_fixed_point() {
        let mut rng = fastrand::Rng::with_seed(7);
        let parts = ["a", ".", "..", "", "%2e", "%2E%2e", "b.", "..c"];
        for _ in 0..5000 {
            let n = rng.usize(0..8);
            let mut p = String::new();
            for _ in 0..n {
                p.push('/');
                p.push_str(parts[rng.usize(..parts.len())]);
            }
            if p.is_empty() {
                p.push('/');
            }
            let once = norm(&p);
            assert!(once.starts_with('/'), "{p} -> {once}");
            assert!(!once.contains("//"), "{p} -> {once}");
            assert_eq!(norm(&once), once, "{p}");
            assert!(
                matches!(normalize_path(&once), Ok(Cow::Borrowed(_))),
                "{p} -> {once}"
            );
        }
    }
}
