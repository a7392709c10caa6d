//! Who is asking, and may they? Operator tokens (compared in constant time
//! by their SHA-256) and organisation tokens (JWTs checked by the one
//! verifier, then held to their signing key's organisation).

use std::path::PathBuf;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::audit::Actor;
use crate::config::Config;
use crate::keys::{KeyId, OrgId};
use crate::verify::{Expect, Verifier};

/// The right a route needs on its path organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Create and delete keys, read the audit log: `OWNER` or `ADMINISTRATOR`.
    Manage,
    /// List keys: any role.
    Member,
}

/// The `role` claim of an organisation token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    /// May manage the organisation's keys and read its audit log.
    Owner,
    /// The same rights as OWNER.
    Administrator,
    /// May list the organisation's keys.
    Member,
    /// Any other role (they are case-sensitive): the rights of MEMBER.
    #[value(skip)]
    Other,
}

impl Role {
    /// The role a `role` claim names.
    pub fn from_claim(claim: &str) -> Role {
        match claim {
            "OWNER" => Role::Owner,
            "ADMINISTRATOR" => Role::Administrator,
            "MEMBER" => Role::Member,
            _ => Role::Other,
        }
    }

    /// Whether the role may create and delete keys and read the audit log.
    pub fn may_manage(self) -> bool {
        matches!(self, Role::Owner | Role::Administrator)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Operator,
    Org {
        org: OrgId,
        role: Role,
        sub: String,
        key_id: KeyId,
    },
}

impl Principal {
    pub fn actor(&self) -> Actor {
        match self {
            Principal::Operator => Actor::Operator,
            Principal::Org { sub, key_id, .. } => Actor::Token {
                sub: sub.clone(),
                key_id: *key_id,
            },
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer` credential.
    #[error("this route needs an Authorization: Bearer credential (the operator token or an organisation token)")]
    Missing,
    /// A credential that is not the operator token nor a valid organisation
    /// token; `reason` is a code from a fixed set, for metrics.
    #[error("the bearer credential is not valid: {detail}")]
    Invalid {
        reason: &'static str,
        detail: String,
    },
    /// A valid credential without the right.
    #[error("{0}")]
    Forbidden(&'static str),
    /// No verdict can be given now (the keys may be behind the store).
    #[error("organisation tokens cannot be checked now: {0}")]
    Unavailable(String),
}

impl AuthError {
    pub fn invalid(reason: &'static str, detail: impl Into<String>) -> AuthError {
        AuthError::Invalid {
            reason,
            detail: detail.into(),
        }
    }

    /// Why, as a code from a fixed set: `missing`, `not_bearer`, a verifier
    /// code such as `bad_signature`, or `forbidden`. Safe as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid { reason, .. } => reason,
            AuthError::Forbidden(_) => "forbidden",
            AuthError::Unavailable(_) => "unavailable",
        }
    }
}

/// The operator token, held only as its SHA-256.
#[derive(Clone)]
pub struct OperatorToken([u8; 32]);

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorToken([redacted])")
    }
}

impl OperatorToken {
    pub fn from_secret(secret: &str) -> OperatorToken {
        OperatorToken(Sha256::digest(secret.as_bytes()).into())
    }

    /// Constant time in the presented credential's content: both sides are
    /// fixed-length digests.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.0).into()
    }

    /// The operator token from `SIGNET_ADMIN_TOKEN`, then
    /// `auth.admin_token_sha256`, then `{data_dir}/admin.token`, which is
    /// generated (mode 0600) if absent. Returns the path when it generated one.
    pub fn load_or_create(config: &Config) -> std::io::Result<(OperatorToken, Option<PathBuf>)> {
        if let Some(secret) = &config.auth.admin_token {
            return Ok((OperatorToken::from_secret(secret.expose()), None));
        }
        if let Some(digest_hex) = &config.auth.admin_token_sha256 {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(digest_hex, &mut digest)
                .expect("config checked the digest is hex");
            return Ok((OperatorToken(digest), None));
        }
        let path = config.storage.data_dir.join("admin.token");
        match std::fs::read_to_string(&path) {
            Ok(token) => Ok((OperatorToken::from_secret(token.trim()), None)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = generate_secret();
                crate::secret_file::write_secret_file(&path, token.as_bytes())?;
                Ok((OperatorToken::from_secret(&token), Some(path)))
            }
            Err(e) => Err(e),
        }
    }
}

pub(crate) fn generate_secret() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref())
}

/// Everything needed to authenticate a request.
pub struct Gate<'a> {
    pub operator: &'a OperatorToken,
    pub verifier: &'a Verifier,
    pub audience: &'a str,
}

impl Gate<'_> {
    /// Authenticates the value of an `Authorization` header.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let credential = bearer(authorization.ok_or(AuthError::Missing)?)?;
        if self.operator.matches(credential) {
            return Ok(Principal::Operator);
        }
        if credential.split('.').count() != 3 {
            return Err(AuthError::invalid(
                "malformed",
                "it is neither the operator token nor an organisation token: it does not match the operator token, and it is not a JWT (three dot-separated parts)",
            ));
        }
        let verified = self
            .verifier
            .verify(
                credential,
                Expect {
                    audience: Some(self.audience),
                    issuer: None,
                },
            )
            .map_err(|e| match e {
                crate::verify::VerifyError::Unavailable(why) => AuthError::Unavailable(why),
                e => AuthError::invalid(
                    e.code(),
                    format!(
                        "it is not the operator token, and not a valid organisation token: {} ({})",
                        e,
                        e.code()
                    ),
                ),
            })?;
        let claim = |name: &str| match verified.contents.claim_str(name) {
            Some(s) if !s.is_empty() => Ok(s.into_owned()),
            _ => Err(AuthError::invalid(
                "missing_claim",
                format!("organisation tokens need a string {name} claim"),
            )),
        };
        let org = OrgId::parse(&claim("org")?)
            .map_err(|e| AuthError::invalid("malformed", format!("claim org: {e}")))?;
        // The one check that keeps tenants apart: a key of organisation A
        // can only speak for A, whatever its token claims.
        if verified.org.as_ref() != Some(&org) {
            return Err(AuthError::invalid(
                "wrong_organisation",
                "the token's org claim differs from the organisation of the key that signed it",
            ));
        }
        Ok(Principal::Org {
            org,
            role: Role::from_claim(&claim("role")?),
            sub: claim("sub")?,
            key_id: verified.key_id,
        })
    }
}

/// Whether `principal` has `need` on `org`.
pub fn authorize(principal: &Principal, org: &OrgId, need: Need) -> Result<(), AuthError> {
    match principal {
        Principal::Operator => Ok(()),
        Principal::Org { org: own, role, .. } => {
            if own != org {
                return Err(AuthError::Forbidden(
                    "you can only manage keys for your own organisation",
                ));
            }
            match need {
                Need::Member => Ok(()),
                Need::Manage if role.may_manage() => Ok(()),
                Need::Manage => Err(AuthError::Forbidden(
                    "managing keys needs the OWNER or ADMINISTRATOR role",
                )),
            }
        }
    }
}

/// The credential of `Bearer <credential>` (scheme case-insensitive).
pub fn bearer(header: &str) -> Result<&str, AuthError> {
    let not_bearer = || {
        AuthError::invalid(
            "not_bearer",
            "Authorization must be \"Bearer <credential>\"",
        )
    };
    let (scheme, credential) = header.split_once(' ').ok_or_else(not_bearer)?;
    let credential = credential.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || credential.is_empty() {
        return Err(not_bearer());
    }
    Ok(credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_token_matches_only_itself() {
        let t = OperatorToken::from_secret("correct horse battery staple");
        assert!(t.matches("correct horse battery staple"));
        for wrong in [
            "",
            "correct horse battery stapl",
            "correct horse battery staple ",
            "x",
        ] {
            assert!(!t.matches(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc"), Ok("abc"));
        assert_eq!(bearer("bearer  abc "), Ok("abc"));
        for bad in ["Basic abc", "Bearer", "Bearer ", "abc", ""] {
            assert!(bearer(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn roles_and_organisations() {
        let acme = OrgId::parse("acme").unwrap();
        let other = OrgId::parse("other").unwrap();
        let who = |role: &str| Principal::Org {
            org: acme.clone(),
            role: Role::from_claim(role),
            sub: "u".into(),
            key_id: KeyId::new(ulid::Ulid::nil()),
        };
        assert!(authorize(&Principal::Operator, &other, Need::Manage).is_ok());
        assert!(authorize(&who("OWNER"), &acme, Need::Manage).is_ok());
        assert!(authorize(&who("ADMINISTRATOR"), &acme, Need::Manage).is_ok());
        assert!(authorize(&who("MEMBER"), &acme, Need::Member).is_ok());
        assert!(authorize(&who("MEMBER"), &acme, Need::Manage).is_err());
        assert!(authorize(&who("owner"), &acme, Need::Manage).is_err());
        assert_eq!(
            authorize(&who("OWNER"), &other, Need::Member),
            Err(AuthError::Forbidden(
                "you can only manage keys for your own organisation"
            ))
        );
    }
}
