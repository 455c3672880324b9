//! Failed TLS handshakes on the HTTPS listener: counted by reason in
//! `modelgate_tls_handshake_failures_total{reason}` and logged at DEBUG, instead of
//! pingora's ERROR line per failure (a port scanner or a client that does not trust
//! the certificate is not an error of the proxy's).

use std::sync::Arc;

use pingora::protocols::l4::socket::SocketAddr;
use pingora::services::listening::HandshakeFailures;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Why a handshake failed: the `reason` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Not finished within pingora's 60 s handshake limit.
    Timeout,
    /// The client closed or reset the connection before finishing.
    Closed,
    /// The client ended the handshake with an alert; usually it does not trust the
    /// certificate (`unknown_ca`, `bad_certificate`).
    Alert,
    /// No TLS version, cipher suite, key exchange or ALPN protocol in common.
    Incompatible,
    /// Not TLS, or a malformed handshake message (plain HTTP sent to the HTTPS port).
    Invalid,
    /// Anything else.
    Other,
}

const REASONS: [Reason; 6] = [
    Reason::Timeout,
    Reason::Closed,
    Reason::Alert,
    Reason::Incompatible,
    Reason::Invalid,
    Reason::Other,
];

impl Reason {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Closed => "closed",
            Reason::Alert => "alert",
            Reason::Incompatible => "incompatible",
            Reason::Invalid => "invalid",
            Reason::Other => "other",
        }
    }

    /// The reason of a failed handshake (`None`: timed out), from the I/O error and
    /// rustls error at the root of pingora's error.
    pub(crate) fn of(error: Option<&pingora::Error>) -> Reason {
        let Some(e) = error else {
            return Reason::Timeout;
        };
        let Some(io) = e.root_cause().downcast_ref::<std::io::Error>() else {
            return match e.root_cause().downcast_ref::<rustls::Error>() {
                Some(tls) => Reason::of_rustls(tls),
                None => Reason::Other,
            };
        };
        if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return Reason::of_rustls(tls);
        }
        use std::io::ErrorKind::*;
        match io.kind() {
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => Reason::Closed,
            TimedOut => Reason::Timeout,
            InvalidData => Reason::Invalid,
            _ => Reason::Other,
        }
    }

    fn of_rustls(e: &rustls::Error) -> Reason {
        use rustls::Error::*;
        match e {
            AlertReceived(_) => Reason::Alert,
            PeerIncompatible(_) | NoApplicationProtocol => Reason::Incompatible,
            InvalidMessage(_)
            | InappropriateMessage { .. }
            | InappropriateHandshakeMessage { .. }
            | PeerMisbehaved(_)
            | PeerSentOversizedRecord
            | DecryptError => Reason::Invalid,
            _ => Reason::Other,
        }
    }
}

/// Counts and logs the failed handshakes of the HTTPS listener (see the module docs).
pub(crate) struct HandshakeCounter {
    /// One counter per [`REASONS`] entry, resolved once.
    counters: Vec<IntCounter>,
}

impl HandshakeCounter {
    /// Registers `modelgate_tls_handshake_failures_total{reason}` on `registry`, every
    /// reason at 0.
    pub(crate) fn register(registry: &Registry) -> prometheus::Result<Arc<HandshakeCounter>> {
        let vec = IntCounterVec::new(
            Opts::new(
                "modelgate_tls_handshake_failures_total",
                "TLS handshakes with clients that failed, by reason (timeout, closed, alert, incompatible, invalid, other).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(vec.clone()))?;
        let counters = REASONS
            .iter()
            .map(|r| vec.with_label_values(&[r.name()]))
            .collect();
        Ok(Arc::new(HandshakeCounter { counters }))
    }

    /// Counts one failure.
    pub(crate) fn count(&self, reason: Reason) {
        if let Some(c) = REASONS
            .iter()
            .position(|&r| r == reason)
            .and_then(|i| self.counters.get(i))
        {
            c.inc();
        }
    }
}

impl HandshakeFailures for HandshakeCounter {
    fn failed(&self, peer: Option<&SocketAddr>, error: Option<&pingora::Error>) {
        let reason = Reason::of(error);
        self.count(reason);
        if log::log_enabled!(log::Level::Debug) {
            let peer = peer.map_or_else(|| "?".to_string(), |p| p.to_string());
            let detail = error.map_or_else(
                || "no handshake within 60 s".to_string(),
                |e| e.root_cause().to_string(),
            );
            log::debug!(
                client = peer.as_str(),
                reason = reason.name();
                "TLS handshake with {peer} failed ({}): {detail}",
                reason.name()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::{Error, ErrorType, OrErr};

    /// As pingora's rustls accept reports it: the I/O error, twice wrapped.
    fn wrapped(io: std::io::Error) -> Box<Error> {
        Err::<(), _>(io)
            .or_err(ErrorType::TLSHandshakeFailure, "tls accept error")
            .or_err(ErrorType::TLSHandshakeFailure, "TLS accept() failed")
            .unwrap_err()
    }

    #[test]
    fn reasons_come_from_the_root_cause() {
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        assert_eq!(Reason::of(Some(&wrapped(alert))), Reason::Alert);
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(Reason::of(Some(&wrapped(eof))), Reason::Closed);
        let junk = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert_eq!(Reason::of(Some(&wrapped(junk))), Reason::Invalid);
        assert_eq!(Reason::of(None), Reason::Timeout);
    }

    #[test]
    fn every_reason_is_a_series_from_the_start() {
        let registry = Registry::new();
        let c = HandshakeCounter::register(&registry).unwrap();
        c.count(Reason::Alert);
        let families = registry.gather();
        let f = &families[0];
        assert_eq!(f.get_metric().len(), REASONS.len());
    }
}
