//! Reading and checking `[upstream.NAME]` tables: backends or DNS discovery, balancing,
//! limits, timeouts, ejection, health checks and upstream TLS.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use toml::de::DeValue;

use super::reader::{join, Ctx, Field, TableReader};
use super::types::{
    AutoLimit, BackendAddr, BackendSource, Balance, Discovery, Eject, GaugeSelector, HealthCheck,
    LoadReports, MetricsPage, NamedBackend, Protocol, Queue, RequestKey, RetryBudget, Upstream,
    UpstreamTls,
};

/// `max_inflight_min` and `max_inflight_max` with `max_inflight = "auto"`.
pub(super) const DEFAULT_AUTO_MIN: u32 = 1;
pub(super) const DEFAULT_AUTO_MAX: u32 = 256;

/// Defaults applied when a key is absent.
pub(super) const DEFAULT_QUEUE: Queue = Queue {
    size: 256,
    timeout: Duration::from_secs(30),
};
pub(super) const DEFAULT_RETRIES: u32 = 1;
pub(super) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub(super) const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(120);
pub(super) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const DEFAULT_EJECT: Eject = Eject {
    consecutive: 5,
    duration: Duration::from_secs(30),
};
pub(super) const DEFAULT_DISCOVER_EVERY: Duration = Duration::from_secs(5);
pub(super) const DEFAULT_HEALTH_PATH: &str = "/health";
pub(super) const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub(super) const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub(super) const DEFAULT_HEALTHY_AFTER: u32 = 2;
pub(super) const DEFAULT_UNHEALTHY_AFTER: u32 = 3;
pub(super) const DEFAULT_LOAD_EVERY: Duration = Duration::from_millis(250);

impl Upstream {
    /// An upstream of `backends` with every other setting at its default, as a file
    /// that names only `backends` gets it.
    pub fn with_defaults(name: &str, backends: BackendSource) -> Upstream {
        Upstream {
            name: name.to_string(),
            backends,
            protocol: Protocol::Http1,
            balance: Balance::LeastOutstanding,
            hash_key: RequestKey::ClientAddr,
            max_inflight: 0,
            max_inflight_auto: None,
            queue: DEFAULT_QUEUE,
            retries: DEFAULT_RETRIES,
            retry_non_idempotent: false,
            retry_budget: RetryBudget::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            eject: None,
            slow_start: Duration::ZERO,
            health: None,
            tls: UpstreamTls::default(),
            load: None,
            hold: None,
            wake: None,
            priority: None,
            fair_share: None,
            affinity: None,
        }
    }
}

const BACKENDS_EXAMPLE: &str = "backends = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]";
const BACKEND_EXAMPLE: &str = "\"vision:8000\" or \"10.0.0.5:8000\"";
const U32_MAX: i128 = u32::MAX as i128;

/// One `[upstream.NAME]` as found: its name and position even when its contents are invalid.
pub(crate) struct UpstreamEntry<'a> {
    pub name: &'a str,
    /// The span of the name in `[upstream.NAME]`.
    pub span: Range<usize>,
    /// `upstream.NAME`.
    pub path: String,
    pub value: Option<Upstream>,
}

/// All upstreams, in file order.
pub(crate) fn read_all<'a>(
    cx: &mut Ctx<'_>,
    field: Option<Field<'a, '_>>,
) -> Vec<UpstreamEntry<'a>> {
    let Some(f) = field else {
        return Vec::new();
    };
    let Some(t) = cx.table(&f, &format!("[upstream.NAME] with {BACKENDS_EXAMPLE}")) else {
        return Vec::new();
    };
    let mut entries = t.entries();
    entries.sort_by_key(|(_, span, _)| span.start);
    entries
        .into_iter()
        .map(|(name, span, f)| {
            let valid_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid_name {
                cx.error(
                    &span,
                    &f.path,
                    "upstream names may only use letters, digits, '-', '_' and '.', e.g. [upstream.vision]",
                );
            }
            let value = read_one(cx, &f).filter(|_| valid_name).map(|mut u| {
                u.name = name.to_string();
                u
            });
            UpstreamEntry {
                name,
                span,
                path: f.path,
                value,
            }
        })
        .collect()
}

