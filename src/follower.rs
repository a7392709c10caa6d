//! A follower's source: an upstream signet as a [`ChangeFeed`], so that
//! the same `replica::Replica` an instance runs over the shared store
//! follows it (ARCHITECTURE.md, "Followers").
//!
//! The upstream pushes its changes: the transport (`http::upstream`, the
//! only side that knows hyper) reads its change feed and hands each event
//! to [`Pushed`], which parses it and buffers it until the replica asks
//! for the next changes. The confirmation is an acknowledgement: the
//! follower notes when it *sent* it (`t_send`); the upstream answers with
//! its latest event id and how stale it is itself (`staleMs`), which
//! means "every change through that id was known as of `t_send -
//! staleMs`". An answer of another run of the upstream than the stream's
//! confirms nothing and makes the stream start over from a `reset`.
//! A verification of a key id the follower does not know asks the replica
//! for an acknowledgement now (`replica::CatchUps`) and waits until one
//! sent after it asked is answered and its events are applied.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::events::{Held, Reason};
use crate::feed::{Change, ChangeFeed, Changes, Confirmation, Heard, Round};
use crate::keys::{Jwk, KeyId, KeyName, KeySpec, Lifecycle, OrgId, Origin, PublicKeyRecord};
use crate::usage::{Usage, UsageDelta};

/// Why an event of the upstream could not be applied; the stream is then
/// dropped and opened again (from a `reset`).
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent an event this follower cannot read ({0})")]
pub struct EventError(String);

/// One Server-Sent Event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Splits a `text/event-stream` into events; a line longer than `max`
/// bytes is an error.
pub struct SseParser {
    buf: Vec<u8>,
    current: SseEvent,
    max: usize,
}

impl SseParser {
    pub fn new(max: usize) -> SseParser {
        SseParser {
            buf: Vec::new(),
            current: SseEvent::default(),
            max,
        }
    }

    /// Feeds bytes; the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, EventError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[start..start + nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line).into_owned();
            start += nl + 1;
            if line.is_empty() {
                let event = std::mem::take(&mut self.current);
                if !event.data.is_empty() || !event.event.is_empty() {
                    out.push(event);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
                None => (line, String::new()),
            };
            match field.as_str() {
                "id" => self.current.id = Some(value),
                "event" => self.current.event = value,
                "data" => {
                    if !self.current.data.is_empty() {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(&value);
                }
                _ => {}
            }
        }
        self.buf.drain(..start);
        if self.buf.len() + self.current.data.len() > self.max {
            return Err(EventError(format!(
                "an event longer than {} bytes",
                self.max
            )));
        }
        Ok(out)
    }
}

/// What the upstream answers to an acknowledgement.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AckAnswer {
    /// The upstream's latest event id when it answered.
    pub version: u64,
    /// How stale the upstream itself was, in milliseconds.
    pub stale_ms: u64,
    /// The upstream process the ids belong to.
    #[serde(default)]
    pub run: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyDoc {
    id: KeyId,
    organisation_id: OrgId,
    name: KeyName,
    #[serde(flatten)]
    spec: KeySpec,
    expires_at: Option<String>,
    #[serde(default)]
    origin: Origin,
}

#[derive(Deserialize)]
struct PublishedDoc {
    jwk: Jwk,
    key: KeyDoc,
}

