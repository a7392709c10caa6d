//! What signet needs from storage, and the backends that provide it.
//!
//! [`Storage`] is the seam: atomic create under the quota with its audit
//! event, delete with a tombstone and an audit event, reads, audit pages,
//! audit-chain verification and re-sealing. Every acknowledged change is
//! durable when its future resolves. [`Store`] is the configured backend:
//! `sled` (embedded, one process; the only module that knows sled) or
//! `postgres` (shared by several instances; the only module that knows
//! PostgreSQL).
//!
//! The trait is async: PostgreSQL's client is, and sled's blocking calls
//! run on tokio's blocking pool inside the sled backend. Dispatch goes
//! through the [`Store`] enum, not `dyn`, so the trait uses native
//! `async fn`-style methods without boxing.
//!
//! Shared by both backends and kept here: how a record is sealed and opened
//! ([`seal_record`], [`open_record`]), and how an audit event is chained
//! (`crate::audit`).

pub mod postgres;
pub mod sled;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::audit::{Action, AuditEvent, BrokenLink, EventId, NewEvent};
use crate::config::{Backend, Config, Secret};
use crate::keys::{KeyId, KeyName, OrgId, PublicKeyRecord};
use crate::seal::{SealError, Sealer};

pub use crate::feed::{Changes, Heard};

use self::postgres::PgStore;
use self::sled::SledStore;

/// The schema this build writes and reads. Version 2 added EC and Ed25519
/// keys; a version-1 record (always RSA) reads unchanged as a version-2 one
/// (see `PublicKeyRecord`), so upgrading only restamps the version, which
/// keeps an older signet, which cannot read EC keys, from opening the data.
/// Version 3 added disabled, expiring and uploaded keys (older records read
/// as active, generated and never expiring) and the per-organisation index
/// of public-key fingerprints, filled on upgrade; an older signet would
/// publish a disabled key, so it must not open the data.
pub const SCHEMA_VERSION: u32 = 3;

/// A backend's own error, carried without naming its type.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (usually a running `signet serve`) holds the database.
    #[error("the database in {0} is locked by another process (is `signet serve` running? stop it first)")]
    Locked(PathBuf),
    /// The database could not be opened or created.
    #[error("cannot open the database in {location}: {source}")]
    Open {
        location: String,
        source: BackendError,
    },
    /// A read-only command was pointed at a directory without signet data.
    #[error(
        "no signet data in {0} (pass --data-dir or --database-url, or run `signet serve` once)"
    )]
    NoData(String),
    /// The database was written by a newer signet.
    #[error("the database in {location} has {what} {found}, but this signet understands only up to {understood}; upgrade signet")]
    NewerSchema {
        location: String,
        /// "schema version", or on PostgreSQL also "record version".
        what: &'static str,
        found: u32,
        understood: u32,
    },
    /// A stored value does not decode: the database is damaged or was edited.
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// Reading, writing or syncing failed.
    #[error("storage I/O failed: {0}")]
    Io(BackendError),
    /// `fdatasync` of the database file failed.
    #[error("could not sync the database to disk: {0}")]
    Sync(#[from] std::io::Error),
    /// The database failed earlier and is not open again yet.
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    /// The seal key could not be loaded.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// A blocking storage task died.
    #[error("a storage task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// Whether this is a database server failing or out of reach
    /// (PostgreSQL), rather than the local disk.
    pub fn is_database_server(&self) -> bool {
        matches!(self, StoreError::Io(e) if e.is::<self::postgres::DatabaseFailed>())
    }

    /// Whether this is the storage itself failing (disk full, read-only,
    /// I/O error, database unreachable), as opposed to damaged data or a
    /// refused open.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Io(_)
                | StoreError::Sync(_)
                | StoreError::Unavailable(_)
                | StoreError::Locked(_)
                | StoreError::Open { .. }
        )
    }
}

/// The outcome of an insert that respects the organisation's quota.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted {
    /// Stored, by the change of this version.
    Yes(u64),
    /// The organisation already holds this many keys.
    QuotaExceeded(u32),
    /// The organisation already holds this public key, under this id.
    Duplicate(KeyId),
}

