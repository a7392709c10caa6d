//! The one owner of what is published: the keys that verify (by id and by
//! organisation, with their JWK Sets), the keys withheld (disabled or
//! expired, so their tokens get `key_disabled` or `key_expired` rather than
//! `unknown_key`), each changed key's last applied version and the keys
//! deleted here (tombstones), the schedule of expiries, and the numbering
//! of every change into the change feed (`events`).
//!
//! Every change enters through a method here, which drops a change older
//! than the key's last applied version: the order of changes to one key is
//! the order they committed, whichever path brought them (this instance's
//! own write, the replica's re-read of the store, a follower's upstream,
//! a look-up of an unknown key). `jwks` only renders the published keys as
//! documents; nothing but the registry changes them.
//!
//! One timer withdraws each key at the second it expires: it sleeps until
//! the earliest expiry, and is woken early when a change sets an earlier
//! one; it is not a poll over the keys. It also wakes at least every
//! [`MAX_SLEEP`] so that a change of the wall clock is noticed. The
//! verifier compares a key's expiry with the clock at every verification
//! as well, so a late timer delays only the JWK Sets, never a refusal.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::events::{Change, Feed, Held, Reason, Snapshot};
use crate::freshness::Freshness;
use crate::jwks::{Document, Jwks, Loading};
use crate::keys::{now_secs, Jwk, KeyId, KeyState, OrgId, PublicKeyRecord};
use crate::verify::{KeyMaterial, KeySource, KeySourceError, Verifier, Withheld};

/// The longest the expiry timer sleeps without looking at the clock again.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// What is published, withheld and scheduled to expire; also the
/// verifier's key source.
///
/// Each change carries the version it committed at, on every backend
/// (docs/api.md, "Order"). Changes reach memory after their commit, outside the
/// store's lock, so they can arrive out of order: two requests racing on
/// one key, or, on a shared store, this instance's own writes and the
/// cluster follower's reads of what others wrote. So every key changed
/// since start remembers the version of the change applied last, and an
/// older one is skipped: a rename that committed before a disable never
/// brings the disabled key back.
pub struct Registry {
    /// The published keys and their documents: mutated here only.
    jwks: Jwks,
    /// Whether this instance may vouch that it has seen every change.
    fresh: Arc<Freshness>,
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
    withheld: HashMap<KeyId, Hold>,
    /// Keys withdrawn here (disabled, expired) and not published again
    /// here: a stale read of the store, by the replica or an unknown-key
    /// look-up, must not publish one again (see [`Registry::learn`]), nor
    /// may a re-read of the whole store after it recovered.
    withdrawn: HashSet<KeyId>,
    /// Expiries of keys not yet expired, earliest first. An entry may be
    /// stale (the key was deleted, or its expiry moved earlier, never
    /// later); the timer skips those.
    schedule: BTreeSet<(u64, KeyId, OrgId)>,
    /// The version of the change applied last to each key changed here
    /// since start ([`DELETED`] once deleted). Keys untouched since start
    /// have no entry: everything read at start predates any change here.
    versions: HashMap<KeyId, u64>,
}

/// Why a key is withheld, and what a feed's `reset` says of it.
#[derive(Debug, Clone)]
struct Hold {
    why: Withheld,
    org: OrgId,
    /// When it expires, if it does (a disabled key becomes expired then).
    expires_at: Option<u64>,
}

/// The version a deleted key is remembered at: no change comes after it.
const DELETED: u64 = u64::MAX;

/// A read of every stored key, taken in a batch at a time (so that the
/// records read never all exist at once), for [`Registry::reset`]: the
/// active keys to publish, the withheld ones, the expiries ahead.
pub struct Reading {
    /// When the read began: each key's state is its state then.
    now: u64,
    read: usize,
    active: Loading,
    withheld: HashMap<KeyId, Hold>,
    schedule: BTreeSet<(u64, KeyId, OrgId)>,
}

impl Default for Reading {
    fn default() -> Reading {
        Reading {
            now: now_secs(),
            read: 0,
            active: Loading::default(),
            withheld: HashMap::new(),
            schedule: BTreeSet::new(),
        }
    }
}