/// One `[upstream.NAME]` table (the name is filled in by the caller).
fn read_one(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<Upstream> {
    let mut t = cx.table(f, &format!("[upstream.NAME] with {BACKENDS_EXAMPLE}"))?;
    let backends = read_backend_source(cx, &mut t);
    let protocol = t.take("protocol").map_or(Some(Protocol::Http1), |f| {
        cx.choice(&f, &Protocol::ALL, Protocol::name)
    });
    let balance = t
        .take("balance")
        .map_or(Some(Balance::LeastOutstanding), |f| {
            cx.choice(&f, &Balance::ALL, Balance::name)
        });
    let hash_key_f = t.take("hash_key");
    let hash_key = hash_key_f
        .as_ref()
        .map_or(Some(RequestKey::ClientAddr), |f| cx.request_key(f));
    if let (Some(f), Some(b)) = (&hash_key_f, balance) {
        if b != Balance::ConsistentHash {
            cx.warn(
                &f.span(),
                &f.path,
                format!(
                    "ignored with balance = \"{}\"; it is only used with balance = \"consistent_hash\"",
                    b.name()
                ),
            );
        }
    }
    let (max_inflight, max_inflight_auto) = read_max_inflight(cx, &mut t);
    let queue = t
        .take("queue")
        .map_or(Some(DEFAULT_QUEUE), |f| read_queue(cx, &f, DEFAULT_QUEUE));
    let retries = t.take("retries").map_or(Some(DEFAULT_RETRIES), |f| {
        cx.uint(
            &f,
            0,
            10,
            "it counts other backends tried after the first; 0 disables retries",
        )
    });
    let retry_non_idempotent = t
        .take("retry_non_idempotent")
        .map_or(Some(false), |f| cx.bool(&f));
    let retry_budget = t
        .take("retry_budget")
        .map_or(Some(RetryBudget::default()), |f| read_retry_budget(cx, &f));
    let mut timeout = |t: &mut TableReader<'_, '_>, key: &'static str, default: Duration| {
        t.take(key)
            .map_or(Some(default), |f| cx.duration(&f, false))
    };
    let connect_timeout = timeout(&mut t, "connect_timeout", DEFAULT_CONNECT_TIMEOUT);
    let first_byte_timeout = timeout(&mut t, "first_byte_timeout", DEFAULT_FIRST_BYTE_TIMEOUT);
    let idle_timeout = timeout(&mut t, "idle_timeout", DEFAULT_IDLE_TIMEOUT);
    let eject = match t.take("eject") {
        Some(f) => read_eject(cx, &f).map(Some),
        None => Some(None),
    };
    let slow_start = t
        .take("slow_start")
        .map_or(Some(Duration::ZERO), |f| cx.duration(&f, true));
    let health = match t.take("health") {
        Some(f) => read_health(cx, &f).map(Some),
        None => Some(None),
    };
    let load = match t.take("load") {
        Some(f) => read_load(cx, &f).map(Some),
        None => Some(None),
    };
    let tls = read_upstream_tls(cx, &mut t, protocol);
    let hold = super::openai::read_hold(cx, &mut t);
    let wake = super::openai::read_wake(cx, &mut t);
    let capped = max_inflight.map(|m| m != 0 || max_inflight_auto.flatten().is_some());
    let (priority, fair_share) = super::schedule::read(cx, &mut t, queue, capped);
    let affinity = super::affinity::read(cx, &mut t, balance);
    t.finish(cx);
    Some(Upstream {
        name: String::new(),
        backends: backends?,
        protocol: protocol?,
        balance: balance?,
        hash_key: hash_key?,
        max_inflight: max_inflight?,
        max_inflight_auto: max_inflight_auto?,
        queue: queue?,
        retries: retries?,
        retry_non_idempotent: retry_non_idempotent?,
        retry_budget: retry_budget?,
        connect_timeout: connect_timeout?,
        first_byte_timeout: first_byte_timeout?,
        idle_timeout: idle_timeout?,
        eject: eject?,
        slow_start: slow_start?,
        health: health?,
        tls: tls?,
        load: load?,
        hold: hold?,
        wake: wake?,
        priority: priority?,
        fair_share: fair_share?,
        affinity: affinity?,
    })
}

