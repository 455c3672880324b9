//! One configuration generation as the request path sees it: the route table and the
//! upstream pools it points into, immutable once built and published through `ArcSwap`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::{Api, Config, HostMatch};
use crate::metrics::RouteMetrics;
use crate::openai::{RouteApi, RouteGroup};
use crate::routing::RouteTable;
use crate::upstream::Pool;

/// What a matched request needs from its route.
#[derive(Debug)]
pub struct RouteEntry {
    pub name: Arc<str>,
    pub prefix: Box<str>,
    pub strip_prefix: bool,
    /// Largest request body accepted, in bytes.
    pub max_body: Option<u64>,
    pub pool: Arc<Pool>,
    /// OpenAI handling: error shape, usage in streams, keep-alives.
    pub api: RouteApi,
    /// Metric handles of this route, resolved by its first request (the same series
    /// in every generation).
    pub metrics: OnceLock<RouteMetrics>,
}

/// A complete, consistent view of routes and upstreams for one config generation.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub loaded_at: SystemTime,
    /// Routes by host and path; routes sharing both are told apart by model.
    pub routes: RouteTable<Arc<RouteGroup>>,
    /// Pools by upstream name, in config order.
    pub pools: Vec<Arc<Pool>>,
}

/// The live snapshot, shared by the proxy, the admin listener and the reloader.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

static GENERATION: AtomicU64 = AtomicU64::new(0);

impl Snapshot {
    /// Builds every pool and route of `config`. Fails, listing every problem, on
    /// settings this build cannot serve; `modelgate check` reports the same list.
    pub fn build(config: &Config) -> Result<Snapshot, Vec<String>> {
        Snapshot::build_next(config, None)
    }

    /// Builds the generation that follows `prev`: each upstream that `prev` also has
    /// is built with [`Pool::build_next`] (kept backends keep their state, queued
    /// requests stay queued). Touches nothing live until [`Snapshot::publish`].
    pub fn build_next(config: &Config, prev: Option<&Snapshot>) -> Result<Snapshot, Vec<String>> {
        let mut errors = unsupported(config);
        let mut by_name: HashMap<&str, Arc<Pool>> = HashMap::new();
        let mut pools = Vec::with_capacity(config.upstreams.len());
        for up in &config.upstreams {
            let before = prev.and_then(|p| p.pool(&up.name)).map(|p| &**p);
            match Pool::build_next(up, before) {
                Ok(pool) => {
                    by_name.insert(up.name.as_str(), Arc::clone(&pool));
                    pools.push(pool);
                }
                Err(e) => errors.push(e),
            }
        }
        // Routes sharing a host and path form one group, in file order.
        let mut groups: Vec<((Option<&HostMatch>, &str), RouteGroup)> = Vec::new();
        let mut group_of: HashMap<(Option<&HostMatch>, &str), usize> = HashMap::new();
        for r in &config.routes {
            let Some(pool) = by_name.get(r.upstream.as_str()) else {
                continue; // validation guarantees it exists; a failed pool is already reported
            };
            let entry = RouteEntry {
                name: r.name.as_str().into(),
                prefix: r.path.as_str().into(),
                strip_prefix: r.strip_prefix,
                max_body: r.max_body,
                pool: Arc::clone(pool),
                api: RouteApi {
                    openai: r.openai.api == Api::OpenAi,
                    stream_usage: r.openai.stream_usage,
                    sse_keepalive: r.openai.sse_keepalive,
                },
                metrics: OnceLock::new(),
            };
            let key = (r.host.as_ref(), r.path.as_str());
            let at = *group_of.entry(key).or_insert_with(|| {
                groups.push((key, RouteGroup::default()));
                groups.len() - 1
            });
            groups[at]
                .1
                .add(Arc::new(entry), &r.openai.models, &r.openai.model_prefixes);
        }
        let mut routes = RouteTable::default();
        for ((host, path), group) in groups {
            routes.insert(host, path, Arc::new(group));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Snapshot {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed) + 1,
            loaded_at: SystemTime::now(),
            routes,
            pools,
        })
    }

    /// Makes `next` the live generation in one atomic swap, then points each
    /// upstream's wait queue at its new pool. Requests already running keep the
    /// generation they loaded.
    pub fn publish(shared: &SharedSnapshot, next: Snapshot) -> Arc<Snapshot> {
        let next = Arc::new(next);
        shared.store(Arc::clone(&next));
        for pool in &next.pools {
            pool.publish();
        }
        next
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| &**p.name() == name)
    }
}

/// Settings that validate but that this build does not serve yet: refusing them is
/// better than silently ignoring a limit or an auth rule the operator relies on.
fn unsupported(config: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    let file = config.source.display();
    for (i, r) in config.routes.iter().enumerate() {
        if r.rate_limit.is_some() {
            errors.push(format!(
                "{file}: route[{i}].rate_limit: rate limiting is not available in this build; remove it"
            ));
        }
        if r.auth.is_some() {
            errors.push(format!(
                "{file}: route[{i}].auth: authentication is not available in this build; remove it"
            ));
        }
    }
    crate::openai::unsupported(config, &mut errors);
    errors
}
