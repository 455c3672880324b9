//! Checks across a valid configuration's routes and upstreams: settings that each
//! parse but together cannot do what they say (warnings), or contradict each other
//! (errors). Each message is placed at the key it is about, found again in the TOML
//! tree, and names the fix.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::reader::{join, Ctx};
use super::schedule::FairShare;
use super::summary::duration;
use super::types::{Api, Config, HostMatch, Route, Upstream};

/// One step of a key path in the TOML tree: a key, or an array index.
#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    At(usize),
}

/// How many steps of `path` are present in `doc`, and the span of the last of them
/// (0..0 if not even the first).
fn walk(doc: &DeTable<'_>, path: &[Step<'_>]) -> (usize, Range<usize>) {
    let mut found = (0, 0..0);
    let mut table = Some(doc);
    let mut array: Option<&[toml::Spanned<DeValue<'_>>]> = None;
    for (n, step) in path.iter().enumerate() {
        let value = match (*step, table, array) {
            (Step::Key(k), Some(t), _) => t.get(k),
            (Step::At(i), _, Some(a)) => a.get(i),
            _ => None,
        };
        let Some(v) = value else {
            break;
        };
        found = (n + 1, v.span());
        (table, array) = match v.get_ref() {
            DeValue::Table(t) => (Some(t), None),
            DeValue::Array(a) => (None, Some(&a[..])),
            _ => (None, None),
        };
    }
    found
}

/// The span of the deepest value of `path` present in `doc`, so a message lands on
/// the key itself or, when it was left out, on the table that left it out.
fn span(doc: &DeTable<'_>, path: &[Step<'_>]) -> Range<usize> {
    walk(doc, path).1
}

/// The span of `path`'s value, if the file sets it.
fn find(doc: &DeTable<'_>, path: &[Step<'_>]) -> Option<Range<usize>> {
    let (n, at) = walk(doc, path);
    (n == path.len()).then_some(at)
}

/// `upstream.NAME.key...` as messages name it.
fn upstream_path(name: &str, keys: &[&str]) -> String {
    keys.iter()
        .fold(join("upstream", name), |path, k| join(&path, k))
}

/// Runs every check; warnings and errors go to `cx`.
pub(super) fn check(cx: &mut Ctx<'_>, doc: &DeTable<'_>, config: &Config) {
    for u in &config.upstreams {
        let routes: Vec<&Route> = config
            .routes
            .iter()
            .filter(|r| r.upstream == u.name)
            .collect();
        consumer_without_auth(cx, doc, u, &routes);
        class_queues(cx, doc, u);
        hold_without_health(cx, doc, u);
    }
    for (i, r) in config.routes.iter().enumerate() {
        if let Some(u) = config.upstreams.iter().find(|u| u.name == r.upstream) {
            keepalive_without_waiting(cx, doc, i, r, u);
        }
    }
    shadowed_model_routes(cx, doc, &config.routes);
    empty_model_lists(cx, doc, config);
}

/// `fair_share = "consumer"` where no route to the upstream has `auth`: every request
/// would be the same requester (refused, as `rate_limit` `key = "consumer"` is). Where
/// only some routes have it, the others' requests are one requester together (warned).
fn consumer_without_auth(cx: &mut Ctx<'_>, doc: &DeTable<'_>, u: &Upstream, routes: &[&Route]) {
    if u.fair_share != Some(FairShare::Consumer) {
        return;
    }
    let open: Vec<String> = routes
        .iter()
        .filter(|r| r.auth.is_none())
        .map(|r| format!("{:?}", r.name))
        .collect();
    // An upstream no route uses is warned about as such.
    if open.is_empty() {
        return;
    }
    let at = span(
        doc,
        &[
            Step::Key("upstream"),
            Step::Key(&u.name),
            Step::Key("fair_share"),
        ],
    );
    let key = upstream_path(&u.name, &["fair_share"]);
    if open.len() == routes.len() {
        cx.error(
            &at,
            &key,
            "\"consumer\" needs auth on a route to this upstream (the consumer is the API key's name \
             or the JWT's sub), and none has it, so every request would be one requester; add \
             auth = { api_keys_file = \"keys.txt\" } to its routes or use fair_share = \"header:NAME\"",
        );
    } else {
        cx.warn(
            &at,
            &key,
            format!(
                "\"consumer\" is the client a route's auth accepted, and route{} {} to this \
                 upstream {} no auth, so all {} requests count as one requester and share one \
                 fair share against each consumer; add auth to {} or use fair_share = \"header:NAME\"",
                if open.len() == 1 { "" } else { "s" },
                open.join(", "),
                if open.len() == 1 { "has" } else { "have" },
                if open.len() == 1 { "its" } else { "their" },
                if open.len() == 1 { "it" } else { "them" },
            ),
        );
    }
}

