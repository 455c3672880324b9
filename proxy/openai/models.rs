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

/// What a request to the models endpoint asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked<'a> {
    /// The list (`/v1/models`).
    List,
    /// One model (`/v1/models/{id}`; an id may hold `/`, as `org/model` does).
    One(&'a str),
}

/// What a request asks of the models endpoint, if it is one: `GET` (or `HEAD`) on a
/// path ending in `/v1/models` (so `/v1/models` and a prefixed `/openai/v1/models`
/// both are), or in `/v1/models/{id}`.
#[inline]
pub(crate) fn asked(req: &pingora::http::RequestHeader) -> Option<Asked<'_>> {
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        return None;
    }
    let path = req.uri.path();
    if path.ends_with(PATH) {
        return Some(Asked::List);
    }
    // `memmem` rather than `str::rfind`, whose two-way searcher costs about 500
    // instructions to set up on every request, most of which are for other paths.
    let at = memchr::memmem::rfind(path.as_bytes(), b"/v1/models/")?;
    match &path[at + PATH.len() + 1..] {
        "" => None,
        id => Some(Asked::One(id)),
    }
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
/// sorted by id with each id once (see [`cards`]).
pub(crate) fn list(
    group: &RouteGroup,
    reachable: impl Fn(&RouteEntry) -> bool,
    loaded_at: u64,
) -> Vec<u8> {
    let (lists, named) = sources(group, &reachable);
    let out = Out {
        object: "list",
        data: cards(group, &reachable, loaded_at, &lists, &named)
            .into_values()
            .collect(),
    };
    // Serialising plain strings and numbers cannot fail.
    serde_json::to_vec(&out).unwrap_or_default()
}

/// The body of modelgate's `/v1/models/{id}`: the model object of `id` in OpenAI's
/// shape (`{"id","object":"model","created","owned_by"}`), when the list has it.
pub(crate) fn one(
    group: &RouteGroup,
    reachable: impl Fn(&RouteEntry) -> bool,
    loaded_at: u64,
    id: &str,
) -> Option<Vec<u8>> {
    let (lists, named) = sources(group, &reachable);
    let cards = cards(group, &reachable, loaded_at, &lists, &named);
    cards
        .get(id)
        .map(|card| serde_json::to_vec(card).unwrap_or_default())
}

/// Where the cards come from: the model lists of the available replicas of
/// `reachable` routes' upstreams (`health.models`), and the group's named models.
#[allow(clippy::type_complexity)]
fn sources<'g>(
    group: &'g RouteGroup,
    reachable: &impl Fn(&RouteEntry) -> bool,
) -> (
    Vec<(Arc<ModelList>, &'g RouteEntry)>,
    Vec<(&'g Arc<str>, &'g RouteEntry)>,
) {
    let lists = group
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
    let named = group
        .named()
        .map(|(name, route)| (name, &**route))
        .collect();
    (lists, named)
}

/// The models of `group` by id. Listed: every `model` name of a `reachable` route
/// whose upstream has an available replica (`created` = `loaded_at`, Unix seconds;
/// `owned_by` = the upstream), and every model an available replica of such a
/// route's upstream listed itself (`health.models`) that this endpoint routes to
/// that upstream (the replica's card wins).
fn cards<'a>(
    group: &RouteGroup,
    reachable: &impl Fn(&RouteEntry) -> bool,
    loaded_at: u64,
    lists: &'a [(Arc<ModelList>, &'a RouteEntry)],
    named: &[(&'a Arc<str>, &'a RouteEntry)],
) -> BTreeMap<Arc<str>, OutCard<'a>> {
    let mut cards: BTreeMap<Arc<str>, OutCard<'a>> = BTreeMap::new();
    for (list, route) in lists {
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
    for &(name, route) in named {
        if reachable(route) && route.pool.backends().iter().any(|b| b.is_available()) {
            cards.entry(Arc::clone(name)).or_insert(OutCard {
                id: name,
                object: "model",
                created: loaded_at,
                owned_by: route.pool.name(),
            });
        }
    }
    cards
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
