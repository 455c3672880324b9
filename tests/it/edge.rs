//! Auth and rate limits at the edge: API keys (file reloads), JWT (HS256, PEM public
//! key, JWKS from a local server), per-route rate limits by ip / header / consumer,
//! over HTTP/1.1 and HTTP/2.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use modelgate::demo::replica::{Replica, ReplicaHandle};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn clients() -> [(&'static str, reqwest::Client); 2] {
    [("h1", h1()), ("h2", h2())]
}

/// A proxy with one `/` route to `replica` carrying `route_extra` lines.
async fn proxy_with(
    replica: &ReplicaHandle,
    route_extra: &str,
    files: &[(&str, &str)],
    env: &[(&str, &str)],
) -> TestProxy {
    let toml = format!(
        r#"
[listen]
http = "{{http}}"
admin = "{{admin}}"

[[route]]
name = "api"
path = "/"
upstream = "pool"
{route_extra}

[upstream.pool]
backends = [{}]
"#,
        backend_list(&[replica])
    );
    proxy_with_files(&toml, files, env).await
}

/// A proxy running `toml`, where `{dir}` names a directory holding `files`.
async fn proxy_with_files(toml: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> TestProxy {
    // Files live next to the config; the proxy's working directory is its temp dir,
    // but relative paths resolve against the config file, so write them first.
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let toml = toml.replace("{dir}", &dir.path().display().to_string());
    let proxy = TestProxy::start_with_env(&toml, env).await;
    // Keep the files for the life of the test process.
    std::mem::forget(dir);
    proxy
}

async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn api_keys_by_bearer_or_header_with_consumer_in_the_log_and_no_secret_anywhere() {
    let replica = Replica::builder("r").spawn().await.unwrap();
    let proxy = proxy_with(
        &replica,
        r#"auth = { api_keys_file = "{dir}/keys.txt", strip_credentials = true }"#,
        &[(
            "keys.txt",
            "# consumers\nalice: sk-alice-0123456789\nsk-anonymous-9876543210\n",
        )],
        &[],
    )
    .await;
    let url = proxy.url("/v1/echo");
    for (version, client) in clients() {
        // Missing, wrong, malformed: 401 with WWW-Authenticate and the JSON error.
        for headers in [
            vec![],
            vec![("authorization", "Bearer sk-alice-012345678")],
            vec![("x-api-key", "sk-wrong")],
            vec![("authorization", "Basic c2stYWxpY2UtMDEyMzQ1Njc4OQ==")],
            vec![
                ("authorization", "Bearer sk-alice-0123456789"),
                ("x-api-key", "sk-anonymous-9876543210"),
            ],
        ] {
            let resp = get(&client, &url, &headers).await;
            assert_eq!(resp.status(), 401, "{version} {headers:?}");
            assert_eq!(
                resp.headers()["www-authenticate"],
                "Bearer realm=\"modelgate\""
            );
            let (_, body) = status_and_body(resp).await;
            assert_eq!(body, json!({"error": "unauthorized"}));
        }
        for headers in [
            vec![("authorization", "Bearer sk-alice-0123456789")],
            vec![("x-api-key", "sk-alice-0123456789")],
            vec![("X-Api-Key", "sk-anonymous-9876543210")],
        ] {
            let resp = get(&client, &url, &headers).await;
            let (status, body) = status_and_body(resp).await;
            assert_eq!(status, 200, "{version} {headers:?}");
            // strip_credentials: the replica never sees them.
            let seen = body["headers"].as_object().unwrap();
            assert!(!seen.contains_key("authorization"), "{body}");
            assert!(!seen.contains_key("x-api-key"), "{body}");
        }
    }
    assert_eq!(
        replica.hits(),
        6,
        "refused requests never reach the replica"
    );
    assert_eq!(
        metric_value(
            &proxy,
            "modelgate_rejected_total{reason=\"unauthorized\",upstream=\"pool\"}"
        )
        .await,
        10.0
    );
    eventually("access log names the consumers", PATIENCE, || async {
        let logs = proxy.logs();
        logs.contains("\"consumer\":\"alice\"") && logs.contains("\"consumer\":\"key-")
    })
    .await;
    let logs = proxy.logs();
    assert!(!logs.contains("sk-alice"), "a key leaked into the log");
    assert!(!logs.contains("sk-anonymous"), "a key leaked into the log");
    let config = h1()
        .get(proxy.admin_url("/config"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!config.contains("sk-"), "{config}");
}

#[tokio::test]
async fn keys_file_changes_apply_and_a_broken_file_keeps_the_old_keys() {
    let replica = Replica::builder("r").spawn().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, "alice:key-one-aaaaaaaa\n").unwrap();
    let proxy = proxy_with(
        &replica,
        &format!(r#"auth = {{ api_keys_file = "{}" }}"#, keys.display()),
        &[],
        &[],
    )
    .await;
    let url = proxy.url("/");
    let status = |key: &'static str| {
        let url = url.clone();
        async move { get(&h1(), &url, &[("x-api-key", key)]).await.status() }
    };
    assert_eq!(status("key-one-aaaaaaaa").await, 200);
    assert_eq!(status("key-two-bbbbbbbb").await, 401);

    std::fs::write(&keys, "bob:key-two-bbbbbbbb\n").unwrap();
    eventually("the new key works", PATIENCE, || async {
        status("key-two-bbbbbbbb").await == 200
    })
    .await;
    assert_eq!(
        status("key-one-aaaaaaaa").await,
        401,
        "the removed key is refused"
    );

    std::fs::write(&keys, "bob:key-two-bbbbbbbb\nthis line is: broken\n").unwrap();
    eventually("the broken file is reported", PATIENCE, || async {
        proxy.logs().contains("keeping the 1 keys loaded before")
    })
    .await;
    assert_eq!(status("key-two-bbbbbbbb").await, 200, "old keys kept");
    assert!(!proxy.logs().contains("key-two-bbbbbbbb"));
}

#[tokio::test]
async fn a_missing_keys_file_or_secret_is_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("modelgate.toml");
    for (route_extra, want) in [
        (
            r#"auth = { api_keys_file = "nope.txt" }"#,
            "route[0].auth.api_keys_file: cannot read",
        ),
        (
            r#"auth = { jwt = { secret_env = "MODELGATE_TEST_UNSET_SECRET" } }"#,
            "route[0].auth.jwt: the environment variable MODELGATE_TEST_UNSET_SECRET is not set",
        ),
        (
            r#"rate_limit = { requests_per_second = 1, key = "consumer" }"#,
            "route[0].rate_limit.key: \"consumer\" needs auth on this route",
        ),
        (
            r#"auth = { jwt = { jwks = "http://issuer.example.com/jwks.json" } }"#,
            "route[0].auth.jwt.jwks: keys fetched over plain http",
        ),
    ] {
        std::fs::write(
            &cfg,
            format!(
                "[listen]\nhttp = \"127.0.0.1:1\"\n[[route]]\nname = \"a\"\npath = \"/\"\nupstream = \"p\"\n{route_extra}\n[upstream.p]\nbackends = [\"127.0.0.1:9\"]\n"
            ),
        )
        .unwrap();
        let (ok, out) = check_file(&cfg);
        assert!(!ok, "{route_extra}");
        assert!(out.contains(want), "{route_extra}: {out}");
    }
}

