//! DNS discovery: the host names of an upstream (names in `backends`, or `discover`)
//! are looked up every `every`, and the upstream's backends follow the answers in
//! place, without a reload.
//!
//! Each answer is handed to the pool as a whole address set
//! ([`Snapshot::rediscovered`]): addresses that stay keep their health, in-flight
//! count, ejection and load state; new ones start as any new backend (`unknown` until
//! a health check passes, or at once without checks); removed ones get no new request
//! and finish what they run. A failed lookup or an empty answer changes nothing: the
//! last known set keeps serving, the error is logged and counted in
//! `modelgate_discovery_errors_total{upstream}`. Lookups use hickory-resolver, with
//! the system's configuration (`/etc/resolv.conf`, search domains, `/etc/hosts`, read
//! again every round) or the one `resolver` given (alone: no hosts file), and no
//! cache, so every lookup asks the server.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::system_conf::read_system_conf;
use hickory_resolver::{Hosts, TokioResolver};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::task::JoinHandle;

use crate::config::{BackendAddr, Discovery, NamedBackend};
use crate::metrics::Metrics;
use crate::snapshot::{self, SharedSnapshot, Snapshot};

/// How often the supervisor looks for upstreams whose names appeared or changed (a reload).
const SUPERVISE_EVERY: Duration = Duration::from_millis(100);
/// One lookup gives up after this long (hickory's default is 5 s per attempt).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the system's resolver finds static names; read again every round.
const HOSTS_FILE: &str = "/etc/hosts";

/// Looks names up with hickory-resolver. Built afresh for every round of lookups:
/// hickory reads `/etc/resolv.conf` and `/etc/hosts` once, when a resolver is built,
/// and both change under a running proxy (an operator's hosts line, Docker's
/// `--add-host`, Kubernetes `hostAliases` rewriting the file).
pub(crate) struct Resolver {
    inner: TokioResolver,
    /// Who is asked, for messages: `resolver 10.0.0.10:53`, or the system's
    /// name servers and hosts file.
    via: String,
}

impl Resolver {
    /// The resolver of one round: `server` alone (UDP, then TCP for long answers; no
    /// hosts file), or, when `None`, the system's configuration as it is now. Fails,
    /// saying what, when the system configuration cannot be read.
    pub(crate) fn new(server: Option<SocketAddr>) -> Result<Resolver, String> {
        match server {
            Some(addr) => Resolver::at(addr),
            None => Resolver::system(Path::new(HOSTS_FILE)),
        }
    }

    fn at(addr: SocketAddr) -> Result<Resolver, String> {
        let via = format!("resolver {addr}");
        Resolver::build(asking(addr), ResolverOpts::default(), None, via)
    }

    /// The system's name servers and options (`/etc/resolv.conf`: search domains,
    /// `ndots`) and the static names of `hosts`, all read now.
    fn system(hosts: &Path) -> Result<Resolver, String> {
        let (config, opts) = read_system_conf().map_err(|e| {
            format!("cannot read the system's DNS configuration (/etc/resolv.conf): {e}")
        })?;
        let servers: Vec<String> = config
            .name_servers()
            .iter()
            .map(|ns| ns.ip.to_string())
            .collect();
        let via = format!(
            "the system resolver ({} then {})",
            hosts.display(),
            if servers.is_empty() {
                "no name server".to_string()
            } else {
                servers.join(", ")
            }
        );
        Resolver::build(config, opts, Some(hosts), via)
    }

    fn build(
        config: ResolverConfig,
        mut opts: ResolverOpts,
        hosts: Option<&Path>,
        via: String,
    ) -> Result<Resolver, String> {
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = LOOKUP_TIMEOUT;
        opts.attempts = 1;
        // Every lookup asks the server: answers change as replicas come and go, and
        // `every` is the operator's choice of how fresh they are.
        opts.cache_size = 0;
        // The hosts file is read below, from the path given; an explicit resolver
        // answers alone.
        opts.use_hosts_file = ResolveHosts::Never;
        let mut inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| format!("cannot set up the DNS resolver ({via}): {e}"))?;
        if let Some(path) = hosts {
            let mut static_names = Hosts::default();
            // A missing hosts file is no hosts file, as for the C library.
            if let Ok(file) = std::fs::File::open(path) {
                static_names
                    .read_hosts_conf(file)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            }
            inner.set_hosts(Arc::new(static_names));
        }
        Ok(Resolver { inner, via })
    }

    /// Every A and AAAA record of every name, as a backend with the name's port and
    /// weight, sorted and without duplicates. Fails when a lookup fails or a name has
    /// no address, with a message naming the name, who was asked and what went wrong.
    pub(crate) async fn resolve(&self, names: &[NamedBackend]) -> Result<Vec<BackendAddr>, String> {
        let mut out = BTreeSet::new();
        for name in names {
            let found = self
                .inner
                .lookup_ip(name.host.as_str())
                .await
                .map_err(|e| format!("{} via {}: {}", name.host, self.via, explain(&e)))?;
            let before = out.len();
            for ip in found.iter().filter(|ip| usable(*ip)) {
                out.insert((SocketAddr::new(ip, name.port), name.weight));
            }
            if out.len() == before {
                return Err(format!(
                    "{} via {}: the answer holds no usable address",
                    name.host, self.via
                ));
            }
        }
        Ok(out
            .into_iter()
            .map(|(addr, weight)| BackendAddr { addr, weight })
            .collect())
    }
}

