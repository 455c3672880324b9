//! The one path from a validated [`Config`] to what serves it, shared by `modelgate
//! check`, `modelgate run` and every reload, so a rule added here applies to all three.

use std::path::Path;

use crate::config::{Config, Listen, Log};
use crate::snapshot::Snapshot;
use crate::tls::{self, Certs};

/// Everything built from a config, not yet live.
pub struct Prepared {
    /// The next generation of routes and pools; publish it with [`Snapshot::publish`].
    pub(crate) snapshot: Snapshot,
    /// The HTTPS listener's certificates, when `[tls]` is set.
    pub(crate) certs: Option<Certs>,
    /// Problems that do not stop serving (a certificate close to expiry), each ready
    /// for an operator.
    pub warnings: Vec<String>,
}

/// Validates and builds everything `config` needs beyond its own file: pools (with
/// their certificate files), routes (key files, JWT keys), the `[tls]` certificates
/// and, after `previous`, that nothing only a restart can change has changed.
///
/// With `previous` (the live generation), kept upstreams and routes carry their
/// state over ([`Snapshot::build_next`]); nothing live changes until the snapshot
/// is published, so a refused config costs nothing.
///
/// Errors: every problem found, one operator-ready line each
/// (`FILE: key: what is wrong; what to do`).
pub fn prepare(config: &Config, previous: Option<&Snapshot>) -> Result<Prepared, Vec<String>> {
    let mut errors = Vec::new();
    if let Some(previous) = previous {
        errors.extend(Fixed::of(&previous.config).changes(&Fixed::of(config), &config.source));
        if !errors.is_empty() {
            return Err(errors);
        }
    }
    let snapshot = Snapshot::build_next(config, previous).map_err(|e| errors.extend(e));
    let certs = tls::load(config).map_err(|e| errors.extend(e));
    match (snapshot, certs) {
        (Ok(snapshot), Ok((certs, warnings))) if errors.is_empty() => Ok(Prepared {
            snapshot,
            certs,
            warnings,
        }),
        _ => Err(errors),
    }
}

/// Settings only a restart (or a graceful upgrade) can change.
#[derive(Debug, Clone, PartialEq)]
struct Fixed {
    listen: Listen,
    log: Log,
    tls: bool,
}

/// How a change message shows one setting.
type Show = fn(&Fixed) -> String;

/// Each setting a reload cannot change: its key, and how a message shows it.
const FIXED_KEYS: &[(&str, Show)] = &[
    ("listen.http", |f| addr(f.listen.http)),
    ("listen.https", |f| addr(f.listen.https)),
    ("listen.admin", |f| addr(f.listen.admin)),
    ("listen.admin_token_file", |f| {
        format!("{:?}", f.listen.admin_token_file)
    }),
    ("listen.redirect_http_to_https", |f| {
        f.listen.redirect_http_to_https.to_string()
    }),
    ("listen.shutdown_grace", |f| {
        format!("{:?}", f.listen.shutdown_grace)
    }),
    ("listen.workers", |f| f.listen.workers.to_string()),
    ("listen (connection and header limits)", |f| {
        format!("{:?}", f.listen.limits)
    }),
    ("log.access", |f| format!("{:?}", f.log.access)),
    ("tls", |f| if f.tls { "on" } else { "off" }.to_string()),
];

fn addr(a: Option<std::net::SocketAddr>) -> String {
    a.map_or("none".into(), |a| a.to_string())
}

impl Fixed {
    fn of(config: &Config) -> Fixed {
        Fixed {
            listen: config.listen.clone(),
            log: config.log.clone(),
            tls: config.tls.is_some(),
        }
    }