/// A token signed with `key` (HS256 unless `header` says otherwise).
fn token(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    encode(header, claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    token(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

/// `alg: none`, unsigned.
fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(claims.to_string())
    )
}

#[tokio::test]
async fn jwt_hs256_checks_signature_exp_nbf_iss_aud_and_refuses_alg_none() {
    let replica = Replica::builder("r").spawn().await.unwrap();
    let proxy = proxy_with(
        &replica,
        r#"auth = { jwt = { secret_env = "TEST_JWT_SECRET", issuer = "https://issuer.test/", audience = "models", leeway = "5s" } }"#,
        &[],
        &[("TEST_JWT_SECRET", SECRET)],
    )
    .await;
    let t = now();
    let good =
        json!({"sub": "team-a", "iss": "https://issuer.test/", "aud": "models", "exp": t + 600});
    let with = |patch: Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let other_secret = EncodingKey::from_secret(b"another-secret-that-is-32-bytes-long!!");
    let cases: Vec<(&str, String, u16)> = vec![
        ("valid", hs256(&good), 200),
        (
            "nbf within leeway",
            hs256(&with(json!({"nbf": t + 3}))),
            200,
        ),
        (
            "aud list containing ours",
            hs256(&with(json!({"aud": ["x", "models"]}))),
            200,
        ),
        ("expired", hs256(&with(json!({"exp": t - 60}))), 401),
        ("no exp", hs256(&with(json!({"exp": null}))), 401),
        (
            "exp as a string",
            hs256(&with(json!({"exp": "never"}))),
            401,
        ),
        (
            "nbf in the future",
            hs256(&with(json!({"nbf": t + 300}))),
            401,
        ),
        (
            "nbf as a string",
            hs256(&with(json!({"nbf": (t + 300).to_string()}))),
            401,
        ),
        (
            "wrong issuer",
            hs256(&with(json!({"iss": "https://evil.test/"}))),
            401,
        ),
        ("no issuer", hs256(&with(json!({"iss": null}))), 401),
        ("wrong audience", hs256(&with(json!({"aud": "other"}))), 401),
        ("no audience", hs256(&with(json!({"aud": null}))), 401),
        (
            "other secret",
            token(&Header::new(Algorithm::HS256), &good, &other_secret),
            401,
        ),
        ("alg none", unsigned(&good), 401),
        (
            "HS384 not allowed",
            token(
                &Header::new(Algorithm::HS384),
                &good,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            ),
            401,
        ),
        ("garbage", "not.a.token".into(), 401),
        (
            "signature stripped",
            {
                let t = hs256(&good);
                format!("{}.", &t[..t.rfind('.').unwrap()])
            },
            401,
        ),
    ];
    for (version, client) in clients() {
        for (what, tok, want) in &cases {
            let auth = format!("Bearer {tok}");
            let resp = get(&client, &proxy.url("/"), &[("authorization", &auth)]).await;
            assert_eq!(resp.status(), *want, "{version}: {what}");
        }
    }
    eventually("the JWT sub is the consumer", PATIENCE, || async {
        proxy.logs().contains("\"consumer\":\"team-a\"")
    })
    .await;
    assert!(!proxy.logs().contains(SECRET));
}

/// A P-256 key pair: the signing key, the public key PEM and its JWK coordinates.
fn es256_pair() -> (EncodingKey, String, String, String) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let enc = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
    let raw = kp.public_key_raw();
    assert_eq!(raw.len(), 65, "uncompressed point");
    (
        enc,
        kp.public_key_pem(),
        B64.encode(&raw[1..33]),
        B64.encode(&raw[33..]),
    )
}

