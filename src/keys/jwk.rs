//! The JSON Web Key form of a public key (RFC 7517/7518 §6.3): `n` and `e`
//! as unpadded base64url, in both directions.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};
use serde::{Deserialize, Serialize};

use super::{Algorithm, KeyId, PublicKeyRecord};

/// One entry of a JWK Set as signet publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    pub n: String,
    pub e: String,
}

/// Why a JWK cannot be used as a signet verification key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwkError {
    /// Only RSA keys are supported.
    #[error("key type {0:?} is not RSA")]
    NotRsa(String),
    /// `n` or `e` is not unpadded base64url.
    #[error("n or e is not unpadded base64url")]
    Encoding,
    /// The numbers do not form a usable RSA public key.
    #[error("n and e do not form a valid RSA public key: {0}")]
    InvalidKey(String),
    /// The key has no `kid` or its `kid` is not a ULID.
    #[error("kid is missing or is not a ULID")]
    Kid,
    /// The key has no `alg`, or names one signet does not support.
    #[error("alg is missing or is not one of the RSA algorithms")]
    Alg,
}

impl Jwk {
    /// The JWK of a stored public key.
    pub fn from_record(record: &PublicKeyRecord) -> Jwk {
        let public = RsaPublicKey::from_public_key_der(&record.spki_der)
            .expect("a stored SPKI is always a valid RSA public key");
        Jwk {
            kty: "RSA".into(),
            use_: Some("sig".into()),
            alg: Some(record.algorithm.as_str().into()),
            kid: Some(record.id.to_string()),
            n: URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }
    }

    /// The key's id, algorithm and SPKI DER, for a verifier reading a JWK Set.
    pub fn to_parts(&self) -> Result<(KeyId, Algorithm, Vec<u8>), JwkError> {
        if self.kty != "RSA" {
            return Err(JwkError::NotRsa(self.kty.clone()));
        }
        let kid = self.kid.as_deref().ok_or(JwkError::Kid)?;
        let kid = KeyId::parse(kid).map_err(|_| JwkError::Kid)?;
        let alg = self.alg.as_deref().ok_or(JwkError::Alg)?;
        let alg = alg.parse().map_err(|_| JwkError::Alg)?;
        let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| JwkError::Encoding);
        let n = BigUint::from_bytes_be(&decode(&self.n)?);
        let e = BigUint::from_bytes_be(&decode(&self.e)?);
        let public = RsaPublicKey::new(n, e).map_err(|e| JwkError::InvalidKey(e.to_string()))?;
        let der = public
            .to_public_key_der()
            .map_err(|e| JwkError::InvalidKey(e.to_string()))?;
        Ok((kid, alg, der.into_vec()))
    }
}
