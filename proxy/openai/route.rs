//! The routes that share one host and path prefix, told apart by the request body's
//! `model`: exact names first, then the longest `model_prefix`, then the route that
//! names no model.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::AffinityKey;
use crate::edge::gate::GroupGate;
use crate::snapshot::RouteEntry;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Bodies read to find the model when no route of the group sets `max_body`.
pub(crate) const DEFAULT_READ_LIMIT: u64 = 32 * 1024 * 1024;

/// The routes of one host and path prefix.
#[derive(Debug, Default)]
pub struct RouteGroup {
    /// The route that names no model: it takes every request no model route takes.
    plain: Option<Arc<RouteEntry>>,
    by_name: FastMap<Arc<str>, Arc<RouteEntry>>,
    /// Longest prefix first.
    by_prefix: Vec<(Box<str>, Arc<RouteEntry>)>,
    /// Some route of the group has `api = "openai"`.
    openai: bool,
    /// Some route needs to know whether the request streams (`stream_usage`,
    /// `sse_keepalive`).
    wants_stream: bool,
    /// Some route's upstream balances by the prompt (`affinity_key = "prompt"`): the
    /// whole body is read.
    wants_prompt: bool,
    read_limit: u64,
    /// The auth and rate limit every request passes before its body is read.
    gate: GroupGate,
}

/// How a group answers a request.
pub enum Pick<'a> {
    /// One route, whatever the body says.
    Route(&'a Arc<RouteEntry>),
    /// The body's `model` decides: read it first.
    ByModel,
    /// No route takes this request.
    None,
}

impl RouteGroup {
    /// Adds a route with its `model` names and `model_prefix`es (both empty for the
    /// plain route). Config validation guarantees names and the plain route are unique.
    pub fn add(&mut self, entry: Arc<RouteEntry>, names: &[String], prefixes: &[String]) {
        self.openai |= entry.api.openai;
        self.wants_stream |= entry.api.stream_usage || entry.api.sse_keepalive.is_some();
        self.wants_prompt |= entry
            .pool
            .settings()
            .affinity
            .as_ref()
            .is_some_and(|a| a.key == AffinityKey::Prompt);
        let limit = entry.max_body.unwrap_or(DEFAULT_READ_LIMIT);
        self.read_limit = self.read_limit.max(limit);
        self.gate.add(&entry.edge);
        if names.is_empty() && prefixes.is_empty() {
            self.plain = Some(entry);
            return;
        }
        for n in names {
            self.by_name.insert(n.as_str().into(), Arc::clone(&entry));
        }
        for p in prefixes {
            self.by_prefix.push((p.as_str().into(), Arc::clone(&entry)));
        }
        self.by_prefix
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    }

    /// The route for a request with this method and content type, before its body is read.
    /// Only POSTs that may carry JSON are read (for a model, or for `stream` where a route
    /// needs it); anything else goes to the plain route.
    pub fn pick(&self, method: &http::Method, content_type: Option<&[u8]>) -> Pick<'_> {
        // Media types compare case-insensitively (RFC 9110 §8.3.1).
        let json = content_type.is_none_or(|ct| {
            ![&b"multipart/"[..], b"text/", b"image/"]
                .iter()
                .any(|kind| {
                    ct.get(..kind.len())
                        .is_some_and(|t| t.eq_ignore_ascii_case(kind))
                })
        });
        if (self.routes_by_model() || self.wants_stream || self.wants_prompt)
            && method == http::Method::POST
            && json
        {
            return Pick::ByModel;
        }
        match &self.plain {
            Some(r) => Pick::Route(r),
            None => Pick::None,
        }
    }

    /// The route serving `model` (the plain route when no model route takes it), and
    /// the model's name to log (shared with the table for exact names).
    pub fn by_model(&self, model: Option<&str>) -> Option<(Arc<RouteEntry>, Option<Arc<str>>)> {
        let Some(m) = model else {
            return self.plain.as_ref().map(|r| (Arc::clone(r), None));
        };
        if let Some((name, r)) = self.by_name.get_key_value(m) {
            return Some((Arc::clone(r), Some(Arc::clone(name))));
        }
        let r = self
            .by_prefix
            .iter()
            .find(|(p, _)| m.starts_with(&**p))
            .map(|(_, r)| r)
            .or(self.plain.as_ref())?;
        Some((Arc::clone(r), Some(Arc::from(m))))
    }

    /// Each route of the group once.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<RouteEntry>> {
        let mut seen: Vec<&Arc<RouteEntry>> = Vec::new();
        self.plain
            .iter()
            .chain(self.by_name.values())
            .chain(self.by_prefix.iter().map(|(_, r)| r))
            .filter(move |r| {
                let new = !seen.iter().any(|s| Arc::ptr_eq(s, r));
                if new {
                    seen.push(r);
                }
                new
            })
    }

    /// The exact `model` names of the group's routes, with the route of each.
    pub fn named(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<RouteEntry>)> {
        self.by_name.iter()
    }

    pub fn routes_by_model(&self) -> bool {
        !self.by_name.is_empty() || !self.by_prefix.is_empty()
    }

    /// Answers of the proxy itself take OpenAI's error shape.
    pub fn openai(&self) -> bool {
        self.openai
    }

    /// Whether `stream` and `stream_options` must be found too (the whole body read).
    pub fn wants_stream(&self) -> bool {
        self.wants_stream
    }

    /// Whether the whole body is read for its prompt (cache affinity).
    pub fn wants_prompt(&self) -> bool {
        self.wants_prompt
    }

    /// The checks a request must pass before its body is read to find the model.
    pub fn gate(&self) -> &GroupGate {
        &self.gate
    }

    /// The most body bytes read to find the model.
    pub fn read_limit(&self) -> u64 {
        self.read_limit
    }
}
