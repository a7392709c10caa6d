//! The route table: the one place a path, its methods and its handler are
//! named. The matcher, the metrics label (the path template), the `Allow`
//! header of a 405 and the list of documented paths all come from it.
//! Adding a route is one row here plus its handler.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, LazyLock};

use hyper::body::Incoming;
use hyper::{Method, Request};

use super::call::{Call, Outcome, Params};
use super::deadline::Activity;
use super::reply::{ApiError, Reply};
use super::{
    audit, cluster, console, events, followers, jwks, keys, lifecycle, ops, verify, ServerState,
};

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
static ROUTES: LazyLock<[Route; 24]> = LazyLock::new(|| {
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
        route!(GET "/v1/organisations/{org}/audit/verify" => audit::verify),
        route!(GET "/v1/organisations" => keys::organisations),
        route!(POST "/organization/{org}/key" => keys::create_compat, Errors::Compat),
        route!(GET "/healthz" => ops::healthz),
        route!(GET "/readyz" => ops::readyz),
        route!(GET "/metrics" => ops::metrics),
        route!(GET "/openapi.yaml" => ops::openapi),
        route!(GET "/console" => console::page),
        route!(GET "/console/{asset}" => console::asset),
        route!(GET "/v1/events" => events::all),
        route!(GET "/v1/organisations/{org}/events" => events::of_org),
        route!(POST "/v1/followers/ack" => followers::ack),
        route!(GET "/v1/cluster" => cluster::view),
    ]
});

/// The paths a follower serves; every other answers 421 `read_only`.
const FOLLOWER_PATHS: [&str; 8] = [
    "/v1/keys/{id}",
    "/v1/organisations/{org}/jwks.json",
    "/.well-known/jwks.json",
    "/v1/verify",
    "/v1/auth",
    "/healthz",
    "/readyz",
    "/metrics",
];

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

/// The most segments a routed path has; a longer path matches no route.
const MAX_SEGMENTS: usize = 8;

/// One segment of a path template.
enum Segment {
    Literal(&'static str),
    Param(&'static str),
}

/// Each row's template, split once: row `i` of `ROUTES` is row `i` here.
static SHAPES: LazyLock<Vec<Vec<Segment>>> = LazyLock::new(|| {
    ROUTES
        .iter()
        .map(|r| {
            r.path[1..]
                .split('/')
                .map(
                    |w| match w.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
                        Some(name) => Segment::Param(name),
                        None => Segment::Literal(w),
                    },
                )
                .collect()
        })
        .collect()
});

/// The byte ranges of the segments of `path` after its leading `/`;
/// `None` without that `/` or with more than `MAX_SEGMENTS` segments.
fn split(path: &str) -> Option<([Range<usize>; MAX_SEGMENTS], usize)> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return None;
    }
    let mut segments = [const { 0..0 }; MAX_SEGMENTS];
    let mut n = 0;
    let mut start = 1;
    for end in 1..=bytes.len() {
        if end == bytes.len() || bytes[end] == b'/' {
            *segments.get_mut(n)? = start..end;
            n += 1;
            start = end + 1;
        }
    }
    Some((segments, n))
}

/// The path parameters of `path` (split into `segments`) if it has the
/// shape of `template`.
fn matches(template: &[Segment], path: &str, segments: &[Range<usize>]) -> Option<Params> {
    if template.len() != segments.len() {
        return None;
    }
    let mut params = Params::default();
    for (want, got) in template.iter().zip(segments) {
        match want {
            Segment::Param(name) => params.push(name, got.clone()),
            Segment::Literal(w) if *w == &path[got.clone()] => {}
            Segment::Literal(_) => return None,
        }
    }
    Some(params)
}

/// The first row of the table whose template `path` has the shape of.
fn find(path: &str) -> Option<(usize, Params)> {
    if let Some(&row) = FIXED.get(path) {
        return Some((row, Params::default()));
    }
    scan(path)
}

/// [`find`] row by row.
fn scan(path: &str) -> Option<(usize, Params)> {
    let (segments, n) = split(path)?;
    SHAPES
        .iter()
        .enumerate()
        .find_map(|(i, shape)| matches(shape, path, &segments[..n]).map(|params| (i, params)))
}

/// The templates without a parameter, each with the row [`scan`] finds for
/// it: the busiest paths (the JWK Set, `/v1/auth`) are one look-up.
static FIXED: LazyLock<HashMap<&'static str, usize>> = LazyLock::new(|| {
    ROUTES
        .iter()
        .filter(|r| !r.path.contains('{'))
        .filter_map(|r| Some((r.path, scan(r.path)?.0)))
        .collect()
});

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

