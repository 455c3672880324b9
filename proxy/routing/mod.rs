//! Route resolution: request host and path to the route that serves it.
//!
//! The table is built once per config generation and never mutated, so it needs no
//! locks. A lookup costs a few hash probes per path segment and host label, whatever
//! the number of routes: exact host first, then `*.` wildcards from the most specific
//! suffix, then routes without a host; within a host, the longest matching prefix.
//!
//! Prefixes match whole path segments: `/v1/chat` matches `/v1/chat` and `/v1/chat/x`
//! but not `/v1/chatter`; a prefix ending in `/` (such as `/`) matches everything below it.

mod host;
mod path;

use std::collections::HashMap;

pub use host::request_host;
pub(crate) use path::{normalize_path, without_params, PathError};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Routes of one host, by path prefix.
#[derive(Debug)]
struct PathTable<T> {
    by_prefix: FastMap<Box<str>, T>,
    /// Bit `n` is set when some prefix has length `n`; skips hash probes that cannot hit.
    lengths: Vec<u64>,
}

impl<T> Default for PathTable<T> {
    fn default() -> Self {
        PathTable {
            by_prefix: FastMap::default(),
            lengths: Vec::new(),
        }
    }
}

impl<T> PathTable<T> {
    fn insert(&mut self, prefix: &str, value: T) -> bool {
        let len = prefix.len();
        let word = len / 64;
        if self.lengths.len() <= word {
            self.lengths.resize(word + 1, 0);
        }
        self.lengths[word] |= 1 << (len % 64);
        self.by_prefix.insert(prefix.into(), value).is_none()
    }

    #[inline]
    fn has_len(&self, len: usize) -> bool {
        self.lengths
            .get(len / 64)
            .is_some_and(|w| w & (1 << (len % 64)) != 0)
    }

    #[inline]
    fn probe(&self, candidate: &str) -> Option<&T> {
        if self.has_len(candidate.len()) {
            self.by_prefix.get(candidate)
        } else {
            None
        }
    }

    /// The value of the longest prefix matching `path` on a segment boundary.
    fn longest(&self, path: &str) -> Option<&T> {
        if self.by_prefix.is_empty() {
            return None;
        }
        if let Some(v) = self.probe(path) {
            return Some(v);
        }
        // Walk back over the '/' separators: "/a/b/c" tries "/a/b/", "/a/b", "/a/", "/a", "/".
        let bytes = path.as_bytes();
        let mut end = bytes.len();
        while let Some(slash) = bytes[..end].iter().rposition(|&b| b == b'/') {
            if slash + 1 < bytes.len() {
                if let Some(v) = self.probe(&path[..slash + 1]) {
                    return Some(v);
                }
            }
            if slash > 0 {
                if let Some(v) = self.probe(&path[..slash]) {
                    return Some(v);
                }
            }
            end = slash;
        }
        None
    }
}

/// An immutable host + path-prefix table mapping requests to values of type `T`.
#[derive(Debug)]
pub struct RouteTable<T> {
    exact: FastMap<Box<str>, PathTable<T>>,
    /// Keyed by the suffix including its leading dot: `.example.com`.
    wildcard: FastMap<Box<str>, PathTable<T>>,
    any_host: PathTable<T>,
    len: usize,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            exact: FastMap::default(),
            wildcard: FastMap::default(),
            any_host: PathTable::default(),
            len: 0,
        }
    }
}

