//! How to reach a backend: the pingora peer with the upstream's timeouts,
//! protocol and TLS settings (CA, SNI, client certificate), read once per pool.

use std::sync::Arc;
use std::time::Duration;

use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{CertKey, WrappedX509};

use crate::config::{Protocol, Upstream};

/// How long an idle upstream connection stays in pingora's keep-alive pool.
const UPSTREAM_KEEPALIVE: Duration = Duration::from_secs(60);
/// Concurrent streams per h2 / h2c connection (pingora's default is 1).
const H2_STREAMS: usize = 128;

/// What an `https` upstream verifies backends against and presents to them, read
/// and checked once per pool (pingora's own loaders panic on bad files).
pub(crate) struct UpstreamTlsFiles {
    ca: Option<Arc<[WrappedX509]>>,
    client: Option<Arc<CertKey>>,
    /// pingora's connection pool does not key connections by CA: this does, so a
    /// connection verified under one upstream's CA never serves another upstream.
    group_key: u64,
}

impl UpstreamTlsFiles {
    pub(crate) fn load(up: &Upstream) -> Result<UpstreamTlsFiles, String> {
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
pub(crate) fn peer_for(
    addr: std::net::SocketAddr,
    up: &Upstream,
    tls: Option<&UpstreamTlsFiles>,
) -> HttpPeer {
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
