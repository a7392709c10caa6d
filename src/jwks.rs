//! The published keys as JWK Sets: one document of every key and one per
//! organisation, each with its strong `ETag`. Which keys are published is
//! the registry's to decide: it holds the one [`Jwks`] of a process and
//! is the only one that changes it.
//!
//! Each published key is held once, compactly: its record's fields, the
//! organisation's name shared with its other keys, and its SPKI and name
//! in one allocation (`GET /v1/keys/{id}` answers from here too). Its JWK
//! is written from the SPKI whenever a document lists it (a few hundred
//! nanoseconds, no allocation), so a change costs only its own key:
//! - an organisation's document (a few keys) is written per request;
//!   its `ETag` is computed on the first request after a change to it and
//!   kept until the next;
//! - the global document is built on the first request after any change and
//!   kept until the next, so a burst of changes costs one rebuild, and no
//!   change waits for one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::keys::{Jwk, KeyId, KeyName, KeySpec, Lifecycle, OrgId, PublicKeyRecord};

/// A JWK Set ready to send.
#[derive(Debug, Clone)]
pub struct Document {
    pub body: Bytes,
    /// A strong validator: quoted, a digest of the body.
    pub etag: String,
    /// The earliest expiry (seconds since the epoch) among the keys listed.
    pub expires: Option<u64>,
    /// What the HTTP layer prepares once per document (its header values),
    /// kept here so that it lives exactly as long as the document.
    pub prepared: OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
}

/// The digest an `ETag` quotes.
type Tag = [u8; 16];

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

    /// The document of `keys`, in the order given; `tag` gives its digest
    /// from its body.
    fn build<'a>(
        keys: impl Iterator<Item = &'a Key> + Clone,
        tag: impl FnOnce(&[u8]) -> Tag,
    ) -> Document {
        // Sized once, from above: at a million keys the global document is
        // ~440 MB, and a doubling Vec would touch up to twice that; pages
        // of the bound that are never written are never touched.
        let len = keys.clone().map(|k| k.jwk_len_bound() + 1).sum::<usize>() + 11;
        let mut body = Vec::with_capacity(len);
        body.extend_from_slice(b"{\"keys\":[");
        for (i, key) in keys.clone().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            Jwk::write(&mut body, key.id, key.spec, key.spki());
        }
        body.extend_from_slice(b"]}");
        Document {
            etag: format!("\"{}\"", hex::encode(tag(&body))),
            body: body.into(),
            expires: keys.filter_map(|k| k.life.expires_at_secs).min(),
            prepared: OnceLock::new(),
        }
    }
}

fn digest(body: &[u8]) -> Tag {
    let digest = Sha256::digest(body);
    digest[..16].try_into().expect("16 of 32 bytes")
}

/// One published key: what its record holds, the organisation's name
/// shared, the SPKI and the name in one allocation.
struct Key {
    id: KeyId,
    org: Arc<str>,
    /// The SPKI (DER), then the name (UTF-8).
    bytes: Box<[u8]>,
    /// Where the name starts in `bytes`.
    name_at: u16,
    spec: KeySpec,
    created_at_ms: u64,
    life: Lifecycle,
}

impl Key {
    fn new(r: &PublicKeyRecord, org: Arc<str>) -> Key {
        let (spki, name) = (&r.spki_der, r.name.as_str().as_bytes());
        Key {
            id: r.id,
            org,
            bytes: [spki.as_slice(), name].concat().into_boxed_slice(),
            name_at: u16::try_from(spki.len()).expect("an SPKI of at most 8192-bit RSA"),
            spec: r.spec,
            created_at_ms: r.created_at_ms,
            life: r.life,
        }
    }

    fn spki(&self) -> &[u8] {
        &self.bytes[..usize::from(self.name_at)]
    }

    fn name(&self) -> &str {
        std::str::from_utf8(&self.bytes[usize::from(self.name_at)..])
            .expect("a published key's name was a str")
    }

    /// At least as many bytes as its JWK: base64 of no more than the
    /// SPKI, and the members' names and fixed values.
    fn jwk_len_bound(&self) -> usize {
        self.spki().len().div_ceil(3) * 4 + 128
    }

    /// Its serialised JWK.
    fn jwk(&self) -> Vec<u8> {
        let mut jwk = Vec::with_capacity(self.jwk_len_bound());
        Jwk::write(&mut jwk, self.id, self.spec, self.spki());
        jwk
    }