/// A configuration that asks `addr` only.
fn asking(addr: SocketAddr) -> ResolverConfig {
    let conn = |mut c: ConnectionConfig| {
        c.port = addr.port();
        c
    };
    let ns = NameServerConfig::new(
        addr.ip(),
        true,
        vec![conn(ConnectionConfig::udp()), conn(ConnectionConfig::tcp())],
    );
    ResolverConfig::from_name_servers(vec![ns])
}

/// A lookup failure in words: hickory's own text prints the query in Rust debug form
/// (`no records found for Query { name: Name("model."), .. }`).
fn explain(e: &NetError) -> String {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(none)) => match none.response_code {
            ResponseCode::NXDomain => "no such name (NXDOMAIN)".to_string(),
            ResponseCode::NoError => "the name has no A or AAAA record".to_string(),
            code => format!("no address ({})", rcode(code)),
        },
        NetError::Dns(DnsError::ResponseCode(code)) => {
            format!("the server answered {}", rcode(*code))
        }
        NetError::Timeout => format!("no answer within {LOOKUP_TIMEOUT:?}"),
        NetError::NoConnections => "no name server could be reached".to_string(),
        NetError::Io(io) => format!("network error: {io}"),
        other => other.to_string(),
    }
}

/// A response code by its DNS name and meaning (`SERVFAIL (Server Failure)`).
fn rcode(code: ResponseCode) -> String {
    let name = match code {
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        _ => return format!("response code {}", u16::from(code)),
    };
    format!("{name} ({code})")
}

/// The background service that follows the names of every upstream that has some.
pub(crate) struct DiscoveryService {
    snapshot: SharedSnapshot,
    metrics: Arc<Metrics>,
}

impl DiscoveryService {
    pub(crate) fn new(snapshot: SharedSnapshot, metrics: Arc<Metrics>) -> Self {
        DiscoveryService { snapshot, metrics }
    }
}

#[async_trait]
impl BackgroundService for DiscoveryService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // One follower per upstream and discovery settings; a reload that changes them
        // replaces the follower, one that keeps them keeps it.
        let mut running: HashMap<(Arc<str>, Discovery), JoinHandle<()>> = HashMap::new();
        loop {
            let snap = self.snapshot.load_full();
            let mut live = Vec::new();
            for pool in &snap.pools {
                let Some(d) = pool.settings().discovery.clone() else {
                    continue;
                };
                let key = (Arc::clone(pool.name()), d);
                if !running.contains_key(&key) {
                    let task = tokio::spawn(follow(
                        Arc::clone(&self.snapshot),
                        Arc::clone(&self.metrics),
                        key.0.clone(),
                        key.1.clone(),
                    ));
                    running.insert(key.clone(), task);
                }
                live.push(key);
            }
            running.retain(|key, task| {
                let keep = live.contains(key);
                if !keep {
                    task.abort();
                }
                keep
            });
            tokio::select! {
                _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
                _ = shutdown.changed() => {
                    running.values().for_each(JoinHandle::abort);
                    return;
                }
            }
        }
    }
}

