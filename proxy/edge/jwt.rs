//! JSON Web Tokens (RFC 7519) checked with `jsonwebtoken`: HS256 with a shared secret,
//! RS/PS/ES/EdDSA with a PEM public key, or keys from a JWKS URL (RFC 7517) that is
//! refreshed in the background.
//!
//! Each key allows only the algorithms of its own type, so `alg: none` (not an
//! algorithm the library knows) and algorithm confusion (an HMAC token checked
//! against a public key) are refused before any signature math. `exp` is required;
//! `exp` and `nbf` are checked with the configured leeway, `iss` and `aud` when set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::Consumer;
use crate::config::{Jwt, JwtKey};

const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// The claims modelgate reads itself; the library checks `exp`, `nbf`, `iss`, `aud`.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
}

/// Why a token was refused (for debug logs; the client only ever sees 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not three base64url parts, a header that is not JSON, or an algorithm
    /// (`none` included) the library does not know.
    Malformed,
    /// The token's `kid` names no key of the JWKS (or the set is not fetched yet).
    UnknownKey,
    /// The token's algorithm is not one its key allows.
    WrongAlgorithm,
    /// Bad signature, expired, not yet valid, wrong issuer or audience, no `exp`.
    Invalid,
}

/// A verifying key with the algorithms it may be used with, and the checks to run.
struct KeyEntry {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// Checks tokens for one route.
pub struct JwtAuth {
    config: Jwt,
    keys: Keys,
}

enum Keys {
    Static(KeyEntry),
    Jwks(Jwks),
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        let source = match &self.config.key {
            JwtKey::SecretEnv(var) => format!("secret from ${var}"),
            JwtKey::PublicKey(path) => format!("public key {}", path.display()),
            JwtKey::Jwks { url, .. } => format!("jwks {url}"),
        };
        f.debug_struct("JwtAuth").field("keys", &source).finish()
    }
}

impl JwtAuth {
    /// Builds the checker: reads the secret's environment variable or the PEM file.
    /// A JWKS is not fetched here; [`JwtAuth::refresh`] does it in the background.
    /// Errors never contain key material.
    pub fn new(config: &Jwt) -> Result<JwtAuth, String> {
        let keys = match &config.key {
            JwtKey::SecretEnv(var) => {
                let secret = std::env::var(var).map_err(|_| {
                    format!(
                        "the environment variable {var} is not set; export the HS256 secret in it"
                    )
                })?;
                if secret.len() < 32 {
                    return Err(format!(
                        "the secret in {var} is shorter than 32 bytes; HS256 needs at least 256 bits of key"
                    ));
                }
                Keys::Static(KeyEntry {
                    kid: None,
                    key: DecodingKey::from_secret(secret.as_bytes()),
                    validation: validation(config, &[Algorithm::HS256]),
                })
            }
            JwtKey::PublicKey(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let (key, algs) = public_key(&pem).ok_or_else(|| {
                    format!(
                        "{} is not a PEM public key (RSA, EC P-256/P-384 or Ed25519 \"-----BEGIN PUBLIC KEY-----\")",
                        path.display()
                    )
                })?;
                Keys::Static(KeyEntry {
                    kid: None,
                    key,
                    validation: validation(config, algs),
                })
            }
            JwtKey::Jwks { url, refresh } => Keys::Jwks(Jwks::new(url, *refresh)),
        };
        Ok(JwtAuth {
            config: config.clone(),
            keys,
        })
    }

    /// The settings this checker was built from.
    pub fn config(&self) -> &Jwt {
        &self.config
    }

    /// Verifies `token` and returns its `sub` as the consumer (`None` without `sub`).
    pub fn verify(&self, token: &[u8]) -> Result<Option<Consumer>, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        let data = match &self.keys {
            Keys::Static(entry) => decode(token, header.alg, entry)?,
            Keys::Jwks(jwks) => {
                let set = jwks.keys.load();
                let entry = match header.kid.as_deref() {
                    Some(kid) => set.iter().find(|k| k.kid.as_deref() == Some(kid)),
                    // Without a kid, only a set of exactly one key is unambiguous.
                    None if set.len() == 1 => set.first(),
                    None => None,
                };
                let Some(entry) = entry else {
                    jwks.want_refresh();
                    return Err(Refusal::UnknownKey);
                };
                decode(token, header.alg, entry)?
            }
        };
        Ok(data.sub.map(|s| Consumer::new(&s)))
    }

    /// For a JWKS: fetches the set when it is due (every `refresh`, or soon after a
    /// token named an unknown key). A failed fetch keeps the last good set.
    pub async fn refresh(&self) {
        if let Keys::Jwks(jwks) = &self.keys {
            jwks.refresh_if_due(&self.config).await;
        }
    }

    /// Keys usable now (1 for a secret or PEM key; the JWKS's usable keys).
    pub fn key_count(&self) -> usize {
        match &self.keys {
            Keys::Static(_) => 1,
            Keys::Jwks(j) => j.keys.load().len(),
        }
    }
}

