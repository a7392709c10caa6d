//! One request in flight as a handler sees it (`Call`), and what every
//! handler shares: authorisation, JSON bodies, path parameters, query
//! strings and the `Accept` check. Raw input becomes domain types here.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode};

use super::deadline::Activity;
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
/// request, the parameters of its path and its connection's clocks.
pub struct Call<'a> {
    pub state: &'a ServerState,
    pub peer: SocketAddr,
    /// Boxed: it moves through several futures before a handler reads it.
    pub req: Box<Request<Incoming>>,
    pub params: Params,
    /// The connection's deadlines: a stream (the change feed) keeps its
    /// connection busy.
    pub activity: &'a Arc<Activity>,
    /// Set once the request's credential proved valid: only such requests
    /// are logged one line each at `info` (an anonymous client never
    /// costs a write per request).
    pub credited: &'a AtomicBool,
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

    /// The query of a route that changes something, refused (400) if it
    /// names a parameter other than `known`, or one twice: a misspelt
    /// condition such as `ifunusedfor` must not be dropped and the change
    /// made anyway. Read after authentication.
    pub fn strict_query(&self, known: &[&str]) -> Result<Vec<Param<'_>>, ApiError> {
        let mut pairs: Vec<Param<'_>> = Vec::new();
        for (k, v) in self.query() {
            if !known.contains(&&*k) {
                let takes = match known {
                    [] => "no query parameters".to_owned(),
                    known => format!("only {}", known.join(", ")),
                };
                return Err(ApiError::invalid_request(format!(
                    "unknown query parameter {:?}: this request takes {takes}",
                    k.chars().take(40).collect::<String>()
                )));
            }
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(ApiError::invalid_request(format!(
                    "the query parameter {k} is given twice: give it once"
                )));
            }
            pairs.push((k, v));
        }
        Ok(pairs)
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

    /// Authenticates any caller (the operator or an organisation's token),
    /// for a route that belongs to no organisation; a missing or invalid
    /// credential is counted.
    pub async fn authenticate(&self) -> Result<Principal, ApiError> {
        let metrics = &self.state.signet.metrics;
        let principal = self.credential().await.inspect_err(|e| {
            let label = crate::metrics::ReasonLabel { reason: e.reason() };
            metrics.unauthenticated.get_or_create(&label).inc();
        })?;
        Ok(principal)
    }

    /// The request's `Authorization` header, if it has one. Two or more
    /// are refused: whatever sits behind signet (a proxy, the service
    /// `/v1/auth` vouches for) might read another one than was checked.
    pub fn authorization(&self) -> Result<Option<&str>, AuthError> {
        let mut all = self.headers().get_all(header::AUTHORIZATION).iter();
        let first = all.next();
        if all.next().is_some() {
            return Err(AuthError::invalid(
                "not_bearer",
                "the request carries more than one Authorization header; send one",
            ));
        }
        Ok(first.and_then(|v| v.to_str().ok()))
    }

    /// Who the request's credential names, if it is valid.
    async fn credential(&self) -> Result<Principal, AuthError> {
        let state = self.state;
        let gate = Gate {
            operator: &state.operator,
            verifier: state.signet.verifier(),
            audience: &state.config.auth.audience,
        };
        let authorization = self.authorization()?;
        // A key created through another instance a moment ago is learned
        // from the store before its token is judged.
        if let Some(token) = authorization.and_then(|a| crate::auth::bearer(a).ok()) {
            if let Err(unchecked) = state.signet.learn_key_of(token).await {
                return Err(AuthError::Unavailable(unchecked.to_string()));
            }
        }
        let principal = gate.authenticate(authorization)?;
        self.credited.store(true, Ordering::Relaxed);
        Ok(principal)
    }

    /// Authenticates and authorises. A valid credential without the right
    /// is an audit event (signet's words only); a missing or invalid one is
    /// counted and sampled, never written (see `refusals`).
    pub async fn authorize(&self, org: &OrgId, need: Need) -> Result<Principal, ApiError> {
        let state = self.state;
        let principal = match self.credential().await {
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
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| unfit_body::<T>(&bytes, &e))
    }
}

/// The 400 for a JSON body that does not parse as `T`. Its cause is built
/// from serde_json's error category, line and column, and for a body that
/// is valid JSON, from what `T`'s schema expected where it went wrong (see
/// [`unfit`]); never from serde_json's message, which quotes the input
/// (a wrongly typed string, an unknown field or variant) in quotes or
/// backticks that the input itself may hold.
fn unfit_body<T: serde::de::DeserializeOwned>(bytes: &[u8], e: &serde_json::Error) -> ApiError {
    let at = format!("line {}, column {}", e.line(), e.column());
    let cause = match e.classify() {
        serde_json::error::Category::Data => {
            let why = serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()
                .and_then(|v| T::deserialize(unfit::Safe(&v)).err());
            match why {
                Some(why) => format!("{why} (at {at})"),
                None => redacted(e),
            }
        }
        _ => redacted(e),
    };
    ApiError::invalid_request("the request body is not valid for this route").cause(cause)
}