#[derive(Deserialize)]
struct Reset {
    version: u64,
    #[serde(default)]
    run: String,
    keys: Vec<PublishedDoc>,
    /// Keys disabled or expired upstream (absent from older upstreams).
    #[serde(default)]
    withheld: Vec<HeldDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeldDoc {
    org: OrgId,
    kid: KeyId,
    reason: String,
    expires_at: Option<String>,
}

fn held(h: HeldDoc) -> Result<Held, EventError> {
    let reason =
        Reason::parse(&h.reason).ok_or_else(|| EventError(format!("the reason {:?}", h.reason)))?;
    Ok(Held {
        org: h.org,
        kid: h.kid,
        reason,
        expires_at: time(h.expires_at.as_deref())?,
    })
}

/// An RFC 3339 `expiresAt`, in seconds since the epoch.
fn time(raw: Option<&str>) -> Result<Option<u64>, EventError> {
    raw.map(crate::keys::parse_time)
        .transpose()
        .map_err(|e| EventError(e.to_string()))
}

#[derive(Deserialize)]
struct Withdrawn {
    org: OrgId,
    kid: KeyId,
    reason: String,
}

fn record(p: PublishedDoc) -> Result<PublicKeyRecord, EventError> {
    let (kid, _, spki_der) = p.jwk.to_parts().map_err(|e| EventError(e.to_string()))?;
    if kid != p.key.id {
        return Err(EventError("a key whose JWK names another kid".into()));
    }
    let expires_at_secs = time(p.key.expires_at.as_deref())?;
    Ok(PublicKeyRecord {
        id: kid,
        org: p.key.organisation_id,
        name: p.key.name,
        spec: p.key.spec,
        spki_der,
        created_at_ms: kid.timestamp_ms(),
        life: Lifecycle {
            disabled: false,
            expires_at_secs,
            origin: p.key.origin,
        },
    })
}

fn json<'a, T: Deserialize<'a>>(data: &'a str) -> Result<T, EventError> {
    serde_json::from_str(data).map_err(|e| EventError(e.to_string()))
}

/// How a follower reaches its upstream: the one side that knows HTTP.
pub trait Transport: Send + Sync + 'static {
    /// The upstream's URL, for messages.
    fn url(&self) -> &str;

    /// Reads the upstream's change feed into `pushed` until aborted,
    /// resuming after [`Pushed::last_event_id`] when a stream ends, and
    /// from a `reset` when [`Pushed::restart_asked`] says so.
    fn follow(self: Arc<Self>, pushed: Arc<Pushed>) -> impl Future<Output = ()> + Send + 'static;

    /// Sends one acknowledgement; the upstream's answer.
    fn acknowledge(
        &self,
        ack: &Ack<'_>,
    ) -> impl Future<Output = Result<AckAnswer, AckFailure>> + Send;
}

/// An acknowledgement: `POST /v1/followers/ack`.
#[derive(Debug, Serialize)]
pub struct Ack<'a> {
    /// This follower's id at the upstream.
    pub follower: &'a str,
    /// The id of the last event applied.
    pub applied: u64,
    /// Key usage counted here since the last acknowledgement that went
    /// through, summed upstream.
    pub usage: &'a [UsageDelta],
    /// A verification of a key id this follower does not know waits on
    /// the answer: an upstream that follows a database reads it first,
    /// so the answer covers keys created through another instance.
    #[serde(rename = "catchUp", skip_serializing_if = "std::ops::Not::not")]
    pub catch_up: bool,
}

/// Why an acknowledgement has no answer.
#[derive(Debug, thiserror::Error)]
pub enum AckFailure {
    /// The upstream refused the follower token (its status).
    #[error("the upstream refused the follower token ({0})")]
    Refused(String),
    /// The upstream's certificate is not trusted here, or it does not
    /// speak TLS: a configuration error, like a refused token.
    #[error("{0}")]
    Untrusted(String),
    /// Anything else: unreachable, no answer in time, an unreadable answer.
    #[error("could not acknowledge to the upstream: {0}")]
    Other(String),
}

/// Why the upstream cannot be followed before it ever accepted this
/// follower: a follower exits 2 for either.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    /// The upstream refused the follower token (its status).
    #[error("the upstream refused the follower token ({0})")]
    Token(String),
    /// The upstream's certificate is not trusted here (why).
    #[error("{0}")]
    Untrusted(String),
}

impl Refused {
    /// What refused `failure`, if it is a refusal rather than a fault.
    fn of(failure: &AckFailure) -> Option<Refused> {
        match failure {
            AckFailure::Refused(status) => Some(Refused::Token(status.clone())),
            AckFailure::Untrusted(why) => Some(Refused::Untrusted(why.clone())),
            AckFailure::Other(_) => None,
        }
    }
}

