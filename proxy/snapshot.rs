//! One configuration generation as the request path sees it: the route table and the
//! upstream pools it points into, immutable once built and published through `ArcSwap`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::{Api, Config, HostMatch};
use crate::edge::RouteEdge;
use crate::metrics::RouteMetrics;
use crate::openai::{RouteApi, RouteGroup};
use crate::routing::RouteTable;
use crate::upstream::{Backend, Pool};

/// What a matched request needs from its route.
#[derive(Debug)]
pub struct RouteEntry {
    pub name: Arc<str>,
    pub prefix: Box<str>,
    pub strip_prefix: bool,
    /// Largest request body accepted, in bytes.
    pub max_body: Option<u64>,
    pub pool: Arc<Pool>,
    /// Authentication and rate limit of the route.
    pub edge: RouteEdge,
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
    /// Each route's name and edge (auth, rate limit), in config order.
    edges: Vec<(Arc<str>, RouteEdge)>,
    /// The config this generation was built from (discovery rebuilds pools from it).
    pub config: Arc<Config>,
    /// Backends an earlier generation had and this one dropped that were still
    /// running requests when it was built, by upstream name (see [`Snapshot::draining`]).
    draining: Vec<(Arc<str>, Arc<Backend>)>,
}

/// The live snapshot, shared by the proxy, the admin listener and the reloader.
pub(crate) type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Held by whoever builds a snapshot from the live one and publishes it (a reload,
/// a discovery update), so neither publishes over a change it did not see.
static PUBLISHING: Mutex<()> = Mutex::new(());

/// Waits for, then holds, the right to publish a snapshot built from the live one.
pub(crate) fn publishing() -> MutexGuard<'static, ()> {
    // The guarded value is `()`: a poisoned lock is as good as any.
    PUBLISHING.lock().unwrap_or_else(|p| p.into_inner())
}

impl Snapshot {
    /// Builds every pool and route of `config`. Fails, listing every problem, when
    /// files the config names cannot be read (upstream TLS files, route key files);
    /// `modelgate check` reports the same list.
    pub fn build(config: &Config) -> Result<Snapshot, Vec<String>> {
        Snapshot::build_next(config, None)
    }

    /// Builds the generation that follows `prev`: each upstream that `prev` also has
    /// is built with [`Pool::build_next`] (kept backends keep their state, queued
    /// requests stay queued). Touches nothing live until [`Snapshot::publish`].
    pub fn build_next(config: &Config, prev: Option<&Snapshot>) -> Result<Snapshot, Vec<String>> {
        let mut errors = Vec::new();
        let mut by_name: HashMap<&str, Arc<Pool>> = HashMap::new();
        let mut pools = Vec::with_capacity(config.upstreams.len());
        for up in &config.upstreams {
            let before = prev.and_then(|p| p.pool(&up.name)).map(|p| &**p);
            match Pool::build_next(up, before) {
                Ok(pool) => {
                    by_name.insert(up.name.as_str(), Arc::clone(&pool));
                    pools.push(pool);
                }
                Err(e) => errors.push(format!("{}: {e}", config.source.display())),
            }
        }
        let mut edges = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            let prev_edge = prev.and_then(|p| p.edge(&r.name));
            match RouteEdge::build(r, prev_edge) {
                Ok(edge) => edges.push((Arc::from(r.name.as_str()), edge)),
                Err(e) => errors.push(format!("{}: route[{i}].{e}", config.source.display())),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        crate::edge::gate::attach(&config.routes, &mut edges, |name| {
            prev.and_then(|p| p.edge(name))
        });
        Ok(Snapshot {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed) + 1,
            loaded_at: SystemTime::now(),
            routes: route_table(config, &by_name, &edges),
            draining: prev.map(|p| p.draining_after(&pools)).unwrap_or_default(),
            pools,
            edges,
            config: Arc::new(config.clone()),
        })
    }

