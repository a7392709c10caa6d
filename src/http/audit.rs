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