/// The most events [`Pushed`] holds for the replica: as many as the
/// upstream's ring keeps, so a follower that falls that far behind its own
/// stream starts over from a `reset`, as a subscriber the upstream dropped
/// from its ring would. A `reset` counts as one event.
pub const MAX_BUFFERED: usize = crate::events::RING_EVENTS;

/// What the stream has pushed and the replica has not taken yet.
#[derive(Default)]
struct Buffer {
    /// The upstream process whose ids `last` counts in.
    run: Option<String>,
    /// The id of the last event pushed.
    last: u64,
    changes: Vec<Change>,
    /// The stream ended or started over since the replica last took.
    start_over: bool,
    /// Events were dropped (the buffer was full): nothing but a `reset`
    /// is taken until one comes, so the replica never applies, nor is
    /// confirmed, past the missing events.
    gap: bool,
}

/// The pushed side of an upstream feed: the transport hands it each event
/// of the stream; the replica takes them in order.
pub struct Pushed {
    buffer: Mutex<Buffer>,
    /// Wakes the replica on every event pushed (the value never changes:
    /// no session to lose).
    wake: watch::Sender<Heard>,
    /// Asks the transport to start the stream over from a `reset`.
    restart: Notify,
}

impl Default for Pushed {
    fn default() -> Pushed {
        Pushed {
            buffer: Mutex::new(Buffer::default()),
            wake: watch::channel(Heard {
                session: 1,
                listening: true,
                polling: false,
            })
            .0,
            restart: Notify::new(),
        }
    }
}

impl Pushed {
    /// The id of the last event pushed, if any stream has begun: where a
    /// new stream resumes.
    pub fn last_event_id(&self) -> Option<u64> {
        let buffer = self.lock();
        buffer.run.as_ref().filter(|_| !buffer.gap)?;
        Some(buffer.last)
    }

    /// Takes one event of the upstream's feed. A `fresh` heartbeat changes
    /// nothing: only an acknowledgement's answer makes this follower fresh.
    pub fn push(&self, event: &SseEvent) -> Result<(), EventError> {
        let id = event.id.as_deref().map(str::parse::<u64>).transpose();
        let id = id.map_err(|_| EventError("an id that is not a number".into()))?;
        let (change, id, run) = match event.event.as_str() {
            "reset" => {
                let reset: Reset = json(&event.data)?;
                let records = reset
                    .keys
                    .into_iter()
                    .map(record)
                    .collect::<Result<Vec<_>, _>>()?;
                let withheld = reset
                    .withheld
                    .into_iter()
                    .map(held)
                    .collect::<Result<Vec<_>, _>>()?;
                let change = Change::Reset {
                    version: reset.version,
                    records,
                    withheld,
                };
                (change, reset.version, Some(reset.run))
            }
            "published" => {
                let id = id.ok_or_else(|| EventError("an event without an id".into()))?;
                let record = record(json(&event.data)?)?;
                let change = Change::Keys {
                    version: id,
                    records: vec![record],
                };
                (change, id, None)
            }
            "withdrawn" => {
                let id = id.ok_or_else(|| EventError("an event without an id".into()))?;
                let w: Withdrawn = json(&event.data)?;
                let reason = Reason::parse(&w.reason)
                    .ok_or_else(|| EventError(format!("the reason {:?}", w.reason)))?;
                let change = Change::Withdrawn {
                    org: w.org,
                    kid: w.kid,
                    reason,
                };
                (change, id, None)
            }
            "held" => {
                let id = id.ok_or_else(|| EventError("an event without an id".into()))?;
                (Change::Held(held(json(&event.data)?)?), id, None)
            }
            _ => return Ok(()),
        };
        let mut buffer = self.lock();
        if run.is_none() && buffer.gap {
            return Ok(());
        }
        if buffer.changes.len() >= MAX_BUFFERED {
            // The replica is not keeping up: drop what it has not taken and
            // start over from a `reset`, which the new stream sends first.
            *buffer = Buffer {
                run: buffer.run.take(),
                last: buffer.last,
                changes: Vec::new(),
                start_over: true,
                gap: true,
            };
            drop(buffer);
            tracing::warn!(
                events = MAX_BUFFERED,
                "the follower's replica fell behind its upstream's stream; starting over from a reset"
            );
            self.restart.notify_one();
            return Ok(());
        }
        if let Some(run) = run {
            if buffer.run.as_deref() != Some(run.as_str()) {
                buffer.start_over = true;
            }
            buffer.run = Some(run);
            buffer.gap = false;
        }
        buffer.last = id;
        buffer.changes.push(change);
        drop(buffer);
        self.wake.send_modify(|_| {});
        Ok(())
    }

