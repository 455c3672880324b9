//! The properties the fuzz targets in `tests/fuzz/` check, one function per target,
//! kept here so `cargo test` compiles and runs them on seed inputs (the fuzzers
//! themselves need a nightly toolchain). Each takes any bytes and panics only when
//! a property fails.

use std::sync::OnceLock;

use crate::config::{GaugeSelector, HostMatch, Jwt, JwtKey, MetricsPage};
use crate::edge::credentials::{bearer_token, presented, Presented};
use crate::edge::keys::KeySet;
use crate::edge::JwtAuth;
use crate::routing::{normalize_path, RouteTable};

/// Config parsing and validation: any text gives a config or errors, never a panic;
/// every error names a line inside the file; a valid config renders its summary.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("fuzz/modelgate.toml");
    match crate::config::parse(text, path) {
        Ok(loaded) => {
            let _ = crate::config::summary(&loaded.config);
        }
        Err(errors) => {
            let lines = text.lines().count() + 1;
            for e in &errors.0 {
                assert!(
                    e.line <= lines,
                    "error line {} beyond the file ({lines})",
                    e.line
                );
            }
        }
    }
}

/// Route matching with path normalisation. Lines of `data`: routes as `host path`
/// (host `-` for none), the last line the request's `host target`. A normalised
/// path is normal (no empty, `.` or `..` segment) and normalising it again changes
/// nothing; a match is a configured prefix; `strip_prefix` leaves a path.
pub fn routing(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines: Vec<&str> = text.lines().collect();
    let Some(request) = lines.pop() else {
        return;
    };
    let mut table = RouteTable::default();
    let mut prefixes = Vec::new();
    for line in lines.iter().take(64) {
        let (host, path) = line.split_once(' ').unwrap_or(("-", line));
        if !path.starts_with('/') {
            continue;
        }
        let host = match host {
            "-" => None,
            h if h.starts_with("*.") => Some(HostMatch::Wildcard(h[1..].to_ascii_lowercase())),
            h => Some(HostMatch::Exact(h.to_ascii_lowercase())),
        };
        table.insert(host.as_ref(), path, path.to_string());
        prefixes.push(path.to_string());
    }
    let (host, target) = request.split_once(' ').unwrap_or(("", request));
    let Ok(path) = normalize_path(target) else {
        return;
    };
    if path.starts_with('/') {
        let inner = path.get(1..).unwrap_or_default();
        let mut segments: Vec<&str> = inner.split('/').collect();
        segments.pop(); // a trailing slash leaves one empty last segment
        let dot = |s: &str| matches!(&*s.to_ascii_lowercase().replace("%2e", "."), "." | "..");
        assert!(
            !segments.iter().any(|s| s.is_empty() || dot(s)),
            "{target:?} normalised to {path:?}"
        );
    }
    assert_eq!(
        normalize_path(&path).ok().as_deref(),
        Some(&*path),
        "normalising {target:?} twice"
    );
    if let Some(prefix) = table.resolve(host, &path) {
        assert!(prefixes.contains(prefix));
        let rest = crate::routing::strip_prefix(&path, prefix);
        assert!(
            rest.starts_with('/') || rest.is_empty(),
            "{path:?} - {prefix:?} = {rest:?}"
        );
    }
    // A request head with any Host: the host used for routing never panics.
    if let Ok(mut head) = pingora::http::RequestHeader::build("GET", b"/", None) {
        if head.insert_header("host", host).is_ok() {
            let _ = crate::routing::request_host(&head);
        }
    }
}

/// The environment variable the fuzzed HS256 checker reads its secret from.
const JWT_SECRET_VAR: &str = "MODELGATE_FUZZ_JWT_SECRET";

fn jwt() -> &'static JwtAuth {
    static JWT: OnceLock<Option<JwtAuth>> = OnceLock::new();
    let auth = JWT.get_or_init(|| {
        // Set once, before the checker reads it; nothing else reads this variable.
        std::env::set_var(JWT_SECRET_VAR, "fuzz-secret-fuzz-secret-fuzz-secret!!");
        JwtAuth::new(&Jwt {
            key: JwtKey::SecretEnv(JWT_SECRET_VAR.into()),
            issuer: Some("iss".into()),
            audience: Some("aud".into()),
            leeway: std::time::Duration::from_secs(30),
        })
        .ok()
    });
    match auth {
        Some(a) => a,
        None => panic!("the fuzz JWT secret was refused"),
    }
}

