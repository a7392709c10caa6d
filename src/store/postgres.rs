//! The PostgreSQL backend, and the only module that knows PostgreSQL
//! (tokio-postgres, pooled by deadpool-postgres). Several signet instances
//! may share one database.
//!
//! Tables (created by the migrations below):
//! - `signet_schema`: one row, the schema and record versions
//! - `orgs`: org → live key count, audit chain head, newest event id; its
//!   row is locked (`SELECT … FOR UPDATE`) by every change of the org, which
//!   makes the quota atomic across connections and instances and keeps the
//!   audit chain from forking
//! - `keys`: key id → org, sealed record, and the SHA-256 of its SPKI,
//!   unique per organisation (the same public key is refused twice)
//! - `tombstones`: key id → org, sealed record of a deleted key
//! - `audit`: (org, event id) → event (JSON), chained by hash
//! - `instances`: instance id → the version it has applied, its last
//!   heartbeat (by the database's clock, so one clock orders them all)
//! - `change_counter`: one row, the version of the newest key change; a
//!   change takes the next version as its transaction's last step (its row
//!   lock is held until commit, so versions commit in order: an instance
//!   that has read every change up to version v has missed none below it)
//!   and stamps it on the `keys` or `tombstones` row it wrote, then
//!   announces it with `pg_notify` (delivered at commit)
//!
//! Every change commits before it is acknowledged; how durable a commit is
//! depends on the server (`synchronous_commit`, `fsync`).

use std::sync::Mutex;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::Host;
use tokio_postgres::{NoTls, Transaction};

use crate::audit::{self, AuditEvent, BrokenLink, EventId, NewEvent};
use crate::keys::{KeyId, OrgId, PublicKeyRecord};
use crate::seal::Sealer;
use crate::store::{
    open_record, reseal_value, seal_record, AuditPage, Changed, Changes, Delete, Deleted, Heard,
    Insert, Inserted, KeyChange, KeyRotation, Rotation, Storage, StoreError, SCHEMA_VERSION,
};

/// The schema migrations, in order; the schema version is how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE orgs (
    org text COLLATE "C" PRIMARY KEY,
    key_count integer NOT NULL DEFAULT 0,
    audit_head bytea,
    last_event bytea
);
CREATE TABLE keys (
    id bytea PRIMARY KEY,
    org text COLLATE "C" NOT NULL REFERENCES orgs (org),
    record bytea NOT NULL
);
CREATE INDEX keys_by_org ON keys (org, id);
CREATE TABLE tombstones (
    id bytea PRIMARY KEY,
    org text COLLATE "C" NOT NULL,
    record bytea NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE audit (
    org text COLLATE "C" NOT NULL REFERENCES orgs (org),
    id bytea NOT NULL,
    event bytea NOT NULL,
    PRIMARY KEY (org, id)
);
"#,
    r#"
CREATE TABLE change_counter (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    version bigint NOT NULL
);
INSERT INTO change_counter (version) VALUES (0);
ALTER TABLE keys ADD COLUMN version bigint NOT NULL DEFAULT 0;
ALTER TABLE tombstones ADD COLUMN version bigint NOT NULL DEFAULT 0;
CREATE INDEX keys_by_version ON keys (version);
CREATE INDEX tombstones_by_version ON tombstones (version);
"#,
    r#"
CREATE TABLE instances (
    id text PRIMARY KEY,
    applied bigint NOT NULL,
    heartbeat_at timestamptz NOT NULL
);
"#,
    FINGERPRINTS,
];

/// The channel every key change is announced on, with its version.
const CHANNEL: &str = "signet_keys";

/// The migration that adds each key's fingerprint, unique per organisation;
/// once it ran, every key's fingerprint is filled in from its sealed record
/// (which SQL cannot open).
const FINGERPRINTS: &str = r#"
ALTER TABLE keys ADD COLUMN fingerprint bytea;
CREATE UNIQUE INDEX keys_fingerprint ON keys (org, fingerprint);
"#;

/// The advisory lock that serialises migrations of instances starting at
/// once ("signet" in ASCII).
const MIGRATION_LOCK: i64 = 0x7369_676e_6574;

