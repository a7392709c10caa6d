//! One request in flight as a handler sees it (`Call`), and what every
//! handler shares: authorisation, JSON bodies, path parameters, query
//! strings and the `Accept` check. Raw input becomes domain types here.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::ops::Range;

use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode};

use super::reply::{ApiError, ErrorCode, Reply, JSON, PEM};
use super::ServerState;
use crate::audit::Actor;
use crate::auth::{authorize, AuthError, Gate, Need, Principal};
use crate::keys::{KeyId, OrgId};
use crate::service::Caller;

/// What a handler returns: a reply, or an error the route's error shape
/// turns into one.
pub type Outcome = Result<Reply, ApiError>;

/// The `{name}` segments of a matched path template, in order, as byte
/// ranges of the request's path (so that routing copies no path).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params(Vec<(&'static str, Range<usize>)>);

impl Params {
    pub fn push(&mut self, name: &'static str, value: Range<usize>) {
        self.0.push((name, value));
    }

    /// The value of `name` in `path`, the path the parameters were matched in.
    pub fn get<'p>(&self, name: &str, path: &'p str) -> Option<&'p str> {
        let (_, range) = self.0.iter().find(|(n, _)| *n == name)?;
        path.get(range.clone())
    }

    /// Every parameter's name and value in `path`.
    #[cfg(test)]
    pub fn resolve<'p>(&self, path: &'p str) -> Vec<(&'static str, &'p str)> {
        let value = |r: &Range<usize>| path.get(r.clone()).unwrap_or_default();
        self.0.iter().map(|(n, r)| (*n, value(r))).collect()
    }
}

/// One request in flight: the server's state, the client's address, the
/// request and the parameters of its path.
pub struct Call<'a> {
    pub state: &'a ServerState,
    pub peer: SocketAddr,
    pub req: Request<Incoming>,
    pub params: Params,
}

impl Call<'_> {
    pub fn headers(&self) -> &HeaderMap {
        self.req.headers()
    }

    /// The `{org}` path parameter, parsed.
    pub fn org(&self) -> Result<OrgId, ApiError> {
        parse_org(
            self.params
                .get("org", self.req.uri().path())
                .unwrap_or_default(),
        )
    }

    /// The `{id}` path parameter, parsed.
    pub fn key_id(&self) -> Result<KeyId, ApiError> {
        parse_id(
            self.params
                .get("id", self.req.uri().path())
                .unwrap_or_default(),
        )
    }

    /// The pairs of the query string, decoded.
    pub fn query(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        query_pairs(self.req.uri().query())
    }

    pub fn caller(&self, actor: Actor) -> Caller {
        Caller {
            actor,
            client: Some(self.peer.ip().to_string()),
        }
    }

    /// The `{org}` path parameter, and the caller if it may manage it.
    pub async fn manage(&self) -> Result<(OrgId, Caller), ApiError> {
        let org = self.org()?;
        let principal = self.authorize(&org, Need::Manage).await?;
        Ok((org, self.caller(principal.actor())))
    }

    /// Authenticates and authorises. A valid credential without the right
    /// is an audit event (signet's words only); a missing or invalid one is
    /// counted and sampled, never written (see `refusals`).
    pub async fn authorize(&self, org: &OrgId, need: Need) -> Result<Principal, ApiError> {
        let state = self.state;
        let gate = Gate {
            operator: &state.operator,
            verifier: state.signet.verifier(),
            audience: &state.config.auth.audience,
        };
        let authorization = self
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        // A key created through another instance a moment ago is learned
        // from the store before its token is judged.
        if let Some(token) = authorization.and_then(|a| crate::auth::bearer(a).ok()) {
            state.signet.learn_key_of(token).await;
        }
        let principal = match gate.authenticate(authorization) {
            Ok(principal) => principal,
            Err(e) => {
                let refusals = &state.signet.refusals;
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
        state
            .signet
            .record_denied(org, &self.caller(principal.actor()), outcome)
            .await;
        Err(ApiError::from(e))
    }

    /// Reads a JSON body: `application/json` only, within the size limit.
    pub async fn read_json<T: serde::de::DeserializeOwned>(self) -> Result<T, ApiError> {
        let read = self.read_json_as(&[JSON], false).await?;
        Ok(read.expect("an empty body is refused"))
    }

    /// Reads a JSON object sent as one of `media`, within the size limit.
    /// With `empty_ok`, an empty body (of any or no content type) is `None`.
    pub async fn read_json_as<T: serde::de::DeserializeOwned>(
        self,
        media: &[&str],
        empty_ok: bool,
    ) -> Result<Option<T>, ApiError> {
        let req = self.req;
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
                ErrorCode::UnsupportedMediaType,
                format!(
                    "this route takes a JSON body: send Content-Type: {}",
                    media.join(" or ")
                ),
            )
        };
        if !is_json && !empty_ok {
            return Err(unsupported());
        }
        let limit = self.state.config.server.max_body_bytes;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
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
        let bytes = match super::deadline::read_body(body, &self.state.config).await {
            Ok(bytes) => bytes,
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Err(e) if e.is::<super::deadline::BodyTimeout>() => {
                return Err(super::deadline::body_timed_out(self.state, e))
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
                .cause(redacted(&e))
        })
    }
}

/// A JSON parse error's message with the content of every quoted string
/// left out: serde repeats a wrongly typed string value, which may be a
/// private key sent in the wrong field.
pub fn redacted(e: &serde_json::Error) -> String {
    let mut out = String::new();
    for (i, part) in e.to_string().split('"').enumerate() {
        match i % 2 {
            0 => out.push_str(part),
            _ => out.push_str("\"…\""),
        }
    }
    out
}

pub fn parse_org(raw: &str) -> Result<OrgId, ApiError> {
    OrgId::parse(raw).map_err(|e| ApiError::invalid_request(e.to_string()))
}

pub fn parse_id(raw: &str) -> Result<KeyId, ApiError> {
    KeyId::parse(raw).map_err(|e| ApiError::invalid_id(e.to_string()))
}

/// Whether the client asked for PEM.
pub fn accepts_pem(headers: &HeaderMap) -> bool {
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

pub fn header_value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).expect("ids, ETags and routes are valid header values")
}

/// `application/x-www-form-urlencoded` pairs of a query string.
pub fn query_pairs(query: Option<&str>) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let query = format!("v={raw}");
            let pairs: Vec<_> = query_pairs(Some(&query)).collect();
            assert_eq!(pairs.len(), 1, "{raw}");
            assert_eq!(pairs[0].1, decoded, "{raw}");
        }
    }
}
