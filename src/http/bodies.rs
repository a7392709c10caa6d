//! The JSON bodies of the key routes: create (a key pair, or an uploaded
//! public key, with an optional expiry), `PATCH` and rotate, each parsed
//! into the service's own types. See docs/api.md, "Key lifecycle".

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::reply::ApiError;
use crate::keys::upload::{self, Upload};
use crate::keys::{self, Algorithm, Bits, KeyName, KeySpec};
use crate::service::{NewKey, Patch};

/// The media type of a JSON merge patch (RFC 7396), which `PATCH` takes
/// beside `application/json`.
pub const MERGE_PATCH: &str = "application/merge-patch+json";

/// The create body. Unknown fields are refused so that a typo is not
/// silently ignored. `publicKey` and `jwk` are taken as any JSON value and
/// checked here, so that a parse error never repeats what they hold.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    name: KeyName,
    #[serde(default)]
    algorithm: Option<Algorithm>,
    /// Only for generated RSA keys; `null` is the same as absent.
    #[serde(default)]
    bits: Option<Bits>,
    #[serde(default, rename = "expiresAt")]
    expires_at: Option<String>,
    #[serde(default, rename = "publicKey")]
    public_key: Option<Value>,
    #[serde(default)]
    jwk: Option<Value>,
}

/// What a create body asks for.
pub enum Creation {
    /// A key pair signet generates.
    Generate(NewKey),
    /// A public key the organisation made itself.
    Upload(KeyName, Upload),
}

impl CreateBody {
    /// The creation asked for and its expiry (seconds since the epoch).
    pub fn parse(self) -> Result<(Creation, Option<u64>), ApiError> {
        let invalid = |e: &dyn std::fmt::Display| ApiError::invalid_request(e.to_string());
        let expires_at = self
            .expires_at
            .as_deref()
            .map(keys::parse_time)
            .transpose()
            .map_err(|e| invalid(&e))?;
        let upload = match (self.public_key, self.jwk) {
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid_request(
                    "give either publicKey or jwk, not both",
                ))
            }
            (Some(Value::String(pem)), None) => Some(upload::from_pem(&pem, self.algorithm)),
            (Some(_), None) => {
                return Err(ApiError::invalid_request(
                    "publicKey must be a string holding one SPKI PEM (BEGIN PUBLIC KEY)",
                ))
            }
            (None, Some(Value::Object(jwk))) => Some(upload::from_jwk(&jwk, self.algorithm)),
            (None, Some(_)) => return Err(ApiError::invalid_request("jwk must be a JSON object")),
        };
        let creation = match upload {
            Some(_) if self.bits.is_some() => {
                return Err(ApiError::invalid_request(
                    "bits does not apply to an upload: the key's own size is kept",
                ))
            }
            Some(upload) => Creation::Upload(self.name, upload.map_err(|e| invalid(&e))?),
            None => Creation::Generate(NewKey {
                name: self.name,
                spec: KeySpec::new(self.algorithm.unwrap_or_default(), self.bits)
                    .map_err(|e| invalid(&e))?,
            }),
        };
        Ok((creation, expires_at))
    }
}

/// The `PATCH` body: a new state and/or name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    #[serde(default)]
    state: Option<Wanted>,
    #[serde(default)]
    name: Option<KeyName>,
}

/// The states a `PATCH` may ask for; `expired` is not one.
#[derive(Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Wanted {
    Active,
    Disabled,
}

impl PatchBody {
    pub fn parse(self) -> Result<Patch, ApiError> {
        if self.state.is_none() && self.name.is_none() {
            return Err(ApiError::invalid_request(
                "nothing to change: give state (\"active\" or \"disabled\") and/or name",
            ));
        }
        Ok(Patch {
            disable: self.state.map(|s| s == Wanted::Disabled),
            name: self.name,
        })
    }
}

/// The rotate body; an empty body takes the defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RotateBody {
    #[serde(default = "default_grace")]
    grace_seconds: u32,
}

fn default_grace() -> u32 {
    86_400
}

impl Default for RotateBody {
    fn default() -> Self {
        RotateBody {
            grace_seconds: default_grace(),
        }
    }
}

impl RotateBody {
    /// How long the old key stays valid.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_seconds.into())
    }
}

#[cfg(feature = "test-hooks")]
pub fn fuzz_body(body: &[u8]) {
    let _ = serde_json::from_slice::<CreateBody>(body).map(CreateBody::parse);
    let _ = serde_json::from_slice::<PatchBody>(body).map(PatchBody::parse);
    let _ = serde_json::from_slice::<RotateBody>(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_do_not_repeat_strings() {
        let e = serde_json::from_str::<CreateBody>(
            r#"{"name": "k", "bits": "-----BEGIN PRIVATE KEY-----"}"#,
        )
        .err()
        .unwrap();
        let message = super::super::call::redacted(&e);
        assert!(!message.contains("PRIVATE"), "{message}");
        assert!(message.contains("invalid type"), "{message}");
    }
}
