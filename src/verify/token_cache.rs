//! A bounded cache of tokens whose signature verified, so that a proxy
//! asking about the same bearer token on every request pays the signature
//! check once.
//!
//! An entry holds the whole token, and a lookup compares it byte for byte,
//! so no other token can hit it; a keyed hash of the token's last bytes
//! (for a token that verified, its signature's) only chooses the slot. The
//! entry records which key-cache entry (the key's id and fill generation)
//! checked the signature. The verifier serves a hit only while
//! that same key-cache entry is live, and re-checks every claim against the
//! request and the clock; the cache itself only remembers "this exact token
//! was signed by that exact key".
//!
//! Bounded twice: in entries and in accounted bytes (an estimate of each
//! entry's heap, including the token and its decoded header and claims). Eviction is
//! CLOCK (second chance) per shard: a token hit since the hand last passed
//! survives one more round, so a hot session token outlives a stream of
//! one-off tokens.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::mem::size_of;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Contents;
use crate::keys::{KeyId, OrgId};

/// Independent shards, each with its own lock and its share of the bounds.
const SHARDS: usize = 16;

/// How many of a token's last bytes choose its slot: a signature's,
/// which differ between any two tokens that verified.
const TAIL: usize = 32;

/// A slot: a keyed hash (SipHash, with this process's random key) of a
/// token's length and last `TAIL` bytes. Two tokens may share one; the
/// slot then holds at most one of them.
type SlotKey = u64;

/// Slot keys are already keyed hashes; the map takes them as they are.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What a verified token proved, independent of any request.
#[derive(Debug)]
pub struct Verdict {
    pub kid: KeyId,
    /// The key-cache fill that checked the signature.
    pub generation: u64,
    /// That fill's key expiry (seconds since the epoch), checked on every hit.
    pub key_expires_at: Option<u64>,
    pub org: Option<OrgId>,
    /// The token's header and claims.
    pub contents: Arc<Contents>,
    /// The verifier's forget count when the fill was last seen in the key
    /// cache (`NEVER` before that): while no key has been forgotten since,
    /// the fill is still there and a hit need not look it up.
    confirmed: AtomicU64,
    /// The key's usage counter, which a hit adds to.
    uses: Arc<crate::usage::Counter>,
}

/// A forget count no verifier reaches.
const NEVER: u64 = u64::MAX;

impl Verdict {
    pub fn new(
        kid: KeyId,
        generation: u64,
        key_expires_at: Option<u64>,
        org: Option<OrgId>,
        contents: Arc<Contents>,
    ) -> Verdict {
        Verdict {
            kid,
            generation,
            key_expires_at,
            org,
            contents,
            confirmed: AtomicU64::new(NEVER),
            uses: Arc::default(),
        }
    }

    /// The same verdict, counting its hits into `uses`.
    pub fn counting(mut self, uses: Arc<crate::usage::Counter>) -> Verdict {
        self.uses = uses;
        self
    }

    /// The key's usage counter.
    pub fn uses(&self) -> &crate::usage::Counter {
        &self.uses
    }

    /// Whether the fill was seen in the key cache at forget count `forgets`.
    pub fn confirmed_at(&self, forgets: u64) -> bool {
        self.confirmed.load(Ordering::SeqCst) == forgets
    }

    /// Records that the fill was seen in the key cache by a lookup begun
    /// at forget count `forgets` (read before that lookup).
    pub fn confirm(&self, forgets: u64) {
        self.confirmed.store(forgets, Ordering::SeqCst);
    }

    /// The bytes an entry of this verdict for `token` is accounted for:
    /// its fixed parts (map slot, clock slot, allocations), the token, and
    /// the decoded header and claims.
    pub fn weight(&self, token: &str) -> usize {
        // The contents' `Arc` allocation holds two counts besides them.
        ENTRY_OVERHEAD
            + token.len()
            + 2 * size_of::<usize>()
            + size_of::<Contents>()
            + self.contents.heap()
    }
}

/// Per entry, beyond the token and the JSON: the hash-map slot (key,
/// token, `Arc`, flag), the clock slot, the `Arc` allocation of the
/// verdict and the token's allocation.
const ENTRY_OVERHEAD: usize = 2 * size_of::<SlotKey>()
    + size_of::<Slot>()
    + size_of::<Verdict>()
    + 2 * size_of::<usize>()
    + 16
    + 16;

struct Slot {
    token: Box<str>,
    verdict: Arc<Verdict>,
    weight: usize,
    /// Hit since the clock hand last passed.
    referenced: bool,
}

