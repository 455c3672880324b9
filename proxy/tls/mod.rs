//! TLS termination: certificates read and checked before use (`cert`), found in a
//! directory or a list (`source`), picked per handshake by SNI (`resolver`), served
//! under one listener policy (`policy`), and rotated without restart (`watch`).

pub(crate) mod cert;
pub(crate) mod dev;
pub(crate) mod handshake;
pub(crate) mod policy;
pub(crate) mod resolver;
pub(crate) mod source;
pub(crate) mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{CertSource, Config, HostMatch};
use crate::metrics::live::Family;

pub(crate) use resolver::SniResolver;
pub(crate) use source::CertSet;
pub(crate) use watch::CertWatcher;

/// Counters of certificate rotation, exported as
/// `modelgate_tls_cert_reloads_total{result="ok"|"error"}` (see [`TlsStats::collector`]).
#[derive(Debug, Default)]
pub(crate) struct TlsStats {
    /// Times a changed set of certificates was swapped in.
    pub reloaded: AtomicU64,
    /// Changed certificate pairs refused (the previous one kept serving).
    pub rejected: AtomicU64,
}

impl TlsStats {
    /// A collector for the metrics registry that reads these counters at each scrape.
    pub(crate) fn collector(self: &Arc<Self>) -> prometheus::Result<TlsCollector> {
        let desc = TlsCollector::family().desc()?;
        Ok(TlsCollector {
            stats: Arc::clone(self),
            desc,
        })
    }
}

/// `modelgate_tls_cert_reloads_total{result}`: `ok` counts certificate sets swapped
/// in, `error` changed pairs refused (the previous pair kept serving).
pub(crate) struct TlsCollector {
    stats: Arc<TlsStats>,
    desc: prometheus::core::Desc,
}

impl TlsCollector {
    fn family() -> Family {
        Family::counter(
            "modelgate_tls_cert_reloads_total",
            "Certificate changes picked up (ok) or refused, the previous pair serving on (error).",
            &["result"],
        )
    }
}

impl prometheus::core::Collector for TlsCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut family = TlsCollector::family();
        for (result, n) in [
            ("ok", &self.stats.reloaded),
            ("error", &self.stats.rejected),
        ] {
            family.push(&[result], n.load(Ordering::Relaxed) as f64);
        }
        family.done().into_iter().collect()
    }
}

/// The HTTPS listener's certificates: loaded, served, and watched for changes.
pub(crate) struct Certs {
    pub resolver: Arc<SniResolver>,
    pub watcher: CertWatcher,
    pub stats: Arc<TlsStats>,
}

/// Loads and checks every certificate pair of `[tls]` for serving (none when absent),
/// with the warnings found. Errors and warnings read
/// `FILE: tls.certs: CERTFILE: what is wrong; how to fix it`.
pub(crate) fn load(config: &Config) -> Result<(Option<Certs>, Vec<String>), Vec<String>> {
    let Some(tls) = &config.tls else {
        return Ok((None, Vec::new()));
    };
    let file = config.source.display();
    let prefix = |m: String| format!("{file}: tls.certs: {m}");
    policy::check_provider().map_err(|e| vec![prefix(e)])?;
    let (set, warnings) = CertSet::load(&tls.certs, SystemTime::now()).map_err(|errors| {
        let hint = dev_hint(config, &tls.certs);
        errors
            .into_iter()
            .map(|e| prefix(format!("{e}{hint}")))
            .collect::<Vec<_>>()
    })?;
    let Some(store) = set.store() else {
        return Err(vec![prefix("no certificate pair; add at least one".into())]);
    };
    let resolver = Arc::new(SniResolver::new(store));
    let stats = Arc::new(TlsStats::default());
    let watcher = CertWatcher::new(
        tls.certs.clone(),
        set,
        Arc::clone(&resolver),
        Arc::clone(&stats),
    );
    Ok((
        Some(Certs {
            resolver,
            watcher,
            stats,
        }),
        warnings.into_iter().map(prefix).collect(),
    ))
}

/// For a certificate directory with no pair at all (missing or empty): how to make
/// development certificates for the config's hosts; empty otherwise.
fn dev_hint(config: &Config, certs: &CertSource) -> String {
    let CertSource::Dir(dir) = certs else {
        return String::new();
    };
    if source::pairs(certs).is_ok_and(|(pairs, _)| !pairs.is_empty()) {
        return String::new();
    }
    let mut names: Vec<String> = Vec::new();
    for r in &config.routes {
        let name = match &r.host {
            Some(HostMatch::Exact(h)) => h.clone(),
            Some(HostMatch::Wildcard(suffix)) => format!("'*{suffix}'"),
            None => continue,
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        names.push("localhost".into());
    }
    format!(
        "; for development, make a CA and a certificate with `modelgate cert --dir {} {}`",
        tidy(dir).display(),
        names.join(" ")
    )
}

/// `config/examples/../../certs` -> `certs` (lexically; for messages).
fn tidy(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in path.components() {
        match (c, out.last()) {
            (Component::CurDir, _) => {}
            (Component::ParentDir, Some(Component::Normal(_))) => {
                out.pop();
            }
            _ => out.push(c),
        }
    }
    if out.is_empty() {
        return ".".into();
    }
    out.iter().collect()
}
