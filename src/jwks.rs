//! The published keys and their JWK Sets: one document of every key and one
//! per organisation, each with its strong `ETag`.
//!
//! Each published key is held once, compactly (its public parts, the
//! organisation's name shared with its other keys); that is also what
//! `GET /v1/keys/{id}` answers from. A document is built when it is first
//! asked for after a change and kept until the next change that touches it,
//! so a change costs the keys of its own organisation only, and a burst of
//! changes costs one rebuild of the global document on its next request.
//! Per-organisation documents are kept up to [`ORG_DOCS_BYTES`]; past that
//! the oldest built is dropped, to be built again when asked for.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::keys::{Jwk, KeyId, KeyName, KeySpec, Lifecycle, OrgId, PublicKeyRecord};

/// The most bytes of per-organisation documents kept built: with keys of
/// ~450 bytes each, some 15,000 organisations of 5 keys.
pub const ORG_DOCS_BYTES: usize = 32 << 20;

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

    /// The document of `keys`, in the order given.
    fn build<'a>(keys: impl ExactSizeIterator<Item = (KeyId, &'a Key)>) -> Document {
        // An RSA-2048 JWK is ~440 bytes; the estimate only saves regrowth.
        let mut body = Vec::with_capacity(keys.len() * 448 + 12);
        body.extend_from_slice(b"{\"keys\":[");
        let mut expires: Option<u64> = None;
        for (i, (id, key)) in keys.enumerate() {
            if i > 0 {
                body.push(b',');
            }
            serde_json::to_writer(&mut body, &Jwk::from_record(&key.record(id)))
                .expect("a JWK always serialises");
            if let Some(at) = key.life.expires_at_secs {
                expires = Some(expires.map_or(at, |e| e.min(at)));
            }
        }
        body.extend_from_slice(b"]}");
        body.shrink_to_fit();
        let digest = Sha256::digest(&body);
        let etag = format!("\"{}\"", hex::encode(&digest[..16]));
        Document {
            body: body.into(),
            etag,
            expires,
        }
    }
}

/// One published key: what its record holds, the organisation's name shared.
struct Key {
    org: Arc<str>,
    name: Box<str>,
    spec: KeySpec,
    spki_der: Box<[u8]>,
    created_at_ms: u64,
    life: Lifecycle,
}

impl Key {
    fn record(&self, id: KeyId) -> PublicKeyRecord {
        PublicKeyRecord {
            id,
            org: OrgId::parse(&self.org).expect("a published key's org id was parsed once"),
            name: KeyName::parse(&self.name).expect("a published key's name was parsed once"),
            spec: self.spec,
            spki_der: self.spki_der.to_vec(),
            created_at_ms: self.created_at_ms,
            life: self.life,
        }
    }
}

/// One organisation's published keys and, if built since its last change,
/// its document.
#[derive(Default)]
struct Org {
    /// In id (creation) order.
    keys: Box<[KeyId]>,
    /// The generation of this organisation's last change.
    changed: u64,
    doc: Option<Built>,
}

/// A built per-organisation document and the stamp of its building.
struct Built {
    doc: Arc<Document>,
    stamp: u64,
}

struct State {
    /// Every published key, in id (creation) order.
    keys: BTreeMap<KeyId, Arc<Key>>,
    orgs: HashMap<Arc<str>, Org>,
    /// Bumped by every change.
    generation: u64,
    /// Per-organisation documents kept, oldest built first, by stamp; an
    /// entry whose organisation holds another stamp is stale.
    built: VecDeque<(Arc<str>, u64)>,
    built_bytes: usize,
    built_count: usize,
    /// At most this many bytes of them: [`ORG_DOCS_BYTES`].
    built_budget: usize,
    next_stamp: u64,
    /// Keys removed since start: never published again, so that a stale
    /// view of the store (read before the delete) cannot bring one back.
    removed: HashSet<KeyId>,
    /// Keys withdrawn here (disabled, expired) and not added back here: a
    /// stale read of the store, by the cluster follower or an unknown-key
    /// look-up, must not publish one again (see `learned`).
    withdrawn: HashSet<KeyId>,
}

/// The published keys and documents. Reads of a built document take a read
/// lock just long enough to clone an `Arc`; no document is built under the
/// write lock.
pub struct Jwks {
    state: RwLock<State>,
    /// The global document and the generation it shows. Held while it is
    /// built, so that concurrent requests wait for one build.
    all: Mutex<Option<(u64, Arc<Document>)>>,
    empty: Arc<Document>,
}

