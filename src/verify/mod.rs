//! The one JWT verifier behind `POST /v1/verify`, `GET /v1/auth`,
//! organisation tokens and `signet verify`.
//!
//! What it refuses to do: accept `none`, HMAC or any algorithm other than the
//! one recorded for the key named by `kid`; use a key carried or pointed to
//! by the token (`jwk`, `jku`, `x5u`, `x5c`); honour a `crit` extension;
//! decode anything of a token over the size limit; let a key of one
//! organisation speak for another (an `org` claim, when present, must name
//! the key's organisation, on every route); accept a token of a disabled
//! key, or of a key past its expiry (checked at every verification).
//!
//! Keys are cached parsed (aws-lc-rs `ParsedPublicKey`), so a hot
//! verification reads no storage and decodes no key. Forgetting a key is
//! ordered with cache fills by one lock: once [`Verifier::forget`] returns,
//! no token of that key verifies, not even from a fill that raced with it.

mod jwk_set;
mod policy;
mod token;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::ParsedPublicKey;
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value};

use crate::keys::{Algorithm, KeyId, OrgId};

pub use jwk_set::{JwkSetError, JwkSetSource};
pub use token::{decode_object, ClaimRules};

/// Why a token is not valid. The code of each variant is listed in docs/api.md.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The token is not a well-formed JWS, or a claim has the wrong type.
    #[error("{0}")]
    Malformed(String),
    /// The header names an algorithm signet does not accept for this key.
    #[error("{0}")]
    UnsupportedAlgorithm(String),
    /// `kid` names no live key.
    #[error("{0}")]
    UnknownKey(String),
    /// The signature does not verify under the named key.
    #[error("signature does not verify under key {0}")]
    BadSignature(KeyId),
    /// `exp` (plus leeway) is in the past.
    #[error("{0}")]
    Expired(String),
    /// `nbf` (minus leeway) is in the future.
    #[error("{0}")]
    NotYetValid(String),
    /// `aud` does not contain the expected audience.
    #[error("{0}")]
    WrongAudience(String),
    /// `iss` is not the expected issuer.
    #[error("{0}")]
    WrongIssuer(String),
    /// A required claim is absent.
    #[error("{0}")]
    MissingClaim(String),
    /// The `org` claim names another organisation than the signing key's.
    #[error("{0}")]
    WrongOrganisation(String),
    /// `kid` names a key that is disabled.
    #[error("key {0} is disabled")]
    KeyDisabled(KeyId),
    /// `kid` names a key past its expiry.
    #[error("key {0} has expired")]
    KeyExpired(KeyId),
    /// The key source could not be read, so no verdict can be given.
    #[error("keys could not be read: {0}")]
    Unavailable(String),
}

impl VerifyError {
    /// The error code (docs/api.md).
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Malformed(_) => "malformed",
            VerifyError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            VerifyError::UnknownKey(_) => "unknown_key",
            VerifyError::BadSignature(_) => "bad_signature",
            VerifyError::Expired(_) => "expired",
            VerifyError::NotYetValid(_) => "not_yet_valid",
            VerifyError::WrongAudience(_) => "wrong_audience",
            VerifyError::WrongIssuer(_) => "wrong_issuer",
            VerifyError::MissingClaim(_) => "missing_claim",
            VerifyError::WrongOrganisation(_) => "wrong_organisation",
            VerifyError::KeyDisabled(_) => "key_disabled",
            VerifyError::KeyExpired(_) => "key_expired",
            VerifyError::Unavailable(_) => "unavailable",
        }
    }
}

/// A public key as a verifier needs it.
pub struct KeyMaterial {
    /// The owning organisation, when the source knows it (a JWK Set does not).
    pub org: Option<OrgId>,
    pub algorithm: Algorithm,
    pub spki_der: Vec<u8>,
}

/// Why a key that exists may not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    Disabled,
    Expired,
}

/// Why a key source could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySourceError {
    /// A published key that does not parse as a key signet can verify with.
    #[error("published key {id} does not parse: {cause}")]
    Unparsable { id: KeyId, cause: String },
}

/// Where a verifier finds keys it has not cached: the store, or a JWK Set.
pub trait KeySource: Send + Sync {
    fn lookup(&self, id: KeyId) -> Result<Option<KeyMaterial>, KeySourceError>;
    /// Whether `id` is still live; called under the fill lock, so cheap.
    fn contains(&self, id: KeyId) -> Result<bool, KeySourceError>;
    /// Why `id`, which `lookup` does not return, exists but may not
    /// verify; `None` for a key never seen or deleted. Called under the
    /// fill lock, so cheap.
    fn withheld(&self, _id: KeyId) -> Option<Withheld> {
        None
    }
    /// When a key `lookup` returns expires (seconds since the epoch).
    /// Called under the fill lock, so cheap.
    fn expires_at(&self, _id: KeyId) -> Option<u64> {
        None
    }
}

/// Verification settings that do not change per request.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub leeway: Duration,
    pub require_exp: bool,
    pub max_token_bytes: usize,
    pub cache_capacity: u64,
    /// Longest lifetime accepted (`exp - iat`, or `exp - now` without
    /// `iat`); `None` accepts any.
    pub max_token_lifetime: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            leeway: Duration::from_secs(30),
            require_exp: true,
            max_token_bytes: 16 * 1024,
            cache_capacity: 10_000,
            max_token_lifetime: None,
        }
    }
}

/// A token that verified.
#[derive(Debug, Clone)]
pub struct Verified {
    pub key_id: KeyId,
    pub org: Option<OrgId>,
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
}

