//! One certificate/key pair, read and checked before it is ever served: the PEM
//! parses, the key loads and matches the certificate, the certificate is valid now
//! (with a warning when it expires within [`EXPIRY_WARNING`]), and the names it can
//! serve come from its subject alternative names.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{CertificateDer, CryptoProvider, PrivateKeyDer, RusTlsError};
use rustls::InconsistentKeys;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A certificate this close to its expiry is served, with a warning.
pub(crate) const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// A checked pair, ready to hand to rustls.
#[derive(Debug, Clone)]
pub(crate) struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// Lower-case DNS names from the SAN extension (the subject CN when there is no
    /// SAN), as written: `api.example.com` or `*.example.com`.
    pub names: Vec<String>,
    /// Set when the certificate expires within [`EXPIRY_WARNING`].
    pub warning: Option<String>,
}

/// Hashes the bytes of a pair, to tell a real change from a touched file.
pub(crate) fn digest(cert: &[u8], key: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(cert.len() as u64).to_le_bytes());
    h.update(cert);
    h.update(key);
    h.digest()
}

/// Reads and checks the pair at `cert_path` / `key_path` as of `now`. The error
/// names the file at fault, says what is wrong and how to fix it.
#[cfg(test)]
pub(crate) fn load(
    cert_path: &Path,
    key_path: &Path,
    now: SystemTime,
) -> Result<LoadedCert, String> {
    let cert = read(cert_path)?;
    let key = read(key_path)?;
    parse(cert_path, &cert, key_path, &key, now)
}

/// Reads a whole file; the error names it.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "{}: cannot read: {e}; check the path and its permissions",
            path.display()
        )
    })
}

/// Checks a pair already read into memory (see [`load`]).
pub(crate) fn parse(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
    now: SystemTime,
) -> Result<LoadedCert, String> {
    let cf = cert_path.display();
    let kf = key_path.display();
    let chain = parse_chain(cert_path, cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        let hint = if looks_like(key_pem, "CERTIFICATE") {
            "it holds a certificate; did you swap cert and key?"
        } else {
            "expected a PEM block such as -----BEGIN PRIVATE KEY-----"
        };
        format!("{kf}: no usable private key ({e}); {hint}")
    })?;

    let (_, leaf) = X509Certificate::from_der(&chain[0]).map_err(|e| {
        format!("{cf}: the first certificate is not valid X.509 ({e}); re-export it as PEM")
    })?;
    let validity = leaf.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if not_after < now_secs {
        return Err(format!(
            "{cf}: expired on {} UTC; renew it",
            validity.not_after.to_datetime().date()
        ));
    }
    if not_before > now_secs {
        return Err(format!(
            "{cf}: not valid before {} UTC; check the clock or issue it with an earlier start",
            validity.not_before.to_datetime().date()
        ));
    }
    let warning = (not_after - now_secs < EXPIRY_WARNING.as_secs() as i64).then(|| {
        format!(
            "{cf}: expires on {} UTC, in {} day(s); renew it soon",
            validity.not_after.to_datetime().date(),
            (not_after - now_secs) / 86_400
        )
    });
    let names = names(&leaf);

    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| format!("{kf}: no TLS crypto provider is installed"))?;
    let signing = provider.key_provider.load_private_key(key).map_err(|e| {
        format!("{kf}: unsupported private key ({e}); use an RSA (2048 bit or more), ECDSA P-256/P-384 or Ed25519 key")
    })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(RusTlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(RusTlsError::InconsistentKeys(_)) => {
            return Err(format!(
                "{kf}: does not match the certificate in {cf}; install the key that was issued with this certificate"
            ))
        }
        Err(e) => return Err(format!("{cf}: {e}; re-export the certificate as PEM")),
    }
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        warning,
    })
}

/// The PEM certificates of a file, leaf first.
fn parse_chain(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let f = path.display();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!("{f}: cannot parse PEM ({e}); expected -----BEGIN CERTIFICATE----- blocks")
        })?;
    if chain.is_empty() {
        let hint = if looks_like(pem, "PRIVATE KEY") {
            "it holds a private key; did you swap cert and key?"
        } else {
            "expected one or more -----BEGIN CERTIFICATE----- blocks, leaf first"
        };
        return Err(format!("{f}: no certificate found; {hint}"));
    }
    Ok(chain)
}

/// Parses PEM certificates (a CA bundle, say) and checks each is X.509.
pub(crate) fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = parse_chain(path, pem)?;
    for (i, c) in certs.iter().enumerate() {
        X509Certificate::from_der(c).map_err(|e| {
            format!(
                "{}: certificate #{} is not valid X.509 ({e}); re-export it as PEM",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(certs)
}

/// Reads and checks a client certificate and key for mutual TLS to a backend:
/// returns the DER chain and the DER key.
pub(crate) fn load_client_pair(
    cert_path: &Path,
    key_path: &Path,
    now: SystemTime,
) -> Result<(Vec<Vec<u8>>, Vec<u8>), String> {
    let cert = read(cert_path)?;
    let key = read(key_path)?;
    parse(cert_path, &cert, key_path, &key, now)?;
    let chain = parse_chain(cert_path, &cert)?;
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| format!("{}: no usable private key ({e})", key_path.display()))?;
    Ok((
        chain.into_iter().map(|c| c.to_vec()).collect(),
        key.secret_der().to_vec(),
    ))
}

/// Does the PEM text contain a block whose label contains `label`?
fn looks_like(pem: &[u8], label: &str) -> bool {
    pem.windows(label.len()).any(|w| w == label.as_bytes())
}

/// DNS names the certificate can serve, lower-case.
fn names(leaf: &X509Certificate<'_>) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                out.push(d.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    if out.is_empty() {
        for cn in leaf.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                out.push(s.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    out
}