impl Jwks {
    pub fn new<'a>(records: impl IntoIterator<Item = &'a PublicKeyRecord>) -> Jwks {
        let mut state = State::default();
        for r in records {
            state.insert(r);
        }
        Jwks {
            state: RwLock::new(state),
            all: Mutex::new(None),
            empty: Arc::new(Document::build(std::iter::empty::<(KeyId, &Key)>())),
        }
    }

    /// The JWK Set of every key, built if a change came since the last one.
    pub fn all(&self) -> Arc<Document> {
        let mut all = self.all.lock().expect("jwks lock poisoned");
        let (generation, keys) = {
            let state = self.read();
            if let Some((_, doc)) = all.as_ref().filter(|(g, _)| *g == state.generation) {
                return doc.clone();
            }
            // A snapshot, so that changes need not wait for the build.
            let keys: Vec<(KeyId, Arc<Key>)> =
                state.keys.iter().map(|(id, k)| (*id, k.clone())).collect();
            (state.generation, keys)
        };
        let doc = Arc::new(Document::build(keys.iter().map(|(id, k)| (*id, &**k))));
        *all = Some((generation, doc.clone()));
        doc
    }

    /// The JWK Set of one organisation (empty if it has no keys), built if
    /// a change to it came since the last one.
    pub fn of(&self, org: &OrgId) -> Arc<Document> {
        let (changed, keys) = {
            let state = self.read();
            let Some(o) = state.orgs.get(org.as_str()) else {
                return self.empty.clone();
            };
            if let Some(built) = &o.doc {
                return built.doc.clone();
            }
            let keys: Vec<(KeyId, Arc<Key>)> = o
                .keys
                .iter()
                .map(|id| (*id, state.keys[id].clone()))
                .collect();
            (o.changed, keys)
        };
        let doc = Arc::new(Document::build(keys.iter().map(|(id, k)| (*id, &**k))));
        let mut state = self.write();
        // Kept only if nothing changed the organisation meanwhile.
        if state.orgs.get(org.as_str()).map(|o| o.changed) == Some(changed) {
            state.keep(org, doc.clone());
        }
        doc
    }

    /// Replaces every key with those of `records` (after storage
    /// recovered and may hold other keys than the documents say).
    pub fn reset<'a>(&self, records: impl IntoIterator<Item = &'a PublicKeyRecord>) {
        let mut state = self.write();
        let mut next = State {
            generation: state.generation + 1,
            next_stamp: state.next_stamp,
            built_budget: state.built_budget,
            // Keys removed or withdrawn here stay so: `records` may be a
            // read that predates those changes.
            removed: std::mem::take(&mut state.removed),
            withdrawn: std::mem::take(&mut state.withdrawn),
            ..State::default()
        };
        for r in records {
            if !next.removed.contains(&r.id) && !next.withdrawn.contains(&r.id) {
                next.insert(r);
            }
        }
        *state = next;
        drop(state);
        self.forget_all();
    }

    /// One published key: its organisation and serialised JWK.
    pub fn key(&self, id: KeyId) -> Option<(OrgId, Box<[u8]>)> {
        let record = self.record(id)?;
        let jwk = serde_json::to_vec(&Jwk::from_record(&record)).expect("a JWK always serialises");
        Some((record.org, jwk.into_boxed_slice()))
    }

    /// One published key's record, as `GET /v1/keys/{id}` shows it.
    pub fn record(&self, id: KeyId) -> Option<PublicKeyRecord> {
        let key = self.read().keys.get(&id)?.clone();
        Some(key.record(id))
    }

    /// When a published key expires (seconds since the epoch).
    pub fn expiry(&self, id: KeyId) -> Option<u64> {
        self.read()
            .keys
            .get(&id)
            .and_then(|k| k.life.expires_at_secs)
    }

    /// Whether `id` is published.
    pub fn contains(&self, id: KeyId) -> bool {
        self.read().keys.contains_key(&id)
    }

    /// Publishes `record` (again, if it was: its expiry may have changed);
    /// whether it was not published yet. A removed key is not published
    /// again.
    pub fn added(&self, record: &PublicKeyRecord) -> bool {
        let mut state = self.write();
        if state.removed.contains(&record.id) {
            return false;
        }
        state.withdrawn.remove(&record.id);
        self.publish(state, record)
    }

    /// Publishes an active `record` read from the store by something other
    /// than this instance's own change (the cluster follower, an unknown-key
    /// look-up); whether it was not published yet. A key removed or
    /// withdrawn here is not published: that read may predate the change.
    pub fn learned(&self, record: &PublicKeyRecord) -> bool {
        let state = self.write();
        if state.removed.contains(&record.id) || state.withdrawn.contains(&record.id) {
            return false;
        }
        self.publish(state, record)
    }

    /// Unpublishes key `id` of `org` for good; whether it was published.
    pub fn removed(&self, org: &OrgId, id: KeyId) -> bool {
        self.unpublish(org, id, true)
    }

    /// Unpublishes key `id` of `org` until it is added again (a disabled or
    /// expired key); whether it was published.
    pub fn withdrawn(&self, org: &OrgId, id: KeyId) -> bool {
        self.unpublish(org, id, false)
    }

    fn publish(&self, mut state: RwLockWriteGuard<'_, State>, record: &PublicKeyRecord) -> bool {
        let new = state.insert(record).is_none();
        drop(state);
        self.forget_all();
        new
    }

    /// `_org` is the key's organisation; the key itself says which it is.
    fn unpublish(&self, _org: &OrgId, id: KeyId, for_good: bool) -> bool {
        let mut state = self.write();
        if for_good {
            state.removed.insert(id);
        } else {
            state.withdrawn.insert(id);
        }
        if state.remove(id).is_none() {
            return false;
        }
        drop(state);
        self.forget_all();
        true
    }

    /// Drops the global document if no build holds it: it is out of date.
    /// A build under way keeps it; the next request sees its generation
    /// is old and builds again.
    fn forget_all(&self) {
        if let Ok(mut all) = self.all.try_lock() {
            *all = None;
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().expect("jwks lock poisoned")
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().expect("jwks lock poisoned")
    }
}