/// A change of a key's stored state or name (`PATCH`). Each backend reads
/// the record inside its transaction, applies [`KeyChange::apply`], writes
/// the record back and appends the events it returns, all in one
/// transaction (SQL: `SELECT … FOR UPDATE`, `UPDATE keys`, `INSERT INTO
/// audit`).
#[derive(Debug, Clone)]
pub struct KeyChange {
    pub org: OrgId,
    pub id: KeyId,
    /// `Some(true)` disables, `Some(false)` enables.
    pub disable: Option<bool>,
    pub name: Option<KeyName>,
    /// Seconds since the epoch: an expired key cannot be enabled.
    pub now: u64,
    /// Who asked; its action and outcome are set per change.
    pub event: NewEvent,
}

/// What a [`KeyChange`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Changed {
    /// The record as it now stands (unchanged if nothing differed), and
    /// the change's version.
    Yes(PublicKeyRecord, u64),
    /// Nothing differed: the record as it stands, and the version of the
    /// key's latest change (the one this request repeats).
    Unchanged(PublicKeyRecord, u64),
    NotFound,
    /// The change is refused in the key's current state.
    Conflict(String),
}

impl KeyChange {
    /// The record after the change and one event per field that changed
    /// (none if nothing did), or why the change is refused.
    pub fn apply(
        &self,
        record: &PublicKeyRecord,
    ) -> Result<(PublicKeyRecord, Vec<NewEvent>), String> {
        let mut next = record.clone();
        let mut events = Vec::new();
        let mut event = |action, outcome: &str| {
            events.push(NewEvent {
                action,
                outcome: outcome.into(),
                key_id: Some(self.id),
                ..self.event.clone()
            })
        };
        match self.disable {
            Some(false) if record.state_at(self.now) == crate::keys::KeyState::Expired => {
                let at = record.life.expires_at_secs.unwrap_or_default();
                return Err(format!(
                    "key {} expired at {}; an expired key cannot be enabled (rotate it or create a new key)",
                    self.id,
                    crate::keys::rfc3339(at.saturating_mul(1000))
                ));
            }
            Some(disable) if disable != record.life.disabled => {
                next.life.disabled = disable;
                match disable {
                    true => event(Action::KeyDisabled, "disabled"),
                    false => event(Action::KeyEnabled, "enabled"),
                }
            }
            _ => {}
        }
        if let Some(name) = self.name.as_ref().filter(|n| **n != record.name) {
            next.name = name.clone();
            event(Action::KeyRenamed, "renamed");
        }
        Ok((next, events))
    }
}

/// A rotation: the successor is inserted under the quota and the old key's
/// expiry becomes the earlier of its own and `retire_at`, with one
/// `key.rotated` event, in one transaction.
#[derive(Debug, Clone)]
pub struct KeyRotation {
    pub org: OrgId,
    pub old: KeyId,
    pub successor: PublicKeyRecord,
    /// Seconds since the epoch.
    pub retire_at: u64,
    pub quota: u32,
    pub rotated: NewEvent,
    /// Recorded instead when the organisation is full.
    pub refused: NewEvent,
}

impl KeyRotation {
    /// The old key's record after the rotation.
    pub fn retire(&self, old: &PublicKeyRecord) -> PublicKeyRecord {
        let mut next = old.clone();
        let own = old.life.expires_at_secs.unwrap_or(u64::MAX);
        next.life.expires_at_secs = Some(own.min(self.retire_at));
        next
    }
}

/// What a [`KeyRotation`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The old key's record as it now stands, and the change's version.
    Yes(PublicKeyRecord, u64),
    NotFound,
    /// The organisation already holds this many keys.
    QuotaExceeded(u32),
}

/// A key to insert under its organisation's quota.
#[derive(Debug, Clone)]
pub struct Insert {
    pub record: PublicKeyRecord,
    /// The most keys the organisation may hold.
    pub quota: u32,
    /// Recorded with the key.
    pub created: NewEvent,
    /// Recorded instead when the organisation is full.
    pub refused: NewEvent,
}

/// What a [`Delete`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    /// Deleted now, by the change of this version.
    Now(u64),
    /// The organisation's key was deleted before, by the change of this
    /// version: a revoking answer (404) waits for it like the first.
    Already(u64),
    /// The organisation never had such a key.
    NotFound,
}

/// A key to delete, with its audit event.
#[derive(Debug, Clone)]
pub struct Delete {
    pub org: OrgId,
    pub id: KeyId,
    pub event: NewEvent,
}

/// Which audit events to read: at most `limit` of `org`'s, all strictly
/// older than `before` if given.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub org: OrgId,
    pub limit: usize,
    pub before: Option<EventId>,
}