#[derive(Default)]
struct Shard {
    map: HashMap<SlotKey, Slot, BuildHasherDefault<Prehashed>>,
    /// The clock: every key in `map`, exactly once.
    clock: VecDeque<SlotKey>,
    bytes: usize,
}

/// The bounds of one cache; zero in either disables it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub entries: usize,
    pub bytes: usize,
}

pub struct TokenCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: Bounds,
    /// This cache's SipHash key.
    slots: RandomState,
}

impl TokenCache {
    /// `None` when either bound is zero: the cache is off.
    pub fn new(bounds: Bounds) -> Option<TokenCache> {
        if bounds.entries == 0 || bounds.bytes == 0 {
            return None;
        }
        // Small caches use fewer shards, so that each holds at least one entry.
        let shards = SHARDS.min(bounds.entries);
        Some(TokenCache {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            per_shard: Bounds {
                entries: bounds.entries / shards,
                bytes: bounds.bytes / shards,
            },
            slots: RandomState::new(),
        })
    }

    fn slot(&self, token: &str) -> SlotKey {
        let bytes = token.as_bytes();
        let mut h = self.slots.build_hasher();
        h.write_usize(bytes.len());
        h.write(&bytes[bytes.len().saturating_sub(TAIL)..]);
        h.finish()
    }

    fn shard(&self, key: SlotKey) -> &Mutex<Shard> {
        &self.shards[(key >> 32) as usize % self.shards.len()]
    }

    /// The verdict remembered for exactly `token`.
    pub fn get(&self, token: &str) -> Option<Arc<Verdict>> {
        let key = self.slot(token);
        let mut shard = self.shard(key).lock().expect("token cache lock poisoned");
        let slot = shard.map.get_mut(&key)?;
        if *slot.token != *token {
            return None;
        }
        slot.referenced = true;
        Some(slot.verdict.clone())
    }

    /// Remembers `verdict` for `token` (in place of any token in its slot),
    /// evicting as needed; returns how many entries were evicted. A verdict
    /// heavier than a shard's byte share is not stored.
    pub fn insert(&self, token: &str, verdict: Arc<Verdict>) -> usize {
        let weight = verdict.weight(token);
        if weight > self.per_shard.bytes {
            return 0;
        }
        let key = self.slot(token);
        let mut shard = self.shard(key).lock().expect("token cache lock poisoned");
        let shard = &mut *shard;
        if let Some(old) = shard.map.insert(
            key,
            Slot {
                token: token.into(),
                verdict,
                weight,
                referenced: false,
            },
        ) {
            shard.bytes -= old.weight;
        } else {
            shard.clock.push_back(key);
        }
        shard.bytes += weight;
        let mut evicted = 0;
        while shard.map.len() > self.per_shard.entries || shard.bytes > self.per_shard.bytes {
            let Some(candidate) = shard.clock.pop_front() else {
                break;
            };
            // The new entry sits at the back, so it is reached last.
            let slot = shard
                .map
                .get_mut(&candidate)
                .expect("the clock lists only present keys");
            if slot.referenced && candidate != key {
                slot.referenced = false;
                shard.clock.push_back(candidate);
                continue;
            }
            let gone = shard.map.remove(&candidate).expect("present");
            shard.bytes -= gone.weight;
            evicted += 1;
        }
        evicted
    }

    /// Drops `token`'s entry if it still holds `stale` (a newer fill is kept).
    pub fn remove_if(&self, token: &str, stale: &Arc<Verdict>) {
        let key = self.slot(token);
        let mut shard = self.shard(key).lock().expect("token cache lock poisoned");
        let shard = &mut *shard;
        if shard
            .map
            .get(&key)
            .is_some_and(|s| Arc::ptr_eq(&s.verdict, stale))
        {
            let gone = shard.map.remove(&key).expect("present");
            shard.bytes -= gone.weight;
            shard.clock.retain(|k| *k != key);
        }
    }

