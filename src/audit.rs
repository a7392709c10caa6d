//! Audit events: who did what to which organisation's keys, and the hash
//! chain that makes a stored event impossible to edit without a trace.
//!
//! Each event carries the SHA-256 (hex) of the stored bytes of the previous
//! event of its organisation; the first event of an organisation carries 64
//! zeros. `store` appends events in the same transaction as the change they
//! record; [`check_chain`] walks one organisation's events in order.
//!
//! The log records what authenticated principals did and what they were
//! refused (403). A request without a valid credential (401) is not an
//! event: anyone can send one, so auditing it would let an anonymous client
//! write to the disk at will and drown real history; `refusals` counts and
//! samples those instead. No event stores more than [`MAX_TEXT_BYTES`] of
//! any text that may come from a request (the token's `sub`, the client
//! address, the outcome): [`AuditEvent::new`] clamps them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::{KeyId, OrgId};

/// An event id: a ULID, ordered by time within an organisation. Spelled
/// like a key id, but never one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(KeyId);

/// An audit cursor that is not an event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an audit cursor (before) must be the id of an audit event: a 26-character ULID")]
pub struct EventIdError;

impl EventId {
    pub fn new(ulid: ulid::Ulid) -> EventId {
        EventId(KeyId::new(ulid))
    }

    /// Parses the canonical 26-character form (Crockford base32, any case).
    pub fn parse(raw: &str) -> Result<EventId, EventIdError> {
        KeyId::parse(raw).map(EventId).map_err(|_| EventIdError)
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> EventId {
        EventId(KeyId::from_bytes(bytes))
    }

    /// Milliseconds since the Unix epoch at which the id was minted.
    pub fn timestamp_ms(self) -> u64 {
        self.0.timestamp_ms()
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "key.created")]
    KeyCreated,
    #[serde(rename = "key.deleted")]
    KeyDeleted,
    #[serde(rename = "access.denied")]
    AccessDenied,
    #[serde(rename = "quota.exceeded")]
    QuotaExceeded,
    #[serde(rename = "key.uploaded")]
    KeyUploaded,
    #[serde(rename = "key.disabled")]
    KeyDisabled,
    #[serde(rename = "key.enabled")]
    KeyEnabled,
    #[serde(rename = "key.renamed")]
    KeyRenamed,
    #[serde(rename = "key.rotated")]
    KeyRotated,
}

/// Who asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Actor {
    /// The holder of the operator token.
    Operator,
    /// The offline command line, on the data directory itself.
    Cli,
    /// An organisation token: its subject and the key that signed it.
    #[serde(rename_all = "camelCase")]
    Token { sub: String, key_id: KeyId },
    /// A caller whose credential was missing or invalid. No longer written
    /// (such refusals are counted, not audited); older logs still hold it.
    Anonymous,
}

/// An event as the caller describes it, before `store` places it in a chain.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub action: Action,
    pub key_id: Option<KeyId>,
    pub actor: Actor,
    pub client: Option<String>,
    pub outcome: String,
}

/// An event as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditEvent {
    pub id: EventId,
    pub time: String,
    pub organisation_id: OrgId,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
    pub actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
    pub outcome: String,
    pub prev_hash: String,
}

/// The `prev_hash` of an organisation's first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// The most bytes an event keeps of each of its free-text fields (`sub`,
/// `clientAddress`, `outcome`); longer text is cut on a character boundary
/// and ends with `…`. Every other field is fixed-size or chosen by signet.
pub const MAX_TEXT_BYTES: usize = 128;

impl AuditEvent {
    /// The event as stored; its free-text fields are clamped to
    /// [`MAX_TEXT_BYTES`].
    pub fn new(id: EventId, org: OrgId, event: NewEvent, prev: [u8; 32]) -> AuditEvent {
        let actor = match event.actor {
            Actor::Token { sub, key_id } => Actor::Token {
                sub: clamp(sub),
                key_id,
            },
            other => other,
        };
        AuditEvent {
            id,
            time: crate::keys::rfc3339(id.timestamp_ms()),
            organisation_id: org,
            action: event.action,
            key_id: event.key_id,
            actor,
            client_address: event.client.map(clamp),
            outcome: clamp(event.outcome),
            prev_hash: hex::encode(prev),
        }
    }
}

/// `text` cut to at most [`MAX_TEXT_BYTES`], on a character boundary.
fn clamp(mut text: String) -> String {
    const MARK: char = '…';
    if text.len() <= MAX_TEXT_BYTES {
        return text;
    }
    let mut end = MAX_TEXT_BYTES - MARK.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push(MARK);
    text
}

/// SHA-256 of an event's stored bytes: the next event's `prev_hash`.
pub fn link(stored: &[u8]) -> [u8; 32] {
    Sha256::digest(stored).into()
}

/// Where an organisation's chain stops being trustworthy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain of organisation {org} is broken at event #{index} ({id}): {reason}")]
pub struct BrokenLink {
    pub org: String,
    pub index: usize,
    pub id: String,
    pub reason: String,
}

