//! The web console: `GET /console` and its assets under `/console/`,
//! plain HTML, CSS and JavaScript modules embedded in the binary (no build
//! step, nothing fetched from another origin). Every response under
//! `/console` carries a strict Content-Security-Policy, `nosniff` and
//! `no-referrer`; `console.enabled = false` answers 404 there.

use hyper::header::{self, HeaderValue};
use hyper::StatusCode;

use super::body::Body;
use super::call::{Call, Outcome};
use super::reply::{self, ApiError, Reply};

/// No inline script or style, nothing from another origin, never framed.
pub const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'";

/// The embedded files: name under `/console/`, media type, content.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../console/index.html"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/console.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/api.js"),
    ),
    (
        "view.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/view.js"),
    ),
];

/// `GET /console`: the page.
pub async fn page(_: Call<'_>) -> Outcome {
    serve("index.html")
}

/// `GET /console/{asset}`: one embedded file (`/console/` is the page).
pub async fn asset(call: Call<'_>) -> Outcome {
    let name = call
        .params
        .get("asset", call.req.uri().path())
        .unwrap_or_default()
        .to_owned();
    let name = if name.is_empty() { "index.html" } else { &name };
    serve(name)
}

/// The answer to anything under `/console` while `console.enabled` is
/// false (the router asks before it looks at the method).
pub fn turned_off() -> ApiError {
    ApiError::not_found("the console is turned off (console.enabled = false)")
}

fn serve(name: &str) -> Outcome {
    let Some((_, media, bytes)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return Err(ApiError::not_found("no such file in the console"));
    };
    let mut r = reply::with_type(StatusCode::OK, media, Body::from(*bytes));
    // Not kept at all: a page kept for Back could come back signed in, or
    // showing a private key (the page also forgets both when left).
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// The headers every response under `/console` carries, errors included.
pub fn secure(reply: &mut Reply) {
    let h = reply.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}
