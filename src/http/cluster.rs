//! `GET /v1/cluster`: this instance's view of the others, for any
//! authenticated caller (nothing in it is secret): the instances sharing
//! its store, with the version each has applied and how long ago each was
//! heard by the database's clock; the followers it serves; and how long
//! ago it was itself last fresh.

use std::time::Duration;

use hyper::StatusCode;
use serde::Serialize;

use super::call::{Call, Outcome};
use super::reply;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct View {
    #[serde(rename = "self")]
    me: String,
    fresh_age_ms: Option<u64>,
    instances: Vec<Instance>,
    followers: Vec<Follower>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Instance {
    id: String,
    applied_version: u64,
    last_heartbeat_ago_ms: u64,
    live: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Follower {
    id: String,
    applied_event: u64,
    last_heard_ago_ms: u64,
    live: bool,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub async fn view(call: Call<'_>) -> Outcome {
    call.authenticate().await?;
    let cluster = call.state.signet.cluster().await?;
    let view = View {
        me: cluster.me,
        fresh_age_ms: cluster.fresh_age.map(ms),
        instances: cluster
            .instances
            .into_iter()
            .map(|i| Instance {
                id: i.id,
                applied_version: i.applied,
                last_heartbeat_ago_ms: ms(i.heard_ago),
                live: i.live,
            })
            .collect(),
        followers: cluster
            .followers
            .into_iter()
            .map(|f| Follower {
                id: f.id,
                applied_event: f.acked,
                last_heard_ago_ms: ms(f.ago),
                live: f.live,
            })
            .collect(),
    };
    Ok(reply::json(StatusCode::OK, &view))
}