/// A JSON parse error in signet's words: its kind and where it is. Of the
/// message only a fixed leading phrase of serde's is kept, never the rest,
/// which may repeat a private key sent in the wrong field.
pub fn redacted(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    const PHRASES: [&str; 7] = [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown variant",
        "unknown field",
        "missing field",
        "duplicate field",
    ];
    let text = e.to_string();
    let what = match e.classify() {
        Category::Data => PHRASES
            .into_iter()
            .find(|p| text.starts_with(p))
            .unwrap_or("a value that does not fit this route"),
        Category::Syntax => "not valid JSON",
        Category::Eof => "the JSON ends early",
        Category::Io => "the body could not be read",
    };
    format!("{what} at line {}, column {}", e.line(), e.column())
}

/// Why a JSON value does not fit a type, from serde's structured error
/// calls: the schema's field and variant names and the visitor's own
/// expectation are kept; the input's values, field names and variants are
/// only described by their kind.
mod unfit {
    use std::fmt;

    use serde::de::value::StrDeserializer;
    use serde::de::{
        self, DeserializeSeed, Deserializer, Expected, IntoDeserializer, MapAccess, SeqAccess,
        Unexpected, Visitor,
    };
    use serde_json::Value;

    /// What went wrong, and in which of the schema's fields.
    #[derive(Debug)]
    pub struct Unfit {
        what: String,
        field: Option<&'static str>,
    }

    impl fmt::Display for Unfit {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.field {
                Some(field) => write!(f, "field `{field}`: {}", self.what),
                None => f.write_str(&self.what),
            }
        }
    }

    impl std::error::Error for Unfit {}

    fn unfit(what: String) -> Unfit {
        Unfit { what, field: None }
    }

    /// The kind of an input value, never the value.
    fn kind(u: &Unexpected<'_>) -> &'static str {
        match u {
            Unexpected::Bool(_) => "a boolean",
            Unexpected::Unsigned(_) => "a number",
            Unexpected::Signed(_) => "a negative number",
            Unexpected::Float(_) => "a fractional number",
            Unexpected::Char(_) | Unexpected::Str(_) => "a string",
            Unexpected::Bytes(_) => "bytes",
            Unexpected::Unit => "null",
            Unexpected::Seq => "an array",
            Unexpected::Map => "an object",
            _ => "a value of another kind",
        }
    }

    fn names(list: &[&str]) -> String {
        match list {
            [] => "none".into(),
            list => list.join(", "),
        }
    }

    impl de::Error for Unfit {
        /// Only signet's own `Deserialize` impls and serde's fixed texts
        /// call this, with sentences that hold no input.
        fn custom<T: fmt::Display>(msg: T) -> Self {
            unfit(msg.to_string())
        }

        fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
            unfit(format!("invalid type: {}, expected {exp}", kind(&unexp)))
        }

        fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
            unfit(format!("invalid value: {}, expected {exp}", kind(&unexp)))
        }

        fn invalid_length(len: usize, exp: &dyn Expected) -> Self {
            unfit(format!("invalid length {len}, expected {exp}"))
        }

        fn unknown_variant(_: &str, expected: &'static [&'static str]) -> Self {
            unfit(format!(
                "unknown variant; expected one of {}",
                names(expected)
            ))
        }

        fn unknown_field(_: &str, expected: &'static [&'static str]) -> Self {
            unfit(format!(
                "an unknown field (its name is not repeated); the fields are {}",
                names(expected)
            ))
        }

        fn missing_field(field: &'static str) -> Self {
            Unfit {
                what: "missing".into(),
                field: Some(field),
            }
        }

        fn duplicate_field(field: &'static str) -> Self {
            Unfit {
                what: "given twice".into(),
                field: Some(field),
            }
        }
    }

    /// A parsed JSON value as a deserializer whose errors are [`Unfit`].
    pub struct Safe<'a>(pub &'a Value);

    impl<'de> Deserializer<'de> for Safe<'_> {
        type Error = Unfit;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unfit> {
            match self.0 {
                Value::Null => visitor.visit_unit(),
                Value::Bool(b) => visitor.visit_bool(*b),
                Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                    (Some(u), _) => visitor.visit_u64(u),
                    (None, Some(i)) => visitor.visit_i64(i),
                    (None, None) => visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN)),
                },
                Value::String(s) => visitor.visit_str(s),
                Value::Array(items) => {
                    let mut seq = Seq(items.iter());
                    let value = visitor.visit_seq(&mut seq)?;
                    match seq.0.len() {
                        0 => Ok(value),
                        _ => Err(de::Error::invalid_length(items.len(), &"fewer elements")),
                    }
                }
                Value::Object(map) => visitor.visit_map(Map {
                    entries: map.iter(),
                    value: None,
                    field: None,
                    fields: &[],
                }),
            }
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unfit> {
            match self.0 {
                Value::Null => visitor.visit_none(),
                _ => visitor.visit_some(self),
            }
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            visitor: V,
        ) -> Result<V::Value, Unfit> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            _: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Unfit> {
            match self.0 {
                Value::String(s) => {
                    let variant: StrDeserializer<'_, Unfit> = s.as_str().into_deserializer();
                    visitor.visit_enum(variant)
                }
                other => Err(de::Error::invalid_type(unexpected(other), &"a string")),
            }
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Unfit> {
            match self.0 {
                Value::Object(map) => visitor.visit_map(Map {
                    entries: map.iter(),
                    value: None,
                    field: None,
                    fields,
                }),
                _ => self.deserialize_any(visitor),
            }
        }

        fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unfit> {
            visitor.visit_unit()
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
        }
    }

    fn unexpected(v: &Value) -> Unexpected<'static> {
        match v {
            Value::Null => Unexpected::Unit,
            Value::Bool(_) => Unexpected::Bool(false),
            Value::Number(_) => Unexpected::Unsigned(0),
            Value::String(_) => Unexpected::Str(""),
            Value::Array(_) => Unexpected::Seq,
            Value::Object(_) => Unexpected::Map,
        }
    }

    struct Seq<'a>(std::slice::Iter<'a, Value>);

    impl<'de> SeqAccess<'de> for Seq<'_> {
        type Error = Unfit;

        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, Unfit> {
            self.0.next().map(|v| seed.deserialize(Safe(v))).transpose()
        }
    }

    /// An object's members. A value's error is put down to its field when
    /// the field is one of the schema's (`fields`), by the schema's name.
    struct Map<'a> {
        entries: serde_json::map::Iter<'a>,
        value: Option<&'a Value>,
        field: Option<&'static str>,
        fields: &'static [&'static str],
    }

    impl<'de> MapAccess<'de> for Map<'_> {
        type Error = Unfit;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Unfit> {
            let Some((name, value)) = self.entries.next() else {
                return Ok(None);
            };
            self.value = Some(value);
            self.field = self.fields.iter().copied().find(|f| f == name);
            let key: StrDeserializer<'_, Unfit> = name.as_str().into_deserializer();
            seed.deserialize(key).map(Some)
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Unfit> {
            let value = self.value.take().unwrap_or(&Value::Null);
            seed.deserialize(Safe(value)).map_err(|mut e| {
                e.field = e.field.or(self.field);
                e
            })
        }
    }
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

