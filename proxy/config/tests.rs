//! Tests of the whole loader: a full valid file, and broken files with their exact messages.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const FILE: &str = "config/modelgate.toml";

fn ok(src: &str) -> Loaded {
    match parse(src, Path::new(FILE)) {
        Ok(l) => l,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn errors(src: &str) -> Vec<String> {
    match parse(src, Path::new(FILE)) {
        Ok(_) => panic!("expected errors for:\n{src}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const FULL: &str = r#"
[listen]
http  = "0.0.0.0:8080"
https = "0.0.0.0:8443"
admin = "127.0.0.1:9901"
redirect_http_to_https = true
workers = 4

[log]
access = "logs/access.log"

[tls]
certs = [{ cert = "a.crt", key = "/etc/a.key", default = true }, { cert = "b.crt", key = "b.key" }]

[[route]]
name     = "vision"
host     = "API.Example.com"
path     = "/v1/vision"
upstream = "vision"
strip_prefix = true
max_body = "20MiB"
rate_limit = { requests_per_second = 50, burst = 100, key = "header:X-API-Key" }
auth = { api_keys_file = "keys.txt" }

[[route]]
name = "chat"
host = "*.Example.com"
path = "/v1/chat"
upstream = "chat"
rate_limit = { requests_per_second = 2.5 }
auth = { jwt = { secret_env = "JWT_SECRET" } }

[upstream.vision]
backends = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 2 }, "[::1]:9003"]
protocol = "https"
ca = "ca.pem"
sni = "models.internal"
client_cert = "c.crt"
client_key = "c.key"
balance  = "consistent_hash"
hash_key = "header:X-Session-Id"
max_inflight = 4
queue = { size = 0 }
retries = 2
retry_non_idempotent = true
connect_timeout = "500ms"
first_byte_timeout = "1.5s"
idle_timeout = "5m"
eject = { consecutive = 3 }
slow_start = "10s"

[upstream.vision.health]
path = "/ready"
expect_status = 204

[upstream.chat]
discover = { dns = "chat.models.svc.cluster.local:8000", resolver = "10.0.0.10:53" }
protocol = "h2c"
"#;

#[test]
fn full_example() {
    let Loaded {
        config: c,
        warnings,
    } = ok(FULL);
    assert_eq!(warnings, vec![]);
    assert_eq!(c.source, PathBuf::from(FILE));
    assert_eq!(c.listen.http, Some(addr("0.0.0.0:8080")));
    assert_eq!(c.listen.admin, Some(addr("127.0.0.1:9901")));
    assert!(c.listen.redirect_http_to_https);
    assert_eq!(c.listen.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.listen.workers, 4);
    assert_eq!(
        c.log.access,
        AccessLog::File("config/logs/access.log".into())
    );
    let Some(Tls {
        certs: CertSource::List(pairs),
    }) = &c.tls
    else {
        panic!("{:?}", c.tls)
    };
    assert_eq!(
        pairs,
        &vec![
            CertPair {
                cert: "config/a.crt".into(),
                key: "/etc/a.key".into(),
                default: true
            },
            CertPair {
                cert: "config/b.crt".into(),
                key: "config/b.key".into(),
                default: false
            },
        ]
    );

    let [vision, chat] = &c.routes[..] else {
        panic!("{:?}", c.routes)
    };
    assert_eq!(
        vision.host,
        Some(HostMatch::Exact("api.example.com".into()))
    );
    assert_eq!(vision.path, "/v1/vision");
    assert!(vision.strip_prefix);
    assert_eq!(vision.max_body, Some(20 << 20));
    assert_eq!(
        vision.rate_limit,
        Some(RateLimit {
            requests_per_second: 50.0,
            burst: 100,
            key: RateKey::Header("x-api-key".into()),
            max_keys: DEFAULT_MAX_KEYS,
        })
    );
    assert_eq!(
        vision.auth,
        Some(Auth {
            method: AuthMethod::ApiKeysFile("config/keys.txt".into()),
            strip_credentials: false,
        })
    );
    assert_eq!(chat.host, Some(HostMatch::Wildcard(".example.com".into())));
    assert_eq!(chat.max_body, None);
    assert!(!chat.strip_prefix);
    assert_eq!(
        chat.rate_limit,
        Some(RateLimit {
            requests_per_second: 2.5,
            burst: 3,
            key: RateKey::ClientAddr,
            max_keys: DEFAULT_MAX_KEYS,
        })
    );
    assert_eq!(
        chat.auth,
        Some(Auth {
            method: AuthMethod::Jwt(Jwt {
                key: JwtKey::SecretEnv("JWT_SECRET".into()),
                issuer: None,
                audience: None,
                leeway: std::time::Duration::from_secs(30),
            }),
            strip_credentials: false,
        })
    );

    // File order, not alphabetical.
    let names: Vec<&str> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["vision", "chat"]);
    let v = c.upstream("vision").unwrap();
    assert_eq!(
        v.backends,
        BackendSource::Static(vec![
            BackendAddr {
                addr: addr("127.0.0.1:9001"),
                weight: 1
            },
            BackendAddr {
                addr: addr("127.0.0.1:9002"),
                weight: 2
            },
            BackendAddr {
                addr: addr("[::1]:9003"),
                weight: 1
            },
        ])
    );
    assert_eq!(v.protocol, Protocol::Https);
    assert_eq!(v.balance, Balance::ConsistentHash);
    assert_eq!(v.hash_key, RequestKey::Header("x-session-id".into()));
    assert_eq!(v.max_inflight, 4);
    assert_eq!(
        v.queue,
        Queue {
            size: 0,
            timeout: Duration::from_secs(30)
        }
    );
    assert_eq!(v.retries, 2);
    assert!(v.retry_non_idempotent);
    assert_eq!(v.connect_timeout, Duration::from_millis(500));
    assert_eq!(v.first_byte_timeout, Duration::from_millis(1500));
    assert_eq!(v.idle_timeout, Duration::from_secs(300));
    assert_eq!(
        v.eject,
        Some(Eject {
            consecutive: 3,
            duration: Duration::from_secs(30)
        })
    );
    assert_eq!(v.slow_start, Duration::from_secs(10));
    assert_eq!(
        v.health,
        Some(HealthCheck {
            path: "/ready".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_after: 2,
            unhealthy_after: 3,
            expect_status: Some(204),
            models: false,
        })
    );
    assert_eq!(
        v.tls,
        UpstreamTls {
            ca: Some("config/ca.pem".into()),
            sni: Some("models.internal".into()),
            client_cert: Some("config/c.crt".into()),
            client_key: Some("config/c.key".into()),
        }
    );

    let ch = c.upstream("chat").unwrap();
    assert_eq!(
        ch.backends,
        BackendSource::Dns(Discovery {
            names: vec![NamedBackend {
                host: "chat.models.svc.cluster.local".into(),
                port: 8000,
                weight: 1,
            }],
            fixed: Vec::new(),
            every: Duration::from_secs(5),
            resolver: Some(addr("10.0.0.10:53")),
        })
    );
    assert_eq!(ch.protocol, Protocol::H2c);
    // Defaults.
    assert_eq!(ch.balance, Balance::LeastOutstanding);
    assert_eq!(ch.hash_key, RequestKey::ClientAddr);
    assert_eq!(ch.max_inflight, 0);
    assert_eq!(
        ch.queue,
        Queue {
            size: 256,
            timeout: Duration::from_secs(30)
        }
    );
    assert_eq!(ch.retries, 1);
    assert!(!ch.retry_non_idempotent);
    assert_eq!(ch.connect_timeout, Duration::from_secs(2));
    assert_eq!(ch.first_byte_timeout, Duration::from_secs(120));
    assert_eq!(ch.idle_timeout, Duration::from_secs(60));
    assert_eq!(ch.eject, None);
    assert_eq!(ch.slow_start, Duration::ZERO);
    assert_eq!(ch.health, None);
    assert_eq!(ch.tls, UpstreamTls::default());

    let s = summary(&c);
    assert!(s.starts_with("listen: "), "{s}");
    assert!(s.contains("chat.models.svc.cluster.local"), "{s}");
}

const MINIMAL: &str = r#"[listen]
http = "0.0.0.0:8080"

[[route]]
name = "chat"
path = "/v1/chat"
upstream = "chat"

[upstream.chat]
backends = ["127.0.0.1:9001"]
"#;

#[test]
fn minimal_defaults() {
    let Loaded {
        config: c,
        warnings,
    } = ok(MINIMAL);
    assert!(warnings.is_empty());
    assert_eq!(c.log.access, AccessLog::Stderr);
    assert_eq!(c.tls, None);
    assert_eq!(c.listen.https, None);
    assert_eq!(c.listen.workers, 0);
    assert_eq!(c.listen.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.routes[0].host, None);
    assert_eq!(
        summary(&c),
        "listen: http 0.0.0.0:8080\n\
         workers: one per core, shutdown grace 30s, access log stderr\n\
         routes (host path → upstream):\n  chat  (any host) /v1/chat → chat\n\
         upstreams (→ backends):\n  chat: least_outstanding, http1, no cap, retries 1\n\
         \x20   no health check (backends serve at once)\n\
         \x20   └─ 127.0.0.1:9001\n"
    );
}

/// MINIMAL with `extra` appended to the `[upstream.chat]` table (which starts on line 10).
fn with_upstream(extra: &str) -> String {
    format!("{MINIMAL}{extra}\n")
}

/// A broken file, as an edit of MINIMAL.
#[derive(Clone, Copy)]
enum Edit {
    /// Lines appended to MINIMAL, whose last table is `[upstream.chat]` (line 10): keys
    /// land in it from line 11, table headers start tables of their own.
    Add(&'static str),
    /// MINIMAL with its one occurrence of the first text replaced by the second.
    Replace(&'static str, &'static str),
    /// A whole file instead of MINIMAL.
    Whole(&'static str),
}
use Edit::{Add, Replace, Whole};

impl Edit {
    fn apply(self) -> String {
        match self {
            Add(extra) => with_upstream(extra),
            Replace(from, to) => {
                assert_eq!(MINIMAL.matches(from).count(), 1, "{from:?} in MINIMAL");
                MINIMAL.replace(from, to)
            }
            Whole(src) => src.to_string(),
        }
    }
}

/// One broken file per line: what it shows, the edit, and every error it must produce,
/// exactly and in order, each after `config/modelgate.toml:` (`LINE:COL: KEY: message`).
/// A new case is one more line.
#[rustfmt::skip]
const BROKEN: &[(&str, Edit, &[&str])] = &[
    ("unknown key, with a suggestion", Add("max_inflite = 4"), &["11:1: upstream.chat.max_inflite: unknown key `max_inflite`; did you mean `max_inflight`?"]),
    ("unknown key in an inline table, no close match", Add("queue = { size = 1, colour = \"red\" }"), &["11:21: upstream.chat.queue.colour: unknown key `colour`; allowed keys here: size, timeout"]),
    ("unknown top-level table", Add("[upstreams.x]"), &["11:2: upstreams: unknown key `upstreams`; did you mean `upstream`?"]),
    ("wrong type", Add("max_inflight = \"four\""), &["11:16: upstream.chat.max_inflight: expected a whole number >= 0, found \"four\"; use 0 for unlimited, or \"auto\" to learn each replica's limit"]),
    ("learned cap: max below min", Add("max_inflight = \"auto\"\nmax_inflight_min = 8\nmax_inflight_max = 4"), &["13:20: upstream.chat.max_inflight_max: 4 is below max_inflight_min = 8; raise it to at least 8"]),
    ("learned cap: min 0", Add("max_inflight = \"auto\"\nmax_inflight_min = 0"), &["12:20: upstream.chat.max_inflight_min: expected a whole number >= 1, found 0; the smallest limit a replica is ever given"]),
    ("address as a number", Replace("http = \"0.0.0.0:8080\"", "http = 8080"), &["2:8: listen.http: expected an \"ip:port\" address such as \"0.0.0.0:8080\", found 8080"]),
    ("duration with an unknown unit", Add("connect_timeout = \"2x\""), &["11:19: upstream.chat.connect_timeout: invalid duration \"2x\": unknown unit \"x\"; write a number and a unit (ms, s, m or h), e.g. \"500ms\", \"2s\", \"1.5s\", \"5m\""]),
    ("duration without a unit", Add("connect_timeout = 2"), &["11:19: upstream.chat.connect_timeout: expected a duration greater than 0 such as \"500ms\", \"2s\" or \"5m\", found 2; durations are strings with a unit, e.g. \"30s\""]),
    ("zero duration", Add("idle_timeout = \"0s\""), &["11:16: upstream.chat.idle_timeout: expected a duration greater than 0 such as \"500ms\", \"2s\" or \"5m\", found \"0s\""]),
    ("size with an unknown unit", Replace("upstream = \"chat\"", "upstream = \"chat\"\nmax_body = \"20XB\""), &["8:12: route[0].max_body: invalid size \"20XB\": unknown unit \"XB\"; write a whole number and a unit (B, KB, MB, GB, KiB, MiB, GiB), e.g. \"512KiB\", \"20MiB\", or a plain number of bytes"]),
    ("undefined upstream", Replace("upstream = \"chat\"", "upstream = \"caht\""), &["7:12: route[0].upstream: upstream \"caht\" is not defined; did you mean \"chat\"? defined upstreams: chat"]),
    ("duplicate route name, and so path", Add("\n[[route]]\nname = \"chat\"\npath = \"/v1/chat\"\nupstream = \"chat\""), &[
        "13:8: route[1].name: route name \"chat\" is already used by route[0] (line 4); give each route a unique name",
        "14:8: route[1].path: path \"/v1/chat\" without host is already used by route[0] (line 4); routes must differ in host or path; change one or remove the duplicate",
    ]),
    ("empty backends", Replace("[\"127.0.0.1:9001\"]", "[]"), &["10:12: upstream.chat.backends: the list is empty; add at least one \"ip:port\", e.g. backends = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]"]),
    ("host name without its port", Replace("\"127.0.0.1:9001\"", "\"chat.local\""), &["10:13: upstream.chat.backends[0]: \"chat.local\" has no port; write it as \"host:port\", e.g. \"vision:8000\" or \"10.0.0.5:8000\""]),
    ("weight 0, and a duplicate backend", Replace("\"127.0.0.1:9001\"", "{ addr = \"127.0.0.1:9001\", weight = 0 }, \"10.0.0.1:80\", \"10.0.0.1:80\""), &[
        "10:49: upstream.chat.backends[0].weight: expected a whole number from 1 to 1000, found 0; a backend with weight 2 gets twice the traffic of weight 1",
        "10:69: upstream.chat.backends[2]: 10.0.0.1:80 is already listed as upstream.chat.backends[1]; list each backend once and use weight to give it more traffic",
    ]),
    ("missing path, reported at the [[route]] header", Replace("path = \"/v1/chat\"\n", ""), &["4:1: route[0].path: missing; add path = \"/v1/chat\" (a prefix starting with \"/\")"]),
    ("path without its leading /", Replace("\"/v1/chat\"", "\"v1/chat\""), &["6:8: route[0].path: expected a path starting with \"/\" such as \"/v1/chat\", found \"v1/chat\""]),
    ("syntax errors: only they are reported", Replace("http = \"0.0.0.0:8080\"", "http = \"0.0.0.0:8080\nworkers = four"), &[
        "2:21: invalid TOML: invalid basic string, expected `\"`",
        "3:11: invalid TOML: invalid boolean, expected `false`",
    ]),
    ("many errors, all reported in file order", Whole(
        "[listen]\nhttps = \"0.0.0.0:8443\"\nadmin = \"0.0.0.0:9901\"\nworkers = 5000\n\n\
         [[route]]\nname = \"\"\nhost = \"*.a.*.com\"\npath = \"/x\"\nupstream = \"gone\"\n\
         rate_limit = { requests_per_second = 0, key = \"cookie\" }\n\
         auth = { jwt = { secret_env = \"1X\" } }\n\n\
         [upstream.m]\nbackends = [\"10.0.0.1:80\"]\nprotocol = \"http2\"\nbalance = \"round_robin\"\n\
         retries = 11\nsni = \"x\"\n\n\
         [upstream.m.health]\ninterval = \"1s\"\ntimeout = \"1s\"\nexpect_status = 600\n"), &[
        "2:9: listen.https: https needs certificates; add a [tls] table with certs = \"certs\" (a directory of NAME.crt + NAME.key files)",
        "3:9: listen.admin: 0.0.0.0:9901 is reachable from other hosts; bind admin to 127.0.0.1 or set listen.admin_token_file",
        "4:11: listen.workers: expected a whole number from 0 to 1024, found 5000; use 0 for one per CPU core",
        "7:8: route[0].name: expected a route name such as \"chat\", found \"\"",
        "8:8: route[0].host: expected a host name such as \"api.example.com\" or \"*.example.com\", found \"*.a.*.com\"; `*` is only allowed as the whole first label, as in \"*.example.com\"",
        "10:12: route[0].upstream: upstream \"gone\" is not defined; defined upstreams: m",
        "11:38: route[0].rate_limit.requests_per_second: expected a number greater than 0, found 0; e.g. requests_per_second = 50 or 0.5",
        "11:47: route[0].rate_limit.key: expected \"ip\", \"header:NAME\" or \"consumer\", found \"cookie\"; e.g. \"header:x-api-key\"; NAME must be a valid HTTP header name",
        "12:31: route[0].auth.jwt.secret_env: expected an environment variable name such as \"JWT_SECRET\", found \"1X\"",
        "16:12: upstream.m.protocol: expected one of \"http1\", \"h2c\", \"https\", found \"http2\"; did you mean \"http1\"?",
        "18:11: upstream.m.retries: expected a whole number from 0 to 10, found 11; it counts other backends tried after the first; 0 disables retries",
        "23:11: upstream.m.health.timeout: timeout (1s) must be shorter than interval (1s); e.g. interval = \"2s\", timeout = \"1s\"",
        "24:17: upstream.m.health.expect_status: expected a whole number from 100 to 599, found 600; leave it out to accept any 2xx status",
    ]),
    ("[route] instead of [[route]], and no listener", Whole("[listen]\n[route]\nname = \"x\"\n"), &[
        "1:1: listen: no listener; set http = \"0.0.0.0:8080\" and/or https = \"0.0.0.0:8443\" in [listen]",
        "2:1: route: routes are a list; write each one as [[route]] (double brackets), not [route]",
    ]),
    ("empty file", Whole(""), &[
        "1:1: listen: missing; add a [listen] table with http = \"0.0.0.0:8080\"",
        "1:1: route: missing; add at least one [[route]] with name = \"chat\", path = \"/v1/chat\", upstream = \"NAME\"",
    ]),
    ("upstream TLS keys without https, backends and discover", Add("ca = \"ca.pem\"\ndiscover = { dns = \"chat:80\" }\nclient_key = \"k.pem\""), &[
        "11:6: upstream.chat.ca: only used with protocol = \"https\"; set protocol = \"https\" or remove it",
        "12:12: upstream.chat.discover: use either backends or discover, not both; remove one of them",
        "13:14: upstream.chat.client_key: only used with protocol = \"https\"; set protocol = \"https\" or remove it",
        "13:14: upstream.chat.client_key: client_key needs client_cert; add client_cert = \"client.crt\"",
    ]),
    ("host with a port, and empty auth", Replace("upstream = \"chat\"", "upstream = \"chat\"\nhost = \"API.example.com:80\"\nauth = {}"), &[
        "8:8: route[0].host: expected a host name such as \"api.example.com\" or \"*.example.com\", found \"API.example.com:80\"; remove the port; routes match the host name only",
        "9:8: route[0].auth: is empty; write { api_keys_file = \"keys.txt\" } or { jwt = { secret_env = \"JWT_SECRET\" } }",
    ]),
    ("admin on the http listener's port", Replace("http = \"0.0.0.0:8080\"", "http = \"0.0.0.0:8080\"\nadmin = \"127.0.0.1:8080\""), &["3:9: listen.admin: 127.0.0.1:8080 collides with listen.http (0.0.0.0:8080); give each listener its own port"]),
    ("share cap without a cap", Add("priority = { header = \"x-priority\", classes = [\"default\", { name = \"batch\", max_share = 10 }] }"), &["11:12: upstream.chat.priority: max_share is a share of in-flight slots, and upstream.chat has no cap; set max_inflight = N or \"auto\""]),
    ("priority without its header", Add("max_inflight = 1\npriority = { classes = [\"default\"] }"), &["12:12: upstream.chat.priority.header: missing; add header = \"x-priority\" to [upstream.chat.priority]"]),
    ("priority header not a header name", Add("max_inflight = 1\npriority = { header = \"x priority\", classes = [\"default\"] }"), &["12:23: upstream.chat.priority.header: expected a header name such as \"x-priority\", found \"x priority\"; letters, digits and !#$%&'*+-.^_`|~ only"]),
    ("no priority classes", Add("max_inflight = 1\npriority = { header = \"x-p\", classes = [] }"), &["12:40: upstream.chat.priority.classes: name 1 to 8 classes, highest first, e.g. [\"interactive\", \"default\", \"batch\"]"]),
    ("priority class listed twice", Add("max_inflight = 1\npriority = { header = \"x-p\", classes = [\"default\", \"default\"] }"), &["12:52: upstream.chat.priority.classes[1]: \"default\" is listed twice; remove one"]),
    ("priority classes differing only in case", Add("max_inflight = 1\npriority = { header = \"x-p\", classes = [\"hi\", \"Default\", \"DEFAULT\"], default = \"DEFAULT\" }"), &["12:58: upstream.chat.priority.classes[2]: \"DEFAULT\" differs from \"Default\" only in case, and header values match classes case-insensitively, so it could never be chosen; rename or remove one"]),
    ("default class not a class", Add("max_inflight = 1\npriority = { header = \"x-p\", classes = [\"a\", \"b\"], default = \"c\" }"), &["12:62: upstream.chat.priority.default: \"c\" is not one of the classes; name one of \"a\", \"b\""]),
    ("unknown key in a class", Add("max_inflight = 1\npriority = { header = \"x-p\", classes = [\"default\", { name = \"batch\", colour = 1 }] }"), &["12:70: upstream.chat.priority.classes[1].colour: unknown key `colour`; allowed keys here: max_share, name, queue"]),
    ("class name not a label", Add("max_inflight = 1\npriority = { header = \"x-p\", classes = [\"default\", \"two words\"] }"), &["12:52: upstream.chat.priority.classes[1]: expected a class name such as \"batch\", found \"two words\"; up to 64 letters, digits, '-', '_' or '.' (it is also a metric label)"]),
    ("fair share header without its name", Add("max_inflight = 1\nfair_share = \"header:\""), &["12:14: upstream.chat.fair_share: expected \"consumer\" or \"header:NAME\", found \"header:\"; e.g. \"header:x-tenant\"; \"consumer\" is the client a route's auth accepted"]),
];

/// Every case of [`BROKEN`]; all mismatches are reported at once, by case name.
#[test]
fn broken_files() {
    let mut wrong = Vec::new();
    for (name, edit, want) in BROKEN {
        let src = edit.apply();
        let got = errors(&src);
        let want: Vec<String> = want.iter().map(|w| format!("{FILE}:{w}")).collect();
        if got != want {
            wrong.push(format!(
                "{name}:\n{src}\ngot:\n{}\nwant:\n{}\n",
                got.join("\n"),
                want.join("\n")
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn learned_max_inflight() {
    let up = |extra: &str| ok(&with_upstream(extra)).config.upstreams[0].clone();
    let auto = up("max_inflight = \"auto\"");
    assert_eq!(
        (auto.max_inflight, auto.max_inflight_auto),
        (0, Some(AutoLimit { min: 1, max: 256 }))
    );
    let bounded = up("max_inflight = \"auto\"\nmax_inflight_min = 2\nmax_inflight_max = 16");
    assert_eq!(
        bounded.max_inflight_auto,
        Some(AutoLimit { min: 2, max: 16 })
    );
    let fixed = ok(&with_upstream("max_inflight = 4\nmax_inflight_max = 16"));
    assert_eq!(fixed.config.upstreams[0].max_inflight_auto, None);
    let warned: Vec<String> = fixed.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warned,
        ["config/modelgate.toml:12:20: upstream.chat.max_inflight_max: ignored: it bounds a learned limit; set max_inflight = \"auto\" to use it"]
    );
}

#[test]
fn warnings() {
    let src =
        "[listen]\nhttp = \"0.0.0.0:8080\"\nadmin_token_file = \"t\"\n[tls]\ncerts = \"certs\"\n\
               [[route]]\nname = \"a\"\npath = \"/\"\nupstream = \"u\"\n\
               [upstream.u]\nbackends = [\"10.0.0.1:80\"]\nhash_key = \"ip\"\n\
               [upstream.unused]\nbackends = [\"10.0.0.2:80\"]\n";
    let got: Vec<String> = ok(src).warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "config/modelgate.toml:3:20: listen.admin_token_file: unused because listen.admin is not set; add admin = \"127.0.0.1:9901\" or remove it",
            "config/modelgate.toml:4:1: tls: [tls] is unused because listen.https is not set; add https = \"0.0.0.0:8443\" to [listen] or remove [tls]",
            "config/modelgate.toml:12:12: upstream.u.hash_key: ignored with balance = \"least_outstanding\"; it is only used with balance = \"consistent_hash\"",
            "config/modelgate.toml:13:11: upstream.unused: no route uses this upstream; add a [[route]] with upstream = \"NAME\" or remove it",
        ]
    );
}

#[test]
fn admin_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let with_token = |path: &str| {
        MINIMAL.replace(
            "http = \"0.0.0.0:8080\"",
            &format!(
                "http = \"0.0.0.0:8080\"\nadmin = \"10.1.2.3:9901\"\nadmin_token_file = {path:?}"
            ),
        )
    };
    let l = ok(&with_token(token.to_str().unwrap()));
    assert_eq!(l.config.listen.admin_token_file, Some(token.clone()));
    // A token file `run` could not read is refused here too, where it is named.
    let missing = dir.path().join("missing");
    let errs = errors(&with_token(missing.to_str().unwrap()));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("config/modelgate.toml:4:20: listen.admin_token_file: cannot read "),
        "{errs:?}"
    );
    std::fs::write(&token, " \n").unwrap();
    let errs = errors(&with_token(token.to_str().unwrap()));
    assert!(
        errs[0].contains("is empty; put the bearer token in it"),
        "{errs:?}"
    );
}

#[test]
fn unreadable_file() {
    let err = load(Path::new("/nonexistent/modelgate.toml")).unwrap_err();
    assert_eq!(err.0.len(), 1);
    let text = err.to_string();
    assert!(
        text.starts_with("/nonexistent/modelgate.toml: cannot read: "),
        "{text}"
    );
}

#[test]
fn errors_display_one_per_line() {
    let err = parse("", Path::new("x.toml")).unwrap_err();
    assert_eq!(err.to_string().lines().count(), 2);
}

/// No input makes the loader panic: every prefix of the full example, and some odd values.
#[test]
fn no_panics() {
    for (i, _) in FULL.char_indices() {
        let _ = parse(&FULL[..i], Path::new(FILE));
    }
    for odd in [
        "max_inflight = -1",
        "max_inflight = 0xffffffffffff",
        "retries = 1e400",
        "weight = nan",
        "connect_timeout = \"99999999999999999999999999h\"",
        "queue = { size = 9223372036854775807 }",
        "\"\" = 1",
        "\"é\" = 1",
        "health = 1",
        "eject = []",
    ] {
        let _ = parse(&with_upstream(odd), Path::new(FILE));
    }
}

#[test]
fn scheduling_keys() {
    // `fair_share = "consumer"` needs a route with auth.
    let authed = MINIMAL.replace(
        "upstream = \"chat\"\n",
        "upstream = \"chat\"\nauth = { api_keys_file = \"keys.txt\" }\n",
    );
    let up = |extra: &str| ok(&format!("{authed}{extra}\n")).config.upstreams[0].clone();
    let u = up("max_inflight = 2\nqueue = { size = 100, timeout = \"20s\" }\n\
                priority = { header = \"X-Priority\", max_wait_behind = \"3s\", classes = [\"interactive\", \"default\", \
                { name = \"batch\", queue = { size = 10 }, max_share = 25 }] }\n\
                fair_share = \"consumer\"");
    let p = u.priority.unwrap();
    assert_eq!(p.header, "x-priority");
    assert_eq!(p.default, 1);
    assert_eq!(p.max_wait_behind, Duration::from_secs(3));
    let names: Vec<&str> = p.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["interactive", "default", "batch"]);
    // A class's queue keys default to the upstream's.
    assert_eq!(p.classes[0].queue, u.queue);
    assert_eq!(
        p.classes[2].queue,
        Queue {
            size: 10,
            timeout: Duration::from_secs(20)
        }
    );
    assert_eq!(p.classes[2].max_share, Some(25));
    assert_eq!(u.fair_share, Some(FairShare::Consumer));
    let h = up("max_inflight = 1\nfair_share = \"header:X-Tenant\"\n\
                priority = { header = \"x-p\", classes = [\"hi\", \"lo\"], default = \"lo\" }");
    assert_eq!(h.fair_share, Some(FairShare::Header("x-tenant".into())));
    assert_eq!(h.priority.unwrap().default, 1);
    // The default class is found as header values find classes: case-insensitively.
    for default in ["", ", default = \"LO\""] {
        let c = up(&format!(
            "max_inflight = 1\npriority = {{ header = \"x-p\", classes = [\"hi\", \"{}\"]{default} }}",
            if default.is_empty() { "Default" } else { "lo" }
        ));
        assert_eq!(c.priority.unwrap().default, 1, "{default}");
    }

    // Without a cap nothing waits: a warning (a share cap is an error, in BROKEN).
    let warned = ok(&with_upstream("fair_share = \"header:x-tenant\""));
    let w: Vec<String> = warned.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w, ["config/modelgate.toml:11:14: upstream.chat.fair_share: has no effect without max_inflight: requests never wait, so there is no queue to order"]);
}

#[test]
fn settings_that_would_do_nothing_are_warned_about() {
    let src = "[listen]\nhttp = \"0.0.0.0:8080\"\n\
               [[route]]\nname = \"a\"\npath = \"/\"\nupstream = \"u\"\n\
               [upstream.u]\nbackends = [\"10.0.0.1:80\"]\n\
               wake = { url = \"http://autoscaler:8080/wake\" }\n\
               [upstream.u.load]\nevery = \"1s\"\n";
    let got: Vec<String> = ok(src).warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "config/modelgate.toml:9:8: upstream.u.wake: wake without hold: requests still get 503 at once while the upstream wakes; add hold = \"30s\" to hold them until a replica is ready",
            "config/modelgate.toml:10:1: upstream.u.load: reads no load report (neither metrics nor orca); add metrics = \"/metrics\" or orca = true, or remove the table",
        ]
    );
    // With hold (and health checks, which tell it the replicas are down or starting)
    // and a report source, nothing to say.
    let fixed = src
        .replace(
            "wake = {",
            "hold = \"30s\"\nhealth = { path = \"/health\" }\nwake = {",
        )
        .replace("every = \"1s\"", "every = \"1s\"\norca = true");
    assert!(ok(&fixed).warnings.is_empty());
}

#[test]
fn a_model_that_is_not_a_string_or_a_list_says_so() {
    let src = "[listen]\nhttp = \"0.0.0.0:8080\"\n\
               [[route]]\nname = \"a\"\npath = \"/v1\"\nupstream = \"u\"\napi = \"openai\"\nmodel = 5\n\
               [upstream.u]\nbackends = [\"10.0.0.1:80\"]\n";
    let got = errors(src);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].contains("route[0].model: expected a model name or a list of them, such as"),
        "{got:?}"
    );
    assert!(!got[0].contains("an array"), "{got:?}");
}
