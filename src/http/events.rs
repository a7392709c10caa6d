//! The change feed's endpoint: `GET /v1/events` and
//! `GET /v1/organisations/{org}/events` as Server-Sent Events.
//!
//! A stream is a response body that reads the shared ring by cursor when
//! hyper asks it for the next chunk: it has no task, no queue and no timer
//! of its own, so an idle subscriber costs its connection and a few hundred
//! bytes. One task per server (the [`Hub`]) wakes every stream when an
//! event is numbered and each stream once a heartbeat period, and ends the
//! stream of a subscriber that hyper has not asked for anything for
//! `events.send_timeout_ms` (an HTTP/2 stream whose window stays shut: it
//! is reset, cancel.rs); on HTTP/1 a socket write that makes no progress
//! for as long ends the connection (deadline.rs). Subscribers that arrive
//! between two events share one rendered `reset`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::StatusCode;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::body::{Body, Chunks};
use super::call::{Call, Outcome};
use super::cancel::Cancel;
use super::deadline::InFlight;
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
    // The keys that exist but do not verify are a follower's to know, not
    // the public's.
    let withheld = call.query().any(|(k, v)| k == "withheld" && v == "true");
    if withheld {
        super::followers::follower_only(&call)?;
    }
    let state = call.state;
    let signet = &state.signet;
    let source = signet.feed();
    let Some(place) = source.feed().subscribe() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "this server has as many change feed subscribers as it accepts (events.max_subscribers)",
        ));
    };
    let config = &state.config.events;
    let timing = Timing {
        heartbeat: Duration::from_millis(config.heartbeat_ms),
        send_timeout: Duration::from_millis(config.send_timeout_ms),
    };
    // Only an id as this server writes them resumes; garbage (`+5`, `05`,
    // two headers) is as good as no id: the stream starts from a reset.
    let mut ids = call.headers().get_all("last-event-id").iter();
    let resume = match (ids.next(), ids.next()) {
        (Some(id), None) => id.to_str().ok().and_then(event_id),
        _ => None,
    }
    .filter(|&id| matches!(source.feed().after(id, 0), After::Events(_)));
    // The stream keeps its connection busy: no idle deadline while it
    // lasts, and a shorter write deadline.
    call.activity.write_timeout(timing.send_timeout);
    let busy = call.activity.begin(call.req.version());
    let gauge = signet.metrics.feed_subscribers.clone();
    gauge.inc();
    let hold = Hold {
        _place: place,
        _busy: busy,
        gauge,
    };
    let scope = Scope { org, withheld };
    let stream = state
        .feed_hub
        .subscribe(source, scope, resume, hold, timing);
    let mut reply = reply::with_type(StatusCode::OK, "text/event-stream", Body::stream(stream));
    let headers = reply.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(reply)
}

/// An event id written as this server writes them: decimal digits, no
/// sign, no leading zero.
fn event_id(text: &str) -> Option<u64> {
    let id = text.parse::<u64>().ok()?;
    (id.to_string() == text).then_some(id)
}

/// What one stream carries.
struct Scope {
    /// One organisation's events, or every organisation's.
    org: Option<OrgId>,
    /// Also the withheld keys in a `reset`, and `event: held`
    /// (`?withheld=true`, with the follower token, as followers ask):
    /// keys that are not published, which the feed's contract otherwise
    /// leaves out.
    withheld: bool,
}

impl Scope {
    /// Whether a stream of this scope carries `change`.
    fn takes(&self, change: &Change) -> bool {
        if matches!(change, Change::Held(_)) && !self.withheld {
            return false;
        }
        match (&self.org, change.org()) {
            (Some(org), Some(of)) => org == of,
            _ => true,
        }
    }
}

/// The feed's two clocks.
#[derive(Clone, Copy)]
struct Timing {
    heartbeat: Duration,
    send_timeout: Duration,
}

