//! A JWK Set as a key source, for `signet verify --jwks`.

use std::collections::HashMap;

use serde_json::Value;

use super::{KeyMaterial, KeySource, KeySourceError};
use crate::keys::{Algorithm, Jwk, KeyId};

/// A JWK Set that is not `{"keys": [...]}`.
#[derive(Debug, thiserror::Error)]
#[error("the JWK Set is not {{\"keys\": [...]}}")]
pub struct JwkSetError(#[source] serde_json::Error);

/// The keys of a JWK Set signet can verify with, by key id.
pub struct JwkSetSource(HashMap<KeyId, (Algorithm, Vec<u8>)>);

impl JwkSetSource {
    /// Reads a JWK Set document. Keys signet cannot use (other types, no
    /// kid) are skipped, as JOSE libraries do; a token naming one then
    /// fails as unknown_key.
    pub fn parse(bytes: &[u8]) -> Result<JwkSetSource, JwkSetError> {
        #[derive(serde::Deserialize)]
        struct Set {
            keys: Vec<Value>,
        }
        let set: Set = serde_json::from_slice(bytes).map_err(JwkSetError)?;
        let mut keys = HashMap::new();
        for key in set.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(key) else {
                continue;
            };
            if let Ok((kid, alg, der)) = jwk.to_parts() {
                keys.insert(kid, (alg, der));
            }
        }
        Ok(JwkSetSource(keys))
    }
}

impl KeySource for JwkSetSource {
    fn lookup(&self, id: KeyId) -> Result<Option<KeyMaterial>, KeySourceError> {
        Ok(self.0.get(&id).map(|(algorithm, der)| KeyMaterial {
            org: None,
            algorithm: *algorithm,
            spki_der: der.clone(),
        }))
    }
    fn contains(&self, id: KeyId) -> Result<bool, KeySourceError> {
        Ok(self.0.contains_key(&id))
    }
}
