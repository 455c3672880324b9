//! Edge protection: who the client is (API keys, JWT), how fast it may go (rate
//! limits per route), and how many connections it may hold (connection limits).
//!
//! Routes get their [`RouteEdge`] when a config generation is built; state that
//! should outlive a reload (a JWKS already fetched, a keys file being watched, the
//! buckets of a rate limit) is carried over when the route's settings did not change.
//! [`EdgeService`] does the background work: re-reading keys files, refreshing JWKS
//! and evicting idle rate-limit keys.

pub(crate) mod conn;
pub(crate) mod credentials;
pub(crate) mod fetch;
pub(crate) mod gate;
pub(crate) mod jwt;
pub(crate) mod keys;
pub(crate) mod limit;
pub(crate) mod metrics;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderMap;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{self, AuthMethod, RateKey};
use crate::snapshot::SharedSnapshot;
use credentials::Presented;
pub(crate) use jwt::JwtAuth;
pub(crate) use keys::ApiKeys;
pub(crate) use limit::RateLimit;

/// The authenticated client: an API key's name, or a JWT's `sub`. Cheap to clone;
/// safe to log (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Consumer(Arc<str>);

impl Consumer {
    pub fn new(name: &str) -> Consumer {
        Consumer(name.into())
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// The name as a shared string (for the access log).
    pub fn shared(&self) -> &Arc<str> {
        &self.0
    }
}

/// How a route checks credentials.
#[derive(Debug)]
pub enum Authenticator {
    Keys(ApiKeys),
    Jwt(Box<JwtAuth>),
}

/// The credentials were missing or not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied;

impl Authenticator {
    fn build(auth: &config::Auth) -> Result<Authenticator, String> {
        match &auth.method {
            AuthMethod::ApiKeysFile(path) => ApiKeys::load(path)
                .map(Authenticator::Keys)
                .map_err(|e| e.join("; ")),
            AuthMethod::Jwt(jwt) => JwtAuth::new(jwt).map(|j| Authenticator::Jwt(Box::new(j))),
        }
    }

    /// Checks the request's credential; the consumer is `None` only for a JWT
    /// without `sub`.
    pub fn check(&self, headers: &HeaderMap) -> Result<Option<Consumer>, Denied> {
        let Presented::One(credential) = credentials::presented(headers) else {
            return Err(Denied);
        };
        match self {
            Authenticator::Keys(keys) => keys.lookup(credential).map(Some).ok_or(Denied),
            Authenticator::Jwt(jwt) => jwt.verify(credential).map_err(|why| {
                log::debug!("JWT refused: {why:?}");
                Denied
            }),
        }
    }
}

/// What a route needs at its edge, shared by every generation that keeps its settings.
#[derive(Debug, Clone, Default)]
pub struct RouteEdge {
    pub auth: Option<Arc<RouteAuth>>,
    pub rate_limit: Option<Arc<RouteLimit>>,
    /// The combined limit of the model-routed endpoint the route belongs to, checked
    /// before the body is read (see [`gate`]); shared by the endpoint's routes.
    pub gate: Option<Arc<RouteLimit>>,
}

/// A route's authentication and the settings it was built from.
#[derive(Debug)]
pub struct RouteAuth {
    pub config: config::Auth,
    pub check: Authenticator,
}

/// A route's rate limit and what it counts by.
#[derive(Debug)]
pub struct RouteLimit {
    pub limit: RateLimit,
    pub key: RateKey,
}

impl RouteLimit {
    /// Takes a token for this request: by client IP, a header's value (absent: one
    /// shared bucket) or the consumer (none: one shared bucket). `Err` carries the
    /// seconds until the next token.
    pub fn check(
        &self,
        client: Option<IpAddr>,
        headers: &HeaderMap,
        consumer: Option<&Consumer>,
    ) -> Result<(), u64> {
        match &self.key {
            RateKey::ClientAddr => match client {
                Some(IpAddr::V4(ip)) => self.limit.check(&ip.octets()),
                Some(IpAddr::V6(ip)) => self.limit.check(&ip.octets()),
                None => self.limit.check(b""),
            },
            RateKey::Header(name) => self.limit.check(
                headers
                    .get(name.as_str())
                    .map_or(&b""[..], |v| v.as_bytes()),
            ),
            RateKey::Consumer => self
                .limit
                .check(consumer.map_or(&b""[..], |c| c.name().as_bytes())),
        }
    }
}

impl RouteEdge {
    /// Builds `route`'s edge, reusing `prev` (the same route in the live generation)
    /// where its settings are unchanged. Errors name the key and are safe to print.
    pub fn build(route: &config::Route, prev: Option<&RouteEdge>) -> Result<RouteEdge, String> {
        let auth = match &route.auth {
            None => None,
            Some(cfg) => match prev.and_then(|p| p.auth.as_ref()) {
                Some(a) if a.config == *cfg => {
                    if let Authenticator::Keys(keys) = &a.check {
                        keys.refresh();
                    }
                    Some(Arc::clone(a))
                }
                _ => Some(Arc::new(RouteAuth {
                    config: cfg.clone(),
                    check: Authenticator::build(cfg).map_err(|e| {
                        let key = match cfg.method {
                            AuthMethod::ApiKeysFile(_) => "auth.api_keys_file",
                            AuthMethod::Jwt(_) => "auth.jwt",
                        };
                        format!("{key}: {e}")
                    })?,
                })),
            },
        };
        let rate_limit =
            route
                .rate_limit
                .as_ref()
                .map(|cfg| match prev.and_then(|p| p.rate_limit.as_ref()) {
                    Some(l) if l.limit.config() == cfg => Arc::clone(l),
                    _ => Arc::new(RouteLimit {
                        limit: RateLimit::new(cfg),
                        key: cfg.key.clone(),
                    }),
                });
        Ok(RouteEdge {
            auth,
            rate_limit,
            gate: None,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.auth.is_none() && self.rate_limit.is_none() && self.gate.is_none()
    }
}

/// How often keys files are checked and idle rate-limit keys evicted.
pub(crate) const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

/// Background work of the edge: keys files, JWKS refresh, rate-limit eviction.
pub(crate) struct EdgeService {
    snapshot: SharedSnapshot,
}

impl EdgeService {
    pub(crate) fn new(snapshot: SharedSnapshot) -> Self {
        EdgeService { snapshot }
    }

    /// One pass over the live generation's routes: re-read changed keys files and
    /// evict idle rate-limit keys.
    pub(crate) fn housekeeping(&self) {
        let snapshot = self.snapshot.load();
        for edge in snapshot.edges() {
            if let Some(l) = &edge.rate_limit {
                l.limit.evict();
            }
            if let Some(g) = &edge.gate {
                g.limit.evict(); // once per route of its endpoint: cheap when nothing is idle
            }
            if let Some(RouteAuth {
                check: Authenticator::Keys(keys),
                ..
            }) = edge.auth.as_deref()
            {
                keys.refresh();
            }
        }
    }

    /// Fetches every JWKS that is due.
    pub(crate) async fn refresh_jwks(&self) {
        let snapshot = self.snapshot.load_full();
        for edge in snapshot.edges() {
            if let Some(RouteAuth {
                check: Authenticator::Jwt(jwt),
                ..
            }) = edge.auth.as_deref()
            {
                jwt.refresh().await;
            }
        }
    }
}

#[async_trait]
impl BackgroundService for EdgeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut jwks_tick = tokio::time::interval(Duration::from_millis(250));
        jwks_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.housekeeping(),
                _ = jwks_tick.tick() => self.refresh_jwks().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
