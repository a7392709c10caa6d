//! The sled backend, and the only module that knows sled. It keeps public-key records, the
//! per-organisation index and key counts, tombstones of deleted keys, the
//! audit chains and the schema version, and makes every acknowledged change
//! durable with a real `fdatasync` (sled's own `flush` only issues
//! `sync_file_range` on Linux, which does not survive a power cut).
//!
//! Trees and their keys:
//! - `keys`: key id (16 bytes) → record (JSON, sealed: see `seal`)
//! - `org_keys`: org ‖ 0x00 ‖ key id → empty; ULID order is creation order
//! - `org_counts`: org → u32 big-endian, the quota counter
//! - `org_fingerprints`: org ‖ 0x00 ‖ SHA-256 of the SPKI → key id, so the
//!   same public key is refused twice in one organisation
//! - `tombstones`: key id → sealed record of a deleted key
//! - `audit`: org ‖ 0x00 ‖ event id → event (JSON), chained by hash
//! - `audit_heads`: org → SHA-256 of the org's newest stored event
//! - `meta`: `schema_version` → u32 big-endian
//! - `versions`: the empty key → u64 big-endian, the version of the latest
//!   key change (create, change, rotation, delete), bumped in that change's
//!   own transaction; key id → the version of that key's latest change,
//!   kept after a delete. Memory applies changes to one key in the order
//!   they committed, and an answer that changes nothing (a second delete, a
//!   disable of a disabled key) is given only once the change it repeats
//!   is applied
//! - `usage`: key id → u64 big-endian, the key's last verification (ms);
//!   key id ‖ minute (u64 big-endian, ms) → u64 big-endian, the
//!   verifications counted in that minute. Flushed from memory every few
//!   seconds and at shutdown, read back at start; minutes older than a day
//!   and the rows of deleted keys are pruned

use std::cell::RefCell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use crate::audit::{self, AuditEvent, EventId, NewEvent};
use crate::keys::{KeyId, OrgId, PublicKeyRecord};
use crate::seal::Sealer;
use crate::store::{
    blocking, open_record, reseal_value, seal_record, AuditPage, Changed, Delete, Deleted, Insert,
    Inserted, KeyChange, KeyRotation, Rotation, Storage, StoreError, SCHEMA_VERSION,
};
use crate::usage::UsageDelta;

/// sled's page cache. Nothing hot reads through it: the verifier and the
/// JWK Sets hold every live key decoded, so sled serves only writes (whose
/// counters, index and chain heads stay cached) and the rare list or audit
/// read. Written records stay cached until this is full, so it is also how
/// far RSS grows with written data. It is not a hard bound: sled's LRU
/// (256 shards) processes accesses in batches of 64 per shard, so up to
/// about 16,000 recently touched pages stay resident beyond it. With
/// 16 MiB, RSS still rose after 10 minutes of churn; with 2 MiB it holds
/// from about minute 15 on (docs/performance.md, "Memory").
const SLED_CACHE_BYTES: u64 = 2 * 1024 * 1024;

/// Records per batch of [`SledStore::each_key`]: large enough that handing
/// a batch between threads costs nothing next to opening it, small enough
/// that the few batches under way hold a few megabytes.
const EACH_KEY_BATCH: usize = 1024;

pub struct SledStore {
    path: PathBuf,
    /// The data directory as messages name it: `path` itself, or for a
    /// read-only copy ([`SledStore::open_copy`]) the directory copied.
    shown: PathBuf,
    /// The open database; replaced wholesale when recovering from an I/O
    /// failure, which sled never recovers from on its own.
    handles: RwLock<Option<Arc<Handles>>>,
    /// Set by a failed write or sync; the next operation reopens first.
    failed: AtomicBool,
    /// Bumped on every reopen, so that callers can rebuild derived state.
    generation: AtomicU64,
    /// When recovery last checked that the disk takes writes.
    last_probe: Mutex<Option<std::time::Instant>>,
    /// Serialises writers so that event ids and hash-chain order agree.
    writer: Mutex<ulid::Generator>,
    sealer: Sealer,
    /// A read-only copy's private directory: last, so that it is removed
    /// only once sled has closed its files in it.
    _copy: Option<tempfile::TempDir>,
}

/// sled's handles on one open database.
struct Handles {
    db: sled::Db,
    keys: sled::Tree,
    org_keys: sled::Tree,
    org_counts: sled::Tree,
    org_fingerprints: sled::Tree,
    tombstones: sled::Tree,
    audit: sled::Tree,
    audit_heads: sled::Tree,
    versions: sled::Tree,
    usage: sled::Tree,
    /// The schema version the database had when opened, before upgrading.
    found_version: u32,
    /// The file sled writes its log to; `fdatasync` on any descriptor of it
    /// makes sled's written pages durable.
    db_file: File,
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

impl SledStore {
    /// Opens (or creates) the database under `dir`; records are sealed and
    /// opened with `sealer`.
    pub fn open(dir: &Path, sealer: Sealer) -> Result<SledStore, StoreError> {
        SledStore::open_in(dir, dir, None, sealer)
    }

    /// Opens a private copy of the database under `dir`, for a read-only
    /// command: sled 0.34 has no read-only open, and opening writes into
    /// the database's files (a snapshot, the recovered log), which a
    /// command that changes nothing must not do. Only sled's own files
    /// are copied (no seal key, no operator token), into a directory only
    /// this user may read, removed when the store is dropped. A server
    /// holding `dir` refuses it, as it refuses any other open.
    pub fn open_copy(dir: &Path, sealer: Sealer) -> Result<SledStore, StoreError> {
        let unreadable = |e: std::io::Error| {
            StoreError::Open {
            location: dir.display().to_string(),
            source: format!(
                "could not copy it for reading into the temporary directory ({e}; TMPDIR chooses another)"
            )
            .into(),
        }
        };
        let copy = tempfile::Builder::new()
            .prefix("signet-read-")
            .tempdir()
            .map_err(unreadable)?;
        copy_database(dir, copy.path()).map_err(|e| match e {
            CopyError::Locked => StoreError::Locked(dir.to_owned()),
            CopyError::Io(e) => unreadable(e),
        })?;
        let files = copy.path().to_owned();
        SledStore::open_in(&files, dir, Some(copy), sealer)
    }

