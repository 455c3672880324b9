//! Where the certificate pairs of `[tls].certs` are: the `NAME.crt` + `NAME.key` files
//! of a directory, or an explicit list; and loading all of them at once, which is what
//! `check` and startup do.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::cert::{self, LoadedCert};
use super::resolver::CertStore;
use crate::config::CertSource;

/// The directory pair served when SNI matches nothing (otherwise the first by name).
const DEFAULT_NAME: &str = "default";

/// One pair's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PairPaths {
    /// `NAME` for a directory pair; the certificate path for a listed pair.
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub default: bool,
}

/// The pairs a source names right now, in priority order. A directory is listed
/// afresh each call; a `.crt` without its `.key` (or the reverse) is reported in
/// `orphans` rather than failing the whole directory.
pub(crate) fn pairs(source: &CertSource) -> Result<(Vec<PairPaths>, Vec<String>), String> {
    match source {
        CertSource::List(list) => Ok((
            list.iter()
                .map(|p| PairPaths {
                    name: p.cert.display().to_string(),
                    cert: p.cert.clone(),
                    key: p.key.clone(),
                    default: p.default,
                })
                .collect(),
            Vec::new(),
        )),
        CertSource::Dir(dir) => scan_dir(dir),
    }
}

fn scan_dir(dir: &Path) -> Result<(Vec<PairPaths>, Vec<String>), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        format!(
            "{}: cannot read the certificate directory: {e}; create it and put NAME.crt + NAME.key pairs in it",
            dir.display()
        )
    })?;
    let mut crts = Vec::new();
    let mut keys = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let (Some(stem), Some(ext)) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        if stem.starts_with('.') {
            continue; // editors' and rotation tools' temp files
        }
        match ext {
            "crt" => crts.push(stem.to_string()),
            "key" => keys.push(stem.to_string()),
            _ => {}
        }
    }
    crts.sort();
    let mut orphans = Vec::new();
    let mut out = Vec::new();
    for name in &crts {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        if keys.contains(name) {
            out.push(PairPaths {
                default: name == DEFAULT_NAME,
                name: name.clone(),
                cert,
                key,
            });
        } else {
            orphans.push(format!(
                "{}: no matching {name}.key; add the key or remove the certificate",
                cert.display()
            ));
        }
    }
    for name in keys.iter().filter(|k| !crts.contains(k)) {
        orphans.push(format!(
            "{}: no matching {name}.crt; add the certificate or remove the key",
            dir.join(format!("{name}.key")).display()
        ));
    }
    Ok((out, orphans))
}

/// A loaded pair and the digest of the bytes it was loaded from.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub pair: PairPaths,
    pub cert: LoadedCert,
    pub digest: u64,
}

/// Every pair of a source, loaded and checked.
#[derive(Debug, Clone)]
pub(crate) struct CertSet {
    pub slots: Vec<Slot>,
}

impl CertSet {
    /// Loads every pair; fails listing every bad file (a directory's unmatched
    /// `.crt`/`.key` included). Warnings are for certificates close to expiry.
    pub(crate) fn load(
        source: &CertSource,
        now: SystemTime,
    ) -> Result<(CertSet, Vec<String>), Vec<String>> {
        let (pairs, mut errors) = pairs(source).map_err(|e| vec![e])?;
        let mut slots = Vec::with_capacity(pairs.len());
        let mut warnings = Vec::new();
        for pair in pairs {
            let loaded = cert::read(&pair.cert).and_then(|c| {
                let k = cert::read(&pair.key)?;
                let loaded = cert::parse(&pair.cert, &c, &pair.key, &k, now)?;
                Ok((loaded, cert::digest(&c, &k)))
            });
            match loaded {
                Ok((cert, digest)) => {
                    warnings.extend(cert.warning.clone());
                    slots.push(Slot { pair, cert, digest });
                }
                Err(e) => errors.push(e),
            }
        }
        if slots.is_empty() && errors.is_empty() {
            if let CertSource::Dir(dir) = source {
                errors.push(format!(
                    "{}: no NAME.crt + NAME.key pairs found; add at least one (PEM, chain allowed)",
                    dir.display()
                ));
            }
        }
        if errors.is_empty() {
            Ok((CertSet { slots }, warnings))
        } else {
            Err(errors)
        }
    }

    /// The lookup structure for the resolver; `None` when the set is empty.
    pub(crate) fn store(&self) -> Option<CertStore> {
        let default = self
            .slots
            .iter()
            .find(|s| s.pair.default)
            .or_else(|| self.slots.first())?;
        Some(CertStore::new(
            self.slots.iter().map(|s| &s.cert),
            &default.cert,
        ))
    }
}