/// What signet needs from a store. Every method that changes data is
/// durable (committed, synced) when its future resolves.
pub trait Storage: Send + Sync {
    /// A fresh, monotonic ULID for a new key.
    fn new_id(&self) -> KeyId;

    /// Bumped whenever the backend reopened after a failure and may hold
    /// other keys than what was derived from it; see `Signet::reconcile`.
    fn generation(&self) -> u64;

    /// Inserts the record if its organisation holds fewer than the quota
    /// and not the same public key (by [`PublicKeyRecord::fingerprint`]),
    /// and records its event (or the quota refusal) in the same transaction.
    fn insert_key(
        &self,
        insert: Insert,
    ) -> impl Future<Output = Result<Inserted, StoreError>> + Send;

    /// Deletes the key, leaving a tombstone and the event; see [`Deleted`].
    fn delete_key(
        &self,
        delete: Delete,
    ) -> impl Future<Output = Result<Deleted, StoreError>> + Send;

    /// Applies `change` to the key's record with its events; see [`KeyChange`].
    fn change_key(
        &self,
        change: KeyChange,
    ) -> impl Future<Output = Result<Changed, StoreError>> + Send;

    /// Rotates a key; see [`KeyRotation`].
    fn rotate_key(
        &self,
        rotation: KeyRotation,
    ) -> impl Future<Output = Result<Rotation, StoreError>> + Send;

