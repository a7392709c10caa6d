//! Key usage: how many verifications each key passed, counted in memory.
//!
//! The verifier holds each key's [`Counter`] and adds one per accepted
//! verification (one relaxed atomic add: no lock, no allocation). Once a
//! second, [`Usage::tick`] moves those counts into per-key buckets (60
//! one-minute buckets, then 24 one-hour buckets), which answer
//! `verifiedLastHour`, `verifiedLastDay` and `lastVerifiedAt`. So each
//! key costs a fixed amount of memory, and a deleted key's entry is
//! dropped ([`Usage::remove`], [`Usage::retain`]).
//!
//! Counts not yet handed on are kept apart as deltas: a PostgreSQL
//! instance flushes them into the store every few seconds, and a follower
//! sends them upstream, with [`Usage::take_deltas`]; an upstream adds a
//! follower's with [`Usage::absorb`]. Deltas older than the minute buckets
//! reach are dropped, so an instance nobody takes them from stays bounded.
//! On sled the service flushes them into the store likewise, and at start
//! puts back what was flushed with [`Usage::restore`], as counts already
//! handed on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter as Total;
use serde::{Deserialize, Serialize};

use crate::keys::KeyId;

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;
const MINUTES: usize = 60;
const HOURS: usize = 24;

/// One key's verifications not yet moved into its buckets; the hot path.
#[derive(Debug, Default)]
pub struct Counter {
    pending: AtomicU64,
}

impl Counter {
    /// One accepted verification.
    #[inline]
    pub fn hit(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }
}

/// Verifications of one key in one minute, as instances exchange them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageDelta {
    pub key_id: KeyId,
    /// Start of the minute, milliseconds since the epoch.
    pub minute: u64,
    pub count: u64,
    /// The last verification counted here, milliseconds since the epoch.
    pub last_verified_ms: u64,
}

/// A key's usage as the list route shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyUsage {
    /// Milliseconds since the epoch; `None` for a key never used.
    pub last_verified_ms: Option<u64>,
    pub last_hour: u64,
    pub last_day: u64,
}

impl KeyUsage {
    /// Both together: counts add, the later last use wins.
    pub fn plus(self, other: KeyUsage) -> KeyUsage {
        KeyUsage {
            last_verified_ms: self.last_verified_ms.max(other.last_verified_ms),
            last_hour: self.last_hour + other.last_hour,
            last_day: self.last_day + other.last_day,
        }
    }

    /// Whether the key verified a token at or after `since_ms`.
    pub fn used_since(&self, since_ms: u64) -> bool {
        self.last_verified_ms.is_some_and(|at| at >= since_ms)
    }
}

/// The window of `ifUnusedFor`: a key used within it is not revoked.
/// Parsed strictly, since a misread window revokes a key in use: whole
/// positive numbers, each with one unit (`s`, `m`, `h`, `d`), units from
/// the largest down, each at most once (`30m`, `1h`, `7d`, `1h30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnusedFor(std::time::Duration);

/// Why an `ifUnusedFor` value was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "ifUnusedFor must be a duration such as 30m, 1h, 7d or 1h30m (positive \
     whole numbers without leading zeros, each with a unit s, m, h or d, at \
     most 3650d), not {0:?}"
)]
pub struct BadWindow(String);

impl UnusedFor {
    /// 3650 days: far beyond any count kept, and no overflow.
    const MAX_SECS: u64 = 3650 * 86_400;

