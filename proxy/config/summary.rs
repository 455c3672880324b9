//! A short human-readable rendering of a valid [`Config`], printed by `modelgate check`.

use std::fmt::Write;
use std::time::Duration;

use super::types::{AccessLog, BackendSource, CertSource, Config, HostMatch};

/// Listeners, then one line per route (`name: host path -> upstream`), then one line per
/// upstream (`name (balance, protocol, max_inflight N): backends`).
pub fn summary(cfg: &Config) -> String {
    let mut out = String::new();
    let l = &cfg.listen;
    let mut listeners = Vec::new();
    if let Some(a) = l.http {
        listeners.push(format!("http {a}"));
    }
    if let Some(a) = l.https {
        let certs = match cfg.tls.as_ref().map(|t| &t.certs) {
            Some(CertSource::Dir(d)) => format!(" (certs from {})", d.display()),
            Some(CertSource::List(pairs)) => format!(" ({} cert pairs)", pairs.len()),
            None => String::new(),
        };
        listeners.push(format!("https {a}{certs}"));
    }
    if let Some(a) = l.admin {
        listeners.push(format!("admin {a}"));
    }
    let _ = writeln!(out, "listen: {}", listeners.join(", "));
    let access = match &cfg.log.access {
        AccessLog::Stderr => "stderr".to_string(),
        AccessLog::Off => "off".to_string(),
        AccessLog::File(p) => p.display().to_string(),
    };
    let workers = match l.workers {
        0 => "one per core".to_string(),
        n => n.to_string(),
    };
    let _ = writeln!(
        out,
        "workers: {workers}, shutdown grace {}, access log {access}",
        duration(l.shutdown_grace)
    );

    let _ = writeln!(out, "routes:");
    for r in &cfg.routes {
        let host = match &r.host {
            Some(HostMatch::Exact(h)) => h.clone(),
            Some(HostMatch::Wildcard(suffix)) => format!("*{suffix}"),
            None => "(any host)".to_string(),
        };
        let _ = writeln!(out, "  {}: {host} {} -> {}", r.name, r.path, r.upstream);
    }

    let _ = writeln!(out, "upstreams:");
    for u in &cfg.upstreams {
        let inflight = match (u.max_inflight_auto, u.max_inflight) {
            (Some(a), _) => format!("auto {}..{}", a.min, a.max),
            (None, 0) => "unlimited".to_string(),
            (None, n) => n.to_string(),
        };
        let backends = match &u.backends {
            BackendSource::Static(list) => list
                .iter()
                .map(|b| format!("{} (weight {})", b.addr, b.weight))
                .collect::<Vec<_>>()
                .join(", "),
            BackendSource::Dns(d) => {
                let mut parts: Vec<String> = d.names.iter().map(|n| format!("dns {n}")).collect();
                parts.extend(
                    d.fixed
                        .iter()
                        .map(|b| format!("{} (weight {})", b.addr, b.weight)),
                );
                format!(
                    "{} (names resolved every {}, not now)",
                    parts.join(", "),
                    duration(d.every)
                )
            }
        };
        let _ = writeln!(
            out,
            "  {} ({}, {}, max_inflight {inflight}): {backends}",
            u.name,
            u.balance.name(),
            u.protocol.name()
        );
    }
    out
}

/// `30s`, `500ms`, `1.5s`, `5m`, `1h`.
fn duration(d: Duration) -> String {
    let whole_secs = d.subsec_nanos() == 0 && !d.is_zero();
    match d.as_secs() {
        s if whole_secs && s % 3600 == 0 => format!("{}h", s / 3600),
        s if whole_secs && s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{d:?}"),
    }
}