    fn open_in(
        files: &Path,
        shown: &Path,
        copy: Option<tempfile::TempDir>,
        sealer: Sealer,
    ) -> Result<SledStore, StoreError> {
        let handles = Handles::open_waiting(files, shown)?;
        let store = SledStore {
            path: files.to_owned(),
            shown: shown.to_owned(),
            _copy: copy,
            handles: RwLock::new(None),
            failed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            last_probe: Mutex::new(None),
            writer: Mutex::new(ulid::Generator::new()),
            sealer,
        };
        crate::store::check_seal(
            &store.sealer,
            &shown.display().to_string(),
            &handles.seal_sample()?,
        )?;
        store.upgrade(&handles)?;
        *store.handles.write().expect("handles lock poisoned") = Some(Arc::new(handles));
        store.sync()?;
        Ok(store)
    }

    /// Brings a database of an older schema up to this build's, then
    /// restamps its version; rerun from the start if interrupted. Version
    /// 3 added the fingerprint index, filled here from the live keys.
    fn upgrade(&self, h: &Handles) -> Result<(), StoreError> {
        if h.found_version >= SCHEMA_VERSION {
            return Ok(());
        }
        let mut indexed = 0;
        for entry in h.keys.iter() {
            let (k, v) = entry?;
            if let Some(record) = self.open_record(raw_id(&k)?, &v) {
                let fp = fingerprint_key(&record.org, &record.fingerprint());
                h.org_fingerprints.insert(fp, &record.id.to_bytes())?;
                indexed += 1;
            }
        }
        h.sync()?;
        let meta = h.db.open_tree("meta")?;
        meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
        h.sync()?;
        tracing::info!(
            from = h.found_version,
            to = SCHEMA_VERSION,
            keys = indexed,
            "upgraded the database schema"
        );
        Ok(())
    }

    /// How many times the database was reopened after a failure.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The open database for reading: the current handles, even after a
    /// failed write (sled still reads from a failed database).
    fn handles(&self) -> Result<Arc<Handles>, StoreError> {
        let current = self.handles.read().expect("handles lock poisoned").clone();
        match current {
            Some(handles) => Ok(handles),
            None => self.writable(),
        }
    }

    /// The open database for writing, reopened first if a write failed.
    fn writable(&self) -> Result<Arc<Handles>, StoreError> {
        if self.failed.load(Ordering::SeqCst) {
            self.recover()?;
        }
        self.handles
            .read()
            .expect("handles lock poisoned")
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the database could not be reopened yet".into()))
    }

    /// Drops the failed database and opens it again from disk: sled keeps
    /// failing every write after one I/O error, even once space returns.
    /// First checks, at most once a second, that the disk takes a write, so
    /// that reads keep the old handles while the disk is still full.
    fn recover(&self) -> Result<(), StoreError> {
        {
            let mut last = self.last_probe.lock().expect("probe lock poisoned");
            if last.is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(1)) {
                return Err(StoreError::Unavailable(
                    "the disk refused a write moments ago".into(),
                ));
            }
            *last = Some(std::time::Instant::now());
            probe_disk(&self.path).map_err(|e| {
                StoreError::Unavailable(format!("the disk does not take writes yet: {e}"))
            })?;
        }
        let mut slot = self.handles.write().expect("handles lock poisoned");
        if !self.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        // sled releases its file lock once the last handle (ours, and those
        // of requests still in flight) is dropped.
        *slot = None;
        let handles = Handles::open_waiting(&self.path, &self.shown)?;
        handles.sync()?;
        *slot = Some(Arc::new(handles));
        self.failed.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        tracing::warn!(path = %self.path.display(), "storage recovered: the database was reopened");
        Ok(())
    }

