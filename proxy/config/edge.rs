//! Reading the edge-protection settings: a route's `auth` and `rate_limit`, and the
//! connection and request-head limits of `[listen]`.

use std::time::Duration;

use toml::de::DeValue;

use super::reader::{header_key, Ctx, Field, TableReader};
use super::types::{Auth, AuthMethod, ConnLimits, Jwt, JwtKey, RateKey, RateLimit};

/// Default of `rate_limit.max_keys`: about 5 MB of limiter state per route.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// Default of `jwt.leeway`.
pub(super) const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);
/// Default of `jwt.refresh` (JWKS).
pub(super) const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(600);

/// Defaults of the `[listen]` limits.
pub const DEFAULT_LIMITS: ConnLimits = ConnLimits {
    max_connections: 0,
    max_connections_per_ip: 0,
    header_read_timeout: Duration::from_secs(10),
    body_read_timeout: Duration::from_secs(60),
    keepalive_timeout: Duration::from_secs(60),
    max_header_count: 100,
    max_header_bytes: 64 * 1024,
};

/// The most header fields pingora's HTTP/1 parser accepts; more is a 400 before any limit of ours.
pub(super) const PARSER_MAX_HEADERS: usize = 256;
/// The largest request head pingora's HTTP/1 parser reads.
pub(super) const PARSER_MAX_HEAD_BYTES: usize = 1_048_575;

/// The limits keys of `[listen]` (taken out of `t`; missing keys get their default).
pub(crate) fn read_limits(cx: &mut Ctx<'_>, t: &mut TableReader<'_, '_>) -> Option<ConnLimits> {
    let d = DEFAULT_LIMITS;
    let count = |cx: &mut Ctx<'_>, f: Option<Field<'_, '_>>, default: usize, hint: &str| match f {
        Some(f) => cx.uint(&f, 0, i128::from(u32::MAX), hint),
        None => Some(default),
    };
    let max_connections = count(
        cx,
        t.take("max_connections"),
        d.max_connections,
        "open client connections; 0 = unlimited",
    );
    let max_connections_per_ip = count(
        cx,
        t.take("max_connections_per_ip"),
        d.max_connections_per_ip,
        "open client connections from one address; 0 = unlimited",
    );
    let header_read_timeout = t
        .take("header_read_timeout")
        .map_or(Some(d.header_read_timeout), |f| cx.duration(&f, false));
    let body_read_timeout = t
        .take("body_read_timeout")
        .map_or(Some(d.body_read_timeout), |f| cx.duration(&f, false));
    let keepalive_timeout = t
        .take("keepalive_timeout")
        .map_or(Some(d.keepalive_timeout), |f| cx.duration(&f, false));
    let max_header_count = match t.take("max_header_count") {
        Some(f) => cx.uint(
            &f,
            1,
            PARSER_MAX_HEADERS as i128,
            "the HTTP/1 parser takes at most 256 header fields",
        ),
        None => Some(d.max_header_count),
    };
    let max_header_bytes = match t.take("max_header_bytes") {
        Some(f) => cx.size(&f).and_then(|n| {
            if n < 1024 || n > PARSER_MAX_HEAD_BYTES as u64 {
                cx.error(
                    &f.span(),
                    &f.path,
                    "must be from 1KiB to 1023KiB (the HTTP/1 parser reads at most 1 MiB of request head), e.g. \"64KiB\"",
                );
                return None;
            }
            usize::try_from(n).ok()
        }),
        None => Some(d.max_header_bytes),
    };
    Some(ConnLimits {
        max_connections: max_connections?,
        max_connections_per_ip: max_connections_per_ip?,
        header_read_timeout: header_read_timeout?,
        body_read_timeout: body_read_timeout?,
        keepalive_timeout: keepalive_timeout?,
        max_header_count: max_header_count?,
        max_header_bytes: max_header_bytes?,
    })
}

/// `rate_limit = { requests_per_second = 50, burst = 100, key = "ip", max_keys = 100000 }`.
/// `has_auth` says whether the route authenticates (needed for `key = "consumer"`).
pub(crate) fn read_rate_limit(
    cx: &mut Ctx<'_>,
    f: &Field<'_, '_>,
    has_auth: bool,
) -> Option<RateLimit> {
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
        .map_or(Some(RateKey::ClientAddr), |f| rate_key(cx, &f, has_auth));
    let max_keys = t.take("max_keys").map_or(Some(DEFAULT_MAX_KEYS), |f| {
        cx.uint(
            &f,
            1,
            100_000_000,
            "the most clients tracked at once, e.g. 100000 (about 50 bytes each)",
        )
    });
    t.finish(cx);
    Some(RateLimit {
        requests_per_second: rps?,
        burst: burst?,
        key: key?,
        max_keys: max_keys?,
    })
}

/// `"ip"`, `"header:NAME"` (stored lower-case) or `"consumer"`.
fn rate_key(cx: &mut Ctx<'_>, f: &Field<'_, '_>, has_auth: bool) -> Option<RateKey> {
    let valid = match f.value.get_ref() {
        DeValue::String(s) if s.as_ref() == "ip" => Some(RateKey::ClientAddr),
        DeValue::String(s) if s.as_ref() == "consumer" => Some(RateKey::Consumer),
        DeValue::String(s) => header_key(s).map(RateKey::Header),
        _ => None,
    };
    match valid {
        None => {
            cx.expected(
                f,
                r#""ip", "header:NAME" or "consumer""#,
                r#"e.g. "header:x-api-key"; NAME must be a valid HTTP header name"#,
            );
            None
        }
        Some(RateKey::Consumer) if !has_auth => {
            cx.error(
                &f.span(),
                &f.path,
                "\"consumer\" needs auth on this route (the consumer is the API key's name or the JWT's sub); add auth = { api_keys_file = \"keys.txt\" } or use key = \"ip\"",
            );
            None
        }
        key => key,
    }
}

