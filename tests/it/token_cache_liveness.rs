//! How a remembered token learns that its key is still live: it looks the
//! key up again only after some key was forgotten, and its key's expiry
//! holds on every hit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::json;
use signet::keys::{Algorithm, KeyId};
use signet::verify::{Expect, KeyMaterial, KeySource, KeySourceError, Policy, Verifier};

use crate::support::*;

/// A public key (SPKI DER) and when it expires.
type Entry = (Vec<u8>, Option<u64>);

/// Keys with an optional expiry each; removing one is a delete.
#[derive(Default)]
struct Keys(Mutex<HashMap<KeyId, Entry>>);

impl KeySource for Keys {
    fn lookup(&self, id: KeyId) -> Result<Option<KeyMaterial>, KeySourceError> {
        let keys = self.0.lock().unwrap();
        Ok(keys.get(&id).map(|(spki, _)| KeyMaterial {
            org: None,
            algorithm: Algorithm::RS256,
            spki_der: spki.clone(),
        }))
    }
    fn contains(&self, id: KeyId) -> Result<bool, KeySourceError> {
        Ok(self.0.lock().unwrap().contains_key(&id))
    }
    fn expires_at(&self, id: KeyId) -> Option<u64> {
        self.0.lock().unwrap().get(&id).and_then(|(_, at)| *at)
    }
}

struct Setup {
    keys: Arc<Keys>,
    verifier: Verifier,
    signer: Signer,
}

impl Setup {
    fn new() -> Setup {
        let keys = Arc::new(Keys::default());
        let policy = Policy {
            token_cache_entries: 100,
            token_cache_bytes: 1 << 20,
            ..Policy::default()
        };
        let verifier = Verifier::new(keys.clone(), policy);
        let pem =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys/a.pem"))
                .unwrap();
        Setup {
            keys,
            verifier,
            signer: Signer::from_pem(&pem),
        }
    }

    /// A new key expiring at `expires_at`, and a token of it valid for an hour.
    fn key(&self, expires_at: Option<u64>) -> (KeyId, String) {
        let kid = KeyId::new(ulid::Ulid::new());
        let spki = self.signer.spki_der();
        self.keys.0.lock().unwrap().insert(kid, (spki, expires_at));
        let token = self
            .signer
            .org_token(&kid.to_string(), json!({"exp": now() + 3600}));
        (kid, token)
    }

    fn delete(&self, kid: KeyId) {
        self.keys.0.lock().unwrap().remove(&kid);
        self.verifier.forget(kid);
    }

    /// (token-cache hits, key-cache hits, key-cache misses) so far.
    fn counts(&self) -> (u64, u64, u64) {
        let s = self.verifier.stats();
        (s.token_hits.get(), s.hits.get(), s.misses.get())
    }
}

#[test]
fn a_remembered_token_looks_its_key_up_again_only_after_a_forget() {
    let s = Setup::new();
    let (a, token) = s.key(None);
    let (b, _) = s.key(None);
    let ask = || s.verifier.verify(&token, Expect::default());
    ask().unwrap(); // the signature check fills the key cache
    let (_, _, misses) = s.counts();
    // Each row: what happens first, then (token hits, key-cache lookups)
    // that one more ask adds.
    type Step<'a> = (&'a str, &'a dyn Fn(), (u64, u64));
    let steps: [Step; 5] = [
        ("the first hit confirms the key", &|| {}, (1, 1)),
        ("a confirmed hit looks nothing up", &|| {}, (1, 0)),
        ("forgetting another key asks again", &|| s.delete(b), (1, 1)),
        ("… once", &|| {}, (1, 0)),
        // The fill is gone: a new one, and the signature checked again.
        (
            "forget_all drops every fill",
            &|| s.verifier.forget_all(),
            (0, 2),
        ),
    ];
    for (step, before, (hits, lookups)) in steps {
        before();
        let (h0, k0, m0) = s.counts();
        ask().unwrap();
        let (h1, k1, m1) = s.counts();
        assert_eq!((h1 - h0, (k1 + m1) - (k0 + m0)), (hits, lookups), "{step}");
    }
    assert!(s.counts().2 > misses, "forget_all emptied the key cache");
    s.delete(a);
    let (h0, ..) = s.counts();
    assert_eq!(ask().unwrap_err().code(), "unknown_key");
    assert_eq!(s.counts().0, h0, "no hit after the key's own delete");
}

#[test]
fn a_confirmed_hit_still_ends_at_its_keys_expiry() {
    let s = Setup::new();
    let expires_at = now() + 100;
    let (_, token) = s.key(Some(expires_at));
    let ask = |at: u64| s.verifier.verify_at(&token, Expect::default(), at);
    for _ in 0..3 {
        ask(expires_at - 1).unwrap();
    }
    let (hits, ..) = s.counts();
    assert_eq!(hits, 2, "served from the cache, the last one confirmed");
    assert_eq!(ask(expires_at).unwrap_err().code(), "key_expired");
    assert_eq!(s.counts().0, hits, "not a hit");
}