    /// Notes an I/O failure so that the next operation reopens the database.
    fn check<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e @ (StoreError::Io(_) | StoreError::Sync(_))) = &result {
            tracing::error!(error = %e, "storage failed; writes are refused until the database reopens");
            self.failed.store(true, Ordering::SeqCst);
        }
        result
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes sled's buffers and then `fdatasync`s the log file: only after
    /// this returns is a change safe from a crash or a power cut.
    pub fn sync(&self) -> Result<(), StoreError> {
        let h = self.writable()?;
        self.check(h.sync())
    }

    /// A fresh, monotonic ULID for a new key.
    pub fn new_id(&self) -> KeyId {
        let mut gen = self.writer.lock().expect("writer lock poisoned");
        KeyId::new(next_ulid(&mut gen))
    }

    /// Inserts `record` if its organisation holds fewer than `max` keys, and
    /// records `event` (or a `quota.exceeded` event) in the same transaction.
    /// Durable on return.
    pub fn insert_key(
        &self,
        record: &PublicKeyRecord,
        max: u32,
        event: NewEvent,
        refused: NewEvent,
    ) -> Result<Inserted, StoreError> {
        let h = self.writable()?;
        let rows = NewRows::of(record, self.seal(record));
        let outcome = self.write(|gen| {
            h.key_trees()
                .transaction(|(keys, org_keys, counts, fps, audit, heads, versions)| {
                    if let Some(other) = fps.get(rows.fingerprint.as_slice())? {
                        return Ok(Inserted::Duplicate(raw_id(&other).map_err(abort)?));
                    }
                    let count = read_count(counts, &rows.org)?;
                    if count >= max {
                        append_event(audit, heads, gen, &record.org, refused.clone())?;
                        return Ok(Inserted::QuotaExceeded(count));
                    }
                    rows.insert(keys, org_keys, counts, fps, count)?;
                    append_event(audit, heads, gen, &record.org, event.clone())?;
                    Ok(Inserted::Yes(bump(versions, &[record.id])?))
                })
        })?;
        if let Inserted::Duplicate(_) = outcome {
            return Ok(outcome);
        }
        self.sync()?;
        Ok(outcome)
    }

    /// Deletes the key `id` of `org`, leaving a tombstone and an audit event.
    /// Durable on return.
    pub fn delete_key(
        &self,
        org: &OrgId,
        id: KeyId,
        event: NewEvent,
    ) -> Result<Deleted, StoreError> {
        let h = self.writable()?;
        let org_key = org.as_bytes_key();
        let index = index_key(org, id);
        let deleted = self.write(|gen| {
            (
                &h.keys,
                &h.org_keys,
                &h.org_counts,
                &h.org_fingerprints,
                &h.tombstones,
                &h.audit,
                &h.audit_heads,
                &h.versions,
            )
                .transaction(
                    |(keys, org_keys, counts, fps, tombstones, audit, heads, versions)| {
                        if org_keys.get(index.as_slice())?.is_none() {
                            // Deleted already (by this organisation: the
                            // index names the key under it no more, and
                            // the tombstone says whose it was)?
                            let theirs = tombstones
                                .get(id.to_bytes())?
                                .and_then(|value| self.open_record(id, &value))
                                .is_some_and(|r| &r.org == org);
                            return match theirs {
                                true => Ok(Deleted::Already(key_version(versions, id)?)),
                                false => Ok(Deleted::NotFound),
                            };
                        }
                        let Some(value) = keys.remove(&id.to_bytes())? else {
                            return Err(abort(StoreError::Corrupt(format!(
                                "index names key {id} but there is no record"
                            ))));
                        };
                        org_keys.remove(index.as_slice())?;
                        if let Some(record) = self.open_record(id, &value) {
                            fps.remove(fingerprint_key(org, &record.fingerprint()))?;
                        }
                        let count = read_count(counts, &org_key)?;
                        counts
                            .insert(org_key.as_slice(), &count.saturating_sub(1).to_be_bytes())?;
                        tombstones.insert(&id.to_bytes(), value)?;
                        append_event(audit, heads, gen, org, event.clone())?;
                        Ok(Deleted::Now(bump(versions, &[id])?))
                    },
                )
        })?;
        self.sync_if(matches!(deleted, Deleted::Now(_)))?;
        Ok(deleted)
    }

    /// Syncs only if something was written: a refusal acknowledges nothing.
    fn sync_if(&self, wrote: bool) -> Result<(), StoreError> {
        match wrote {
            true => self.sync(),
            false => Ok(()),
        }
    }

    /// Applies `change` to the key's record, with one event per changed
    /// field, in one transaction. Durable on return.
    pub fn change_key(&self, change: &KeyChange) -> Result<Changed, StoreError> {
        let h = self.writable()?;
        let index = index_key(&change.org, change.id);
        let (outcome, wrote) = self.write(|gen| {
            (&h.keys, &h.org_keys, &h.audit, &h.audit_heads, &h.versions).transaction(
                |(keys, org_keys, audit, heads, versions)| {
                    if org_keys.get(index.as_slice())?.is_none() {
                        return Ok((Changed::NotFound, false));
                    }
                    let record = self.live_record(keys, change.id)?;
                    let (next, events) = match change.apply(&record) {
                        Ok(applied) => applied,
                        Err(why) => return Ok((Changed::Conflict(why), false)),
                    };
                    if events.is_empty() {
                        let version = key_version(versions, change.id)?;
                        return Ok((Changed::Unchanged(record, version), false));
                    }
                    keys.insert(&change.id.to_bytes(), self.seal(&next))?;
                    for event in events {
                        append_event(audit, heads, gen, &change.org, event)?;
                    }
                    Ok((Changed::Yes(next, bump(versions, &[change.id])?), true))
                },
            )
        })?;
        self.sync_if(wrote)?;
        Ok(outcome)
    }

    /// Inserts the successor under the quota and retires the old key, with
    /// one event, in one transaction. Durable on return.
    pub fn rotate_key(&self, rotation: &KeyRotation) -> Result<Rotation, StoreError> {
        let h = self.writable()?;
        let org = &rotation.org;
        let old_index = index_key(org, rotation.old);
        let rows = NewRows::of(&rotation.successor, self.seal(&rotation.successor));
        let outcome = self.write(|gen| {
            h.key_trees()
                .transaction(|(keys, org_keys, counts, fps, audit, heads, versions)| {
                    if org_keys.get(old_index.as_slice())?.is_none() {
                        return Ok(Rotation::NotFound);
                    }
                    let count = read_count(counts, &rows.org)?;
                    if count >= rotation.quota {
                        append_event(audit, heads, gen, org, rotation.refused.clone())?;
                        return Ok(Rotation::QuotaExceeded(count));
                    }
                    let retired = rotation.retire(&self.live_record(keys, rotation.old)?);
                    keys.insert(&rotation.old.to_bytes(), self.seal(&retired))?;
                    rows.insert(keys, org_keys, counts, fps, count)?;
                    append_event(audit, heads, gen, org, rotation.rotated.clone())?;
                    let ids = [rotation.old, rotation.successor.id];
                    Ok(Rotation::Yes(retired, bump(versions, &ids)?))
                })
        })?;
        self.sync()?;
        Ok(outcome)
    }

    /// The live record `id` inside a transaction; a missing or unopenable
    /// record aborts it as damage (the index named it).
    fn live_record(&self, keys: &TransactionalTree, id: KeyId) -> TxResult<PublicKeyRecord> {
        let value = keys.get(id.to_bytes())?.ok_or_else(|| {
            abort(StoreError::Corrupt(format!(
                "index names key {id} but there is no record"
            )))
        })?;
        self.open_record(id, &value).ok_or_else(|| {
            abort(StoreError::Corrupt(format!(
                "the record of key {id} does not open"
            )))
        })
    }

    /// Appends one audit event on its own (a refused access). Not synced:
    /// it acknowledges no change of keys.
    pub fn record_event(&self, org: &OrgId, event: NewEvent) -> Result<(), StoreError> {
        let h = self.writable()?;
        self.write(|gen| {
            (&h.audit, &h.audit_heads).transaction(|(audit, heads)| {
                append_event(audit, heads, gen, org, event.clone())?;
                Ok(())
            })
        })
    }

    /// How many live keys `org` holds (the quota counter).
    pub fn key_count(&self, org: &OrgId) -> Result<u32, StoreError> {
        let h = self.handles()?;
        let count = h
            .org_counts
            .get(org.as_bytes_key())
            .map_err(StoreError::from);
        decode_count(self.check(count)?)
    }

    /// One key, if it exists, is not deleted and opens under the seal key.
    /// A record that does not open is treated as absent, and logged.
    pub fn get_key(&self, id: KeyId) -> Result<Option<PublicKeyRecord>, StoreError> {
        let h = self.handles()?;
        let value = self.check(h.keys.get(id.to_bytes()).map_err(StoreError::from))?;
        Ok(value.and_then(|v| self.open_record(id, &v)))
    }

    /// Whether `id` is a live key. Cheaper than [`SledStore::get_key`]: no decode.
    pub fn contains_key(&self, id: KeyId) -> Result<bool, StoreError> {
        let h = self.handles()?;
        Ok(h.keys.contains_key(id.to_bytes())?)
    }

    /// Whether `id` names a key that was deleted.
    pub fn is_deleted(&self, id: KeyId) -> Result<bool, StoreError> {
        let h = self.handles()?;
        Ok(h.tombstones.contains_key(id.to_bytes())?)
    }

    /// An organisation's live keys, oldest first.
    pub fn list_org(&self, org: &OrgId) -> Result<Vec<PublicKeyRecord>, StoreError> {
        let h = self.handles()?;
        let prefix = index_key_prefix(org);
        let mut out = Vec::new();
        for entry in h.org_keys.scan_prefix(&prefix) {
            let (k, _) = entry?;
            let id: [u8; 16] = k[prefix.len()..]
                .try_into()
                .map_err(|_| StoreError::Corrupt("index entry is not org ‖ 0 ‖ 16 bytes".into()))?;
            out.extend(self.get_key(KeyId::from_bytes(id))?);
        }
        Ok(out)
    }

    /// Every live key that opens, in id (creation) order.
    pub fn all_keys(&self) -> Result<Vec<PublicKeyRecord>, StoreError> {
        let mut out = Vec::new();
        self.each_key(|batch| out.extend(batch))?;
        Ok(out)
    }

    /// Every live key that opens, in id (creation) order, handed to `each`
    /// a batch at a time on this thread: read from sled by one thread,
    /// opened (unsealed and parsed) on every core, so that a read of a
    /// million keys takes a fraction of the time, and the opened records
    /// never all exist at once (only a few batches are under way).
    pub fn each_key(&self, mut each: impl FnMut(Vec<PublicKeyRecord>)) -> Result<(), StoreError> {
        type Opened = mpsc::Receiver<Vec<PublicKeyRecord>>;
        type Job = (
            Vec<(KeyId, sled::IVec)>,
            mpsc::SyncSender<Vec<PublicKeyRecord>>,
        );
        let h = self.handles()?;
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (jobs, job_queue) = mpsc::sync_channel::<Job>(2 * workers);
        let job_queue = Mutex::new(job_queue);
        // Each batch's receiver, in read order: batches are handed on in
        // that order, whichever worker finishes first.
        let (order, in_order) = mpsc::sync_channel::<Opened>(2 * workers);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let job = job_queue.lock().expect("job queue lock poisoned").recv();
                    let Ok((raw, opened)) = job else { return };
                    let records = raw.iter().filter_map(|(id, v)| self.open_record(*id, v));
                    // The receiver is gone only if reading stopped.
                    let _ = opened.send(records.collect());
                });
            }
            let reader = s.spawn(move || -> Result<(), StoreError> {
                let mut entries = h.keys.iter();
                loop {
                    let mut raw = Vec::with_capacity(EACH_KEY_BATCH);
                    for entry in entries.by_ref().take(EACH_KEY_BATCH) {
                        let (k, v) = entry?;
                        raw.push((raw_id(&k)?, v));
                    }
                    if raw.is_empty() {
                        return Ok(());
                    }
                    let (opened, batch) = mpsc::sync_channel(1);
                    // Either fails only if the consumer below stopped.
                    if order.send(batch).is_err() || jobs.send((raw, opened)).is_err() {
                        return Ok(());
                    }
                }
            });
            for batch in in_order {
                if let Ok(records) = batch.recv() {
                    each(records);
                }
            }
            reader.join().expect("reading the keys does not panic")
        })
    }

    /// Re-seals every record (live and deleted) with the sealer's first key,
    /// in one transaction. Durable on return.
    pub fn reseal_all(&self) -> Result<usize, StoreError> {
        let h = self.writable()?;
        let mut resealed: Vec<(bool, KeyId, Vec<u8>)> = Vec::new();
        for (live, tree) in [(true, &h.keys), (false, &h.tombstones)] {
            for entry in tree.iter() {
                let (k, v) = entry?;
                let id = raw_id(&k)?;
                resealed.push((live, id, reseal_value(&self.sealer, id, &v)?));
            }
        }
        self.write(|_| {
            (&h.keys, &h.tombstones).transaction(|(keys, tombstones)| {
                for (live, id, value) in &resealed {
                    let tree = if *live { keys } else { tombstones };
                    tree.insert(&id.to_bytes(), value.as_slice())?;
                }
                Ok(())
            })
        })?;
        self.sync()?;
        Ok(resealed.len())
    }

    fn seal(&self, record: &PublicKeyRecord) -> Vec<u8> {
        seal_record(&self.sealer, record)
    }

    fn open_record(&self, id: KeyId, value: &[u8]) -> Option<PublicKeyRecord> {
        open_record(&self.sealer, id, value)
    }

    /// An organisation's audit events, newest first: at most `limit`, all
    /// strictly older than `before` if given.
    pub fn audit_page(
        &self,
        org: &OrgId,
        limit: usize,
        before: Option<EventId>,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let h = self.handles()?;
        let prefix = index_key_prefix(org);
        let end = match before {
            Some(id) => index_key(org, KeyId::from_bytes(id.to_bytes())),
            None => prefix_end(&prefix),
        };
        h.audit
            .range(prefix.clone()..end)
            .rev()
            .take(limit)
            .map(|entry| {
                let (_, v) = entry?;
                serde_json::from_slice(&v)
                    .map_err(|e| StoreError::Corrupt(format!("audit event does not parse: {e}")))
            })
            .collect()
    }

    /// Walks every organisation's audit chain; returns the number of events
    /// checked, or the first broken link.
    /// Walks one organisation's audit chain: the number of events checked,
    /// or its first broken link.
    pub fn verify_org_audit(
        &self,
        org: &OrgId,
    ) -> Result<Result<usize, audit::BrokenLink>, StoreError> {
        let h = self.handles()?;
        let mut prefix = org.as_str().as_bytes().to_vec();
        prefix.push(0);
        let mut chain: Vec<(String, sled::IVec)> = Vec::new();
        for entry in h.audit.scan_prefix(&prefix) {
            let (k, v) = entry?;
            let id: [u8; 16] = k[prefix.len()..]
                .try_into()
                .map_err(|_| StoreError::Corrupt("audit key is not org ‖ 0 ‖ 16 bytes".into()))?;
            chain.push((KeyId::from_bytes(id).to_string(), v));
        }
        Ok(audit::check_chain(
            org.as_str(),
            chain.iter().map(|(id, v)| (id.clone(), v.as_ref())),
        ))
    }

    pub fn verify_audit(&self) -> Result<Result<usize, audit::BrokenLink>, StoreError> {
        let h = self.handles()?;
        let mut total = 0;
        let mut chain: Vec<(String, sled::IVec)> = Vec::new();
        let mut current: Option<Vec<u8>> = None;
        let finish = |org: &[u8], chain: &mut Vec<(String, sled::IVec)>| {
            let org = String::from_utf8_lossy(org).into_owned();
            let result =
                audit::check_chain(&org, chain.iter().map(|(id, v)| (id.clone(), v.as_ref())));
            chain.clear();
            result
        };
        for entry in h.audit.iter() {
            let (k, v) = entry?;
            let split = k
                .len()
                .checked_sub(17)
                .filter(|&i| k[i] == 0)
                .ok_or_else(|| StoreError::Corrupt("audit key is not org ‖ 0 ‖ 16 bytes".into()))?;
            let (org, id) = (&k[..split], &k[split + 1..]);
            if current.as_deref() != Some(org) {
                if let Some(prev) = current.take() {
                    match finish(&prev, &mut chain) {
                        Ok(n) => total += n,
                        Err(broken) => return Ok(Err(broken)),
                    }
                }
                current = Some(org.to_vec());
            }
            let id = KeyId::from_bytes(id.try_into().expect("split leaves 16 bytes"));
            chain.push((id.to_string(), v));
        }
        if let Some(prev) = current {
            match finish(&prev, &mut chain) {
                Ok(n) => total += n,
                Err(broken) => return Ok(Err(broken)),
            }
        }
        Ok(Ok(total))
    }

    /// Whether the database answers a read: the readiness probe.
    pub fn is_usable(&self) -> bool {
        self.handles().is_ok_and(|h| h.keys.first().is_ok())
    }

    /// Adds `deltas` to the stored usage counts and last uses; with
    /// `prune`, also drops the minutes older than a day as of `now_ms` and
    /// the rows of deleted keys. Synced when it wrote anything, though no
    /// caller waits for it: it is no acknowledged change.
    pub fn flush_usage(
        &self,
        deltas: &[UsageDelta],
        now_ms: u64,
        prune: bool,
    ) -> Result<(), StoreError> {
        let h = self.writable()?;
        let result = (|| {
            for d in deltas {
                let id = d.key_id.to_bytes();
                h.usage
                    .update_and_fetch(usage_minute_key(d.key_id, d.minute), |old| {
                        Some(u64_value(
                            decode_u64(old).unwrap_or(0).saturating_add(d.count),
                        ))
                    })?;
                h.usage.update_and_fetch(id, |old| {
                    Some(u64_value(
                        decode_u64(old).unwrap_or(0).max(d.last_verified_ms),
                    ))
                })?;
            }
            let mut wrote = !deltas.is_empty();
            if prune {
                let mut stale = Vec::new();
                let mut live = LiveKeys::new(&h.keys);
                for entry in h.usage.iter() {
                    let (k, _) = entry?;
                    let Some(exists) = live.of_row(&k)? else {
                        stale.push(k);
                        continue;
                    };
                    let old = k.len() == 24
                        && decode_u64(Some(&k[16..])).is_some_and(|m| m + DAY_MS <= now_ms);
                    if !exists || old || !matches!(k.len(), 16 | 24) {
                        stale.push(k);
                    }
                }
                wrote |= !stale.is_empty();
                for k in stale {
                    h.usage.remove(k)?;
                }
            }
            match wrote {
                true => h.sync(),
                false => Ok(()),
            }
        })();
        self.check(result)
    }

    /// The stored usage of the live keys, as [`UsageDelta`]s: one per
    /// minute of the last day as of `now_ms`, and one without a count
    /// for each key's last verification.
    pub fn load_usage(&self, now_ms: u64) -> Result<Vec<UsageDelta>, StoreError> {
        let h = self.handles()?;
        let mut out = Vec::new();
        let mut live = LiveKeys::new(&h.keys);
        for entry in h.usage.iter() {
            let (k, v) = entry?;
            // Advisory counts: a malformed row is skipped.
            let Some(value) = decode_u64(Some(&v)) else {
                continue;
            };
            match live.of_row(&k)? {
                Some(true) => {}
                // Deleted: pruned on the next flush that prunes.
                Some(false) | None => continue,
            }
            let key_id = raw_id(&k[..16])?;
            match decode_u64(Some(&k[16..])) {
                None if k.len() == 16 => out.push(UsageDelta {
                    key_id,
                    minute: value - value % MINUTE_MS,
                    count: 0,
                    last_verified_ms: value,
                }),
                Some(minute) if minute + DAY_MS > now_ms => out.push(UsageDelta {
                    key_id,
                    minute,
                    count: value,
                    last_verified_ms: minute,
                }),
                Some(_) | None => {}
            }
        }
        Ok(out)
    }

    /// Direct access to the raw audit tree, for tests that tamper with it.
    #[cfg(feature = "test-hooks")]
    pub fn raw_audit_tree(&self) -> sled::Tree {
        self.handles().expect("database open").audit.clone()
    }

    /// How many rows the usage tree holds, for tests of its pruning.
    #[cfg(feature = "test-hooks")]
    pub fn usage_rows(&self) -> usize {
        self.handles().expect("database open").usage.len()
    }

    /// Direct access to the raw key tree, for tests that plant records.
    #[cfg(feature = "test-hooks")]
    pub fn raw_keys_tree(&self) -> sled::Tree {
        self.handles().expect("database open").keys.clone()
    }

    fn write<T>(
        &self,
        tx: impl FnOnce(&IdGen<'_>) -> Result<T, TransactionError<StoreError>>,
    ) -> Result<T, StoreError> {
        let mut gen = self.writer.lock().expect("writer lock poisoned");
        self.check(tx(&IdGen(RefCell::new(&mut gen))).map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::from(e),
        }))
    }
}

