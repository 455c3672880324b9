//! Turning TOML text into a validated [`Config`]: the document as a whole, `[listen]`, `[log]`,
//! `[tls]`, and the checks that span sections. Routes and upstreams have their own files.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;

use toml::de::DeTable;

use super::error::{ConfigError, ConfigErrors};
use super::reader::{Ctx, Field, TableReader};
use super::types::{AccessLog, CertPair, CertSource, Config, Listen, Log, Tls};
use super::{route, upstream, Loaded};

/// See [`super::parse`].
pub(crate) fn parse(src: &str, path: &Path) -> Result<Loaded, ConfigErrors> {
    let mut cx = Ctx::new(src, path);
    let (doc, syntax) = DeTable::parse_recoverable(src);
    if !syntax.is_empty() {
        // The recovered tree is incomplete; checking it would only add confusing follow-up errors.
        for e in &syntax {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().replace('\n', "; ");
            cx.error(&span, "", format!("invalid TOML: {msg}"));
        }
        return Err(sorted(cx.errors));
    }

    let mut root = TableReader::new(doc.get_ref(), doc.span(), String::new());
    let tls_field = root.take("tls");
    let tls = match &tls_field {
        Some(f) => read_tls(&mut cx, f).map(Some),
        None => Some(None),
    };
    let tls_span = tls_field.as_ref().map(Field::span);
    let listen = match root.take("listen") {
        Some(f) => read_listen(&mut cx, &f, tls_span.as_ref()),
        None => {
            cx.error(
                &root.span(),
                "listen",
                "missing; add a [listen] table with http = \"0.0.0.0:8080\"",
            );
            None
        }
    };
    let log = match root.take("log") {
        Some(f) => read_log(&mut cx, &f),
        None => Some(Log {
            access: AccessLog::Stderr,
        }),
    };
    let upstreams = upstream::read_all(&mut cx, root.take("upstream"));
    let names: Vec<&str> = upstreams.iter().map(|u| u.name).collect();
    let (routes, used) = route::read_all(&mut cx, &mut root, &names);
    root.finish(&mut cx);

    for u in &upstreams {
        if !used.contains(u.name) {
            cx.warn(
                &u.span,
                &u.path,
                "no route uses this upstream; add a [[route]] with upstream = \"NAME\" or remove it",
            );
        }
    }

    if !cx.errors.is_empty() {
        return Err(sorted(cx.errors));
    }
    let upstreams: Option<Vec<_>> = upstreams.into_iter().map(|u| u.value).collect();
    match (listen, log, tls, routes, upstreams) {
        (Some(listen), Some(log), Some(tls), Some(routes), Some(upstreams)) => {
            let config = Config {
                source: path.to_path_buf(),
                listen,
                log,
                tls,
                routes,
                upstreams,
            };
            super::advice::check(&mut cx, doc.get_ref(), &config);
            if !cx.errors.is_empty() {
                return Err(sorted(cx.errors));
            }
            Ok(Loaded {
                config,
                warnings: sorted(cx.warnings).0,
            })
        }
        // Unreachable: every `None` above comes with an error.
        _ => {
            cx.error(
                &(0..0),
                "",
                "internal error: incomplete configuration without an error",
            );
            Err(sorted(cx.errors))
        }
    }
}

/// Errors in file order (stable, so problems at one place keep their order).
fn sorted(mut errors: Vec<ConfigError>) -> ConfigErrors {
    errors.sort_by_key(|e| (e.line, e.col));
    ConfigErrors(errors)
}

const LISTEN_NAME_HINT: &str =
    "use an IP address, e.g. \"0.0.0.0:8080\" (all interfaces) or \"127.0.0.1:8080\" (this host only)";

