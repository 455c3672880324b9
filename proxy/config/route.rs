//! Reading and checking the `[[route]]` array: names, host and path matching, the upstream
//! reference, body limits, rate limits and authentication.

use std::collections::{HashMap, HashSet};

use super::edge;
use super::reader::{suggest, Ctx, Field, TableReader};
use super::types::{HostMatch, Route};

const ROUTE_EXAMPLE: &str =
    "[[route]] with name = \"chat\", path = \"/v1/chat\", upstream = \"NAME\"";

/// All routes, in file order (`None` if any is invalid), and the upstream names they refer to.
pub(crate) fn read_all(
    cx: &mut Ctx<'_>,
    root: &mut TableReader<'_, '_>,
    upstreams: &[&str],
) -> (Option<Vec<Route>>, HashSet<String>) {
    let used = HashSet::new();
    let Some(f) = root.take("route") else {
        cx.error(
            &root.span(),
            "route",
            format!("missing; add at least one {ROUTE_EXAMPLE}"),
        );
        return (None, used);
    };
    if f.value.get_ref().is_table() {
        cx.error(
            &f.span(),
            &f.path,
            "routes are a list; write each one as [[route]] (double brackets), not [route]",
        );
        return (None, used);
    }
    let Some(items) = cx.array(&f, ROUTE_EXAMPLE) else {
        return (None, used);
    };
    if items.is_empty() {
        cx.error(
            &f.span(),
            &f.path,
            format!("the list is empty; add at least one {ROUTE_EXAMPLE}"),
        );
        return (None, used);
    }
    let mut seen = Seen::default();
    let mut routes = Some(Vec::new());
    for item in &items {
        let route = cx.table(item, ROUTE_EXAMPLE).and_then(|mut t| {
            let r = read_one(cx, &mut t, upstreams, &mut seen);
            t.finish(cx);
            r
        });
        routes = routes.zip(route).map(|(mut v, r)| {
            v.push(r);
            v
        });
    }
    (routes, seen.upstreams)
}

/// Host, path, model name or prefix, and `true` for a prefix.
type ModelKey = (Option<HostMatch>, String, String, bool);

/// What earlier routes used, to catch duplicates: values map to `(route[i], line)`.
#[derive(Default)]
struct Seen {
    names: HashMap<String, (String, usize)>,
    matches: HashMap<(Option<HostMatch>, String), (String, usize)>,
    /// Model names and prefixes per host and path.
    models: HashMap<ModelKey, (String, usize)>,
    upstreams: HashSet<String>,
}

/// Records `key` as used by the route whose table is `t`; if an earlier route used it, reports
/// an error at `f` ("{what} is already used by route[i] (line n); {fix}").
fn first_use<K: std::hash::Hash + Eq>(
    cx: &mut Ctx<'_>,
    seen: &mut HashMap<K, (String, usize)>,
    key: K,
    t: &TableReader<'_, '_>,
    f: &Field<'_, '_>,
    what: &str,
    fix: &str,
) {
    if let Some((route, line)) = seen.get(&key) {
        cx.error(
            &f.span(),
            &f.path,
            format!("{what} is already used by {route} (line {line}); {fix}"),
        );
    } else {
        let line = cx.line(&t.span());
        seen.insert(key, (t.path().to_string(), line));
    }
}

