//! The demo's throwaway certificates: a CA made at start and a `localhost` certificate
//! signed by it, written to a fresh temp directory so curl can trust the CA with
//! `--cacert`. Nothing of value: the keys exist only for this run.

use std::path::{Path, PathBuf};

/// Where the demo's certificate files are.
#[derive(Debug, Clone)]
pub struct DemoCerts {
    pub dir: PathBuf,
    /// The CA to give clients (`curl --cacert`).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Generates the CA and a `localhost` / `127.0.0.1` / `::1` certificate into a new
/// directory under the system temp dir.
pub fn generate() -> Result<DemoCerts, String> {
    let err = |e: rcgen::Error| format!("demo: cannot generate a certificate: {e}");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "modelgate demo CA");
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;

    let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    let mut leaf_params = rcgen::CertificateParams::new(names).map_err(err)?;
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let leaf_key = rcgen::KeyPair::generate().map_err(err)?;
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .map_err(err)?;

    let dir = std::env::temp_dir().join(format!("modelgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("demo: cannot create {}: {e}", dir.display()))?;
    let certs = DemoCerts {
        ca: dir.join("ca.crt"),
        cert: dir.join("localhost.crt"),
        key: dir.join("localhost.key"),
        dir,
    };
    write(&certs.ca, &ca.pem())?;
    write(&certs.cert, &leaf.pem())?;
    write(&certs.key, &leaf_key.serialize_pem())?;
    Ok(certs)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("demo: cannot write {}: {e}", path.display()))
}
