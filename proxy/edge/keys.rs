//! API keys from a file (`KEY` or `NAME:KEY` per line), looked up by SHA-256 digest and
//! compared in constant time; the file is re-read when its content changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Consumer;

type KeyDigest = [u8; 32];

/// One parsed keys file: key digests to consumers. Holds no key in the clear.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    by_digest: HashMap<KeyDigest, Consumer>,
}

impl KeySet {
    /// Parses a keys file. Each line is blank, a `#` comment, `KEY`, or `NAME:KEY`
    /// (NAME: letters, digits, `.`, `_`, `-`, `@`; KEY: visible ASCII, no spaces).
    /// A key without a name is known by `key-` and the first 8 hex digits of its
    /// SHA-256, which identifies it without revealing it. Errors name the line, never
    /// the key.
    pub(crate) fn parse(text: &str) -> Result<KeySet, Vec<String>> {
        let mut set = KeySet::default();
        let mut errors = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, key) = match line.split_once(':') {
                Some((name, key)) => (Some(name.trim()), key.trim()),
                None => (None, line),
            };
            if let Some(name) = name {
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
                if !valid {
                    errors.push(format!(
                        "line {n}: the name before ':' must be letters, digits, '.', '_', '-' or '@'; write NAME:KEY"
                    ));
                    continue;
                }
                if let Some(first) = names.insert(name.to_string(), n) {
                    errors.push(format!(
                        "line {n}: the name {name:?} is already used on line {first}; give each key its own name"
                    ));
                    continue;
                }
            }
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
                errors.push(format!(
                    "line {n}: the key is empty or has spaces or non-ASCII characters; write KEY or NAME:KEY, one per line"
                ));
                continue;
            }
            let digest = digest(key.as_bytes());
            let consumer = match name {
                Some(name) => Consumer::new(name),
                None => Consumer::new(&format!("key-{}", hex8(&digest))),
            };
            if set.by_digest.insert(digest, consumer).is_some() {
                errors.push(format!(
                    "line {n}: this key is already listed above; remove the duplicate"
                ));
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// The consumer owning `key`, if any. The map is indexed by SHA-256 digest (timing
    /// reveals nothing about a key from a guess's digest) and the digest is then
    /// compared in constant time.
    pub(crate) fn lookup(&self, key: &[u8]) -> Option<&Consumer> {
        let d = digest(key);
        let (stored, consumer) = self.by_digest.get_key_value(&d)?;
        bool::from(stored.ct_eq(&d)).then_some(consumer)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

fn digest(key: &[u8]) -> KeyDigest {
    Sha256::digest(key).into()
}

fn hex8(d: &KeyDigest) -> String {
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// A keys file and its current set; [`ApiKeys::refresh`] re-reads it when it changed.
#[derive(Debug)]
pub struct ApiKeys {
    path: PathBuf,
    set: ArcSwap<KeySet>,
    /// Hash of the content last read (good or bad), so a bad file is reported once.
    seen: std::sync::Mutex<u64>,
}

impl ApiKeys {
    /// Reads and parses `path`; fails with every problem, each naming the file and line.
    pub fn load(path: &Path) -> Result<ApiKeys, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
        let set = KeySet::parse(&text).map_err(|errors| {
            errors
                .into_iter()
                .map(|e| format!("{}: {e}", path.display()))
                .collect::<Vec<_>>()
        })?;
        if set.is_empty() {
            return Err(vec![format!(
                "{}: has no key; put one key (or NAME:KEY) per line",
                path.display()
            )]);
        }
        Ok(ApiKeys {
            path: path.to_path_buf(),
            set: ArcSwap::from_pointee(set),
            seen: std::sync::Mutex::new(content_hash(text.as_bytes())),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The consumer owning `key`, if the current set has it.
    pub fn lookup(&self, key: &[u8]) -> Option<Consumer> {
        self.set.load().lookup(key).cloned()
    }

    /// Re-reads the file if its content changed. A file that cannot be read or does
    /// not parse keeps the current keys; the problem is logged (once per content).
    pub fn refresh(&self) {
        let Ok(bytes) = std::fs::read(&self.path) else {
            return; // mid-rename or removed: keep serving the keys we have
        };
        let hash = content_hash(&bytes);
        {
            let Ok(mut seen) = self.seen.lock() else {
                return;
            };
            if *seen == hash {
                return;
            }
            *seen = hash;
        }
        let text = String::from_utf8_lossy(&bytes);
        match KeySet::parse(&text) {
            Ok(set) if !set.is_empty() => {
                log::info!("{}: {} API keys loaded", self.path.display(), set.len());
                self.set.store(Arc::new(set));
            }
            Ok(_) => log::warn!(
                "{}: has no key; keeping the {} keys loaded before",
                self.path.display(),
                self.set.load().len()
            ),
            Err(errors) => log::warn!(
                "{}: {}; keeping the {} keys loaded before",
                self.path.display(),
                errors.join("; "),
                self.set.load().len()
            ),
        }
    }
}

fn content_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_comments_and_bare_keys() {
        let set =
            KeySet::parse("# team keys\n\nalice: sk-alice-1\nsk-anon\n  bob:sk-bob \n").unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.lookup(b"sk-alice-1").unwrap().name(), "alice");
        assert_eq!(set.lookup(b"sk-bob").unwrap().name(), "bob");
        let anon = set.lookup(b"sk-anon").unwrap().name().to_string();
        assert!(anon.starts_with("key-") && anon.len() == 12, "{anon}");
        assert!(!anon.contains("sk-anon"));
        assert!(set.lookup(b"sk-alice").is_none());
        assert!(set.lookup(b"").is_none());
    }

    #[test]
    fn errors_name_the_line_never_the_key() {
        let errors = KeySet::parse(
            "alice:secret-one\nalice:secret-two\nbad name:secret-three\nx:\nsecret-one\n",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("line 2:"));
        assert!(errors[1].starts_with("line 3:"));
        assert!(errors[2].starts_with("line 4:"));
        assert!(errors[3].starts_with("line 5:"));
        for e in &errors {
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn a_broken_file_keeps_the_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.txt");
        std::fs::write(&path, "alice:k1\n").unwrap();
        let keys = ApiKeys::load(&path).unwrap();
        assert_eq!(keys.lookup(b"k1").unwrap().name(), "alice");
        std::fs::write(&path, "alice:k1\nbad line with spaces:\n").unwrap();
        keys.refresh();
        assert_eq!(keys.lookup(b"k1").unwrap().name(), "alice");
        std::fs::write(&path, "bob:k2\n").unwrap();
        keys.refresh();
        assert!(keys.lookup(b"k1").is_none());
        assert_eq!(keys.lookup(b"k2").unwrap().name(), "bob");
        std::fs::remove_file(&path).unwrap();
        keys.refresh();
        assert_eq!(keys.lookup(b"k2").unwrap().name(), "bob");
    }
}