/// Per-class queues that cannot work as written: a timeout shorter than the starvation
/// bound (its requests time out before `max_wait_behind` promotes them), a size above
/// the upstream's queue size (which bounds all classes together).
fn class_queues(cx: &mut Ctx<'_>, doc: &DeTable<'_>, u: &Upstream) {
    let Some(p) = &u.priority else {
        return;
    };
    let base = [Step::Key("upstream"), Step::Key(&u.name)];
    // The class's own queue key, if it sets one (else it has the upstream's).
    let own = |i: usize, key: &'static str| {
        let path = [
            base[0],
            base[1],
            Step::Key("priority"),
            Step::Key("classes"),
            Step::At(i),
            Step::Key("queue"),
            Step::Key(key),
        ];
        find(doc, &path)
    };
    let wait = duration(p.max_wait_behind);
    let mut inherited_short = Vec::new();
    // The highest class is served first anyway: only lower ones need promoting.
    for (i, c) in p.classes.iter().enumerate().skip(1) {
        if c.queue.timeout >= p.max_wait_behind {
            continue;
        }
        match own(i, "timeout") {
            Some(at) => cx.warn(
                &at,
                &format!("{}[{i}].queue.timeout", upstream_path(&u.name, &["priority", "classes"])),
                format!(
                    "class {:?} waits at most {} but is promoted only after max_wait_behind = {wait}: \
                     its requests time out before the starvation bound serves them; \
                     raise this timeout above {wait} or lower max_wait_behind",
                    c.name,
                    duration(c.queue.timeout)
                ),
            ),
            None => inherited_short.push(format!("{:?}", c.name)),
        }
    }
    if !inherited_short.is_empty() {
        let timeout = [base[0], base[1], Step::Key("queue"), Step::Key("timeout")];
        let mwb = [
            base[0],
            base[1],
            Step::Key("priority"),
            Step::Key("max_wait_behind"),
        ];
        let (at, key) = if let Some(at) = find(doc, &timeout) {
            (at, upstream_path(&u.name, &["queue", "timeout"]))
        } else {
            (
                span(doc, &mwb),
                upstream_path(&u.name, &["priority", "max_wait_behind"]),
            )
        };
        cx.warn(
            &at,
            &key,
            format!(
                "classes {} wait at most {} (the upstream's queue.timeout) but are promoted only \
                 after max_wait_behind = {wait}: their requests time out before the starvation \
                 bound serves them; raise queue.timeout above {wait} or lower max_wait_behind",
                inherited_short.join(", "),
                duration(u.queue.timeout)
            ),
        );
    }
    for (i, c) in p.classes.iter().enumerate() {
        if c.queue.size <= u.queue.size {
            continue;
        }
        if let Some(at) = own(i, "size") {
            cx.warn(
                &at,
                &format!("{}[{i}].queue.size", upstream_path(&u.name, &["priority", "classes"])),
                format!(
                    "{} is above the upstream's queue.size ({}), which bounds all classes together, \
                     so at most {} of class {:?} ever wait; lower it to {} or raise the upstream's queue.size",
                    c.queue.size, u.queue.size, u.queue.size, c.name, u.queue.size
                ),
            );
        }
    }
}

