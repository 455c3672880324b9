//! Development certificates: a local certificate authority and the leaf certificates it
//! signs, written as `modelgate cert` and the demo lay them out. Nothing of value: a
//! CA made here is trusted only by the machines its owner tells to trust it.
//!
//! Layout of a certificate directory (`[tls] certs`): `NAME.crt` + `NAME.key` per leaf,
//! served by SNI; the CA in the `ca/` subdirectory (`ca/ca.crt`, `ca/ca.key`), which the
//! server never reads (it scans only the directory's own files).

use std::path::{Path, PathBuf};

/// How long a new CA is valid.
const CA_DAYS: i64 = 10 * 365;
/// How long a new leaf is valid (about two years).
const LEAF_DAYS: i64 = 825;
/// The subdirectory of a certificate directory that holds the CA.
pub(crate) const CA_DIR: &str = "ca";

fn err(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("cannot {what}: {e}")
}

/// A certificate authority that signs development leaves.
pub(crate) struct DevCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

/// A leaf certificate and its key, both PEM.
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    /// Expiry, as `YYYY-MM-DD`.
    pub not_after: String,
}

impl DevCa {
    /// A new CA named `common_name`, valid for ten years from yesterday.
    pub(crate) fn generate(common_name: &str) -> Result<DevCa, String> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(err("make a CA certificate"))?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(CA_DAYS);
        let key = rcgen::KeyPair::generate().map_err(err("make a CA key"))?;
        let cert = params
            .self_signed(&key)
            .map_err(err("sign the CA certificate"))?;
        Ok(DevCa { key, cert })
    }

    /// The CA of `cert_pem` and `key_pem` (as written by [`DevCa::write`]), to sign more
    /// leaves that clients trusting it already accept.
    pub(crate) fn from_pem(cert_pem: &str, key_pem: &str) -> Result<DevCa, String> {
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(err("read the CA key"))?;
        let params = rcgen::CertificateParams::from_ca_cert_pem(cert_pem)
            .map_err(err("read the CA certificate"))?;
        // Signing again with the same key and subject gives an issuer whose leaves
        // verify against the certificate on disk.
        let cert = params
            .self_signed(&key)
            .map_err(err("load the CA certificate"))?;
        Ok(DevCa { key, cert })
    }

    /// Loads the CA of certificate directory `dir` (`dir/ca/`), or makes one there.
    /// Returns it and whether it is new.
    pub(crate) fn load_or_create(dir: &Path) -> Result<(DevCa, CaFiles), String> {
        let files = CaFiles::of(dir);
        if files.cert.is_file() && files.key.is_file() {
            let read = |p: &Path| {
                std::fs::read_to_string(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))
            };
            let ca = DevCa::from_pem(&read(&files.cert)?, &read(&files.key)?)
                .map_err(|e| format!("{}: {e}", files.cert.display()))?;
            return Ok((ca, files));
        }
        let ca = DevCa::generate("modelgate development CA")?;
        let ca_dir = dir.join(CA_DIR);
        std::fs::create_dir_all(&ca_dir)
            .map_err(|e| format!("{}: cannot create: {e}", ca_dir.display()))?;
        write(&files.cert, &ca.pem(), false)?;
        write(&files.key, &ca.key.serialize_pem(), true)?;
        Ok((
            ca,
            CaFiles {
                created: true,
                ..files
            },
        ))
    }

    /// The CA certificate, PEM: what clients are told to trust.
    pub(crate) fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `names` (DNS names, `*.` wildcards or IP addresses), valid for about
    /// two years from yesterday, named after the first.
    pub(crate) fn issue(&self, names: &[String]) -> Result<Leaf, String> {
        let Some(first) = names.first() else {
            return Err("no name given; name at least one host (e.g. localhost)".into());
        };
        let mut params =
            rcgen::CertificateParams::new(names.to_vec()).map_err(err("use these names"))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, first.as_str());
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(LEAF_DAYS);
        let d = params.not_after.date();
        let key = rcgen::KeyPair::generate().map_err(err("make a key"))?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(err("sign the certificate"))?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
        })
    }
}

/// Where a certificate directory's CA is.
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Made by this run (not found on disk).
    pub created: bool,
}

impl CaFiles {
    fn of(dir: &Path) -> CaFiles {
        let ca = dir.join(CA_DIR);
        CaFiles {
            cert: ca.join("ca.crt"),
            key: ca.join("ca.key"),
            created: false,
        }
    }
}

/// The file stem a leaf for `names` is written under: the first name, with a
/// wildcard's `*` spelled `wildcard` and an IPv6 address's `:` as `-`.
pub(crate) fn stem(names: &[String]) -> String {
    names
        .first()
        .map(|n| n.replace('*', "wildcard").replace(':', "-"))
        .unwrap_or_default()
}

/// What [`write_leaf`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub ca: CaFiles,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The leaf's files existed and were replaced.
    pub replaced: bool,
    pub not_after: String,
}

/// Issues a leaf for `names` from the CA of `dir` (made if missing) and writes it as
/// `dir/STEM.crt` + `dir/STEM.key` (see [`stem`]), creating `dir` if needed. Keys are
/// written readable by their owner only.
pub fn write_leaf(dir: &Path, names: &[String]) -> Result<Written, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    let (ca, files) = DevCa::load_or_create(dir)?;
    let leaf = ca.issue(names)?;
    let stem = stem(names);
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    let replaced = cert.exists() || key.exists();
    // The key first: the certificate watcher reloads a pair when the certificate changes.
    write(&key, &leaf.key_pem, true)?;
    write(&cert, &leaf.cert_pem, false)?;
    Ok(Written {
        ca: files,
        cert,
        key,
        replaced,
        not_after: leaf.not_after,
    })
}

/// Writes `text` to `path` (private: mode 0600) through a temp file renamed into place,
/// so a watcher never reads half a file.
pub(crate) fn write(path: &Path, text: &str, private: bool) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| format!("{}: cannot write: {e}", path.display());
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_are_named_after_their_first_name() {
        let n = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(stem(&n(&["api.example.com", "b"])), "api.example.com");
        assert_eq!(stem(&n(&["*.example.com"])), "wildcard.example.com");
        assert_eq!(stem(&n(&["::1"])), "--1");
    }

    #[test]
    fn a_second_run_reuses_the_ca_and_its_leaves_load() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = write_leaf(dir.path(), &names).unwrap();
        assert!(first.ca.created && !first.replaced);
        let ca_pem = std::fs::read_to_string(&first.ca.cert).unwrap();
        let second = write_leaf(dir.path(), &names).unwrap();
        assert!(!second.ca.created && second.replaced);
        assert_eq!(std::fs::read_to_string(&second.ca.cert).unwrap(), ca_pem);
        let loaded =
            super::super::cert::load(&second.cert, &second.key, std::time::SystemTime::now())
                .unwrap();
        assert_eq!(loaded.names, vec!["localhost".to_string()]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&second.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(DevCa::load_or_create(dir.path()).is_ok());
    }

    #[test]
    fn no_name_is_an_error() {
        let ca = DevCa::generate("t").unwrap();
        assert!(ca.issue(&[]).unwrap_err().contains("name at least one"));
    }
}