/// The rows a new live key adds, prepared outside the transaction.
struct NewRows {
    id: [u8; 16],
    /// The organisation's counter key.
    org: Vec<u8>,
    index: Vec<u8>,
    fingerprint: Vec<u8>,
    sealed: Vec<u8>,
}

impl NewRows {
    fn of(record: &PublicKeyRecord, sealed: Vec<u8>) -> NewRows {
        NewRows {
            id: record.id.to_bytes(),
            org: record.org.as_bytes_key(),
            index: index_key(&record.org, record.id),
            fingerprint: fingerprint_key(&record.org, &record.fingerprint()),
            sealed,
        }
    }

    /// Writes the record, its index and fingerprint entries and the
    /// organisation's new count (`count` is the current one).
    fn insert(
        &self,
        keys: &TransactionalTree,
        org_keys: &TransactionalTree,
        counts: &TransactionalTree,
        fps: &TransactionalTree,
        count: u32,
    ) -> TxResult<()> {
        keys.insert(&self.id, self.sealed.as_slice())?;
        org_keys.insert(self.index.as_slice(), &[])?;
        counts.insert(self.org.as_slice(), &(count + 1).to_be_bytes())?;
        fps.insert(self.fingerprint.as_slice(), &self.id)?;
        Ok(())
    }
}

