//! A short human-readable rendering of a valid [`Config`], printed by `modelgate check`.

use std::fmt::Write;
use std::time::Duration;

use super::types::{AccessLog, BackendSource, CertSource, Config, HostMatch};

/// Listeners; one line per route (`name  host path → upstream  (extras)`); per
/// upstream a line of policy (balance, protocol, cap and queue, retries), a line of
/// health check and one line per backend.
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

    let _ = writeln!(out, "routes (host path → upstream):");
    let width = cfg.routes.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in &cfg.routes {
        let host = match &r.host {
            Some(HostMatch::Exact(h)) => h.clone(),
            Some(HostMatch::Wildcard(suffix)) => format!("*{suffix}"),
            None => "(any host)".to_string(),
        };
        let mut extras = Vec::new();
        let o = &r.openai;
        if !o.models.is_empty() {
            extras.push(format!("model {}", o.models.join("|")));
        }
        if !o.model_prefixes.is_empty() {
            extras.push(format!("model prefix {}", o.model_prefixes.join("|")));
        }
        if r.strip_prefix {
            extras.push("prefix stripped".to_string());
        }
        if r.rate_limit.is_some() {
            extras.push("rate limited".to_string());
        }
        if r.auth.is_some() {
            extras.push("auth".to_string());
        }
        let extras = if extras.is_empty() {
            String::new()
        } else {
            format!("  ({})", extras.join(", "))
        };
        let _ = writeln!(
            out,
            "  {:width$}  {host} {} → {}{extras}",
            r.name, r.path, r.upstream
        );
    }

    let _ = writeln!(out, "upstreams (→ backends):");
    for u in &cfg.upstreams {
        let queue = format!("queue {} for {}", u.queue.size, duration(u.queue.timeout));
        let cap = match (u.max_inflight_auto, u.max_inflight) {
            (Some(a), _) => format!("cap learned per backend ({}..{}), {queue}", a.min, a.max),
            (None, 0) => "no cap".to_string(),
            (None, n) => format!("cap {n} per backend, {queue}"),
        };
        let health = match &u.health {
            Some(h) => format!(
                "health GET {} every {} (down after {}, up after {})",
                h.path,
                duration(h.interval),
                h.unhealthy_after,
                h.healthy_after
            ),
            None => "no health check (backends serve at once)".to_string(),
        };
        let used_by: Vec<&str> = cfg
            .routes
            .iter()
            .filter(|r| r.upstream == u.name)
            .map(|r| r.name.as_str())
            .collect();
        let used_by = if used_by.is_empty() {
            " (no route uses it)".to_string()
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {}: {}, {}, {cap}, retries {}{used_by}",
            u.name,
            u.balance.name(),
            u.protocol.name(),
            u.retries,
        );
        let _ = writeln!(out, "    {health}");
        let mut backends: Vec<String> = Vec::new();
        let weighted = |b: &super::types::BackendAddr| match b.weight {
            1 => b.addr.to_string(),
            w => format!("{} (weight {w})", b.addr),
        };
        match &u.backends {
            BackendSource::Static(list) => backends.extend(list.iter().map(weighted)),
            BackendSource::Dns(d) => {
                backends.extend(d.names.iter().map(|n| {
                    format!(
                        "dns {n} (every address it resolves to; looked up every {}, not now)",
                        duration(d.every)
                    )
                }));
                backends.extend(d.fixed.iter().map(weighted));
            }
        }
        let last = backends.len().saturating_sub(1);
        for (i, b) in backends.iter().enumerate() {
            let branch = if i == last { "└─" } else { "├─" };
            let _ = writeln!(out, "    {branch} {b}");
        }
    }
    out
}

/// `30s`, `500ms`, `1.5s`, `5m`, `1h`.
pub(super) fn duration(d: Duration) -> String {
    let whole_secs = d.subsec_nanos() == 0 && !d.is_zero();
    match d.as_secs() {
        s if whole_secs && s % 3600 == 0 => format!("{}h", s / 3600),
        s if whole_secs && s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{d:?}"),
    }
}
