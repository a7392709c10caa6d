//! Who is asking, and may they? Operator tokens (compared in constant time
//! by their SHA-256) and organisation tokens (JWTs checked by the one
//! verifier, then held to their signing key's organisation).

use std::io::Write;
use std::path::{Path, PathBuf};

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

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Operator,
    Org {
        org: OrgId,
        role: String,
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
    /// A credential that is not the operator token nor a valid organisation token.
    #[error("the bearer credential is not valid: {0}")]
    Invalid(String),
    /// A valid credential without the right.
    #[error("{0}")]
    Forbidden(&'static str),
    /// No verdict can be given now (the keys may be behind the store).
    #[error("organisation tokens cannot be checked now: {0}")]
    Unavailable(String),
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
        if let Some(hex) = &config.auth.admin_token_sha256 {
            let mut digest = [0u8; 32];
            for (i, byte) in digest.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .expect("config checked the digest is hex");
            }
            return Ok((OperatorToken(digest), None));
        }
        let path = config.storage.data_dir.join("admin.token");
        match std::fs::read_to_string(&path) {
            Ok(token) => Ok((OperatorToken::from_secret(token.trim()), None)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = generate_secret();
                write_private(&path, token.as_bytes())?;
                Ok((OperatorToken::from_secret(&token), Some(path)))
            }
            Err(e) => Err(e),
        }
    }
}

fn generate_secret() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref())
}

/// Creates `path` with mode 0600; fails if it exists.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
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
                e => AuthError::Invalid(format!("{} ({})", e, e.code())),
            })?;
        let claim = |name: &str| match verified.claims.get(name) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(AuthError::Invalid(format!(
                "organisation tokens need a string {name} claim"
            ))),
        };
        let org = OrgId::parse(&claim("org")?)
            .map_err(|e| AuthError::Invalid(format!("claim org: {e}")))?;
        // The one check that keeps tenants apart: a key of organisation A
        // can only speak for A, whatever its token claims.
        if verified.org.as_ref() != Some(&org) {
            return Err(AuthError::Invalid(
                "the token's org claim differs from the organisation of the key that signed it"
                    .into(),
            ));
        }
        Ok(Principal::Org {
            org,
            role: claim("role")?,
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
                Need::Manage if matches!(role.as_str(), "OWNER" | "ADMINISTRATOR") => Ok(()),
                Need::Manage => Err(AuthError::Forbidden(
                    "managing keys needs the OWNER or ADMINISTRATOR role",
                )),
            }
        }
    }
}

/// The credential of `Bearer <credential>` (scheme case-insensitive).
pub fn bearer(header: &str) -> Result<&str, AuthError> {
    let (scheme, credential) = header.split_once(' ').ok_or_else(|| {
        AuthError::Invalid("Authorization must be \"Bearer <credential>\"".into())
    })?;
    let credential = credential.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || credential.is_empty() {
        return Err(AuthError::Invalid(
            "Authorization must be \"Bearer <credential>\"".into(),
        ));
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
            role: role.into(),
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
