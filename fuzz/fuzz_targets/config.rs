//! `config.toml` parsing (not network-facing, but cheap to cover).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = signet::config::Config::from_toml(text);
    }
});