#[tokio::test]
async fn jwt_public_key_refuses_algorithm_confusion() {
    let replica = Replica::builder("r").spawn().await.unwrap();
    let (signer, public_pem, _, _) = es256_pair();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed_signer = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap();
    let proxy = proxy_with(
        &replica,
        r#"auth = { jwt = { public_key = "{dir}/jwt.pem" } }"#,
        &[("jwt.pem", &public_pem)],
        &[],
    )
    .await;
    let claims = json!({"sub": "svc", "exp": now() + 600});
    let cases = [
        (
            "ES256 by the key's owner",
            token(&Header::new(Algorithm::ES256), &claims, &signer),
            200,
        ),
        // The classic confusion: HMAC keyed with the (public) PEM text.
        (
            "HS256 keyed with the public key",
            token(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(public_pem.as_bytes()),
            ),
            401,
        ),
        (
            "EdDSA by another key",
            token(&Header::new(Algorithm::EdDSA), &claims, &ed_signer),
            401,
        ),
        ("alg none", unsigned(&claims), 401),
    ];
    for (version, client) in clients() {
        for (what, tok, want) in &cases {
            let auth = format!("Bearer {tok}");
            let resp = get(&client, &proxy.url("/"), &[("authorization", &auth)]).await;
            assert_eq!(resp.status(), *want, "{version}: {what}");
        }
    }
}

/// A JWKS endpoint on 127.0.0.1:0 whose document can be swapped or taken down.
struct JwksServer {
    addr: std::net::SocketAddr,
    doc: Arc<Mutex<Option<String>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(doc: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let doc = Arc::new(Mutex::new(Some(doc)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (d, f) = (Arc::clone(&doc), Arc::clone(&fetches));
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (d, f) = (Arc::clone(&d), Arc::clone(&f));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    f.fetch_add(1, Ordering::SeqCst);
                    let body = d.lock().unwrap().clone();
                    let resp = match body {
                        Some(b) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                            b.len()
                        ),
                        None => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
                    };
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        JwksServer { addr, doc, fetches }
    }
}

fn jwk(kid: &str, x: &str, y: &str) -> Value {
    json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid, "x": x, "y": y})
}

