//! The edge checks of a model-routed endpoint that run before its request body is
//! read, so a client that may not send requests cannot make the proxy buffer bodies.
//!
//! Routes sharing a host and path are told apart by the body's `model`, and each may
//! have its own `auth` and `rate_limit`. Before the body is read the route is not
//! known, so the endpoint's [`GroupGate`] refuses what every one of its routes would
//! refuse: a credential that none of the routes' authenticators accepts (when every
//! route has `auth`), and a client over the endpoint's combined limit (when every
//! route has a `rate_limit` by the same key: one bucket whose rate and burst are the
//! sums of the routes', so traffic within each route's own limit always fits it).
//! The chosen route's own checks still run once the model is known.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;

use super::{Consumer, Denied, RateLimit, RouteAuth, RouteEdge, RouteLimit};
use crate::config::{self, RateKey};

/// Why the edge refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Missing or refused credentials (401).
    Unauthorized,
    /// Over a rate limit; whole seconds until a request would pass (429).
    RateLimited(u64),
}

/// Runs a rate limit and an authentication in their order: a limit by IP or header
/// first (so guessing credentials is rate limited too), then `authenticate` (skipped
/// when `None`), then a limit by consumer. Returns the consumer authenticated.
pub(crate) fn admit(
    limit: Option<&RouteLimit>,
    authenticate: Option<&dyn Fn() -> Result<Option<Consumer>, Denied>>,
    client: Option<IpAddr>,
    headers: &HeaderMap,
    known: Option<Consumer>,
) -> Result<Option<Consumer>, Refusal> {
    let by_consumer = limit.is_some_and(|l| l.key == RateKey::Consumer);
    if let Some(l) = limit.filter(|_| !by_consumer) {
        l.check(client, headers, None)
            .map_err(Refusal::RateLimited)?;
    }
    let consumer = match authenticate {
        Some(auth) => auth().map_err(|Denied| Refusal::Unauthorized)?,
        None => known,
    };
    if let Some(l) = limit.filter(|_| by_consumer) {
        l.check(client, headers, consumer.as_ref())
            .map_err(Refusal::RateLimited)?;
    }
    Ok(consumer)
}

/// What passed an endpoint's gate: the consumer, and the authenticator that
/// accepted the credential (a route with the same `auth` need not check it again).
#[derive(Debug, Default)]
pub struct Passed {
    pub consumer: Option<Consumer>,
    pub auth: Option<Arc<RouteAuth>>,
}

impl Passed {
    /// Whether `auth` is the check this request already passed at the gate.
    pub fn covers(&self, auth: &RouteAuth) -> bool {
        self.auth
            .as_ref()
            .is_some_and(|a| std::ptr::eq(&**a, auth) || a.config == auth.config)
    }
}

/// The pre-read checks of one model-routed endpoint (see the module docs).
#[derive(Debug, Default)]
pub struct GroupGate {
    /// Some route has no `auth`: no credential can be refused before the model is known.
    open: bool,
    /// The distinct authenticators of the routes (one per distinct setting).
    auths: Vec<Arc<RouteAuth>>,
    /// The endpoint's combined rate limit (shared by its routes' edges).
    limit: Option<Arc<RouteLimit>>,
}

impl GroupGate {
    /// Takes in one more route of the endpoint.
    pub fn add(&mut self, edge: &RouteEdge) {
        match &edge.auth {
            None => self.open = true,
            Some(a) => {
                if !self.auths.iter().any(|b| b.config == a.config) {
                    self.auths.push(Arc::clone(a));
                }
            }
        }
        if self.limit.is_none() {
            self.limit = edge.gate.clone();
        }
    }

    /// Checks a request before its body is read. `Ok` means some route of the
    /// endpoint may still take it.
    pub fn check(&self, client: Option<IpAddr>, headers: &HeaderMap) -> Result<Passed, Refusal> {
        let accepted = std::cell::Cell::new(None);
        let authenticate = || {
            for a in &self.auths {
                if let Ok(consumer) = a.check.check(headers) {
                    accepted.set(Some(Arc::clone(a)));
                    return Ok(consumer);
                }
            }
            Err(Denied)
        };
        let checks_auth = !self.open && !self.auths.is_empty();
        let consumer = admit(
            self.limit.as_deref(),
            checks_auth.then_some(&authenticate as &dyn Fn() -> _),
            client,
            headers,
            None,
        )?;
        Ok(Passed {
            consumer,
            auth: accepted.into_inner(),
        })
    }
}