type KeyTrees<'a> = (
    &'a sled::Tree,
    &'a sled::Tree,
    &'a sled::Tree,
    &'a sled::Tree,
    &'a sled::Tree,
    &'a sled::Tree,
    &'a sled::Tree,
);

impl Handles {
    /// The trees a new key touches, in the order transactions take them:
    /// keys, org_keys, org_counts, org_fingerprints, audit, audit_heads,
    /// versions.
    fn key_trees(&self) -> KeyTrees<'_> {
        (
            &self.keys,
            &self.org_keys,
            &self.org_counts,
            &self.org_fingerprints,
            &self.audit,
            &self.audit_heads,
            &self.versions,
        )
    }

    /// `flush` (which sled 0.34 ends with `sync_file_range` only), then
    /// `fdatasync` of the log file: what makes a change durable.
    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.db_file.sync_data()?;
        Ok(())
    }

    /// [`Handles::open`], waiting up to a second for the lock: sled's
    /// background I/O threads can hold the file a moment after the last
    /// handle of a closed database is dropped.
    fn open_waiting(dir: &Path, shown: &Path) -> Result<Handles, StoreError> {
        let started = std::time::Instant::now();
        loop {
            match Handles::open(dir, shown) {
                Err(StoreError::Locked(_))
                    if started.elapsed() < std::time::Duration::from_secs(1) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => return opened,
            }
        }
    }

    /// Opens the database in `dir`; messages name it `shown`.
    fn open(dir: &Path, shown: &Path) -> Result<Handles, StoreError> {
        let open_err = |source: sled::Error| match &source {
            // sled reports a held lock as an I/O error of kind WouldBlock,
            // sometimes wrapped in another of kind Other.
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("could not acquire lock") =>
            {
                StoreError::Locked(shown.to_owned())
            }
            _ => StoreError::Open {
                location: shown.display().to_string(),
                source: Box::new(source),
            },
        };
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
            .map_err(open_err)?;
        let tree = |name: &str| db.open_tree(name).map_err(open_err);
        let meta = tree("meta")?;
        // An older version is restamped by `SledStore::upgrade`, once the
        // data is upgraded.
        let found_version = match meta.get("schema_version").map_err(open_err)? {
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())
                    .map_err(open_err)?;
                SCHEMA_VERSION
            }
            Some(v) => {
                let found =
                    u32::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                        StoreError::Corrupt("schema_version is not 4 bytes".into())
                    })?);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        location: shown.display().to_string(),
                        what: "schema version",
                        found,
                        understood: SCHEMA_VERSION,
                    });
                }
                found
            }
        };
        let db_file = File::open(dir.join("db")).map_err(StoreError::Sync)?;
        // Make the directory entries of a freshly created database durable.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(StoreError::Sync)?;
        Ok(Handles {
            keys: tree("keys")?,
            org_keys: tree("org_keys")?,
            org_counts: tree("org_counts")?,
            org_fingerprints: tree("org_fingerprints")?,
            tombstones: tree("tombstones")?,
            audit: tree("audit")?,
            audit_heads: tree("audit_heads")?,
            versions: tree("versions")?,
            usage: tree("usage")?,
            found_version,
            db,
            db_file,
        })
    }
}

