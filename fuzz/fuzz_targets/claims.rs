//! The verifier past the signature check: the input's header and payload
//! are signed with the fixture key, so claim checking sees fuzzed JSON
//! (a mutated real token in `token` fails its signature before that).
//!
//! Input layout: `header-json 0xFF payload-json`; with no 0xFF the whole
//! input is the payload under `{"alg":"RS256","kid":KID}`.
#![no_main]

#[path = "one_key.rs"]
mod one_key;

use std::sync::LazyLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use one_key::{KEY_PEM, KID, VERBOSE, VERIFIER};
use signet::verify::Expect;

struct Fixture {
    signer: RsaKeyPair,
    rng: SystemRandom,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let (_, pkcs8) = pkcs8::Document::from_pem(KEY_PEM).expect("PKCS#8 PEM");
    Fixture {
        signer: RsaKeyPair::from_pkcs8(pkcs8.as_bytes()).expect("aws-lc key pair"),
        rng: SystemRandom::new(),
    }
});

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
    let verdict = VERIFIER.verify(
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
