//! JWT verification in-process, with a cache of verified tokens.
//!
//! Algorithms are pinned by configuration (HS256 from `JWT_SECRET`; RS256,
//! ES256 or EdDSA from the PEM keys in `JWT_PUBLIC_KEYS`), never taken from the
//! token: the header's `alg` only selects among the configured keys, and
//! `none` is not an algorithm this code knows. `exp` is required, `nbf`
//! honoured, with a leeway (30 s by default), both against the `now` the
//! caller passes (one clock for fresh and cached tokens alike).
//!
//! A verified token is cached until it expires, so a client that reuses its
//! token pays one hash-map lookup per request instead of a signature check.
//! The cache only remembers what the signature proved; whether the
//! organisation is still active is checked on every request by the caller.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::config::JwtConfig;

/// The seed's JWTPayload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub user_id: String,
    pub organization_id: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// NumericDate: RFC 7519 allows fractions; whole seconds are kept.
    #[serde(default, deserialize_with = "numeric_date")]
    pub iat: u64,
    #[serde(deserialize_with = "numeric_date")]
    pub exp: u64,
    #[serde(default, deserialize_with = "optional_numeric_date", skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// One audience or several (RFC 7519 §4.1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl From<String> for Audience {
    fn from(s: String) -> Self {
        Audience::One(s)
    }
}

fn numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    match (n.as_u64(), n.as_f64()) {
        (Some(whole), _) => Ok(whole),
        (None, Some(f)) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(f as u64),
        _ => Err(serde::de::Error::custom("NumericDate must be a non-negative number")),
    }
}

fn optional_numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    numeric_date(d).map(Some)
}

impl Claims {
    /// Claims for `user` of `org`, valid from `now` for `ttl_secs`; other fields default.
    pub fn new(user: &str, org: &str, permissions: &[&str], now: u64, ttl_secs: u64) -> Self {
        Claims {
            user_id: user.into(),
            organization_id: org.into(),
            email: String::new(),
            role: "member".into(),
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
            app_id: None,
            iat: now,
            exp: now.saturating_add(ttl_secs),
            nbf: None,
            iss: None,
            aud: None,
        }
    }

    pub fn has_permission(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission || p == "*")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not a JWT, bad signature, wrong or unconfigured algorithm, wrong issuer/audience.
    Invalid,
    Expired,
    NotYetValid,
    /// No verification key is configured at all.
    NotConfigured,
    /// Longer than the edge verifies (refused before any work).
    TooLarge,
}

impl JwtError {
    pub fn code(self) -> &'static str {
        match self {
            JwtError::Invalid => "invalid_token",
            JwtError::Expired => "token_expired",
            JwtError::NotYetValid => "token_not_yet_valid",
            JwtError::NotConfigured => "jwt_not_configured",
            JwtError::TooLarge => "token_too_large",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            JwtError::Invalid => "Invalid bearer token",
            JwtError::Expired => "The token has expired",
            JwtError::NotYetValid => "The token is not valid yet",
            JwtError::NotConfigured => "This edge verifies no JWTs",
            JwtError::TooLarge => "The token is longer than this edge accepts",
        }
    }
}

/// The `organization_id` a token claims, read without verifying it: for audit rows only, never
/// for a decision. `None` for anything that is not a JWT with such a claim.
pub fn unverified_organization(token: &str) -> Option<String> {
    use base64::Engine as _;
    #[derive(Deserialize)]
    struct Claimed {
        organization_id: String,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claimed: Claimed = serde_json::from_slice(&bytes).ok()?;
    Some(claimed.organization_id.chars().take(64).collect())
}

/// Why the configured verification keys cannot be used (the edge does not start).
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("JWT_PUBLIC_KEYS: {}: {source}", path.display())]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("JWT_PUBLIC_KEYS: key {0} is not an RSA, EC P-256 or Ed25519 public key")]
    NotAPublicKey(usize),
}