    pub fn parse(text: &str) -> Result<UnusedFor, BadWindow> {
        let bad = || BadWindow(text.chars().take(40).collect());
        let (mut secs, mut rest, mut smallest) = (0u64, text, u64::MAX);
        if rest.is_empty() {
            return Err(bad());
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let (number, tail) = rest.split_at(digits);
            let unit = match tail.as_bytes().first() {
                Some(b'd') => 86_400,
                Some(b'h') => 3_600,
                Some(b'm') => 60,
                Some(b's') => 1,
                _ => return Err(bad()),
            };
            // At most 9 digits: no overflow below.
            if number.is_empty() || number.starts_with('0') || digits > 9 || unit >= smallest {
                return Err(bad());
            }
            let n: u64 = number.parse().map_err(|_| bad())?;
            secs += n * unit;
            smallest = unit;
            rest = &tail[1..];
        }
        if secs == 0 || secs > UnusedFor::MAX_SECS {
            return Err(bad());
        }
        Ok(UnusedFor(std::time::Duration::from_secs(secs)))
    }

    pub fn duration(self) -> std::time::Duration {
        self.0
    }
}

/// A count in a bucket starting at `start` (ms); `unsent` of it not yet
/// taken as a delta (minute buckets only).
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    start: u64,
    count: u64,
    unsent: u64,
    /// The last verification counted in the unsent part.
    unsent_last: u64,
}

#[derive(Debug)]
struct Buckets {
    minutes: [Bucket; MINUTES],
    hours: [Bucket; HOURS],
    last_ms: Option<u64>,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            minutes: [Bucket::default(); MINUTES],
            hours: [Bucket::default(); HOURS],
            last_ms: None,
        }
    }
}

impl Buckets {
    /// Adds `count` verifications at `at` (ms); `unsent` if they are to be
    /// handed on as deltas.
    fn add(&mut self, at: u64, count: u64, last: u64, unsent: bool, now: u64) {
        if count == 0 || at + DAY_MS <= now {
            return;
        }
        self.last_ms = self.last_ms.max(Some(last));
        let minute = at - at % MINUTE_MS;
        if minute + MINUTES as u64 * MINUTE_MS <= now - now % MINUTE_MS {
            // Older than the minute buckets reach: counted, never handed on.
            self.add_hour(minute, count);
            return;
        }
        let slot = &mut self.minutes[(minute / MINUTE_MS) as usize % MINUTES];
        if slot.start != minute {
            let old = *slot;
            *slot = Bucket {
                start: minute,
                ..Bucket::default()
            };
            if old.count > 0 && old.start < minute {
                self.add_hour(old.start, old.count);
            }
        }
        let slot = &mut self.minutes[(minute / MINUTE_MS) as usize % MINUTES];
        slot.count += count;
        if unsent {
            slot.unsent += count;
            slot.unsent_last = slot.unsent_last.max(last);
        }
    }

    fn add_hour(&mut self, at: u64, count: u64) {
        let hour = at - at % HOUR_MS;
        let slot = &mut self.hours[(hour / HOUR_MS) as usize % HOURS];
        if slot.start != hour {
            if slot.start > hour {
                return; // older than a day
            }
            *slot = Bucket {
                start: hour,
                ..Bucket::default()
            };
        }
        slot.count += count;
    }

    /// The counts of the last hour and day as of `now`; with `unsent`,
    /// only what was not handed on yet.
    fn usage(&self, now: u64, unsent: bool) -> KeyUsage {
        let (mut hour, mut day, mut last) = (0, 0, None);
        for b in &self.minutes {
            let count = if unsent { b.unsent } else { b.count };
            if count == 0 || b.start + DAY_MS <= now {
                continue;
            }
            day += count;
            if b.start + HOUR_MS > now {
                hour += count;
            }
            if unsent {
                last = last.max(Some(b.unsent_last));
            }
        }
        if !unsent {
            for b in &self.hours {
                if b.count > 0 && b.start + HOUR_MS + DAY_MS > now {
                    day += b.count;
                }
            }
            last = self.last_ms;
        }
        KeyUsage {
            last_verified_ms: last,
            last_hour: hour,
            last_day: day,
        }
    }

