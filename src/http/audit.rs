//! The audit route: one organisation's events, newest first, a page at a time.

use hyper::StatusCode;

use super::call::{Call, Outcome};
use super::reply::{self, ApiError};
use crate::audit::EventId;
use crate::auth::Need;

pub async fn page(call: Call<'_>) -> Outcome {
    let org = call.org()?;
    call.authorize(&org, Need::Manage).await?;
    let (mut limit, mut before) = (100usize, None);
    for (k, v) in call.query() {
        match &*k {
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid_request("limit must be an integer from 1 to 1000")
                    })?
            }
            "before" => {
                let id = EventId::parse(&v).map_err(|e| ApiError::invalid_id(e.to_string()))?;
                before = Some(id);
            }
            _ => {}
        }
    }
    let events = call.state.signet.audit_page(&org, limit, before).await?;
    Ok(reply::json(
        StatusCode::OK,
        &serde_json::json!({ "events": events }),
    ))
}

/// `GET /v1/organisations/{org}/audit/verify`: the organisation's audit
/// chain, checked by the server.
pub async fn verify(call: Call<'_>) -> Outcome {
    let org = call.org()?;
    call.authorize(&org, Need::Manage).await?;
    let body = match call.state.signet.verify_org_audit(&org).await? {
        Ok(events) => serde_json::json!({ "valid": true, "events": events, "brokenAt": null }),
        Err(broken) => serde_json::json!({
            "valid": false,
            "events": broken.index,
            "brokenAt": { "eventId": broken.id, "index": broken.index, "reason": broken.reason },
        }),
    };
    Ok(reply::json(StatusCode::OK, &body))
}