impl Reading {
    /// A reading of `records`.
    pub fn of(records: Vec<PublicKeyRecord>) -> Reading {
        let mut reading = Reading::default();
        reading.add(records);
        reading
    }

    /// Takes in the next batch of records.
    pub fn add(&mut self, batch: Vec<PublicKeyRecord>) {
        self.read += batch.len();
        for r in &batch {
            let state = r.state_at(self.now);
            let why = match state {
                KeyState::Active => {
                    self.active.add(r);
                    None
                }
                KeyState::Disabled => Some(Withheld::Disabled),
                KeyState::Expired => Some(Withheld::Expired),
            };
            if let Some(why) = why {
                let hold = Hold {
                    why,
                    org: r.org.clone(),
                    expires_at: r.life.expires_at_secs,
                };
                self.withheld.insert(r.id, hold);
            }
            self.schedule.extend(expiry(r, state));
        }
    }

    /// How many records were read.
    pub fn len(&self) -> usize {
        self.read
    }

    pub fn is_empty(&self) -> bool {
        self.read == 0
    }
}

impl Registry {
    /// `max_subscribers`: the most streams of the change feed at once.
    pub fn new(fresh: Arc<Freshness>, max_subscribers: usize) -> Registry {
        Registry {
            jwks: Jwks::new(&[]),
            fresh,
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            feed: Arc::new(Feed::new(max_subscribers)),
        }
    }

    /// The change feed of what is published here.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// The latest event id and the published and withheld keys as they
    /// stand at it, of one organisation or all (a feed's `reset`).
    pub fn snapshot(&self, org: Option<&OrgId>) -> Snapshot {
        let inner = self.lock();
        let version = self.feed.latest();
        let keys = self.jwks.records(org);
        let withheld = inner
            .withheld
            .iter()
            .filter(|(_, hold)| org.is_none_or(|org| *org == hold.org))
            .map(|(&kid, hold)| Held {
                org: hold.org.clone(),
                kid,
                reason: match hold.why {
                    Withheld::Disabled => Reason::Disabled,
                    Withheld::Expired => Reason::Expired,
                },
                expires_at: hold.expires_at.filter(|_| hold.why == Withheld::Disabled),
            })
            .collect();
        drop(inner);
        Snapshot {
            version,
            keys,
            withheld,
        }
    }

    /// Numbers a change in the feed; call with `inner` locked.
    fn emit(&self, change: Change) {
        self.feed.emit(change, self.fresh.applied());
    }

    /// A follower's whole view replaced by what its upstream publishes
    /// and withholds (a `reset`): unlike [`Registry::reset`], this is the
    /// truth, so a key withdrawn here and published upstream is published
    /// again. A key deleted here stays deleted. A withheld key (or a
    /// published one past its expiry) answers `key_disabled` or
    /// `key_expired` here as it does upstream.
    pub fn replace(&self, records: &[PublicKeyRecord], withheld: &[Held], verifier: &Verifier) {
        let mut inner = self.lock();
        let mut tombstones = std::mem::take(&mut inner.versions);
        tombstones.retain(|_, version| *version == DELETED);
        *inner = Inner {
            versions: tombstones,
            ..Inner::default()
        };
        let now = now_secs();
        for held in withheld {
            inner.hold_as_announced(held, now);
        }
        let mut active = Vec::with_capacity(records.len());
        for r in records {
            if inner.is_deleted(r.id) {
                continue;
            }
            inner.withheld.remove(&r.id);
            match r.state_at(now) {
                KeyState::Active => active.push(r),
                _ => {
                    let expires_at = r.life.expires_at_secs;
                    inner.withhold(r.id, &r.org, Withheld::Expired, expires_at);
                }
            }
        }
        for r in &active {
            inner.schedule_expiry(r, KeyState::Active);
        }
        self.jwks.replace(active);
        self.emit(Change::Reset);
        drop(inner);
        verifier.forget_all();
        self.wake.notify_one();
    }