/// Exactly one of `backends` and `discover`; `resolve_every` with names in `backends`.
fn read_backend_source(cx: &mut Ctx<'_>, t: &mut TableReader<'_, '_>) -> Option<BackendSource> {
    let backends_f = t.take("backends");
    let discover_f = t.take("discover");
    let every_f = t.take("resolve_every");
    let every = every_f
        .as_ref()
        .map_or(Some(DEFAULT_DISCOVER_EVERY), |f| cx.duration(f, false));
    let backends = backends_f
        .as_ref()
        .and_then(|f| read_backends(cx, f, every));
    let discover = discover_f.as_ref().and_then(|f| read_discover(cx, f));
    if let (Some(f), Some(BackendSource::Static(_))) = (&every_f, &backends) {
        cx.warn(
            &f.span(),
            &f.path,
            "ignored: every backend is an IP address, so there is nothing to resolve",
        );
    }
    if let (Some(f), Some(_)) = (&every_f, &discover_f) {
        cx.error(
            &f.span(),
            &f.path,
            "resolve_every applies to names in backends; with discover, set discover.every instead",
        );
    }
    match (&backends_f, &discover_f) {
        (Some(_), Some(f)) => {
            cx.error(
                &f.span(),
                &f.path,
                "use either backends or discover, not both; remove one of them",
            );
            None
        }
        (Some(_), None) => backends,
        (None, Some(_)) => discover,
        (None, None) => {
            cx.error(
                &t.span(),
                &super::reader::join(t.path(), "backends"),
                format!(
                    "missing; add {BACKENDS_EXAMPLE} (or discover = {{ dns = \"HOST:PORT\" }}) to [{}]",
                    t.path()
                ),
            );
            None
        }
    }
}

/// A backend as written: an address, or a name to resolve.
enum Target {
    Addr(std::net::SocketAddr),
    Name(String, u16),
}

/// `"ip:port"` or `"host:port"`. The name is checked for syntax only: it is resolved
/// when the proxy runs, so `check` passes on a machine where it does not resolve.
fn read_target(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<Target> {
    let expected = format!("\"host:port\" or \"ip:port\", such as {BACKEND_EXAMPLE}");
    let s = cx.string(f, &expected)?;
    if let Ok(addr) = s.parse::<std::net::SocketAddr>() {
        if addr.port() == 0 {
            let msg =
                format!("port 0 is not allowed in {s:?}; use a fixed port, e.g. \"10.0.0.5:8000\"");
            cx.error(&f.span(), &f.path, msg);
            return None;
        }
        return Some(Target::Addr(addr));
    }
    let msg = match s.rsplit_once(':') {
        _ if s.parse::<std::net::IpAddr>().is_ok() || valid_host(s) => {
            format!("{s:?} has no port; write it as \"host:port\", e.g. {BACKEND_EXAMPLE}")
        }
        Some((host, port)) if valid_host(host) => match port.parse::<u16>() {
            Ok(0) | Err(_) => {
                format!("{s:?}: the port must be a number from 1 to 65535, e.g. {BACKEND_EXAMPLE}")
            }
            Ok(port) => return Some(Target::Name(host.to_ascii_lowercase(), port)),
        },
        _ => format!("expected {expected}, found {s:?}"),
    };
    cx.error(&f.span(), &f.path, msg);
    None
}

/// A DNS host name (RFC 1123 labels; `_` allowed as in service names): letters, digits,
/// `-` and `_` in dot-separated labels of 1 to 63 characters.
fn valid_host(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        })
        && host.parse::<std::net::IpAddr>().is_err()
}

