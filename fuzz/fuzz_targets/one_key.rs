//! Shared by the `token` and `claims` targets (included with `#[path]`, not
//! a target itself): a verifier that knows one RS256 key, the public half
//! of `fixtures/keys/a.pem`, under a fixed kid.

use std::sync::{Arc, LazyLock};

use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use signet::keys::{Algorithm, KeyId};
use signet::verify::{KeyMaterial, KeySource, KeySourceError, Policy, Verifier};

pub const KID: &str = "01JA000000000000000000000A";
pub const KEY_PEM: &str = include_str!("../../fixtures/keys/a.pem");

struct OneKey {
    id: KeyId,
    spki_der: Vec<u8>,
}

impl KeySource for OneKey {
    fn lookup(&self, id: KeyId) -> Result<Option<KeyMaterial>, KeySourceError> {
        Ok((id == self.id).then(|| KeyMaterial {
            org: None,
            algorithm: Algorithm::RS256,
            spki_der: self.spki_der.clone(),
        }))
    }

    fn contains(&self, id: KeyId) -> Result<bool, KeySourceError> {
        Ok(id == self.id)
    }
}

/// The verifier, built once per fuzzing process.
pub static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    let private = rsa::RsaPrivateKey::from_pkcs8_pem(KEY_PEM).expect("fixtures/keys/a.pem");
    let spki_der = private
        .to_public_key()
        .to_public_key_der()
        .expect("SPKI DER")
        .into_vec();
    let source = OneKey {
        id: KeyId::parse(KID).expect("fixture kid"),
        spki_der,
    };
    Verifier::new(Arc::new(source), Policy::default())
});

/// `SIGNET_FUZZ_VERBOSE=1` prints each verdict (to check the seeds reach it).
pub static VERBOSE: LazyLock<bool> =
    LazyLock::new(|| std::env::var_os("SIGNET_FUZZ_VERBOSE").is_some());