/// `hold` without health checks: replicas count as ready as soon as they are listed.
fn hold_without_health(cx: &mut Ctx<'_>, doc: &DeTable<'_>, u: &Upstream) {
    if u.hold.is_none() || u.health.is_some() {
        return;
    }
    let at = span(
        doc,
        &[Step::Key("upstream"), Step::Key(&u.name), Step::Key("hold")],
    );
    cx.warn(
        &at,
        &upstream_path(&u.name, &["hold"]),
        format!(
            "hold without health checks: a replica counts as ready as soon as it is listed, so \
             requests are sent to replicas still starting instead of held (only ejected replicas, \
             or a name resolving to none, make the upstream cold); add [upstream.{}.health] \
             with path = \"/health\"",
            u.name
        ),
    );
}

/// `sse_keepalive` on a route whose upstream never makes a request wait, or whose
/// every wait (the queue's timeout, the longest class's; `hold`) ends before the
/// interval: each wait starts its own interval, so the keep-alive never fires.
fn keepalive_without_waiting(
    cx: &mut Ctx<'_>,
    doc: &DeTable<'_>,
    i: usize,
    r: &Route,
    u: &Upstream,
) {
    let Some(every) = r.openai.sse_keepalive else {
        return;
    };
    let capped = u.max_inflight > 0 || u.max_inflight_auto.is_some();
    let at = span(
        doc,
        &[Step::Key("route"), Step::At(i), Step::Key("sse_keepalive")],
    );
    let key = format!("route[{i}].sse_keepalive");
    if !capped && u.hold.is_none() {
        cx.warn(
            &at,
            &key,
            format!(
                "can never fire: upstream {:?} has no max_inflight and no hold, so no request ever \
                 waits for a replica; set max_inflight = N or \"auto\" (or hold = \"60s\") on \
                 [upstream.{}], or remove sse_keepalive",
                u.name, u.name
            ),
        );
        return;
    }
    // The longest time a request waits in one go: in the queue for a slot, or held.
    let mut waits = Vec::new();
    let mut longest = std::time::Duration::ZERO;
    if capped {
        let (queued, what) = match &u.priority {
            Some(p) => (
                p.classes
                    .iter()
                    .map(|c| c.queue.timeout)
                    .max()
                    .unwrap_or(u.queue.timeout),
                "the longest class queue.timeout",
            ),
            None => (u.queue.timeout, "queue.timeout"),
        };
        waits.push(format!("{what} is {}", duration(queued)));
        longest = longest.max(queued);
    }
    if let Some(hold) = u.hold {
        waits.push(format!("hold is {}", duration(hold)));
        longest = longest.max(hold);
    }
    if longest >= every {
        return;
    }
    cx.warn(
        &at,
        &key,
        format!(
            "can never fire: every wait for a replica of upstream {:?} ends before {} ({}), \
             so no stream is ever kept alive; set sse_keepalive below {}, or raise the wait \
             on [upstream.{}]",
            u.name,
            duration(every),
            waits.join(", "),
            duration(longest),
            u.name
        ),
    );
}

/// The `/v1/models` path a route path serves (`/v1` → `/v1/models`, `/openai` →
/// `/openai/v1/models`), or none for a path inside the API (`/v1/chat`).
fn models_path(path: &str) -> Option<String> {
    let base = path.trim_end_matches('/');
    if base.ends_with("/v1") {
        Some(format!("{base}/models"))
    } else if base.contains("/v1/") {
        None
    } else {
        Some(format!("{base}/v1/models"))
    }
}