/// `backends = ["ip:port", "host:port", { addr = "...", weight = 2 }]`.
fn read_backends(
    cx: &mut Ctx<'_>,
    f: &Field<'_, '_>,
    every: Option<std::time::Duration>,
) -> Option<BackendSource> {
    let items = cx.array(f, "[\"127.0.0.1:9001\", \"127.0.0.1:9002\"]")?;
    if items.is_empty() {
        cx.error(
            &f.span(),
            &f.path,
            format!("the list is empty; add at least one \"ip:port\", e.g. {BACKENDS_EXAMPLE}"),
        );
        return None;
    }
    let mut first_seen: HashMap<String, String> = HashMap::new();
    let mut all = Some((Vec::new(), Vec::new()));
    for item in &items {
        let backend = if item.value.get_ref().is_table() {
            cx.table(item, "").and_then(|mut t| {
                let target = t
                    .require(cx, "addr", "addr = \"127.0.0.1:9001\"")
                    .and_then(|f| read_target(cx, &f));
                let weight = t.take("weight").map_or(Some(1), |f| {
                    cx.uint(
                        &f,
                        1,
                        1000,
                        "a backend with weight 2 gets twice the traffic of weight 1",
                    )
                });
                t.finish(cx);
                Some((target?, weight?))
            })
        } else if item.value.get_ref().is_str() {
            read_target(cx, item).map(|t| (t, 1))
        } else {
            cx.expected(
                item,
                "\"host:port\" or { addr = \"host:port\", weight = 2 }",
                "",
            );
            None
        };
        if let Some((target, _)) = &backend {
            let key = match target {
                Target::Addr(a) => a.to_string(),
                Target::Name(h, p) => format!("{h}:{p}"),
            };
            if let Some(first) = first_seen.get(&key) {
                cx.error(
                    &item.span(),
                    &item.path,
                    format!(
                        "{key} is already listed as {first}; list each backend once and use weight to give it more traffic"
                    ),
                );
            } else {
                first_seen.insert(key, item.path.clone());
            }
        }
        all = all
            .zip(backend)
            .map(|((mut fixed, mut names), (target, weight))| {
                match target {
                    Target::Addr(addr) => fixed.push(BackendAddr { addr, weight }),
                    Target::Name(host, port) => names.push(NamedBackend { host, port, weight }),
                }
                (fixed, names)
            });
    }
    let (fixed, names) = all?;
    if names.is_empty() {
        return Some(BackendSource::Static(fixed));
    }
    Some(BackendSource::Dns(Discovery {
        names,
        fixed,
        every: every?,
        resolver: None,
    }))
}