    fn org(&self) -> OrgId {
        OrgId::parse(&self.org).expect("a published key's org id was parsed once")
    }

    /// Its record.
    fn record(&self) -> PublicKeyRecord {
        PublicKeyRecord {
            id: self.id,
            org: self.org(),
            name: KeyName::parse(self.name()).expect("a published key's name was parsed once"),
            spec: self.spec,
            spki_der: self.spki().to_vec(),
            created_at_ms: self.created_at_ms,
            life: self.life,
        }
    }
}

/// Published keys taken in one at a time (a read of the whole store, in
/// batches), before they replace a [`Jwks`]'s keys all at once
/// ([`Jwks::replace_loaded`]). Each key is copied out of its record, so
/// the records can go as soon as their batch is taken.
#[derive(Default)]
pub struct Loading {
    orgs: HashMap<Arc<str>, Org>,
    keys: Vec<Arc<Key>>,
}

impl Loading {
    /// Takes `record` in, to be published.
    pub fn add(&mut self, record: &PublicKeyRecord) {
        let org = org_name(&mut self.orgs, &record.org);
        self.keys.push(Arc::new(Key::new(record, org)));
    }

    /// How many keys were taken in.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// One organisation's published keys.
#[derive(Default)]
struct Org {
    /// In id (creation) order; the keys themselves, so that a document
    /// needs no look-up per key.
    keys: Vec<Arc<Key>>,
    /// Its document's digest, once asked for since its last change.
    tag: OnceLock<Tag>,
}

#[derive(Default)]
struct State {
    /// Every published key, in id (creation) order.
    keys: BTreeMap<KeyId, Arc<Key>>,
    orgs: HashMap<Arc<str>, Org>,
    /// Bumped by every change.
    generation: u64,
}

/// The published keys and documents. Reads take a read lock for as long as
/// an organisation's document takes to concatenate, or to snapshot the
/// keys for the global one; changes take the write lock for their own key.
pub struct Jwks {
    state: RwLock<State>,
    /// The global document and the generation it shows. Held while it is
    /// built, so that concurrent requests wait for one build.
    all: Mutex<Option<(u64, Arc<Document>)>>,
    empty: Arc<Document>,
}

impl Jwks {
    pub fn new<'a>(records: impl IntoIterator<Item = &'a PublicKeyRecord>) -> Jwks {
        Jwks::loaded(loading(records))
    }

    /// The JWK Sets of the keys `loading` took in.
    pub fn loaded(loading: Loading) -> Jwks {
        Jwks {
            state: RwLock::new(State::default().replaced(loading, |_| true)),
            all: Mutex::new(None),
            empty: Arc::new(Document::build(std::iter::empty::<&Key>(), digest)),
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
            let keys: Vec<Arc<Key>> = state.keys.values().cloned().collect();
            (state.generation, keys)
        };
        let doc = Arc::new(Document::build(keys.iter().map(|k| &**k), digest));
        *all = Some((generation, doc.clone()));
        doc
    }

    /// The JWK Set of one organisation (empty if it has no keys).
    pub fn of(&self, org: &OrgId) -> Arc<Document> {
        let state = self.read();
        let Some(o) = state.orgs.get(org.as_str()) else {
            return self.empty.clone();
        };
        let keys = o.keys.iter().map(|k| &**k);
        let tag = |body: &[u8]| *o.tag.get_or_init(|| digest(body));
        Arc::new(Document::build(keys, tag))
    }

