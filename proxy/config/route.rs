//! Reading and checking the `[[route]]` array: names, host and path matching, the upstream
//! reference, body limits, rate limits and authentication.

use std::collections::{HashMap, HashSet};

use super::reader::{suggest, Ctx, Field, TableReader};
use super::types::{Auth, HostMatch, RateLimit, RequestKey, Route};

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
    let rate_limit = match t.take("rate_limit") {
        Some(f) => read_rate_limit(cx, &f).map(Some),
        None => Some(None),
    };
    let auth = match t.take("auth") {
        Some(f) => read_auth(cx, &f).map(Some),
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

/// `rate_limit = { requests_per_second = 50, burst = 100, key = "ip" }`.
fn read_rate_limit(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<RateLimit> {
    let mut t = cx.table(f, "{ requests_per_second = 50, burst = 100, key = \"ip\" }")?;
    let rps = t
        .require(cx, "requests_per_second", "requests_per_second = 50")
        .and_then(|f| cx.positive_number(&f, "e.g. requests_per_second = 50 or 0.5"));
    let burst = match t.take("burst") {
        Some(f) => cx.uint(
            &f,
            1,
            i128::from(u32::MAX),
            "the most requests allowed at once, e.g. 100",
        ),
        // Default: one second's worth of requests. The cast saturates.
        None => rps.map(|r| r.ceil().clamp(1.0, f64::from(u32::MAX)) as u32),
    };
    let key = t
        .take("key")
        .map_or(Some(RequestKey::ClientAddr), |f| cx.request_key(&f));
    t.finish(cx);
    Some(RateLimit {
        requests_per_second: rps?,
        burst: burst?,
        key: key?,
    })
}

/// `auth = { api_keys_file = "keys.txt" }` or `{ jwt = { secret_env = "VAR" } }` or
/// `{ jwt = { public_key = "key.pem" } }`.
fn read_auth(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<Auth> {
    const EXAMPLE: &str =
        "{ api_keys_file = \"keys.txt\" } or { jwt = { secret_env = \"JWT_SECRET\" } }";
    let mut t = cx.table(f, EXAMPLE)?;
    let keys_f = t.take("api_keys_file");
    let jwt_f = t.take("jwt");
    let keys = keys_f
        .as_ref()
        .and_then(|f| cx.path(f, "keys.txt").map(Auth::ApiKeysFile));
    let jwt = jwt_f.as_ref().and_then(|f| read_jwt(cx, f));
    let auth = match (&keys_f, &jwt_f) {
        (Some(_), None) => keys,
        (None, Some(_)) => jwt,
        (Some(_), Some(f)) => {
            cx.error(
                &f.span(),
                &f.path,
                "use either api_keys_file or jwt, not both; remove one of them",
            );
            None
        }
        (None, None) => {
            cx.error(&t.span(), t.path(), format!("is empty; write {EXAMPLE}"));
            None
        }
    };
    t.finish(cx);
    auth
}

/// `jwt = { secret_env = "VAR" }` or `{ public_key = "file.pem" }`.
fn read_jwt(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<Auth> {
    const EXAMPLE: &str = "{ secret_env = \"JWT_SECRET\" } or { public_key = \"jwt.pem\" }";
    let mut t = cx.table(f, EXAMPLE)?;
    let env_f = t.take("secret_env");
    let key_f = t.take("public_key");
    let env = env_f.as_ref().and_then(|f| {
        let expected = "an environment variable name such as \"JWT_SECRET\"";
        let name = cx.nonempty(f, expected)?;
        let valid = !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            cx.expected(f, expected, "");
            return None;
        }
        Some(Auth::JwtSecretEnv(name.to_string()))
    });
    let key = key_f
        .as_ref()
        .and_then(|f| cx.path(f, "jwt.pem").map(Auth::JwtPublicKey));
    let jwt = match (&env_f, &key_f) {
        (Some(_), None) => env,
        (None, Some(_)) => key,
        (Some(_), Some(f)) => {
            cx.error(
                &f.span(),
                &f.path,
                "use either secret_env or public_key, not both; remove one of them",
            );
            None
        }
        (None, None) => {
            cx.error(
                &t.span(),
                t.path(),
                format!("is empty; write jwt = {EXAMPLE}"),
            );
            None
        }
    };
    t.finish(cx);
    jwt
}