/// Looks `d`'s names up every `d.every` and applies each new answer to `upstream`.
async fn follow(shared: SharedSnapshot, metrics: Arc<Metrics>, upstream: Arc<str>, d: Discovery) {
    let mut failing = false;
    loop {
        // A fresh resolver each round, so edits of /etc/hosts and /etc/resolv.conf
        // apply at the next round (see [`Resolver`]).
        let answer = match Resolver::new(d.resolver) {
            Ok(resolver) => resolver.resolve(&d.names).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(resolved) => {
                if failing {
                    log::info!("upstream {upstream}: DNS answers again");
                    failing = false;
                }
                apply(&shared, &upstream, &d, resolved);
            }
            Err(e) => {
                // Logged once per outage, counted every time.
                if !failing {
                    log::warn!(
                        "upstream {upstream}: DNS lookup failed: {e}; {}",
                        fallback(&shared, &upstream)
                    );
                    failing = true;
                }
                metrics.discovery_error(&upstream);
            }
        }
        tokio::time::sleep(d.every).await;
    }
}

/// What serves `upstream` while its lookups fail: the last known backends, or, when
/// nothing has been found by name yet, only the addresses listed beside the names.
fn fallback(shared: &SharedSnapshot, upstream: &str) -> &'static str {
    let live = shared.load();
    match live.pool(upstream) {
        Some(p) if !p.resolved().is_empty() => "the last known backends keep serving",
        Some(p) if !p.backends().is_empty() => {
            "nothing found by name yet; only the listed addresses serve"
        }
        _ => "nothing found by name yet; the upstream has no backend until a lookup answers",
    }
}

/// Publishes a snapshot in which `upstream`'s names resolve to `resolved`, unless
/// that is already so (or the upstream no longer looks up `d`).
fn apply(shared: &SharedSnapshot, upstream: &str, d: &Discovery, resolved: Vec<BackendAddr>) {
    let _publishing = snapshot::publishing();
    let live = shared.load_full();
    let Some(pool) = live.pool(upstream) else {
        return;
    };
    if pool.settings().discovery.as_ref() != Some(d) || pool.resolved() == resolved.as_slice() {
        return;
    }
    let (added, removed) = diff(pool.resolved(), &resolved);
    match live.rediscovered(upstream, resolved) {
        Ok(next) => {
            log::info!(
                "upstream {upstream}: DNS now gives {} backend(s){}{}",
                next.pool(upstream).map_or(0, |p| p.resolved().len()),
                list(" +", &added),
                list(" -", &removed),
            );
            Snapshot::publish(shared, next);
        }
        Err(e) => log::error!("upstream {upstream}: cannot apply the DNS answer: {e}"),
    }
}

/// Addresses in `next` but not `prev`, and in `prev` but not `next`.
fn diff(prev: &[BackendAddr], next: &[BackendAddr]) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let has = |list: &[BackendAddr], a: SocketAddr| list.iter().any(|b| b.addr == a);
    let added = next
        .iter()
        .map(|b| b.addr)
        .filter(|&a| !has(prev, a))
        .collect();
    let removed = prev
        .iter()
        .map(|b| b.addr)
        .filter(|&a| !has(next, a))
        .collect();
    (added, removed)
}

fn list(prefix: &str, addrs: &[SocketAddr]) -> String {
    addrs.iter().map(|a| format!("{prefix}{a}")).collect()
}

