//! JWK and JWK Set parsing, as `signet verify --jwks` reads a fetched set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signet::keys::Jwk;

fuzz_target!(|data: &[u8]| {
    if let Ok(jwk) = serde_json::from_slice::<Jwk>(data) {
        let _ = jwk.to_parts();
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Some(keys) = value.get("keys").and_then(|k| k.as_array()) {
            for key in keys {
                if let Ok(jwk) = serde_json::from_value::<Jwk>(key.clone()) {
                    let _ = jwk.to_parts();
                }
            }
        }
    }
});
