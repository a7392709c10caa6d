//! The JWT verifier on arbitrary token strings, against one known RS256 key.
#![no_main]

#[path = "one_key.rs"]
mod one_key;

use libfuzzer_sys::fuzz_target;
use one_key::{VERBOSE, VERIFIER};
use signet::verify::Expect;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let verdict = VERIFIER.verify(
        token,
        Expect {
            audience: Some("signet"),
            issuer: Some("x"),
        },
    );
    if *VERBOSE {
        eprintln!("verdict: {:?}", verdict.map(|v| v.claims));
    }
});
