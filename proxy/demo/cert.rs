//! The demo's throwaway certificates: a CA made at start and a `localhost` certificate
//! signed by it, written to a fresh temp directory so curl can trust the CA with
//! `--cacert`. Nothing of value: the keys exist only for this run.

use std::path::PathBuf;

use crate::tls::dev::{self, DevCa};

/// Where the demo's certificate files are.
#[derive(Debug, Clone)]
pub(crate) struct DemoCerts {
    pub dir: PathBuf,
    /// The CA to give clients (`curl --cacert`).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Generates the CA and a `localhost` / `127.0.0.1` / `::1` certificate into a new
/// directory under the system temp dir.
pub(crate) fn generate() -> Result<DemoCerts, String> {
    let ca = DevCa::generate("modelgate demo CA").map_err(|e| format!("demo: {e}"))?;
    let names = ["localhost", "127.0.0.1", "::1"].map(String::from);
    let leaf = ca.issue(&names).map_err(|e| format!("demo: {e}"))?;

    let dir = std::env::temp_dir().join(format!("modelgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("demo: cannot create {}: {e}", dir.display()))?;
    let certs = DemoCerts {
        ca: dir.join("ca.crt"),
        cert: dir.join("localhost.crt"),
        key: dir.join("localhost.key"),
        dir,
    };
    let write = |path: &PathBuf, text: &str, private| {
        dev::write(path, text, private).map_err(|e| format!("demo: {e}"))
    };
    write(&certs.ca, &ca.pem(), false)?;
    write(&certs.cert, &leaf.cert_pem, false)?;
    write(&certs.key, &leaf.key_pem, true)?;
    Ok(certs)
}
