//! The change feed: every change to what is published, as numbered events in
//! the order the changes took effect, kept in one bounded ring that every
//! subscriber reads by cursor (`GET /v1/events`, and followers).
//!
//! Events are numbered where the `registry` applies a change, under
//! its lock, so their order is the order the changes took effect. Ids start
//! at this process's start time in microseconds, so that an id of an
//! earlier run of the same server is older than every id of this one (a
//! subscriber that resumes with it gets a `reset`). The ring keeps the last
//! [`RING_EVENTS`] events of the last [`RING_AGE`]; a subscriber whose
//! cursor falls out of it starts over from a `reset`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::keys::{KeyId, OrgId, PublicKeyRecord};

/// The most events a subscriber can resume after.
pub const RING_EVENTS: usize = 10_000;
/// The oldest event a subscriber can resume after.
pub const RING_AGE: Duration = Duration::from_secs(600);

/// Why a key stopped verifying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Deleted,
    Disabled,
    Expired,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Deleted => "deleted",
            Reason::Disabled => "disabled",
            Reason::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Reason> {
        match text {
            "deleted" => Some(Reason::Deleted),
            "disabled" => Some(Reason::Disabled),
            "expired" => Some(Reason::Expired),
            _ => None,
        }
    }
}

/// What changed.
#[derive(Debug, Clone)]
pub enum Change {
    /// A key started verifying, or its published record changed.
    Published(Arc<PublicKeyRecord>),
    /// A key stopped verifying.
    Withdrawn {
        org: OrgId,
        kid: KeyId,
        reason: Reason,
    },
    /// A key that does not verify changed: deleted, or its refusal or
    /// expiry changed. The feed's contract has a change to a key that is
    /// not published be no event, so only streams that ask for these
    /// (followers, with `?withheld=true`) receive them, as `event: held`:
    /// a follower then refuses such a key's tokens as the server does.
    Held(Held),
    /// Everything may have changed (storage recovered): every subscriber
    /// starts over from a `reset`.
    Reset,
}

impl Change {
    /// The organisation the change is about (none for a reset).
    pub fn org(&self) -> Option<&OrgId> {
        match self {
            Change::Published(r) => Some(&r.org),
            Change::Withdrawn { org, .. } => Some(org),
            Change::Held(held) => Some(&held.org),
            Change::Reset => None,
        }
    }
}

/// One numbered change.
#[derive(Debug)]
pub struct Event {
    pub id: u64,
    pub change: Change,
    /// When it was numbered.
    pub at: Instant,
    /// The store version through which this instance had applied every
    /// change when this one was numbered: a follower that has applied
    /// every event before this one has every change up to that version.
    pub applied_before: u64,
    /// Its wire form, rendered once for every subscriber.
    pub rendered: OnceLock<Bytes>,
}

/// Where a cursor stands in the ring.
pub enum After {
    /// The events after it (possibly none).
    Events(Vec<Arc<Event>>),
    /// Not in the ring (too old, unknown, or in the future): start over.
    Gone,
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    /// The id of the latest event (the first id minus one before any).
    last: u64,
}

/// The ring of recent events, the subscriber count and the wake-up of
/// subscribers.
pub struct Feed {
    ring: Mutex<Ring>,
    /// The ring's `last`, readable without its lock: a stream that stands
    /// at it (every idle stream, at every heartbeat) takes no lock.
    last: AtomicU64,
    /// The first id of this run minus one.
    base: u64,
    latest: watch::Sender<u64>,
    subscribers: Arc<Semaphore>,
    /// This process's id: ids of another run mean nothing here.
    run: String,
}

