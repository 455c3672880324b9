//! The TLS policy of the HTTPS listener, in one place.
//!
//! pingora builds the rustls `ServerConfig` itself from [`TlsSettings`]; what it
//! builds, with the *ring* provider pingora installs, is the policy we want, and
//! [`check_provider`] proves it at startup rather than trusting it:
//! - TLS 1.2 and 1.3 only (rustls implements nothing older);
//! - forward-secret AEAD suites only: ECDHE with AES-GCM or ChaCha20-Poly1305 for
//!   TLS 1.2, the three AEAD suites of TLS 1.3 (Mozilla "intermediate", minus DHE);
//! - no renegotiation and no compression (rustls has neither);
//! - session resumption: rustls' stateful session cache (TLS 1.2 session ids and
//!   TLS 1.3 stateful tickets, 256 sessions per listener);
//! - ALPN `h2` then `http/1.1`;
//! - the certificate picked per handshake by our SNI resolver.

use std::sync::Arc;

use pingora::listeners::tls::TlsSettings;
use pingora::tls::{CryptoProvider, ResolvesServerCert};

/// Listener settings for the HTTPS endpoint, serving certificates from `resolver`.
pub(crate) fn listener_settings(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<TlsSettings, String> {
    check_provider()?;
    // The paths are unused once a resolver is set; nothing is read from disk.
    let mut settings = TlsSettings::intermediate("", "")
        .map_err(|e| format!("cannot create TLS settings: {e}"))?;
    settings.set_cert_resolver(resolver);
    settings.enable_h2();
    Ok(settings)
}

/// Fails when the process-wide crypto provider offers a suite outside the policy
/// (another crate installed a different provider, say).
pub(crate) fn check_provider() -> Result<(), String> {
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default().ok_or("no TLS crypto provider is installed")?;
    let bad: Vec<String> = provider
        .cipher_suites
        .iter()
        .map(|s| format!("{:?}", s.suite()))
        .filter(|name| !suite_allowed(name))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the TLS crypto provider offers suites outside the policy: {}",
            bad.join(", ")
        ))
    }
}

/// AEAD only, and for TLS 1.2 forward-secret (ECDHE) key exchange only.
fn suite_allowed(name: &str) -> bool {
    let aead = name.contains("_GCM_") || name.contains("CHACHA20_POLY1305");
    let tls13 = name.starts_with("TLS13_");
    aead && (tls13 || name.starts_with("TLS_ECDHE_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_suites_follow_the_policy() {
        check_provider().unwrap();
        let provider = CryptoProvider::get_default().unwrap();
        let names: Vec<String> = provider
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert!(
            names.iter().any(|n| n == "TLS13_AES_128_GCM_SHA256"),
            "{names:?}"
        );
        assert!(
            names
                .iter()
                .any(|n| n == "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            "{names:?}"
        );
    }

    #[test]
    fn policy_rejects_cbc_and_static_rsa() {
        assert!(!suite_allowed("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256"));
        assert!(!suite_allowed("TLS_RSA_WITH_AES_128_GCM_SHA256"));
        assert!(suite_allowed(
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
        ));
        assert!(suite_allowed("TLS13_AES_256_GCM_SHA384"));
    }
}