    /// The stream ended: answers obtained for it will not be honoured.
    pub fn lost(&self) {
        self.lock().start_over = true;
    }

    /// Resolves when the stream must start over from a `reset` (an answer
    /// came from another run of the upstream than the stream's).
    pub async fn restart_asked(&self) {
        self.restart.notified().await
    }

    /// The changes pushed since the last call.
    fn take(&self) -> Changes {
        let mut buffer = self.lock();
        let changes = std::mem::take(&mut buffer.changes);
        Changes {
            upto: if changes.is_empty() { 0 } else { buffer.last },
            changes,
            start_over: std::mem::take(&mut buffer.start_over),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().expect("upstream buffer lock poisoned")
    }
}

/// An upstream signet as the feed a follower's replica follows.
pub struct UpstreamFeed<T> {
    transport: Arc<T>,
    pushed: Arc<Pushed>,
    /// Key usage counted here, sent with the acknowledgements.
    usage: Arc<Usage>,
    /// Whether the upstream has accepted this follower's token.
    registered: Arc<AtomicBool>,
    /// The upstream's refusal of a follower it never accepted (it could
    /// not be reached at start): the follower exits on it.
    refused: watch::Sender<Option<Refused>>,
}

impl<T: Transport> UpstreamFeed<T> {
    pub fn new(transport: Arc<T>, pushed: Arc<Pushed>, usage: Arc<Usage>) -> UpstreamFeed<T> {
        UpstreamFeed {
            transport,
            pushed,
            usage,
            registered: Arc::default(),
            refused: watch::channel(None).0,
        }
    }

    /// Holds the upstream's refusal of a follower it never accepted.
    pub fn refusals(&self) -> watch::Receiver<Option<Refused>> {
        self.refused.subscribe()
    }

    /// Set once the upstream has accepted this follower's token.
    pub fn registered(&self) -> Arc<AtomicBool> {
        self.registered.clone()
    }