impl Default for State {
    fn default() -> State {
        State {
            keys: BTreeMap::new(),
            orgs: HashMap::new(),
            generation: 0,
            built: VecDeque::new(),
            built_bytes: 0,
            built_count: 0,
            built_budget: ORG_DOCS_BYTES,
            next_stamp: 0,
            removed: HashSet::new(),
            withdrawn: HashSet::new(),
        }
    }
}

impl State {
    /// Publishes `r`, replacing the key of its id; the key replaced.
    fn insert(&mut self, r: &PublicKeyRecord) -> Option<Arc<Key>> {
        let old = self.remove(r.id);
        self.generation += 1;
        let generation = self.generation;
        let org_name = match self.orgs.get_key_value(r.org.as_str()) {
            Some((name, _)) => name.clone(),
            None => Arc::from(r.org.as_str()),
        };
        let key = Key {
            org: org_name.clone(),
            name: r.name.as_str().into(),
            spec: r.spec,
            spki_der: r.spki_der.as_slice().into(),
            created_at_ms: r.created_at_ms,
            life: r.life,
        };
        self.keys.insert(r.id, Arc::new(key));
        let org = self.orgs.entry(org_name).or_default();
        let mut ids = std::mem::take(&mut org.keys).into_vec();
        let at = ids.binary_search(&r.id).unwrap_or_else(|at| at);
        ids.insert(at, r.id);
        org.keys = ids.into_boxed_slice();
        self.changed(r.org.as_str(), generation);
        old
    }

    /// Unpublishes key `id`; the key it was.
    fn remove(&mut self, id: KeyId) -> Option<Arc<Key>> {
        let key = self.keys.remove(&id)?;
        self.generation += 1;
        let generation = self.generation;
        let org = self
            .orgs
            .get_mut(&*key.org)
            .expect("a published key's organisation is listed");
        org.keys = org.keys.iter().copied().filter(|k| *k != id).collect();
        if org.keys.is_empty() {
            if let Some(built) = self.orgs.remove(&*key.org).and_then(|o| o.doc) {
                self.unkeep(&built);
            }
        } else {
            self.changed(&key.org, generation);
        }
        Some(key)
    }

    /// Marks `org` changed at `generation` and drops its document.
    fn changed(&mut self, org: &str, generation: u64) {
        let o = self
            .orgs
            .get_mut(org)
            .expect("a changed organisation is listed");
        o.changed = generation;
        if let Some(built) = o.doc.take() {
            self.unkeep(&built);
        }
    }