/// `discover = { dns = "name:port", every = "5s", resolver = "ip:port" }`.
fn read_discover(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<BackendSource> {
    let mut t = cx.table(
        f,
        "{ dns = \"vision.models.svc.cluster.local:8000\", every = \"5s\" }",
    )?;
    let name = t
        .require(cx, "dns", "dns = \"vision.models.svc.cluster.local:8000\"")
        .and_then(|f| match read_target(cx, &f)? {
            Target::Name(host, port) => Some(NamedBackend {
                host,
                port,
                weight: 1,
            }),
            Target::Addr(addr) => {
                cx.error(
                    &f.span(),
                    &f.path,
                    format!(
                        "{addr} is an address, not a name; list it in backends = [\"{addr}\"] instead"
                    ),
                );
                None
            }
        });
    let every = t
        .take("every")
        .map_or(Some(DEFAULT_DISCOVER_EVERY), |f| cx.duration(&f, false));
    let resolver = match t.take("resolver") {
        Some(f) => cx
            .addr(&f, "10.0.0.10:53", "the resolver must be an IP address")
            .map(Some),
        None => Some(None),
    };
    t.finish(cx);
    Some(BackendSource::Dns(Discovery {
        names: vec![name?],
        fixed: Vec::new(),
        every: every?,
        resolver: resolver?,
    }))
}

/// `queue = { size = 256, timeout = "30s" }`.
/// `queue = { size, timeout }`; a missing key takes its value from `defaults`.
pub(crate) fn read_queue(cx: &mut Ctx<'_>, f: &Field<'_, '_>, defaults: Queue) -> Option<Queue> {
    let mut t = cx.table(f, "{ size = 256, timeout = \"30s\" }")?;
    let size = t.take("size").map_or(Some(defaults.size), |f| {
        cx.uint(
            &f,
            0,
            U32_MAX,
            "0 means no queue: requests are rejected at once when all backends are full",
        )
    });
    let timeout = t
        .take("timeout")
        .map_or(Some(defaults.timeout), |f| cx.duration(&f, false));
    t.finish(cx);
    Some(Queue {
        size: size?,
        timeout: timeout?,
    })
}

/// `retry_budget = { percent = 20, window = "10s", min_retries = 10 }`.
fn read_retry_budget(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<RetryBudget> {
    let mut t = cx.table(f, "{ percent = 20, window = \"10s\", min_retries = 10 }")?;
    let d = RetryBudget::default();
    let percent = t.take("percent").map_or(Some(d.percent), |f| {
        cx.uint(
            &f,
            0,
            100,
            "retries allowed as a share of recent requests; 0 disables retries",
        )
    });
    let window = t
        .take("window")
        .map_or(Some(d.window), |f| cx.duration(&f, false));
    let min_retries = t.take("min_retries").map_or(Some(d.min_retries), |f| {
        cx.uint(
            &f,
            0,
            U32_MAX,
            "retries always allowed per window, however few the requests",
        )
    });
    t.finish(cx);
    Some(RetryBudget {
        percent: percent?,
        window: window?,
        min_retries: min_retries?,
    })
}

/// `eject = { consecutive = 5, for = "30s" }`.
fn read_eject(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<Eject> {
    let mut t = cx.table(f, "{ consecutive = 5, for = \"30s\" }")?;
    let consecutive = t
        .take("consecutive")
        .map_or(Some(DEFAULT_EJECT.consecutive), |f| {
            cx.uint(
                &f,
                1,
                U32_MAX,
                "the number of failures in a row that ejects a backend",
            )
        });
    let duration = t
        .take("for")
        .map_or(Some(DEFAULT_EJECT.duration), |f| cx.duration(&f, false));
    t.finish(cx);
    Some(Eject {
        consecutive: consecutive?,
        duration: duration?,
    })
}

/// `[upstream.NAME.health]`.
fn read_health(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<HealthCheck> {
    let mut t = cx.table(f, "[upstream.NAME.health] with path = \"/health\"")?;
    let path = t
        .take("path")
        .map_or(Some(DEFAULT_HEALTH_PATH.to_string()), |f| {
            cx.http_path(&f, "/health")
        });
    let interval_f = t.take("interval");
    let interval = interval_f
        .as_ref()
        .map_or(Some(DEFAULT_HEALTH_INTERVAL), |f| cx.duration(f, false));
    let timeout_f = t.take("timeout");
    let timeout = timeout_f
        .as_ref()
        .map_or(Some(DEFAULT_HEALTH_TIMEOUT), |f| cx.duration(f, false));
    let mut count = |t: &mut TableReader<'_, '_>, key: &'static str, default: u32| {
        t.take(key).map_or(Some(default), |f| {
            cx.uint(
                &f,
                1,
                U32_MAX,
                "the number of checks in a row before the state changes",
            )
        })
    };
    let healthy_after = count(&mut t, "healthy_after", DEFAULT_HEALTHY_AFTER);
    let unhealthy_after = count(&mut t, "unhealthy_after", DEFAULT_UNHEALTHY_AFTER);
    let expect_status = match t.take("expect_status") {
        Some(f) => cx
            .uint(&f, 100, 599, "leave it out to accept any 2xx status")
            .map(Some),
        None => Some(None),
    };
    if let (Some(i), Some(to)) = (interval, timeout) {
        if to >= i {
            let (span, key) = match (&timeout_f, &interval_f) {
                (Some(f), _) | (None, Some(f)) => (f.span(), f.path.clone()),
                (None, None) => (t.span(), t.path().to_string()),
            };
            cx.error(
                &span,
                &key,
                format!(
                    "timeout ({to:?}) must be shorter than interval ({i:?}); e.g. interval = \"2s\", timeout = \"1s\""
                ),
            );
        }
    }
    let models = t.take("models").map_or(Some(false), |f| cx.bool(&f));
    t.finish(cx);
    Some(HealthCheck {
        path: path?,
        interval: interval?,
        timeout: timeout?,
        healthy_after: healthy_after?,
        unhealthy_after: unhealthy_after?,
        expect_status: expect_status?,
        models: models?,
    })
}

/// `max_inflight` (a number, 0 for unlimited, or `"auto"`) with `max_inflight_min`
/// and `max_inflight_max` (default 1 and 256), which apply only to `"auto"`.
fn read_max_inflight(
    cx: &mut Ctx<'_>,
    t: &mut TableReader<'_, '_>,
) -> (Option<u32>, Option<Option<AutoLimit>>) {
    const HINT: &str = "use 0 for unlimited, or \"auto\" to learn each replica's limit";
    let auto = match t.take("max_inflight") {
        None => Some((0, false)),
        Some(f) => match f.value.get_ref() {
            DeValue::String(s) if s.as_ref() == "auto" => Some((0, true)),
            _ => cx.uint(&f, 0, U32_MAX, HINT).map(|n| (n, false)),
        },
    };
    let min = t.take("max_inflight_min");
    let max = t.take("max_inflight_max");
    let Some((fixed, auto)) = auto else {
        return (None, Some(None));
    };
    if !auto {
        for f in [&min, &max].into_iter().flatten() {
            cx.warn(
                &f.span(),
                &f.path,
                "ignored: it bounds a learned limit; set max_inflight = \"auto\" to use it",
            );
        }
        return (Some(fixed), Some(None));
    }
    let min: Option<u32> = min.map_or(Some(DEFAULT_AUTO_MIN), |f| {
        cx.uint(&f, 1, U32_MAX, "the smallest limit a replica is ever given")
    });
    let max_span = max.as_ref().map(|f| (f.span(), f.path.clone()));
    let max: Option<u32> = max.map_or(Some(DEFAULT_AUTO_MAX), |f| {
        cx.uint(&f, 1, U32_MAX, "the largest limit a replica is ever given")
    });
    let (Some(min), Some(max)) = (min, max) else {
        return (Some(0), None);
    };
    if min > max {
        let (span, path) =
            max_span.unwrap_or_else(|| (t.span(), join(t.path(), "max_inflight_max")));
        cx.error(
            &span,
            &path,
            format!("{max} is below max_inflight_min = {min}; raise it to at least {min}"),
        );
        return (Some(0), None);
    }
    (Some(0), Some(Some(AutoLimit { min, max })))
}

/// `[upstream.NAME.load]`: `orca = true` and/or `metrics = "/metrics"` (with
/// `queue_metric`, `running_metric`, `cache_metric` to name other gauges), `every`.
fn read_load(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<LoadReports> {
    let mut t = cx.table(
        f,
        "[upstream.NAME.load] with metrics = \"/metrics\" or orca = true",
    )?;
    let orca = t.take("orca").map_or(Some(false), |f| cx.bool(&f));
    let every = t
        .take("every")
        .map_or(Some(DEFAULT_LOAD_EVERY), |f| cx.duration(&f, false));
    let path = match t.take("metrics") {
        Some(f) => cx.http_path(&f, "/metrics").map(Some),
        None => Some(None),
    };
    let mut gauges = Vec::new();
    for key in ["queue_metric", "running_metric", "cache_metric"] {
        let Some(g) = t.take(key) else {
            gauges.push(Some(None));
            continue;
        };
        if matches!(path, Some(None)) {
            cx.error(
                &g.span(),
                &g.path,
                "names a gauge of the replicas' Prometheus page; add metrics = \"/metrics\" or remove it",
            );
        }
        gauges.push(read_gauge(cx, &g).map(Some));
    }
    t.finish(cx);
    if matches!((orca, &path), (Some(false), Some(None))) {
        cx.warn(
            &f.span(),
            &f.path,
            "reads no load report (neither metrics nor orca); add metrics = \"/metrics\" \
             or orca = true, or remove the table",
        );
    }
    let [queue, running, cache] = <[Option<Option<GaugeSelector>>; 3]>::try_from(gauges).ok()?;
    let metrics = path?.map(|path| MetricsPage {
        path,
        queue: queue.flatten(),
        running: running.flatten(),
        cache: cache.flatten(),
    });
    Some(LoadReports {
        orca: orca?,
        metrics,
        every: every?,
    })
}

/// A gauge as PromQL names one, `name` or `name{label="value", ...}`, read with
/// the same Prometheus text parser that reads the replicas' pages.
fn read_gauge(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<GaugeSelector> {
    const EXAMPLE: &str =
        "a metric name such as \"vllm:num_requests_waiting\" or 'nv_trt_llm_request_metrics{request_type=\"waiting\"}'";
    let s = cx.string(f, EXAMPLE)?;
    let parsed = (!s.contains(['\n', '\r', '#']))
        .then(|| prom_text_format_parser::parse_scrape(&format!("{s} 0\n")))
        .and_then(|(metrics, err)| match (err, &metrics[..]) {
            (None, [m]) if m.samples.len() == 1 => Some(GaugeSelector {
                name: m.name.clone(),
                labels: m.samples[0]
                    .labels
                    .iter()
                    .map(|l| (l.key.clone(), l.value.clone()))
                    .collect(),
            }),
            _ => None,
        });
    if parsed.is_none() {
        cx.error(&f.span(), &f.path, format!("{s:?} is not {EXAMPLE}"));
    }
    parsed
}

/// `ca`, `sni`, `client_cert`, `client_key`: only with `protocol = "https"`, and the client
/// certificate and key only together.
fn read_upstream_tls(
    cx: &mut Ctx<'_>,
    t: &mut TableReader<'_, '_>,
    protocol: Option<Protocol>,
) -> Option<UpstreamTls> {
    let ca_f = t.take("ca");
    let sni_f = t.take("sni");
    let cert_f = t.take("client_cert");
    let key_f = t.take("client_key");
    if protocol.is_some_and(|p| p != Protocol::Https) {
        for f in [&ca_f, &sni_f, &cert_f, &key_f].into_iter().flatten() {
            cx.error(
                &f.span(),
                &f.path,
                "only used with protocol = \"https\"; set protocol = \"https\" or remove it",
            );
        }
    }
    match (&cert_f, &key_f) {
        (Some(f), None) => cx.error(
            &f.span(),
            &f.path,
            "client_cert needs client_key; add client_key = \"client.key\"",
        ),
        (None, Some(f)) => cx.error(
            &f.span(),
            &f.path,
            "client_key needs client_cert; add client_cert = \"client.crt\"",
        ),
        _ => {}
    }
    let mut path = |f: &Option<Field<'_, '_>>, example: &str| match f {
        Some(f) => cx.path(f, example).map(Some),
        None => Some(None),
    };
    let ca = path(&ca_f, "ca.pem");
    let client_cert = path(&cert_f, "client.crt");
    let client_key = path(&key_f, "client.key");
    let sni = match &sni_f {
        Some(f) => cx
            .nonempty(f, "a server name such as \"models.internal\"")
            .map(|s| Some(s.to_string())),
        None => Some(None),
    };
    Some(UpstreamTls {
        ca: ca?,
        sni: sni?,
        client_cert: client_cert?,
        client_key: client_key?,
    })
}
