//! The published keys as JWK Sets: one document of every key and one per
//! organisation, each with its strong `ETag`. Which keys are published is
//! the registry's to decide: it holds the one [`Jwks`] of a process and
//! is the only one that changes it.
//!
//! Each published key is held once, compactly: its record's fields, the
//! organisation's name shared with its other keys, and its SPKI and name
//! in one allocation (`GET /v1/keys/{id}` answers from here too). Its JWK
//! is written from the SPKI whenever a document is built (a few hundred
//! nanoseconds, no allocation), so a change costs only its own key, and
//! documents are kept so that a repeated request is a look-up:
//! - an organisation's document is built on its first request after a
//!   change to it and kept, up to [`KEPT_BYTES`] of documents in all (a
//!   moka cache weighed by body bytes, which keeps those asked for most).
//!   Why a bound: at a million keys in 200,000 organisations, keeping
//!   every document ever asked for would hold ~500 MB more, as much as
//!   the keys themselves; 64 MiB keeps the documents of ~25,000
//!   organisations of five RSA keys, and RSS stays well under the 1 GiB
//!   goal (docs/performance.md, "A million keys"). A document evicted is
//!   built again on request, from its kept digest (a few microseconds).
//! - the global document is built on the first request after any change and
//!   kept until the next, so a burst of changes costs one rebuild,
//!   concurrent requests wait for one build, and no change waits for one.
//!   Serving it unchanged takes no lock: an atomic load of the generation
//!   and, per thread, the document that thread served last.
//!
//! *No document outlives a change:* each change bumps the generation (and
//! sets its organisation's version to it) under the write lock; a kept
//! document is served only if it was built at the generation (version)
//! read now, under the read lock for an organisation's, from the atomic
//! the write lock sets for the global one. A request that starts after a
//! change returned therefore never gets a document from before it, even
//! if a build that started before the change finishes after it.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

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
    /// Its document's digest, once asked for since its last change (kept
    /// beside the keys, so that a document evicted is built again without
    /// hashing it again).
    tag: OnceLock<Tag>,
    /// The generation of its last change: a kept document of another
    /// version is not served.
    version: u64,
}

#[derive(Default)]
struct State {
    /// Every published key, in id (creation) order.
    keys: BTreeMap<KeyId, Arc<Key>>,
    orgs: HashMap<Arc<str>, Org>,
    /// Bumped by every change.
    generation: u64,
}

/// The most bytes of organisations' documents kept at once (weighed by
/// [`kept_weight`]); why this bound, in the module's doc.
pub const KEPT_BYTES: u64 = 64 << 20;

/// What an organisation's kept document weighs: its body and `ETag`, and
/// about what the document, its prepared headers and the cache's entry
/// hold besides.
fn kept_weight(doc: &Document) -> u32 {
    u32::try_from(doc.body.len() + doc.etag.len() + 512).unwrap_or(u32::MAX)
}

/// The documents of organisations kept: by name, with the version each
/// was built at.
type Kept = moka::sync::Cache<Arc<str>, (u64, Arc<Document>)>;

/// Numbers each [`Jwks`] of the process, for [`SERVED`].
static JWKS_IDS: AtomicU64 = AtomicU64::new(0);

/// A global document one thread served, and the generation it shows.
struct Served {
    /// [`Jwks::id`] of the `Jwks` it came from.
    jwks: u64,
    generation: u64,
    /// Weak: a document is freed once its `Jwks` lets it go, whichever
    /// threads served it.
    doc: Weak<Document>,
}

/// How many `Jwks`' global documents a thread remembers (a process has
/// one; tests and benches a few).
const SERVED_PER_THREAD: usize = 4;

thread_local! {
    /// The global documents this thread served last: what lets it serve
    /// an unchanged one without a lock, and without writing to memory
    /// that other threads' requests write (but the document's count).
    static SERVED: RefCell<Vec<Served>> = const { RefCell::new(Vec::new()) };
}