/// An `api = "openai"` endpoint (host and path) where no route names a `model` and no
/// route's upstream lists its replicas' models (`health.models`): modelgate's
/// `/v1/models` there is always an empty list, and SDKs that discover models find none.
fn empty_model_lists(cx: &mut Ctx<'_>, doc: &DeTable<'_>, config: &Config) {
    let routes = &config.routes;
    for (i, r) in routes.iter().enumerate() {
        if r.openai.api != Api::OpenAi {
            continue;
        }
        let same = |o: &Route| o.host == r.host && o.path == r.path;
        // Once per endpoint, at its first openai route.
        if routes[..i]
            .iter()
            .any(|o| same(o) && o.openai.api == Api::OpenAi)
        {
            continue;
        }
        let Some(list) = models_path(&r.path) else {
            continue;
        };
        let group: Vec<&Route> = routes.iter().filter(|o| same(o)).collect();
        let listed = group.iter().any(|o| {
            !o.openai.models.is_empty()
                || config
                    .upstreams
                    .iter()
                    .any(|u| u.name == o.upstream && u.health.as_ref().is_some_and(|h| h.models))
        });
        if listed {
            continue;
        }
        let at = span(doc, &[Step::Key("route"), Step::At(i), Step::Key("api")]);
        let host = match &r.host {
            Some(HostMatch::Exact(h)) => format!(" on host {h:?}"),
            Some(HostMatch::Wildcard(suffix)) => format!(" on host \"*{suffix}\""),
            None => String::new(),
        };
        cx.warn(
            &at,
            &format!("route[{i}].api"),
            format!(
                "GET {list}{host} will answer an empty list: no route on path {:?} names a \
                 model and no upstream of them lists its replicas' models, so clients that \
                 discover models find none (requests naming a model are still served); add \
                 model = \"NAME\" to route[{i}] ({:?}) or models = true to \
                 [upstream.{}.health]",
                r.path, r.name, r.upstream
            ),
        );
    }
}

/// Does a route with these models and prefixes take `name` (a model, or with
/// `prefix` every model starting with it)?
fn covers(models: &[String], prefixes: &[String], name: &str, prefix: bool) -> bool {
    prefixes.iter().any(|p| name.starts_with(p.as_str()))
        || (!prefix && models.iter().any(|m| m == name))
}