    /// Registers as `me`: the first acknowledgement. A refused token is an
    /// error; an unreachable upstream is not (the replica keeps trying,
    /// and nothing verifies meanwhile).
    pub async fn register(&self, me: &str) -> Result<(), Refused> {
        let ack = Ack {
            follower: me,
            applied: 0,
            usage: &[],
            catch_up: false,
        };
        match self.transport.acknowledge(&ack).await {
            Ok(_) => {
                self.registered.store(true, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => match Refused::of(&e) {
                Some(refused) => Err(refused),
                None => {
                    tracing::warn!(upstream = %self.transport.url(), why = %e, "could not register with the upstream yet; retrying");
                    Ok(())
                }
            },
        }
    }
}

impl<T: Transport> ChangeFeed for UpstreamFeed<T> {
    type Error = AckFailure;

    /// The events pushed since the last call, in id order.
    async fn next(&self, _applied: u64) -> Result<Changes, AckFailure> {
        Ok(self.pushed.take())
    }

    /// Acknowledges (with the usage counted since); fresh as of `t_send -
    /// staleMs` once every event through the answer's id is applied.
    async fn confirm(
        &self,
        me: &str,
        reported: u64,
        _read: Confirmation,
        round: Round,
    ) -> Result<Option<Confirmation>, AckFailure> {
        let usage = self.usage.take_deltas();
        let ack = Ack {
            follower: me,
            applied: reported,
            usage: &usage,
            catch_up: round == Round::CatchUp,
        };
        let sent = Instant::now();
        let answer = match self.transport.acknowledge(&ack).await {
            Ok(answer) => answer,
            Err(e) => {
                self.usage.requeue(&usage, crate::keys::now_ms());
                if let Some(refused) = Refused::of(&e) {
                    tracing::error!(upstream = %self.transport.url(), %refused, "the upstream cannot be followed");
                    if !self.registered.load(Ordering::SeqCst) {
                        self.refused.send_replace(Some(refused));
                    }
                }
                return Err(e);
            }
        };
        self.registered.store(true, Ordering::SeqCst);
        let as_of = sent
            .checked_sub(Duration::from_millis(answer.stale_ms))
            .unwrap_or(sent);
        let run = self.pushed.lock().run.clone();
        match run {
            // No stream yet: nothing to confirm.
            None => Ok(None),
            Some(run) if run != answer.run => {
                // Another run of the upstream than the stream's.
                self.pushed.restart.notify_one();
                Ok(None)
            }
            Some(_) => Ok(Some(Confirmation {
                through: answer.version,
                as_of,
            })),
        }
    }

    /// Refused: again after `every`; anything else, after 100 ms at most.
    fn retry_after(&self, error: &AckFailure, every: Duration) -> Duration {
        match error {
            AckFailure::Refused(_) | AckFailure::Untrusted(_) => every,
            AckFailure::Other(_) => Duration::from_millis(100).min(every),
        }
    }

    fn announcements(&self) -> Option<watch::Receiver<Heard>> {
        Some(self.pushed.wake.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_splits_events_across_chunks() {
        let mut p = SseParser::new(1024);
        let mut got = p.push(b"id: 5\nevent: withdrawn\ndata: {\"a\"").unwrap();
        assert!(got.is_empty());
        got.extend(
            p.push(b":1}\r\n\r\n: comment\n\nevent: fresh\ndata: x\ndata: y\n\n")
                .unwrap(),
        );
        assert_eq!(
            got,
            vec![
                SseEvent {
                    id: Some("5".into()),
                    event: "withdrawn".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    id: None,
                    event: "fresh".into(),
                    data: "x\ny".into()
                }
            ]
        );
        assert!(p.push(&[b'x'; 2000]).is_err(), "an endless line");
    }

    fn reset(version: u64) -> SseEvent {
        SseEvent {
            id: Some(version.to_string()),
            event: "reset".into(),
            data: format!(r#"{{"version":{version},"run":"r1","keys":[]}}"#),
        }
    }

    fn withdrawn(id: u64) -> SseEvent {
        let kid = KeyId::new(ulid::Ulid::new());
        SseEvent {
            id: Some(id.to_string()),
            event: "withdrawn".into(),
            data: format!(r#"{{"org":"acme","kid":"{kid}","reason":"deleted"}}"#),
        }
    }

    #[test]
    fn a_held_event_is_taken_only_when_every_member_reads() {
        let kid = KeyId::new(ulid::Ulid::new());
        let event = |id: Option<&str>, data: String| SseEvent {
            id: id.map(str::to_owned),
            event: "held".into(),
            data,
        };
        let refused = [
            event(
                None,
                format!(r#"{{"org":"acme","kid":"{kid}","reason":"deleted"}}"#),
            ),
            event(
                Some("x"),
                format!(r#"{{"org":"acme","kid":"{kid}","reason":"deleted"}}"#),
            ),
            event(
                Some("2"),
                format!(r#"{{"org":"acme","kid":"{kid}","reason":"gone"}}"#),
            ),
            event(
                Some("2"),
                r#"{"org":"acme","kid":"not-a-ulid","reason":"deleted"}"#.into(),
            ),
            event(
                Some("2"),
                format!(r#"{{"org":"a b","kid":"{kid}","reason":"deleted"}}"#),
            ),
            event(
                Some("2"),
                format!(r#"{{"org":"acme","kid":"{kid}","reason":"disabled","expiresAt":"soon"}}"#),
            ),
            event(Some("2"), format!(r#"{{"org":"acme","kid":"{kid}"}}"#)),
            event(Some("2"), "{".into()),
        ];
        let pushed = Pushed::default();
        pushed.push(&reset(1)).unwrap();
        pushed.take();
        for bad in &refused {
            assert!(pushed.push(bad).is_err(), "{bad:?}");
        }
        assert!(pushed.take().changes.is_empty(), "nothing taken");
        let good = format!(
            r#"{{"org":"acme","kid":"{kid}","reason":"disabled","expiresAt":"2030-01-01T00:00:00Z"}}"#
        );
        pushed.push(&event(Some("2"), good)).unwrap();
        let taken = pushed.take();
        assert_eq!(taken.upto, 2);
        assert!(
            matches!(&taken.changes[..], [Change::Held(h)] if h.kid == kid
                && h.reason == Reason::Disabled && h.expires_at == Some(1_893_456_000)),
            "{:?}",
            taken.changes
        );
    }

    #[tokio::test]
    async fn a_full_buffer_is_dropped_and_nothing_is_taken_until_a_reset() {
        let pushed = Pushed::default();
        pushed.push(&reset(1)).unwrap();
        assert_eq!(pushed.take().upto, 1);
        let full = 1 + MAX_BUFFERED as u64;
        for id in 2..=full {
            pushed.push(&withdrawn(id)).unwrap();
        }
        assert_eq!(pushed.last_event_id(), Some(full));
        // One more than it holds: everything not taken is dropped, and the
        // stream is asked to start over, from a reset.
        pushed.push(&withdrawn(full + 1)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), pushed.restart_asked())
            .await
            .expect("the stream is asked to start over");
        assert_eq!(pushed.last_event_id(), None, "a new stream does not resume");
        // Later events are not taken: applying them would skip the dropped
        // ones, and a confirmation through them would vouch across the gap.
        pushed.push(&withdrawn(full + 2)).unwrap();
        let taken = pushed.take();
        assert!(taken.changes.is_empty());
        assert_eq!(taken.upto, 0, "nothing more is applied");
        assert!(taken.start_over, "confirmations held are dropped");
        // A reset ends the gap.
        pushed.push(&reset(full + 5)).unwrap();
        pushed.push(&withdrawn(full + 6)).unwrap();
        let taken = pushed.take();
        assert_eq!(taken.upto, full + 6);
        assert_eq!(taken.changes.len(), 2);
        assert!(matches!(taken.changes[0], Change::Reset { version, .. } if version == full + 5));
        assert!(!taken.start_over);
        assert_eq!(pushed.last_event_id(), Some(full + 6));
    }

    #[test]
    fn hostile_streams_are_bounded_and_never_panic() {
        // (input fed in one chunk, events expected, whether it is refused)
        let many_lines = "data: 0123456789\n".repeat(200);
        let cases: &[(&[u8], usize, bool)] = &[
            (b"\xff\xfe: \xc3\n\n", 0, false),
            (b"event: \xff\ndata: \x00\n\n", 1, false),
            (b"id: only\n\n", 0, false),
            (b"retry: 1\nunknown: x\ndata: d\n\n", 1, false),
            (b"\n\n\n\r\n", 0, false),
            (b"data: a\rdata: b\n\n", 1, false),
            (many_lines.as_bytes(), 0, true),
        ];
        for (input, events, refused) in cases {
            let mut p = SseParser::new(1024);
            match p.push(input) {
                Ok(got) => {
                    assert!(!refused, "{input:?} was accepted");
                    assert_eq!(got.len(), *events, "{input:?}: {got:?}");
                }
                Err(_) => assert!(refused, "{input:?} was refused"),
            }
        }
    }
}