/// One query parameter: its name and value, decoded.
pub type Param<'a> = (Cow<'a, str>, Cow<'a, str>);

/// `application/x-www-form-urlencoded` pairs of a query string.
pub fn query_pairs(query: Option<&str>) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        #[serde(default)]
        state: Option<State>,
        #[serde(default, rename = "graceSeconds")]
        grace: Option<u32>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum State {
        Active,
        Disabled,
    }

    #[test]
    fn body_errors_name_the_schema_and_never_the_input() {
        // Each input hides S3CR3T where serde's own message would quote
        // it, in quotes or backticks, with quotes and backticks of its own
        // to throw a quote-stripping redaction off.
        let cases = [
            (r#"{"name": "n", "state": "S3CR3T"}"#, "field `state`: unknown variant; expected one of active, disabled (at line 1, column 31)"),
            (r#"{"name": "n", "state": "a`, expected `S3CR3T"}"#, "field `state`: unknown variant; expected one of active, disabled (at line 1, column 45)"),
            (r#"{"name": "n", "state": "\"S3CR3T\"`x`"}"#, "field `state`: unknown variant; expected one of active, disabled (at line 1, column 38)"),
            (r#"{"name": "n", "S3CR3T`\"": 1}"#, "an unknown field (its name is not repeated); the fields are name, state, graceSeconds (at line 1, column 25)"),
            (r#"{"name": "n", "graceSeconds": "\"S3CR3T"}"#, "field `graceSeconds`: invalid type: a string, expected u32 (at line 1, column 40)"),
            (r#"{"name": "n", "graceSeconds": -1}"#, "field `graceSeconds`: invalid value: a negative number, expected u32 (at line 1, column 32)"),
            (r#"{"name": ["S3CR3T"]}"#, "field `name`: invalid type: an array, expected a string (at line 1, column 9)"),
            (r#"{"state": "active"}"#, "field `name`: missing (at line 1, column 19)"),
            (r#"{"name": "S3CR3T", "name": "S3CR3T"}"#, "duplicate field at line 1, column 25"),
            (r#"{"name": "S3CR3T" "#, "the JSON ends early at line 1, column 18"),
            (r#"{"name": S3CR3T}"#, "not valid JSON at line 1, column 10"),
            (r#"{"name": "n"} S3CR3T"#, "not valid JSON at line 1, column 15"),
        ];
        for (body, want) in cases {
            let e = serde_json::from_str::<Body>(body).unwrap_err();
            let got = unfit_body::<Body>(body.as_bytes(), &e);
            assert_eq!(got.message, "the request body is not valid for this route");
            assert_eq!(got.cause.as_deref(), Some(want), "{body}");
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
            let query = format!("v={raw}");
            let pairs: Vec<_> = query_pairs(Some(&query)).collect();
            assert_eq!(pairs.len(), 1, "{raw}");
            assert_eq!(pairs[0].1, decoded, "{raw}");
        }
    }
}