    /// This generation with upstream `name`'s names now resolving to `resolved`
    /// ([`Pool::rediscovered`]); every other pool is shared as is, and the generation
    /// number stays (the config did not change). Publish it with [`Snapshot::publish`].
    pub fn rediscovered(
        &self,
        name: &str,
        resolved: Vec<crate::config::BackendAddr>,
    ) -> Result<Snapshot, String> {
        let up = self
            .config
            .upstreams
            .iter()
            .find(|u| u.name == name)
            .ok_or_else(|| format!("upstream {name} is gone"))?;
        let mut by_name: HashMap<&str, Arc<Pool>> = HashMap::new();
        let mut pools = Vec::with_capacity(self.pools.len());
        for pool in &self.pools {
            let pool = if &**pool.name() == name {
                pool.rediscovered(up, resolved.clone())?
            } else {
                Arc::clone(pool)
            };
            pools.push(pool);
        }
        for (up, pool) in self.config.upstreams.iter().zip(&pools) {
            by_name.insert(up.name.as_str(), Arc::clone(pool));
        }
        Ok(Snapshot {
            generation: self.generation,
            loaded_at: self.loaded_at,
            routes: route_table(&self.config, &by_name, &self.edges),
            draining: self.draining_after(&pools),
            pools,
            edges: self.edges.clone(),
            config: Arc::clone(&self.config),
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

    /// Backends that earlier generations dropped and that still finish requests
    /// (`draining` on `/upstreams`), with their upstream's name.
    pub fn draining(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<Backend>)> {
        self.draining
            .iter()
            .filter(|(_, b)| b.inflight() > 0)
            .map(|(name, b)| (name, b))
    }

    /// What stays draining when `next` (the pools of the following generation)
    /// replaces this one: this one's backends that `next` drops and that run requests
    /// now, and those already draining that still do and did not come back.
    fn draining_after(&self, next: &[Arc<Pool>]) -> Vec<(Arc<str>, Arc<Backend>)> {
        let kept = |name: &str, b: &Backend| {
            next.iter()
                .find(|p| &**p.name() == name)
                .is_some_and(|p| p.backends().iter().any(|n| n.same_replica(b)))
        };
        let live = self
            .pools
            .iter()
            .flat_map(|p| p.backends().iter().map(move |b| (p.name(), b)));
        live.chain(self.draining.iter().map(|(name, b)| (name, b)))
            .filter(|(name, b)| b.inflight() > 0 && !kept(name, b))
            .map(|(name, b)| (Arc::clone(name), Arc::clone(b)))
            .collect()
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| &**p.name() == name)
    }

    /// The auth and rate limit of the route named `name`.
    pub fn edge(&self, name: &str) -> Option<&RouteEdge> {
        self.edges
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, e)| e)
    }

    /// Route names with their auth and rate limit (routes with neither are left out).
    pub fn named_edges(&self) -> impl Iterator<Item = (&str, &RouteEdge)> {
        self.edges
            .iter()
            .filter(|(_, e)| !e.is_empty())
            .map(|(n, e)| (&**n, e))
    }

    /// Every route's auth and rate limit (routes with neither are left out).
    pub fn edges(&self) -> impl Iterator<Item = &RouteEdge> {
        self.named_edges().map(|(_, e)| e)
    }
}

/// The routes of `config`, each pointing at its upstream's pool; routes sharing a
/// host and path form one group, in file order.
/// `edges` holds each route's edge, in config order.
fn route_table(
    config: &Config,
    by_name: &HashMap<&str, Arc<Pool>>,
    edges: &[(Arc<str>, RouteEdge)],
) -> RouteTable<Arc<RouteGroup>> {
    let mut groups: Vec<((Option<&HostMatch>, &str), RouteGroup)> = Vec::new();
    let mut group_of: HashMap<(Option<&HostMatch>, &str), usize> = HashMap::new();
    for (r, (_, edge)) in config.routes.iter().zip(edges) {
        let Some(pool) = by_name.get(r.upstream.as_str()) else {
            continue; // validation guarantees it exists; a failed pool is already reported
        };
        let entry = RouteEntry {
            name: r.name.as_str().into(),
            prefix: r.path.as_str().into(),
            strip_prefix: r.strip_prefix,
            max_body: r.max_body,
            pool: Arc::clone(pool),
            edge: edge.clone(),
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
    routes
}