/// Whether `ip` could be a replica's address (not unspecified or multicast).
fn usable(ip: IpAddr) -> bool {
    !ip.is_unspecified() && !ip.is_multicast()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::{BackendSource, HealthCheck, Upstream};
    use crate::upstream::{BackendState, Pool};

    fn addrs(list: &[&str]) -> Vec<BackendAddr> {
        list.iter()
            .map(|a| BackendAddr {
                addr: a.parse().unwrap(),
                weight: 1,
            })
            .collect()
    }

    fn upstream() -> Upstream {
        let mut up = Upstream::with_defaults(
            "u",
            BackendSource::Dns(Discovery {
                names: vec![NamedBackend {
                    host: "model".into(),
                    port: 8000,
                    weight: 1,
                }],
                fixed: addrs(&["10.0.0.1:8000"]),
                every: Duration::from_secs(5),
                resolver: None,
            }),
        );
        up.health = Some(HealthCheck {
            path: "/health".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_after: 2,
            unhealthy_after: 3,
            expect_status: None,
            models: false,
        });
        up
    }

    #[test]
    fn kept_addresses_keep_their_state_and_new_ones_start_unknown() {
        let up = upstream();
        let first = Pool::build(&up).unwrap();
        // Until discovery answers, only the listed address.
        assert_eq!(first.backends().len(), 1);
        let second = first
            .rediscovered(&up, addrs(&["10.0.0.2:8000", "10.0.0.3:8000"]))
            .unwrap();
        assert_eq!(second.backends().len(), 3);
        // Live once published (as `Snapshot::publish` does): only then does the
        // upstream's replica store hold the new addresses.
        second.publish();
        for b in second.backends() {
            b.set_state(BackendState::Up, Duration::ZERO);
        }
        let third = second
            .rediscovered(&up, addrs(&["10.0.0.3:8000", "10.0.0.4:8000"]))
            .unwrap();
        let state = |addr: &str| {
            let b = third
                .backends()
                .iter()
                .find(|b| b.addr().to_string() == addr)
                .unwrap();
            let kept = second.backends().iter().any(|o| o.same_replica(b));
            (b.state(), kept)
        };
        assert_eq!(third.backends().len(), 3);
        assert_eq!(state("10.0.0.1:8000"), (BackendState::Up, true));
        assert_eq!(state("10.0.0.3:8000"), (BackendState::Up, true));
        assert_eq!(state("10.0.0.4:8000"), (BackendState::Unknown, false));
        // A reload of the same upstream keeps what the names resolved to.
        let reloaded = Pool::build_next(&up, Some(&third)).unwrap();
        assert_eq!(reloaded.resolved(), third.resolved());
        // So does one that changes the names or the resolver, until a lookup answers.
        let mut renamed = up.clone();
        if let BackendSource::Dns(d) = &mut renamed.backends {
            d.names[0].host = "other".into();
            d.resolver = Some("127.0.0.1:53".parse().unwrap());
        }
        let reloaded = Pool::build_next(&renamed, Some(&third)).unwrap();
        assert_eq!(reloaded.resolved(), third.resolved());
        assert_eq!(reloaded.backends().len(), third.backends().len());
        // A static upstream turned to names keeps its backends until they answer.
        let fixed = Upstream::with_defaults("u", BackendSource::Static(addrs(&["10.0.0.9:80"])));
        let before = Pool::build(&fixed).unwrap();
        let after = Pool::build_next(&up, Some(&before)).unwrap();
        assert_eq!(after.backends().len(), 2);
    }

    /// A resolver of the system kind over `hosts`, whose name server (a closed
    /// loopback port) is never needed: every name asked is in the file.
    fn round(hosts: &Path) -> Resolver {
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        Resolver::build(
            asking(closed),
            ResolverOpts::default(),
            Some(hosts),
            "test".into(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn every_round_reads_the_hosts_file_again() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        let names = [NamedBackend {
            host: "replica.gate.test".into(),
            port: 8000,
            weight: 1,
        }];
        std::fs::write(
            &hosts,
            "127.0.0.7 replica.gate.test\n::7 replica.gate.test\n",
        )
        .unwrap();
        let first = round(&hosts).resolve(&names).await.unwrap();
        assert_eq!(first, addrs(&["127.0.0.7:8000", "[::7]:8000"]));
        std::fs::write(
            &hosts,
            "127.0.0.8 replica.gate.test\n::8 replica.gate.test\n",
        )
        .unwrap();
        let second = round(&hosts).resolve(&names).await.unwrap();
        assert_eq!(second, addrs(&["127.0.0.8:8000", "[::8]:8000"]));
    }

    #[test]
    fn lookup_failures_read_as_words() {
        use hickory_resolver::net::NoRecords;
        use hickory_resolver::proto::op::Query;
        use hickory_resolver::proto::rr::{Name, RecordType};
        let none = |code| {
            let query = Query::query(Name::from_ascii("model.").unwrap(), RecordType::A);
            NetError::Dns(DnsError::NoRecordsFound(NoRecords::new(query, code)))
        };
        assert_eq!(
            explain(&none(ResponseCode::NXDomain)),
            "no such name (NXDOMAIN)"
        );
        assert_eq!(
            explain(&none(ResponseCode::NoError)),
            "the name has no A or AAAA record"
        );
        assert_eq!(
            explain(&NetError::Dns(DnsError::ResponseCode(
                ResponseCode::ServFail
            ))),
            "the server answered SERVFAIL (Server Failure)"
        );
        assert_eq!(explain(&NetError::Timeout), "no answer within 2s");
    }

    #[test]
    fn diff_names_what_came_and_went() {
        let (added, removed) = diff(
            &addrs(&["10.0.0.2:80", "10.0.0.3:80"]),
            &addrs(&["10.0.0.3:80", "10.0.0.4:80"]),
        );
        assert_eq!(added, ["10.0.0.4:80".parse::<SocketAddr>().unwrap()]);
        assert_eq!(removed, ["10.0.0.2:80".parse::<SocketAddr>().unwrap()]);
    }
}
