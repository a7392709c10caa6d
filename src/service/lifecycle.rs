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
pub(super) struct Published {
    jwks: Arc<Jwks>,
    inner: Mutex<Inner>,
    /// Wakes the timer when an earlier expiry is set.
    wake: Notify,
}

#[derive(Default)]
struct Inner {
    /// Keys that exist but may not verify.
    withheld: HashMap<KeyId, Withheld>,
    /// Expiries of keys not yet expired, earliest first. An entry may be
    /// stale (the key was deleted, or its expiry moved earlier, never
    /// later); the timer skips those.
    schedule: BTreeSet<(u64, KeyId, OrgId)>,
}

impl Published {
    pub(super) fn new(jwks: Arc<Jwks>) -> Published {
        Published {
            jwks,
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
        }
    }

    /// Derives everything from `records` (at start, and after storage
    /// recovered): a key that expired meanwhile is expired now.
    pub(super) fn reset(&self, records: &[PublicKeyRecord], verifier: &Verifier) {
        let mut inner = self.lock();
        *inner = Inner::default();
        let now = now_secs();
        let mut active = Vec::new();
        for r in records {
            let state = r.state_at(now);
            match state {
                KeyState::Active => active.push(r.clone()),
                KeyState::Disabled => {
                    inner.withheld.insert(r.id, Withheld::Disabled);
                }
                KeyState::Expired => {
                    inner.withheld.insert(r.id, Withheld::Expired);
                }
            }
            inner.schedule_expiry(r, state);
        }
        self.jwks.reset(&active);
        drop(inner);
        verifier.forget_all();
        self.wake.notify_one();
    }

    /// Publishes or withholds `record` as its state is now, then makes the
    /// verifier forget what it cached of it (its expiry may have moved).
    pub(super) fn publish(&self, record: &PublicKeyRecord, verifier: &Verifier) {
        let mut inner = self.lock();
        let state = record.state_at(now_secs());
        match state {
            // Published before it stops being withheld, so that a
            // verification in between finds it one way or the other.
            KeyState::Active => {
                self.jwks.added(record);
                inner.withheld.remove(&record.id);
            }
            // Withheld before it is unpublished, likewise.
            KeyState::Disabled | KeyState::Expired => {
                let why = match state {
                    KeyState::Disabled => Withheld::Disabled,
                    _ => Withheld::Expired,
                };
                inner.withheld.insert(record.id, why);
                self.unpublish(&record.org, record.id);
            }
        }
        let earliest = inner.schedule.first().map(|e| e.0);
        inner.schedule_expiry(record, state);
        let earlier = inner.schedule.first().map(|e| e.0) != earliest;
        drop(inner);
        verifier.forget(record.id);
        if earlier {
            self.wake.notify_one();
        }
    }

    /// Forgets a deleted key everywhere.
    pub(super) fn remove(&self, org: &OrgId, id: KeyId, verifier: &Verifier) {
        let mut inner = self.lock();
        self.unpublish(org, id);
        inner.withheld.remove(&id);
        drop(inner);
        verifier.forget(id);
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
                self.unpublish(&org, id);
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

    fn unpublish(&self, org: &OrgId, id: KeyId) {
        if self.jwks.contains(id) {
            self.jwks.removed(org, id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("lifecycle lock poisoned")
    }
}

impl Inner {
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
