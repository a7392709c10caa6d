//! What is derived from each key's state: whether it is published (in the
//! JWK Sets, for the verifier) or withheld (disabled or expired, so its
//! tokens get `key_disabled` or `key_expired` rather than `unknown_key`),
//! and the one timer that withdraws each key at the second it expires.
//!
//! The timer sleeps until the earliest expiry, and is woken early when a
//! change sets an earlier one; it is not a poll over the keys. It also
//! wakes at least every [`MAX_SLEEP`] so that a change of the wall clock
//! is noticed. The verifier compares a key's expiry with the clock at every
//! verification as well, so a late timer delays only the JWK Sets, never a
//! refusal.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::ServiceError;
use crate::events::{Change, Feed, Reason};
use crate::jwks::Jwks;
use crate::keys::{now_secs, rfc3339, Jwk, KeyId, KeyState, OrgId, PublicKeyRecord};
use crate::verify::{KeyMaterial, KeySource, KeySourceError, Verifier, Withheld};

/// The longest the expiry timer sleeps without looking at the clock again.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How long keys live: `keys.max_lifetime` and `keys.default_lifetime`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetimes {
    pub max: Option<Duration>,
    pub default: Option<Duration>,
}

impl Lifetimes {
    /// The expiry of a key created at `now` that asked for `requested`
    /// (seconds since the epoch): in the future and within the cap. Without
    /// a request, the default lifetime applies, or else the cap.
    pub fn expiry(&self, requested: Option<u64>, now: u64) -> Result<Option<u64>, ServiceError> {
        let time = |secs: u64| rfc3339(secs.saturating_mul(1000));
        let cap = self.max.map(|max| (max, now.saturating_add(max.as_secs())));
        match requested {
            Some(at) if at <= now => Err(ServiceError::Lifetime(format!(
                "expiresAt {} is not in the future",
                time(at)
            ))),
            Some(at) => match cap {
                Some((max, latest)) if at > latest => Err(ServiceError::Lifetime(format!(
                    "expiresAt {} is beyond keys.max_lifetime ({}): the latest allowed now is {}",
                    time(at),
                    whole_units(max),
                    time(latest)
                ))),
                _ => Ok(Some(at)),
            },
            None => Ok(self
                .default
                .or(self.max)
                .map(|life| now.saturating_add(life.as_secs()))),
        }
    }
}

/// A duration in the largest whole unit that fits (`90d`, `36h`, `90s`).
fn whole_units(d: Duration) -> String {
    let secs = d.as_secs();
    [(86_400, "d"), (3_600, "h"), (60, "m")]
        .into_iter()
        .find(|(unit, _)| secs % unit == 0 && secs > 0)
        .map_or(format!("{secs}s"), |(unit, name)| {
            format!("{}{name}", secs / unit)
        })
}

/// The keys' derived state; also the verifier's key source.
///
/// Each change carries the version it committed at, on every backend
/// (docs/api.md, "Order"). Changes reach memory after their commit, outside the
/// store's lock, so they can arrive out of order: two requests racing on
/// one key, or, on a shared store, this instance's own writes and the
/// cluster follower's reads of what others wrote. So every key changed
/// since start remembers the version of the change applied last, and an
/// older one is skipped: a rename that committed before a disable never
/// brings the disabled key back.
pub(crate) struct Published {
    jwks: Arc<Jwks>,
    /// Whether this instance may vouch that it has seen every change.
    fresh: Arc<crate::freshness::Freshness>,
    inner: Mutex<Inner>,
    /// Wakes the timer when an earlier expiry is set.
    wake: Notify,
    /// The change feed: each change that alters what is published is
    /// numbered here, under `inner`'s lock.
    feed: Arc<Feed>,
}

#[derive(Default)]
struct Inner {
    /// Keys that exist but may not verify.
    withheld: HashMap<KeyId, Withheld>,
    /// Expiries of keys not yet expired, earliest first. An entry may be
    /// stale (the key was deleted, or its expiry moved earlier, never
    /// later); the timer skips those.
    schedule: BTreeSet<(u64, KeyId, OrgId)>,
    /// The version of the change applied last to each key changed here
    /// since start ([`DELETED`] once deleted). Keys untouched since start
    /// have no entry: everything read at start predates any change here.
    versions: HashMap<KeyId, u64>,
}

/// The version a deleted key is remembered at: no change comes after it.
const DELETED: u64 = u64::MAX;

impl Published {
    /// `max_subscribers`: the most streams of the change feed at once.
    pub(crate) fn new(
        jwks: Arc<Jwks>,
        fresh: Arc<crate::freshness::Freshness>,
        max_subscribers: usize,
    ) -> Published {
        Published {
            jwks,
            fresh,
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            feed: Arc::new(Feed::new(max_subscribers)),
        }
    }