    /// Appends one audit event on its own (a refused access).
    fn record_event(
        &self,
        org: OrgId,
        event: NewEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// How many live keys `org` holds (the quota counter).
    fn key_count(&self, org: OrgId) -> impl Future<Output = Result<u32, StoreError>> + Send;

    /// One live key whose record opens under the seal key.
    fn get_key(
        &self,
        id: KeyId,
    ) -> impl Future<Output = Result<Option<PublicKeyRecord>, StoreError>> + Send;

    /// An organisation's live keys, oldest first.
    fn list_org(
        &self,
        org: OrgId,
    ) -> impl Future<Output = Result<Vec<PublicKeyRecord>, StoreError>> + Send;

    /// Every live key that opens, in id (creation) order.
    fn all_keys(&self) -> impl Future<Output = Result<Vec<PublicKeyRecord>, StoreError>> + Send;

    /// One page of an organisation's audit events, newest first.
    fn audit_page(
        &self,
        page: AuditPage,
    ) -> impl Future<Output = Result<Vec<AuditEvent>, StoreError>> + Send;

    /// Walks every organisation's audit chain: the number of events
    /// checked, or the first broken link.
    fn verify_audit(
        &self,
    ) -> impl Future<Output = Result<Result<usize, BrokenLink>, StoreError>> + Send;

    /// Re-seals every record (live and deleted) with the sealer's first key,
    /// all or nothing.
    fn reseal_all(&self) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Makes everything written so far durable.
    fn sync(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the database answers a read: the readiness probe.
    fn is_usable(&self) -> impl Future<Output = bool> + Send;
}

/// The change feed of the shared backend; see [`Store::feed`].
pub type SharedFeed = Arc<PgStore>;

/// The configured backend.
#[derive(Clone)]
pub enum Store {
    Sled(Arc<SledStore>),
    Postgres(Arc<PgStore>),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Sled($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

impl Store {
    /// Opens (creating if needed) the configured store.
    /// A seal key is generated only into a data dir without a database.
    pub async fn open(config: &Config) -> Result<Store, StoreError> {
        let mut fresh = false;
        if config.storage.backend == Backend::Sled {
            let dir = &config.storage.data_dir;
            fresh = !SledStore::exists(dir);
            create_private_dir(dir).map_err(|source| StoreError::Open {
                location: dir.display().to_string(),
                source: Box::new(source),
            })?;
        }
        Store::open_with(config, config.sealer(fresh)?, true).await
    }

    /// Opens the configured store only if it already holds signet data;
    /// creates nothing otherwise (for read-only commands).
    pub async fn open_existing(config: &Config) -> Result<Store, StoreError> {
        if config.storage.backend == Backend::Sled {
            no_sled_data(config)?;
            // A copy: opening sled writes into its files.
            let (dir, sealer) = (config.storage.data_dir.clone(), config.sealer(false)?);
            let store = blocking(move || SledStore::open_copy(&dir, sealer)).await?;
            return Ok(Store::Sled(Arc::new(store)));
        }
        Store::open_with(config, config.sealer(false)?, false).await
    }

    async fn open_with(config: &Config, sealer: Sealer, create: bool) -> Result<Store, StoreError> {
        match config.storage.backend {
            Backend::Sled => {
                let dir = config.storage.data_dir.clone();
                let store = blocking(move || SledStore::open(&dir, sealer)).await?;
                Ok(Store::Sled(Arc::new(store)))
            }
            Backend::Postgres => {
                let url = config.storage.url.as_ref().map_or("", Secret::expose);
                let settings = self::postgres::Settings::of(&config.cluster);
                // Name where the URL came from if it does not parse.
                let store =
                    PgStore::open(url, sealer, create, settings)
                        .await
                        .map_err(|e| match (e, config.storage.url_origin) {
                            (StoreError::Open { location, source }, Some(origin))
                                if location == "storage.url" =>
                            {
                                StoreError::Open {
                                    location: origin.to_owned(),
                                    source,
                                }
                            }
                            (e, _) => e,
                        })?;
                Ok(Store::Postgres(Arc::new(store)))
            }
        }
    }

    /// Whether other processes may write this store too (PostgreSQL): then
    /// revocations wait for them, and key usage is summed over them in the
    /// store (on sled one process counts, in memory, and flushes its counts
    /// into the store only to read them back after a restart).
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// The change feed of a store that other processes write too (on
    /// PostgreSQL: versioned re-reads, heartbeats, `LISTEN` as the
    /// wake-up); `None` when no other process can write it (sled).
    pub fn feed(&self) -> Option<SharedFeed> {
        match self {
            Store::Sled(_) => None,
            Store::Postgres(s) => Some(s.clone()),
        }
    }

    pub fn new_id(&self) -> KeyId {
        dispatch!(self, s => s.new_id())
    }

    pub fn generation(&self) -> u64 {
        dispatch!(self, s => s.generation())
    }

    pub async fn insert_key(&self, insert: Insert) -> Result<Inserted, StoreError> {
        dispatch!(self, s => s.insert_key(insert).await)
    }

    pub async fn delete_key(&self, delete: Delete) -> Result<Deleted, StoreError> {
        dispatch!(self, s => s.delete_key(delete).await)
    }

    pub async fn change_key(&self, change: KeyChange) -> Result<Changed, StoreError> {
        dispatch!(self, s => s.change_key(change).await)
    }

    pub async fn rotate_key(&self, rotation: KeyRotation) -> Result<Rotation, StoreError> {
        dispatch!(self, s => s.rotate_key(rotation).await)
    }

    pub async fn record_event(&self, org: OrgId, event: NewEvent) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_event(org, event).await)
    }

    pub async fn key_count(&self, org: OrgId) -> Result<u32, StoreError> {
        dispatch!(self, s => s.key_count(org).await)
    }

    pub async fn get_key(&self, id: KeyId) -> Result<Option<PublicKeyRecord>, StoreError> {
        dispatch!(self, s => s.get_key(id).await)
    }

    pub async fn list_org(&self, org: OrgId) -> Result<Vec<PublicKeyRecord>, StoreError> {
        dispatch!(self, s => s.list_org(org).await)
    }

    pub async fn all_keys(&self) -> Result<Vec<PublicKeyRecord>, StoreError> {
        dispatch!(self, s => s.all_keys().await)
    }

    /// Every live key that opens, in id (creation) order, handed to
    /// `add(&mut into, batch)` a batch at a time, so that a backend that
    /// can (sled) never holds them all at once; `into` when done.
    pub async fn each_key<T: Send + 'static>(
        &self,
        mut into: T,
        add: fn(&mut T, Vec<PublicKeyRecord>),
    ) -> Result<T, StoreError> {
        match self {
            Store::Sled(s) => {
                let db = s.clone();
                blocking(move || {
                    db.each_key(|batch| add(&mut into, batch))?;
                    Ok(into)
                })
                .await
            }
            Store::Postgres(s) => {
                add(&mut into, s.all_keys().await?);
                Ok(into)
            }
        }
    }

    pub async fn audit_page(&self, page: AuditPage) -> Result<Vec<AuditEvent>, StoreError> {
        dispatch!(self, s => s.audit_page(page).await)
    }

    pub async fn verify_audit(&self) -> Result<Result<usize, BrokenLink>, StoreError> {
        dispatch!(self, s => s.verify_audit().await)
    }

    /// Walks one organisation's audit chain.
    pub async fn verify_org_audit(
        &self,
        org: OrgId,
    ) -> Result<Result<usize, BrokenLink>, StoreError> {
        match self {
            Store::Sled(s) => {
                let s = s.clone();
                blocking(move || s.verify_org_audit(&org)).await
            }
            Store::Postgres(s) => s.verify_org_audit(&org).await,
        }
    }

    /// Adds this process's usage counts to the store's; with `prune`,
    /// also drops counts older than a day as of `now_ms` and those of
    /// deleted keys.
    pub async fn flush_usage(
        &self,
        deltas: &[crate::usage::UsageDelta],
        now_ms: u64,
        prune: bool,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sled(s) => {
                let (db, deltas) = (s.clone(), deltas.to_vec());
                blocking(move || db.flush_usage(&deltas, now_ms, prune)).await
            }
            Store::Postgres(s) => s.flush_usage(deltas, now_ms, prune).await,
        }
    }