const AUTH_EXAMPLE: &str =
    "{ api_keys_file = \"keys.txt\" } or { jwt = { secret_env = \"JWT_SECRET\" } }";

/// `auth = { api_keys_file = "keys.txt" }` or `{ jwt = { ... } }`, plus `strip_credentials`.
pub(crate) fn read_auth(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<Auth> {
    let mut t = cx.table(f, AUTH_EXAMPLE)?;
    let keys_f = t.take("api_keys_file");
    let jwt_f = t.take("jwt");
    let strip = t
        .take("strip_credentials")
        .map_or(Some(false), |f| cx.bool(&f));
    let keys = keys_f
        .as_ref()
        .and_then(|f| cx.path(f, "keys.txt").map(AuthMethod::ApiKeysFile));
    let jwt = jwt_f
        .as_ref()
        .and_then(|f| read_jwt(cx, f))
        .map(AuthMethod::Jwt);
    let method = match (&keys_f, &jwt_f) {
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
            cx.error(
                &t.span(),
                t.path(),
                format!("is empty; write {AUTH_EXAMPLE}"),
            );
            None
        }
    };
    t.finish(cx);
    Some(Auth {
        method: method?,
        strip_credentials: strip?,
    })
}

/// `jwt = { secret_env = "VAR" }`, `{ public_key = "file.pem" }` or
/// `{ jwks = "https://...", refresh = "10m" }`, with optional `issuer`, `audience`, `leeway`.
fn read_jwt(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<Jwt> {
    const EXAMPLE: &str = "{ secret_env = \"JWT_SECRET\" }, { public_key = \"jwt.pem\" } or { jwks = \"https://issuer/.well-known/jwks.json\" }";
    let mut t = cx.table(f, EXAMPLE)?;
    let env_f = t.take("secret_env");
    let key_f = t.take("public_key");
    let jwks_f = t.take("jwks");
    let refresh_f = t.take("refresh");
    let env = env_f.as_ref().and_then(|f| {
        let expected = "an environment variable name such as \"JWT_SECRET\"";
        let name = cx.nonempty(f, expected)?;
        let valid = !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            cx.expected(f, expected, "");
            return None;
        }
        Some(JwtKey::SecretEnv(name.to_string()))
    });
    let key = key_f
        .as_ref()
        .and_then(|f| cx.path(f, "jwt.pem").map(JwtKey::PublicKey));
    let refresh = refresh_f
        .as_ref()
        .map_or(Some(DEFAULT_JWKS_REFRESH), |f| cx.duration(f, false));
    let jwks = jwks_f.as_ref().and_then(|f| {
        let url = jwks_url(cx, f)?;
        Some(JwtKey::Jwks {
            url,
            refresh: refresh?,
        })
    });
    if let (Some(f), None) = (&refresh_f, &jwks_f) {
        cx.error(
            &f.span(),
            &f.path,
            "refresh only applies to jwks; remove it or add jwks = \"https://...\"",
        );
    }
    let given = [&env_f, &key_f, &jwks_f];
    let key = match given.iter().filter(|f| f.is_some()).count() {
        1 => env.or(key).or(jwks),
        0 => {
            cx.error(
                &t.span(),
                t.path(),
                format!("is empty; write jwt = {EXAMPLE}"),
            );
            None
        }
        _ => {
            let second = given.iter().filter_map(|f| f.as_ref()).nth(1);
            if let Some(f) = second {
                cx.error(
                    &f.span(),
                    &f.path,
                    "use one of secret_env, public_key or jwks; remove the others",
                );
            }
            None
        }
    };
    let text = |cx: &mut Ctx<'_>, f: Option<Field<'_, '_>>, expected: &str| match f {
        Some(f) => cx.nonempty(&f, expected).map(|s| Some(s.to_string())),
        None => Some(None),
    };
    let issuer = text(
        cx,
        t.take("issuer"),
        "the expected iss claim, e.g. \"https://issuer.example.com/\"",
    );
    let audience = text(
        cx,
        t.take("audience"),
        "the expected aud claim, e.g. \"modelgate\"",
    );
    let leeway = t
        .take("leeway")
        .map_or(Some(DEFAULT_JWT_LEEWAY), |f| cx.duration(&f, true));
    t.finish(cx);
    Some(Jwt {
        key: key?,
        issuer: issuer?,
        audience: audience?,
        leeway: leeway?,
    })
}

/// An `https://` URL (or `http://` to a loopback address, for a local key server).
fn jwks_url(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<String> {
    let expected = "a URL such as \"https://issuer.example.com/.well-known/jwks.json\"";
    let s = cx.nonempty(f, expected)?;
    let Ok(uri) = s.parse::<http::Uri>() else {
        cx.expected(f, expected, "");
        return None;
    };
    let host = uri.host().unwrap_or("");
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Some(s.to_string()),
        Some("http") if loopback => Some(s.to_string()),
        Some("http") if !host.is_empty() => {
            cx.error(
                &f.span(),
                &f.path,
                "keys fetched over plain http could be forged on the way; use https:// (http:// is only allowed to a loopback address)",
            );
            None
        }
        _ => {
            cx.expected(f, expected, "");
            None
        }
    }
}
