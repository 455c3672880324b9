//! API-key and JWT header parsing: any Authorization / X-API-Key values, any keys
//! file and any token; nothing panics and a refused credential stays refused.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use modelgate::config::{Jwt, JwtKey};
use modelgate::edge::credentials::{bearer_token, presented, Presented};
use modelgate::edge::keys::KeySet;
use modelgate::edge::JwtAuth;

fn jwt() -> &'static JwtAuth {
    static JWT: OnceLock<JwtAuth> = OnceLock::new();
    JWT.get_or_init(|| {
        // The fuzzer runs single-threaded; nothing else reads the environment.
        std::env::set_var("FUZZ_JWT_SECRET", "fuzz-secret-fuzz-secret-fuzz-secret!!");
        JwtAuth::new(&Jwt {
            key: JwtKey::SecretEnv("FUZZ_JWT_SECRET".into()),
            issuer: Some("iss".into()),
            audience: Some("aud".into()),
            leeway: std::time::Duration::from_secs(30),
        })
        .expect("secret set")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0xff);
    let auth = parts.next().unwrap_or_default();
    let key = parts.next().unwrap_or_default();
    let file = parts.next().unwrap_or_default();

    let _ = bearer_token(auth);
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(auth) {
        headers.append(http::header::AUTHORIZATION, v);
    }
    if let Ok(v) = http::HeaderValue::from_bytes(key) {
        headers.append("x-api-key", v);
    }
    match presented(&headers) {
        Presented::One(c) => {
            assert!(!c.is_empty());
            // Any token: verify answers, never panics.
            let _ = jwt().verify(c);
        }
        Presented::None | Presented::Malformed => {}
    }
    if let Ok(text) = std::str::from_utf8(file) {
        if let Ok(set) = KeySet::parse(text) {
            let _ = set.lookup(key);
        }
    }
});