    /// The usage counts this process flushed before a restart, to count
    /// again in memory: on sled, where nothing else reads them (empty on
    /// PostgreSQL, where reads sum the store's with [`Store::usage_of`]).
    pub async fn load_usage(
        &self,
        now_ms: u64,
    ) -> Result<Vec<crate::usage::UsageDelta>, StoreError> {
        match self {
            Store::Sled(s) => {
                let db = s.clone();
                blocking(move || db.load_usage(now_ms)).await
            }
            Store::Postgres(_) => Ok(Vec::new()),
        }
    }

    /// A handle that does not keep the store open: a task that outlives
    /// its owner a moment holds no database (nor, on sled, its lock).
    pub fn downgrade(&self) -> WeakStore {
        match self {
            Store::Sled(s) => WeakStore::Sled(Arc::downgrade(s)),
            Store::Postgres(s) => WeakStore::Postgres(Arc::downgrade(s)),
        }
    }

    /// The usage every process flushed for `ids` (empty on sled, where
    /// reads count in memory what [`Store::load_usage`] put back).
    pub async fn usage_of(
        &self,
        ids: &[KeyId],
        now_ms: u64,
    ) -> Result<std::collections::HashMap<KeyId, crate::usage::KeyUsage>, StoreError> {
        match self {
            Store::Sled(_) => Ok(Default::default()),
            Store::Postgres(s) => s.usage_of(ids, now_ms).await,
        }
    }

    pub async fn reseal_all(&self) -> Result<usize, StoreError> {
        dispatch!(self, s => s.reseal_all().await)
    }

    pub async fn sync(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.sync().await)
    }

    pub async fn is_usable(&self) -> bool {
        dispatch!(self, s => s.is_usable().await)
    }
}

/// A [`Store`] that does not keep it open; see [`Store::downgrade`].
#[derive(Clone)]
pub enum WeakStore {
    Sled(std::sync::Weak<SledStore>),
    Postgres(std::sync::Weak<PgStore>),
}

impl WeakStore {
    /// The store, while its owner still holds it.
    pub fn upgrade(&self) -> Option<Store> {
        match self {
            WeakStore::Sled(s) => s.upgrade().map(Store::Sled),
            WeakStore::Postgres(s) => s.upgrade().map(Store::Postgres),
        }
    }
}

/// Creates `path` and its parents, readable by the owner only.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Runs a blocking storage call on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// How many live records, and how many tombstones, a backend hands to
/// [`check_seal`] when it opens.
pub const SEAL_SAMPLE: usize = 32;

/// Refuses a store none of whose sampled records (the first
/// [`SEAL_SAMPLE`] live ones and tombstones, in id order) opens under the
/// configured seal key: the key is not the one they were sealed with, and
/// serving or writing with it would hide every key and seal new ones
/// under the wrong key. One record that opens is enough, so a few planted
/// or damaged records do not refuse the store (they are skipped when
/// read); an empty store passes. Each backend calls this when it opens,
/// before it upgrades the schema.
pub fn check_seal(
    sealer: &Sealer,
    location: &str,
    sample: &[(KeyId, Vec<u8>)],
) -> Result<(), StoreError> {
    if sample.is_empty() || sample.iter().any(|(id, v)| sealer.open(*id, v).is_ok()) {
        return Ok(());
    }
    Err(StoreError::Seal(SealError::WrongKey {
        location: location.to_owned(),
        from: sealer.source().clone(),
    }))
}

