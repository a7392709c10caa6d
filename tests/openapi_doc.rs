//! The OpenAPI document served at `/openapi.yaml` names every route and
//! every error code of docs/api.md. There is no YAML parser among the
//! dependencies, so these are plain text checks on the document's layout.

const DOC: &str = include_str!("../openapi.yaml");

/// Every path the server routes, from its route table.
fn paths() -> Vec<&'static str> {
    signet::http::paths()
}

/// The error codes of docs/api.md.
const ERROR_CODES: [&str; 14] = [
    "invalid_request",
    "invalid_id",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "quota_exceeded",
    "payload_too_large",
    "unsupported_media_type",
    "request_timeout",
    "conflict",
    "unavailable",
    "internal",
    "read_only",
];

/// The verification error codes of docs/api.md.
const VERIFY_CODES: [&str; 12] = [
    "malformed",
    "unsupported_algorithm",
    "unknown_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "wrong_audience",
    "wrong_issuer",
    "missing_claim",
    "wrong_organisation",
    "key_disabled",
    "key_expired",
];

/// The lines of the top-level `paths:` block, up to the next top-level key.
fn paths_block() -> Vec<&'static str> {
    let mut lines = DOC.lines().skip_while(|l| *l != "paths:");
    assert_eq!(lines.next(), Some("paths:"), "no top-level `paths:` line");
    lines
        .take_while(|l| l.is_empty() || l.starts_with(' ') || l.starts_with('#'))
        .collect()
}

#[test]
fn document_is_openapi_3_1() {
    assert!(
        DOC.starts_with("openapi: 3.1"),
        "openapi.yaml must start with `openapi: 3.1`, found {:?}",
        DOC.lines().next()
    );
}

#[test]
fn every_route_is_a_path() {
    let block = paths_block();
    for path in paths() {
        let line = format!("  {path}:");
        assert!(
            block.contains(&line.as_str()),
            "openapi.yaml has no `{line}` line under `paths:`"
        );
    }
}

#[test]
fn no_undocumented_paths() {
    let documented: Vec<&str> = paths_block()
        .into_iter()
        .filter_map(|l| l.strip_prefix("  /"))
        .filter_map(|l| l.strip_suffix(':'))
        .collect();
    let paths = paths();
    for path in &documented {
        assert!(
            paths.contains(&format!("/{path}").as_str()),
            "openapi.yaml documents /{path}, which the server does not route"
        );
    }
    assert_eq!(documented.len(), paths.len(), "a path is documented twice");
}

#[test]
fn every_error_code_is_documented() {
    for code in ERROR_CODES.iter().chain(VERIFY_CODES.iter()) {
        assert!(
            DOC.lines().any(|l| l.trim() == format!("- {code}")),
            "openapi.yaml has no enum entry `- {code}`"
        );
    }
}
