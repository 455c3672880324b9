//! A pool of replicas of one model: the backends, how to choose among them, and how
//! to reach them.

use std::sync::Arc;
use std::time::Duration;

use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{CertKey, WrappedX509};

use super::backend::{Backend, Lease};
use super::select::{Selector, Tried};
use crate::config::{BackendSource, Balance, Protocol, RequestKey, Upstream};

/// How long an idle upstream connection stays in pingora's keep-alive pool.
const UPSTREAM_KEEPALIVE: Duration = Duration::from_secs(60);
/// Concurrent streams per h2 / h2c connection (pingora's default is 1).
const H2_STREAMS: usize = 128;

/// Per-pool request settings, copied out of the config once.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub retries: u32,
    pub retry_non_idempotent: bool,
    pub max_inflight: u32,
    pub hash_key: Option<RequestKey>,
    pub first_byte_timeout: Duration,
}

/// The backends of one upstream and the policy that picks among them.
#[derive(Debug)]
pub struct Pool {
    name: Arc<str>,
    backends: Box<[Arc<Backend>]>,
    selector: Selector,
    settings: PoolSettings,
}

/// The outcome of asking a pool for a backend.
#[derive(Debug)]
pub enum Pick {
    /// A slot on this backend (its index in the pool).
    Leased(usize, Lease),
    /// Every untried backend is down.
    NoneHealthy,
    /// Healthy backends exist but all are at `max_inflight`.
    AllBusy,
}

impl Pool {
    /// Builds a pool from a validated upstream. Fails only for features this build
    /// cannot serve yet, with a message for the operator.
    pub fn build(up: &Upstream) -> Result<Pool, String> {
        let addrs = match &up.backends {
            BackendSource::Static(list) => list,
            BackendSource::Dns { .. } => {
                return Err(format!(
                    "upstream.{}.discover: DNS discovery is not available in this build; list `backends` instead",
                    up.name
                ))
            }
        };
        let tls = match up.protocol {
            Protocol::Https => Some(UpstreamTlsFiles::load(up)?),
            _ => None,
        };
        let backends: Box<[Arc<Backend>]> = addrs
            .iter()
            .map(|b| {
                Arc::new(Backend::new(
                    b.addr,
                    b.weight,
                    peer_for(b.addr, up, tls.as_ref()),
                ))
            })
            .collect();
        let selector = match up.balance {
            Balance::LeastOutstanding => Selector::least_outstanding(),
            Balance::RoundRobin => Selector::round_robin(&backends),
            Balance::ConsistentHash => Selector::consistent_hash(&backends),
        };
        Ok(Pool {
            name: up.name.as_str().into(),
            backends,
            selector,
            settings: PoolSettings {
                retries: up.retries,
                retry_non_idempotent: up.retry_non_idempotent,
                max_inflight: up.max_inflight,
                hash_key: (up.balance == Balance::ConsistentHash).then(|| up.hash_key.clone()),
                first_byte_timeout: up.first_byte_timeout,
            },
        })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// Picks a backend not in `tried` and takes an in-flight slot on it.
    /// `hash` is the request's key hash for consistent hashing (ignored otherwise).
    pub fn pick(&self, tried: &Tried, hash: u64) -> Pick {
        let cap = self.settings.max_inflight;
        // A slot can be taken between the check and the acquire; try again a few times.
        for _ in 0..4 {
            match self.selector.pick(&self.backends, tried, cap, hash) {
                Some(i) => {
                    if let Some(lease) = self.backends[i].try_acquire(cap) {
                        return Pick::Leased(i, lease);
                    }
                }
                None => break,
            }
        }
        let any_healthy = self
            .backends
            .iter()
            .enumerate()
            .any(|(i, b)| b.is_available() && !tried.contains(i));
        if any_healthy && cap > 0 {
            Pick::AllBusy
        } else {
            Pick::NoneHealthy
        }
    }

    /// Is there a backend this request has not tried that could take it now?
    pub fn has_untried(&self, tried: &Tried) -> bool {
        self.backends
            .iter()
            .enumerate()
            .any(|(i, b)| b.is_available() && !tried.contains(i))
    }
}

/// What an `https` upstream verifies backends against and presents to them, read
/// and checked once per pool (pingora's own loaders panic on bad files).
struct UpstreamTlsFiles {
    ca: Option<Arc<[WrappedX509]>>,
    client: Option<Arc<CertKey>>,
    /// pingora's connection pool does not key connections by CA: this does, so a
    /// connection verified under one upstream's CA never serves another upstream.
    group_key: u64,
}

impl UpstreamTlsFiles {
    fn load(up: &Upstream) -> Result<UpstreamTlsFiles, String> {
        use crate::tls::cert;
        let name = &up.name;
        let mut group = xxhash_rust::xxh3::Xxh3::new();
        group.update(name.as_bytes());
        let ca = match &up.tls.ca {
            Some(path) => {
                let pem = cert::read(path).map_err(|e| format!("upstream.{name}.ca: {e}"))?;
                group.update(&pem);
                let certs = cert::parse_certs(path, &pem)
                    .map_err(|e| format!("upstream.{name}.ca: {e}"))?;
                Some(
                    certs
                        .into_iter()
                        .map(|c| WrappedX509::new(c.to_vec(), pingora::utils::tls::parse_x509))
                        .collect::<Vec<_>>()
                        .into(),
                )
            }
            None => None,
        };
        let client = match (&up.tls.client_cert, &up.tls.client_key) {
            (Some(c), Some(k)) => {
                let (chain, key) = cert::load_client_pair(c, k, std::time::SystemTime::now())
                    .map_err(|e| format!("upstream.{name}.client_cert: {e}"))?;
                Some(Arc::new(CertKey::new(chain, key)))
            }
            _ => None,
        };
        Ok(UpstreamTlsFiles {
            ca,
            client,
            group_key: group.digest(),
        })
    }
}

/// The pingora peer for one backend, with the upstream's timeouts and protocol.
/// An `https` backend is verified against `ca` (else the system roots) under the
/// name `sni` (else its IP address), offers h2 and http/1.1, and presents the
/// client certificate when one is configured.
fn peer_for(addr: std::net::SocketAddr, up: &Upstream, tls: Option<&UpstreamTlsFiles>) -> HttpPeer {
    let sni = match tls {
        Some(_) => up.tls.sni.clone().unwrap_or_else(|| addr.ip().to_string()),
        None => String::new(),
    };
    let mut peer = HttpPeer::new(addr, tls.is_some(), sni);
    let o = &mut peer.options;
    o.connection_timeout = Some(up.connect_timeout);
    o.total_connection_timeout = Some(up.connect_timeout);
    // pingora applies one timeout to every upstream read, headers and body alike:
    // a response must start within first_byte_timeout, and a stream may pause
    // between chunks for the longer of the two.
    o.read_timeout = Some(up.first_byte_timeout.max(up.idle_timeout));
    o.write_timeout = Some(up.idle_timeout);
    o.idle_timeout = Some(UPSTREAM_KEEPALIVE);
    o.tcp_keepalive = None;
    match up.protocol {
        Protocol::Http1 => {}
        Protocol::H2c => {
            o.alpn = ALPN::H2;
            o.max_h2_streams = H2_STREAMS;
        }
        Protocol::Https => {
            o.alpn = ALPN::H2H1;
            o.max_h2_streams = H2_STREAMS;
            o.verify_cert = true;
            o.verify_hostname = true;
        }
    }
    if let Some(files) = tls {
        peer.options.ca = files.ca.clone();
        peer.client_cert_key = files.client.clone();
        peer.group_key = files.group_key;
    }
    peer
}