/// A host's model-routed routes on a path hide the routes without host on that path:
/// a request to the host is routed among its own routes only, so a model only an
/// any-host route names gets 404 there (or the host's route without a model).
fn shadowed_model_routes(cx: &mut Ctx<'_>, doc: &DeTable<'_>, routes: &[Route]) {
    for (a, any) in routes.iter().enumerate() {
        if any.host.is_some() || !any.openai.routes_by_model() {
            continue;
        }
        let mut hosts: Vec<&HostMatch> = Vec::new();
        for r in routes {
            if let Some(h) = &r.host {
                if r.path == any.path && r.openai.routes_by_model() && !hosts.contains(&h) {
                    hosts.push(h);
                }
            }
        }
        for host in hosts {
            let group: Vec<(usize, &Route)> = routes
                .iter()
                .enumerate()
                .filter(|(_, r)| r.host.as_ref() == Some(host) && r.path == any.path)
                .collect();
            let (models, prefixes): (Vec<String>, Vec<String>) =
                group
                    .iter()
                    .fold((Vec::new(), Vec::new()), |(mut m, mut p), (_, r)| {
                        m.extend(r.openai.models.iter().cloned());
                        p.extend(r.openai.model_prefixes.iter().cloned());
                        (m, p)
                    });
            let hidden: Vec<String> = any
                .openai
                .models
                .iter()
                .map(|m| (m, false))
                .chain(any.openai.model_prefixes.iter().map(|p| (p, true)))
                .filter(|(n, prefix)| !covers(&models, &prefixes, n, *prefix))
                .map(|(n, prefix)| {
                    if prefix {
                        format!("model_prefix {n:?}")
                    } else {
                        format!("model {n:?}")
                    }
                })
                .collect();
            let Some(&(h, first)) = group.iter().find(|(_, r)| r.openai.routes_by_model()) else {
                continue;
            };
            if hidden.is_empty() {
                continue;
            }
            let host_name = match host {
                HostMatch::Exact(h) => h.clone(),
                HostMatch::Wildcard(suffix) => format!("*{suffix}"),
            };
            let line = cx.line(&span(doc, &[Step::Key("route"), Step::At(h)]));
            let key = if any.openai.models.is_empty() {
                "model_prefix"
            } else {
                "model"
            };
            let at = span(doc, &[Step::Key("route"), Step::At(a), Step::Key(key)]);
            cx.warn(
                &at,
                &format!("route[{a}].{key}"),
                format!(
                    "not reached on host {host_name:?}: route[{h}] ({:?}, line {line}) routes that host \
                     and path {:?} by model, and a host's routes are matched before routes without \
                     host, so there {} of route[{a}] ({:?}) {}; add {} to a route with host = \
                     {host_name:?} and path = {:?}, or repeat route[{a}] with host = {host_name:?}",
                    first.name,
                    any.path,
                    hidden.join(", "),
                    any.name,
                    if group.iter().any(|(_, r)| !r.openai.routes_by_model()) {
                        "goes to that host's route without a model"
                    } else {
                        "gets 404 model_not_found"
                    },
                    if hidden.len() == 1 { "it" } else { "them" },
                    any.path,
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse;

    const FILE: &str = "m.toml";
    const HEAD: &str = "[listen]\nhttp = \"127.0.0.1:8080\"\n";

    /// The warnings of a valid file, as `check` prints them.
    fn warnings(src: &str) -> Vec<String> {
        match parse(src, Path::new(FILE)) {
            Ok(l) => l.warnings.iter().map(ToString::to_string).collect(),
            Err(e) => panic!("expected a valid config, got:\n{e}\nfor:\n{src}"),
        }
    }

    fn errors(src: &str) -> Vec<String> {
        match parse(src, Path::new(FILE)) {
            Ok(_) => panic!("expected errors for:\n{src}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn fair_share_by_consumer_needs_auth_on_a_route_to_the_upstream() {
        let src = format!(
            "{HEAD}[[route]]\nname = \"a\"\npath = \"/a\"\nupstream = \"u\"\n\
             [[route]]\nname = \"b\"\npath = \"/b\"\nupstream = \"u\"\n\
             [upstream.u]\nbackends = [\"127.0.0.1:9001\"]\nmax_inflight = 2\nfair_share = \"consumer\"\n"
        );
        assert_eq!(
            errors(&src),
            ["m.toml:14:14: upstream.u.fair_share: \"consumer\" needs auth on a route to this upstream \
              (the consumer is the API key's name or the JWT's sub), and none has it, so every request \
              would be one requester; add auth = { api_keys_file = \"keys.txt\" } to its routes or use \
              fair_share = \"header:NAME\""]
        );
        // One route with auth: the other's requests are one requester together.
        let authed = src.replace(
            "path = \"/b\"\n",
            "path = \"/b\"\nauth = { api_keys_file = \"keys.txt\" }\n",
        );
        assert_eq!(
            warnings(&authed),
            [
                "m.toml:15:14: upstream.u.fair_share: \"consumer\" is the client a route's auth \
              accepted, and route \"a\" to this upstream has no auth, so all its requests count \
              as one requester and share one fair share against each consumer; add auth to it or \
              use fair_share = \"header:NAME\""
            ]
        );
        let both = authed.replace(
            "path = \"/a\"\n",
            "path = \"/a\"\nauth = { api_keys_file = \"keys.txt\" }\n",
        );
        assert_eq!(warnings(&both), Vec::<String>::new());
        // By header it needs no auth.
        assert!(warnings(&src.replace("\"consumer\"", "\"header:x-tenant\"")).is_empty());
    }

    #[test]
    fn class_queues_that_cannot_work_as_written_are_warned_about() {
        let src = format!(
            "{HEAD}[[route]]\nname = \"a\"\npath = \"/\"\nupstream = \"u\"\n\
             [upstream.u]\nbackends = [\"127.0.0.1:9001\"]\nmax_inflight = 2\n\
             queue = {{ size = 100, timeout = \"30s\" }}\n\
             priority = {{ header = \"x-p\", max_wait_behind = \"20s\", classes = [\n\
             {{ name = \"interactive\", queue = {{ timeout = \"5s\" }} }},\n\
             \"default\",\n\
             {{ name = \"batch\", queue = {{ size = 500, timeout = \"10s\" }} }},\n\
             ] }}\n"
        );
        assert_eq!(
            warnings(&src),
            [
                "m.toml:14:36: upstream.u.priority.classes[2].queue.size: 500 is above the upstream's \
                 queue.size (100), which bounds all classes together, so at most 100 of class \"batch\" \
                 ever wait; lower it to 100 or raise the upstream's queue.size",
                "m.toml:14:51: upstream.u.priority.classes[2].queue.timeout: class \"batch\" waits at \
                 most 10s but is promoted only after max_wait_behind = 20s: its requests time out \
                 before the starvation bound serves them; raise this timeout above 20s or lower \
                 max_wait_behind",
            ]
        );
        // A lower class with the upstream's timeout: the warning is at that timeout.
        let inherited = src
            .replace("timeout = \"30s\"", "timeout = \"15s\"")
            .replace("size = 500, timeout = \"10s\"", "size = 50");
        assert_eq!(
            warnings(&inherited),
            ["m.toml:10:33: upstream.u.queue.timeout: classes \"default\", \"batch\" wait at most \
              15s (the upstream's queue.timeout) but are promoted only after max_wait_behind = 20s: \
              their requests time out before the starvation bound serves them; raise \
              queue.timeout above 20s or lower max_wait_behind"]
        );
        // The highest class is served first anyway; a timeout of the bound's length is fine.
        let fine = src.replace(
            "size = 500, timeout = \"10s\"",
            "size = 50, timeout = \"20s\"",
        );
        assert!(warnings(&fine).is_empty(), "{:?}", warnings(&fine));
    }

    #[test]
    fn sse_keepalive_that_can_never_fire_is_warned_about() {
        let src = format!(
            "{HEAD}[[route]]\nname = \"a\"\npath = \"/v1\"\nupstream = \"u\"\napi = \"openai\"\n\
             sse_keepalive = \"10s\"\nmodel = \"m\"\n[upstream.u]\nbackends = [\"127.0.0.1:9001\"]\n"
        );
        assert_eq!(
            warnings(&src),
            [
                "m.toml:8:17: route[0].sse_keepalive: can never fire: upstream \"u\" has no \
              max_inflight and no hold, so no request ever waits for a replica; set max_inflight \
              = N or \"auto\" (or hold = \"60s\") on [upstream.u], or remove sse_keepalive"
            ]
        );
        for waits in [
            "max_inflight = 2",
            "max_inflight = \"auto\"",
            "hold = \"60s\"\n[upstream.u.health]\npath = \"/health\"",
        ] {
            let fixed = format!("{src}{waits}\n");
            assert!(
                warnings(&fixed).is_empty(),
                "{waits}: {:?}",
                warnings(&fixed)
            );
        }
    }

    #[test]
    fn sse_keepalive_longer_than_every_wait_is_warned_about() {
        let src = format!(
            "{HEAD}[[route]]\nname = \"a\"\npath = \"/v1\"\nupstream = \"u\"\napi = \"openai\"\n\
             sse_keepalive = \"45s\"\nmodel = \"m\"\n[upstream.u]\nbackends = [\"127.0.0.1:9001\"]\nmax_inflight = 2\n"
        );
        // The queue's default timeout is 30s.
        assert_eq!(
            warnings(&src),
            [
                "m.toml:8:17: route[0].sse_keepalive: can never fire: every wait for a replica of \
              upstream \"u\" ends before 45s (queue.timeout is 30s), so no stream is ever kept \
              alive; set sse_keepalive below 30s, or raise the wait on [upstream.u]"
            ]
        );
        assert!(warnings(&format!("{src}queue = {{ timeout = \"45s\" }}\n")).is_empty());
        // Classes: the longest class's timeout counts.
        let classes = format!(
            "{src}priority = {{ header = \"x-p\", max_wait_behind = \"5s\", classes = [\n\
             {{ name = \"hi\", queue = {{ timeout = \"10s\" }} }}, {{ name = \"default\", queue = {{ timeout = \"20s\" }} }},\n] }}\n"
        );
        assert_eq!(
            warnings(&classes),
            ["m.toml:8:17: route[0].sse_keepalive: can never fire: every wait for a replica of \
              upstream \"u\" ends before 45s (the longest class queue.timeout is 20s), so no \
              stream is ever kept alive; set sse_keepalive below 20s, or raise the wait on [upstream.u]"]
        );
        let long_class = classes.replace("\"20s\"", "\"2m\"");
        assert!(
            warnings(&long_class).is_empty(),
            "{:?}",
            warnings(&long_class)
        );
        // A hold without a cap is the only wait.
        let held = src.replace(
            "max_inflight = 2\n",
            "hold = \"20s\"\n[upstream.u.health]\npath = \"/health\"\n",
        );
        assert_eq!(
            warnings(&held),
            [
                "m.toml:8:17: route[0].sse_keepalive: can never fire: every wait for a replica of \
              upstream \"u\" ends before 45s (hold is 20s), so no stream is ever kept alive; set \
              sse_keepalive below 20s, or raise the wait on [upstream.u]"
            ]
        );
        assert!(warnings(&held.replace("\"20s\"", "\"90s\"")).is_empty());
        // With a cap as well, the longer of the two waits counts.
        let both = held.replace("hold = \"20s\"", "max_inflight = 2\nhold = \"20s\"");
        assert_eq!(
            warnings(&both),
            [
                "m.toml:8:17: route[0].sse_keepalive: can never fire: every wait for a replica of \
              upstream \"u\" ends before 45s (queue.timeout is 30s, hold is 20s), so no stream \
              is ever kept alive; set sse_keepalive below 30s, or raise the wait on [upstream.u]"
            ]
        );
        assert!(warnings(&both.replace("hold = \"20s\"", "hold = \"60s\"")).is_empty());
    }

    #[test]
    fn an_openai_endpoint_whose_model_list_is_always_empty_is_warned_about() {
        let src = format!(
            "{HEAD}[[route]]\nname = \"a\"\npath = \"/v1\"\nupstream = \"u\"\napi = \"openai\"\n\
             [[route]]\nname = \"b\"\npath = \"/v1\"\nupstream = \"u\"\napi = \"openai\"\nmodel_prefix = \"org/\"\n\
             [upstream.u]\nbackends = [\"127.0.0.1:9001\"]\n"
        );
        assert_eq!(
            warnings(&src),
            [
                "m.toml:7:7: route[0].api: GET /v1/models will answer an empty list: no route on \
              path \"/v1\" names a model and no upstream of them lists its replicas' models, so \
              clients that discover models find none (requests naming a model are still served); \
              add model = \"NAME\" to route[0] (\"a\") or models = true to [upstream.u.health]"
            ]
        );
        // Either fix silences it.
        let named = src.replace("model_prefix = \"org/\"", "model = \"m\"");
        assert!(warnings(&named).is_empty(), "{:?}", warnings(&named));
        let listed = format!("{src}[upstream.u.health]\npath = \"/health\"\nmodels = true\n");
        assert!(warnings(&listed).is_empty(), "{:?}", warnings(&listed));
        // A host's endpoint and a prefixed one are their own; a path inside the API has
        // no model list.
        let host = src
            .replace(
                "name = \"b\"\n",
                "name = \"b\"\nhost = \"api.example.com\"\n",
            )
            .replace("model_prefix = \"org/\"\n", "")
            .replacen("path = \"/v1\"", "path = \"/openai\"", 1);
        assert_eq!(
            warnings(&host)
                .iter()
                .map(|w| w.split(" will ").next().unwrap_or_default())
                .collect::<Vec<_>>(),
            [
                "m.toml:7:7: route[0].api: GET /openai/v1/models",
                "m.toml:13:7: route[1].api: GET /v1/models on host \"api.example.com\""
            ]
        );
        let inside = src.replace("path = \"/v1\"", "path = \"/v1/chat\"");
        assert!(warnings(&inside).is_empty(), "{:?}", warnings(&inside));
    }

    #[test]
    fn hold_without_health_checks_is_warned_about() {
        let src = format!(
            "{HEAD}[[route]]\nname = \"a\"\npath = \"/\"\nupstream = \"u\"\n\
             [upstream.u]\nbackends = [\"127.0.0.1:9001\"]\nhold = \"60s\"\n"
        );
        assert_eq!(
            warnings(&src),
            ["m.toml:9:8: upstream.u.hold: hold without health checks: a replica counts as ready \
              as soon as it is listed, so requests are sent to replicas still starting instead of \
              held (only ejected replicas, or a name resolving to none, make the upstream cold); \
              add [upstream.u.health] with path = \"/health\""]
        );
        let fixed = format!("{src}[upstream.u.health]\npath = \"/health\"\n");
        assert!(warnings(&fixed).is_empty());
    }

    #[test]
    fn a_host_routing_by_model_that_hides_an_any_host_model_route_is_warned_about() {
        let routes = "[[route]]\nname = \"x\"\nhost = \"api.example.com\"\npath = \"/v1\"\n\
                      model = \"org/x\"\napi = \"openai\"\nupstream = \"u\"\n\
                      [[route]]\nname = \"org\"\npath = \"/v1\"\nmodel_prefix = \"org/\"\n\
                      api = \"openai\"\nupstream = \"u\"\n\
                      [[route]]\nname = \"llama\"\npath = \"/v1\"\nmodel = [\"llama\", \"org/x\"]\n\
                      api = \"openai\"\nupstream = \"u\"\n\
                      [[route]]\nname = \"other\"\npath = \"/v2\"\nmodel = \"z\"\napi = \"openai\"\nupstream = \"u\"\n";
        let src = format!("{HEAD}{routes}[upstream.u]\nbackends = [\"127.0.0.1:9001\"]\n");
        assert_eq!(
            warnings(&src),
            [
                "m.toml:13:16: route[1].model_prefix: not reached on host \"api.example.com\": \
                 route[0] (\"x\", line 3) routes that host and path \"/v1\" by model, and a host's \
                 routes are matched before routes without host, so there model_prefix \"org/\" of \
                 route[1] (\"org\") gets 404 model_not_found; add it to a route with host = \
                 \"api.example.com\" and path = \"/v1\", or repeat route[1] with host = \"api.example.com\"",
                // org/x is the host's own; llama is not.
                "m.toml:19:9: route[2].model: not reached on host \"api.example.com\": route[0] \
                 (\"x\", line 3) routes that host and path \"/v1\" by model, and a host's routes are \
                 matched before routes without host, so there model \"llama\" of route[2] (\"llama\") \
                 gets 404 model_not_found; add it to a route with host = \"api.example.com\" and \
                 path = \"/v1\", or repeat route[2] with host = \"api.example.com\"",
            ]
        );
        // Either fix silences it: the host's set names them, or the host repeats the routes.
        let named = src.replace(
            "model = \"org/x\"",
            "model = [\"org/x\", \"llama\"]\nmodel_prefix = \"org/\"",
        );
        assert!(warnings(&named).is_empty(), "{:?}", warnings(&named));
        let repeated = format!(
            "{HEAD}{routes}{}[upstream.u]\nbackends = [\"127.0.0.1:9001\"]\n",
            "[[route]]\nname = \"org-api\"\nhost = \"api.example.com\"\npath = \"/v1\"\n\
             model_prefix = \"org/\"\nmodel = \"llama\"\napi = \"openai\"\nupstream = \"u\"\n"
        );
        assert!(warnings(&repeated).is_empty(), "{:?}", warnings(&repeated));
        // A host route without a model is plain host routing, and says nothing.
        // (Its replicas list their models, so /v1/models there is not empty.)
        let plain = format!(
            "{}[upstream.u.health]\npath = \"/health\"\nmodels = true\n",
            src.replace("model = \"org/x\"\n", "")
        );
        assert!(warnings(&plain).is_empty(), "{:?}", warnings(&plain));
    }
}
