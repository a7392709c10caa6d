//! `POST /v1/followers/ack`: a follower, holding a follower token, reports
//! the last event of this server's feed it has applied; the answer tells
//! it how far this server's feed goes and how fresh this server is, from
//! which it computes its own freshness (see `follower`).

use hyper::StatusCode;
use serde::Deserialize;

use super::call::{Call, Outcome};
use super::reply::{self, ApiError, ErrorCode};
use crate::auth::AuthError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ack {
    /// The follower's id (a ULID it chose at start).
    follower: String,
    /// The last event id it has applied.
    applied: u64,
    /// Key usage counted on the follower since its last acknowledgement.
    #[serde(default)]
    usage: Vec<crate::usage::UsageDelta>,
    /// A verification on the follower waits on this answer: catch up with
    /// the database first.
    #[serde(default, rename = "catchUp")]
    catch_up: bool,
}

/// Refuses a request that does not carry a follower token: 403 when this
/// server accepts no followers, 401 for any other credential or none.
pub(super) fn follower_only(call: &Call<'_>) -> Result<(), ApiError> {
    let followers = call.state.signet.followers();
    if !followers.enabled() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this server accepts no followers: set followers.token_sha256 or SIGNET_FOLLOWER_TOKEN",
        ));
    }
    let token = call
        .authorization()?
        .ok_or(AuthError::Missing)
        .and_then(crate::auth::bearer)?;
    if !followers.accepts(token) {
        return Err(AuthError::invalid("not_follower", "this is not a follower token").into());
    }
    Ok(())
}

pub async fn ack(call: Call<'_>) -> Outcome {
    let signet = &call.state.signet;
    follower_only(&call)?;
    let ack: Ack = call.read_json().await?;
    let follower = ulid::Ulid::from_string(&ack.follower)
        .map_err(|_| ApiError::invalid_request("follower must be a ULID"))?;
    // Stale first, then the version: if this server was fresh as of a
    // moment after a change, that change was numbered before (see
    // `follower`). Recorded before any catch-up, which only makes the
    // answer more current: it still holds if this server can no longer
    // vouch afterwards, as it did when it was measured.
    let source = signet.feed();
    let stale = standing(&source)?;
    signet.follower_acked(&follower.to_string(), ack.applied);
    signet.verifier().usage().absorb(&ack.usage);
    let stale = match ack.catch_up {
        true => {
            signet.catch_up_for_follower().await;
            standing(&source).unwrap_or(stale)
        }
        false => stale,
    };
    let version = source.feed().latest();
    Ok(reply::json(
        StatusCode::OK,
        &serde_json::json!({
            "version": version,
            "staleMs": u64::try_from(stale.as_millis()).unwrap_or(u64::MAX),
            "run": source.feed().run(),
        }),
    ))
}

/// How stale this server is, if it may vouch for revocations now.
fn standing(source: &crate::events::Source) -> Result<std::time::Duration, ApiError> {
    if !source.vouches() {
        return Err(ApiError::unavailable(
            "this server cannot vouch that it has seen every key change now",
        ));
    }
    source
        .stale_for()
        .ok_or_else(|| ApiError::unavailable("this server has not caught up yet"))
}
