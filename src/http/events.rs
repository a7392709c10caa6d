//! The change feed's endpoint: `GET /v1/events` and
//! `GET /v1/organisations/{org}/events` as Server-Sent Events.
//!
//! Each stream is one task that reads the shared ring by cursor and hands
//! hyper one chunk at a time through a channel of one: a subscriber never
//! has a queue of its own. A chunk that cannot be handed over within
//! `events.send_timeout_ms`, or a socket write that makes no progress for
//! as long, ends the stream and its connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::StatusCode;
use tokio::sync::mpsc;

use super::body::Body;
use super::call::{Call, Outcome};
use super::deadline::Activity;
use super::reply::{self, ApiError, ErrorCode};
use crate::events::{After, Change, Source};
use crate::keys::OrgId;

/// Events handed over in one chunk at most.
const BATCH: usize = 256;

pub async fn all(call: Call<'_>) -> Outcome {
    stream(call, None)
}

pub async fn of_org(call: Call<'_>) -> Outcome {
    let org = call.org()?;
    stream(call, Some(org))
}

fn stream(call: Call<'_>, org: Option<OrgId>) -> Outcome {
    let signet = &call.state.signet;
    let source = signet.feed();
    let Some(place) = source.feed().subscribe() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "this server has as many change feed subscribers as it accepts (events.max_subscribers)",
        ));
    };
    let config = &call.state.config.events;
    let send_timeout = Duration::from_millis(config.send_timeout_ms);
    let heartbeat = Duration::from_millis(config.heartbeat_ms);
    // Garbage is as good as no id: the stream starts from a reset.
    let last = call
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let busy = call
        .req
        .extensions()
        .get::<Arc<Activity>>()
        .map(|activity| {
            activity.write_timeout(send_timeout);
            activity.begin(call.req.version())
        });
    let gauge = signet.metrics.feed_subscribers.clone();
    gauge.inc();
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let stream = Stream {
            source,
            org,
            tx,
            send_timeout,
        };
        stream.run(last, heartbeat).await;
        drop((place, busy));
        gauge.dec();
    });
    let mut reply = reply::with_type(StatusCode::OK, "text/event-stream", Body::stream(rx));
    let headers = reply.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(reply)
}

struct Stream {
    source: Source,
    org: Option<OrgId>,
    tx: mpsc::Sender<Bytes>,
    send_timeout: Duration,
}

/// The subscriber stopped reading, or went away.
struct Gone;

impl Stream {
    async fn run(self, last: Option<u64>, heartbeat: Duration) {
        let _ = self.serve(last, heartbeat).await;
    }

    async fn serve(&self, last: Option<u64>, heartbeat: Duration) -> Result<(), Gone> {
        let feed = self.source.feed();
        let mut wake = feed.watch();
        let resumable = last.filter(|&id| matches!(feed.after(id, 0), After::Events(_)));
        let mut cursor = match resumable {
            Some(id) => id,
            None => self.reset().await?,
        };
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        loop {
            wake.borrow_and_update();
            cursor = self.catch_up(cursor).await?;
            tokio::select! {
                changed = wake.changed() => {
                    if changed.is_err() {
                        return Err(Gone);
                    }
                }
                _ = tick.tick() => self.send(self.source.fresh(cursor)).await?,
                () = self.tx.closed() => return Err(Gone),
            }
        }
    }

    /// Sends every event after `cursor` in scope; the new cursor.
    async fn catch_up(&self, mut cursor: u64) -> Result<u64, Gone> {
        loop {
            let events = match self.source.feed().after(cursor, BATCH) {
                After::Gone => {
                    cursor = self.reset().await?;
                    continue;
                }
                After::Events(events) if events.is_empty() => return Ok(cursor),
                After::Events(events) => events,
            };
            let mut chunk = BytesMut::new();
            for event in &events {
                if let Change::Reset = event.change {
                    if !chunk.is_empty() {
                        self.send(std::mem::take(&mut chunk).freeze()).await?;
                    }
                    cursor = self.reset().await?;
                    break;
                }
                cursor = event.id;
                let in_scope = match (&self.org, event.change.org()) {
                    (Some(org), Some(of)) => org == of,
                    _ => true,
                };
                if in_scope {
                    chunk.extend_from_slice(event.wire());
                }
            }
            if !chunk.is_empty() {
                self.send(chunk.freeze()).await?;
            }
        }
    }

    /// Sends a `reset`; the id it stands at.
    async fn reset(&self) -> Result<u64, Gone> {
        let (version, bytes) = self.source.reset(self.org.as_ref());
        self.send(bytes).await?;
        Ok(version)
    }

    async fn send(&self, bytes: Bytes) -> Result<(), Gone> {
        self.tx
            .send_timeout(bytes, self.send_timeout)
            .await
            .map_err(|_| Gone)
    }
}
