//! Uploaded public keys: an SPKI PEM or a JWK, as a create body carries
//! them. An accepted key must publish as a JWK that reads back to the same
//! key, since the JWK Sets and the verifier take it from there.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signet::keys::upload::{from_jwk, from_pem, Upload};
use signet::keys::{Algorithm, Jwk, KeyId, KeyName, OrgId, PublicKeyRecord};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the algorithm the body names (or none).
    let Some((pick, rest)) = data.split_first() else {
        return;
    };
    let algorithm = Algorithm::ALL.get(usize::from(*pick) % 10).copied();
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if let Ok(upload) = from_pem(text, algorithm) {
        check(upload);
    }
    if let Ok(serde_json::Value::Object(jwk)) = serde_json::from_str(text) {
        if let Ok(upload) = from_jwk(&jwk, algorithm) {
            check(upload);
        }
    }
});

fn check(upload: Upload) {
    let record = PublicKeyRecord {
        id: KeyId::new(ulid::Ulid::from_parts(1, 1)),
        org: OrgId::parse("fuzz").unwrap(),
        name: KeyName::parse("fuzz").unwrap(),
        spec: upload.spec,
        spki_der: upload.spki_der.clone(),
        created_at_ms: 0,
        life: Default::default(),
    };
    let (_, algorithm, der) = Jwk::from_record(&record)
        .to_parts()
        .expect("an accepted upload publishes as a usable JWK");
    assert_eq!(algorithm, upload.spec.algorithm());
    assert_eq!(der, upload.spki_der, "the JWK reads back to the stored key");
}