    /// Entries and accounted bytes held now.
    #[cfg(test)]
    pub fn usage(&self) -> Bounds {
        self.shards.iter().fold(
            Bounds {
                entries: 0,
                bytes: 0,
            },
            |acc, s| {
                let s = s.lock().expect("token cache lock poisoned");
                Bounds {
                    entries: acc.entries + s.map.len(),
                    bytes: acc.bytes + s.bytes,
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(n: u64) -> Arc<Verdict> {
        let claims = serde_json::json!({
            "sub": format!("user-{n}"),
            "org": "acme",
            "role": "reader",
            "aud": "signet",
            "exp": 2_000_000_000u64,
        });
        let header = serde_json::json!({ "alg": "RS256", "kid": "01J0000000000000000000000A" });
        Arc::new(Verdict::new(
            KeyId::parse("01J0000000000000000000000A").unwrap(),
            n,
            None,
            None,
            Arc::new(Contents::from_json(&header.to_string(), &claims.to_string()).unwrap()),
        ))
    }

    #[test]
    fn a_zero_bound_disables() {
        for (entries, bytes) in [(0, 1 << 20), (100, 0)] {
            assert!(TokenCache::new(Bounds { entries, bytes }).is_none());
        }
    }

    #[test]
    fn only_the_same_token_hits() {
        let cache = TokenCache::new(Bounds {
            entries: 100,
            bytes: 1 << 20,
        })
        .unwrap();
        cache.insert("a.b.c", verdict(1));
        assert_eq!(cache.get("a.b.c").unwrap().generation, 1);
        for other in ["a.b.d", "a.b.c ", "A.b.c", ""] {
            assert!(cache.get(other).is_none(), "{other:?}");
        }
    }

    /// Tokens of one length and the same last bytes share a slot: each
    /// hits only its own verdict, and the later one takes the slot.
    #[test]
    fn tokens_sharing_a_slot_never_hit_each_other() {
        let cache = TokenCache::new(Bounds {
            entries: 100,
            bytes: 1 << 20,
        })
        .unwrap();
        let tail = "s".repeat(TAIL);
        let (a, b) = (format!("a.b.{tail}"), format!("a.c.{tail}"));
        assert_eq!(cache.slot(&a), cache.slot(&b));
        cache.insert(&a, verdict(1));
        assert!(cache.get(&b).is_none());
        cache.insert(&b, verdict(2));
        assert!(cache.get(&a).is_none());
        assert_eq!(cache.get(&b).unwrap().generation, 2);
        cache.remove_if(&a, &verdict(3));
        assert_eq!(cache.usage().entries, 1);
    }

    #[test]
    fn remove_if_spares_a_newer_fill() {
        let cache = TokenCache::new(Bounds {
            entries: 100,
            bytes: 1 << 20,
        })
        .unwrap();
        let key = "t";
        let (old, new) = (verdict(1), verdict(2));
        cache.insert(key, old.clone());
        cache.insert(key, new.clone());
        cache.remove_if(key, &old);
        assert_eq!(cache.get(key).unwrap().generation, 2);
        cache.remove_if(key, &new);
        assert!(cache.get(key).is_none());
        assert_eq!(
            cache.usage(),
            Bounds {
                entries: 0,
                bytes: 0
            }
        );
    }

    /// A million distinct tokens through small bounds: the accounted bytes
    /// and entries never exceed them, and eviction is what keeps them there.
    #[test]
    fn a_million_tokens_stay_within_both_bounds() {
        // Ten-digit tokens, so that every entry weighs the same.
        let one = verdict(0).weight("0000000000");
        for bounds in [
            // The entry bound binds first.
            Bounds {
                entries: 1_000,
                bytes: 1 << 30,
            },
            // The byte bound binds first.
            Bounds {
                entries: 1_000_000,
                bytes: 200 * one,
            },
        ] {
            let cache = TokenCache::new(bounds).unwrap();
            let v = verdict(0);
            let mut evicted = 0;
            for n in 0..1_000_000u32 {
                evicted += cache.insert(&format!("{n:010}"), v.clone());
                if n % 50_000 == 0 {
                    let used = cache.usage();
                    assert!(used.entries <= bounds.entries, "{used:?} over {bounds:?}");
                    assert!(used.bytes <= bounds.bytes, "{used:?} over {bounds:?}");
                }
            }
            let used = cache.usage();
            assert!(used.entries <= bounds.entries && used.bytes <= bounds.bytes);
            assert!(used.entries > 0);
            assert_eq!(evicted + used.entries, 1_000_000, "{bounds:?}");
            // Accounted bytes are exactly the entries' weights.
            assert_eq!(used.bytes, used.entries * one);
        }
    }

    #[test]
    fn a_hot_token_survives_a_stream_of_one_off_tokens() {
        let cache = TokenCache::new(Bounds {
            entries: 16 * 8,
            bytes: 1 << 30,
        })
        .unwrap();
        let hot = "hot";
        cache.insert(hot, verdict(7));
        for n in 0..10_000u32 {
            assert!(cache.get(hot).is_some(), "evicted after {n} inserts");
            cache.insert(&n.to_string(), verdict(0));
        }
    }
}
