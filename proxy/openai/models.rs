//! `GET /v1/models` answered by modelgate: the models a client can reach through
//! one endpoint, from the config and from the replicas' own lists.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::RouteGroup;
use crate::snapshot::RouteEntry;

/// The OpenAI path listing models.
pub(crate) const PATH: &str = "/v1/models";

/// One model as a replica's `/v1/models` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Card {
    pub id: Box<str>,
    /// Unix seconds (0 when the replica gave none).
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub owned_by: Option<Box<str>>,
}

/// A replica's model list, as last fetched.
pub(crate) type ModelList = Vec<Card>;

/// Whether a request asks for the model list: `GET` on a path ending in
/// `/v1/models` (so `/v1/models` and a prefixed `/openai/v1/models` both are).
#[inline]
pub(crate) fn is_list_request(req: &pingora::http::RequestHeader) -> bool {
    req.method == http::Method::GET && req.uri.path().ends_with(PATH)
}

/// Reads a `/v1/models` answer: `{"object":"list","data":[{"id":...},...]}`.
/// Fields other than `id`, `created` and `owned_by` are ignored.
pub(crate) fn parse_list(body: &[u8]) -> Result<ModelList, String> {
    #[derive(Deserialize)]
    struct List {
        data: Vec<Card>,
    }
    serde_json::from_slice::<List>(body)
        .map(|l| l.data)
        .map_err(|e| format!("not an OpenAI model list: {e}"))
}

#[derive(Serialize)]
struct Out<'a> {
    object: &'static str,
    data: Vec<OutCard<'a>>,
}

#[derive(Serialize)]
struct OutCard<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'a str,
}

/// The body of modelgate's `/v1/models` for `group`, in OpenAI's list shape,
/// sorted by id with each id once. Listed: every `model` name of a `reachable`
/// route whose upstream has an available replica (`created` = `loaded_at`, Unix
/// seconds; `owned_by` = the upstream), and every model an available replica of
/// such a route's upstream listed itself (`health.models`) that this endpoint routes
/// to that upstream (the replica's card wins).
pub(crate) fn list(
    group: &RouteGroup,
    reachable: impl Fn(&RouteEntry) -> bool,
    loaded_at: u64,
) -> Vec<u8> {
    let mut cards: BTreeMap<Arc<str>, OutCard<'_>> = BTreeMap::new();
    let lists: Vec<(Arc<ModelList>, &RouteEntry)> = group
        .routes()
        .filter(|r| reachable(r))
        .filter(|r| r.pool.settings().health.as_ref().is_some_and(|h| h.models))
        .flat_map(|r| {
            r.pool
                .backends()
                .iter()
                .filter(|b| b.is_available())
                .filter_map(move |b| b.models().map(|m| (m, &**r)))
        })
        .collect();
    for (list, route) in &lists {
        for card in list.iter() {
            // Listed only when a request for it here would reach this upstream.
            let routed = group
                .by_model(Some(&card.id))
                .is_some_and(|(r, _)| Arc::ptr_eq(&r.pool, &route.pool) && reachable(&r));
            if routed && !cards.contains_key(&*card.id) {
                cards.insert(
                    Arc::from(&*card.id),
                    OutCard {
                        id: &card.id,
                        object: "model",
                        created: card.created,
                        owned_by: card.owned_by.as_deref().unwrap_or(route.pool.name()),
                    },
                );
            }
        }
    }
    for (name, route) in group.named() {
        if reachable(route) && route.pool.backends().iter().any(|b| b.is_available()) {
            cards.entry(Arc::clone(name)).or_insert(OutCard {
                id: name,
                object: "model",
                created: loaded_at,
                owned_by: route.pool.name(),
            });
        }
    }
    let out = Out {
        object: "list",
        data: cards.into_values().collect(),
    };
    // Serialising plain strings and numbers cannot fail.
    serde_json::to_vec(&out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_refuses_garbage() {
        let l = parse_list(
            br#"{"object":"list","data":[{"id":"a","object":"model","created":5,"owned_by":"vllm","root":"x"},{"id":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            (&*l[0].id, l[0].created, l[0].owned_by.as_deref()),
            ("a", 5, Some("vllm"))
        );
        assert_eq!(
            (&*l[1].id, l[1].created, l[1].owned_by.as_deref()),
            ("b", 0, None)
        );
        for bad in [&b"<html>"[..], b"{}", b"{\"data\":[{\"name\":\"a\"}]}", b""] {
            assert!(parse_list(bad).is_err());
        }
    }
}