fn decode(token: &[u8], alg: Algorithm, entry: &KeyEntry) -> Result<Claims, Refusal> {
    if !entry.validation.algorithms.contains(&alg) {
        return Err(Refusal::WrongAlgorithm);
    }
    jsonwebtoken::decode::<Claims>(token, &entry.key, &entry.validation)
        .map(|d| d.claims)
        .map_err(|_| Refusal::Invalid)
}

/// The checks for tokens verified with a key allowing `algs`.
fn validation(config: &Jwt, algs: &[Algorithm]) -> Validation {
    let mut v = Validation::new(algs[0]);
    v.algorithms = algs.to_vec();
    v.leeway = config.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    match &config.issuer {
        Some(iss) => {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        None => v.iss = None,
    }
    match &config.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

/// A PEM public key and the algorithms its type allows.
fn public_key(pem: &[u8]) -> Option<(DecodingKey, &'static [Algorithm])> {
    const EC_ALGS: [Algorithm; 2] = [Algorithm::ES256, Algorithm::ES384];
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Some((k, &RSA_ALGS));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Some((k, &EC_ALGS));
    }
    DecodingKey::from_ed_pem(pem)
        .ok()
        .map(|k| (k, &[Algorithm::EdDSA][..]))
}

/// A JWKS URL, its last good key set, and when to fetch it next.
struct Jwks {
    url: String,
    every: Duration,
    keys: ArcSwap<Vec<KeyEntry>>,
    next: Mutex<Instant>,
    /// A token named a key we do not have: the issuer may have rotated its keys.
    early: AtomicBool,
    last_fetch: Mutex<Option<Instant>>,
}

/// Soonest re-fetch after a token named an unknown key (so bad tokens cannot make
/// modelgate hammer the issuer).
const EARLY_REFRESH_GAP: Duration = Duration::from_secs(30);

impl Jwks {
    fn new(url: &str, every: Duration) -> Jwks {
        Jwks {
            url: url.to_string(),
            every,
            keys: ArcSwap::from_pointee(Vec::new()),
            next: Mutex::new(Instant::now()),
            early: AtomicBool::new(false),
            last_fetch: Mutex::new(None),
        }
    }

    fn want_refresh(&self) {
        self.early.store(true, Ordering::Relaxed);
    }

    async fn refresh_if_due(&self, config: &Jwt) {
        let now = Instant::now();
        let due = self.next.lock().is_ok_and(|next| now >= *next);
        let early = self.early.load(Ordering::Relaxed)
            && self
                .last_fetch
                .lock()
                .is_ok_and(|l| l.is_none_or(|t| now.duration_since(t) >= EARLY_REFRESH_GAP));
        if !due && !early {
            return;
        }
        self.early.store(false, Ordering::Relaxed);
        if let Ok(mut l) = self.last_fetch.lock() {
            *l = Some(now);
        }
        let had = self.keys.load().len();
        let retry = match super::fetch::get(&self.url).await {
            Ok(body) => match parse_jwks(&body, config) {
                Ok(keys) if !keys.is_empty() => {
                    if keys.len() != had {
                        log::info!("jwks {}: {} keys", self.url, keys.len());
                    }
                    self.keys.store(Arc::new(keys));
                    self.every
                }
                Ok(_) => {
                    log::warn!(
                        "jwks {}: no usable signing key in the set; keeping the {had} keys fetched before",
                        self.url
                    );
                    self.every.min(Duration::from_secs(30))
                }
                Err(e) => {
                    log::warn!(
                        "jwks {}: {e}; keeping the {had} keys fetched before",
                        self.url
                    );
                    self.every.min(Duration::from_secs(30))
                }
            },
            Err(e) => {
                log::warn!(
                    "jwks {}: {e}; keeping the {had} keys fetched before",
                    self.url
                );
                // Retry sooner than the refresh period while failing.
                self.every
                    .min(Duration::from_secs(if had == 0 { 2 } else { 30 }))
            }
        };
        if let Ok(mut next) = self.next.lock() {
            *next = Instant::now() + retry;
        }
    }
}

/// Parses a JWKS document, keeping each signing key modelgate can use; keys of
/// other types (symmetric `oct` keys above all: a JWKS is public) are skipped.
fn parse_jwks(body: &[u8], config: &Jwt) -> Result<Vec<KeyEntry>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body)
        .map_err(|e| format!("not a JWK set ({{\"keys\": [..]}}): {e}"))?;
    let mut out = Vec::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if let Some(entry) = jwk_entry(&jwk, config) {
            out.push(entry);
        }
    }
    Ok(out)
}

fn jwk_entry(jwk: &Jwk, config: &Jwt) -> Option<KeyEntry> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &RSA_ALGS,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        _ => return None,
    };
    // A key that names its algorithm allows only that one.
    let algs: Vec<Algorithm> = match jwk.common.key_algorithm {
        Some(ka) => {
            let alg: Algorithm = ka.to_string().parse().ok()?;
            if !by_type.contains(&alg) {
                return None;
            }
            vec![alg]
        }
        None => by_type.to_vec(),
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(KeyEntry {
        kid: jwk.common.key_id.clone(),
        key,
        validation: validation(config, &algs),
    })
}