struct Key {
    /// Derived from the public key ([`key_id`]); a token naming a `kid` is checked only
    /// against the key with that id.
    kid: Option<String>,
    decoding: DecodingKey,
    validation: Validation,
}

pub struct JwtVerifier {
    keys: Vec<Key>,
    leeway: u64,
    cache: DashMap<Box<str>, Arc<Claims>, ahash::RandomState>,
    cache_capacity: usize,
    /// Bytes held by the cache (tokens and claims, estimated); bounded by `cache_max_bytes`.
    cache_bytes: AtomicUsize,
    cache_max_bytes: usize,
    max_token_bytes: usize,
}

impl JwtVerifier {
    pub fn from_config(config: &JwtConfig, cache_capacity: usize) -> Result<Self, KeyFileError> {
        let mut keys = Vec::new();
        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            // Times are checked in `check_times` against the caller's clock, not the system's,
            // so that a verified token and a cached one expire alike and tests can move time.
            v.validate_exp = false;
            v.validate_nbf = false;
            // A configured issuer/audience must be present, not just match when present.
            let mut required = vec!["exp"];
            required.extend(config.issuer.as_ref().map(|_| "iss"));
            required.extend(config.audience.as_ref().map(|_| "aud"));
            v.set_required_spec_claims(&required);
            v.validate_aud = config.audience.is_some();
            if let Some(aud) = &config.audience {
                v.set_audience(&[aud]);
            }
            if let Some(iss) = &config.issuer {
                v.set_issuer(&[iss]);
            }
            v
        };
        if let Some(secret) = &config.hs256_secret {
            keys.push(Key {
                kid: None,
                decoding: DecodingKey::from_secret(secret),
                validation: validation(Algorithm::HS256),
            });
        }
        if let Some(path) = &config.public_keys_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| KeyFileError::Read { path: path.clone(), source })?;
            for (i, pem) in split_pem_blocks(&text).enumerate() {
                let (decoding, alg) = parse_public_key(pem.as_bytes()).ok_or(KeyFileError::NotAPublicKey(i + 1))?;
                keys.push(Key { kid: pem_der(&pem).map(|der| key_id(&der)), decoding, validation: validation(alg) });
            }
        }
        Ok(JwtVerifier {
            keys,
            leeway: config.leeway_secs,
            cache: DashMap::default(),
            cache_capacity,
            cache_bytes: AtomicUsize::new(0),
            cache_max_bytes: config.cache_max_bytes,
            max_token_bytes: config.max_token_bytes,
        })
    }

    /// Verifies `token` at `now` (unix seconds), from the cache when it was verified before.
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<Claims>, JwtError> {
        if token.len() > self.max_token_bytes {
            return Err(JwtError::TooLarge);
        }
        if let Some(hit) = self.cache.get(token) {
            let claims = hit.value().clone();
            drop(hit);
            return self.check_times(&claims, now).map(|()| claims);
        }
        let claims = Arc::new(self.verify_signature(token)?);
        self.check_times(&claims, now)?;
        let cost = entry_bytes(token, &claims);
        if self.cache.len() >= self.cache_capacity
            || self.cache_bytes.load(Ordering::Relaxed) + cost > self.cache_max_bytes
        {
            // Crude but bounded: tokens are cheap to re-verify, memory is not free.
            self.cache.clear();
            self.cache_bytes.store(0, Ordering::Relaxed);
        }
        if self.cache.insert(token.into(), claims.clone()).is_none() {
            self.cache_bytes.fetch_add(cost, Ordering::Relaxed);
        }
        Ok(claims)
    }

    fn verify_signature(&self, token: &str) -> Result<Claims, JwtError> {
        if self.keys.is_empty() {
            return Err(JwtError::NotConfigured);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Invalid)?;
        if has_critical_extensions(token) {
            // RFC 7515 §4.1.11: extensions this verifier does not understand mean "refuse".
            return Err(JwtError::Invalid);
        }
        let mut last = JwtError::Invalid;
        let named = |k: &&Key| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid;
        for key in self.keys.iter().filter(|k| k.validation.algorithms.contains(&header.alg)).filter(named) {
            match jsonwebtoken::decode::<Claims>(token, &key.decoding, &key.validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => JwtError::Expired,
                        jsonwebtoken::errors::ErrorKind::ImmatureSignature => JwtError::NotYetValid,
                        _ => JwtError::Invalid,
                    }
                }
            }
        }
        Err(last)
    }

    fn check_times(&self, claims: &Claims, now: u64) -> Result<(), JwtError> {
        if now > claims.exp.saturating_add(self.leeway) {
            // Left in the cache: the capacity sweep drops it; answering is what matters.
            return Err(JwtError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now + self.leeway < nbf) {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }
}

/// What a cache entry costs: the token, the claims' strings and the fixed parts.
fn entry_bytes(token: &str, c: &Claims) -> usize {
    let strings = c.user_id.len() + c.organization_id.len() + c.email.len() + c.role.len();
    let perms: usize = c.permissions.iter().map(|p| p.len() + 24).sum();
    token.len() + strings + perms + std::mem::size_of::<Claims>() + 64
}

/// Does the token's header carry `crit`? (`jsonwebtoken` ignores it.)
fn has_critical_extensions(token: &str) -> bool {
    use base64::Engine;
    let Some(header) = token.split('.').next() else { return false };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json).is_ok_and(|h| h.contains_key("crit"))
}

