//! Picking the certificate for a TLS handshake by SNI: an exact SAN name first, then a
//! `*.` wildcard SAN one label up, then the default. Runs once per handshake (never per
//! request); the set of certificates is swapped atomically when they rotate.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};

use super::cert::LoadedCert;

/// An immutable set of certificates indexed by the names they serve.
#[derive(Debug)]
pub(crate) struct CertStore {
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertStore {
    /// Indexes `certs` (in priority order: an earlier cert keeps a name a later one
    /// also lists) with `default` served when nothing matches.
    pub(crate) fn new<'a>(
        certs: impl IntoIterator<Item = &'a LoadedCert>,
        default: &LoadedCert,
    ) -> CertStore {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in certs {
            for name in &c.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(suffix) => (&mut wildcard, suffix),
                    None => (&mut exact, name.as_str()),
                };
                map.entry(key.into()).or_insert_with(|| Arc::clone(&c.key));
            }
        }
        CertStore {
            exact,
            wildcard,
            default: Arc::clone(&default.key),
        }
    }

    /// The certificate for a (lower-case) SNI name, or the default without one.
    pub(crate) fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else {
            return &self.default;
        };
        if let Some(c) = self.exact.get(name) {
            return c;
        }
        // A wildcard covers exactly one label: *.example.com serves a.example.com,
        // not a.b.example.com nor example.com.
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(c) = self.wildcard.get(parent) {
                return c;
            }
        }
        &self.default
    }
}

/// The rustls hook: reads the current [`CertStore`] for every handshake.
#[derive(Debug)]
pub(crate) struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl SniResolver {
    pub(crate) fn new(store: CertStore) -> SniResolver {
        SniResolver {
            store: ArcSwap::from_pointee(store),
        }
    }

    /// The set handshakes use right now.
    #[cfg(test)]
    pub(crate) fn current(&self) -> Arc<CertStore> {
        self.store.load_full()
    }

    /// Serves `store` to every handshake from now on; handshakes already done keep
    /// the certificate they got.
    pub(crate) fn replace(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls lower-cases the SNI name before handing it over.
        Some(Arc::clone(self.store.load().pick(hello.server_name())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn cert(names: &[&str]) -> LoadedCert {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let c = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cp, kp) = (dir.path().join("c.crt"), dir.path().join("c.key"));
        std::fs::write(&cp, c.pem()).unwrap();
        std::fs::write(&kp, key.serialize_pem()).unwrap();
        super::super::cert::load(&cp, &kp, SystemTime::now()).unwrap()
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let a = cert(&["a.test"]);
        let w = cert(&["*.w.test"]);
        let d = cert(&["d.test"]);
        let store = CertStore::new([&a, &w, &d], &d);
        assert!(Arc::ptr_eq(store.pick(Some("a.test")), &a.key));
        assert!(Arc::ptr_eq(store.pick(Some("x.w.test")), &w.key));
        assert!(Arc::ptr_eq(store.pick(Some("x.y.w.test")), &d.key));
        assert!(Arc::ptr_eq(store.pick(Some("w.test")), &d.key));
        assert!(Arc::ptr_eq(store.pick(Some("other.test")), &d.key));
        assert!(Arc::ptr_eq(store.pick(None), &d.key));
    }

    #[test]
    fn earlier_cert_keeps_a_shared_name() {
        let first = cert(&["same.test"]);
        let second = cert(&["same.test"]);
        let store = CertStore::new([&first, &second], &second);
        assert!(Arc::ptr_eq(store.pick(Some("same.test")), &first.key));
    }
}