/// Credential parsing: `data` split at 0xff bytes into an `Authorization` value, an
/// `X-API-Key` value and a keys file. Header parsing, keys-file parsing, key lookup
/// and JWT verification never panic, and a credential found is never empty.
pub fn credentials(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0xff);
    let auth = parts.next().unwrap_or_default();
    let key = parts.next().unwrap_or_default();
    let file = parts.next().unwrap_or_default();

    if let Some(t) = bearer_token(auth) {
        assert!(!t.is_empty());
    }
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(auth) {
        headers.append(http::header::AUTHORIZATION, v);
    }
    if let Ok(v) = http::HeaderValue::from_bytes(key) {
        headers.append("x-api-key", v);
    }
    if let Presented::One(c) = presented(&headers) {
        assert!(!c.is_empty());
        let _ = jwt().verify(c);
    }
    if let Ok(text) = std::str::from_utf8(file) {
        if let Ok(set) = KeySet::parse(text) {
            let _ = set.lookup(key);
        }
    }
}

/// ORCA `endpoint-load-metrics` values: a report or none, never a panic; a report
/// carries something, and only finite, non-negative numbers.
pub fn orca(data: &[u8]) {
    if let Some(report) = crate::upstream::parse_orca(data) {
        assert!(!report.is_empty());
        for v in [report.queue, report.running, report.cache_usage]
            .into_iter()
            .flatten()
        {
            assert!(v.is_finite() && v >= 0.0, "{v} from {data:?}");
        }
    }
}

/// A replica's Prometheus `/metrics` page, read with the engines' own names and with
/// named gauges: never panics, and a report carries only finite, non-negative values.
pub fn metrics_page(data: &[u8]) {
    let Ok(page) = std::str::from_utf8(data) else {
        return;
    };
    let auto = MetricsPage {
        path: "/metrics".into(),
        queue: None,
        running: None,
        cache: None,
    };
    let named = MetricsPage {
        queue: Some(GaugeSelector {
            name: "q".into(),
            labels: vec![("kind".into(), "waiting".into())],
        }),
        ..auto.clone()
    };
    for names in [&auto, &named] {
        if let Ok(r) = crate::load::parse_page(page, names) {
            for v in [r.report.queue, r.report.running, r.report.cache_usage]
                .into_iter()
                .flatten()
            {
                assert!(v.is_finite() && v >= 0.0, "{v} from {page:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_seeds() {
        for seed in [
            &include_bytes!("../config/modelgate.toml")[..],
            b"",
            b"[listen]\nhttp = 1\n",
            b"[[route]]\nname = \"a\"\npath = \"/\"\nupstream = \"x\"\n",
            b"\xff",
        ] {
            config(seed);
        }
    }

    #[test]
    fn routing_seeds() {
        for seed in [
            "- /v1\napi.example.com /v1/chat\n*.example.com /\nx.example.com /v1/chat/../../admin",
            "- /a\n a/%2e%2e/b",
            "- /\n //a//b/./c/..",
            "- /v1/chat\nh /v1/chatter",
            "",
            "h",
        ] {
            routing(seed.as_bytes());
        }
    }

    #[test]
    fn credentials_seeds() {
        for seed in [
            &b"Bearer abc\xffabc\xffalice:abc\n# c\n"[..],
            b"Bearer eyJhbGciOiJub25lIn0.e30.\xff\xff",
            b"bearer  \xff \xff:\n:\n",
            b"\xff\xff\xff",
        ] {
            credentials(seed);
        }
    }

    #[test]
    fn metrics_page_seeds() {
        for seed in [
            "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 3\nvllm:num_requests_running 2\nvllm:gpu_cache_usage_perc 0.5\n",
            "q{kind=\"waiting\"} NaN\nq{kind=\"waiting\"} -1\nq{kind=\"waiting\"} +Inf\n",
            "vllm:num_requests_waiting 1e400\n",
            "\u{0}{{{",
        ] {
            metrics_page(seed.as_bytes());
        }
    }

    #[test]
    fn orca_seeds() {
        for seed in [
            "TEXT named_metrics.num_requests_waiting=3, named_metrics.kv_cache_usage_perc=0.4",
            r#"JSON {"named_metrics":{"num_requests_running":1e400}}"#,
            "TEXT named_metrics.num_requests_waiting=NaN",
            "named_metrics.num_requests_waiting=inf",
            "",
        ] {
            orca(seed.as_bytes());
        }
    }
}