trait OrgKey {
    fn as_bytes_key(&self) -> Vec<u8>;
}

impl OrgKey for OrgId {
    fn as_bytes_key(&self) -> Vec<u8> {
        self.as_str().as_bytes().to_vec()
    }
}

fn index_key_prefix(org: &OrgId) -> Vec<u8> {
    let mut k = org.as_bytes_key();
    k.push(0);
    k
}

fn index_key(org: &OrgId, id: KeyId) -> Vec<u8> {
    let mut k = index_key_prefix(org);
    k.extend_from_slice(&id.to_bytes());
    k
}

fn fingerprint_key(org: &OrgId, fingerprint: &[u8; 32]) -> Vec<u8> {
    let mut k = index_key_prefix(org);
    k.extend_from_slice(fingerprint);
    k
}

/// The smallest key greater than every key starting with `prefix` (which
/// ends in 0x00, so bumping that byte is enough).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    *end.last_mut().expect("prefix is never empty") += 1;
    end
}

/// The writer's id generator, lent to a (retryable, `Fn`) transaction.
struct IdGen<'a>(RefCell<&'a mut ulid::Generator>);

impl IdGen<'_> {
    fn next(&self) -> KeyId {
        KeyId::new(next_ulid(&mut self.0.borrow_mut()))
    }
}

