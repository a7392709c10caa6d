//! The route table and its handlers. Each handler turns raw input into
//! domain types once, calls the service, and turns every outcome into a
//! response; nothing escapes to the connection.

use std::net::SocketAddr;

use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::body::Body;
use super::lifecycle::{self, CreateBody, Creation, PatchBody, RotateBody, MERGE_PATCH};
use super::reply::{self, ApiError, Reply, JSON, PEM};
use super::App;
use crate::audit::Actor;
use crate::auth::{self, authorize, AuthError, Gate, Need, Principal};
use crate::keys::{KeyId, KeyName, KeySpec, KeyView, OrgId};
use crate::service::{Caller, NewKey};
use crate::verify::{self, Expect, VerifyError};

/// A path the server knows, with its raw parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    OrgKeys(&'a str),
    OrgKey(&'a str, &'a str),
    Rotate(&'a str, &'a str),
    Key(&'a str),
    OrgJwks(&'a str),
    Jwks,
    Verify,
    Auth,
    Audit(&'a str),
    Compat(&'a str),
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
}

impl<'a> Route<'a> {
    pub fn parse(path: &'a str) -> Option<Route<'a>> {
        let rest = path.strip_prefix('/')?;
        let segments: Vec<&str> = rest.split('/').collect();
        Some(match segments.as_slice() {
            ["v1", "organisations", org, "keys"] => Route::OrgKeys(org),
            ["v1", "organisations", org, "keys", id] => Route::OrgKey(org, id),
            ["v1", "organisations", org, "keys", id, "rotate"] => Route::Rotate(org, id),
            ["v1", "organisations", org, "jwks.json"] => Route::OrgJwks(org),
            ["v1", "organisations", org, "audit"] => Route::Audit(org),
            ["v1", "keys", id] => Route::Key(id),
            ["v1", "verify"] => Route::Verify,
            ["v1", "auth"] => Route::Auth,
            [".well-known", "jwks.json"] => Route::Jwks,
            ["organization", org, "key"] => Route::Compat(org),
            ["healthz"] => Route::Healthz,
            ["readyz"] => Route::Readyz,
            ["metrics"] => Route::Metrics,
            ["openapi.yaml"] => Route::OpenApi,
            _ => return None,
        })
    }

    /// The methods this route answers, for `Allow`.
    pub fn allow(self) -> &'static str {
        match self {
            Route::OrgKeys(_) => "GET, HEAD, POST",
            Route::OrgKey(..) => "DELETE, PATCH",
            Route::Verify | Route::Compat(_) | Route::Rotate(..) => "POST",
            _ => "GET, HEAD",
        }
    }

    /// A label for metrics: the route's shape, never its parameters.
    pub fn label(self) -> &'static str {
        match self {
            Route::OrgKeys(_) => "/v1/organisations/{org}/keys",
            Route::OrgKey(..) => "/v1/organisations/{org}/keys/{id}",
            Route::Rotate(..) => "/v1/organisations/{org}/keys/{id}/rotate",
            Route::Key(_) => "/v1/keys/{id}",
            Route::OrgJwks(_) => "/v1/organisations/{org}/jwks.json",
            Route::Jwks => "/.well-known/jwks.json",
            Route::Verify => "/v1/verify",
            Route::Auth => "/v1/auth",
            Route::Audit(_) => "/v1/organisations/{org}/audit",
            Route::Compat(_) => "/organization/{org}/key",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.yaml",
        }
    }
}

/// Answers one request.
pub async fn handle(app: &App, req: Request<Incoming>, peer: SocketAddr) -> (&'static str, Reply) {
    let path = req.uri().path().to_owned();
    let Some(route) = Route::parse(&path) else {
        return (
            "unmatched",
            ApiError::not_found("no such route").into_reply(),
        );
    };
    let cx = Cx { app, peer };
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let result = match (route, req.method().clone()) {
        (Route::OrgKeys(org), Method::POST) => cx.create(org, req).await,
        (Route::OrgKeys(org), _) if get => cx.list(org, req.headers()).await,
        (Route::OrgKey(org, id), Method::DELETE) => cx.delete(org, id, req.headers()).await,
        (Route::OrgKey(org, id), Method::PATCH) => cx.patch(org, id, req).await,
        (Route::Rotate(org, id), Method::POST) => cx.rotate(org, id, req).await,
        (Route::Key(id), _) if get => cx.get_key(id, req.headers()).await,
        (Route::OrgJwks(org), _) if get => cx.org_jwks(org, req.headers()),
        (Route::Jwks, _) if get => Ok(cx.jwks_reply(&app.signet.jwks_all(), req.headers())),
        (Route::Verify, Method::POST) => cx.verify(req).await,
        (Route::Auth, _) if get => Ok(cx.auth(req.uri().query(), req.headers())),
        (Route::Audit(org), _) if get => cx.audit(org, req.uri().query(), req.headers()).await,
        (Route::Compat(org), Method::POST) => {
            return (
                route.label(),
                cx.compat(org, req.headers())
                    .await
                    .unwrap_or_else(ApiError::into_compat_reply),
            );
        }
        (Route::Healthz, _) if get => Ok(reply::json(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        (Route::Readyz, _) if get => Ok(cx.readyz().await),
        (Route::Metrics, _) if get => Ok(reply::with_type(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            app.signet.metrics.render().into(),
        )),
        (Route::OpenApi, _) if get => Ok(reply::with_type(
            StatusCode::OK,
            "application/yaml",
            Body::from(&include_bytes!("../../openapi.yaml")[..]),
        )),
        (Route::Compat(_), _) => {
            let refused = ApiError::method_not_allowed(route.allow());
            return (route.label(), refused.into_compat_reply());
        }
        (route, _) => Err(ApiError::method_not_allowed(route.allow())),
    };
    (route.label(), result.unwrap_or_else(ApiError::into_reply))
}

type Handled = Result<Reply, ApiError>;

/// What every handler needs.
struct Cx<'a> {
    app: &'a App,
    peer: SocketAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    token: String,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
}

impl Cx<'_> {
    fn caller(&self, actor: Actor) -> Caller {
        Caller {
            actor,
            client: Some(self.peer.ip().to_string()),
        }
    }

    /// Authenticates and authorises. A valid credential without the right
    /// is an audit event (signet's words only); a missing or invalid one is
    /// counted and sampled, never written (see `refusals`).
    async fn allow(
        &self,
        headers: &HeaderMap,
        org: &OrgId,
        need: Need,
    ) -> Result<Principal, ApiError> {
        let gate = Gate {
            operator: &self.app.operator,
            verifier: self.app.signet.verifier(),
            audience: &self.app.config.auth.audience,
        };
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let principal = match gate.authenticate(authorization) {
            Ok(principal) => principal,
            Err(e) => {
                let refusals = &self.app.signet.refusals;
                refusals.unauthenticated(org, self.peer.ip(), e.reason());
                return Err(ApiError::from(e));
            }
        };
        let Err(e) = authorize(&principal, org, need) else {
            return Ok(principal);
        };
        let outcome = match e {
            AuthError::Forbidden(why) => why,
            ref other => other.reason(),
        };
        self.app
            .signet
            .record_denied(org, &self.caller(principal.actor()), outcome)
            .await;
        Err(ApiError::from(e))
    }

    async fn create(&self, org: &str, req: Request<Incoming>) -> Handled {
        let org = parse_org(org)?;
        let principal = self.allow(req.headers(), &org, Need::Manage).await?;
        let pem = accepts_pem(req.headers());
        let body: CreateBody = self.read_json(req).await?;
        let caller = self.caller(principal.actor());
        let signet = &self.app.signet;
        match body.parse()? {
            (Creation::Generate(new), expires_at) => {
                let (record, key) = signet
                    .create_expiring(org, new, expires_at, &caller)
                    .await?;
                Ok(lifecycle::issued(&record, &key, pem))
            }
            (Creation::Upload(name, upload), expires_at) => {
                let record = signet
                    .upload(org, name, upload, expires_at, &caller)
                    .await?;
                Ok(lifecycle::uploaded(&record))
            }
        }
    }

    async fn patch(&self, org: &str, id: &str, req: Request<Incoming>) -> Handled {
        let (org, id) = (parse_org(org)?, parse_id(id)?);
        let principal = self.allow(req.headers(), &org, Need::Manage).await?;
        let body: PatchBody = self
            .read_json_as(req, &[JSON, MERGE_PATCH], false)
            .await?
            .expect("an empty body is refused");
        let caller = self.caller(principal.actor());
        let record = self
            .app
            .signet
            .change(org, id, body.parse()?, &caller)
            .await?;
        Ok(reply::json(StatusCode::OK, &KeyView::new(&record)))
    }

    async fn rotate(&self, org: &str, id: &str, req: Request<Incoming>) -> Handled {
        let (org, id) = (parse_org(org)?, parse_id(id)?);
        let principal = self.allow(req.headers(), &org, Need::Manage).await?;
        let pem = accepts_pem(req.headers());
        let body: RotateBody = self
            .read_json_as(req, &[JSON], true)
            .await?
            .unwrap_or_default();
        let caller = self.caller(principal.actor());
        let (record, key, _) = self
            .app
            .signet
            .rotate(org, id, body.grace(), &caller)
            .await?;
        Ok(lifecycle::issued(&record, &key, pem))
    }

    async fn compat(&self, org: &str, headers: &HeaderMap) -> Handled {
        let org = parse_org(org)?;
        let principal = self.allow(headers, &org, Need::Manage).await?;
        let new = NewKey {
            name: KeyName::parse("Organization key").expect("a valid literal name"),
            spec: KeySpec::default(),
        };
        let (record, key) = self
            .app
            .signet
            .create(org, new, &self.caller(principal.actor()))
            .await?;
        let pem = key
            .pkcs1_pem()
            .expect("the compatibility route makes RSA keys");
        let mut r = reply::with_type(
            StatusCode::OK,
            PEM,
            Body::secret(Zeroizing::new(pem.as_bytes().to_vec())),
        );
        r.headers_mut().insert(
            header::LOCATION,
            header_value(format!("/v1/keys/{}", record.id)),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(r)
    }

    async fn list(&self, org: &str, headers: &HeaderMap) -> Handled {
        let org = parse_org(org)?;
        self.allow(headers, &org, Need::Member).await?;
        let records = self.app.signet.list(&org).await?;
        let keys: Vec<KeyView> = records.iter().map(KeyView::new).collect();
        Ok(reply::json(
            StatusCode::OK,
            &serde_json::json!({ "keys": keys }),
        ))
    }

    async fn delete(&self, org: &str, id: &str, headers: &HeaderMap) -> Handled {
        let org = parse_org(org)?;
        let id = parse_id(id)?;
        let principal = self.allow(headers, &org, Need::Manage).await?;
        self.app
            .signet
            .delete(org, id, &self.caller(principal.actor()))
            .await?;
        Ok(reply::empty(StatusCode::NO_CONTENT))
    }

    async fn get_key(&self, id: &str, headers: &HeaderMap) -> Handled {
        let record = self.app.signet.get(parse_id(id)?).await?;
        if accepts_pem(headers) {
            return Ok(reply::with_type(
                StatusCode::OK,
                PEM,
                record.public_key_pem().into(),
            ));
        }
        Ok(reply::json(StatusCode::OK, &KeyView::new(&record)))
    }

    fn org_jwks(&self, org: &str, headers: &HeaderMap) -> Handled {
        let org = parse_org(org)?;
        Ok(self.jwks_reply(&self.app.signet.jwks_of(&org), headers))
    }

    fn jwks_reply(&self, doc: &crate::jwks::Document, headers: &HeaderMap) -> Reply {
        let matches = headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|tag| tag == "*" || tag == doc.etag || tag.strip_prefix("W/") == Some(&doc.etag));
        let mut r = if matches {
            reply::empty(StatusCode::NOT_MODIFIED)
        } else {
            reply::with_type(StatusCode::OK, JSON, doc.body.clone().into())
        };
        let h = r.headers_mut();
        h.insert(header::ETAG, header_value(doc.etag.clone()));
        let configured = self.app.config.jwks.max_age_secs;
        let cc = lifecycle::jwks_cache_control(doc, configured, &self.app.jwks_cache_control);
        h.insert(header::CACHE_CONTROL, cc);
        r
    }

    async fn verify(&self, req: Request<Incoming>) -> Handled {
        let body: VerifyBody = self.read_json(req).await?;
        let expect = Expect {
            audience: body.audience.as_deref(),
            issuer: body.issuer.as_deref(),
        };
        let result = self.app.signet.verify(&body.token, expect);
        self.count(&result);
        if let Err(VerifyError::Unavailable(cause)) = result {
            return Err(ApiError::internal(cause));
        }
        Ok(reply::json(StatusCode::OK, &verify::result_json(&result)))
    }

    /// The reverse proxy's sub-request: 200 with identity headers, or 401.
    fn auth(&self, query: Option<&str>, headers: &HeaderMap) -> Reply {
        let (mut audience, mut issuer) = (None, None);
        for (k, v) in query_pairs(query) {
            match k {
                "audience" => audience = Some(v),
                "issuer" => issuer = Some(v),
                _ => {}
            }
        }
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = match authorization
            .ok_or(AuthError::Missing)
            .and_then(auth::bearer)
        {
            Ok(token) => token,
            Err(e) => return ApiError::from(e).into_reply(),
        };
        let result = self.app.signet.verify(
            token,
            Expect {
                audience: audience.as_deref(),
                issuer: issuer.as_deref(),
            },
        );
        self.count(&result);
        match result {
            Ok(v) => {
                let mut r = reply::empty(StatusCode::OK);
                let h = r.headers_mut();
                if let Some(org) = &v.org {
                    h.insert("x-signet-org", header_value(org.to_string()));
                }
                if let Some(sub) = v.claims.get("sub").and_then(|s| s.as_str()) {
                    if let Ok(sub) = HeaderValue::from_str(sub) {
                        h.insert("x-signet-sub", sub);
                    }
                }
                h.insert("x-signet-key-id", header_value(v.key_id.to_string()));
                r
            }
            Err(VerifyError::Unavailable(cause)) => ApiError::internal(cause).into_reply(),
            Err(e) => ApiError::from(AuthError::invalid(e.code(), format!("{e} ({})", e.code())))
                .into_reply(),
        }
    }

    async fn audit(&self, org: &str, query: Option<&str>, headers: &HeaderMap) -> Handled {
        let org = parse_org(org)?;
        self.allow(headers, &org, Need::Manage).await?;
        let (mut limit, mut before) = (100usize, None);
        for (k, v) in query_pairs(query) {
            match k {
                "limit" => {
                    limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| {
                            ApiError::invalid_request("limit must be an integer from 1 to 1000")
                        })?
                }
                "before" => before = Some(parse_id(&v)?),
                _ => {}
            }
        }
        let events = self.app.signet.audit_page(&org, limit, before).await?;
        Ok(reply::json(
            StatusCode::OK,
            &serde_json::json!({ "events": events }),
        ))
    }

    async fn readyz(&self) -> Reply {
        if self.app.signet.is_ready().await {
            reply::json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
        } else {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "internal",
                "the database is not usable",
            )
            .into_reply()
        }
    }

    fn count(&self, result: &Result<crate::verify::Verified, VerifyError>) {
        let outcome = match result {
            Ok(_) => "valid",
            Err(e) => e.code(),
        };
        self.app
            .signet
            .metrics
            .verifications
            .get_or_create(&crate::metrics::OutcomeLabel { outcome })
            .inc();
    }

    /// Reads a JSON body: `application/json` only, within the size limit.
    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        req: Request<Incoming>,
    ) -> Result<T, ApiError> {
        let read = self.read_json_as(req, &[JSON], false).await?;
        Ok(read.expect("an empty body is refused"))
    }

    /// Reads a JSON body sent as one of `media`, within the size limit.
    /// With `empty_ok`, an empty body (of any or no content type) is `None`.
    async fn read_json_as<T: serde::de::DeserializeOwned>(
        &self,
        req: Request<Incoming>,
        media: &[&str],
        empty_ok: bool,
    ) -> Result<Option<T>, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let is_json = content_type
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|mime| media.iter().any(|m| mime.trim().eq_ignore_ascii_case(m)));
        let unsupported = || {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "this route takes a JSON body: send Content-Type: {}",
                    media.join(" or ")
                ),
            )
        };
        if !is_json && !empty_ok {
            return Err(unsupported());
        }
        let limit = self.app.config.server.max_body_bytes;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is over the limit of {limit} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let body = Limited::new(req.into_body(), limit);
        let bytes = match super::deadline::read_body(body, &self.app.config).await {
            Ok(bytes) => bytes,
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Err(e) if e.is::<super::deadline::BodyTimeout>() => {
                return Err(super::deadline::body_timed_out(self.app, e))
            }
            Err(e) => {
                return Err(
                    ApiError::invalid_request("the request body could not be read").cause(e),
                )
            }
        };
        match (bytes.is_empty() && empty_ok, is_json) {
            (true, _) => return Ok(None),
            (false, false) => return Err(unsupported()),
            (false, true) => {}
        }
        // serde reads a struct from an array too; every body is an object.
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(ApiError::invalid_request(
                "the request body must be a JSON object",
            ));
        }
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            ApiError::invalid_request("the request body is not valid for this route")
                .cause(lifecycle::redacted(&e))
        })
    }
}

