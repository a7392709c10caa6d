//! The published JWK Sets, prepared when keys change and never serialised
//! per request: one document of every key and one per organisation, each
//! with its strong `ETag`.
//!
//! Each key's JWK is serialised once, when the key is added; rebuilding a
//! document only concatenates those bytes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::keys::{Jwk, KeyId, OrgId, PublicKeyRecord};

/// A JWK Set ready to send.
#[derive(Debug, Clone)]
pub struct Document {
    pub body: Bytes,
    /// A strong validator: quoted, a digest of the body.
    pub etag: String,
    /// The earliest expiry (seconds since the epoch) among the keys listed.
    pub expires: Option<u64>,
}

impl Document {
    /// The `Cache-Control: max-age` to send at `now_ms`: the configured
    /// one, but never past the earliest expiry listed, so that no cache
    /// keeps a key after it expired.
    pub fn max_age(&self, configured: u64, now_ms: u64) -> u64 {
        match self.expires {
            Some(at) => configured.min(at.saturating_mul(1000).saturating_sub(now_ms) / 1000),
            None => configured,
        }
    }

    fn build<'a>(jwks: impl Iterator<Item = &'a [u8]> + Clone, expires: Option<u64>) -> Document {
        // Sized exactly: at 50,000 keys the global document is ~22 MB, and a
        // doubling Vec would hold up to twice that.
        let len = jwks.clone().map(|j| j.len() + 1).sum::<usize>() + 12;
        let mut body = Vec::with_capacity(len);
        body.extend_from_slice(b"{\"keys\":[");
        for (i, jwk) in jwks.enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(jwk);
        }
        body.extend_from_slice(b"]}");
        let digest = Sha256::digest(&body);
        let etag = format!("\"{}\"", hex::encode(&digest[..16]));
        Document {
            body: body.into(),
            etag,
            expires,
        }
    }
}

struct Published {
    org: OrgId,
    jwk: Box<[u8]>,
    expires: Option<u64>,
}

#[derive(Default)]
struct State {
    /// Every key's serialised JWK and expiry, in id (creation) order.
    all: BTreeMap<KeyId, Published>,
    /// Which keys each organisation has, in id order.
    by_org: HashMap<OrgId, BTreeMap<KeyId, ()>>,
}

/// The prepared documents. Reads take a read lock just long enough to clone
/// an `Arc`.
pub struct Jwks {
    state: RwLock<State>,
    all: RwLock<Arc<Document>>,
    orgs: RwLock<HashMap<OrgId, Arc<Document>>>,
    empty: Arc<Document>,
}

impl Jwks {
    pub fn new(records: &[PublicKeyRecord]) -> Jwks {
        let mut state = State::default();
        for r in records {
            state.insert(r);
        }
        let all = state.document_all();
        let orgs = state
            .by_org
            .keys()
            .map(|org| (org.clone(), Arc::new(state.document_of(org))))
            .collect();
        Jwks {
            state: RwLock::new(state),
            all: RwLock::new(Arc::new(all)),
            orgs: RwLock::new(orgs),
            empty: Arc::new(Document::build(std::iter::empty(), None)),
        }
    }

    /// The JWK Set of every key.
    pub fn all(&self) -> Arc<Document> {
        self.all.read().expect("jwks lock poisoned").clone()
    }

    /// The JWK Set of one organisation (empty if it has no keys).
    pub fn of(&self, org: &OrgId) -> Arc<Document> {
        self.orgs
            .read()
            .expect("jwks lock poisoned")
            .get(org)
            .cloned()
            .unwrap_or_else(|| self.empty.clone())
    }

    /// Replaces every document with those of `records` (after storage
    /// recovered and may hold other keys than the documents say).
    pub fn reset(&self, records: &[PublicKeyRecord]) {
        let fresh = Jwks::new(records);
        let mut state = self.state.write().expect("jwks lock poisoned");
        *state = fresh.state.into_inner().expect("fresh lock");
        *self.all.write().expect("jwks lock poisoned") =
            fresh.all.into_inner().expect("fresh lock");
        *self.orgs.write().expect("jwks lock poisoned") =
            fresh.orgs.into_inner().expect("fresh lock");
    }

    /// One published key: its organisation and serialised JWK.
    pub fn key(&self, id: KeyId) -> Option<(OrgId, Box<[u8]>)> {
        let state = self.state.read().expect("jwks lock poisoned");
        state.all.get(&id).map(|p| (p.org.clone(), p.jwk.clone()))
    }

    /// When a published key expires (seconds since the epoch).
    pub fn expiry(&self, id: KeyId) -> Option<u64> {
        let state = self.state.read().expect("jwks lock poisoned");
        state.all.get(&id).and_then(|p| p.expires)
    }

    /// Whether `id` is published.
    pub fn contains(&self, id: KeyId) -> bool {
        let state = self.state.read().expect("jwks lock poisoned");
        state.all.contains_key(&id)
    }

    /// Publishes `record` (again, if it was: its expiry may have changed).
    pub fn added(&self, record: &PublicKeyRecord) {
        let mut state = self.state.write().expect("jwks lock poisoned");
        state.insert(record);
        self.publish(&state, &record.org);
    }

    pub fn removed(&self, org: &OrgId, id: KeyId) {
        let mut state = self.state.write().expect("jwks lock poisoned");
        state.all.remove(&id);
        if let Some(keys) = state.by_org.get_mut(org) {
            keys.remove(&id);
            if keys.is_empty() {
                state.by_org.remove(org);
            }
        }
        self.publish(&state, org);
    }

    /// Republishes the documents `org`'s change touched; called with the
    /// state lock held so that publications happen in change order.
    fn publish(&self, state: &State, org: &OrgId) {
        let all = Arc::new(state.document_all());
        *self.all.write().expect("jwks lock poisoned") = all;
        let mut orgs = self.orgs.write().expect("jwks lock poisoned");
        if state.by_org.contains_key(org) {
            orgs.insert(org.clone(), Arc::new(state.document_of(org)));
        } else {
            orgs.remove(org);
        }
    }
}

impl State {
    fn insert(&mut self, r: &PublicKeyRecord) {
        let jwk = serde_json::to_vec(&Jwk::from_record(r))
            .expect("a JWK always serialises")
            .into_boxed_slice();
        let published = Published {
            org: r.org.clone(),
            jwk,
            expires: r.life.expires_at_secs,
        };
        self.all.insert(r.id, published);
        self.by_org
            .entry(r.org.clone())
            .or_default()
            .insert(r.id, ());
    }

    fn document_all(&self) -> Document {
        let expires = self.all.values().filter_map(|p| p.expires).min();
        Document::build(self.all.values().map(|p| &p.jwk[..]), expires)
    }

    fn document_of(&self, org: &OrgId) -> Document {
        let ids = self.by_org.get(org).into_iter().flat_map(|m| m.keys());
        let keys = ids.map(|id| &self.all[id]);
        let expires = keys.clone().filter_map(|p| p.expires).min();
        Document::build(keys.map(|p| &p.jwk[..]), expires)
    }
}