fn next_ulid(gen: &mut ulid::Generator) -> ulid::Ulid {
    loop {
        match gen.generate() {
            Ok(id) => return id,
            // 2^80 ids in one millisecond: wait for the next one.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
    }
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

/// Writes and syncs 1 MiB (sled's segments are 512 KiB) beside the
/// database, then removes it: does the disk take writes again?
fn probe_disk(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(".probe");
    let result = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; 1 << 20])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&path);
    result
}

fn raw_id(key: &[u8]) -> Result<KeyId, StoreError> {
    key.try_into()
        .map(KeyId::from_bytes)
        .map_err(|_| StoreError::Corrupt("a key record's key is not 16 bytes".into()))
}

const MINUTE_MS: u64 = 60_000;
/// How long stored usage counts are kept, in milliseconds.
const DAY_MS: u64 = 24 * 60 * MINUTE_MS;

/// Whether the key a usage row belongs to is live, read from the keys tree
/// once per key: a key's rows are adjacent, its id being their prefix.
struct LiveKeys<'a> {
    keys: &'a sled::Tree,
    last: Option<([u8; 16], bool)>,
}

impl LiveKeys<'_> {
    fn new(keys: &sled::Tree) -> LiveKeys<'_> {
        LiveKeys { keys, last: None }
    }

    /// For a usage row's key: whether its key id is live, or `None` if the
    /// row's key names no key id.
    fn of_row(&mut self, row: &[u8]) -> Result<Option<bool>, sled::Error> {
        let Some(id) = row.get(..16).and_then(|id| <[u8; 16]>::try_from(id).ok()) else {
            return Ok(None);
        };
        let live = match self.last {
            Some((seen, live)) if seen == id => live,
            _ => self.keys.contains_key(id)?,
        };
        self.last = Some((id, live));
        Ok(Some(live))
    }
}

/// The `usage` key of key `id`'s count in the minute starting at `minute`.
fn usage_minute_key(id: KeyId, minute: u64) -> [u8; 24] {
    let mut key = [0; 24];
    key[..16].copy_from_slice(&id.to_bytes());
    key[16..].copy_from_slice(&minute.to_be_bytes());
    key
}

/// A u64 stored big-endian; `None` if absent or not 8 bytes.
fn decode_u64(value: Option<&[u8]>) -> Option<u64> {
    Some(u64::from_be_bytes(value?.try_into().ok()?))
}

fn u64_value(n: u64) -> sled::IVec {
    sled::IVec::from(&n.to_be_bytes())
}

/// The `versions` key of the latest change's version.
const LATEST: &[u8] = b"";

/// Takes the next change version inside the change's transaction and
/// stamps it on the keys it changed; a database written before versions
/// existed starts at 1.
fn bump(versions: &TransactionalTree, ids: &[KeyId]) -> TxResult<u64> {
    let next = decode_version(versions.get(LATEST)?).map_err(abort)? + 1;
    versions.insert(LATEST, &next.to_be_bytes())?;
    for id in ids {
        versions.insert(&id.to_bytes(), &next.to_be_bytes())?;
    }
    Ok(next)
}

/// The version of key `id`'s latest change (0: none since versions exist).
fn key_version(versions: &TransactionalTree, id: KeyId) -> TxResult<u64> {
    decode_version(versions.get(id.to_bytes())?).map_err(abort)
}

fn decode_version(value: Option<sled::IVec>) -> Result<u64, StoreError> {
    match value {
        None => Ok(0),
        Some(v) => Ok(u64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
            StoreError::Corrupt("a change version is not 8 bytes".into())
        })?)),
    }
}

fn read_count(counts: &TransactionalTree, org: &[u8]) -> TxResult<u32> {
    decode_count(counts.get(org)?).map_err(abort)
}

/// A quota counter as stored: absent is 0, else a big-endian u32.
fn decode_count(value: Option<sled::IVec>) -> Result<u32, StoreError> {
    match value {
        None => Ok(0),
        Some(v) => v
            .as_ref()
            .try_into()
            .map(u32::from_be_bytes)
            .map_err(|_| StoreError::Corrupt("key count is not 4 bytes".into())),
    }
}