fn split_pem_blocks(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split("-----BEGIN ")
        .filter(|chunk| chunk.contains("-----END "))
        .map(|chunk| format!("-----BEGIN {}", chunk.trim_end()))
}

/// The DER inside one PEM block.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// A key's id: the first 16 hex digits of the SHA-256 of its public key (SubjectPublicKeyInfo
/// DER). Signer and verifier derive it alike, so no id has to be configured twice.
pub fn key_id(public_key_der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(public_key_der)[..8])
}

fn parse_public_key(pem: &[u8]) -> Option<(DecodingKey, Algorithm)> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Some((k, Algorithm::RS256));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Some((k, Algorithm::ES256));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Some((k, Algorithm::EdDSA));
    }
    None
}

/// Signs claims with HS256: `edge token issue`, `--dev` and tests.
pub fn issue_hs256(claims: &Claims, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing of serialisable claims cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn claims(exp: u64) -> Claims {
        Claims { exp, ..Claims::new("u1", "org_a", &["events:write"], NOW - 10, 0) }
    }

    fn verifier() -> JwtVerifier {
        let config = JwtConfig { hs256_secret: Some(SECRET.to_vec()), leeway_secs: 30, ..Default::default() };
        JwtVerifier::from_config(&config, 16).unwrap()
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn valid_token_verifies_and_is_cached() {
        let v = verifier();
        let t = issue_hs256(&claims(u64::MAX / 2), SECRET);
        assert_eq!(v.verify(&t, NOW).unwrap().organization_id, "org_a");
        assert_eq!(v.cache.len(), 1);
        assert_eq!(v.verify(&t, NOW).unwrap().user_id, "u1");
    }

    #[test]
    fn forged_signature_is_refused() {
        let v = verifier();
        let t = issue_hs256(&claims(u64::MAX / 2), b"another-secret-another-secret-xx");
        assert_eq!(v.verify(&t, NOW).unwrap_err(), JwtError::Invalid);
        // Tampered payload, original signature.
        let good = issue_hs256(&claims(u64::MAX / 2), SECRET);
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = claims(u64::MAX / 2);
        c.organization_id = "org_victim".into();
        let forged = format!("{}.{}.{}", parts[0], b64(&serde_json::to_string(&c).unwrap()), parts[2]);
        assert_eq!(v.verify(&forged, NOW).unwrap_err(), JwtError::Invalid);
    }

    #[test]
    fn expiry_uses_leeway_even_from_cache() {
        let v = verifier();
        let t = issue_hs256(&claims(NOW + 5), SECRET);
        assert!(v.verify(&t, NOW).is_ok());
        assert!(v.verify(&t, NOW + 35).is_ok(), "within 30 s leeway");
        assert_eq!(v.verify(&t, NOW + 36).unwrap_err(), JwtError::Expired, "cached token still expires");
        let old = issue_hs256(&claims(1_000), SECRET);
        assert_eq!(v.verify(&old, NOW).unwrap_err(), JwtError::Expired);
        // Only the caller's clock counts: at its 900 s the 1970 token is still valid.
        let fresh = verifier();
        assert!(fresh.verify(&old, 900).is_ok(), "the system clock is not consulted");
    }

    #[test]
    fn missing_exp_is_refused() {
        let v = verifier();
        let header = b64(r#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = b64(r#"{"user_id":"u","organization_id":"o","iat":1}"#);
        let msg = format!("{header}.{payload}");
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(msg.as_bytes());
        let sig =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, mac.finalize().into_bytes());
        assert_eq!(v.verify(&format!("{msg}.{sig}"), NOW).unwrap_err(), JwtError::Invalid);
    }

    #[test]
    fn alg_none_and_unconfigured_algs_are_refused() {
        let v = verifier();
        let payload = b64(&serde_json::to_string(&claims(u64::MAX / 2)).unwrap());
        let none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        assert_eq!(v.verify(&none, NOW).unwrap_err(), JwtError::Invalid);
        // RS256 header while only HS256 is configured: no key matches.
        let rs = format!("{}.{payload}.AAAA", b64(r#"{"alg":"RS256","typ":"JWT"}"#));
        assert_eq!(v.verify(&rs, NOW).unwrap_err(), JwtError::Invalid);
        // HS384 with the same secret: the algorithm is pinned to HS256.
        let hs384 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS384),
            &claims(u64::MAX / 2),
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(v.verify(&hs384, NOW).unwrap_err(), JwtError::Invalid);
    }

    #[test]
    fn nbf_is_honoured() {
        let v = verifier();
        let mut c = claims(u64::MAX / 2);
        c.nbf = Some(NOW + 100);
        let t = issue_hs256(&c, SECRET);
        assert_eq!(v.verify(&t, NOW).unwrap_err(), JwtError::NotYetValid);
    }

    #[test]
    fn garbage_is_invalid_and_unconfigured_says_so() {
        assert_eq!(verifier().verify("not.a.jwt", NOW).unwrap_err(), JwtError::Invalid);
        let none = JwtVerifier::from_config(&JwtConfig::default(), 16).unwrap();
        assert_eq!(none.verify("a.b.c", NOW).unwrap_err(), JwtError::NotConfigured);
    }

    #[test]
    fn public_keys_from_pem_verify_rs256_es256_eddsa() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let config = JwtConfig {
            public_keys_file: Some(format!("{fixtures}/public_keys.pem").into()),
            leeway_secs: 30,
            ..Default::default()
        };
        let v = JwtVerifier::from_config(&config, 16).unwrap();
        assert_eq!(v.keys.len(), 3);
        let c = claims(u64::MAX / 2);
        let sign = |alg: Algorithm, key: jsonwebtoken::EncodingKey| {
            jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &c, &key).unwrap()
        };
        let pem = |name: &str| std::fs::read(format!("{fixtures}/{name}")).unwrap();
        let rs = sign(Algorithm::RS256, jsonwebtoken::EncodingKey::from_rsa_pem(&pem("rsa.key")).unwrap());
        let es = sign(Algorithm::ES256, jsonwebtoken::EncodingKey::from_ec_pem(&pem("ec.key")).unwrap());
        let ed = sign(Algorithm::EdDSA, jsonwebtoken::EncodingKey::from_ed_pem(&pem("ed25519.key")).unwrap());
        for token in [&rs, &es, &ed] {
            assert_eq!(v.verify(token, NOW).unwrap().organization_id, "org_a");
        }
        // HS256 signed with the RSA public key's bytes (the classic confusion attack) is refused.
        let confused = issue_hs256(&c, &pem("public_keys.pem"));
        assert_eq!(v.verify(&confused, NOW).unwrap_err(), JwtError::Invalid);
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let config = JwtConfig {
            hs256_secret: Some(SECRET.to_vec()),
            issuer: Some("edge".into()),
            audience: Some("sdk".into()),
            leeway_secs: 30,
            ..Default::default()
        };
        let v = JwtVerifier::from_config(&config, 16).unwrap();
        let mut c = claims(u64::MAX / 2);
        assert_eq!(v.verify(&issue_hs256(&c, SECRET), NOW).unwrap_err(), JwtError::Invalid);
        c.iss = Some("edge".into());
        c.aud = Some(Audience::One("sdk".into()));
        assert!(v.verify(&issue_hs256(&c, SECRET), NOW).is_ok());
        c.aud = Some(Audience::Many(vec!["other".into(), "sdk".into()]));
        assert!(v.verify(&issue_hs256(&c, SECRET), NOW).is_ok(), "an array holding the audience");
        c.aud = Some(Audience::Many(vec!["other".into()]));
        assert_eq!(v.verify(&issue_hs256(&c, SECRET), NOW).unwrap_err(), JwtError::Invalid);
    }

    fn sign_raw(header: &str, payload: &str) -> String {
        use hmac::Mac;
        let msg = format!("{}.{}", b64(header), b64(payload));
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(msg.as_bytes());
        let sig =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, mac.finalize().into_bytes());
        format!("{msg}.{sig}")
    }

    #[test]
    fn fractional_numeric_dates_are_accepted() {
        let v = verifier();
        let exp = NOW + 3600;
        let t = sign_raw(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &format!(r#"{{"user_id":"u","organization_id":"o","iat":{}.25,"exp":{exp}.5}}"#, NOW - 1),
        );
        let claims = v.verify(&t, NOW).unwrap();
        assert_eq!((claims.exp, claims.iat), (exp, NOW - 1));
    }

    #[test]
    fn unknown_critical_header_parameters_are_refused() {
        let v = verifier();
        let payload = format!(r#"{{"user_id":"u","organization_id":"o","iat":1,"exp":{}}}"#, NOW + 60);
        let t = sign_raw(r#"{"alg":"HS256","typ":"JWT","crit":["exp_policy"],"exp_policy":"x"}"#, &payload);
        assert_eq!(v.verify(&t, NOW).unwrap_err(), JwtError::Invalid);
        assert!(v.verify(&sign_raw(r#"{"alg":"HS256","typ":"JWT"}"#, &payload), NOW).is_ok());
    }

    #[test]
    fn cache_is_bounded_in_bytes_and_oversize_tokens_refused_early() {
        let config = JwtConfig {
            hs256_secret: Some(SECRET.to_vec()),
            max_token_bytes: 4096,
            cache_max_bytes: 16 << 10,
            ..Default::default()
        };
        let v = JwtVerifier::from_config(&config, 1_000_000).unwrap();
        for i in 0..200 {
            let mut c = claims(u64::MAX / 2);
            c.email = format!("{i}{}", "x".repeat(1000));
            v.verify(&issue_hs256(&c, SECRET), NOW).unwrap();
            assert!(v.cache_bytes.load(Ordering::Relaxed) <= 16 << 10);
        }
        let mut c = claims(u64::MAX / 2);
        c.email = "x".repeat(5000);
        assert_eq!(v.verify(&issue_hs256(&c, SECRET), NOW).unwrap_err(), JwtError::TooLarge);
    }
}