/// The published keys and documents. Reads take a read lock for as long as
/// an organisation's document takes to look up (or concatenate), or to
/// snapshot the keys for the global one; changes take the write lock for
/// their own key. An unchanged global document is served without a lock.
pub struct Jwks {
    state: RwLock<State>,
    /// `state`'s generation, set under its write lock: read without it.
    generation: AtomicU64,
    /// The global document and the generation it shows. Held while it is
    /// built, so that concurrent requests wait for one build; taken only
    /// when a thread has not served the current one yet.
    all: Mutex<Option<(u64, Arc<Document>)>>,
    /// Organisations' documents, built on request.
    kept: Kept,
    /// This `Jwks` among the process's, for [`SERVED`].
    id: u64,
    empty: Arc<Document>,
}

impl Jwks {
    pub fn new<'a>(records: impl IntoIterator<Item = &'a PublicKeyRecord>) -> Jwks {
        Jwks::loaded(loading(records))
    }

    /// The JWK Sets of the keys `loading` took in.
    pub fn loaded(loading: Loading) -> Jwks {
        Jwks::keeping(loading, KEPT_BYTES)
    }

    /// The JWK Sets of the keys `loading` took in, keeping up to `bytes`
    /// of organisations' documents.
    fn keeping(loading: Loading, bytes: u64) -> Jwks {
        let state = State::default().replaced(loading, |_| true);
        Jwks {
            generation: AtomicU64::new(state.generation),
            state: RwLock::new(state),
            all: Mutex::new(None),
            kept: moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(|_: &Arc<str>, kept: &(u64, Arc<Document>)| kept_weight(&kept.1))
                .build(),
            id: JWKS_IDS.fetch_add(1, Ordering::Relaxed),
            empty: Arc::new(Document::build(std::iter::empty::<&Key>(), digest)),
        }
    }

    /// The JWK Set of every key, built if a change came since the last one.
    pub fn all(&self) -> Arc<Document> {
        // Set under the write lock before a change returns: a request that
        // starts after it reads the generation it made, or a later one.
        let generation = self.generation.load(Ordering::Acquire);
        // `try_with`: a thread whose locals are gone (exiting) takes the
        // lock as any first request does.
        let served = SERVED.try_with(|served| {
            served
                .borrow()
                .iter()
                .find(|s| s.jwks == self.id && s.generation == generation)
                .and_then(|s| s.doc.upgrade())
        });
        if let Ok(Some(doc)) = served {
            return doc;
        }
        let (generation, doc) = self.build_all();
        let _ = SERVED.try_with(|served| {
            let mut served = served.borrow_mut();
            served.retain(|s| s.jwks != self.id);
            if served.len() >= SERVED_PER_THREAD {
                served.remove(0);
            }
            served.push(Served {
                jwks: self.id,
                generation,
                doc: Arc::downgrade(&doc),
            });
        });
        doc
    }

    /// The global document of the current generation, and that generation:
    /// the one kept, or built.
    fn build_all(&self) -> (u64, Arc<Document>) {
        let mut all = self.all.lock().expect("jwks lock poisoned");
        let (generation, keys) = {
            let state = self.read();
            if let Some((g, doc)) = all.as_ref().filter(|(g, _)| *g == state.generation) {
                return (*g, doc.clone());
            }
            // A snapshot, so that changes need not wait for the build.
            let keys: Vec<Arc<Key>> = state.keys.values().cloned().collect();
            (state.generation, keys)
        };
        let doc = Arc::new(Document::build(keys.iter().map(|k| &**k), digest));
        *all = Some((generation, doc.clone()));
        (generation, doc)
    }

    /// The JWK Set of one organisation (empty if it has no keys).
    pub fn of(&self, org: &OrgId) -> Arc<Document> {
        let state = self.read();
        let Some((name, o)) = state.orgs.get_key_value(org.as_str()) else {
            return self.empty.clone();
        };
        // Under the read lock: no change to it can come between the check
        // and the answer.
        if let Some((_, doc)) = self.kept.get(org.as_str()).filter(|(v, _)| *v == o.version) {
            return doc;
        }
        let keys = o.keys.iter().map(|k| &**k);
        let tag = |body: &[u8]| *o.tag.get_or_init(|| digest(body));
        let doc = Arc::new(Document::build(keys, tag));
        // Kept under the read lock too, so that the invalidation of a
        // change (under the write lock) comes after it, never before.
        self.kept.insert(name.clone(), (o.version, doc.clone()));
        doc
    }

    /// Replaces every key with those of `records`.
    pub fn replace<'a>(&self, records: impl IntoIterator<Item = &'a PublicKeyRecord>) {
        self.replace_loaded(loading(records), |_| true);
    }

    /// Replaces every key with those `loading` took in that `keep`.
    pub fn replace_loaded(&self, loading: Loading, keep: impl Fn(KeyId) -> bool) {
        let mut state = self.write();
        *state = std::mem::take(&mut *state).replaced(loading, keep);
        self.kept.invalidate_all();
        self.changed(state);
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
        let old = state.insert(record);
        if let Some(old) = &old {
            self.kept.invalidate(&*old.org);
        }
        self.kept.invalidate(record.org.as_str());
        self.changed(state);
        old.is_none()
    }

    /// Unpublishes key `id` of `org`; whether it was published. `_org` is
    /// the key's organisation; the key itself says which it is.
    pub fn removed(&self, _org: &OrgId, id: KeyId) -> bool {
        let mut state = self.write();
        let Some(key) = state.remove(id) else {
            return false;
        };
        self.kept.invalidate(&*key.org);
        self.changed(state);
        true
    }

    /// Ends a change: publishes its generation (before the write lock goes,
    /// so that a request that starts after the change returned sees it),
    /// then drops the global document if no build holds it: it is out of
    /// date. A build under way keeps it; the next request sees its
    /// generation is old and builds again.
    fn changed(&self, state: RwLockWriteGuard<'_, State>) {
        self.generation.store(state.generation, Ordering::Release);
        drop(state);
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
        let generation = self.generation + 1;
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
            org.version = generation;
        }
        orgs.shrink_to_fit();
        State {
            keys,
            orgs,
            generation,
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
        o.version = self.generation;
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
        o.version = self.generation;
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

    #[test]
    fn documents_are_kept_until_their_organisation_changes() {
        let (a1, a2, b1) = (record("a", 1), record("a", 2), record("b", 3));
        let jwks = Jwks::new([&a1, &b1]);
        let (a, b, all) = (jwks.of(&org("a")), jwks.of(&org("b")), jwks.all());
        // Asked again: the very same documents, looked up, not built.
        assert!(Arc::ptr_eq(&a, &jwks.of(&org("a"))));
        assert!(Arc::ptr_eq(&all, &jwks.all()));

        // Each change shows in the next request, of its organisation and of
        // every key; the other organisation's document stays kept.
        assert!(jwks.added(&a2));
        assert_eq!(kids(&jwks.of(&org("a"))), ids(&[&a1, &a2]));
        assert_eq!(kids(&jwks.all()), ids(&[&a1, &a2, &b1]));
        assert!(Arc::ptr_eq(&b, &jwks.of(&org("b"))));
        assert!(jwks.removed(&a1.org, a1.id));
        assert_eq!(kids(&jwks.of(&org("a"))), ids(&[&a2]));
        assert_eq!(kids(&jwks.all()), ids(&[&a2, &b1]));
        // A re-publish of the same key (say, a new expiry) is a change too.
        let a2_later = PublicKeyRecord {
            life: Lifecycle {
                expires_at_secs: Some(2_100_000_000),
                ..a2.life
            },
            ..a2.clone()
        };
        assert!(!jwks.added(&a2_later));
        assert_eq!(jwks.of(&org("a")).expires, Some(2_100_000_000));
        assert_eq!(jwks.all().expires, Some(2_000_000_003));
        // The last key goes: the empty set, at once.
        assert!(jwks.removed(&a2.org, a2.id));
        assert_eq!(&jwks.of(&org("a")).body[..], b"{\"keys\":[]}");
        assert_eq!(kids(&jwks.all()), ids(&[&b1]));
        // Back again, after being empty: a document of its own version.
        assert!(jwks.added(&a1));
        assert_eq!(kids(&jwks.of(&org("a"))), ids(&[&a1]));
        // Every key replaced.
        jwks.replace([&a2, &b1]);
        assert_eq!(kids(&jwks.of(&org("a"))), ids(&[&a2]));
        assert_eq!(kids(&jwks.all()), ids(&[&a2, &b1]));
        assert_eq!(jwks.of(&org("b")).body, b.body);
    }

    /// The states a race test goes through, one a change: state `2j - 1`
    /// lists keys `j - 1` and `j`, state `2j` lists key `j` only.
    fn state_of(serials: &[u64]) -> u64 {
        match serials {
            [j] => 2 * j,
            [i, j] if i + 1 == *j => 2 * j - 1,
            other => panic!("no state lists keys {other:?}"),
        }
    }

    #[test]
    fn no_document_outlives_a_change_that_returned() {
        const STEPS: u64 = 200;
        const READERS: usize = 3;
        let keys: Vec<PublicKeyRecord> = (0..=STEPS).map(|j| record("a", j)).collect();
        let serial: HashMap<String, u64> = (0..=STEPS)
            .map(|j| (keys[j as usize].id.to_string(), j))
            .collect();
        let other = record("b", 10_000);
        let jwks = Jwks::new([&keys[0], &other]);
        let state = |doc: &Document| {
            let listed: Vec<u64> = kids(doc)
                .iter()
                .filter_map(|k| serial.get(k).copied())
                .collect();
            state_of(&listed)
        };
        // How many changes returned; each reader reads it, then asks, and
        // must see that state or a later one. The writer waits until every
        // reader has checked each state, so that none goes untested.
        let returned = AtomicU64::new(0);
        let checked: Vec<AtomicU64> = (0..READERS).map(|_| AtomicU64::new(0)).collect();
        let done = std::sync::atomic::AtomicBool::new(false);
        let failure = Mutex::new(None);
        std::thread::scope(|s| {
            for (reader, checked) in checked.iter().enumerate() {
                let (jwks, returned, done) = (&jwks, &returned, &done);
                let (state, failure) = (&state, &failure);
                s.spawn(move || {
                    // The documents served last, held while the next are
                    // asked for, as responses still being sent hold them.
                    let mut held = [jwks.of(&org("a")), jwks.all()];
                    let mut asked = reader;
                    while !done.load(Ordering::Acquire) {
                        let before = returned.load(Ordering::Acquire);
                        let doc = if asked % 2 == 0 {
                            jwks.of(&org("a"))
                        } else {
                            jwks.all()
                        };
                        let seen = state(&doc);
                        held[asked % 2] = doc;
                        if seen < before {
                            let failed =
                                format!("served state {seen} after change {before} returned");
                            *failure.lock().unwrap() = Some(failed);
                            // Let the writer go on.
                            checked.store(u64::MAX, Ordering::Release);
                            return;
                        }
                        checked.store(before, Ordering::Release);
                        asked += 1;
                    }
                });
            }
            let change = |m: u64, change: &dyn Fn() -> bool| {
                assert!(change());
                returned.store(m, Ordering::Release);
                while checked.iter().any(|c| c.load(Ordering::Acquire) < m) {
                    std::thread::yield_now();
                }
            };
            for j in 1..=STEPS {
                let (now, before) = (&keys[j as usize], &keys[j as usize - 1]);
                change(2 * j - 1, &|| jwks.added(now));
                change(2 * j, &|| jwks.removed(&before.org, before.id));
            }
            done.store(true, Ordering::Release);
        });
        assert_eq!(failure.into_inner().unwrap(), None);
        assert_eq!(state(&jwks.of(&org("a"))), 2 * STEPS);
        assert_eq!(state(&jwks.all()), 2 * STEPS);
    }

    #[test]
    fn kept_documents_stay_within_their_bound() {
        let records: Vec<_> = (0..2_000).map(|i| record(&format!("o{i}"), i)).collect();
        let one = Jwks::new([&records[0]]);
        let weight = u64::from(kept_weight(&one.of(&records[0].org)));
        // Room for 50 documents of 2,000 organisations.
        let bound = 50 * weight;
        let jwks = Jwks::keeping(loading(&records), bound);
        for r in &records {
            assert_eq!(kids(&jwks.of(&r.org)), ids(&[r]));
        }
        jwks.kept.run_pending_tasks();
        assert!(
            jwks.kept.weighted_size() <= bound,
            "{} > {bound}",
            jwks.kept.weighted_size()
        );
        assert!(jwks.kept.entry_count() > 0, "some are kept");
        // An evicted document is built again, the same bytes.
        for r in &records {
            assert_eq!(jwks.of(&r.org).body, Jwks::new([r]).of(&r.org).body);
        }
    }
}