/// Checks one organisation's stored events, oldest first.
pub fn check_chain<'a>(
    org: &str,
    stored: impl IntoIterator<Item = (String, &'a [u8])>,
) -> Result<usize, BrokenLink> {
    let mut prev = GENESIS;
    let mut count = 0;
    for (index, (id, bytes)) in stored.into_iter().enumerate() {
        let broken = |reason: String| BrokenLink {
            org: org.to_owned(),
            index,
            id: id.clone(),
            reason,
        };
        let event: AuditEvent = serde_json::from_slice(bytes)
            .map_err(|e| broken(format!("the stored event does not parse ({e})")))?;
        if event.prev_hash != hex::encode(prev) {
            return Err(broken(
                "its prev_hash does not match the previous event (an event was edited, removed or inserted)".into(),
            ));
        }
        if event.id.to_string() != id || event.organisation_id.as_str() != org {
            return Err(broken(
                "its id or organisation differs from where it is stored".into(),
            ));
        }
        prev = link(bytes);
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<(String, Vec<u8>)> {
        let org = OrgId::parse("acme").unwrap();
        let mut prev = GENESIS;
        (0..n)
            .map(|i| {
                let id = EventId::new(ulid::Ulid::from_parts(1_700_000_000_000 + i as u64, 7));
                let e = AuditEvent::new(
                    id,
                    org.clone(),
                    NewEvent {
                        action: Action::KeyCreated,
                        key_id: None,
                        actor: Actor::Operator,
                        client: None,
                        outcome: "201".into(),
                    },
                    prev,
                );
                let bytes = serde_json::to_vec(&e).unwrap();
                prev = link(&bytes);
                (id.to_string(), bytes)
            })
            .collect()
    }

    fn check(events: &[(String, Vec<u8>)]) -> Result<usize, BrokenLink> {
        check_chain(
            "acme",
            events.iter().map(|(id, b)| (id.clone(), b.as_slice())),
        )
    }

    #[test]
    fn intact_chain_checks() {
        assert_eq!(check(&chain(5)), Ok(5));
    }

    #[test]
    fn any_edited_byte_is_found() {
        let events = chain(4);
        let target = 2;
        let len = events[target].1.len();
        for pos in 0..len {
            let mut edited = events.clone();
            edited[target].1[pos] ^= 0x01;
            let err = check(&edited).expect_err("an edit must break the chain");
            assert!(err.index == target || err.index == target + 1, "{err}");
        }
    }

    #[test]
    fn request_derived_text_is_clamped_on_character_boundaries() {
        let org = OrgId::parse("acme").unwrap();
        let id = EventId::new(ulid::Ulid::from_parts(1_700_000_000_000, 7));
        let key_id = KeyId::new(ulid::Ulid::from_parts(1_700_000_000_000, 7));
        let long = |unit: &str| unit.repeat(10_000);
        // One-, two-, three- and four-byte characters, and ones JSON escapes
        // to six bytes each: every cut lands on a boundary.
        for unit in ["x", "é", "€", "🦀", "\u{1}", "a€"] {
            let event = AuditEvent::new(
                id,
                org.clone(),
                NewEvent {
                    action: Action::AccessDenied,
                    key_id: Some(key_id),
                    actor: Actor::Token {
                        sub: long(unit),
                        key_id,
                    },
                    client: Some(long(unit)),
                    outcome: long(unit),
                },
                GENESIS,
            );
            let Actor::Token { sub, .. } = &event.actor else {
                panic!("the actor stays a token");
            };
            let client = event.client_address.as_deref().unwrap();
            for field in [sub.as_str(), client, event.outcome.as_str()] {
                assert!(field.len() <= MAX_TEXT_BYTES, "{unit:?}: {}", field.len());
                assert!(field.len() > MAX_TEXT_BYTES - 8, "{unit:?}: cut too short");
                let kept = field.strip_suffix('…').expect("a cut is marked");
                assert!(long(unit).starts_with(kept), "{unit:?}");
            }
            // So a stored event has a fixed ceiling, escapes included.
            let stored = serde_json::to_vec(&event).unwrap();
            assert!(
                stored.len() < 3 * 6 * MAX_TEXT_BYTES + 512,
                "{}",
                stored.len()
            );
        }
        let short = AuditEvent::new(
            id,
            org,
            NewEvent {
                action: Action::AccessDenied,
                key_id: None,
                actor: Actor::Operator,
                client: Some("127.0.0.1".into()),
                outcome: "x".repeat(MAX_TEXT_BYTES),
            },
            GENESIS,
        );
        assert_eq!(
            short.outcome,
            "x".repeat(MAX_TEXT_BYTES),
            "text at the limit is kept whole"
        );
        assert_eq!(short.client_address.as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn removed_event_is_found() {
        let mut events = chain(4);
        events.remove(1);
        assert_eq!(check(&events).unwrap_err().index, 1);
    }
}