#[tokio::test]
async fn jwks_keys_are_fetched_refreshed_and_kept_when_the_issuer_fails() {
    let replica = Replica::builder("r").spawn().await.unwrap();
    let (k1, _, x1, y1) = es256_pair();
    let (k2, _, x2, y2) = es256_pair();
    // An HMAC key in a JWKS must never be used (it would make the set's public text a secret).
    let oct = json!({"kty": "oct", "kid": "hmac", "k": B64.encode(SECRET)});
    let server = JwksServer::start(json!({"keys": [jwk("k1", &x1, &y1), oct]}).to_string()).await;
    let proxy = proxy_with(
        &replica,
        &format!(
            r#"auth = {{ jwt = {{ jwks = "http://{}/.well-known/jwks.json", refresh = "1s" }} }}"#,
            server.addr
        ),
        &[],
        &[],
    )
    .await;
    let claims = json!({"sub": "svc", "exp": now() + 600});
    let signed = |kid: &str, key: &EncodingKey| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        format!("Bearer {}", token(&h, &claims, key))
    };
    let status = |auth: String| {
        let url = proxy.url("/");
        async move {
            let mut out = Vec::new();
            for (_, client) in clients() {
                out.push(
                    get(&client, &url, &[("authorization", &auth)])
                        .await
                        .status()
                        .as_u16(),
                );
            }
            out
        }
    };
    eventually("the JWKS is fetched", PATIENCE, || async {
        status(signed("k1", &k1)).await == [200, 200]
    })
    .await;
    assert_eq!(status(signed("k2", &k2)).await, [401, 401], "unknown kid");
    assert_eq!(
        status(signed("k1", &k2)).await,
        [401, 401],
        "kid k1, signed by k2"
    );
    let mut hmac = Header::new(Algorithm::HS256);
    hmac.kid = Some("hmac".into());
    let forged = format!(
        "Bearer {}",
        token(&hmac, &claims, &EncodingKey::from_secret(SECRET.as_bytes()))
    );
    assert_eq!(status(forged).await, [401, 401], "oct key in the JWKS");
    let mut no_kid = Header::new(Algorithm::ES256);
    no_kid.kid = None;
    let t = format!("Bearer {}", token(&no_kid, &claims, &k1));
    assert_eq!(
        status(t).await,
        [200, 200],
        "no kid, one usable key in the set"
    );

    // Rotation: the issuer adds k2.
    *server.doc.lock().unwrap() =
        Some(json!({"keys": [jwk("k1", &x1, &y1), jwk("k2", &x2, &y2)]}).to_string());
    eventually("the rotated key is picked up", PATIENCE, || async {
        status(signed("k2", &k2)).await == [200, 200]
    })
    .await;

    // The issuer fails: the last good set keeps serving.
    *server.doc.lock().unwrap() = None;
    let before = server.fetches.load(Ordering::SeqCst);
    eventually("a failed refresh happened", PATIENCE, || async {
        server.fetches.load(Ordering::SeqCst) >= before + 2
    })
    .await;
    assert_eq!(status(signed("k1", &k1)).await, [200, 200]);
    assert_eq!(status(signed("k2", &k2)).await, [200, 200]);
    assert!(proxy.logs().contains("keeping the 2 keys fetched before"));
}

#[tokio::test]
async fn rate_limit_by_ip_answers_429_with_retry_after() {
    let replica = Replica::builder("r").spawn().await.unwrap();
    let proxy = proxy_with(
        &replica,
        r#"rate_limit = { requests_per_second = 0.05, burst = 3, key = "ip" }"#,
        &[],
        &[],
    )
    .await;
    for (_, client) in clients() {
        let mut codes = Vec::new();
        for _ in 0..3 {
            codes.push(get(&client, &proxy.url("/"), &[]).await.status().as_u16());
        }
        if codes == [200, 200, 200] {
            let resp = get(&client, &proxy.url("/"), &[]).await;
            assert_eq!(resp.status(), 429);
            let secs: u64 = resp.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=20).contains(&secs), "{secs}");
            let (_, body) = status_and_body(resp).await;
            assert_eq!(body, json!({"error": "rate_limited"}));
        } else {
            // The second client shares the first's IP: its bucket is already empty.
            assert_eq!(codes, [429, 429, 429]);
        }
    }
    assert_eq!(replica.hits(), 3);
    assert_eq!(
        metric_value(
            &proxy,
            "modelgate_rejected_total{reason=\"rate_limited\",upstream=\"pool\"}"
        )
        .await,
        4.0
    );
    assert_eq!(
        metric_value(&proxy, "modelgate_rate_limit_keys{route=\"api\"}").await,
        1.0
    );
}