/// A record as stored: its JSON, sealed to its id and organisation. Every
/// backend writes records through this one function.
pub fn seal_record(sealer: &Sealer, record: &PublicKeyRecord) -> Vec<u8> {
    let plain = serde_json::to_vec(record).expect("a record always serialises");
    sealer.seal(record.id, &record.org, &plain)
}

/// Opens a stored record; `None` (and an error in the log) if it was
/// forged, edited, moved, or does not parse. Every backend reads records
/// through this one function.
pub fn open_record(sealer: &Sealer, id: KeyId, value: &[u8]) -> Option<PublicKeyRecord> {
    let opened = sealer
        .open(id, value)
        .map_err(|e| e.to_string())
        .and_then(|(org, plain)| {
            let record: PublicKeyRecord = serde_json::from_slice(&plain)
                .map_err(|e| format!("record does not parse: {e}"))?;
            if record.id != id || record.org.as_str() != org {
                return Err("record's id or organisation differs from where it is stored".into());
            }
            Ok(record)
        });
    match opened {
        Ok(record) => Some(record),
        Err(reason) => {
            tracing::error!(key_id = %id, %reason, "ignoring a stored key record that does not open");
            None
        }
    }
}

/// A stored record (live or a tombstone) sealed again with the sealer's
/// first key; refuses a record that does not open.
pub fn reseal_value(sealer: &Sealer, id: KeyId, value: &[u8]) -> Result<Vec<u8>, StoreError> {
    let (org, plain) = sealer.open(id, value).map_err(|e| {
        StoreError::Corrupt(format!(
            "record {id} does not open ({e}); nothing was re-sealed"
        ))
    })?;
    let org = OrgId::parse(&org).map_err(|e| StoreError::Corrupt(format!("record {id}: {e}")))?;
    Ok(sealer.seal(id, &org, &plain))
}

/// What `signet seal rotate` did.
#[derive(Debug)]
pub enum Rotated {
    /// Re-sealed under a key given from outside; nothing was written to files.
    External { records: usize },
    /// Re-sealed under a new key file, now in place at `key_file`.
    KeyFile { records: usize, key_file: PathBuf },
}

/// Why a seal rotation did not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The current key comes from the environment but the new one was not given.
    #[error(
        "SIGNET_SEAL_KEY is set, so give the new key in SIGNET_NEW_SEAL_KEY (64 hex characters)"
    )]
    NoNewKey,
    #[error("cannot move {} into place: {source}", .path.display())]
    Rename {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Re-seals every record under a new seal key. With the current key from
/// the configuration, the new one is `new_key` (hex) and no file is
/// written. Otherwise a new key file is written beside the current one,
/// accepted alongside it until it is renamed into place, so a crash at
/// any point leaves every record readable; rerunning finishes the rotation.
pub async fn rotate_seal(config: &Config, new_key: Option<&str>) -> Result<Rotated, RotateError> {
    if config.storage.backend == Backend::Sled {
        no_sled_data(config)?;
    }
    let Some(key_file) = config.seal_key_file() else {
        let current = config.storage.seal_key.as_ref().map_or("", Secret::expose);
        let both = Sealer::rotating(new_key.ok_or(RotateError::NoNewKey)?, current)?;
        let store = Store::open_with(config, both, false).await?;
        let records = store.reseal_all().await?;
        return Ok(Rotated::External { records });
    };
    if config.storage.backend == Backend::Postgres {
        // Checked before a new key file is written.
        drop(Store::open_existing(config).await?);
    }
    let next_path = crate::seal::next_of(&key_file);
    if !next_path.exists() {
        crate::seal::write_key_file(&next_path, &crate::seal::random_key())?;
    }
    let store = Store::open_with(config, config.sealer(false)?, false).await?;
    let records = store.reseal_all().await?;
    drop(store);
    std::fs::rename(&next_path, &key_file).map_err(|source| RotateError::Rename {
        path: next_path.clone(),
        source,
    })?;
    crate::seal::sync_dir(&next_path).map_err(StoreError::Sync)?;
    Ok(Rotated::KeyFile { records, key_file })
}

/// Refuses a data directory without a sled database in it.
fn no_sled_data(config: &Config) -> Result<(), StoreError> {
    let dir = &config.storage.data_dir;
    match SledStore::exists(dir) {
        true => Ok(()),
        false => Err(StoreError::NoData(dir.display().to_string())),
    }
}
