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

/// An error as docs/api.md shapes it: `{"code", "message", "cause"?}`.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(skip)]
    allow: Option<&'static str>,
    #[serde(skip)]
    www_authenticate: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
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
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn invalid_id(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal(cause: impl ToString) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server could not complete the request",
        )
        .cause(cause)
    }

    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
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
    pub fn into_compat_reply(self) -> Reply {
        let body = serde_json::json!({ "success": false, "message": self.message });
        self.with_headers(json(self.status, &body))
    }

    fn with_headers(&self, mut r: Reply) -> Reply {
        if let Some(allow) = self.allow {
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(challenge) = self.www_authenticate {
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        r
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        let message = e.to_string();
        match e {
            AuthError::Missing => {
                let mut a = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
                a.www_authenticate = Some("Bearer realm=\"signet\"");
                a
            }
            AuthError::Invalid { .. } => {
                let mut a = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
                a.www_authenticate = Some("Bearer realm=\"signet\", error=\"invalid_token\"");
                a
            }
            AuthError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        match e {
            ServiceError::QuotaExceeded(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "quota_exceeded", e.to_string())
            }
            ServiceError::NotFound(_) => ApiError::not_found(e.to_string()),
            ServiceError::Duplicate(_) | ServiceError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            ServiceError::Lifetime(_) => ApiError::invalid_request(e.to_string()),
            ServiceError::Store(ref store) if store.is_unavailable() => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "internal",
                "storage is unavailable (is the disk full or read-only?); the request was not acknowledged, retry later",
            )
            .cause(store),
            ServiceError::Store(_) | ServiceError::Task(_) => {
                tracing::error!(error = %e, "request failed");
                ApiError::internal(e)
            }
        }
    }
}