/// What a stream holds while it is subscribed: its place among the
/// subscribers, its connection's busy mark and its count in
/// `signet_feed_subscribers`.
struct Hold {
    _place: OwnedSemaphorePermit,
    _busy: InFlight,
    gauge: Gauge,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Each stream beats at one of this many phases of the heartbeat period:
/// its first heartbeat comes within a period of its opening, and the
/// wake-ups of many streams are spread over the period.
const PHASES: u64 = 4;

/// The streams of one server and the task that wakes them.
#[derive(Default)]
pub struct Hub {
    shared: Arc<Shared>,
    /// Set once the task runs (at the first subscriber).
    ticker: OnceLock<()>,
}

#[derive(Default)]
struct Shared {
    /// Ticks since the task started, [`PHASES`] a heartbeat period.
    tick: AtomicU64,
    /// The streams of each phase.
    streams: [Mutex<Vec<Weak<Ticket>>>; PHASES as usize],
    /// Set at shutdown: a stream that subscribes later ends at once.
    ended: AtomicBool,
    /// The `fresh` event of a tick for a version, rendered once for every
    /// stream that stands at it.
    fresh: Mutex<Option<(u64, u64, Bytes)>>,
    /// The last `reset` rendered, with its scope and the id it stands at:
    /// the subscribers that arrive before the next event share it.
    reset: Mutex<Option<RenderedReset>>,
}

/// A `reset` as rendered: of `org` (or of all), with the withheld keys or
/// not, at event `version`.
struct RenderedReset {
    org: Option<OrgId>,
    withheld: bool,
    version: u64,
    bytes: Bytes,
}

/// One stream as the hub sees it.
struct Ticket {
    /// The tick during which hyper last asked the stream for a chunk.
    asked: AtomicU64,
    waker: Mutex<Option<Waker>>,
    /// `None` once the stream is over (the hub gave up on it).
    hold: Mutex<Option<Hold>>,
    /// Ends an HTTP/2 stream whose window stays shut: hyper then polls
    /// the body no more, so the body cannot end it.
    cancel: Option<Cancel>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn phase(tick: u64) -> usize {
    usize::try_from(tick % PHASES).unwrap_or(0)
}

impl Hub {
    /// Ends every stream, at shutdown: a subscriber reconnects (to another
    /// instance, or to this one once it is back) instead of holding the
    /// graceful drain open for its whole grace period.
    pub fn end_all(&self) {
        self.shared.ended.store(true, Ordering::SeqCst);
        for streams in &self.shared.streams {
            for ticket in lock(streams).drain(..).filter_map(|t| t.upgrade()) {
                ticket.finish();
                ticket.wake();
            }
        }
    }