impl Feed {
    pub fn new(max_subscribers: usize) -> Feed {
        let base = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros(),
        )
        .unwrap_or(0);
        Feed {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                last: base,
            }),
            last: AtomicU64::new(base),
            base,
            latest: watch::channel(base).0,
            subscribers: Arc::new(Semaphore::new(max_subscribers)),
            run: ulid::Ulid::new().to_string(),
        }
    }

    /// Numbers `change` and wakes the subscribers; called by the owner of
    /// what is published, under its lock. Its id.
    pub fn emit(&self, change: Change, applied_before: u64) -> u64 {
        let mut ring = self.lock();
        ring.last += 1;
        let id = ring.last;
        let now = Instant::now();
        ring.events.push_back(Arc::new(Event {
            id,
            change,
            at: now,
            applied_before,
            rendered: OnceLock::new(),
        }));
        prune(&mut ring, now);
        self.last.store(id, Ordering::Release);
        drop(ring);
        self.latest.send_replace(id);
        id
    }

    /// The id of the latest event.
    pub fn latest(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// This process's run id.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The events after `cursor`, at most `max`; `Gone` if `cursor` is not
    /// the latest id nor one whose successor is still in the ring.
    pub fn after(&self, cursor: u64, max: usize) -> After {
        // Numbered after this look: the emitter wakes the subscribers.
        if cursor == self.last.load(Ordering::Acquire) {
            return After::Events(Vec::new());
        }
        let mut ring = self.lock();
        prune(&mut ring, Instant::now());
        if cursor < self.base || cursor > ring.last {
            return After::Gone;
        }
        if cursor == ring.last {
            return After::Events(Vec::new());
        }
        let Some(first) = ring.events.front().map(|e| e.id) else {
            return After::Gone;
        };
        if cursor + 1 < first {
            return After::Gone;
        }
        let skip = usize::try_from(cursor + 1 - first).unwrap_or(usize::MAX);
        After::Events(ring.events.iter().skip(skip).take(max).cloned().collect())
    }

    /// Wakes whoever holds it when an event is numbered.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// A place among the subscribers, if one is free.
    pub fn subscribe(&self) -> Option<OwnedSemaphorePermit> {
        self.subscribers.clone().try_acquire_owned().ok()
    }

    /// For a follower that has applied every event up to `acked`: the
    /// store version through which it has every change (`None` when it
    /// has every event, so it is as current as this instance).
    pub fn applied_by(&self, acked: u64) -> Option<u64> {
        let ring = self.lock();
        if acked >= ring.last {
            return None;
        }
        match ring.events.front() {
            Some(first) if acked + 1 >= first.id => {
                let skip = usize::try_from(acked + 1 - first.id).unwrap_or(usize::MAX);
                Some(ring.events.get(skip).map_or(0, |e| e.applied_before))
            }
            // Behind the ring: nothing is known of what it has.
            _ => Some(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().expect("feed lock poisoned")
    }
}

/// Drops events beyond the ring's size or age.
fn prune(ring: &mut Ring, now: Instant) {
    while ring.events.len() > RING_EVENTS
        || ring
            .events
            .front()
            .is_some_and(|e| now.duration_since(e.at) > RING_AGE)
    {
        ring.events.pop_front();
    }
}

/// A key that exists but does not verify (disabled or expired), as a
/// `reset` lists it: a follower that starts from the `reset` answers its
/// tokens `key_disabled` or `key_expired`, as the server does, rather than
/// `unknown_key`. In an `event: held`, also a withheld key deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub org: OrgId,
    pub kid: KeyId,
    /// `Disabled` or `Expired`; `Deleted` only in an `event: held`.
    pub reason: Reason,
    /// When a disabled key expires (seconds since the epoch), if it does:
    /// its tokens are `key_expired` from then on.
    pub expires_at: Option<u64>,
}

/// The published and withheld keys as they stand at one event (a `reset`).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The id of the latest event.
    pub version: u64,
    pub keys: Vec<PublicKeyRecord>,
    pub withheld: Vec<Held>,
}

/// What a stream needs of the owner of what is published (the registry):
/// its feed, and the published and withheld keys as they stand at an event.
pub trait Snapshots: Send + Sync {
    fn feed(&self) -> &Feed;

    /// The latest event id and the keys as they stand at it, of one
    /// organisation or all.
    fn snapshot(&self, org: Option<&OrgId>) -> Snapshot;
}

/// What a stream of the feed reads: the published keys (for `reset`),
/// their feed, and how fresh this server is (for `fresh`).
pub struct Source {
    pub(crate) published: Arc<dyn Snapshots>,
    pub(crate) fresh: Arc<crate::freshness::Freshness>,
}

impl Source {
    pub fn feed(&self) -> &Feed {
        self.published.feed()
    }

    /// `event: reset` with the whole current set of `org` (or of all),
    /// and the id it stands at; with `withheld` (a follower's stream), the
    /// keys that exist but do not verify too, which only an organisation's
    /// authenticated list shows anyone else.
    pub fn reset(&self, org: Option<&OrgId>, withheld: bool) -> (u64, Bytes) {
        let snapshot = self.published.snapshot(org);
        let keys: Vec<serde_json::Value> = snapshot.keys.iter().map(key_json).collect();
        let mut data = serde_json::json!({
            "version": snapshot.version,
            "run": self.feed().run(),
            "keys": keys,
        });
        if withheld {
            let held: Vec<serde_json::Value> = snapshot.withheld.iter().map(held_json).collect();
            data["withheld"] = held.into();
        }
        (
            snapshot.version,
            frame(Some(snapshot.version), "reset", &data),
        )
    }