/// Gives every route of each model-routed endpoint whose routes all have a
/// `rate_limit` by the same key the endpoint's combined limit ([`RouteEdge::gate`]),
/// keeping `prev`'s buckets (the first route's previous gate) when it is unchanged.
/// `edges` holds each of `routes`' edges, in the same order.
pub(crate) fn attach<'p>(
    routes: &[config::Route],
    edges: &mut [(Arc<str>, RouteEdge)],
    prev: impl Fn(&str) -> Option<&'p RouteEdge>,
) {
    if edges.len() != routes.len() {
        return; // a route failed to build: there is no generation to serve
    }
    let mut groups: HashMap<(Option<&config::HostMatch>, &str), Vec<usize>> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        groups
            .entry((r.host.as_ref(), r.path.as_str()))
            .or_default()
            .push(i);
    }
    for members in groups.values() {
        let by_model = members.iter().any(|&i| {
            !routes[i].openai.models.is_empty() || !routes[i].openai.model_prefixes.is_empty()
        });
        if !by_model {
            continue;
        }
        let Some(combined) = combined(members.iter().map(|&i| routes[i].rate_limit.as_ref()))
        else {
            continue;
        };
        let first = &routes[members[0]].name;
        let gate = match prev(first).and_then(|e| e.gate.as_ref()) {
            Some(g) if *g.limit.config() == combined => Arc::clone(g),
            _ => Arc::new(RouteLimit {
                limit: RateLimit::new(&combined),
                key: combined.key.clone(),
            }),
        };
        for &i in members {
            edges[i].1.gate = Some(Arc::clone(&gate));
        }
    }
}

/// One limit for routes that each have a limit by the same key: the sums of their
/// rates and bursts, the most keys of any. `None` when a route has none, or the keys differ.
fn combined<'a>(
    limits: impl Iterator<Item = Option<&'a config::RateLimit>>,
) -> Option<config::RateLimit> {
    let mut out: Option<config::RateLimit> = None;
    for l in limits {
        let l = l?;
        match &mut out {
            None => out = Some(l.clone()),
            Some(c) if c.key == l.key => {
                c.requests_per_second += l.requests_per_second;
                c.burst = c.burst.saturating_add(l.burst);
                c.max_keys = c.max_keys.max(l.max_keys);
            }
            Some(_) => return None,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimit as Cfg;

    fn cfg(rps: f64, burst: u32, key: RateKey, max_keys: usize) -> Cfg {
        Cfg {
            requests_per_second: rps,
            burst,
            key,
            max_keys,
        }
    }

    #[test]
    fn combined_limit_sums_rates_and_bursts_of_one_key() {
        let a = cfg(1.0, 2, RateKey::ClientAddr, 10);
        let b = cfg(0.5, 3, RateKey::ClientAddr, 20);
        assert_eq!(
            combined([Some(&a), Some(&b)].into_iter()),
            Some(cfg(1.5, 5, RateKey::ClientAddr, 20))
        );
        assert_eq!(combined([Some(&a), None].into_iter()), None);
        let c = cfg(1.0, 2, RateKey::Consumer, 10);
        assert_eq!(combined([Some(&a), Some(&c)].into_iter()), None);
    }

    #[test]
    fn admit_limits_by_ip_before_auth_and_by_consumer_after() {
        let headers = HeaderMap::new();
        let by_ip = RouteLimit {
            limit: RateLimit::new(&cfg(0.001, 1, RateKey::ClientAddr, 10)),
            key: RateKey::ClientAddr,
        };
        let calls = std::cell::Cell::new(0);
        let deny = || {
            calls.set(calls.get() + 1);
            Err(Denied)
        };
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        assert_eq!(
            admit(Some(&by_ip), Some(&deny), ip, &headers, None),
            Err(Refusal::Unauthorized)
        );
        // The bucket is empty now: the limit answers before credentials are looked at.
        assert!(matches!(
            admit(Some(&by_ip), Some(&deny), ip, &headers, None),
            Err(Refusal::RateLimited(_))
        ));
        assert_eq!(calls.get(), 1);

        let by_consumer = RouteLimit {
            limit: RateLimit::new(&cfg(0.001, 1, RateKey::Consumer, 10)),
            key: RateKey::Consumer,
        };
        let bob = || Ok(Some(Consumer::new("bob")));
        assert_eq!(
            admit(Some(&by_consumer), Some(&deny), ip, &headers, None),
            Err(Refusal::Unauthorized),
            "no token taken for a refused credential"
        );
        assert_eq!(
            admit(Some(&by_consumer), Some(&bob), ip, &headers, None),
            Ok(Some(Consumer::new("bob")))
        );
        assert!(matches!(
            admit(Some(&by_consumer), Some(&bob), ip, &headers, None),
            Err(Refusal::RateLimited(_))
        ));
        // A consumer known already (passed at the gate) is limited without a new check.
        let alice = Some(Consumer::new("alice"));
        assert_eq!(
            admit(Some(&by_consumer), None, ip, &headers, alice.clone()),
            Ok(alice)
        );
    }
}