    /// The change feed of what is published here.
    pub(crate) fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// The latest event id and the published keys as they stand at it,
    /// of one organisation or all (a feed's `reset`).
    pub(crate) fn snapshot(&self, org: Option<&OrgId>) -> (u64, Vec<PublicKeyRecord>) {
        let inner = self.lock();
        let version = self.feed.latest();
        let records = self.jwks.records(org);
        drop(inner);
        (version, records)
    }

    /// Numbers a change in the feed; call with `inner` locked.
    fn emit(&self, change: Change) {
        self.feed.emit(change, self.fresh.applied());
    }

    /// A follower's whole view replaced by what its upstream publishes
    /// (a `reset`): unlike [`Published::reset`], this is the truth, so a
    /// key withdrawn here and published upstream is published again. A
    /// key deleted here stays deleted.
    pub(crate) fn replace(&self, records: &[PublicKeyRecord], verifier: &Verifier) {
        let mut inner = self.lock();
        *inner = Inner::default();
        let now = now_secs();
        let active: Vec<&PublicKeyRecord> = records
            .iter()
            .filter(|r| r.state_at(now) == KeyState::Active)
            .collect();
        for r in &active {
            inner.schedule_expiry(r, KeyState::Active);
        }
        self.jwks.replace(active);
        self.emit(Change::Reset);
        drop(inner);
        verifier.forget_all();
        self.wake.notify_one();
    }

    /// A follower's withdrawal of a published key, as its upstream
    /// announced it; whether it was published here.
    pub(crate) fn withdraw(
        &self,
        org: &OrgId,
        id: KeyId,
        reason: Reason,
        verifier: &Verifier,
    ) -> bool {
        if reason == Reason::Deleted {
            return self.remove(org, id, verifier);
        }
        let mut inner = self.lock();
        let why = match reason {
            Reason::Disabled => Withheld::Disabled,
            _ => Withheld::Expired,
        };
        inner.withheld.insert(id, why);
        let published = self.jwks.withdrawn(org, id);
        if published {
            self.emit(Change::Withdrawn {
                org: org.clone(),
                kid: id,
                reason,
            });
        }
        drop(inner);
        verifier.forget(id);
        published
    }

    /// Derives everything from `records` (at start, and after storage
    /// recovered): a key that expired meanwhile is expired now.
    pub(super) fn reset(&self, records: &[PublicKeyRecord], verifier: &Verifier) {
        let mut inner = self.lock();
        // What was applied here stays newer than this read may be.
        let versions = std::mem::take(&mut inner.versions);
        *inner = Inner {
            versions,
            ..Inner::default()
        };
        let now = now_secs();
        for r in records {
            let state = r.state_at(now);
            match state {
                KeyState::Active => {}
                KeyState::Disabled => {
                    inner.withheld.insert(r.id, Withheld::Disabled);
                }
                KeyState::Expired => {
                    inner.withheld.insert(r.id, Withheld::Expired);
                }
            }
            inner.schedule_expiry(r, state);
        }
        // Not cloned: at a million keys a copy of every record is half a
        // gigabyte that the allocator keeps.
        let active = |r: &&PublicKeyRecord| r.state_at(now) == KeyState::Active;
        self.jwks.reset(records.iter().filter(active));
        self.emit(Change::Reset);
        drop(inner);
        verifier.forget_all();
        self.wake.notify_one();
    }

    /// Publishes or withholds `record` as its state is now, the state the
    /// change of `version` left it in (0: a record of unknown version,
    /// applied only if no versioned change was), then makes the verifier forget
    /// what it cached of it (its expiry may have moved). A change older
    /// than one applied already is skipped. Whether the key is new here.
    pub(crate) fn publish(
        &self,
        record: &PublicKeyRecord,
        version: u64,
        verifier: &Verifier,
    ) -> bool {
        self.publish_all(&[record], version, verifier)[0]
    }

    /// [`Published::publish`] of every record of one change (a rotation's
    /// two keys) under one lock, so that their events are consecutive.
    pub(crate) fn publish_all(
        &self,
        records: &[&PublicKeyRecord],
        version: u64,
        verifier: &Verifier,
    ) -> Vec<bool> {
        let mut inner = self.lock();
        let mut news = Vec::with_capacity(records.len());
        let mut earlier = false;
        for record in records {
            let (new, sooner) = self.apply(&mut inner, record, version);
            news.push(new);
            earlier |= sooner;
        }
        drop(inner);
        for record in records {
            verifier.forget(record.id);
        }
        if earlier {
            self.wake.notify_one();
        }
        news
    }

