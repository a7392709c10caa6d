//! The verification routes: `/v1/verify` (a verdict as JSON) and
//! `/v1/auth` (the reverse proxy's sub-request).

use hyper::header::{HeaderName, HeaderValue};
use hyper::StatusCode;
use serde::Deserialize;

use super::call::{Call, Outcome};
use super::reply::{self, ApiError};
use super::ServerState;
use crate::auth::{self, AuthError};
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
    let token = call
        .authorization()?
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
            // Room for these three and the request id: one allocation.
            let h = r.headers_mut();
            h.reserve(4);
            if let Some(org) = &v.org {
                h.insert(X_SIGNET_ORG, id_value(org.as_str()));
            }
            if let Some(sub) = v.contents.claim_str("sub") {
                if let Ok(sub) = HeaderValue::from_str(&sub) {
                    h.insert(X_SIGNET_SUB, sub);
                }
            }
            let mut kid = [0; ulid::ULID_LEN];
            let kid = ulid::Ulid::from_bytes(v.key_id.to_bytes()).array_to_str(&mut kid);
            h.insert(X_SIGNET_KEY_ID, id_value(kid));
            Ok(r)
        }
        Err(VerifyError::Unavailable(cause)) => Err(ApiError::unavailable(cause)),
        Err(e) => Err(ApiError::from(AuthError::invalid(
            e.code(),
            format!("{e} ({})", e.code()),
        ))),
    }
}

const X_SIGNET_ORG: HeaderName = HeaderName::from_static("x-signet-org");
const X_SIGNET_SUB: HeaderName = HeaderName::from_static("x-signet-sub");
const X_SIGNET_KEY_ID: HeaderName = HeaderName::from_static("x-signet-key-id");

/// An organisation or key id, which parsing made a valid header value.
fn id_value(id: &str) -> HeaderValue {
    HeaderValue::from_str(id).expect("ids are valid header values")
}

fn count(state: &ServerState, result: &Result<Verified, VerifyError>) {
    let outcome = match result {
        Ok(_) => "valid",
        Err(e) => e.code(),
    };
    state.signet.metrics.verification(outcome);
}

#[cfg(feature = "test-hooks")]
pub fn fuzz_body(body: &[u8]) {
    let _ = serde_json::from_slice::<VerifyBody>(body);
}
