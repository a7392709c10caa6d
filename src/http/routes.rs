//! The route table: the one place a path, its methods and its handler are
//! named. The matcher, the metrics label (the path template), the `Allow`
//! header of a 405 and the list of documented paths all come from it.
//! Adding a route is one row here plus its handler.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::LazyLock;

use hyper::body::Incoming;
use hyper::{Method, Request};

use super::call::{Call, Outcome, Params};
use super::reply::{ApiError, Reply};
use super::{audit, jwks, keys, lifecycle, ops, verify, ServerState};

/// A handler's future, boxed so that every handler fits one table.
type Pending<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// Turns one request into an outcome.
type Handler = for<'a> fn(Call<'a>) -> Pending<'a>;

/// How a route's errors are shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Errors {
    /// `{"code", "message", "cause"?}`, as docs/api.md describes.
    Api,
    /// The compatibility route's `{"success": false, "message"}`.
    Compat,
}

/// One row of the table: a method on a path template. A `GET` row also
/// answers `HEAD`. `{name}` segments match any one segment.
struct Route {
    method: Method,
    path: &'static str,
    errors: Errors,
    handler: Handler,
}

macro_rules! route {
    ($method:ident $path:literal => $handler:path) => {
        route!($method $path => $handler, Errors::Api)
    };
    ($method:ident $path:literal => $handler:path, $errors:expr) => {
        Route {
            method: Method::$method,
            path: $path,
            errors: $errors,
            handler: |call| Box::pin($handler(call)),
        }
    };
}

/// Every route the server answers, in matching order. Rows sharing a path
/// are listed together; their order is the order of the `Allow` header.
static ROUTES: LazyLock<[Route; 16]> = LazyLock::new(|| {
    [
        route!(GET "/v1/organisations/{org}/keys" => keys::list),
        route!(POST "/v1/organisations/{org}/keys" => keys::create),
        route!(DELETE "/v1/organisations/{org}/keys/{id}" => keys::delete),
        route!(PATCH "/v1/organisations/{org}/keys/{id}" => lifecycle::patch),
        route!(POST "/v1/organisations/{org}/keys/{id}/rotate" => lifecycle::rotate),
        route!(GET "/v1/keys/{id}" => keys::get),
        route!(GET "/v1/organisations/{org}/jwks.json" => jwks::of_org),
        route!(GET "/.well-known/jwks.json" => jwks::all),
        route!(POST "/v1/verify" => verify::verify),
        route!(GET "/v1/auth" => verify::auth),
        route!(GET "/v1/organisations/{org}/audit" => audit::page),
        route!(POST "/organization/{org}/key" => keys::create_compat, Errors::Compat),
        route!(GET "/healthz" => ops::healthz),
        route!(GET "/readyz" => ops::readyz),
        route!(GET "/metrics" => ops::metrics),
        route!(GET "/openapi.yaml" => ops::openapi),
    ]
});

/// Every path template the server routes, each once, in table order.
pub fn paths() -> Vec<&'static str> {
    let mut paths: Vec<&'static str> = Vec::new();
    for route in ROUTES.iter() {
        if !paths.contains(&route.path) {
            paths.push(route.path);
        }
    }
    paths
}

/// The path parameters of `path` if it has the shape of `template`.
fn matches<'a>(template: &'static str, path: &'a str) -> Option<Params<'a>> {
    let mut want = template.strip_prefix('/')?.split('/');
    let mut got = path.strip_prefix('/')?.split('/');
    let mut params = Params::default();
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(w), Some(g)) => match w.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
                Some(name) => params.push(name, g),
                None if w == g => {}
                None => return None,
            },
            _ => return None,
        }
    }
}

/// The first path template of the table that `path` has the shape of.
fn find(path: &str) -> Option<(&'static str, Params<'_>)> {
    ROUTES
        .iter()
        .find_map(|r| matches(r.path, path).map(|params| (r.path, params)))
}

fn answers(route: &Route, method: &Method) -> bool {
    route.method == method || (route.method == Method::GET && method == Method::HEAD)
}

/// The methods `template` answers, for `Allow`.
fn allow(template: &str) -> String {
    let mut methods = Vec::new();
    for route in ROUTES.iter().filter(|r| r.path == template) {
        methods.push(route.method.as_str());
        if route.method == Method::GET {
            methods.push(Method::HEAD.as_str());
        }
    }
    methods.join(", ")
}