    /// Replaces every key with those of `records`.
    pub fn replace<'a>(&self, records: impl IntoIterator<Item = &'a PublicKeyRecord>) {
        self.replace_loaded(loading(records), |_| true);
    }

    /// Replaces every key with those `loading` took in that `keep`.
    pub fn replace_loaded(&self, loading: Loading, keep: impl Fn(KeyId) -> bool) {
        let mut state = self.write();
        *state = std::mem::take(&mut *state).replaced(loading, keep);
        drop(state);
        self.forget_all();
    }

    /// The published keys' records, of one organisation or of all, in id
    /// order (a feed's `reset`).
    pub fn records(&self, org: Option<&OrgId>) -> Vec<PublicKeyRecord> {
        let keys: Vec<Arc<Key>> = {
            let state = self.read();
            match org {
                Some(org) => state
                    .orgs
                    .get(org.as_str())
                    .map(|o| o.keys.clone())
                    .unwrap_or_default(),
                None => state.keys.values().cloned().collect(),
            }
        };
        keys.iter().map(|k| k.record()).collect()
    }

    /// One published key: its organisation and serialised JWK.
    pub fn key(&self, id: KeyId) -> Option<(OrgId, Vec<u8>)> {
        let key = self.read().keys.get(&id)?.clone();
        Some((key.org(), key.jwk()))
    }

    /// One published key's record, as `GET /v1/keys/{id}` shows it.
    pub fn record(&self, id: KeyId) -> Option<PublicKeyRecord> {
        let key = self.read().keys.get(&id)?.clone();
        Some(key.record())
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
    /// whether it was not published yet.
    pub fn added(&self, record: &PublicKeyRecord) -> bool {
        let mut state = self.write();
        let new = state.insert(record).is_none();
        drop(state);
        self.forget_all();
        new
    }

    /// Unpublishes key `id` of `org`; whether it was published. `_org` is
    /// the key's organisation; the key itself says which it is.
    pub fn removed(&self, _org: &OrgId, id: KeyId) -> bool {
        let mut state = self.write();
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

impl State {
    /// This state with its keys replaced by those `loading` took in that
    /// `keep`.
    fn replaced(self, loading: Loading, keep: impl Fn(KeyId) -> bool) -> State {
        let Loading { mut orgs, keys } = loading;
        // Collected in one go: a store lists keys in id order, and a
        // B-tree built from sorted keys has full nodes. Of one id, the
        // last taken in stays.
        let keys: BTreeMap<KeyId, Arc<Key>> = keys
            .into_iter()
            .filter(|k| keep(k.id))
            .map(|k| (k.id, k))
            .collect();
        for key in keys.values() {
            let org = orgs.get_mut(&*key.org).expect("listed above");
            org.keys.push(key.clone());
        }
        orgs.retain(|_, org| !org.keys.is_empty());
        for org in orgs.values_mut() {
            org.keys.shrink_to_fit();
        }
        orgs.shrink_to_fit();
        State {
            keys,
            orgs,
            generation: self.generation + 1,
        }
    }

    /// Publishes `r`, replacing the key of its id; the key replaced.
    fn insert(&mut self, r: &PublicKeyRecord) -> Option<Arc<Key>> {
        let old = self.remove(r.id);
        self.generation += 1;
        let org = org_name(&mut self.orgs, &r.org);
        let key = Arc::new(Key::new(r, org.clone()));
        self.keys.insert(r.id, key.clone());
        let o = self.orgs.get_mut(&org).expect("listed by org_name");
        let at = o.keys.partition_point(|k| k.id < r.id);
        o.keys.insert(at, key);
        o.tag = OnceLock::new();
        old
    }

    /// Unpublishes key `id`; the key it was.
    fn remove(&mut self, id: KeyId) -> Option<Arc<Key>> {
        let key = self.keys.remove(&id)?;
        self.generation += 1;
        let o = self
            .orgs
            .get_mut(&*key.org)
            .expect("a published key's organisation is listed");
        o.keys.retain(|k| k.id != id);
        o.tag = OnceLock::new();
        if o.keys.is_empty() {
            self.orgs.remove(&*key.org);
        }
        Some(key)
    }
}

/// `records` taken in, in their order.
fn loading<'a>(records: impl IntoIterator<Item = &'a PublicKeyRecord>) -> Loading {
    let mut loading = Loading::default();
    for r in records {
        loading.add(r);
    }
    loading
}

/// `org`'s name as `orgs` holds it (listed, without keys, if it was not),
/// so that every key of an organisation shares one.
fn org_name(orgs: &mut HashMap<Arc<str>, Org>, org: &OrgId) -> Arc<str> {
    if let Some((name, _)) = orgs.get_key_value(org.as_str()) {
        return name.clone();
    }
    let name: Arc<str> = org.as_str().into();
    orgs.insert(name.clone(), Org::default());
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate, Curve};

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
        // Which organisations' digests are computed and kept.
        let tagged = |jwks: &Jwks| {
            let state = jwks.read();
            let mut orgs: Vec<String> = state
                .orgs
                .iter()
                .filter(|(_, o)| o.tag.get().is_some())
                .map(|(n, _)| n.to_string())
                .collect();
            orgs.sort();
            orgs
        };
        assert!(tagged(&jwks).is_empty(), "computed on request only");
        let (a, b, all) = (jwks.of(&org("a")), jwks.of(&org("b")), jwks.all());
        assert_eq!(tagged(&jwks), ["a", "b"]);
        // Kept while nothing changes: the very same global document.
        assert!(Arc::ptr_eq(&all, &jwks.all()));
        assert_eq!(a.etag, jwks.of(&org("a")).etag);

        type Change = fn(&Jwks, &PublicKeyRecord) -> bool;
        let changes: [(&str, Change); 4] = [
            ("added", |j, r| j.added(r)),
            ("withdrawn", |j, r| j.removed(&r.org, r.id)),
            ("added again", |j, r| j.added(r)),
            ("removed", |j, r| j.removed(&r.org, r.id)),
        ];
        let (mut a, mut all) = (a, all);
        let a2 = record("a", 3);
        for (what, change) in changes {
            assert!(change(&jwks, &a2), "{what}");
            assert_eq!(tagged(&jwks), ["b"], "{what}: only a's digest dropped");
            assert!(jwks.all.lock().unwrap().is_none(), "{what}: global dropped");
            let (a_now, all_now) = (jwks.of(&org("a")), jwks.all());
            assert_ne!(a_now.etag, a.etag, "{what}: a's ETag");
            assert_ne!(all_now.etag, all.etag, "{what}: the global ETag");
            assert_eq!(jwks.of(&org("b")).body, b.body, "{what}: b untouched");
            assert_eq!(jwks.of(&org("b")).etag, b.etag, "{what}: b's ETag");
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
        let uploaded = Lifecycle {
            origin: crate::keys::Origin::Uploaded,
            ..Lifecycle::default()
        };
        let specs = [
            (KeySpec::default(), Lifecycle::default()),
            (KeySpec::Ec { curve: Curve::P256 }, uploaded),
            (KeySpec::Ec { curve: Curve::P384 }, Lifecycle::default()),
            (KeySpec::Ed25519, uploaded),
        ];
        for (serial, (spec, life)) in (1..).zip(specs) {
            let r = PublicKeyRecord {
                spec,
                spki_der: generate(spec).spki_der().to_vec(),
                life,
                ..record("a", serial)
            };
            let jwks = Jwks::new([&r]);
            // The SPKI is read back from the JWK held: the very bytes.
            assert_eq!(jwks.record(r.id), Some(r.clone()), "{spec:?}");
            let (org_of, jwk) = jwks.key(r.id).unwrap();
            assert_eq!(org_of, r.org);
            let expected = serde_json::to_vec(&Jwk::from_record(&r)).unwrap();
            assert_eq!(&jwk[..], &expected[..], "{spec:?}");
        }

        let a1 = record("a", 1);
        let jwks = Jwks::new([&a1]);
        assert_eq!(jwks.expiry(a1.id), a1.life.expires_at_secs);
        assert!(jwks.contains(a1.id));
        assert_eq!(jwks.record(record("a", 2).id), None);

        let mut renamed = a1.clone();
        renamed.name = KeyName::parse("renamed").unwrap();
        assert!(!jwks.added(&renamed), "published already");
        assert_eq!(jwks.record(a1.id), Some(renamed));
    }

    #[test]
    fn many_keys_taken_in_any_order_are_listed_in_id_order() {
        let records: Vec<_> = (0..10_007)
            .map(|i| record(&format!("o{}", i % 3), i))
            .collect();
        let jwks = Jwks::new(records.iter().rev());
        let mut expected = b"{\"keys\":[".to_vec();
        for (i, r) in records.iter().enumerate() {
            if i > 0 {
                expected.push(b',');
            }
            expected.extend(serde_json::to_vec(&Jwk::from_record(r)).unwrap());
        }
        expected.extend(b"]}");
        assert_eq!(&jwks.all().body[..], &expected[..]);
        let o1: Vec<&PublicKeyRecord> = records.iter().skip(1).step_by(3).collect();
        assert_eq!(kids(&jwks.of(&org("o1"))), ids(&o1));
    }
}
