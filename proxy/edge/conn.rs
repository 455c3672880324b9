//! Connection limits: at most `listen.max_connections` open client connections, and
//! `listen.max_connections_per_ip` from one address; beyond them a new connection is
//! closed right after accept (before any TLS handshake), and counted.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::services::listening::ConnectionGate;

use crate::config::ConnLimits;

/// Counts open connections, overall and per client IP, across every proxy listener.
#[derive(Debug, Default)]
pub(crate) struct ConnectionLimits {
    /// 0 = unlimited.
    max: usize,
    /// 0 = unlimited.
    max_per_ip: usize,
    open: AtomicUsize,
    /// Open connections per address; an entry goes when its last connection closes,
    /// so the map is never larger than the number of open connections.
    by_ip: DashMap<IpAddr, usize, foldhash::fast::RandomState>,
    refused_total: AtomicU64,
    refused_per_ip: AtomicU64,
}

/// Why a connection was refused (the `reason` label of the refusal counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    MaxConnections,
    MaxConnectionsPerIp,
}

/// Held for as long as a connection is open.
#[derive(Debug)]
pub(crate) struct Permit {
    limits: Arc<ConnectionLimits>,
    ip: Option<IpAddr>,
}

impl ConnectionLimits {
    pub(crate) fn new(limits: &ConnLimits) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            max: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            ..Default::default()
        })
    }

    /// Admits one more connection from `ip`, or says which limit it would break.
    pub(crate) fn try_admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Permit, Refused> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        if self.max > 0 && open > self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::MaxConnections);
        }
        let counted_ip = match ip {
            Some(ip) if self.max_per_ip > 0 => {
                let mut n = self.by_ip.entry(ip).or_insert(0);
                if *n >= self.max_per_ip {
                    drop(n);
                    self.open.fetch_sub(1, Ordering::AcqRel);
                    self.refused_per_ip.fetch_add(1, Ordering::Relaxed);
                    return Err(Refused::MaxConnectionsPerIp);
                }
                *n += 1;
                Some(ip)
            }
            _ => None,
        };
        Ok(Permit {
            limits: Arc::clone(self),
            ip: counted_ip,
        })
    }

    /// Client connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections refused so far by `reason`.
    pub(crate) fn refused(&self, reason: Refused) -> u64 {
        match reason {
            Refused::MaxConnections => self.refused_total.load(Ordering::Relaxed),
            Refused::MaxConnectionsPerIp => self.refused_per_ip.load(Ordering::Relaxed),
        }
    }

    /// Distinct client addresses with a connection open (only tracked with a per-IP limit).
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.by_ip.len()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            self.limits.by_ip.remove_if_mut(&ip, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Refused {
    /// The `reason` label.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

/// The pingora hook: one gate shared by the HTTP and HTTPS listeners.
pub(crate) struct Gate(pub Arc<ConnectionLimits>);

impl ConnectionGate for Gate {
    fn admit(&self, peer: Option<&SocketAddr>) -> Option<Box<dyn Send>> {
        let ip = peer.and_then(|p| p.as_inet()).map(|a| a.ip());
        match self.0.try_admit(ip) {
            Ok(permit) => Some(Box::new(permit)),
            Err(why) => {
                log::debug!("connection from {ip:?} refused: {}", why.reason());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_ip: usize) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(&ConnLimits {
            max_connections: max,
            max_connections_per_ip: per_ip,
            ..crate::config::DEFAULT_LIMITS
        })
    }

    #[test]
    fn total_and_per_ip_limits_release_on_close() {
        let l = limits(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = l.try_admit(Some(a)).unwrap();
        let _a2 = l.try_admit(Some(a)).unwrap();
        assert_eq!(
            l.try_admit(Some(a)).unwrap_err(),
            Refused::MaxConnectionsPerIp
        );
        let _b1 = l.try_admit(Some(b)).unwrap();
        assert_eq!(l.try_admit(Some(b)).unwrap_err(), Refused::MaxConnections);
        assert_eq!(l.open(), 3);
        drop(a1);
        assert_eq!(l.open(), 2);
        let _b2 = l.try_admit(Some(b)).unwrap();
        assert_eq!(l.refused(Refused::MaxConnections), 1);
        assert_eq!(l.refused(Refused::MaxConnectionsPerIp), 1);
    }

    #[test]
    fn per_ip_entries_go_with_their_last_connection() {
        let l = limits(0, 1);
        let permits: Vec<_> = (0..1000u32)
            .map(|i| l.try_admit(Some(IpAddr::from(i.to_be_bytes()))).unwrap())
            .collect();
        assert_eq!(l.addresses(), 1000);
        drop(permits);
        assert_eq!(l.addresses(), 0);
        assert_eq!(l.open(), 0);
    }
}