/// How long a connection attempt, or a wait for a pooled connection, may
/// take before the operation fails as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PgStore {
    pool: Pool,
    /// For the listening connection, which is not pooled.
    pg_config: tokio_postgres::Config,
    /// The listener task, started by the first `announcements`.
    listener: Mutex<Option<(tokio::sync::watch::Sender<Heard>, tokio::task::AbortHandle)>>,
    /// The URL without its password, for messages.
    location: String,
    sealer: Sealer,
    ids: Mutex<ulid::Generator>,
}

impl PgStore {
    /// Connects to `url`, then migrates the schema to this build's (with
    /// `create`) or checks that signet data is there (without: creates
    /// nothing).
    pub async fn open(url: &str, sealer: Sealer, create: bool) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Open {
            location: "storage.url".into(),
            source: Box::new(e),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("signet");
        }
        let location = describe(&config);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Open {
                location: location.clone(),
                source: Box::new(e),
            })?;
        let store = PgStore {
            pool,
            pg_config: config,
            listener: Mutex::new(None),
            location,
            sealer,
            ids: Mutex::new(ulid::Generator::new()),
        };
        let opened = match create {
            true => store.migrate().await,
            false => store.check_existing().await,
        };
        opened.map_err(|e| match e {
            StoreError::Io(source) | StoreError::Open { source, .. } => StoreError::Open {
                location: store.location.clone(),
                source,
            },
            other => other,
        })?;
        Ok(store)
    }

    /// Where the database is, without the password.
    pub fn location(&self) -> &str {
        &self.location
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot reach the database at {}: {e}",
                self.location
            ))
        })
    }

    /// A connection at start-up, where failing to get one is failing to open.
    async fn connect(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Open {
            location: self.location.clone(),
            source: Box::new(e),
        })
    }

    /// Applies the migrations this database lacks, in one transaction under
    /// an advisory lock, and refuses a schema newer than this build's.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.connect().await?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db)?;
        // "already exists, skipping" notices are not news.
        tx.batch_execute("SET LOCAL client_min_messages = warning")
            .await
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS signet_schema (
                one boolean PRIMARY KEY DEFAULT true CHECK (one),
                version integer NOT NULL,
                record_version integer NOT NULL
            )",
        )
        .await
        .map_err(db)?;
        let row = tx
            .query_opt("SELECT version, record_version FROM signet_schema", &[])
            .await
            .map_err(db)?;
        let (version, records) = match row {
            Some(row) => (row.get::<_, i32>(0), row.get::<_, i32>(1)),
            None => (0, 0),
        };
        let known = MIGRATIONS.len() as i32;
        if version > known || records > SCHEMA_VERSION as i32 {
            return Err(StoreError::NewerSchema {
                location: self.location.clone(),
                found: (version.max(records)) as u32,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(sql).await.map_err(db)?;
            if *sql == FINGERPRINTS {
                self.fill_fingerprints(&tx).await?;
            }
            tracing::info!(version = i + 1, "applied a database schema migration");
        }
        tx.execute(
            "INSERT INTO signet_schema (version, record_version) VALUES ($1, $2)
             ON CONFLICT (one) DO UPDATE SET version = $1, record_version = $2",
            &[&known, &(SCHEMA_VERSION as i32)],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// Sets the fingerprint of every key that has none.
    async fn fill_fingerprints(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        let rows = tx
            .query(
                "SELECT id, record FROM keys WHERE fingerprint IS NULL FOR UPDATE",
                &[],
            )
            .await
            .map_err(db)?;
        for record in self.records(rows)? {
            tx.execute(
                "UPDATE keys SET fingerprint = $2 WHERE id = $1",
                &[
                    &record.id.to_bytes().as_slice(),
                    &record.fingerprint().as_slice(),
                ],
            )
            .await
            .map_err(db)?;
        }
        Ok(())
    }

    /// The live record `id` of `org`, read in `tx` (whose org row is locked).
    async fn live_record(
        &self,
        tx: &Transaction<'_>,
        org: &OrgId,
        id: KeyId,
    ) -> Result<Option<PublicKeyRecord>, StoreError> {
        let row = tx
            .query_opt(
                "SELECT record FROM keys WHERE id = $1 AND org = $2",
                &[&id.to_bytes().as_slice(), &org.as_str()],
            )
            .await
            .map_err(db)?;
        let Some(row) = row else {
            return Ok(None);
        };
        open_record(&self.sealer, id, row.get(0))
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt(format!("the record of key {id} does not open")))
    }

    /// Writes a changed record of a live key.
    async fn update_record(
        &self,
        tx: &Transaction<'_>,
        record: &PublicKeyRecord,
    ) -> Result<(), StoreError> {
        tx.execute(
            "UPDATE keys SET record = $2 WHERE id = $1",
            &[
                &record.id.to_bytes().as_slice(),
                &seal_record(&self.sealer, record),
            ],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Inserts a new live key and counts it (its org row locked).
    async fn add_key(
        &self,
        tx: &Transaction<'_>,
        record: &PublicKeyRecord,
    ) -> Result<(), StoreError> {
        let value = seal_record(&self.sealer, record);
        tx.execute(
            "INSERT INTO keys (id, org, record, fingerprint) VALUES ($1, $2, $3, $4)",
            &[
                &record.id.to_bytes().as_slice(),
                &record.org.as_str(),
                &value,
                &record.fingerprint().as_slice(),
            ],
        )
        .await
        .map_err(db)?;
        tx.execute(
            "UPDATE orgs SET key_count = key_count + 1 WHERE org = $1",
            &[&record.org.as_str()],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Refuses a database without signet's tables, or with newer ones.
    async fn check_existing(&self) -> Result<(), StoreError> {
        let client = self.connect().await?;
        let exists: bool = client
            .query_one("SELECT to_regclass('signet_schema') IS NOT NULL", &[])
            .await
            .map_err(db)?
            .get(0);
        if !exists {
            return Err(StoreError::NoData(self.location.clone()));
        }
        let row = client
            .query_one("SELECT version, record_version FROM signet_schema", &[])
            .await
            .map_err(db)?;
        let (version, records): (i32, i32) = (row.get(0), row.get(1));
        if version > MIGRATIONS.len() as i32 || records > SCHEMA_VERSION as i32 {
            return Err(StoreError::NewerSchema {
                location: self.location.clone(),
                found: version.max(records) as u32,
            });
        }
        if version < MIGRATIONS.len() as i32 {
            return Err(StoreError::Unavailable(format!(
                "the database at {} has an older schema; start `signet serve` once to migrate it",
                self.location
            )));
        }
        Ok(())
    }

    fn next_id(&self) -> ulid::Ulid {
        let mut ids = self.ids.lock().expect("id lock poisoned");
        loop {
            match ids.generate() {
                Ok(id) => return id,
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Locks `org`'s row (creating it), for a change of the org.
    async fn lock_org(&self, tx: &Transaction<'_>, org: &OrgId) -> Result<OrgRow, StoreError> {
        tx.execute(
            "INSERT INTO orgs (org) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&org.as_str()],
        )
        .await
        .map_err(db)?;
        let row = tx
            .query_one(
                "SELECT key_count, audit_head, last_event FROM orgs WHERE org = $1 FOR UPDATE",
                &[&org.as_str()],
            )
            .await
            .map_err(db)?;
        let head: Option<Vec<u8>> = row.get(1);
        let last: Option<Vec<u8>> = row.get(2);
        Ok(OrgRow {
            count: u32::try_from(row.get::<_, i32>(0))
                .map_err(|_| StoreError::Corrupt("key count is negative".into()))?,
            head: match head {
                None => audit::GENESIS,
                Some(h) => h
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("audit head is not 32 bytes".into()))?,
            },
            last: last
                .map(|l| {
                    <[u8; 16]>::try_from(l)
                        .map(ulid::Ulid::from_bytes)
                        .map_err(|_| StoreError::Corrupt("last event id is not 16 bytes".into()))
                })
                .transpose()?,
        })
    }

    /// Appends `event` to `org`'s chain; the org's row must be locked.
    async fn append_event(
        &self,
        tx: &Transaction<'_>,
        org: &OrgId,
        row: &OrgRow,
        event: NewEvent,
    ) -> Result<(), StoreError> {
        // Event ids increase along the chain even when instances' clocks
        // disagree: an id not after the newest is replaced by its successor.
        let fresh = self.next_id();
        let id = match row.last {
            Some(last) if last >= fresh => last
                .increment()
                .ok_or_else(|| StoreError::Corrupt("audit event ids are exhausted".into()))?,
            _ => fresh,
        };
        let id = EventId::new(id);
        let stored = serde_json::to_vec(&AuditEvent::new(id, org.clone(), event, row.head))
            .expect("an event always serialises");
        let id_bytes = id.to_bytes();
        tx.execute(
            "INSERT INTO audit (org, id, event) VALUES ($1, $2, $3)",
            &[&org.as_str(), &id_bytes.as_slice(), &stored],
        )
        .await
        .map_err(db)?;
        tx.execute(
            "UPDATE orgs SET audit_head = $2, last_event = $3 WHERE org = $1",
            &[
                &org.as_str(),
                &audit::link(&stored).as_slice(),
                &id_bytes.as_slice(),
            ],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    fn records(&self, rows: Vec<tokio_postgres::Row>) -> Result<Vec<PublicKeyRecord>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id = key_id(row.get(0))?;
            out.extend(open_record(&self.sealer, id, row.get(1)));
        }
        Ok(out)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some((_, task)) = self.listener.lock().expect("listener lock poisoned").take() {
            task.abort();
        }
    }
}

/// Keeps one connection listening on the change channel, reconnecting
/// after 100 ms, then up to a second, when it is lost; marks `events`
/// changed on every notification, and on every (re)connect and every loss,
/// which also move `Heard`'s session and state.
async fn listen(config: tokio_postgres::Config, events: tokio::sync::watch::Sender<Heard>) {
    const FIRST_PAUSE: Duration = Duration::from_millis(100);
    let mut pause = FIRST_PAUSE;
    loop {
        if let Ok((client, mut connection)) = config.connect(NoTls).await {
            let sql = format!("LISTEN {CHANNEL}");
            let listen = client.batch_execute(&sql);
            let mut listen = std::pin::pin!(listen);
            let mut listening = false;
            loop {
                tokio::select! {
                    done = &mut listen, if !listening => {
                        if done.is_err() {
                            break;
                        }
                        listening = true;
                        pause = FIRST_PAUSE;
                        events.send_modify(|heard| {
                            heard.session += 1;
                            heard.listening = true;
                        });
                    }
                    message = std::future::poll_fn(|cx| connection.poll_message(cx)) => {
                        match message {
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                                events.send_modify(|_| {});
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break,
                        }
                    }
                }
            }
            events.send_modify(|heard| heard.listening = false);
            tracing::warn!("lost the connection listening for key changes; reconnecting");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

struct OrgRow {
    count: u32,
    head: [u8; 32],
    last: Option<ulid::Ulid>,
}

impl Storage for PgStore {
    fn new_id(&self) -> KeyId {
        KeyId::new(self.next_id())
    }

    fn generation(&self) -> u64 {
        0
    }

    async fn insert_key(&self, insert: Insert) -> Result<Inserted, StoreError> {
        let record = &insert.record;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let org = self.lock_org(&tx, &record.org).await?;
        let same = tx
            .query_opt(
                "SELECT id FROM keys WHERE org = $1 AND fingerprint = $2",
                &[&record.org.as_str(), &record.fingerprint().as_slice()],
            )
            .await
            .map_err(db)?;
        if let Some(same) = same {
            tx.rollback().await.map_err(db)?;
            return Ok(Inserted::Duplicate(key_id(same.get(0))?));
        }
        if org.count >= insert.quota {
            self.append_event(&tx, &record.org, &org, insert.refused)
                .await?;
            tx.commit().await.map_err(db)?;
            return Ok(Inserted::QuotaExceeded(org.count));
        }
        self.add_key(&tx, record).await?;
        self.append_event(&tx, &record.org, &org, insert.created)
            .await?;
        let version = stamp(&tx, &[record.id]).await?;
        tx.commit().await.map_err(db)?;
        Ok(Inserted::Yes(version))
    }

    async fn change_key(&self, change: KeyChange) -> Result<Changed, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        self.lock_org(&tx, &change.org).await?;
        let Some(record) = self.live_record(&tx, &change.org, change.id).await? else {
            tx.rollback().await.map_err(db)?;
            return Ok(Changed::NotFound);
        };
        let (next, events) = match change.apply(&record) {
            Ok(applied) => applied,
            Err(why) => return Ok(Changed::Conflict(why)),
        };
        if events.is_empty() {
            let row = tx
                .query_one(
                    "SELECT version FROM keys WHERE id = $1",
                    &[&change.id.to_bytes().as_slice()],
                )
                .await
                .map_err(db)?;
            tx.rollback().await.map_err(db)?;
            return Ok(Changed::Unchanged(record, row.get::<_, i64>(0) as u64));
        }
        self.update_record(&tx, &next).await?;
        for event in events {
            // Each event moves the chain head; read it again.
            let row = self.lock_org(&tx, &change.org).await?;
            self.append_event(&tx, &change.org, &row, event).await?;
        }
        let version = stamp(&tx, &[change.id]).await?;
        tx.commit().await.map_err(db)?;
        Ok(Changed::Yes(next, version))
    }

    async fn rotate_key(&self, rotation: KeyRotation) -> Result<Rotation, StoreError> {
        let org = &rotation.org;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let row = self.lock_org(&tx, org).await?;
        let Some(old) = self.live_record(&tx, org, rotation.old).await? else {
            tx.rollback().await.map_err(db)?;
            return Ok(Rotation::NotFound);
        };
        if row.count >= rotation.quota {
            self.append_event(&tx, org, &row, rotation.refused).await?;
            tx.commit().await.map_err(db)?;
            return Ok(Rotation::QuotaExceeded(row.count));
        }
        let retired = rotation.retire(&old);
        self.update_record(&tx, &retired).await?;
        self.add_key(&tx, &rotation.successor).await?;
        self.append_event(&tx, org, &row, rotation.rotated).await?;
        // The successor and the old key's new expiry reach the other
        // instances as one change.
        let version = stamp(&tx, &[rotation.successor.id, rotation.old]).await?;
        tx.commit().await.map_err(db)?;
        Ok(Rotation::Yes(retired, version))
    }

    async fn delete_key(&self, delete: Delete) -> Result<Deleted, StoreError> {
        let Delete { org, id, event } = delete;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let row = self.lock_org(&tx, &org).await?;
        let removed = tx
            .query_opt(
                "DELETE FROM keys WHERE id = $1 AND org = $2 RETURNING record",
                &[&id.to_bytes().as_slice(), &org.as_str()],
            )
            .await
            .map_err(db)?;
        let Some(removed) = removed else {
            // Deleted before? Its 404 waits for that deletion like a 204.
            let gone = tx
                .query_opt(
                    "SELECT version FROM tombstones WHERE id = $1 AND org = $2",
                    &[&id.to_bytes().as_slice(), &org.as_str()],
                )
                .await
                .map_err(db)?;
            // Nothing changed; the org row (if just created) goes too.
            tx.rollback().await.map_err(db)?;
            return Ok(match gone {
                Some(row) => Deleted::Already(row.get::<_, i64>(0) as u64),
                None => Deleted::NotFound,
            });
        };
        let record: Vec<u8> = removed.get(0);
        tx.execute(
            "UPDATE orgs SET key_count = greatest(key_count - 1, 0) WHERE org = $1",
            &[&org.as_str()],
        )
        .await
        .map_err(db)?;
        self.append_event(&tx, &org, &row, event).await?;
        let version = next_version(&tx).await?;
        tx.execute(
            "INSERT INTO tombstones (id, org, record, version) VALUES ($1, $2, $3, $4)",
            &[&id.to_bytes().as_slice(), &org.as_str(), &record, &version],
        )
        .await
        .map_err(db)?;
        announce(&tx, version).await?;
        tx.commit().await.map_err(db)?;
        Ok(Deleted::Now(version as u64))
    }

    async fn record_event(&self, org: OrgId, event: NewEvent) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let row = self.lock_org(&tx, &org).await?;
        self.append_event(&tx, &org, &row, event).await?;
        tx.commit().await.map_err(db)
    }

    async fn key_count(&self, org: OrgId) -> Result<u32, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT key_count FROM orgs WHERE org = $1",
                &[&org.as_str()],
            )
            .await
            .map_err(db)?;
        Ok(row.map_or(0, |r| r.get::<_, i32>(0).max(0) as u32))
    }

    async fn get_key(&self, id: KeyId) -> Result<Option<PublicKeyRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT record FROM keys WHERE id = $1",
                &[&id.to_bytes().as_slice()],
            )
            .await
            .map_err(db)?;
        Ok(row.and_then(|r| open_record(&self.sealer, id, r.get(0))))
    }

    async fn list_org(&self, org: OrgId) -> Result<Vec<PublicKeyRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, record FROM keys WHERE org = $1 ORDER BY id",
                &[&org.as_str()],
            )
            .await
            .map_err(db)?;
        self.records(rows)
    }

    async fn all_keys(&self) -> Result<Vec<PublicKeyRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT id, record FROM keys ORDER BY id", &[])
            .await
            .map_err(db)?;
        self.records(rows)
    }

    async fn audit_page(&self, page: AuditPage) -> Result<Vec<AuditEvent>, StoreError> {
        let AuditPage { org, limit, before } = page;
        let client = self.client().await?;
        // An id above every ULID: no bound.
        let before = before.map_or([0xff; 17].to_vec(), |id| id.to_bytes().to_vec());
        let rows = client
            .query(
                "SELECT event FROM audit WHERE org = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                &[&org.as_str(), &before, &(limit as i64)],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|row| {
                serde_json::from_slice(row.get(0))
                    .map_err(|e| StoreError::Corrupt(format!("audit event does not parse: {e}")))
            })
            .collect()
    }

    async fn verify_audit(&self) -> Result<Result<usize, BrokenLink>, StoreError> {
        let client = self.client().await?;
        let orgs = client
            .query("SELECT org FROM orgs ORDER BY org", &[])
            .await
            .map_err(db)?;
        let mut total = 0;
        for org in orgs {
            let org: String = org.get(0);
            let rows = client
                .query(
                    "SELECT id, event FROM audit WHERE org = $1 ORDER BY id",
                    &[&org],
                )
                .await
                .map_err(db)?;
            let mut chain = Vec::with_capacity(rows.len());
            for row in &rows {
                chain.push((key_id(row.get(0))?.to_string(), row.get::<_, &[u8]>(1)));
            }
            match audit::check_chain(&org, chain) {
                Ok(n) => total += n,
                Err(broken) => return Ok(Err(broken)),
            }
        }
        Ok(Ok(total))
    }

    async fn reseal_all(&self) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let mut count = 0;
        for table in ["keys", "tombstones"] {
            let rows = tx
                .query(&format!("SELECT id, record FROM {table} FOR UPDATE"), &[])
                .await
                .map_err(db)?;
            let update = tx
                .prepare(&format!("UPDATE {table} SET record = $2 WHERE id = $1"))
                .await
                .map_err(db)?;
            for row in rows {
                let raw: &[u8] = row.get(0);
                let value = reseal_value(&self.sealer, key_id(raw)?, row.get(1))?;
                tx.execute(&update, &[&raw, &value]).await.map_err(db)?;
                count += 1;
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(count)
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // Every change committed before it was acknowledged.
        Ok(())
    }

    async fn is_usable(&self) -> bool {
        match self.client().await {
            Ok(client) => client.query_one("SELECT 1", &[]).await.is_ok(),
            Err(_) => false,
        }
    }

    async fn version(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT version FROM change_counter", &[])
            .await
            .map_err(db)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn changes_since(&self, applied: u64) -> Result<Changes, StoreError> {
        let client = self.client().await?;
        // One statement, one snapshot: every version up to the counter's
        // has committed. The counter's row comes first, then one row per
        // change (live keys with their record, deleted ones without).
        let statement = client
            .prepare_cached(
                "WITH c AS (SELECT version FROM change_counter)
                 SELECT 0 AS kind, version, NULL::bytea, NULL::text, NULL::bytea FROM c
                 UNION ALL
                 SELECT 1, k.version, k.id, k.org, k.record FROM keys k, c
                  WHERE k.version > $1 AND k.version <= c.version
                 UNION ALL
                 SELECT 2, 0, t.id, t.org, NULL FROM tombstones t, c
                  WHERE t.version > $1 AND t.version <= c.version
                 ORDER BY kind",
            )
            .await
            .map_err(db)?;
        let rows = client
            .query(&statement, &[&(applied as i64)])
            .await
            .map_err(db)?;
        let mut rows = rows.into_iter();
        let upto: i64 = rows
            .next()
            .ok_or_else(|| StoreError::Corrupt("change_counter has no row".into()))?
            .get(1);
        let mut changes = Changes {
            upto: upto as u64,
            ..Changes::default()
        };
        for row in rows {
            let id = key_id(row.get(2))?;
            match row.get::<_, Option<&[u8]>>(4) {
                Some(record) => {
                    let version = row.get::<_, i64>(1) as u64;
                    let record = open_record(&self.sealer, id, record);
                    changes.live.extend(record.map(|r| (version, r)));
                }
                None => {
                    let org = OrgId::parse(row.get(3))
                        .map_err(|e| StoreError::Corrupt(format!("tombstone organisation: {e}")))?;
                    changes.gone.push((org, id));
                }
            }
        }
        changes.live.sort_by_key(|(_, r)| r.id);
        Ok(changes)
    }

    async fn heartbeat(&self, instance: &str, applied: u64) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                // Instances killed a day ago are forgotten on the way. A
                // heartbeat need not wait for the disk (it is visible to
                // other sessions at commit all the same, and one lost in a
                // crash of PostgreSQL is replaced by the next): without
                // that wait a revocation's wait for the others' heartbeats
                // is not a disk flush per instance.
                "WITH quick AS (SELECT set_config('synchronous_commit', 'off', true)),
                 forgotten AS (
                     DELETE FROM instances WHERE heartbeat_at < now() - interval '1 day'
                 )
                 INSERT INTO instances (id, applied, heartbeat_at)
                 SELECT $1, $2, now() FROM quick
                 ON CONFLICT (id) DO UPDATE SET applied = $2, heartbeat_at = now()",
            )
            .await
            .map_err(db)?;
        client
            .execute(&statement, &[&instance, &(applied as i64)])
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn leave(&self, instance: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM instances WHERE id = $1", &[&instance])
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn lagging(&self, version: u64, me: &str, live: Duration) -> Result<u64, StoreError> {
        let client = self.client().await?;
        // Prepared once per pooled connection: a revocation's wait asks
        // this every millisecond or so.
        let statement = client
            .prepare_cached(
                "SELECT count(*) FROM instances WHERE id <> $1 AND applied < $2
                   AND heartbeat_at > now() - make_interval(secs => $3)",
            )
            .await
            .map_err(db)?;
        let row = client
            .query_one(&statement, &[&me, &(version as i64), &live.as_secs_f64()])
            .await
            .map_err(db)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    fn announcements(&self) -> Option<tokio::sync::watch::Receiver<Heard>> {
        let mut listener = self.listener.lock().expect("listener lock poisoned");
        let (events, receiver) = match &*listener {
            Some((events, _)) => return Some(events.subscribe()),
            None => tokio::sync::watch::channel(Heard::default()),
        };
        let task = tokio::spawn(listen(self.pg_config.clone(), events.clone()));
        *listener = Some((events, task.abort_handle()));
        Some(receiver)
    }
}

/// Gives the keys `ids` the next change version and announces it: the
/// last step of a transaction that created or changed them.
async fn stamp(tx: &Transaction<'_>, ids: &[KeyId]) -> Result<u64, StoreError> {
    let version = next_version(tx).await?;
    let ids: Vec<[u8; 16]> = ids.iter().map(|id| id.to_bytes()).collect();
    let ids: Vec<&[u8]> = ids.iter().map(|id| id.as_slice()).collect();
    tx.execute(
        "UPDATE keys SET version = $2 WHERE id = ANY($1)",
        &[&ids, &version],
    )
    .await
    .map_err(db)?;
    announce(tx, version).await?;
    Ok(version as u64)
}

/// The next change version. Taken last in a transaction: the counter's row
/// stays locked until commit, so versions commit in order.
async fn next_version(tx: &Transaction<'_>) -> Result<i64, StoreError> {
    let row = tx
        .query_one(
            "UPDATE change_counter SET version = version + 1 RETURNING version",
            &[],
        )
        .await
        .map_err(db)?;
    Ok(row.get(0))
}

/// Tells every listening instance, at commit, that `version` exists.
async fn announce(tx: &Transaction<'_>, version: i64) -> Result<(), StoreError> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &version.to_string()],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// A database error: the storage failing, as far as a caller can tell.
fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::Io(Box::new(e))
}

fn key_id(raw: &[u8]) -> Result<KeyId, StoreError> {
    raw.try_into()
        .map(KeyId::from_bytes)
        .map_err(|_| StoreError::Corrupt("a stored id is not 16 bytes".into()))
}

/// `postgres://user@host:port/db`, never with the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let dbname = config.get_dbname().unwrap_or("");
    format!("postgres://{user}{}/{dbname}", hosts.join(","))
}