    /// Keeps `doc` as `org`'s, dropping the oldest documents kept past
    /// [`ORG_DOCS_BYTES`].
    fn keep(&mut self, org: &OrgId, doc: Arc<Document>) {
        let Some((name, o)) = self.orgs.get_key_value(org.as_str()) else {
            return;
        };
        if o.doc.is_some() {
            return;
        }
        let name = name.clone();
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        self.built_bytes += doc.body.len();
        self.built_count += 1;
        self.built.push_back((name.clone(), stamp));
        self.orgs.get_mut(&name).expect("just looked up").doc = Some(Built { doc, stamp });
        while self.built_bytes > self.built_budget {
            let Some((oldest, stamp)) = self.built.pop_front() else {
                break;
            };
            let o = self.orgs.get_mut(&oldest);
            if let Some(o) = o.filter(|o| o.doc.as_ref().is_some_and(|b| b.stamp == stamp)) {
                let built = o.doc.take().expect("just checked");
                self.unkeep(&built);
            }
        }
        // Entries of documents dropped by a change linger; clear them out
        // once they outnumber the documents kept.
        if self.built.len() > 2 * self.built_count + 64 {
            let orgs = &self.orgs;
            self.built.retain(|(org, stamp)| {
                let doc = orgs.get(org).and_then(|o| o.doc.as_ref());
                doc.is_some_and(|b| b.stamp == *stamp)
            });
        }
    }