    /// Applies one record with `inner` locked: whether the key is new here,
    /// and whether it set an earlier expiry.
    fn apply(&self, inner: &mut Inner, record: &PublicKeyRecord, version: u64) -> (bool, bool) {
        if !inner.is_newer(record.id, version) {
            return (false, false);
        }
        let was = self.jwks.contains(record.id);
        let new = !was && !inner.withheld.contains_key(&record.id);
        let state = record.state_at(now_secs());
        match state {
            // Published before it stops being withheld, so that a
            // verification in between finds it one way or the other.
            KeyState::Active => {
                let same = was && self.jwks.record(record.id).as_ref() == Some(record);
                if self.jwks.added(record) || (was && !same) {
                    self.emit(Change::Published(Arc::new(record.clone())));
                }
                inner.withheld.remove(&record.id);
            }
            // Withheld before it is unpublished, likewise.
            KeyState::Disabled | KeyState::Expired => {
                let why = match state {
                    KeyState::Disabled => Withheld::Disabled,
                    _ => Withheld::Expired,
                };
                inner.withheld.insert(record.id, why);
                if self.jwks.withdrawn(&record.org, record.id) {
                    let reason = match why {
                        Withheld::Disabled => Reason::Disabled,
                        _ => Reason::Expired,
                    };
                    self.emit(Change::Withdrawn {
                        org: record.org.clone(),
                        kid: record.id,
                        reason,
                    });
                }
            }
        }
        let earliest = inner.schedule.first().map(|e| e.0);
        inner.schedule_expiry(record, state);
        let earlier = inner.schedule.first().map(|e| e.0) != earliest;
        (new, earlier)
    }

    /// Whether anything is known here about key `id` (a change applied
    /// since start, or a withheld state), published or not.
    pub(crate) fn knows(&self, id: KeyId) -> bool {
        self.lock().knows(id)
    }

    /// Publishes an active `record` that a look-up of an unknown key id
    /// found in the store, unless anything is known here about the key
    /// already: the look-up may predate a change applied meanwhile. Whether
    /// it was published.
    pub(crate) fn learn(&self, record: &PublicKeyRecord) -> bool {
        let inner = self.lock();
        let known = inner.knows(record.id) || self.jwks.contains(record.id);
        let active = record.state_at(now_secs()) == KeyState::Active;
        let learned = !known && active && self.jwks.learned(record);
        if learned {
            self.emit(Change::Published(Arc::new(record.clone())));
        }
        learned
    }

    /// Forgets a deleted key everywhere, for good: no read of the store
    /// made before the delete can bring it back. Whether it was known here.
    pub(crate) fn remove(&self, org: &OrgId, id: KeyId, verifier: &Verifier) -> bool {
        let mut inner = self.lock();
        let published = self.jwks.removed(org, id);
        if published {
            self.emit(Change::Withdrawn {
                org: org.clone(),
                kid: id,
                reason: Reason::Deleted,
            });
        }
        let withheld = inner.withheld.remove(&id).is_some();
        let first = inner.versions.insert(id, DELETED) != Some(DELETED);
        drop(inner);
        // Forgotten by every remove, the first or not: a verification that
        // read the key before it was unpublished may have cached it since.
        verifier.forget(id);
        first && (published || withheld)
    }

    /// Expires every key whose expiry is at or before `now`; returns the
    /// next expiry still ahead.
    fn expire_due(&self, now: u64, verifier: &Verifier) -> Option<u64> {
        let mut inner = self.lock();
        let mut expired = Vec::new();
        while let Some(entry) = inner.schedule.first().filter(|e| e.0 <= now).cloned() {
            inner.schedule.remove(&entry);
            let (_, id, org) = entry;
            let disabled = inner.withheld.get(&id) == Some(&Withheld::Disabled);
            if disabled || self.jwks.contains(id) {
                inner.withheld.insert(id, Withheld::Expired);
                if self.jwks.withdrawn(&org, id) {
                    self.emit(Change::Withdrawn {
                        org: org.clone(),
                        kid: id,
                        reason: Reason::Expired,
                    });
                }
                expired.push(id);
            }
        }
        let next = inner.schedule.first().map(|e| e.0);
        drop(inner);
        for id in &expired {
            verifier.forget(*id);
            tracing::info!(key_id = %id, "key expired: withdrawn from the JWK Sets");
        }
        next
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("lifecycle lock poisoned")
    }
}

impl Inner {
    /// Whether a change of `id` was applied here since start, or it is
    /// withheld.
    fn knows(&self, id: KeyId) -> bool {
        self.versions.contains_key(&id) || self.withheld.contains_key(&id)
    }

    /// Whether a change of `id` at `version` is newer than what was applied
    /// here (then remembered), or of unknown version and nothing newer was.
    fn is_newer(&mut self, id: KeyId, version: u64) -> bool {
        match self.versions.get(&id) {
            Some(&seen) if seen >= version => false,
            _ => {
                if version > 0 {
                    self.versions.insert(id, version);
                }
                true
            }
        }
    }