    /// A follower's change to a key its upstream withholds, as the
    /// upstream announced it (`event: held`): deleted, or refused for
    /// another reason or until another time. Whether a key known here was
    /// deleted.
    pub fn held(&self, held: &Held, verifier: &Verifier) -> bool {
        if held.reason == Reason::Deleted {
            return self.remove(&held.org, held.kid, verifier);
        }
        let mut inner = self.lock();
        let earliest = inner.schedule.first().map(|e| e.0);
        inner.hold_as_announced(held, now_secs());
        let earlier = inner.schedule.first().map(|e| e.0) != earliest;
        // Published here only if an event was missed; unpublished anyway.
        if inner.withdrawn(&self.jwks, &held.org, held.kid) {
            self.emit(Change::Withdrawn {
                org: held.org.clone(),
                kid: held.kid,
                reason: held.reason,
            });
        }
        drop(inner);
        verifier.forget(held.kid);
        if earlier {
            self.wake.notify_one();
        }
        false
    }

    /// A follower's withdrawal of a published key, as its upstream
    /// announced it; whether it was published here.
    pub fn withdraw(&self, org: &OrgId, id: KeyId, reason: Reason, verifier: &Verifier) -> bool {
        if reason == Reason::Deleted {
            return self.remove(org, id, verifier);
        }
        let mut inner = self.lock();
        let why = match reason {
            Reason::Disabled => Withheld::Disabled,
            _ => Withheld::Expired,
        };
        let expires_at = self
            .jwks
            .expiry(id)
            .or_else(|| inner.withheld.get(&id).and_then(|hold| hold.expires_at));
        inner.withhold(id, org, why, expires_at);
        let published = inner.withdrawn(&self.jwks, org, id);
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

    /// Derives everything from what `reading` took in (at start, and after
    /// storage recovered): a key that expired meanwhile is expired now.
    pub fn reset(&self, reading: Reading, verifier: &Verifier) {
        let Reading {
            active,
            withheld,
            schedule,
            ..
        } = reading;
        let mut inner = self.lock();
        // What was applied here stays newer than this read may be.
        let versions = std::mem::take(&mut inner.versions);
        let withdrawn = std::mem::take(&mut inner.withdrawn);
        *inner = Inner {
            versions,
            withdrawn,
            withheld,
            schedule,
        };
        // Not a key deleted or withdrawn here: this read may predate that.
        let keep = |id| !inner.is_deleted(id) && !inner.withdrawn.contains(&id);
        self.jwks.replace_loaded(active, keep);
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
    pub fn publish(&self, record: &PublicKeyRecord, version: u64, verifier: &Verifier) -> bool {
        self.publish_all(&[record], version, verifier)[0]
    }

    /// [`Registry::publish`] of every record of one change (a rotation's
    /// two keys) under one lock, so that their events are consecutive.
    pub fn publish_all(
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
                if inner.added(&self.jwks, record) || (was && !same) {
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
                let expires_at = record.life.expires_at_secs;
                let before = inner.withhold(record.id, &record.org, why, expires_at);
                let reason = match why {
                    Withheld::Disabled => Reason::Disabled,
                    _ => Reason::Expired,
                };
                if inner.withdrawn(&self.jwks, &record.org, record.id) {
                    self.emit(Change::Withdrawn {
                        org: record.org.clone(),
                        kid: record.id,
                        reason,
                    });
                } else if before.is_none_or(|b| b.why != why || b.expires_at != expires_at) {
                    // Withheld already, now otherwise: followers only.
                    self.emit(Change::Held(Held {
                        org: record.org.clone(),
                        kid: record.id,
                        reason,
                        expires_at: expires_at.filter(|_| why == Withheld::Disabled),
                    }));
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
    pub fn knows(&self, id: KeyId) -> bool {
        self.lock().knows(id)
    }

    /// Publishes an active `record` that a look-up of an unknown key id
    /// found in the store, unless anything is known here about the key
    /// already: the look-up may predate a change applied meanwhile. Whether
    /// it was published.
    pub fn learn(&self, record: &PublicKeyRecord) -> bool {
        let inner = self.lock();
        let known = inner.knows(record.id) || self.jwks.contains(record.id);
        let active = record.state_at(now_secs()) == KeyState::Active;
        // A key deleted or withdrawn here is not published: that read may
        // predate the change.
        let stale = inner.is_deleted(record.id) || inner.withdrawn.contains(&record.id);
        let learned = !known && active && !stale && self.jwks.added(record);
        if learned {
            self.emit(Change::Published(Arc::new(record.clone())));
        }
        learned
    }

    /// Forgets a deleted key everywhere, for good: no read of the store
    /// made before the delete can bring it back. Whether it was known here.
    pub fn remove(&self, org: &OrgId, id: KeyId, verifier: &Verifier) -> bool {
        let mut inner = self.lock();
        let first = inner.versions.insert(id, DELETED) != Some(DELETED);
        let published = self.jwks.removed(org, id);
        let withheld = inner.withheld.remove(&id).is_some();
        if published {
            self.emit(Change::Withdrawn {
                org: org.clone(),
                kid: id,
                reason: Reason::Deleted,
            });
        } else if withheld {
            // Not published: an event for followers only.
            self.emit(Change::Held(Held {
                org: org.clone(),
                kid: id,
                reason: Reason::Deleted,
                expires_at: None,
            }));
        }
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
            let (at, id, org) = entry;
            let disabled = inner
                .withheld
                .get(&id)
                .is_some_and(|hold| hold.why == Withheld::Disabled);
            if disabled || self.jwks.contains(id) {
                inner.withhold(id, &org, Withheld::Expired, Some(at));
                if inner.withdrawn(&self.jwks, &org, id) {
                    self.emit(Change::Withdrawn {
                        org: org.clone(),
                        kid: id,
                        reason: Reason::Expired,
                    });
                } else {
                    // A disabled key's expiry: followers need not trust
                    // their own clocks for it.
                    self.emit(Change::Held(Held {
                        org: org.clone(),
                        kid: id,
                        reason: Reason::Expired,
                        expires_at: None,
                    }));
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
    /// Withholds key `id` of `org` (it exists but may not verify); how it
    /// was withheld before, if it was.
    fn withhold(
        &mut self,
        id: KeyId,
        org: &OrgId,
        why: Withheld,
        expires_at: Option<u64>,
    ) -> Option<Hold> {
        let hold = Hold {
            why,
            org: org.clone(),
            expires_at,
        };
        self.withheld.insert(id, hold)
    }

    /// Withholds a key as a follower's upstream announced it (in a `reset`
    /// or an `event: held`), expired if its expiry has passed meanwhile; a
    /// key deleted here stays deleted.
    fn hold_as_announced(&mut self, held: &Held, now: u64) {
        if self.is_deleted(held.kid) {
            return;
        }
        let expired = held.expires_at.is_some_and(|at| now >= at);
        let why = match held.reason {
            Reason::Disabled if !expired => Withheld::Disabled,
            Reason::Disabled | Reason::Expired => Withheld::Expired,
            // Not withheld: unknown, as everywhere.
            Reason::Deleted => return,
        };
        self.withhold(held.kid, &held.org, why, held.expires_at);
        if let (Withheld::Disabled, Some(at)) = (why, held.expires_at) {
            self.schedule.insert((at, held.kid, held.org.clone()));
        }
    }

    /// Whether `id` was deleted here: no change comes after that.
    fn is_deleted(&self, id: KeyId) -> bool {
        self.versions.get(&id) == Some(&DELETED)
    }

    /// Publishes `record` (again, if it was: its expiry may have changed);
    /// whether it was not published yet. A deleted key is not published
    /// again.
    fn added(&mut self, jwks: &Jwks, record: &PublicKeyRecord) -> bool {
        if self.is_deleted(record.id) {
            return false;
        }
        self.withdrawn.remove(&record.id);
        jwks.added(record)
    }

    /// Unpublishes key `id` of `org` until it is published again here (a
    /// disabled or expired key); whether it was published.
    fn withdrawn(&mut self, jwks: &Jwks, org: &OrgId, id: KeyId) -> bool {
        self.withdrawn.insert(id);
        jwks.removed(org, id)
    }

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
        self.schedule.extend(expiry(record, state));
    }
}

/// The schedule's entry for `record` in `state`: none if it never expires
/// or has expired.
fn expiry(record: &PublicKeyRecord, state: KeyState) -> Option<(u64, KeyId, OrgId)> {
    let at = record.life.expires_at_secs?;
    (state != KeyState::Expired).then(|| (at, record.id, record.org.clone()))
}

/// The expiry timer: sleeps until the earliest expiry (or a change that
/// sets an earlier one), withdraws what is due, and sleeps again.
pub(crate) async fn expire_forever(registry: Arc<Registry>, verifier: Arc<Verifier>) {
    loop {
        let now_ms = crate::keys::now_ms();
        let next = registry.expire_due(now_ms / 1000, &verifier);
        let sleep = next.map_or(MAX_SLEEP, |at| {
            let left = at.saturating_mul(1000).saturating_sub(now_ms);
            Duration::from_millis(left).min(MAX_SLEEP)
        });
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = registry.wake.notified() => {}
        }
    }
}

impl Registry {
    /// The JWK Set of every published key.
    pub fn jwks_all(&self) -> Arc<Document> {
        self.jwks.all()
    }

    /// The JWK Set of one organisation's published keys.
    pub fn jwks_of(&self, org: &OrgId) -> Arc<Document> {
        self.jwks.of(org)
    }

    /// One published key's record, as `GET /v1/keys/{id}` shows it.
    pub fn record(&self, id: KeyId) -> Option<PublicKeyRecord> {
        self.jwks.record(id)
    }

    /// Whether `id` is published.
    pub fn is_published(&self, id: KeyId) -> bool {
        self.jwks.contains(id)
    }
}

/// What a stream of the feed reads from the registry.
impl crate::events::Snapshots for Registry {
    fn feed(&self) -> &Feed {
        Registry::feed(self)
    }

    fn snapshot(&self, org: Option<&OrgId>) -> Snapshot {
        Registry::snapshot(self, org)
    }
}

/// The published keys as the verifier's key source: verification reads
/// memory only, never storage, so it keeps working while storage is down.
impl KeySource for Registry {
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
        self.lock().withheld.get(&id).map(|hold| hold.why)
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

    /// One step of a table below.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// This instance's own change, or the replica's re-read, of the
        /// key in this state at this version.
        Apply(KeyState, u64),
        /// A delete (here or elsewhere).
        Remove,
        /// A look-up of an unknown key finds it active in the store.
        Learn,
        /// The whole store re-read after it recovered, the key in this state.
        Reset(KeyState),
        /// A follower's upstream sends its whole truth, the key in it
        /// in this state (published, or withheld as disabled or expired).
        Replace(KeyState),
        /// The same, the key still published upstream but past its expiry
        /// (the upstream's timer has not withdrawn it yet).
        ReplaceLate,
        /// The expiry timer passes the key's expiry.
        Expire,
    }

    /// What the verifier is told of the key.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Seen {
        Published,
        Withheld(Withheld),
        Unknown,
    }

    fn record(state: KeyState) -> PublicKeyRecord {
        thread_local! {
            static SPKI: Vec<u8> = crate::keys::generate(crate::keys::KeySpec::Ed25519).spki_der().to_vec();
        }
        let now = now_secs();
        PublicKeyRecord {
            id: KeyId::new(ulid::Ulid::from_parts(1_700_000_000_000, 7)),
            org: OrgId::parse("acme").unwrap(),
            name: crate::keys::KeyName::parse("k").unwrap(),
            spec: crate::keys::KeySpec::Ed25519,
            spki_der: SPKI.with(Clone::clone),
            created_at_ms: 1_700_000_000_000,
            life: crate::keys::Lifecycle {
                disabled: state == KeyState::Disabled,
                expires_at_secs: match state {
                    KeyState::Expired => Some(now - 1),
                    _ => Some(now + 3600),
                },
                ..Default::default()
            },
        }
    }

    fn run(steps: &[Step]) -> Seen {
        let fresh = Arc::new(Freshness::new(0, Default::default(), None));
        let registry = Arc::new(Registry::new(fresh, 1));
        let verifier = Verifier::new(registry.clone(), Default::default());
        let id = record(KeyState::Active).id;
        for step in steps {
            match *step {
                Step::Apply(state, version) => {
                    registry.publish(&record(state), version, &verifier);
                }
                Step::Remove => {
                    registry.remove(&record(KeyState::Active).org, id, &verifier);
                }
                Step::Learn => {
                    registry.learn(&record(KeyState::Active));
                }
                Step::Reset(state) => registry.reset(Reading::of(vec![record(state)]), &verifier),
                Step::Replace(state) => {
                    let r = record(state);
                    let held = |reason| Held {
                        org: r.org.clone(),
                        kid: r.id,
                        reason,
                        expires_at: r.life.expires_at_secs,
                    };
                    let (keys, withheld) = match state {
                        KeyState::Active => (vec![r.clone()], vec![]),
                        KeyState::Disabled => (vec![], vec![held(Reason::Disabled)]),
                        KeyState::Expired => (vec![], vec![held(Reason::Expired)]),
                    };
                    registry.replace(&keys, &withheld, &verifier);
                }
                Step::ReplaceLate => {
                    let late = record(KeyState::Expired);
                    registry.replace(&[late], &[], &verifier);
                }
                Step::Expire => {
                    registry.expire_due(now_secs() + 7200, &verifier);
                }
            }
        }
        match (registry.is_published(id), registry.withheld(id)) {
            (true, None) => Seen::Published,
            (false, Some(why)) => Seen::Withheld(why),
            (false, None) => Seen::Unknown,
            (true, Some(why)) => panic!("{steps:?}: published and withheld ({why:?})"),
        }
    }

    #[test]
    fn changes_take_effect_in_the_order_they_committed() {
        use KeyState::{Active, Disabled};
        use Seen::Published as P;
        use Step::*;
        let disabled = Seen::Withheld(Withheld::Disabled);
        let expired = Seen::Withheld(Withheld::Expired);
        let cases: &[(&[Step], Seen)] = &[
            (&[Apply(Active, 0)], P),
            // A rename that committed before a disable arrives after it.
            (
                &[Apply(Active, 5), Apply(Disabled, 7), Apply(Active, 6)],
                disabled,
            ),
            // The same change read back by the replica.
            (&[Apply(Disabled, 7), Apply(Active, 7)], disabled),
            // A create's publish (no version) after a later change.
            (&[Apply(Disabled, 7), Apply(Active, 0)], disabled),
            (&[Apply(Disabled, 7), Apply(Active, 9)], P),
            (&[Apply(Active, 9), Apply(KeyState::Expired, 10)], expired),
            // Nothing follows a delete.
            (&[Apply(Active, 3), Remove, Apply(Active, 9)], Seen::Unknown),
            (&[Apply(Active, 3), Remove, Learn], Seen::Unknown),
            (&[Remove, Apply(Active, 0)], Seen::Unknown),
            // A look-up never undoes a change applied here.
            (&[Apply(Disabled, 4), Learn], disabled),
            (&[Learn], P),
            // A re-read of the whole store keeps deletes and withdrawals
            // made here; the upstream's whole truth keeps deletes only.
            (&[Apply(Active, 2), Remove, Reset(Active)], Seen::Unknown),
            (&[Reset(Disabled)], disabled),
            (&[Apply(Disabled, 4), Replace(Active)], P),
            (&[Apply(Active, 1), Remove, Replace(Active)], Seen::Unknown),
            // A reset tells a follower what is withheld upstream, so it
            // answers as the upstream does.
            (&[Apply(Active, 4), Replace(Disabled)], disabled),
            (&[Replace(KeyState::Expired)], expired),
            (&[ReplaceLate], expired),
            (&[Replace(Disabled), Expire], expired),
            (&[Replace(Disabled), Replace(Active)], P),
            (
                &[Apply(Active, 1), Remove, Replace(Disabled)],
                Seen::Unknown,
            ),
            // The timer withholds at the key's expiry.
            (&[Apply(Active, 1), Expire], expired),
            (&[Apply(Disabled, 1), Expire], expired),
        ];
        for (steps, expected) in cases {
            assert_eq!(run(steps), *expected, "{steps:?}");
        }
    }
}