/// How many rows the route table has.
pub fn rows() -> usize {
    ROUTES.len()
}

/// One request's answer, with what its metrics and its log line need.
pub struct Answered {
    /// The metrics label: the path template, or `unmatched`.
    pub route: &'static str,
    /// The first table row of that template.
    pub row: Option<usize>,
    pub reply: Reply,
    /// Whether the request's credential proved valid.
    pub credited: bool,
}

/// Answers one request. Every answer under `/console` carries the
/// console's security headers, errors and unmatched paths included.
pub async fn dispatch(
    state: &ServerState,
    req: Box<Request<Incoming>>,
    peer: SocketAddr,
    activity: &Arc<Activity>,
) -> Answered {
    let path = req.uri().path();
    let console = path == "/console" || path.starts_with("/console/");
    let credited = AtomicBool::new(false);
    let (route, row, mut reply) = answer(state, req, peer, activity, &credited).await;
    if console {
        console::secure(&mut reply);
    }
    Answered {
        route,
        row,
        reply,
        credited: credited.into_inner(),
    }
}

async fn answer(
    state: &ServerState,
    req: Box<Request<Incoming>>,
    peer: SocketAddr,
    activity: &Arc<Activity>,
    credited: &AtomicBool,
) -> (&'static str, Option<usize>, Reply) {
    let Some((first, params)) = find(req.uri().path()) else {
        return (
            "unmatched",
            None,
            ApiError::not_found("no such route").into_reply(),
        );
    };
    let template = ROUTES[first].path;
    let errors = ROUTES[first].errors;
    let reply = |e: ApiError| match errors {
        Errors::Api => e.into_reply(),
        Errors::Compat => e.into_compat_reply(),
    };
    // A follower answers only what it can from memory, before any
    // authentication.
    if let Some(upstream) = &state.config.upstream {
        if !FOLLOWER_PATHS.contains(&template) {
            return (
                template,
                Some(first),
                reply(ApiError::read_only(&upstream.url)),
            );
        }
    }
    // A console turned off is not there, whatever the method.
    if template.starts_with("/console") && !state.config.console.enabled {
        return (template, Some(first), reply(console::turned_off()));
    }
    // Rows sharing a path are listed together.
    let mut rows = ROUTES[first..].iter().take_while(|r| r.path == template);
    let outcome = match rows.find(|r| answers(r, req.method())) {
        Some(route) => {
            let call = Call {
                state,
                peer,
                req,
                params,
                activity,
                credited,
            };
            (route.handler)(call).await
        }
        None => Err(ApiError::method_not_allowed(allow(template))),
    };
    (template, Some(first), outcome.unwrap_or_else(reply))
}

/// Runs every request parser of the HTTP layer on hostile input; for the
/// fuzz targets in `fuzz/`. Never panics on any input.
#[cfg(feature = "test-hooks")]
pub fn fuzz_parsers(path: &str, query: &str, body: &[u8], header: &str) {
    use hyper::header::{self, HeaderMap, HeaderValue};
    if let Some((row, params)) = find(path) {
        let _ = allow(ROUTES[row].path);
        if let Some(org) = params.get("org", path) {
            let _ = super::call::parse_org(org);
        }
        if let Some(id) = params.get("id", path) {
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
            let found = find(path).map(|(row, params)| (ROUTES[row].path, params.resolve(path)));
            let expected = (*expected).map(|(template, params)| (template, params.to_vec()));
            assert_eq!(found, expected, "{path}");
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
    fn the_fixed_paths_look_up_as_the_scan_finds_them() {
        let mut paths: Vec<String> = paths().iter().map(|t| t.to_string()).collect();
        paths.extend(["/v1/auth/", "/v1/Auth", "/console/", "/v1", ""].map(String::from));
        assert!(FIXED.contains_key("/.well-known/jwks.json") && FIXED.contains_key("/v1/auth"));
        for path in &paths {
            assert_eq!(find(path), scan(path), "{path}");
        }
    }

    #[test]
    fn every_template_is_reachable() {
        for template in paths() {
            let concrete = template.replace("{org}", "acme").replace("{id}", "01H");
            assert_eq!(
                find(&concrete).map(|(row, _)| ROUTES[row].path),
                Some(template)
            );
        }
    }
}
