//! The verification routes: `/v1/verify` (a verdict as JSON) and
//! `/v1/auth` (the reverse proxy's sub-request).

use hyper::header::{self, HeaderValue};
use hyper::StatusCode;
use serde::Deserialize;

use super::call::{header_value, Call, Outcome};
use super::reply::{self, ApiError};
use super::ServerState;
use crate::auth::{self, AuthError};
use crate::metrics::OutcomeLabel;
use crate::verify::{self, Expect, Verified, VerifyError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    token: String,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
}

pub async fn verify(call: Call<'_>) -> Outcome {
    let state = call.state;
    let body: VerifyBody = call.read_json().await?;
    let expect = Expect {
        audience: body.audience.as_deref(),
        issuer: body.issuer.as_deref(),
    };
    let result = state.signet.verify(&body.token, expect).await;
    count(state, &result);
    if let Err(VerifyError::Unavailable(cause)) = result {
        return Err(ApiError::unavailable(cause));
    }
    Ok(reply::json(StatusCode::OK, &verify::Report::of(&result)))
}

/// 200 with identity headers, or 401.
pub async fn auth(call: Call<'_>) -> Outcome {
    let (mut audience, mut issuer) = (None, None);
    for (k, v) in call.query() {
        match &*k {
            "audience" => audience = Some(v),
            "issuer" => issuer = Some(v),
            _ => {}
        }
    }
    let authorization = call
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = authorization
        .ok_or(AuthError::Missing)
        .and_then(auth::bearer)?;
    let result = call
        .state
        .signet
        .verify(
            token,
            Expect {
                audience: audience.as_deref(),
                issuer: issuer.as_deref(),
            },
        )
        .await;
    count(call.state, &result);
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
            Ok(r)
        }
        Err(VerifyError::Unavailable(cause)) => Err(ApiError::unavailable(cause)),
        Err(e) => Err(ApiError::from(AuthError::invalid(
            e.code(),
            format!("{e} ({})", e.code()),
        ))),
    }
}

fn count(state: &ServerState, result: &Result<Verified, VerifyError>) {
    let outcome = match result {
        Ok(_) => "valid",
        Err(e) => e.code(),
    };
    state
        .signet
        .metrics
        .verifications
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
}

#[cfg(feature = "test-hooks")]
pub fn fuzz_body(body: &[u8]) {
    let _ = serde_json::from_slice::<VerifyBody>(body);
}
