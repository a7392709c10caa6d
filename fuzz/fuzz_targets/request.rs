//! The HTTP layer's parsers: route path, query string, JSON request bodies
//! and the Accept / If-None-Match header values.
//!
//! Input layout: `path 0xFF query 0xFF body 0xFF header` (0xFF never occurs
//! in UTF-8, so it splits cleanly); missing parts are empty.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == 0xFF);
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default();
    let header = String::from_utf8_lossy(parts.next().unwrap_or_default());
    signet::http::fuzz_parsers(&path, &query, body, &header);
});