#[tokio::test]
async fn rate_limit_by_header_and_by_consumer() {
    let replica = Replica::builder("r").spawn().await.unwrap();
    let by_header = proxy_with(
        &replica,
        r#"rate_limit = { requests_per_second = 0.1, burst = 2, key = "header:x-client" }"#,
        &[],
        &[],
    )
    .await;
    let by_consumer = proxy_with(
        &replica,
        "auth = { api_keys_file = \"{dir}/keys.txt\" }\nrate_limit = { requests_per_second = 0.1, burst = 2, key = \"consumer\" }",
        &[("keys.txt", "alice:alice-key-123456\nbob:bob-key-1234567\nalice2:alice-key-234567\n")],
        &[],
    )
    .await;
    for (version, client) in clients() {
        let codes = |proxy: &TestProxy, name: &'static str, value: String| {
            let (client, url) = (client.clone(), proxy.url("/"));
            async move {
                let mut out = Vec::new();
                for _ in 0..3 {
                    out.push(
                        get(&client, &url, &[(name, &value)])
                            .await
                            .status()
                            .as_u16(),
                    );
                }
                out
            }
        };
        // Each header value has its own bucket (distinct per client version too).
        for who in ["a", "b"] {
            let v = format!("{who}-{version}");
            assert_eq!(codes(&by_header, "x-client", v).await, [200, 200, 429]);
        }
    }
    // By consumer: alice's bucket is shared by her requests on h1 and h2; bob has his own.
    let c = h1();
    let mut alice = Vec::new();
    for _ in 0..3 {
        alice.push(
            get(
                &c,
                &by_consumer.url("/"),
                &[("x-api-key", "alice-key-123456")],
            )
            .await
            .status()
            .as_u16(),
        );
    }
    assert_eq!(alice, [200, 200, 429]);
    let resp = get(
        &h2(),
        &by_consumer.url("/"),
        &[("x-api-key", "alice-key-123456")],
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(
        get(
            &h2(),
            &by_consumer.url("/"),
            &[("x-api-key", "bob-key-1234567")]
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        get(
            &c,
            &by_consumer.url("/"),
            &[("x-api-key", "alice-key-234567")]
        )
        .await
        .status(),
        200,
        "another key, another consumer"
    );
    // No credential: 401 before any bucket is touched.
    assert_eq!(get(&c, &by_consumer.url("/"), &[]).await.status(), 401);
}

/// Reads one HTTP/1.1 response (Content-Length or chunked body) from `s`, keeping
/// bytes past it in `buf`; returns its status.
async fn read_response(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> u16 {
    let mut chunk = [0u8; 16384];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = resp.parse(buf).unwrap() {
            let status = resp.code.unwrap();
            let header = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
            };
            let end = match (header("content-length"), header("transfer-encoding")) {
                (Some(n), _) => Some(head + n.trim().parse::<usize>().unwrap()),
                (None, Some(te)) if te.contains("chunked") => {
                    memchr_find(&buf[head..], b"0\r\n\r\n").map(|i| head + i + 5)
                }
                _ => Some(head),
            };
            if let Some(end) = end.filter(|&e| e <= buf.len()) {
                buf.drain(..end);
                return status;
            }
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the proxy closed a keep-alive connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Distinct keys against a rate-limited route: the limiter's key count (sampled
/// from `/metrics` throughout, and at the end) never exceeds `max_keys`, most of the
/// flood shares the overflow bucket, and idle keys go once it stops. Requests go on
/// raw keep-alive HTTP/1.1 connections, one `X-Client` value each, so a million keys
/// need no million addresses.
async fn distinct_keys_stay_bounded(total: usize) {
    const MAX_KEYS: usize = 1000;
    let replica = Replica::builder("r").spawn().await.unwrap();
    let proxy = proxy_with(
        &replica,
        &format!(
            r#"rate_limit = {{ requests_per_second = 0.25, burst = 1, key = "header:x-client", max_keys = {MAX_KEYS} }}"#
        ),
        &[],
        &[],
    )
    .await;
    let url = proxy.url("/");
    assert_eq!(
        get(&h1(), &url, &[("x-client", "known")]).await.status(),
        200
    );
    let keys = || metric_value(&proxy, "modelgate_rate_limit_keys{route=\"api\"}");
    // Watch the key count through the flood, not only at the end.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = Arc::clone(&done);
        async move {
            let (mut peak, mut samples) = (0.0f64, 0);
            while !done.load(Ordering::SeqCst) {
                peak = peak.max(keys().await);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (peak, samples)
        }
    };
    let started = std::time::Instant::now();
    let connections = 8;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let addr = proxy.http_addr();
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut buf = Vec::new();
            let mut ok = 0usize;
            for i in (c..total).step_by(connections) {
                let req = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Client: client-{i}\r\n\r\n");
                s.write_all(req.as_bytes()).await.unwrap();
                match read_response(&mut s, &mut buf).await {
                    200 => ok += 1,
                    429 => {}
                    other => panic!("request {i}: status {other}"),
                }
            }
            ok
        }));
    }
    let flood = async {
        let mut passed = 0;
        for t in tasks {
            passed += t.await.unwrap();
        }
        done.store(true, Ordering::SeqCst);
        passed
    };
    let (passed, (peak, samples)) = tokio::join!(flood, sampler);
    let elapsed = started.elapsed();
    let after = keys().await;
    assert!(samples > 0);
    assert!(
        peak <= MAX_KEYS as f64 && after <= MAX_KEYS as f64,
        "{peak} keys at the peak, {after} after"
    );
    // Keys beyond the cap share one bucket, so most of the flood was refused
    // (while idle keys are evicted every second, some new keys get their own).
    assert!(passed < total / 2, "{passed} of {total} passed");
    // Idle keys go: the count falls back once the flood stops.
    eventually("idle keys are evicted", PATIENCE, || async {
        keys().await < 10.0
    })
    .await;
    eprintln!(
        "{total} distinct keys in {elapsed:?}: {passed} passed, peak {peak} keys \
         ({samples} samples), proxy RSS {} KiB",
        proxy.rss_kib()
    );
}

