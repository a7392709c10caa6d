//! The verifier past the signature check: the input's header and payload
//! are signed with the fixture key, so claim checking sees fuzzed JSON
//! (a mutated real token in `token` fails its signature before that).
//!
//! Input layout: `header-json 0xFF payload-json`; with no 0xFF the whole
//! input is the payload under `{"alg":"RS256","kid":KID}`.
#![no_main]

use std::sync::{Arc, LazyLock};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use signet::keys::{Algorithm, KeyId};
use signet::verify::{Expect, KeyMaterial, KeySource, Policy, Verifier};

const KID: &str = "01JA000000000000000000000A";
const KEY_PEM: &str = include_str!("../../fixtures/keys/a.pem");

struct OneKey {
    id: KeyId,
    spki_der: Vec<u8>,
}

impl KeySource for OneKey {
    fn lookup(&self, id: KeyId) -> Result<Option<KeyMaterial>, String> {
        Ok((id == self.id).then(|| KeyMaterial {
            org: None,
            algorithm: Algorithm::RS256,
            spki_der: self.spki_der.clone(),
        }))
    }

    fn contains(&self, id: KeyId) -> Result<bool, String> {
        Ok(id == self.id)
    }
}

struct Fixture {
    verifier: Verifier,
    signer: RsaKeyPair,
    rng: SystemRandom,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let private = rsa::RsaPrivateKey::from_pkcs8_pem(KEY_PEM).expect("fixtures/keys/a.pem");
    let spki_der = private
        .to_public_key()
        .to_public_key_der()
        .expect("SPKI DER")
        .into_vec();
    let (_, pkcs8) = pkcs8::Document::from_pem(KEY_PEM).expect("PKCS#8 PEM");
    let signer = RsaKeyPair::from_pkcs8(pkcs8.as_bytes()).expect("aws-lc key pair");
    let source = OneKey {
        id: KeyId::parse(KID).expect("fixture kid"),
        spki_der,
    };
    Fixture {
        verifier: Verifier::new(Arc::new(source), Policy::default()),
        signer,
        rng: SystemRandom::new(),
    }
});

/// `SIGNET_FUZZ_VERBOSE=1` prints each verdict (to check the seeds reach it).
static VERBOSE: LazyLock<bool> =
    LazyLock::new(|| std::env::var_os("SIGNET_FUZZ_VERBOSE").is_some());

fuzz_target!(|data: &[u8]| {
    let default_header = format!(r#"{{"alg":"RS256","kid":"{KID}"}}"#);
    let (header, payload) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (default_header.as_bytes(), data),
    };
    let f = &*FIXTURE;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mut sig = vec![0; f.signer.public_modulus_len()];
    f.signer
        .sign(
            &RSA_PKCS1_SHA256,
            &f.rng,
            signing_input.as_bytes(),
            &mut sig,
        )
        .expect("sign");
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(&sig));
    let verdict = f.verifier.verify(
        &token,
        Expect {
            audience: Some("signet"),
            issuer: Some("x"),
        },
    );
    if *VERBOSE {
        eprintln!("verdict: {:?}", verdict.map(|v| v.claims));
    }
});
