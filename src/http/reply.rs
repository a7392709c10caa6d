//! Building responses: JSON bodies, the error shape of docs/api.md, and the mapping
//! from each module's typed errors to a status and code.

use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::body::Body;
use crate::auth::AuthError;
use crate::service::ServiceError;

pub type Reply = Response<Body>;

pub const JSON: &str = "application/json";
pub const PEM: &str = "application/x-pem-file";

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec(value).expect("response types always serialise");
    with_type(status, JSON, body.into())
}

pub fn with_type(status: StatusCode, content_type: &'static str, body: Body) -> Reply {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn empty(status: StatusCode) -> Reply {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

/// The error codes of docs/api.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    InvalidId,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    QuotaExceeded,
    Conflict,
    /// The key verified a token within the window `ifUnusedFor` names.
    InUse,
    PayloadTooLarge,
    UnsupportedMediaType,
    RequestTimeout,
    Unavailable,
    Internal,
    /// 421: a follower answers only reads and verification.
    ReadOnly,
}

/// An error as docs/api.md shapes it: `{"code", "message", "cause"?}`.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(skip)]
    allow: Option<String>,
    #[serde(skip)]
    www_authenticate: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            cause: None,
            allow: None,
            www_authenticate: None,
        }
    }

    pub fn cause(mut self, cause: impl ToString) -> ApiError {
        self.cause = Some(cause.to_string());
        self
    }

    pub fn invalid_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message)
    }

    pub fn invalid_id(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidId, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn internal(cause: impl ToString) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "the server could not complete the request",
        )
        .cause(cause)
    }

    pub fn method_not_allowed(allow: String) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
            format!("this route answers only {allow}"),
        );
        e.allow = Some(allow);
        e
    }

    pub fn into_reply(self) -> Reply {
        let body = json(self.status, &self);
        self.with_headers(body)
    }

    /// The compatibility route's error shape: `{"success": false, "message"}`.
    /// A follower's refusal also carries `code` and `cause` (its upstream),
    /// as it does on every other route.
    pub fn into_compat_reply(self) -> Reply {
        let mut body = serde_json::json!({ "success": false, "message": self.message });
        if self.code == ErrorCode::ReadOnly {
            body["code"] = serde_json::json!(self.code);
            body["cause"] = serde_json::json!(self.cause);
        }
        self.with_headers(json(self.status, &body))
    }

    fn with_headers(&self, mut r: Reply) -> Reply {
        if let Some(allow) = &self.allow {
            let allow = HeaderValue::try_from(allow).expect("method names are valid header values");
            r.headers_mut().insert(ALLOW, allow);
        }
        if let Some(challenge) = self.www_authenticate {
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        r
    }
}

impl ApiError {
    /// 503 `unavailable`: no verdict can be given now.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            message,
        )
    }
}

impl ApiError {
    /// 421 `read_only`: this server is a follower of `upstream`.
    pub fn read_only(upstream: &str) -> ApiError {
        ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            ErrorCode::ReadOnly,
            "this server is a follower: it serves the JWK Sets, GET /v1/keys/{id}, /v1/verify and /v1/auth only; send this request to its upstream",
        )
        .cause(upstream)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        let message = e.to_string();
        match e {
            AuthError::Missing => {
                let mut a =
                    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message);
                a.www_authenticate = Some("Bearer realm=\"signet\"");
                a
            }
            AuthError::Invalid { .. } => {
                let mut a =
                    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message);
                a.www_authenticate = Some("Bearer realm=\"signet\", error=\"invalid_token\"");
                a
            }
            AuthError::Forbidden(_) => {
                ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
            }
            AuthError::Unavailable(_) => ApiError::unavailable(message),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        match e {
            ServiceError::QuotaExceeded(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::QuotaExceeded, e.to_string())
            }
            ServiceError::NotFound(_) => ApiError::not_found(e.to_string()),
            ServiceError::Duplicate(_) | ServiceError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, e.to_string())
            }
            ServiceError::Lifetime(_) => ApiError::invalid_request(e.to_string()),
            ServiceError::Store(ref store) if store.is_unavailable() => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                match store.is_database_server() {
                    true => "the database is unreachable or did not answer in time; the request was not acknowledged (it may still have taken effect), retry later",
                    false => "storage is unavailable (is the disk full or read-only?); the request was not acknowledged, retry later",
                },
            )
            .cause(store),
            ServiceError::Store(_) | ServiceError::Task(_) => {
                tracing::error!(error = %e, "request failed");
                ApiError::internal(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_read_as_docs_api_spells_them() {
        let cases = [
            (ErrorCode::InvalidRequest, "invalid_request"),
            (ErrorCode::InvalidId, "invalid_id"),
            (ErrorCode::Unauthorized, "unauthorized"),
            (ErrorCode::Forbidden, "forbidden"),
            (ErrorCode::NotFound, "not_found"),
            (ErrorCode::MethodNotAllowed, "method_not_allowed"),
            (ErrorCode::QuotaExceeded, "quota_exceeded"),
            (ErrorCode::Conflict, "conflict"),
            (ErrorCode::InUse, "in_use"),
            (ErrorCode::PayloadTooLarge, "payload_too_large"),
            (ErrorCode::UnsupportedMediaType, "unsupported_media_type"),
            (ErrorCode::RequestTimeout, "request_timeout"),
            (ErrorCode::Unavailable, "unavailable"),
            (ErrorCode::Internal, "internal"),
            (ErrorCode::ReadOnly, "read_only"),
        ];
        for (code, text) in cases {
            assert_eq!(serde_json::to_value(code).unwrap(), text);
        }
    }
}
