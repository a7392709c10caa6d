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
//!
//! Tokens that verified are remembered (see `token_cache`) with the
//! generation of the key-cache entry that checked them; a remembered token
//! is accepted only while that very entry is still in the key cache, so
//! forgetting a key ends its cached verdicts too. A hit looks the entry up
//! only when some key was forgotten since the verdict was last found live:
//! [`Verifier::forget`] counts every forget after the key cache let go.
//!
//! Every accepted verification, cached or not, adds one to its key's
//! usage counter (`crate::usage`), held by the key-cache fill and by each
//! remembered verdict: one relaxed atomic add.

mod jwk_set;
mod policy;
mod token;
mod token_cache;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::ParsedPublicKey;
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value};

use crate::keys::{Algorithm, KeyId, OrgId};
use crate::usage::{Counter as UseCounter, Usage};

pub use jwk_set::{JwkSetError, JwkSetSource};
pub use token::{decode_object, within_limit, ClaimRules, Contents};

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
    /// `Err(why)` when the source cannot vouch that a key it lacks is
    /// revoked (it may be behind the store): no verdict is given then.
    fn vouch(&self) -> Result<(), String> {
        Ok(())
    }
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
    /// Most verified tokens remembered (0 disables the token cache).
    pub token_cache_entries: usize,
    /// Most bytes the remembered tokens may take, as accounted by the cache.
    pub token_cache_bytes: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            leeway: Duration::from_secs(30),
            require_exp: true,
            max_token_bytes: 16 * 1024,
            cache_capacity: 10_000,
            max_token_lifetime: None,
            token_cache_entries: 0,
            token_cache_bytes: 0,
        }
    }
}

/// A token that verified.
#[derive(Debug, Clone)]
pub struct Verified {
    pub key_id: KeyId,
    pub org: Option<OrgId>,
    /// The header and claims; shared with the token cache, so a cached
    /// verdict is not copied.
    pub contents: Arc<Contents>,
}

impl Report {
    /// The report of one verification.
    pub fn of(result: &Result<Verified, VerifyError>) -> Report {
        match result {
            Ok(v) => Report::Valid(ValidReport {
                valid: true,
                key_id: v.key_id.to_string(),
                organisation_id: v.org.as_ref().map(|o| o.as_str().to_owned()),
                header: v.contents.header(),
                claims: v.contents.claims(),
            }),
            Err(e) => Report::Invalid(InvalidReport {
                valid: false,
                error: ReportError {
                    code: e.code().to_owned(),
                    message: e.to_string(),
                },
            }),
        }
    }

    pub fn is_valid(&self) -> bool {
        matches!(self, Report::Valid(_))
    }
}

/// The verdict `POST /v1/verify` answers and `signet verify --json`
/// prints (docs/api.md): one type for the server, the CLI's local checks
/// and the CLI reading a server's answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Report {
    Valid(ValidReport),
    Invalid(InvalidReport),
}

/// A token that verified: its key, that key's organisation, and what it says.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidReport {
    pub valid: bool,
    pub key_id: String,
    /// `null` for a key of no organisation (a JWK Set's).
    pub organisation_id: Option<String>,
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
}

/// A token that did not verify, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InvalidReport {
    pub valid: bool,
    pub error: ReportError,
}

/// One of the verdict codes of docs/api.md, and a sentence.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReportError {
    pub code: String,
    pub message: String,
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
    /// Unique per fill: a token cached under another generation is stale.
    generation: u64,
    /// Checked at every verification, so an expiry takes effect at its
    /// second whatever else is late.
    expires_at: Option<u64>,
    /// This key's usage counter.
    uses: Arc<UseCounter>,
}

/// Cache counters, registered by `metrics`.
#[derive(Debug, Clone, Default)]
pub struct CacheStats {
    pub hits: Counter,
    pub misses: Counter,
    pub unknown: Counter,
    /// Keys dropped to respect the capacity (not deletions).
    pub evictions: Counter,
    /// Tokens accepted from the token cache, without a signature check.
    pub token_hits: Counter,
    /// Token-cache lookups that found nothing usable.
    pub token_misses: Counter,
    /// Verifications accepted (added once a second from the key usage).
    pub accepted: Counter,
}

pub struct Verifier {
    source: Arc<dyn KeySource>,
    policy: Policy,
    cache: moka::sync::Cache<KeyId, Arc<CachedKey>>,
    /// Orders cache fills with [`Verifier::forget`].
    fill: Mutex<()>,
    stats: CacheStats,
    tokens: Option<token_cache::TokenCache>,
    generations: AtomicU64,
    /// Keys forgotten (or evicted) so far: a remembered token whose fill
    /// was confirmed at the current count needs no key-cache lookup.
    forgets: Arc<AtomicU64>,
    /// Accepted verifications per key.
    usage: Arc<Usage>,
}