    fn subscribe(
        &self,
        source: Source,
        scope: Scope,
        resume: Option<u64>,
        hold: Hold,
        timing: Timing,
    ) -> Stream {
        self.ticker.get_or_init(|| {
            let wake = source.feed().watch();
            tokio::spawn(tick(Arc::downgrade(&self.shared), wake, timing));
        });
        let now = self.shared.tick.load(Ordering::SeqCst);
        let ticket = Arc::new(Ticket {
            asked: AtomicU64::new(now),
            waker: Mutex::new(None),
            hold: Mutex::new(Some(hold)),
            cancel: Cancel::of_this_stream(),
        });
        lock(&self.shared.streams[phase(now)]).push(Arc::downgrade(&ticket));
        // Pushed, then looked: `end_all` either drains it or is seen here.
        if self.shared.ended.load(Ordering::SeqCst) {
            ticket.finish();
        }
        Stream {
            source,
            scope,
            hub: self.shared.clone(),
            ticket,
            cursor: resume,
            // The next tick of this phase: three quarters of a period to a
            // whole one from now.
            due: now + PHASES,
        }
    }
}

/// The hub's task: wakes every stream when an event is numbered; at each
/// tick, wakes the streams of its phase (their heartbeat is due) and ends
/// those that hyper stopped asking for chunks.
async fn tick(shared: Weak<Shared>, mut wake: watch::Receiver<u64>, timing: Timing) {
    // Ticks a stream may go unasked: a heartbeat due longer than the send
    // timeout was not taken.
    let heartbeat_ms = timing.heartbeat.as_millis().max(1);
    let periods = u64::try_from(timing.send_timeout.as_millis().div_ceil(heartbeat_ms))
        .unwrap_or(u64::MAX / PHASES / 2);
    let patience = periods.saturating_add(1).saturating_mul(PHASES);
    let period = timing.heartbeat / PHASES as u32;
    let mut clock = tokio::time::interval(period.max(Duration::from_millis(1)));
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    clock.reset();
    loop {
        let ticked = tokio::select! {
            changed = wake.changed() => {
                if changed.is_err() {
                    return;
                }
                false
            }
            _ = clock.tick() => true,
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if ticked {
            let now = shared.tick.fetch_add(1, Ordering::SeqCst) + 1;
            lock(&shared.streams[phase(now)]).retain(|ticket| {
                let Some(ticket) = ticket.upgrade() else {
                    return false;
                };
                let asked = ticket.asked.load(Ordering::SeqCst);
                let overdue = now.saturating_sub(asked) > patience;
                if overdue {
                    ticket.end();
                }
                ticket.wake();
                !overdue
            });
        } else {
            for streams in &shared.streams {
                lock(streams).retain(|ticket| match ticket.upgrade() {
                    Some(ticket) => {
                        ticket.wake();
                        true
                    }
                    None => false,
                });
            }
        }
    }
}

impl Ticket {
    /// Ends the stream cleanly: its body ends at the next poll.
    fn finish(&self) {
        drop(lock(&self.hold).take());
    }

    /// Ends a stream that stopped reading: as [`Ticket::finish`], and an
    /// HTTP/2 one is reset at once (hyper polls its body no more).
    fn end(&self) {
        self.finish();
        if let Some(cancel) = &self.cancel {
            cancel.fire();
        }
    }

    fn wake(&self) {
        if let Some(waker) = lock(&self.waker).as_ref() {
            waker.wake_by_ref();
        }
    }
}

impl Shared {
    /// The `fresh` event for `version` at `tick`.
    fn fresh(&self, tick: u64, version: u64, source: &Source) -> Bytes {
        let mut cached = lock(&self.fresh);
        match &*cached {
            Some((t, v, bytes)) if *t == tick && *v == version => bytes.clone(),
            _ => {
                let bytes = source.fresh(version);
                *cached = Some((tick, version, bytes.clone()));
                bytes
            }
        }
    }

    /// A `reset` of `org` (or of all), with the withheld keys or not: the
    /// last one rendered if no event was numbered since, so that a burst of
    /// subscribers renders it once.
    fn reset(&self, source: &Source, org: Option<&OrgId>, withheld: bool) -> (u64, Bytes) {
        let latest = source.feed().latest();
        if let Some(last) = &*lock(&self.reset) {
            if last.version == latest && last.org.as_ref() == org && last.withheld == withheld {
                return (last.version, last.bytes.clone());
            }
        }
        let (version, bytes) = source.reset(org, withheld);
        *lock(&self.reset) = Some(RenderedReset {
            org: org.cloned(),
            withheld,
            version,
            bytes: bytes.clone(),
        });
        (version, bytes)
    }
}

/// One subscriber's stream: a cursor in the shared ring.
struct Stream {
    source: Source,
    scope: Scope,
    hub: Arc<Shared>,
    ticket: Arc<Ticket>,
    /// The id the stream stands at; `None` until its next `reset`.
    cursor: Option<u64>,
    /// The tick at which the next `fresh` is due.
    due: u64,
}

impl Chunks for Stream {
    /// The next chunk: a `reset`, the events after the cursor, or a
    /// heartbeat; `None` once the hub gave up on the stream.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        // Listen first, then look: what is numbered after the look wakes.
        {
            let mut waker = lock(&self.ticket.waker);
            match &*waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *waker = Some(cx.waker().clone()),
            }
        }
        if lock(&self.ticket.hold).is_none() {
            return Poll::Ready(None);
        }
        let now = self.hub.tick.load(Ordering::SeqCst);
        self.ticket.asked.store(now, Ordering::SeqCst);
        let Some(mut cursor) = self.cursor else {
            return Poll::Ready(Some(self.reset()));
        };
        loop {
            let events = match self.source.feed().after(cursor, BATCH) {
                After::Gone => return Poll::Ready(Some(self.reset())),
                After::Events(events) if events.is_empty() => break,
                After::Events(events) => events,
            };
            let mut chunk = Chunk::default();
            for event in &events {
                if let Change::Reset = event.change {
                    // The events before it first, then a reset.
                    self.cursor = None;
                    return Poll::Ready(Some(match chunk.take() {
                        Some(bytes) => bytes,
                        None => self.reset(),
                    }));
                }
                cursor = event.id;
                if self.scope.takes(&event.change) {
                    chunk.push(event.wire());
                }
            }
            self.cursor = Some(cursor);
            if let Some(bytes) = chunk.take() {
                return Poll::Ready(Some(bytes));
            }
        }
        if now >= self.due {
            while self.due <= now {
                self.due += PHASES;
            }
            return Poll::Ready(Some(self.hub.fresh(now, cursor, &self.source)));
        }
        Poll::Pending
    }
}

impl Stream {
    /// A `reset`, the cursor moved to the id it stands at.
    fn reset(&mut self) -> Bytes {
        let (version, bytes) =
            self.hub
                .reset(&self.source, self.scope.org.as_ref(), self.scope.withheld);
        self.cursor = Some(version);
        bytes
    }
}

/// Events gathered for one chunk: a single event is handed over as it was
/// rendered, without a copy.
#[derive(Default)]
struct Chunk {
    first: Option<Bytes>,
    more: Option<BytesMut>,
}

impl Chunk {
    fn push(&mut self, wire: &Bytes) {
        match (&self.first, &mut self.more) {
            (None, _) => self.first = Some(wire.clone()),
            (Some(_), Some(more)) => more.extend_from_slice(wire),
            (Some(first), None) => {
                let mut more = BytesMut::with_capacity(first.len() + wire.len());
                more.extend_from_slice(first);
                more.extend_from_slice(wire);
                self.more = Some(more);
            }
        }
    }

    fn take(&mut self) -> Option<Bytes> {
        let first = self.first.take();
        match self.more.take() {
            Some(more) => Some(more.freeze()),
            None => first,
        }
    }
}