impl<T> RouteTable<T> {
    /// Adds a route. `host` is lower-case without a port: `api.example.com`, or a
    /// wildcard given as its suffix `.example.com`. Returns false if the same host and
    /// prefix was already present (config validation rejects that earlier).
    pub fn insert(
        &mut self,
        host: Option<&crate::config::HostMatch>,
        path: &str,
        value: T,
    ) -> bool {
        use crate::config::HostMatch;
        let table = match host {
            None => &mut self.any_host,
            Some(HostMatch::Exact(h)) => self.exact.entry(h.as_str().into()).or_default(),
            Some(HostMatch::Wildcard(s)) => self.wildcard.entry(s.as_str().into()).or_default(),
        };
        let added = table.insert(path, value);
        self.len += usize::from(added);
        added
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The route for `host` (lower-case, no port; empty when the request had none) and
    /// `path` (no query string). A route naming the host beats one without a host even
    /// when the host-less route has a longer prefix.
    pub fn resolve(&self, host: &str, path: &str) -> Option<&T> {
        if !host.is_empty() {
            if let Some(v) = self.exact.get(host).and_then(|t| t.longest(path)) {
                return Some(v);
            }
            if !self.wildcard.is_empty() {
                // "a.b.example.com" tries ".b.example.com", ".example.com", ".com".
                let mut rest = host;
                while let Some(dot) = rest.find('.') {
                    let suffix = &host[host.len() - rest.len() + dot..];
                    if let Some(v) = self.wildcard.get(suffix).and_then(|t| t.longest(path)) {
                        return Some(v);
                    }
                    rest = &rest[dot + 1..];
                }
            }
        }
        self.any_host.longest(path)
    }

    /// Whether `path` (normalised) resolves to another route, or to none, once `;`
    /// parameters are dropped from its segments as Java servlet containers do
    /// ([`without_params`]). Such a path is refused: `/v1/chat;x/y` matches no
    /// `/v1/chat` route, yet a servlet replica reached through another route would
    /// serve it as `/v1/chat/y`. False at the cost of one scan when `path` has no `;`.
    pub fn params_change_route(&self, host: &str, path: &str) -> bool {
        let Some(view) = without_params(path) else {
            return false;
        };
        match (self.resolve(host, path), self.resolve(host, &view)) {
            (Some(a), Some(b)) => !std::ptr::eq(a, b),
            (None, None) => false,
            _ => true,
        }
    }
}

/// The path to send upstream when a route strips its prefix: `/v1/vision/predict`
/// under prefix `/v1/vision` becomes `/predict`; the prefix itself becomes `/`.
pub(crate) fn strip_prefix<'a>(path: &'a str, prefix: &str) -> &'a str {
    let keep = prefix.trim_end_matches('/').len();
    match path.get(keep..) {
        Some("") | None => "/",
        Some(rest) => rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostMatch;

    fn table(routes: &[(Option<HostMatch>, &str, &'static str)]) -> RouteTable<&'static str> {
        let mut t = RouteTable::default();
        for (h, p, v) in routes {
            assert!(t.insert(h.as_ref(), p, *v));
        }
        t
    }

    fn exact(h: &str) -> Option<HostMatch> {
        Some(HostMatch::Exact(h.into()))
    }

    fn wild(s: &str) -> Option<HostMatch> {
        Some(HostMatch::Wildcard(s.into()))
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let t = table(&[
            (None, "/", "root"),
            (None, "/v1", "v1"),
            (None, "/v1/chat", "chat"),
            (None, "/v1/chat/", "chat-dir"),
        ]);
        assert_eq!(t.resolve("", "/"), Some(&"root"));
        assert_eq!(t.resolve("", "/other"), Some(&"root"));
        assert_eq!(t.resolve("", "/v1"), Some(&"v1"));
        assert_eq!(t.resolve("", "/v1/"), Some(&"v1"));
        assert_eq!(t.resolve("", "/v1x"), Some(&"root"));
        assert_eq!(t.resolve("", "/v1/chat"), Some(&"chat"));
        assert_eq!(t.resolve("", "/v1/chatter"), Some(&"v1"));
        assert_eq!(t.resolve("", "/v1/chat/x/y"), Some(&"chat-dir"));
    }

    #[test]
    fn no_match_without_root() {
        let t = table(&[(None, "/v1/chat", "chat")]);
        assert_eq!(t.resolve("", "/v2"), None);
        assert_eq!(t.resolve("", "/"), None);
        assert_eq!(t.resolve("", ""), None);
    }

    #[test]
    fn host_beats_hostless_and_wildcards_nest() {
        let t = table(&[
            (None, "/v1/a/b", "any-long"),
            (exact("api.example.com"), "/v1", "exact"),
            (wild(".example.com"), "/", "wild"),
            (wild(".eu.example.com"), "/", "wild-eu"),
        ]);
        assert_eq!(t.resolve("api.example.com", "/v1/a/b"), Some(&"exact"));
        assert_eq!(t.resolve("api.example.com", "/v2"), Some(&"wild"));
        assert_eq!(t.resolve("x.example.com", "/v1/a/b"), Some(&"wild"));
        assert_eq!(t.resolve("x.eu.example.com", "/"), Some(&"wild-eu"));
        assert_eq!(t.resolve("example.com", "/v1/a/b"), Some(&"any-long"));
        assert_eq!(t.resolve("other.org", "/v1/a/b/c"), Some(&"any-long"));
        assert_eq!(t.resolve("other.org", "/v1"), None);
    }

    #[test]
    fn long_prefixes_use_the_length_filter() {
        let long = format!("/{}", "x".repeat(300));
        let mut t = RouteTable::default();
        t.insert(None, &long, 1);
        assert_eq!(t.resolve("", &format!("{long}/more")), Some(&1));
        assert_eq!(t.resolve("", "/x"), None);
    }

    #[test]
    fn strips_prefixes() {
        assert_eq!(
            strip_prefix("/v1/vision/predict?x", "/v1/vision"),
            "/predict?x"
        );
        assert_eq!(strip_prefix("/v1/vision", "/v1/vision"), "/");
        assert_eq!(strip_prefix("/v1/vision/", "/v1/vision/"), "/");
        assert_eq!(strip_prefix("/v1/vision/p", "/v1/vision/"), "/p");
        assert_eq!(strip_prefix("/anything", "/"), "/anything");
    }
}
