//! A follower's view of its upstream: the events of the upstream's feed
//! applied in order to the same `Registry`, verifier and
//! `Freshness` an instance uses, and the acknowledgements that make it
//! fresh (the transport is `http::upstream`).
//!
//! Freshness follows the rule of the instances (ARCHITECTURE.md, "Several
//! instances"), with the follower's acknowledgement as the re-read: the
//! follower notes when it *sent* an acknowledgement (`t_send`); the upstream
//! answers with its latest event id and how stale it is itself (`staleMs`);
//! once the follower has applied every event up to that id, it is fresh as
//! of `t_send - staleMs`. Events it buffered while stopped never refresh
//! it: only an answer to an acknowledgement sent afterwards does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::watch;

use crate::events::{Held, Reason};
use crate::freshness::Freshness;
use crate::keys::{Jwk, KeyId, KeyName, KeySpec, Lifecycle, OrgId, Origin, PublicKeyRecord};
use crate::registry::Registry;
use crate::verify::Verifier;

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

#[derive(Default)]
struct State {
    /// The id of the last event applied.
    applied: u64,
    /// The upstream process whose ids `applied` counts in.
    run: Option<String>,
    /// Answers waiting for their event to be applied: (version, fresh as of).
    pending: Vec<(u64, Instant)>,
    /// Whether the upstream has accepted this follower's token.
    registered: bool,
}

/// The follower's mirror of its upstream.
pub struct Mirror {
    published: Arc<Registry>,
    verifier: Arc<Verifier>,
    fresh: Arc<Freshness>,
    state: Mutex<State>,
    /// The id of the last event applied, for the acknowledgement loop.
    applied: watch::Sender<u64>,
    /// This follower's id at the upstream.
    id: String,
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

impl Mirror {
    pub(crate) fn new(
        published: Arc<Registry>,
        verifier: Arc<Verifier>,
        fresh: Arc<Freshness>,
    ) -> Mirror {
        Mirror {
            published,
            verifier,
            fresh,
            state: Mutex::new(State::default()),
            applied: watch::channel(0).0,
            id: ulid::Ulid::new().to_string(),
        }
    }

    /// Key usage counted here and not sent upstream yet; put it back with
    /// [`Mirror::unsent`] if the acknowledgement carrying it fails.
    pub fn usage(&self) -> Vec<crate::usage::UsageDelta> {
        self.verifier.usage().take_deltas()
    }

    /// Usage that could not be sent, to be sent again.
    pub fn unsent(&self, deltas: &[crate::usage::UsageDelta]) {
        self.verifier.usage().requeue(deltas, crate::keys::now_ms());
    }

    /// This follower's id at the upstream.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id of the last event applied, if any stream has begun.
    pub fn last_event_id(&self) -> Option<u64> {
        let state = self.lock();
        state.run.as_ref().map(|_| state.applied)
    }

    /// The id of the last event applied (0 before any).
    pub fn applied(&self) -> u64 {
        self.lock().applied
    }

    /// Wakes when an event is applied.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Whether the upstream has accepted this follower's token.
    pub fn registered(&self) -> bool {
        self.lock().registered
    }

    /// Applies one event of the upstream's feed. A `fresh` heartbeat
    /// changes nothing: only an acknowledgement's answer makes this
    /// follower fresh.
    pub fn apply(&self, event: &SseEvent) -> Result<(), EventError> {
        let id = event.id.as_deref().map(str::parse::<u64>).transpose();
        let id = id.map_err(|_| EventError("an id that is not a number".into()))?;
        match event.event.as_str() {
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
                self.published.replace(&records, &withheld, &self.verifier);
                let mut state = self.lock();
                if state.run.as_deref() != Some(reset.run.as_str()) {
                    state.pending.clear();
                }
                state.run = Some(reset.run);
                self.applied_through(state, reset.version);
            }
            "published" => {
                let id = id.ok_or_else(|| EventError("an event without an id".into()))?;
                let record = record(json(&event.data)?)?;
                self.published.publish(&record, id, &self.verifier);
                self.applied_through(self.lock(), id);
            }
            "withdrawn" => {
                let id = id.ok_or_else(|| EventError("an event without an id".into()))?;
                let w: Withdrawn = json(&event.data)?;
                let reason = Reason::parse(&w.reason)
                    .ok_or_else(|| EventError(format!("the reason {:?}", w.reason)))?;
                // Forgotten by the verifier before this returns, so before
                // it is acknowledged.
                self.published
                    .withdraw(&w.org, w.kid, reason, &self.verifier);
                self.applied_through(self.lock(), id);
            }
            _ => {}
        }
        Ok(())
    }

    fn applied_through(&self, mut state: std::sync::MutexGuard<'_, State>, id: u64) {
        state.applied = id;
        let mut confirmed = None;
        state.pending.retain(|&(version, as_of)| {
            if version <= id {
                confirmed = confirmed.max(Some(as_of));
                false
            } else {
                true
            }
        });
        drop(state);
        if let Some(as_of) = confirmed {
            self.fresh.confirm(as_of);
        }
        self.applied.send_replace(id);
    }

    /// The upstream answered an acknowledgement sent at `sent`: fresh as
    /// of `sent - staleMs` once every event up to its version is applied.
    /// `false` when the answer is of another upstream run than the stream
    /// (the stream must start over).
    pub fn answered(&self, sent: Instant, answer: &AckAnswer) -> bool {
        let as_of = sent
            .checked_sub(Duration::from_millis(answer.stale_ms))
            .unwrap_or(sent);
        let mut state = self.lock();
        state.registered = true;
        if state.run.as_deref() != Some(answer.run.as_str()) {
            return state.run.is_none();
        }
        if answer.version <= state.applied {
            drop(state);
            self.fresh.confirm(as_of);
        } else {
            state.pending.push((answer.version, as_of));
            // Bounded: an older answer is superseded by a newer one.
            if state.pending.len() > 64 {
                state.pending.remove(0);
            }
        }
        true
    }

    /// The stream ended: answers pending for it will not be honoured.
    pub fn stream_lost(&self) {
        self.lock().pending.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("mirror lock poisoned")
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