/// The `POST /v1/verify` result document, also printed by
/// `signet verify --json`.
pub fn result_json(result: &Result<Verified, VerifyError>) -> Value {
    match result {
        Ok(v) => serde_json::json!({
            "valid": true,
            "keyId": v.key_id,
            "organisationId": v.org,
            "header": v.header,
            "claims": v.claims,
        }),
        Err(e) => serde_json::json!({
            "valid": false,
            "error": { "code": e.code(), "message": e.to_string() },
        }),
    }
}

/// What a request expects beyond the policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect<'a> {
    pub audience: Option<&'a str>,
    pub issuer: Option<&'a str>,
}

struct CachedKey {
    org: Option<OrgId>,
    algorithm: Algorithm,
    key: ParsedPublicKey,
    /// Checked at every verification, so an expiry takes effect at its
    /// second whatever else is late.
    expires_at: Option<u64>,
}

/// Cache counters, registered by `metrics`.
#[derive(Debug, Clone, Default)]
pub struct CacheStats {
    pub hits: Counter,
    pub misses: Counter,
    pub unknown: Counter,
    /// Keys dropped to respect the capacity (not deletions).
    pub evictions: Counter,
}

pub struct Verifier {
    source: Arc<dyn KeySource>,
    policy: Policy,
    cache: moka::sync::Cache<KeyId, Arc<CachedKey>>,
    /// Orders cache fills with [`Verifier::forget`].
    fill: Mutex<()>,
    stats: CacheStats,
}

impl Verifier {
    pub fn new(source: Arc<dyn KeySource>, policy: Policy) -> Verifier {
        let stats = CacheStats::default();
        let evictions = stats.evictions.clone();
        Verifier {
            source,
            policy,
            cache: moka::sync::Cache::builder()
                .max_capacity(policy.cache_capacity)
                .eviction_listener(move |_, _, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        evictions.inc();
                    }
                })
                .build(),
            fill: Mutex::new(()),
            stats,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Verifies `token` now.
    pub fn verify(&self, token: &str, expect: Expect<'_>) -> Result<Verified, VerifyError> {
        self.verify_at(token, expect, unix_now())
    }

    /// Verifies `token` as of `now` (seconds since the epoch).
    pub fn verify_at(
        &self,
        token: &str,
        expect: Expect<'_>,
        now: u64,
    ) -> Result<Verified, VerifyError> {
        let parsed = token::parse(token, self.policy.max_token_bytes)?;
        let key = self.key(parsed.kid)?;
        if key.expires_at.is_some_and(|at| now >= at) {
            return Err(VerifyError::KeyExpired(parsed.kid));
        }
        if key.algorithm != parsed.alg {
            return Err(VerifyError::UnsupportedAlgorithm(format!(
                "key {} signs with {}, but the token says {}",
                parsed.kid, key.algorithm, parsed.alg
            )));
        }
        key.key
            .verify_sig(parsed.signing_input.as_bytes(), &parsed.signature)
            .map_err(|_| VerifyError::BadSignature(parsed.kid))?;
        let claims = token::decode_object(parsed.payload_b64, "payload")?;
        token::check_claims(
            &claims,
            ClaimRules {
                now,
                leeway: self.policy.leeway.as_secs(),
                require_exp: self.policy.require_exp,
                audience: expect.audience,
                issuer: expect.issuer,
                key_org: key.org.as_ref().map(OrgId::as_str),
                max_lifetime: self.policy.max_token_lifetime,
            },
        )?;
        Ok(Verified {
            key_id: parsed.kid,
            org: key.org.clone(),
            header: parsed.header,
            claims,
        })
    }

    /// Drops `id` from the cache. Call after the key is gone from the source:
    /// from then on no token of `id` verifies.
    pub fn forget(&self, id: KeyId) {
        let _fill = self.fill.lock().expect("fill lock poisoned");
        self.cache.invalidate(&id);
    }

    /// Drops every cached key (after the key source was replaced).
    pub fn forget_all(&self) {
        let _fill = self.fill.lock().expect("fill lock poisoned");
        self.cache.invalidate_all();
    }

    fn key(&self, id: KeyId) -> Result<Arc<CachedKey>, VerifyError> {
        if let Some(key) = self.cache.get(&id) {
            self.stats.hits.inc();
            return Ok(key);
        }
        self.stats.misses.inc();
        let absent = || match self.source.withheld(id) {
            Some(Withheld::Disabled) => VerifyError::KeyDisabled(id),
            Some(Withheld::Expired) => VerifyError::KeyExpired(id),
            None => VerifyError::UnknownKey(format!("no key {id}")),
        };
        let material = self
            .source
            .lookup(id)
            .map_err(|e| VerifyError::Unavailable(e.to_string()))?
            .ok_or_else(|| {
                let absent = absent();
                if let VerifyError::UnknownKey(_) = absent {
                    self.stats.unknown.inc();
                }
                absent
            })?;
        let key = ParsedPublicKey::new(material.algorithm.verification(), &material.spki_der)
            .map_err(|e| {
                VerifyError::Unavailable(format!("stored key {id} does not parse: {e}"))
            })?;
        let _fill = self.fill.lock().expect("fill lock poisoned");
        // A delete, disable or rotation may have completed since the
        // lookup; it has already called `forget`, so filling now with what
        // the lookup saw would resurrect the key or its old expiry.
        if !self
            .source
            .contains(id)
            .map_err(|e| VerifyError::Unavailable(e.to_string()))?
        {
            return Err(absent());
        }
        let key = Arc::new(CachedKey {
            org: material.org,
            algorithm: material.algorithm,
            key,
            expires_at: self.source.expires_at(id),
        });
        self.cache.insert(id, key.clone());
        Ok(key)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