/// One `[[route]]` table; records what it uses in `seen`.
fn read_one(
    cx: &mut Ctx<'_>,
    t: &mut TableReader<'_, '_>,
    upstreams: &[&str],
    seen: &mut Seen,
) -> Option<Route> {
    let name = t.require(cx, "name", "name = \"chat\"").and_then(|f| {
        let name = cx
            .nonempty(&f, "a route name such as \"chat\"")?
            .to_string();
        let what = format!("route name {name:?}");
        first_use(
            cx,
            &mut seen.names,
            name.clone(),
            t,
            &f,
            &what,
            "give each route a unique name",
        );
        Some(name)
    });
    let host = match t.take("host") {
        Some(f) => read_host(cx, &f).map(Some),
        None => Some(None),
    };
    // Routes sharing a host and path may differ in the models they match.
    let (openai, model_keys) = super::openai::read_route(cx, t);
    let path = t
        .require(
            cx,
            "path",
            "path = \"/v1/chat\" (a prefix starting with \"/\")",
        )
        .and_then(|f| {
            let path = cx.http_path(&f, "/v1/chat")?;
            if let (Some(host), true) = (&host, model_keys.present) {
                let names = model_keys.names.iter().map(|m| (m, false));
                let prefixes = model_keys.prefixes.iter().map(|m| (m, true));
                for (name, prefix) in names.chain(prefixes) {
                    let key = if prefix { "model_prefix" } else { "model" };
                    let what = format!("{key} {name:?} under path {path:?}");
                    let fix = "each model goes to one route per host and path; remove it from one";
                    let k = (host.clone(), path.clone(), name.clone(), prefix);
                    first_use(cx, &mut seen.models, k, t, &f, &what, fix);
                }
            } else if let Some(host) = &host {
                let what = match host {
                    Some(HostMatch::Exact(h)) => format!("path {path:?} with host {h:?}"),
                    Some(HostMatch::Wildcard(h)) => format!("path {path:?} with host \"*{h}\""),
                    None => format!("path {path:?} without host"),
                };
                let fix = "routes must differ in host or path; change one or remove the duplicate";
                first_use(
                    cx,
                    &mut seen.matches,
                    (host.clone(), path.clone()),
                    t,
                    &f,
                    &what,
                    fix,
                );
            }
            Some(path)
        });
    let upstream = t
        .require(cx, "upstream", "upstream = \"NAME\" (an [upstream.NAME] defined in this file)")
        .and_then(|f| {
            let name = cx.nonempty(&f, "the name of an [upstream.NAME] table")?;
            seen.upstreams.insert(name.to_string());
            if upstreams.contains(&name) {
                return Some(name.to_string());
            }
            let msg = if upstreams.is_empty() {
                format!("upstream {name:?} is not defined, and no upstreams are; add [upstream.{name}] with backends = [\"127.0.0.1:9001\"]")
            } else {
                let guess = suggest(name, upstreams.iter().copied())
                    .map(|g| format!("did you mean {g:?}? "))
                    .unwrap_or_default();
                format!(
                    "upstream {name:?} is not defined; {guess}defined upstreams: {}",
                    upstreams.join(", ")
                )
            };
            cx.error(&f.span(), &f.path, msg);
            None
        });
    let strip_prefix = t.take("strip_prefix").map_or(Some(false), |f| cx.bool(&f));
    let max_body = match t.take("max_body") {
        Some(f) => cx.size(&f).and_then(|n| {
            if n == 0 {
                cx.error(
                    &f.span(),
                    &f.path,
                    "must be greater than 0, e.g. \"20MiB\"; leave max_body out for no limit",
                );
                return None;
            }
            Some(Some(n))
        }),
        None => Some(None),
    };
    let auth_f = t.take("auth");
    let auth = match &auth_f {
        Some(f) => edge::read_auth(cx, f).map(Some),
        None => Some(None),
    };
    let rate_limit = match t.take("rate_limit") {
        Some(f) => edge::read_rate_limit(cx, &f, auth_f.is_some()).map(Some),
        None => Some(None),
    };
    Some(Route {
        name: name?,
        host: host?,
        path: path?,
        upstream: upstream?,
        strip_prefix: strip_prefix?,
        max_body: max_body?,
        rate_limit: rate_limit?,
        auth: auth?,
        openai: openai?,
    })
}

/// `host = "api.example.com"` or `"*.example.com"`, lower-cased.
fn read_host(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<HostMatch> {
    const EXPECTED: &str = "a host name such as \"api.example.com\" or \"*.example.com\"";
    let host = cx.nonempty(f, EXPECTED)?.to_ascii_lowercase();
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    let hint = if name.contains(':') {
        "remove the port; routes match the host name only"
    } else if name.contains('*') {
        "`*` is only allowed as the whole first label, as in \"*.example.com\""
    } else if name.split('.').any(|label| {
        label.is_empty()
            || !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }) {
        "use letters, digits, '-' and '.' only"
    } else if wildcard {
        return Some(HostMatch::Wildcard(format!(".{name}")));
    } else {
        return Some(HostMatch::Exact(name.to_string()));
    };
    cx.expected(f, EXPECTED, hint);
    None
}