    /// One message per setting that differs, naming the key.
    fn changes(&self, next: &Fixed, file: &Path) -> Vec<String> {
        FIXED_KEYS
            .iter()
            .filter_map(|(key, show)| {
                let (from, to) = (show(self), show(next));
                (from != to).then(|| {
                    format!(
                        "{}: {key}: changed from {from} to {to}; this cannot be applied by a reload: \
                         restart modelgate, or start a new one with `modelgate run --upgrade` and send \
                         SIGQUIT to this one (graceful upgrade)",
                        file.display()
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Pick, Tried};

    fn config(src: &str) -> Config {
        match crate::config::parse(src, Path::new("t.toml")) {
            Ok(l) => l.config,
            Err(e) => panic!("{e}"),
        }
    }

    fn with_backends(http: &str, backends: &str) -> Config {
        config(&format!(
            "[listen]\nhttp = \"{http}\"\n[[route]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\n\
             [upstream.u]\nbackends = [{backends}]\n"
        ))
    }

    fn errors(config: &Config, previous: Option<&Snapshot>) -> Vec<String> {
        match prepare(config, previous) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e,
        }
    }

    #[test]
    fn every_build_error_is_reported_at_once() {
        let c = config(
            r#"
[listen]
http = "127.0.0.1:8080"
https = "127.0.0.1:8443"
[tls]
certs = "/nonexistent/certs"
[[route]]
name = "r"
path = "/"
upstream = "u"
auth = { api_keys_file = "/nonexistent/keys" }
[upstream.u]
backends = ["127.0.0.1:1"]
protocol = "https"
ca = "/nonexistent/ca.pem"
"#,
        );
        let e = errors(&c, None);
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(
            e[0].starts_with("t.toml: ") && e[0].contains("upstream.u.ca"),
            "{e:#?}"
        );
        assert!(e[1].contains("route[0].auth.api_keys_file"), "{e:#?}");
        assert!(e[2].contains("tls.certs"), "{e:#?}");
    }

    #[test]
    fn after_a_live_generation_restart_only_settings_are_refused() {
        let live = prepare(&with_backends("127.0.0.1:8080", "\"127.0.0.1:1\""), None)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .snapshot;
        let moved = with_backends("127.0.0.1:8081", "\"127.0.0.1:1\"");
        let e = errors(&moved, Some(&live));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with("t.toml: listen.http: changed from 127.0.0.1:8080 to 127.0.0.1:8081")
                && e[0].contains("modelgate run --upgrade"),
            "{}",
            e[0]
        );
        // The same file is fine for a first start (check, run).
        assert!(prepare(&moved, None).is_ok());
    }

    #[test]
    fn a_dropped_backend_stays_listed_as_draining_while_it_runs_requests() {
        let http = "127.0.0.1:8080";
        let first = prepare(
            &with_backends(http, "\"127.0.0.1:1\", \"127.0.0.1:2\""),
            None,
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
        .snapshot;
        let pool = first.pool("u").unwrap_or_else(|| panic!("no pool"));
        let Pick::Leased(lease) = pool.pick(&Tried::default(), 0) else {
            panic!("no backend picked");
        };
        let busy = lease.backend().label().to_string();
        let idle = if busy == "127.0.0.1:1" {
            "127.0.0.1:2"
        } else {
            "127.0.0.1:1"
        };
        // Both go; only the busy one drains. A third generation carries it over.
        let second = prepare(&with_backends(http, "\"127.0.0.1:3\""), Some(&first))
            .unwrap_or_else(|e| panic!("{e:?}"))
            .snapshot;
        let third = prepare(&with_backends(http, "\"127.0.0.1:4\""), Some(&second))
            .unwrap_or_else(|e| panic!("{e:?}"))
            .snapshot;
        for s in [&second, &third] {
            let draining: Vec<_> = s
                .draining()
                .map(|(u, b)| (u.to_string(), b.label().to_string()))
                .collect();
            assert_eq!(draining, [("u".to_string(), busy.clone())], "not {idle}");
        }
        drop(lease);
        assert_eq!(third.draining().count(), 0, "done: no longer listed");
    }
}