    fn schedule_expiry(&mut self, record: &PublicKeyRecord, state: KeyState) {
        if let (Some(at), false) = (record.life.expires_at_secs, state == KeyState::Expired) {
            self.schedule.insert((at, record.id, record.org.clone()));
        }
    }
}

/// The expiry timer: sleeps until the earliest expiry (or a change that
/// sets an earlier one), withdraws what is due, and sleeps again.
pub(super) async fn expire_forever(published: Arc<Published>, verifier: Arc<Verifier>) {
    loop {
        let now_ms = crate::keys::now_ms();
        let next = published.expire_due(now_ms / 1000, &verifier);
        let sleep = next.map_or(MAX_SLEEP, |at| {
            let left = at.saturating_mul(1000).saturating_sub(now_ms);
            Duration::from_millis(left).min(MAX_SLEEP)
        });
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = published.wake.notified() => {}
        }
    }
}

/// The published keys as the verifier's key source: verification reads
/// memory only, never storage, so it keeps working while storage is down.
impl KeySource for Published {
    fn vouch(&self) -> Result<(), String> {
        self.fresh.vouch()
    }

    fn lookup(&self, id: KeyId) -> Result<Option<KeyMaterial>, KeySourceError> {
        let Some((org, jwk)) = self.jwks.key(id) else {
            return Ok(None);
        };
        let (_, algorithm, spki_der) = serde_json::from_slice::<Jwk>(&jwk)
            .map_err(|e| e.to_string())
            .and_then(|jwk| jwk.to_parts().map_err(|e| e.to_string()))
            .map_err(|cause| KeySourceError::Unparsable { id, cause })?;
        Ok(Some(KeyMaterial {
            org: Some(org),
            algorithm,
            spki_der,
        }))
    }

    fn contains(&self, id: KeyId) -> Result<bool, KeySourceError> {
        Ok(self.jwks.contains(id))
    }

    fn withheld(&self, id: KeyId) -> Option<Withheld> {
        self.lock().withheld.get(&id).copied()
    }

    fn expires_at(&self, id: KeyId) -> Option<u64> {
        self.jwks.expiry(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_older_than_one_applied_is_skipped() {
        let id = KeyId::new(ulid::Ulid::new());
        let mut inner = Inner::default();
        // (version offered, applied?) in order.
        let steps = [
            (0, true),  // a create: nothing newer was applied
            (7, true),  // this instance's own disable
            (5, false), // a read that predates it
            (7, false), // the same change read back
            (0, false), // a create's publish after a later change
            (9, true),  // an enable made elsewhere
            (DELETED, true),
            (12, false), // nothing follows a delete
        ];
        for (i, (version, applied)) in steps.into_iter().enumerate() {
            assert_eq!(inner.is_newer(id, version), applied, "step {i}");
        }
        // A record of unknown version is applied only while no versioned
        // change was, and leaves nothing remembered.
        let mut fresh = Inner::default();
        assert!(fresh.is_newer(id, 0) && fresh.is_newer(id, 0));
        assert!(fresh.versions.is_empty());
    }

    #[test]
    fn lifetimes_hold_requests_to_the_cap() {
        let day = Duration::from_secs(86_400);
        let now = 1_000_000;
        let capped = Lifetimes {
            max: Some(day * 90),
            default: Some(day),
        };
        let cap_only = Lifetimes {
            max: Some(day),
            default: None,
        };
        type Case = (Lifetimes, Option<u64>, Result<Option<u64>, &'static str>);
        let cases: &[Case] = &[
            (Lifetimes::default(), None, Ok(None)),
            (Lifetimes::default(), Some(now + 1), Ok(Some(now + 1))),
            (Lifetimes::default(), Some(now), Err("not in the future")),
            (capped, None, Ok(Some(now + 86_400))),
            (capped, Some(now + 90 * 86_400), Ok(Some(now + 90 * 86_400))),
            (
                capped,
                Some(now + 90 * 86_400 + 1),
                Err("keys.max_lifetime (90d)"),
            ),
            (cap_only, None, Ok(Some(now + 86_400))),
            (cap_only, Some(now - 5), Err("not in the future")),
        ];
        for (lifetimes, requested, expected) in cases {
            let got = lifetimes.expiry(*requested, now).map_err(|e| e.to_string());
            match (expected, got) {
                (Ok(want), Ok(got)) => assert_eq!(got, *want, "{lifetimes:?} {requested:?}"),
                (Err(needle), Err(got)) => assert!(got.contains(needle), "{got}"),
                (want, got) => panic!("{lifetimes:?} {requested:?}: {got:?}, wanted {want:?}"),
            }
        }
    }
}