/// Answers one request; returns its metrics label (the path template, or
/// `unmatched`) with the reply.
pub async fn dispatch(
    state: &ServerState,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> (&'static str, Reply) {
    let path = req.uri().path().to_owned();
    let Some((template, params)) = find(&path) else {
        return (
            "unmatched",
            ApiError::not_found("no such route").into_reply(),
        );
    };
    let rows = || ROUTES.iter().filter(|r| r.path == template);
    let errors = rows().next().map_or(Errors::Api, |r| r.errors);
    let outcome = match rows().find(|r| answers(r, req.method())) {
        Some(route) => {
            let call = Call {
                state,
                peer,
                req,
                params,
            };
            (route.handler)(call).await
        }
        None => Err(ApiError::method_not_allowed(allow(template))),
    };
    let reply = match errors {
        Errors::Api => outcome.unwrap_or_else(ApiError::into_reply),
        Errors::Compat => outcome.unwrap_or_else(ApiError::into_compat_reply),
    };
    (template, reply)
}

/// Runs every request parser of the HTTP layer on hostile input; for the
/// fuzz targets in `fuzz/`. Never panics on any input.
#[cfg(feature = "test-hooks")]
pub fn fuzz_parsers(path: &str, query: &str, body: &[u8], header: &str) {
    use hyper::header::{self, HeaderMap, HeaderValue};
    if let Some((template, params)) = find(path) {
        let _ = allow(template);
        if let Some(org) = params.get("org") {
            let _ = super::call::parse_org(org);
        }
        if let Some(id) = params.get("id") {
            let _ = super::call::parse_id(id);
        }
    }
    for (k, v) in super::call::query_pairs(Some(query)) {
        let _ = (k.len(), v.len());
    }
    keys::fuzz_body(body);
    verify::fuzz_body(body);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(header) {
        headers.insert(header::ACCEPT, v.clone());
        headers.insert(header::IF_NONE_MATCH, v);
    }
    let _ = super::call::accepts_pem(&headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path template with its parameters, as `find` returns it.
    type Found<'a> = Option<(&'a str, &'a [(&'a str, &'a str)])>;

    #[test]
    fn routes_parse_exactly() {
        let cases: &[(&str, Found)] = &[
            (
                "/v1/organisations/acme/keys",
                Some(("/v1/organisations/{org}/keys", &[("org", "acme")])),
            ),
            (
                "/v1/organisations/acme/keys/01H",
                Some((
                    "/v1/organisations/{org}/keys/{id}",
                    &[("org", "acme"), ("id", "01H")],
                )),
            ),
            (
                "/v1/organisations/acme/jwks.json",
                Some(("/v1/organisations/{org}/jwks.json", &[("org", "acme")])),
            ),
            (
                "/.well-known/jwks.json",
                Some(("/.well-known/jwks.json", &[])),
            ),
            (
                "/organization/acme/key",
                Some(("/organization/{org}/key", &[("org", "acme")])),
            ),
            ("/v1/keys/", Some(("/v1/keys/{id}", &[("id", "")]))),
            ("/v1/keys", None),
            (
                "/v1/organisations/acme/keys/01H/rotate",
                Some((
                    "/v1/organisations/{org}/keys/{id}/rotate",
                    &[("org", "acme"), ("id", "01H")],
                )),
            ),
            ("/v1/organisations/acme/keys/a/b", None),
            ("//healthz", None),
            ("healthz", None),
            ("/", None),
        ];
        for (path, expected) in cases {
            let found = find(path);
            let found = found
                .as_ref()
                .map(|(template, params)| (*template, params.as_slice()));
            assert_eq!(found, *expected, "{path}");
        }
    }

    #[test]
    fn allow_lists_the_methods_of_a_path() {
        let cases = [
            ("/v1/organisations/{org}/keys", "GET, HEAD, POST"),
            ("/v1/organisations/{org}/keys/{id}", "DELETE, PATCH"),
            ("/v1/organisations/{org}/keys/{id}/rotate", "POST"),
            ("/v1/verify", "POST"),
            ("/organization/{org}/key", "POST"),
            ("/v1/keys/{id}", "GET, HEAD"),
            ("/healthz", "GET, HEAD"),
        ];
        for (template, methods) in cases {
            assert_eq!(allow(template), methods, "{template}");
        }
    }

    #[test]
    fn every_template_is_reachable() {
        for template in paths() {
            let concrete = template.replace("{org}", "acme").replace("{id}", "01H");
            assert_eq!(find(&concrete).map(|(t, _)| t), Some(template));
        }
    }
}
