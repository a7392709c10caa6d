//! The key lifecycle routes: `PATCH` (disable, enable, rename) and
//! rotate, and the JWK Sets' expiry-bound `max-age`. See docs/api.md,
//! "Key lifecycle".

use hyper::header::HeaderValue;
use hyper::StatusCode;

use super::bodies::{PatchBody, RotateBody, MERGE_PATCH};
use super::call::{accepts_pem, header_value, Call, Outcome};
use super::reply::{self, JSON};
use crate::keys::{self, KeyView};

/// `PATCH /v1/organisations/{org}/keys/{id}`: disable, enable, rename.
pub async fn patch(call: Call<'_>) -> Outcome {
    let id = call.key_id()?;
    let (org, caller) = call.manage().await?;
    let window = super::keys::if_unused_for(&call)?;
    let state = call.state;
    let body: PatchBody = call
        .read_json_as(&[JSON, MERGE_PATCH], false)
        .await?
        .expect("an empty body is refused");
    let patch = body.parse()?;
    if patch.disable == Some(true) {
        super::keys::refuse_if_used(state, &org, id, window).await?;
    }
    let record = state.signet.change(org, id, patch, &caller).await?;
    Ok(reply::json(StatusCode::OK, &KeyView::new(&record)))
}

/// `POST /v1/organisations/{org}/keys/{id}/rotate`: the successor, and
/// the old key retired after the grace period.
pub async fn rotate(call: Call<'_>) -> Outcome {
    let id = call.key_id()?;
    let (org, caller) = call.manage().await?;
    call.strict_query(&[])?;
    let state = call.state;
    let pem = accepts_pem(call.headers());
    let body: RotateBody = call.read_json_as(&[JSON], true).await?.unwrap_or_default();
    let rotated = state.signet.rotate(org, id, body.grace(), &caller).await?;
    let (record, key, _) = rotated;
    super::keys::issued(&record, &key, pem)
}

/// `Cache-Control` of a JWK Set document now: the configured max-age, or
/// less if a listed key expires sooner.
pub fn jwks_cache_control(
    doc: &crate::jwks::Document,
    configured: u64,
    prepared: &HeaderValue,
) -> HeaderValue {
    let max_age = doc.max_age(configured, keys::now_ms());
    if max_age == configured {
        return prepared.clone();
    }
    header_value(format!("public, max-age={max_age}"))
}