    /// `event: fresh`: the id `version` this stream stands at, and the
    /// time up to which this server knows every change.
    pub fn fresh(&self, version: u64) -> Bytes {
        let now = crate::keys::now_ms();
        let as_of = self
            .fresh
            .stale_for()
            .map(|d| rfc3339_ms(now.saturating_sub(d.as_millis() as u64)));
        let data = serde_json::json!({ "version": version, "freshAsOf": as_of });
        frame(None, "fresh", &data)
    }

    /// How long ago this server was last fresh, if ever.
    pub fn stale_for(&self) -> Option<Duration> {
        self.fresh.stale_for()
    }

    /// Whether this server may vouch for revocations now.
    pub fn vouches(&self) -> bool {
        self.fresh.vouch().is_ok()
    }
}

/// RFC 3339 UTC with milliseconds.
fn rfc3339_ms(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `{"org", "kid", "jwk", "key"}` of a published key.
fn key_json(r: &PublicKeyRecord) -> serde_json::Value {
    serde_json::json!({
        "org": r.org,
        "kid": r.id,
        "jwk": crate::keys::Jwk::from_record(r),
        "key": crate::keys::KeyView::new(r),
    })
}

/// `{"org", "kid", "reason", "expiresAt"?}` of a withheld key.
fn held_json(h: &Held) -> serde_json::Value {
    let mut held = serde_json::json!({
        "org": h.org,
        "kid": h.kid,
        "reason": h.reason.as_str(),
    });
    if let Some(at) = h.expires_at {
        held["expiresAt"] = crate::keys::rfc3339(at.saturating_mul(1000)).into();
    }
    held
}

/// One event on the wire.
fn frame(id: Option<u64>, event: &str, data: &serde_json::Value) -> Bytes {
    let mut out = String::new();
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    out.push_str(&format!("event: {event}\ndata: {data}\n\n"));
    Bytes::from(out)
}

impl Event {
    /// Its wire form (nothing for a reset marker, which each stream turns
    /// into its own `reset`).
    pub fn wire(&self) -> &Bytes {
        self.rendered.get_or_init(|| match &self.change {
            Change::Published(r) => frame(Some(self.id), "published", &key_json(r)),
            Change::Withdrawn { org, kid, reason } => frame(
                Some(self.id),
                "withdrawn",
                &serde_json::json!({"org": org, "kid": kid, "reason": reason.as_str()}),
            ),
            Change::Held(held) => frame(Some(self.id), "held", &held_json(held)),
            Change::Reset => Bytes::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn withdrawn() -> Change {
        Change::Withdrawn {
            org: OrgId::parse("acme").unwrap(),
            kid: KeyId::new(ulid::Ulid::new()),
            reason: Reason::Deleted,
        }
    }

    fn ids(after: After) -> Option<Vec<u64>> {
        match after {
            After::Events(events) => Some(events.iter().map(|e| e.id).collect()),
            After::Gone => None,
        }
    }

    #[test]
    fn cursors_resume_within_the_ring_and_start_over_outside_it() {
        let feed = Feed::new(1);
        let start = feed.latest();
        assert_eq!(ids(feed.after(start, 10)), Some(vec![]));
        let a = feed.emit(withdrawn(), 0);
        let b = feed.emit(withdrawn(), 0);
        assert_eq!(b, a + 1);
        assert_eq!(ids(feed.after(start, 10)), Some(vec![a, b]));
        assert_eq!(ids(feed.after(a, 10)), Some(vec![b]));
        assert_eq!(ids(feed.after(b, 10)), Some(vec![]));
        assert!(ids(feed.after(b + 1, 10)).is_none(), "future");
        assert!(ids(feed.after(start - 1, 10)).is_none(), "another run");
        for _ in 0..RING_EVENTS {
            feed.emit(withdrawn(), 0);
        }
        assert!(ids(feed.after(a, 10)).is_none(), "fell out of the ring");
        assert_eq!(ids(feed.after(b, 2)).map(|v| v.len()), Some(2));
        assert!(feed.subscribe().is_some_and(|p| {
            let none = feed.subscribe().is_none();
            drop(p);
            none
        }));
    }

    #[test]
    fn a_lagging_follower_has_what_preceded_its_first_missing_event() {
        let feed = Feed::new(1);
        let start = feed.latest();
        let a = feed.emit(withdrawn(), 7);
        let b = feed.emit(withdrawn(), 9);
        assert_eq!(feed.applied_by(start), Some(7));
        assert_eq!(feed.applied_by(a), Some(9));
        assert_eq!(feed.applied_by(b), None);
    }
}