fn append_event(
    audit: &TransactionalTree,
    heads: &TransactionalTree,
    gen: &IdGen<'_>,
    org: &OrgId,
    event: NewEvent,
) -> TxResult<()> {
    let org_key = org.as_bytes_key();
    let prev = match heads.get(&org_key)? {
        None => audit::GENESIS,
        Some(v) => v
            .as_ref()
            .try_into()
            .map_err(|_| abort(StoreError::Corrupt("audit head is not 32 bytes".into())))?,
    };
    let id = gen.next();
    let event = AuditEvent::new(EventId::from_bytes(id.to_bytes()), org.clone(), event, prev);
    let stored = serde_json::to_vec(&event).expect("an event always serialises");
    audit.insert(index_key(org, id), stored.as_slice())?;
    heads.insert(org_key, &audit::link(&stored))?;
    Ok(())
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> StoreError {
        StoreError::Io(Box::new(e))
    }
}

impl Handles {
    /// The first live records and tombstones, for `store::check_seal`.
    fn seal_sample(&self) -> Result<Vec<(KeyId, Vec<u8>)>, StoreError> {
        let mut sample = Vec::new();
        for tree in [&self.keys, &self.tombstones] {
            for entry in tree.iter().take(crate::store::SEAL_SAMPLE) {
                let (k, v) = entry?;
                sample.push((raw_id(&k)?, v.to_vec()));
            }
        }
        Ok(sample)
    }
}

impl SledStore {
    /// Whether `dir` holds a sled database of signet's.
    pub fn exists(dir: &Path) -> bool {
        dir.join("db").is_file() && dir.join("conf").is_file()
    }
}

/// Why a database could not be copied.
enum CopyError {
    /// A server holds it.
    Locked,
    Io(std::io::Error),
}

impl From<std::io::Error> for CopyError {
    fn from(e: std::io::Error) -> CopyError {
        CopyError::Io(e)
    }
}

/// Copies sled's files (`conf`, `db`, `snap.*`, `blobs/`) from `dir` into
/// `to`, holding a shared lock on `db` meanwhile: a server holds it
/// exclusively, so a running server is refused, and none can start in the
/// middle of the copy.
fn copy_database(dir: &Path, to: &Path) -> Result<(), CopyError> {
    let db = File::open(dir.join("db"))?;
    #[cfg(unix)]
    {
        use rustix::fs::{flock, FlockOperation};
        match flock(&db, FlockOperation::NonBlockingLockShared) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(CopyError::Locked),
            Err(e) => return Err(CopyError::Io(e.into())),
        }
    }
    let sled_file = |name: &str| name == "conf" || name == "db" || name.starts_with("snap.");
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type()?.is_file() && sled_file(&name) {
            std::fs::copy(entry.path(), to.join(&*name))?;
        } else if name == "blobs" {
            copy_dir(&entry.path(), &to.join("blobs"))?;
        }
    }
    Ok(())
}

/// Copies the files under `from` into a new directory `to`, recursively.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// The sled calls block (and `fdatasync`), so each runs on tokio's
/// blocking pool.
impl Storage for Arc<SledStore> {
    fn new_id(&self) -> KeyId {
        SledStore::new_id(self)
    }

    fn generation(&self) -> u64 {
        SledStore::generation(self)
    }

    async fn insert_key(&self, insert: Insert) -> Result<Inserted, StoreError> {
        let db = self.clone();
        let Insert {
            record,
            quota,
            created,
            refused,
        } = insert;
        blocking(move || SledStore::insert_key(&db, &record, quota, created, refused)).await
    }

    async fn delete_key(&self, delete: Delete) -> Result<Deleted, StoreError> {
        let db = self.clone();
        let Delete { org, id, event } = delete;
        blocking(move || SledStore::delete_key(&db, &org, id, event)).await
    }

    async fn change_key(&self, change: KeyChange) -> Result<Changed, StoreError> {
        let db = self.clone();
        blocking(move || SledStore::change_key(&db, &change)).await
    }

    async fn rotate_key(&self, rotation: KeyRotation) -> Result<Rotation, StoreError> {
        let db = self.clone();
        blocking(move || SledStore::rotate_key(&db, &rotation)).await
    }

    async fn record_event(&self, org: OrgId, event: NewEvent) -> Result<(), StoreError> {
        let db = self.clone();
        blocking(move || SledStore::record_event(&db, &org, event)).await
    }

    async fn key_count(&self, org: OrgId) -> Result<u32, StoreError> {
        let db = self.clone();
        blocking(move || SledStore::key_count(&db, &org)).await
    }

    async fn get_key(&self, id: KeyId) -> Result<Option<PublicKeyRecord>, StoreError> {
        let db = self.clone();
        blocking(move || SledStore::get_key(&db, id)).await
    }

    async fn list_org(&self, org: OrgId) -> Result<Vec<PublicKeyRecord>, StoreError> {
        let db = self.clone();
        blocking(move || SledStore::list_org(&db, &org)).await
    }

    async fn all_keys(&self) -> Result<Vec<PublicKeyRecord>, StoreError> {
        let db = self.clone();
        blocking(move || SledStore::all_keys(&db)).await
    }

    async fn audit_page(&self, page: AuditPage) -> Result<Vec<AuditEvent>, StoreError> {
        let db = self.clone();
        blocking(move || SledStore::audit_page(&db, &page.org, page.limit, page.before)).await
    }

    async fn verify_audit(&self) -> Result<Result<usize, audit::BrokenLink>, StoreError> {
        let db = self.clone();
        blocking(move || SledStore::verify_audit(&db)).await
    }

    async fn reseal_all(&self) -> Result<usize, StoreError> {
        let db = self.clone();
        blocking(move || SledStore::reseal_all(&db)).await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        let db = self.clone();
        blocking(move || SledStore::sync(&db)).await
    }

    async fn is_usable(&self) -> bool {
        let db = self.clone();
        blocking(move || Ok(SledStore::is_usable(&db)))
            .await
            .unwrap_or(false)
    }
}