fn parse_org(raw: &str) -> Result<OrgId, ApiError> {
    OrgId::parse(raw).map_err(|e| ApiError::invalid_request(e.to_string()))
}

fn parse_id(raw: &str) -> Result<KeyId, ApiError> {
    KeyId::parse(raw).map_err(|e| ApiError::invalid_id(e.to_string()))
}

fn accepts_pem(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            m.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case(PEM))
        })
}

fn header_value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).expect("ids, ETags and routes are valid header values")
}

/// `application/x-www-form-urlencoded` pairs of a query string.
fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k, percent_decode(v))
        })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |j: usize| bytes.get(j).and_then(|b| char::from(*b).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
            (b'+', ..) => out.push(b' '),
            (b, ..) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs every request parser of this module on hostile input; for the fuzz
/// targets in `fuzz/`. Never panics on any input.
#[doc(hidden)]
pub fn fuzz_parsers(path: &str, query: &str, body: &[u8], header: &str) {
    if let Some(route) = Route::parse(path) {
        let _ = (route.allow(), route.label());
        match route {
            Route::OrgKeys(org) | Route::OrgJwks(org) | Route::Audit(org) | Route::Compat(org) => {
                let _ = parse_org(org);
            }
            Route::OrgKey(org, id) => {
                let _ = (parse_org(org), parse_id(id));
            }
            Route::Key(id) => {
                let _ = parse_id(id);
            }
            _ => {}
        }
    }
    for (k, v) in query_pairs(Some(query)) {
        let _ = (k.len(), v.len());
    }
    let _ = serde_json::from_slice::<CreateBody>(body).map(CreateBody::parse);
    let _ = serde_json::from_slice::<PatchBody>(body).map(PatchBody::parse);
    let _ = serde_json::from_slice::<RotateBody>(body);
    let _ = serde_json::from_slice::<VerifyBody>(body);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(header) {
        headers.insert(header::ACCEPT, v.clone());
        headers.insert(header::IF_NONE_MATCH, v);
    }
    let _ = accepts_pem(&headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_exactly() {
        let cases: &[(&str, Option<Route>)] = &[
            ("/v1/organisations/acme/keys", Some(Route::OrgKeys("acme"))),
            (
                "/v1/organisations/acme/keys/01H",
                Some(Route::OrgKey("acme", "01H")),
            ),
            (
                "/v1/organisations/acme/jwks.json",
                Some(Route::OrgJwks("acme")),
            ),
            ("/.well-known/jwks.json", Some(Route::Jwks)),
            ("/organization/acme/key", Some(Route::Compat("acme"))),
            ("/v1/keys/", Some(Route::Key(""))),
            ("/v1/keys", None),
            ("/v1/organisations/acme/keys/a/b", None),
            ("//healthz", None),
            ("healthz", None),
            ("/", None),
        ];
        for (path, expected) in cases {
            assert_eq!(Route::parse(path), *expected, "{path}");
        }
    }

    #[test]
    fn percent_decoding_never_panics() {
        let cases = [
            ("a%20b", "a b"),
            ("a+b", "a b"),
            ("%", "%"),
            ("%4", "%4"),
            ("%zz", "%zz"),
            ("%41", "A"),
            ("%e2%9c%93", "✓"),
            ("%ff", "\u{fffd}"),
        ];
        for (raw, decoded) in cases {
            assert_eq!(percent_decode(raw), decoded, "{raw}");
        }
    }
}
