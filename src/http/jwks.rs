//! The JWK Set routes: one organisation's, and all of them, with ETags.

use std::sync::Arc;

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::StatusCode;

use super::call::{header_value, Call, Outcome};
use super::reply::{self, ApiError, Reply, JSON};
use super::ServerState;
use crate::jwks::Document;

/// The answer of `/.well-known/jwks.json` under `jwks.global = false`.
const GLOBAL_OFF: &str =
    "this server does not publish a JWK Set of every key (jwks.global = false): \
     fetch your organisation's from /v1/organisations/{org}/jwks.json";

pub async fn of_org(call: Call<'_>) -> Outcome {
    let org = call.org()?;
    Ok(reply(
        call.state,
        &call.state.signet.jwks_of(&org),
        call.headers(),
    ))
}

pub async fn all(call: Call<'_>) -> Outcome {
    if !call.state.config.jwks.global {
        return Err(ApiError::not_found(GLOBAL_OFF));
    }
    Ok(reply(
        call.state,
        &call.state.signet.jwks_all(),
        call.headers(),
    ))
}

/// The document, or 304 if the client's `If-None-Match` names it.
fn reply(state: &ServerState, doc: &Document, headers: &HeaderMap) -> Reply {
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag == doc.etag || tag.strip_prefix("W/") == Some(&doc.etag));
    let mut r = if matches {
        reply::empty(StatusCode::NOT_MODIFIED)
    } else {
        reply::with_type(StatusCode::OK, JSON, doc.body.clone().into())
    };
    let h = r.headers_mut();
    h.insert(header::ETAG, prepared(doc).etag.clone());
    // Only a document that lists an expiring key needs the clock.
    let cc = match doc.expires {
        None => state.jwks_cache_control.clone(),
        Some(_) => {
            let configured = state.config.jwks.max_age_secs;
            super::lifecycle::jwks_cache_control(doc, configured, &state.jwks_cache_control)
        }
    };
    h.insert(header::CACHE_CONTROL, cc);
    r
}

/// A document's header values, built on its first request, not on each.
struct Prepared {
    etag: HeaderValue,
}

fn prepared(doc: &Document) -> &Prepared {
    doc.prepared
        .get_or_init(|| {
            Arc::new(Prepared {
                etag: header_value(doc.etag.clone()),
            })
        })
        .downcast_ref::<Prepared>()
        .expect("only this module fills a document's prepared slot")
}