impl Verifier {
    pub fn new(source: Arc<dyn KeySource>, policy: Policy) -> Verifier {
        let stats = CacheStats::default();
        let evictions = stats.evictions.clone();
        let forgets = Arc::new(AtomicU64::new(0));
        let evicted = forgets.clone();
        Verifier {
            source,
            policy,
            cache: moka::sync::Cache::builder()
                .max_capacity(policy.cache_capacity)
                .eviction_listener(move |_, _, cause| {
                    use moka::notification::RemovalCause;
                    if cause == RemovalCause::Size {
                        evictions.inc();
                    }
                    // The tokens of an evicted or replaced fill are looked
                    // up again (`forget` counts its own removals).
                    if cause != RemovalCause::Explicit {
                        evicted.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .build(),
            fill: Mutex::new(()),
            usage: Arc::new(Usage::new(stats.accepted.clone())),
            stats,
            tokens: token_cache::TokenCache::new(token_cache::Bounds {
                entries: policy.token_cache_entries,
                bytes: policy.token_cache_bytes,
            }),
            generations: AtomicU64::new(0),
            forgets,
        }
    }

    /// The per-key counts of accepted verifications.
    pub fn usage(&self) -> &Arc<Usage> {
        &self.usage
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
        // A source that cannot vouch for revocations gives no verdict, from
        // the cache of verdicts either.
        self.source.vouch().map_err(VerifyError::Unavailable)?;
        let uncached = |token| {
            self.verify_uncached(token, expect, now).map(|(v, key)| {
                key.uses.hit();
                v
            })
        };
        let Some(tokens) = &self.tokens else {
            return uncached(token);
        };
        if token.len() > self.policy.max_token_bytes {
            return uncached(token);
        }
        if let Some(hit) = tokens.get(token) {
            // Live means: the key cache holds the very fill that checked
            // the signature (`key` applies every check a miss would). It
            // did when this verdict was last confirmed, and still does if
            // no key has been forgotten since: `forget` counts only after
            // the key cache has let go, so a lookup begun at this count
            // saw every forget before it.
            // A key that is gone falls through: the full check says why.
            // An expired key falls through too.
            let forgets = self.forgets.load(Ordering::SeqCst);
            let live = hit.confirmed_at(forgets)
                || self.key(hit.kid).is_ok_and(|key| {
                    let same = key.generation == hit.generation;
                    if same {
                        hit.confirm(forgets);
                    }
                    same
                });
            if live && hit.key_expires_at.is_none_or(|at| now < at) {
                self.stats.token_hits.inc();
                self.check(&hit.contents, hit.org.as_ref(), expect, now)?;
                hit.uses().hit();
                return Ok(Verified {
                    key_id: hit.kid,
                    org: hit.org.clone(),
                    contents: hit.contents.clone(),
                });
            }
            tokens.remove_if(token, &hit);
        }
        self.stats.token_misses.inc();
        let (verified, key) = self.verify_uncached(token, expect, now)?;
        key.uses.hit();
        tokens.insert(
            token,
            Arc::new(
                token_cache::Verdict::new(
                    verified.key_id,
                    key.generation,
                    key.expires_at,
                    verified.org.clone(),
                    verified.contents.clone(),
                )
                .counting(key.uses.clone()),
            ),
        );
        Ok(verified)
    }

    /// The claim checks, on a fresh or a cached verdict.
    fn check(
        &self,
        claims: &Contents,
        key_org: Option<&OrgId>,
        expect: Expect<'_>,
        now: u64,
    ) -> Result<(), VerifyError> {
        token::check_claims(
            claims,
            ClaimRules {
                now,
                leeway: self.policy.leeway.as_secs(),
                require_exp: self.policy.require_exp,
                audience: expect.audience,
                issuer: expect.issuer,
                key_org: key_org.map(OrgId::as_str),
                max_lifetime: self.policy.max_token_lifetime,
            },
        )
    }

    /// The full check; also returns the key-cache fill that passed it.
    fn verify_uncached(
        &self,
        token: &str,
        expect: Expect<'_>,
        now: u64,
    ) -> Result<(Verified, Arc<CachedKey>), VerifyError> {
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
            .verify_sig(parsed.signing_input.as_bytes(), parsed.signature.as_bytes())
            .map_err(|_| VerifyError::BadSignature(parsed.kid))?;
        let kid = parsed.kid;
        let contents = parsed.contents()?;
        self.check(&contents, key.org.as_ref(), expect, now)?;
        let verified = Verified {
            key_id: kid,
            org: key.org.clone(),
            contents: Arc::new(contents),
        };
        Ok((verified, key))
    }

    /// Drops `id` from the cache. Call after the key is gone from the source:
    /// from then on no token of `id` verifies.
    pub fn forget(&self, id: KeyId) {
        let _fill = self.fill.lock().expect("fill lock poisoned");
        self.cache.invalidate(&id);
        // After the key cache let go: see `verify_at`.
        self.forgets.fetch_add(1, Ordering::SeqCst);
    }

    /// Drops every cached key (after the key source was replaced).
    pub fn forget_all(&self) {
        let _fill = self.fill.lock().expect("fill lock poisoned");
        self.cache.invalidate_all();
        self.forgets.fetch_add(1, Ordering::SeqCst);
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
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            expires_at: self.source.expires_at(id),
            uses: self.usage.counter(id),
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

#[cfg(test)]
mod report_tests {
    use super::*;

    /// The shape docs/api.md gives, both ways: what the server writes is
    /// what `signet verify --server` reads back.
    #[test]
    fn reports_keep_their_documented_shape_and_read_back() {
        let verified = Verified {
            key_id: KeyId::parse("01HZY3V5W8N4Q2ZP7J9K6M3T1A").unwrap(),
            org: None,
            contents: Arc::new(Contents::from_json("{}", r#"{"sub": "u"}"#).unwrap()),
        };
        let cases = [
            (
                Ok(verified),
                serde_json::json!({"valid": true, "keyId": "01HZY3V5W8N4Q2ZP7J9K6M3T1A",
                    "organisationId": null, "header": {}, "claims": {"sub": "u"}}),
            ),
            (
                Err(VerifyError::Malformed("not three parts".into())),
                serde_json::json!({"valid": false, "error": {"code": "malformed",
                    "message": VerifyError::Malformed("not three parts".into()).to_string()}}),
            ),
        ];
        for (result, expected) in cases {
            let report = Report::of(&result);
            assert_eq!(serde_json::to_value(&report).unwrap(), expected);
            assert_eq!(serde_json::from_value::<Report>(expected).unwrap(), report);
            assert_eq!(report.is_valid(), result.is_ok());
        }
    }
}