#[tokio::test]
async fn twenty_thousand_distinct_keys_keep_the_limiter_bounded() {
    distinct_keys_stay_bounded(20_000).await;
}

#[tokio::test]
#[ignore = "a million requests through a debug build: about 25 minutes on 2 busy cores; run with --ignored"]
async fn a_million_distinct_keys_keep_the_limiter_bounded() {
    distinct_keys_stay_bounded(1_000_000).await;
}

/// Longer than any refusal takes on a loaded machine, far shorter than a body
/// that never ends.
const PROMPTLY: Duration = Duration::from_secs(10);

/// Two models behind one OpenAI endpoint, each route with `auth` and a rate limit.
async fn model_routed_with_auth(replica: &ReplicaHandle) -> TestProxy {
    let toml = format!(
        r#"
[listen]
http = "{{http}}"
admin = "{{admin}}"

[[route]]
name = "llama"
path = "/v1"
model = "llama-3-8b"
api = "openai"
upstream = "pool"
auth = {{ api_keys_file = "{{dir}}/keys.txt" }}
rate_limit = {{ requests_per_second = 0.01, burst = 2, key = "header:x-client" }}

[[route]]
name = "org"
path = "/v1"
model_prefix = "org/"
api = "openai"
upstream = "pool"
auth = {{ api_keys_file = "{{dir}}/keys.txt" }}
rate_limit = {{ requests_per_second = 0.01, burst = 1, key = "header:x-client" }}

[upstream.pool]
backends = [{}]
"#,
        backend_list(&[replica])
    );
    proxy_with_files(&toml, &[("keys.txt", "alice:sk-alice-0123456789\n")], &[]).await
}

/// The start of a chat body whose `model` comes after a long prompt: a proxy that
/// reads bodies to route them must wait for more of it.
fn prompt_first(len: usize) -> Vec<u8> {
    let mut b = br#"{"messages":[{"role":"user","content":""#.to_vec();
    b.resize(len, b'a');
    b
}

/// Sends the head of a chunked POST and 16 KiB of a body that never ends, over a raw
/// HTTP/1.1 connection; returns what came back and whether the proxy closed the
/// connection (instead of reading on) within `wait`.
async fn h1_unfinished_post(proxy: &TestProxy, headers: &str, wait: Duration) -> (String, bool) {
    let mut s = tokio::net::TcpStream::connect(proxy.http_addr())
        .await
        .unwrap();
    let chunk = prompt_first(16 * 1024);
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n{headers}\r\n{:x}\r\n",
        chunk.len()
    )
    .into_bytes();
    req.extend_from_slice(&chunk);
    req.extend_from_slice(b"\r\n");
    s.write_all(&req).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// The same over h2c: HEADERS and 16 KiB of DATA, the stream never ended; returns