/// `[listen]`. `tls_span` is where `[tls]` is, if present.
fn read_listen(
    cx: &mut Ctx<'_>,
    f: &Field<'_, '_>,
    tls_span: Option<&Range<usize>>,
) -> Option<Listen> {
    let mut t = cx.table(f, "[listen] with http = \"0.0.0.0:8080\"")?;
    let http_f = t.take("http");
    let https_f = t.take("https");
    let admin_f = t.take("admin");
    let token_f = t.take("admin_token_file");
    let redirect_f = t.take("redirect_http_to_https");
    let mut bound: Vec<(&str, SocketAddr)> = Vec::new();
    let mut listener = |cx: &mut Ctx<'_>,
                        name: &'static str,
                        field: &Option<Field<'_, '_>>,
                        example: &str| {
        let f = field.as_ref()?;
        let a = cx.addr(f, example, LISTEN_NAME_HINT)?;
        if let Some((other, b)) = bound.iter().find(|(_, b)| same_socket(a, *b)) {
            cx.error(
                &f.span(),
                &f.path,
                format!("{a} collides with listen.{other} ({b}); give each listener its own port"),
            );
        }
        bound.push((name, a));
        Some(a)
    };
    let http = listener(cx, "http", &http_f, "0.0.0.0:8080");
    let https = listener(cx, "https", &https_f, "0.0.0.0:8443");
    let admin = listener(cx, "admin", &admin_f, "127.0.0.1:9901");
    let admin_token_file = token_f.as_ref().and_then(|f| cx.path(f, "admin.token"));
    let redirect = redirect_f
        .as_ref()
        .and_then(|f| cx.bool(f))
        .unwrap_or(false);
    let shutdown_grace = t
        .take("shutdown_grace")
        .map_or(Some(super::DEFAULT_SHUTDOWN_GRACE), |f| {
            cx.duration(&f, true)
        });
    let workers = t.take("workers").map_or(Some(0), |f| {
        cx.uint(&f, 0, 1024, "use 0 for one per CPU core")
    });
    let limits = super::edge::read_limits(cx, &mut t);

    if http_f.is_none() && https_f.is_none() {
        cx.error(
            &t.span(),
            "listen",
            "no listener; set http = \"0.0.0.0:8080\" and/or https = \"0.0.0.0:8443\" in [listen]",
        );
    }
    match (&https_f, tls_span) {
        (Some(f), None) => cx.error(
            &f.span(),
            &f.path,
            "https needs certificates; add a [tls] table with certs = \"certs\" (a directory of NAME.crt + NAME.key files)",
        ),
        (None, Some(span)) => cx.warn(
            span,
            "tls",
            "[tls] is unused because listen.https is not set; add https = \"0.0.0.0:8443\" to [listen] or remove [tls]",
        ),
        _ => {}
    }
    if let (Some(a), Some(f), None) = (admin, &admin_f, &token_f) {
        if !a.ip().is_loopback() {
            cx.error(
                &f.span(),
                &f.path,
                format!("{a} is reachable from other hosts; bind admin to 127.0.0.1 or set listen.admin_token_file"),
            );
        }
    }
    // Read now, so `check` refuses what `run` would: a missing or empty token file.
    if let (Some(_), Some(f), Some(path)) = (admin, &token_f, &admin_token_file) {
        if let Err(e) = crate::admin::read_token(path) {
            cx.error(
                &f.span(),
                &f.path,
                format!("{e}, or remove admin_token_file and bind admin to 127.0.0.1"),
            );
        }
    }
    if let (None, Some(f)) = (&admin_f, &token_f) {
        cx.warn(
            &f.span(),
            &f.path,
            "unused because listen.admin is not set; add admin = \"127.0.0.1:9901\" or remove it",
        );
    }
    if let (true, Some(f)) = (redirect, &redirect_f) {
        if http_f.is_none() || https_f.is_none() {
            cx.error(
                &f.span(),
                &f.path,
                "redirecting needs both listen.http and listen.https; set both or use false",
            );
        }
    }
    t.finish(cx);
    Some(Listen {
        http,
        https,
        admin,
        admin_token_file,
        redirect_http_to_https: redirect,
        shutdown_grace: shutdown_grace?,
        workers: workers?,
        limits: limits?,
    })
}

/// Two binds that would conflict: same port, and the same IP or one of them a wildcard.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `[log]`.
fn read_log(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<Log> {
    let mut t = cx.table(f, "[log] with access = \"stderr\"")?;
    let access = match t.take("access") {
        None => Some(AccessLog::Stderr),
        Some(f) => cx
            .nonempty(
                &f,
                "\"stderr\", \"off\" or a file path such as \"access.log\"",
            )
            .map(|s| match s {
                "stderr" => AccessLog::Stderr,
                "off" => AccessLog::Off,
                path => AccessLog::File(cx.resolve(path)),
            }),
    };
    t.finish(cx);
    Some(Log { access: access? })
}

/// `[tls]`.
fn read_tls(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<Tls> {
    let mut t = cx.table(f, "[tls] with certs = \"certs\"")?;
    let certs = t
        .require(
            cx,
            "certs",
            "certs = \"certs\" (a directory of NAME.crt + NAME.key files)",
        )
        .and_then(|f| read_certs(cx, &f));
    t.finish(cx);
    Some(Tls { certs: certs? })
}

/// `tls.certs`: a directory, or a list of `{ cert, key, default }`.
fn read_certs(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<CertSource> {
    const LIST_EXAMPLE: &str = "[{ cert = \"api.crt\", key = \"api.key\", default = true }]";
    if f.value.get_ref().is_str() {
        return cx.path(f, "certs").map(CertSource::Dir);
    }
    if !f.value.get_ref().is_array() {
        cx.expected(
            f,
            &format!("a directory such as \"certs\" or a list such as {LIST_EXAMPLE}"),
            "",
        );
        return None;
    }
    let items = cx.array(f, LIST_EXAMPLE)?;
    if items.is_empty() {
        cx.error(
            &f.span(),
            &f.path,
            format!("the list is empty; add at least one pair, e.g. {LIST_EXAMPLE}"),
        );
        return None;
    }
    let mut pairs = Some(Vec::new());
    let mut first_default: Option<String> = None;
    for item in &items {
        let pair = cx.table(item, "{ cert = \"api.crt\", key = \"api.key\" }").and_then(|mut t| {
            let cert = t.require(cx, "cert", "cert = \"api.crt\"").and_then(|f| cx.path(&f, "api.crt"));
            let key = t.require(cx, "key", "key = \"api.key\"").and_then(|f| cx.path(&f, "api.key"));
            let default = match t.take("default") {
                Some(f) => {
                    let d = cx.bool(&f);
                    if d == Some(true) {
                        match &first_default {
                            Some(first) => cx.error(
                                &f.span(),
                                &f.path,
                                format!("{first} is already the default; only one pair may set default = true"),
                            ),
                            None => first_default = Some(item.path.clone()),
                        }
                    }
                    d
                }
                None => Some(false),
            };
            t.finish(cx);
            Some(CertPair {
                cert: cert?,
                key: key?,
                default: default?,
            })
        });
        pairs = pairs.zip(pair).map(|(mut v, p)| {
            v.push(p);
            v
        });
    }
    pairs.map(CertSource::List)
}