    /// Accounts for a kept document dropped.
    fn unkeep(&mut self, built: &Built) {
        self.built_bytes -= built.doc.body.len();
        self.built_count -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate;

    /// Ed25519: generated fast, and its JWK is as good as any here.
    fn record(org: &str, serial: u64) -> PublicKeyRecord {
        thread_local! {
            static SPKI: Vec<u8> = generate(KeySpec::Ed25519).spki_der().to_vec();
        }
        PublicKeyRecord {
            id: KeyId::new(ulid::Ulid::from_parts(1_700_000_000_000 + serial, 0)),
            org: OrgId::parse(org).unwrap(),
            name: KeyName::parse(&format!("key {serial}")).unwrap(),
            spec: KeySpec::Ed25519,
            spki_der: SPKI.with(Clone::clone),
            created_at_ms: 1_700_000_000_000 + serial,
            life: Lifecycle {
                expires_at_secs: Some(2_000_000_000 + serial),
                ..Lifecycle::default()
            },
        }
    }

    fn org(name: &str) -> OrgId {
        OrgId::parse(name).unwrap()
    }

    fn kids(doc: &Document) -> Vec<String> {
        let set: serde_json::Value = serde_json::from_slice(&doc.body).unwrap();
        set["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    fn ids(records: &[&PublicKeyRecord]) -> Vec<String> {
        records.iter().map(|r| r.id.to_string()).collect()
    }

    #[test]
    fn documents_list_each_organisations_keys_in_id_order() {
        let (a1, b1, a2) = (record("a", 1), record("b", 2), record("a", 3));
        let jwks = Jwks::new([&a2, &b1, &a1]);
        assert_eq!(kids(&jwks.of(&org("a"))), ids(&[&a1, &a2]));
        assert_eq!(kids(&jwks.of(&org("b"))), ids(&[&b1]));
        assert_eq!(kids(&jwks.all()), ids(&[&a1, &b1, &a2]));
        assert_eq!(&jwks.of(&org("nobody")).body[..], b"{\"keys\":[]}");
        assert_eq!(jwks.of(&org("a")).expires, Some(2_000_000_001));
        assert_eq!(jwks.all().expires, Some(2_000_000_001));
    }

    #[test]
    fn a_change_rebuilds_only_its_organisation_and_the_global_document() {
        let (a1, b1) = (record("a", 1), record("b", 2));
        let jwks = Jwks::new([&a1, &b1]);
        let (a, b, all) = (jwks.of(&org("a")), jwks.of(&org("b")), jwks.all());
        // Kept while nothing changes: the very same documents.
        assert!(Arc::ptr_eq(&a, &jwks.of(&org("a"))));
        assert!(Arc::ptr_eq(&all, &jwks.all()));

        type Change = fn(&Jwks, &PublicKeyRecord) -> bool;
        let changes: [(&str, Change); 4] = [
            ("added", |j, r| j.added(r)),
            ("withdrawn", |j, r| j.withdrawn(&r.org, r.id)),
            ("added again", |j, r| j.added(r)),
            ("removed", |j, r| j.removed(&r.org, r.id)),
        ];
        let (mut a, mut all) = (a, all);
        let a2 = record("a", 3);
        for (what, change) in changes {
            assert!(change(&jwks, &a2), "{what}");
            let (a_now, all_now) = (jwks.of(&org("a")), jwks.all());
            assert_ne!(a_now.etag, a.etag, "{what}: a's ETag");
            assert_ne!(all_now.etag, all.etag, "{what}: the global ETag");
            assert!(Arc::ptr_eq(&b, &jwks.of(&org("b"))), "{what}: b untouched");
            (a, all) = (a_now, all_now);
        }
        // Back to the first keys: the same bytes, so the same ETags.
        assert_eq!(a.etag, Jwks::new([&a1]).of(&org("a")).etag);
    }

    #[test]
    fn an_organisation_whose_last_key_goes_has_an_empty_set() {
        let a1 = record("a", 1);
        let jwks = Jwks::new([&a1]);
        assert_eq!(kids(&jwks.of(&org("a"))).len(), 1);
        assert!(jwks.removed(&a1.org, a1.id));
        assert!(!jwks.removed(&a1.org, a1.id), "already gone");
        assert_eq!(&jwks.of(&org("a")).body[..], b"{\"keys\":[]}");
        assert_eq!(&jwks.all().body[..], b"{\"keys\":[]}");
    }

    #[test]
    fn a_key_is_served_from_memory_as_it_was_published() {
        let a1 = record("a", 1);
        let jwks = Jwks::new([&a1]);
        assert_eq!(jwks.record(a1.id), Some(a1.clone()));
        let (org_of, jwk) = jwks.key(a1.id).unwrap();
        assert_eq!(org_of, a1.org);
        assert_eq!(
            &jwk[..],
            &serde_json::to_vec(&Jwk::from_record(&a1)).unwrap()[..]
        );
        assert_eq!(jwks.expiry(a1.id), a1.life.expires_at_secs);
        assert!(jwks.contains(a1.id));

        let mut renamed = a1.clone();
        renamed.name = KeyName::parse("renamed").unwrap();
        assert!(!jwks.added(&renamed), "published already");
        assert_eq!(jwks.record(a1.id), Some(renamed));
    }

    #[test]
    fn removed_and_withdrawn_keys_stay_out_of_stale_reads() {
        let (a1, a2) = (record("a", 1), record("a", 2));
        let jwks = Jwks::new([&a1, &a2]);
        assert!(jwks.removed(&a1.org, a1.id));
        assert!(jwks.withdrawn(&a2.org, a2.id));
        for r in [&a1, &a2] {
            assert!(!jwks.learned(r), "{}: a stale read", r.id);
        }
        jwks.reset([&a1, &a2]);
        assert!(!jwks.contains(a1.id) && !jwks.contains(a2.id));
        assert!(!jwks.added(&a1), "removed for good");
        assert!(jwks.added(&a2), "an enable publishes a withdrawn key");
        assert_eq!(kids(&jwks.of(&org("a"))), ids(&[&a2]));
        assert_eq!(jwks.record(a1.id), None);
    }

    #[test]
    fn documents_kept_stay_within_their_budget() {
        let records: Vec<_> = (0..4).map(|i| record(&format!("o{i}"), i)).collect();
        let jwks = Jwks::new(&records);
        let one = jwks.of(&records[0].org).body.len();
        // Room for two documents (all are the same size).
        jwks.write().built_budget = 2 * one;
        let docs: Vec<_> = records.iter().map(|r| jwks.of(&r.org)).collect();
        let state = jwks.read();
        assert_eq!((state.built_count, state.built_bytes), (2, 2 * one));
        drop(state);
        // The oldest built were dropped and are built again, the same
        // (newest first: each rebuild drops the oldest kept).
        for (i, (r, doc)) in records.iter().zip(&docs).enumerate().rev() {
            let again = jwks.of(&r.org);
            assert_eq!(again.etag, doc.etag);
            assert_eq!(Arc::ptr_eq(&again, doc), i >= 2, "o{i}");
        }
        assert!(jwks.read().built_bytes <= 2 * one);
        // Changes drop documents and their accounting.
        for r in &records {
            jwks.removed(&r.org, r.id);
        }
        let state = jwks.read();
        assert_eq!((state.built_count, state.built_bytes), (0, 0));
    }
}