    fn take_unsent(&mut self, id: KeyId, out: &mut Vec<UsageDelta>) {
        for b in &mut self.minutes {
            if b.unsent > 0 {
                out.push(UsageDelta {
                    key_id: id,
                    minute: b.start,
                    count: b.unsent,
                    last_verified_ms: b.unsent_last,
                });
                b.unsent = 0;
                b.unsent_last = 0;
            }
        }
    }
}

struct Entry {
    counter: Arc<Counter>,
    buckets: Buckets,
}

/// Every key's usage on this process. Shared by the verifier (which
/// counts) and the service (which reads, flushes and prunes).
pub struct Usage {
    keys: Mutex<HashMap<KeyId, Entry>>,
    /// Every accepted verification, for `/metrics` (no per-key labels).
    accepted: Total,
}

impl Default for Usage {
    fn default() -> Self {
        Usage::new(Total::default())
    }
}

impl Usage {
    /// Counts every accepted verification into `accepted` too (on tick).
    pub fn new(accepted: Total) -> Usage {
        Usage {
            keys: Mutex::new(HashMap::new()),
            accepted,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, Entry>> {
        self.keys.lock().expect("usage lock poisoned")
    }

    /// The counter the verifier adds to for key `id` (made on first use).
    pub fn counter(&self, id: KeyId) -> Arc<Counter> {
        self.lock()
            .entry(id)
            .or_insert_with(|| Entry {
                counter: Arc::default(),
                buckets: Buckets::default(),
            })
            .counter
            .clone()
    }

    /// Moves every pending count into its key's buckets as of `now_ms`.
    /// Call about once a second: `lastVerifiedAt` is as precise as that.
    pub fn tick(&self, now_ms: u64) {
        let mut total = 0;
        for entry in self.lock().values_mut() {
            let n = entry.counter.pending.swap(0, Ordering::Relaxed);
            if n > 0 {
                entry.buckets.add(now_ms, n, now_ms, true, now_ms);
                total += n;
            }
        }
        if total > 0 {
            self.accepted.inc_by(total);
        }
    }

    /// Key `id`'s usage on this process (its own verifications and those
    /// absorbed from followers) as of `now_ms`.
    pub fn local(&self, id: KeyId, now_ms: u64) -> KeyUsage {
        self.read(id, now_ms, false)
    }

    /// The part of [`Usage::local`] not yet taken as deltas.
    pub fn unsent(&self, id: KeyId, now_ms: u64) -> KeyUsage {
        self.read(id, now_ms, true)
    }

    fn read(&self, id: KeyId, now_ms: u64, unsent: bool) -> KeyUsage {
        let keys = self.lock();
        let Some(entry) = keys.get(&id) else {
            return KeyUsage::default();
        };
        let mut usage = entry.buckets.usage(now_ms, unsent);
        // Not ticked yet: used just now.
        let pending = entry.counter.pending.load(Ordering::Relaxed);
        if pending > 0 {
            usage = usage.plus(KeyUsage {
                last_verified_ms: Some(now_ms),
                last_hour: pending,
                last_day: pending,
            });
        }
        usage
    }

    /// The counts not handed on yet, per key and minute; they are handed
    /// on now (put them back with [`Usage::requeue`] if that fails).
    pub fn take_deltas(&self) -> Vec<UsageDelta> {
        let mut out = Vec::new();
        for (id, entry) in self.lock().iter_mut() {
            entry.buckets.take_unsent(*id, &mut out);
        }
        out
    }

    /// Deltas that could not be handed on, to be taken again later.
    pub fn requeue(&self, deltas: &[UsageDelta], now_ms: u64) {
        let mut keys = self.lock();
        for d in deltas {
            if let Some(entry) = keys.get_mut(&d.key_id) {
                let b = &mut entry.buckets.minutes[(d.minute / MINUTE_MS) as usize % MINUTES];
                if b.start == d.minute && d.minute + DAY_MS > now_ms {
                    b.unsent += d.count;
                    b.unsent_last = b.unsent_last.max(d.last_verified_ms);
                }
            }
        }
    }

    /// Adds another process's counts (a follower's, on its upstream):
    /// they count here, and are handed on from here like this process's own.
    pub fn absorb(&self, deltas: &[UsageDelta]) {
        let now = crate::keys::now_ms();
        let mut keys = self.lock();
        for d in deltas {
            let entry = keys.entry(d.key_id).or_insert_with(|| Entry {
                counter: Arc::default(),
                buckets: Buckets::default(),
            });
            let minute = d.minute - d.minute % MINUTE_MS;
            // A clock ahead of ours does not make a bucket from the future.
            let last = d.last_verified_ms.clamp(minute, now);
            entry.buckets.add(minute.min(now), d.count, last, true, now);
        }
    }

    /// Puts back counts this process handed on before (on sled, what the
    /// store kept over a restart): they count here like its own, but are
    /// never handed on again. A delta's `last_verified_ms` counts even
    /// when its `count` is zero or older than a day.
    pub fn restore(&self, deltas: &[UsageDelta], now_ms: u64) {
        let mut keys = self.lock();
        for d in deltas {
            let entry = keys.entry(d.key_id).or_insert_with(|| Entry {
                counter: Arc::default(),
                buckets: Buckets::default(),
            });
            let buckets = &mut entry.buckets;
            let last = d.last_verified_ms.min(now_ms);
            buckets.last_ms = buckets.last_ms.max(Some(last));
            let minute = d.minute - d.minute % MINUTE_MS;
            buckets.add(minute.min(now_ms), d.count, last, false, now_ms);
        }
    }

    /// Forgets a deleted key.
    pub fn remove(&self, id: KeyId) {
        self.lock().remove(&id);
    }

    /// Keeps only the keys `keep` says still exist.
    pub fn retain(&self, mut keep: impl FnMut(KeyId) -> bool) {
        self.lock().retain(|id, _| keep(*id));
    }

    /// How many keys have an entry.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unused_for_window_is_read_strictly() {
        for (text, secs) in [
            ("30m", 1_800),
            ("1h", 3_600),
            ("7d", 604_800),
            ("90s", 90),
            ("1h30m", 5_400),
            ("1d12h", 129_600),
            ("3650d", 315_360_000),
            ("1d23h59m59s", 172_799),
        ] {
            assert_eq!(
                UnusedFor::parse(text).unwrap().duration().as_secs(),
                secs,
                "{text}"
            );
        }
        for text in [
            "1h0m",
            "01h",
            "0s1h",
            "3651d",
            "",
            "0",
            "0s",
            "0h0m",
            "30",
            "1hour",
            "+1h",
            "-1h",
            " 1h",
            "1h ",
            "1d1d",
            "30m1h",
            "1H",
            "1.5h",
            "1ms",
            "h",
            "1h30",
            "１h",
            "9999999999s",
            "3661d",
        ] {
            let e = UnusedFor::parse(text).unwrap_err().to_string();
            assert!(e.starts_with("ifUnusedFor must be"), "{text}: {e}");
        }
    }

    fn id(n: u8) -> KeyId {
        KeyId::from_bytes([n; 16])
    }

    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn counts_move_from_the_hot_counter_into_hour_and_day() {
        let usage = Usage::default();
        let c = usage.counter(id(1));
        for _ in 0..5 {
            c.hit();
        }
        // Before a tick: seen as used now.
        assert_eq!(usage.local(id(1), T0).last_hour, 5);
        usage.tick(T0);
        let u = usage.local(id(1), T0 + 1000);
        assert_eq!(
            (u.last_hour, u.last_day, u.last_verified_ms),
            (5, 5, Some(T0))
        );
        c.hit();
        usage.tick(T0 + 2 * HOUR_MS);
        let u = usage.local(id(1), T0 + 2 * HOUR_MS);
        assert_eq!((u.last_hour, u.last_day), (1, 6));
        assert_eq!(usage.local(id(1), T0 + 2 * HOUR_MS + DAY_MS).last_day, 0);
        assert_eq!(usage.local(id(2), T0), KeyUsage::default());
    }

    #[test]
    fn deltas_are_taken_once_and_absorbed_elsewhere() {
        let here = Usage::default();
        let c = here.counter(id(1));
        c.hit();
        c.hit();
        here.tick(T0);
        assert_eq!(here.unsent(id(1), T0).last_hour, 2);
        let deltas = here.take_deltas();
        assert_eq!(deltas.len(), 1);
        assert_eq!(deltas[0].count, 2);
        assert!(here.take_deltas().is_empty());
        assert_eq!(here.unsent(id(1), T0).last_hour, 0);
        // Still counted here.
        assert_eq!(here.local(id(1), T0).last_hour, 2);
        here.requeue(&deltas, T0);
        assert_eq!(here.take_deltas(), deltas);
        let json = serde_json::to_string(&deltas).unwrap();
        let back: Vec<UsageDelta> = serde_json::from_str(&json).unwrap();
        let upstream = Usage::default();
        let now = crate::keys::now_ms();
        let fresh: Vec<_> = back
            .into_iter()
            .map(|d| UsageDelta {
                minute: now - now % MINUTE_MS,
                last_verified_ms: now,
                ..d
            })
            .collect();
        upstream.absorb(&fresh);
        assert_eq!(upstream.local(id(1), now).last_hour, 2);
        assert_eq!(upstream.take_deltas().len(), 1);
    }

    #[test]
    fn old_unsent_counts_are_dropped_and_deleted_keys_forgotten() {
        let usage = Usage::default();
        let c = usage.counter(id(1));
        c.hit();
        usage.tick(T0);
        for minute in 1..=MINUTES as u64 + 1 {
            c.hit();
            usage.tick(T0 + minute * MINUTE_MS);
        }
        let deltas = usage.take_deltas();
        assert_eq!(deltas.iter().map(|d| d.count).sum::<u64>(), MINUTES as u64);
        usage.remove(id(1));
        assert!(usage.is_empty());
        usage.counter(id(2));
        usage.counter(id(3));
        usage.retain(|k| k == id(3));
        assert_eq!(usage.len(), 1);
    }

    #[test]
    fn restored_counts_are_read_but_never_handed_on_again() {
        let usage = Usage::default();
        let now = T0 + 30 * MINUTE_MS;
        let delta = |n: u8, minute: u64, count: u64, last: u64| UsageDelta {
            key_id: id(n),
            minute,
            count,
            last_verified_ms: last,
        };
        usage.restore(
            &[
                delta(1, T0 + 10 * MINUTE_MS, 3, T0 + 10 * MINUTE_MS + 5),
                delta(1, T0 - 3 * HOUR_MS, 2, T0 - 3 * HOUR_MS),
                // Used two days ago only: its last use, no count.
                delta(2, T0 - 2 * DAY_MS, 0, T0 - 2 * DAY_MS + 7),
            ],
            now,
        );
        let u = usage.local(id(1), now);
        assert_eq!(
            (u.last_hour, u.last_day, u.last_verified_ms),
            (3, 5, Some(T0 + 10 * MINUTE_MS + 5))
        );
        let u = usage.local(id(2), now);
        assert_eq!(
            (u.last_hour, u.last_day, u.last_verified_ms),
            (0, 0, Some(T0 - 2 * DAY_MS + 7))
        );
        assert!(usage.take_deltas().is_empty());
        assert_eq!(usage.unsent(id(1), now), KeyUsage::default());
        // Counted on top of them, only the new count is handed on.
        usage.counter(id(1)).hit();
        usage.tick(now);
        let deltas = usage.take_deltas();
        assert_eq!(deltas.len(), 1);
        assert_eq!(deltas[0].count, 1);
        assert_eq!(usage.local(id(1), now).last_hour, 4);
    }
}