/// the answer's status, or 0 when none came within `wait`.
async fn h2_unfinished_post(proxy: &TestProxy, headers: &[(&str, &str)], wait: Duration) -> u16 {
    let tcp = tokio::net::TcpStream::connect(proxy.http_addr())
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut req = http::Request::post(format!("http://{}/v1/chat/completions", proxy.http_addr()))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, mut body) = client.send_request(req.body(()).unwrap(), false).unwrap();
    body.send_data(prompt_first(16 * 1024).into(), false)
        .unwrap();
    let status = match tokio::time::timeout(wait, resp).await {
        Ok(Ok(r)) => r.status().as_u16(),
        _ => 0,
    };
    drop(body);
    status
}

#[tokio::test]
async fn model_routed_requests_are_refused_before_their_body_is_read() {
    let replica = Replica::builder("r")
        .models(["llama-3-8b", "org/qwen-7b"])
        .spawn()
        .await
        .unwrap();
    let proxy = model_routed_with_auth(&replica).await;

    // No credential, a wrong one: 401 while the body is still coming, and the
    // connection closed rather than read to its end.
    // (Each from its own client: a limit by header runs before auth, so guessing
    // credentials is rate limited too.)
    for creds in [
        "X-Client: anon-1\r\n",
        "X-Client: anon-2\r\nAuthorization: Bearer sk-wrong\r\n",
    ] {
        let (head, closed) = h1_unfinished_post(&proxy, creds, PROMPTLY).await;
        assert!(head.starts_with("HTTP/1.1 401"), "{creds:?}: {head:?}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
        assert!(
            closed,
            "{creds:?}: the connection stayed open to read the body"
        );
    }
    for creds in [
        vec![("x-client", "anon-3")],
        vec![("x-client", "anon-4"), ("x-api-key", "sk-wrong")],
    ] {
        assert_eq!(
            h2_unfinished_post(&proxy, &creds, PROMPTLY).await,
            401,
            "{creds:?}"
        );
    }

    // With the key, the same unfinished body is read on (waiting for its model).
    let (head, _) = h1_unfinished_post(
        &proxy,
        "X-API-Key: sk-alice-0123456789\r\nX-Client: h1-waits\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        head, "",
        "an authorized body is read until its model is known"
    );
    let alice = [
        ("x-api-key", "sk-alice-0123456789"),
        ("x-client", "h2-waits"),
    ];
    assert_eq!(
        h2_unfinished_post(&proxy, &alice, Duration::from_secs(2)).await,
        0
    );

    // Rate limits: each route's own, then the endpoint's combined limit (burst 2 + 1)
    // refuses before reading once no route could take the request.
    for (version, client) in clients() {
        let who = format!("{version}-client");
        let post = |model: &'static str| {
            client
                .post(proxy.url("/v1/chat/completions"))
                .header("x-api-key", "sk-alice-0123456789")
                .header("x-client", who.as_str())
                .json(&super::openai::chat(model, "hi", false))
                .send()
        };
        let mut codes = Vec::new();
        for model in ["org/qwen-7b", "org/qwen-7b", "llama-3-8b", "llama-3-8b"] {
            codes.push(post(model).await.unwrap().status().as_u16());
        }
        // org: burst 1, so its second request is refused after its body named it; that
        // request still took one of the endpoint's three tokens.
        assert_eq!(codes, [200, 429, 200, 429], "{version}");
    }
    let (head, closed) = h1_unfinished_post(
        &proxy,
        "X-API-Key: sk-alice-0123456789\r\nX-Client: h1-client\r\n",
        PROMPTLY,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head:?}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    assert!(closed);
    let limited = [
        ("x-api-key", "sk-alice-0123456789"),
        ("x-client", "h2-client"),
    ];
    assert_eq!(h2_unfinished_post(&proxy, &limited, PROMPTLY).await, 429);
    assert_eq!(
        replica.hits(),
        4,
        "refused requests never reach the replica"
    );
    // The proxy serves on.
    let resp = h1()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-api-key", "sk-alice-0123456789")
        .header("x-client", "another")
        .json(&super::openai::chat("llama-3-8b", "hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
