//! PEM / SPKI decoding and the verifier's base64url → JSON object decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = rsa::RsaPublicKey::from_public_key_pem(text) {
            // A key that parsed must re-encode.
            key.to_public_key_der().expect("re-encode a parsed key");
        }
        let _ = pkcs8::Document::from_pem(text);
        let _ = signet::verify::decode_object(text, "x");
    }
    let _ = rsa::RsaPublicKey::from_public_key_der(data);
});
