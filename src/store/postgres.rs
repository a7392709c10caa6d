//! The PostgreSQL backend, and the only module that knows PostgreSQL
//! (tokio-postgres, pooled by deadpool-postgres). Several signet instances
//! may share one database: it is the feed each one's replica follows
//! (`feed::ChangeFeed`: versioned re-reads, each confirmed by the
//! heartbeat after it) and the reports a revoking writer waits on
//! (`feed::Reports`).
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
//! - `key_usage`: (key id, minute) → verifications counted in that minute
//!   by every instance (each adds its own counts every few seconds, never
//!   one write per verification); rows older than a day are pruned
//! - `key_last_use`: key id → the last verification any instance counted
//! - `change_counter`: one row, the version of the newest key change; a
//!   change takes the next version as its transaction's last step (its row
//!   lock is held until commit, so versions commit in order: an instance
//!   that has read every change up to version v has missed none below it)
//!   and stamps it on the `keys` or `tombstones` row it wrote, then
//!   announces it with `pg_notify` (delivered at commit)
//!
//! Every change commits before it is acknowledged; how durable a commit is
//! depends on the server (`synchronous_commit`, `fsync`).
//!
//! Partitions answer: every operation, from taking a pooled connection to
//! its commit, is bounded by `cluster.statement_timeout` (then
//! `Unavailable`), and one abandoned or timed out leaves the pool with its
//! query cancelled ([`Conn`]). Every connection uses TCP keepalive and
//! `tcp_user_timeout`; the server ends statements past the statement
//! timeout, lock waits past `cluster.lock_timeout` and sessions idle inside
//! a transaction for half of it (so a writer cut off mid-transaction frees
//! the change counter in time for the others). A pooled connection idle
//! for more than a second is checked before it is handed out. The follower
//! has its own connections, never queued behind requests.
//!
//! No session state is used beyond the listening connection: statements
//! are unnamed (`query_typed`, one round trip), settings are startup
//! options or `SET LOCAL`, and the migration lock is transaction-level; so
//! with `cluster.notify = "poll"` signet works behind a transaction-pooling
//! PgBouncer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::Host;
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, Transaction};

use crate::audit::{self, AuditEvent, BrokenLink, EventId, NewEvent};
use crate::feed::{Acknowledged, Change, Confirmation, Instance, Round};
use crate::keys::{KeyId, OrgId, PublicKeyRecord};
use crate::seal::Sealer;
use crate::store::{
    open_record, reseal_value, seal_record, AuditPage, Changed, Changes, Delete, Deleted, Heard,
    Insert, Inserted, KeyChange, KeyRotation, Rotation, Storage, StoreError, SCHEMA_VERSION,
};
use crate::usage::{KeyUsage, UsageDelta};

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
    USAGE,
];

/// The migration that adds key usage, summed over instances. Idempotent,
/// like a re-run after a schema version was set back by hand.
const USAGE: &str = r#"
CREATE TABLE IF NOT EXISTS key_usage (
    key_id bytea NOT NULL,
    minute bigint NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (key_id, minute)
);
CREATE INDEX IF NOT EXISTS key_usage_by_minute ON key_usage (minute);
CREATE TABLE IF NOT EXISTS key_last_use (
    key_id bytea PRIMARY KEY,
    at_ms bigint NOT NULL
);
"#;

/// The channel every key change is announced on, with its version.
const CHANNEL: &str = "signet_keys";

/// The channel every listening instance's heartbeat is announced on, with
/// the version it has applied: a revocation's writer waits on it.
const ACKS: &str = "signet_acks";

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

/// A pooled connection idle longer than this is checked before use.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// What bounds this store's waits on the database (`[cluster]`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    /// `cluster.notify = "poll"`: no `LISTEN`, no session state.
    pub poll: bool,
}

impl Settings {
    pub fn of(cluster: &crate::config::Cluster) -> Settings {
        Settings {
            statement_timeout: Duration::from_millis(cluster.statement_timeout_ms),
            lock_timeout: Duration::from_millis(cluster.lock_timeout_ms),
            poll: cluster.notify == crate::config::Notify::Poll,
        }
    }

    /// The server-side limits, as `-c` options or `SET LOCAL`s.
    fn limits(&self) -> [(&'static str, u128); 3] {
        [
            ("statement_timeout", self.statement_timeout.as_millis()),
            ("lock_timeout", self.lock_timeout.as_millis()),
            (
                "idle_in_transaction_session_timeout",
                (self.lock_timeout / 2).as_millis().max(1),
            ),
        ]
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings::of(&crate::config::Cluster::default())
    }
}

pub struct PgStore {
    /// Connections for requests.
    pool: Pool,
    /// The follower's own connections: its re-reads and heartbeats never
    /// wait behind requests.
    follow: Pool,
    /// For the listening connection, which is not pooled.
    pg_config: tokio_postgres::Config,
    /// The listener task, started by the first `announcements`.
    listener: Mutex<
        Option<(
            tokio::sync::watch::Sender<Heard>,
            Option<tokio::task::AbortHandle>,
        )>,
    >,
    /// The URL without its password, for messages.
    location: String,
    sealer: Sealer,
    ids: Mutex<ulid::Generator>,
    settings: Settings,
    /// Polling instead of listening: configured, or notifications found
    /// not to arrive (a transaction-pooling proxy). Heartbeats then wait
    /// for the disk, since no lost session tells of a crash.
    polling: Arc<AtomicBool>,
    /// `SET LOCAL` of the server-side limits, run first in every
    /// transaction while polling (a pooler may not pass startup options).
    set_local: String,
    /// What the heartbeats of other instances heard (while listening)
    /// reported.
    acks: Arc<tokio::sync::watch::Sender<Acknowledged>>,
}

/// A pooled connection for one operation. Dropped before [`Conn::done`] —
/// its operation timed out, or the request was abandoned by its client —
/// it leaves the pool, and the query it may still be running is cancelled:
/// no later operation queues behind it.
struct Conn {
    client: Option<deadpool_postgres::Object>,
}

impl Conn {
    /// The operation finished: the connection may go back to the pool.
    fn done(mut self) {
        drop(self.client.take());
    }
}

impl std::ops::Deref for Conn {
    type Target = deadpool_postgres::Object;
    fn deref(&self) -> &Self::Target {
        self.client.as_ref().expect("a connection until done")
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.client.as_mut().expect("a connection until done")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let cancel = client.cancel_token();
        drop(deadpool_postgres::Object::take(client));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(IDLE_CHECK * 5, cancel.cancel_query(NoTls)).await;
            });
        }
    }
}

/// Runs `$body` with `$client`, a connection from `$pool`, all within the
/// statement timeout; see [`Conn`].
macro_rules! on_conn {
    ($self:ident, $pool:expr, |$client:ident| $body:block) => {
        $self.bounded(async {
            let mut conn = $self.conn($pool).await?;
            let out = async {
                let $client: &mut deadpool_postgres::Object = &mut conn;
                $body
            }
            .await;
            conn.done();
            out
        })
    };
}

impl PgStore {
    /// Connects to `url`, then migrates the schema to this build's (with
    /// `create`) or checks that signet data is there (without: creates
    /// nothing).
    pub async fn open(
        url: &str,
        sealer: Sealer,
        create: bool,
        settings: Settings,
    ) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Open {
            location: "storage.url".into(),
            source: Box::new(e),
        })?;
        let timeout = settings.statement_timeout;
        if config.get_connect_timeout().is_none_or(|t| *t > timeout) {
            config.connect_timeout(timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("signet");
        }
        // A silently dropped path is noticed: by keepalive on an idle
        // connection, by the user timeout on one with data unacknowledged.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(1))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3)
            .tcp_user_timeout(timeout.max(Duration::from_secs(1)));
        let sets: Vec<String> = settings
            .limits()
            .iter()
            .map(|(name, ms)| format!("SET LOCAL {name} = {ms}"))
            .collect();
        let set_local = sets.join("; ");
        // A transaction-pooling proxy refuses startup options (or ignores
        // them): when polling, the limits are set in each transaction.
        if !settings.poll {
            let options: Vec<String> = settings
                .limits()
                .iter()
                .map(|(name, ms)| format!("-c {name}={ms}"))
                .collect();
            let options = match config.get_options() {
                Some(theirs) => format!("{theirs} {}", options.join(" ")),
                None => options.join(" "),
            };
            config.options(options);
        }
        let location = describe(&config);
        let open_error = |e: deadpool_postgres::BuildError| StoreError::Open {
            location: location.clone(),
            source: Box::new(e),
        };
        let pool = new_pool(&config, 16, &settings).map_err(open_error)?;
        let follow = new_pool(&config, 2, &settings).map_err(open_error)?;
        let store = PgStore {
            pool,
            follow,
            pg_config: config,
            listener: Mutex::new(None),
            location,
            sealer,
            ids: Mutex::new(ulid::Generator::new()),
            settings,
            polling: Arc::new(AtomicBool::new(settings.poll)),
            set_local,
            acks: Arc::new(tokio::sync::watch::channel(Acknowledged::default()).0),
        };
        let opened = match store.check_seal().await {
            Ok(()) if create => store.migrate().await,
            Ok(()) => store.check_existing().await,
            Err(e) => Err(e),
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

    /// A connection from `pool` for one operation.
    async fn conn(&self, pool: &Pool) -> Result<Conn, StoreError> {
        let client = pool.get().await.map_err(|e| {
            let mut why = format!(
                "cannot reach the database at {}: {}",
                self.location,
                causes(&e)
            );
            if why.contains("unsupported startup parameter") {
                why.push_str(" (a transaction-pooling proxy such as PgBouncer refuses the `options` that carry signet's timeouts with cluster.notify = \"listen\"; set cluster.notify = \"poll\")");
            }
            unreachable_db(why)
        })?;
        Ok(Conn {
            client: Some(client),
        })
    }

    /// `op` within the statement timeout, else unavailable (and its
    /// connection, if it had one, dropped with its query cancelled).
    async fn bounded<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let limit = self.settings.statement_timeout;
        tokio::time::timeout(limit, op).await.unwrap_or_else(|_| {
            Err(unreachable_db(format!(
                "the database at {} did not answer within {} ms (cluster.statement_timeout_ms)",
                self.location,
                limit.as_millis()
            )))
        })
    }

    /// Begins a transaction on `client`, with the server-side limits when
    /// they are not startup options.
    async fn begin<'a>(
        &self,
        client: &'a mut deadpool_postgres::Object,
    ) -> Result<deadpool_postgres::Transaction<'a>, StoreError> {
        let tx = client.transaction().await.map_err(db)?;
        if self.polling() {
            tx.batch_execute(&self.set_local).await.map_err(db)?;
        }
        Ok(tx)
    }

    /// Begins a transaction for work whose size has no bound (start-up,
    /// the CLI): no server-side statement or lock timeout.
    async fn begin_long<'a>(
        &self,
        client: &'a mut deadpool_postgres::Object,
    ) -> Result<deadpool_postgres::Transaction<'a>, StoreError> {
        let tx = self.begin(client).await?;
        tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
            .await
            .map_err(db)?;
        Ok(tx)
    }

    /// Whether this store polls instead of listening.
    fn polling(&self) -> bool {
        self.polling.load(Ordering::SeqCst)
    }

    /// `Err(NewerSchema)` if a newer signet wrote this database: more
    /// migrations than this one knows, or records of a newer version.
    fn understands(&self, version: i32, records: i32) -> Result<(), StoreError> {
        let newer = |what, found: i32, understood: usize| StoreError::NewerSchema {
            location: self.location.clone(),
            what,
            found: found as u32,
            understood: understood as u32,
        };
        if version > MIGRATIONS.len() as i32 {
            return Err(newer("schema version", version, MIGRATIONS.len()));
        }
        if records > SCHEMA_VERSION as i32 {
            let understood = SCHEMA_VERSION as usize;
            return Err(newer("record version", records, understood));
        }
        Ok(())
    }

    /// Applies the migrations this database lacks, in one transaction under
    /// an advisory lock, and refuses a schema newer than this build's.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn(&self.pool).await?;
        self.migrate_on(&mut conn).await?;
        conn.done();
        Ok(())
    }

    async fn migrate_on(&self, client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
        // Migrations may be long, and wait for another instance's.
        let tx = self.begin_long(client).await?;
        // Transaction-level: no session lock outlives it (a pooler may
        // hand the session to another client).
        tx.query_typed(
            "SELECT pg_advisory_xact_lock($1)",
            &[(&MIGRATION_LOCK, Type::INT8)],
        )
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
            .query_typed_opt("SELECT version, record_version FROM signet_schema", &[])
            .await
            .map_err(db)?;
        let (version, records) = match row {
            Some(row) => (row.get::<_, i32>(0), row.get::<_, i32>(1)),
            None => (0, 0),
        };
        let known = MIGRATIONS.len() as i32;
        self.understands(version, records)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(sql).await.map_err(db)?;
            if *sql == FINGERPRINTS {
                self.fill_fingerprints(&tx).await?;
            }
            tracing::info!(version = i + 1, "applied a database schema migration");
        }
        tx.query_typed(
            "INSERT INTO signet_schema (version, record_version) VALUES ($1, $2)
             ON CONFLICT (one) DO UPDATE SET version = $1, record_version = $2",
            &[(&known, Type::INT4), (&(SCHEMA_VERSION as i32), Type::INT4)],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// Sets the fingerprint of every key that has none.
    async fn fill_fingerprints(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        let rows = tx
            .query_typed(
                "SELECT id, record FROM keys WHERE fingerprint IS NULL FOR UPDATE",
                &[],
            )
            .await
            .map_err(db)?;
        for record in self.records(rows)? {
            tx.query_typed(
                "UPDATE keys SET fingerprint = $2 WHERE id = $1",
                &[
                    (&record.id.to_bytes().as_slice(), Type::BYTEA),
                    (&record.fingerprint().as_slice(), Type::BYTEA),
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
            .query_typed_opt(
                "SELECT record FROM keys WHERE id = $1 AND org = $2",
                &[
                    (&id.to_bytes().as_slice(), Type::BYTEA),
                    (&org.as_str(), Type::TEXT),
                ],
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
        tx.query_typed(
            "UPDATE keys SET record = $2 WHERE id = $1",
            &[
                (&record.id.to_bytes().as_slice(), Type::BYTEA),
                (&seal_record(&self.sealer, record), Type::BYTEA),
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
        tx.query_typed(
            "INSERT INTO keys (id, org, record, fingerprint) VALUES ($1, $2, $3, $4)",
            &[
                (&record.id.to_bytes().as_slice(), Type::BYTEA),
                (&record.org.as_str(), Type::TEXT),
                (&value, Type::BYTEA),
                (&record.fingerprint().as_slice(), Type::BYTEA),
            ],
        )
        .await
        .map_err(db)?;
        tx.query_typed(
            "UPDATE orgs SET key_count = key_count + 1 WHERE org = $1",
            &[(&record.org.as_str(), Type::TEXT)],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Refuses a database whose records the seal key does not open (see
    /// `store::check_seal`); one without tables yet passes.
    async fn check_seal(&self) -> Result<(), StoreError> {
        on_conn!(self, &self.pool, |client| {
            let exists: bool = client
                .query_typed_one(
                    "SELECT to_regclass('keys') IS NOT NULL AND to_regclass('tombstones') IS NOT NULL",
                    &[],
                )
                .await
                .map_err(db)?
                .get(0);
            if !exists {
                return Ok(());
            }
            let limit = crate::store::SEAL_SAMPLE as i64;
            let rows = client
                .query_typed(
                    "(SELECT id, record FROM keys ORDER BY id LIMIT $1)
                     UNION ALL (SELECT id, record FROM tombstones ORDER BY id LIMIT $1)",
                    &[(&limit, Type::INT8)],
                )
                .await
                .map_err(db)?;
            let sample = rows
                .iter()
                .map(|row| Ok((key_id(row.get(0))?, row.get::<_, Vec<u8>>(1))))
                .collect::<Result<Vec<_>, StoreError>>()?;
            crate::store::check_seal(&self.sealer, &self.location, &sample)
        })
        .await
    }

    /// Refuses a database without signet's tables, or with newer ones.
    async fn check_existing(&self) -> Result<(), StoreError> {
        on_conn!(self, &self.pool, |client| {
            self.check_existing_on(client).await
        })
        .await
    }

    async fn check_existing_on(
        &self,
        client: &deadpool_postgres::Object,
    ) -> Result<(), StoreError> {
        let exists: bool = client
            .query_typed_one("SELECT to_regclass('signet_schema') IS NOT NULL", &[])
            .await
            .map_err(db)?
            .get(0);
        if !exists {
            return Err(StoreError::NoData(self.location.clone()));
        }
        let row = client
            .query_typed_one("SELECT version, record_version FROM signet_schema", &[])
            .await
            .map_err(db)?;
        let (version, records): (i32, i32) = (row.get(0), row.get(1));
        self.understands(version, records)?;
        if version < MIGRATIONS.len() as i32 {
            return Err(StoreError::Unavailable(format!(
                "the database at {} has an older schema; start `signet serve` once to migrate it",
                self.location
            )));
        }
        Ok(())
    }

    /// Adds this instance's usage counts (one row per key and minute) and
    /// last uses, in one transaction; with `prune`, also drops rows older
    /// than a day and those of deleted keys.
    pub async fn flush_usage(
        &self,
        deltas: &[UsageDelta],
        now_ms: u64,
        prune: bool,
    ) -> Result<(), StoreError> {
        let mut counts: std::collections::BTreeMap<(KeyId, u64), u64> = Default::default();
        let mut last: std::collections::BTreeMap<KeyId, u64> = Default::default();
        for d in deltas {
            *counts.entry((d.key_id, d.minute)).or_default() += d.count;
            let at = last.entry(d.key_id).or_default();
            *at = (*at).max(d.last_verified_ms);
        }
        let ids: Vec<Vec<u8>> = counts.keys().map(|(k, _)| k.to_bytes().to_vec()).collect();
        let minutes: Vec<i64> = counts.keys().map(|(_, m)| *m as i64).collect();
        let values: Vec<i64> = counts.values().map(|c| *c as i64).collect();
        let last_ids: Vec<Vec<u8>> = last.keys().map(|k| k.to_bytes().to_vec()).collect();
        let last_at: Vec<i64> = last.values().map(|at| *at as i64).collect();
        on_conn!(self, &self.pool, |client| {
            let tx = self.begin(client).await?;
            if !ids.is_empty() {
                tx.query_typed(
                    "INSERT INTO key_usage (key_id, minute, count)
                     SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[])
                     ON CONFLICT (key_id, minute) DO UPDATE SET count = key_usage.count + excluded.count",
                    &[
                        (&ids, Type::BYTEA_ARRAY),
                        (&minutes, Type::INT8_ARRAY),
                        (&values, Type::INT8_ARRAY),
                    ],
                )
                .await
                .map_err(db)?;
                tx.query_typed(
                    "INSERT INTO key_last_use (key_id, at_ms)
                     SELECT * FROM unnest($1::bytea[], $2::bigint[])
                     ON CONFLICT (key_id) DO UPDATE SET at_ms = greatest(key_last_use.at_ms, excluded.at_ms)",
                    &[(&last_ids, Type::BYTEA_ARRAY), (&last_at, Type::INT8_ARRAY)],
                )
                .await
                .map_err(db)?;
            }
            if prune {
                let cutoff = now_ms.saturating_sub(24 * 3_600_000) as i64;
                tx.query_typed(
                    "DELETE FROM key_usage WHERE minute < $1",
                    &[(&cutoff, Type::INT8)],
                )
                .await
                .map_err(db)?;
                tx.batch_execute(
                    "DELETE FROM key_usage u WHERE NOT EXISTS (SELECT 1 FROM keys k WHERE k.id = u.key_id);
                     DELETE FROM key_last_use u WHERE NOT EXISTS (SELECT 1 FROM keys k WHERE k.id = u.key_id);",
                )
                .await
                .map_err(db)?;
            }
            tx.commit().await.map_err(db)
        })
        .await
    }

    /// The usage every instance has flushed for `ids`, as of `now_ms`.
    pub async fn usage_of(
        &self,
        ids: &[KeyId],
        now_ms: u64,
    ) -> Result<std::collections::HashMap<KeyId, KeyUsage>, StoreError> {
        let raw: Vec<Vec<u8>> = ids.iter().map(|k| k.to_bytes().to_vec()).collect();
        let hour_ago = now_ms.saturating_sub(3_600_000) as i64;
        let day_ago = now_ms.saturating_sub(24 * 3_600_000) as i64;
        on_conn!(self, &self.pool, |client| {
            let rows = client
                .query_typed(
                    "SELECT key_id,
                            coalesce(sum(count) FILTER (WHERE minute > $2), 0)::bigint,
                            coalesce(sum(count) FILTER (WHERE minute > $3), 0)::bigint
                     FROM key_usage WHERE key_id = ANY($1) GROUP BY key_id",
                    &[
                        (&raw, Type::BYTEA_ARRAY),
                        (&hour_ago, Type::INT8),
                        (&day_ago, Type::INT8),
                    ],
                )
                .await
                .map_err(db)?;
            let mut out = std::collections::HashMap::new();
            for row in rows {
                let usage: &mut KeyUsage = out.entry(key_id(row.get(0))?).or_default();
                usage.last_hour = row.get::<_, i64>(1).max(0) as u64;
                usage.last_day = row.get::<_, i64>(2).max(0) as u64;
            }
            let rows = client
                .query_typed(
                    "SELECT key_id, at_ms FROM key_last_use WHERE key_id = ANY($1)",
                    &[(&raw, Type::BYTEA_ARRAY)],
                )
                .await
                .map_err(db)?;
            for row in rows {
                let usage: &mut KeyUsage = out.entry(key_id(row.get(0))?).or_default();
                usage.last_verified_ms = Some(row.get::<_, i64>(1).max(0) as u64);
            }
            Ok(out)
        })
        .await
    }

    /// Walks one organisation's audit chain: the number of events checked,
    /// or its first broken link.
    pub async fn verify_org_audit(
        &self,
        org: &OrgId,
    ) -> Result<Result<usize, BrokenLink>, StoreError> {
        on_conn!(self, &self.pool, |client| {
            let rows = client
                .query_typed(
                    "SELECT id, event FROM audit WHERE org = $1 ORDER BY id",
                    &[(&org.as_str(), Type::TEXT)],
                )
                .await
                .map_err(db)?;
            let mut chain = Vec::with_capacity(rows.len());
            for row in &rows {
                chain.push((key_id(row.get(0))?.to_string(), row.get::<_, &[u8]>(1)));
            }
            Ok(audit::check_chain(org.as_str(), chain))
        })
        .await
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
        tx.query_typed(
            "INSERT INTO orgs (org) VALUES ($1) ON CONFLICT DO NOTHING",
            &[(&org.as_str(), Type::TEXT)],
        )
        .await
        .map_err(db)?;
        let row = tx
            .query_typed_one(
                "SELECT key_count, audit_head, last_event FROM orgs WHERE org = $1 FOR UPDATE",
                &[(&org.as_str(), Type::TEXT)],
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
        tx.query_typed(
            "INSERT INTO audit (org, id, event) VALUES ($1, $2, $3)",
            &[
                (&org.as_str(), Type::TEXT),
                (&id_bytes.as_slice(), Type::BYTEA),
                (&stored, Type::BYTEA),
            ],
        )
        .await
        .map_err(db)?;
        tx.query_typed(
            "UPDATE orgs SET audit_head = $2, last_event = $3 WHERE org = $1",
            &[
                (&org.as_str(), Type::TEXT),
                (&audit::link(&stored).as_slice(), Type::BYTEA),
                (&id_bytes.as_slice(), Type::BYTEA),
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
        if let Some((_, Some(task))) = self.listener.lock().expect("listener lock poisoned").take()
        {
            task.abort();
        }
    }
}

/// How long a new listening session waits for a notification it sent
/// itself before concluding that notifications do not arrive.
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// Keeps one connection listening on the change channel, reconnecting
/// after 100 ms, then up to a second, when it is lost; marks `events`
/// changed on every notification, and on every (re)connect and every loss,
/// which also move `Heard`'s session and state. Each session first checks
/// that notifications reach it (one to itself, on one backend): behind a
/// transaction-pooling proxy they do not, and the store polls instead.
async fn listen(
    config: tokio_postgres::Config,
    events: tokio::sync::watch::Sender<Heard>,
    polling: Arc<AtomicBool>,
    acks: Arc<tokio::sync::watch::Sender<Acknowledged>>,
) {
    const FIRST_PAUSE: Duration = Duration::from_millis(100);
    let mut pause = FIRST_PAUSE;
    loop {
        if let Ok((client, connection)) = config.connect(NoTls).await {
            let (notes, mut heard) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(drive(connection, notes));
            match start_listening(&config, &client, &mut heard).await {
                Ok(true) => {
                    pause = FIRST_PAUSE;
                    events.send_modify(|heard| {
                        heard.session += 1;
                        heard.listening = true;
                    });
                    while let Some(note) = heard.recv().await {
                        if note.channel() == ACKS {
                            // "<instance> <applied>"; anything else only wakes.
                            let report = note.payload().split_once(' ');
                            let report = report.and_then(|(id, v)| Some((id, v.parse().ok()?)));
                            acks.send_modify(|heard| {
                                if let Some((instance, applied)) = report {
                                    heard.heard(instance, applied);
                                }
                            });
                        } else if !note.payload().starts_with(PROBE) {
                            events.send_modify(|_| {});
                        }
                    }
                }
                Ok(false) => {
                    tracing::warn!(
                        "notifications do not reach the listening connection (is the database behind a transaction-pooling proxy such as PgBouncer?); polling for key changes instead; set cluster.notify = \"poll\" to say so"
                    );
                    polling.store(true, Ordering::SeqCst);
                    events.send_modify(|heard| {
                        heard.session += 1;
                        heard.listening = true;
                        heard.polling = true;
                    });
                    return;
                }
                Err(_) => {}
            }
            events.send_modify(|heard| heard.listening = false);
            tracing::warn!("lost the connection listening for key changes; reconnecting");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// The payload of a session's notification to itself.
const PROBE: &str = "probe ";

/// `LISTEN`s on `client`, then checks that it has a backend of its own
/// and that a notification it sends itself arrives: `Ok(false)` if not.
///
/// Behind a transaction-pooling proxy a client's transactions may land on
/// any server connection, and notifications go to whichever one ran the
/// `LISTEN`. A proxy with little else to do can serve every statement of
/// the probe on one server connection, so between this client's
/// statements a second client asks for its backend: a proxy hands it the
/// one just freed (PgBouncer by default), or hands this client's next
/// statement another one (with `server_round_robin`). Without a proxy, two
/// clients never share a backend and one client never changes its own.
async fn start_listening(
    config: &tokio_postgres::Config,
    client: &tokio_postgres::Client,
    heard: &mut tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) -> Result<bool, tokio_postgres::Error> {
    let before = backend(client, "").await?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {ACKS}"))
        .await?;
    let (other, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    let theirs = backend(&other, "").await?;
    drop(other);
    let probe = format!("{PROBE}{}", ulid::Ulid::new());
    let after = backend(client, &format!("pg_notify('{CHANNEL}', '{probe}'), ")).await?;
    if before.is_none() || before != after || theirs == after {
        return Ok(false);
    }
    let arrived = tokio::time::timeout(PROBE_WAIT, async {
        while let Some(note) = heard.recv().await {
            if note.payload() == probe {
                return true;
            }
        }
        false
    })
    .await;
    match arrived {
        Ok(true) => Ok(true),
        Ok(false) => Err(client
            .batch_execute("")
            .await
            .err()
            .unwrap_or_else(|| unreachable!("the connection ended while its client stands"))),
        Err(_) => Ok(false),
    }
}

/// The process id of the backend that runs `SELECT {also}pg_backend_pid()`
/// on `client`.
async fn backend(
    client: &tokio_postgres::Client,
    also: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    let messages = client
        .simple_query(&format!("SELECT {also}pg_backend_pid() AS pid"))
        .await?;
    Ok(messages.into_iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get("pid").map(str::to_owned),
        _ => None,
    }))
}

/// Runs a listening connection, passing on its notifications, until it
/// ends.
async fn drive(
    mut connection: tokio_postgres::Connection<
        tokio_postgres::Socket,
        tokio_postgres::tls::NoTlsStream,
    >,
    notes: tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>,
) {
    while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
        if let tokio_postgres::AsyncMessage::Notification(note) = message {
            if notes.send(note).is_err() {
                return;
            }
        }
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
        on_conn!(self, &self.pool, |client| {
            let record = &insert.record;
            let tx = self.begin(client).await?;
            let org = self.lock_org(&tx, &record.org).await?;
            let same = tx
                .query_typed_opt(
                    "SELECT id FROM keys WHERE org = $1 AND fingerprint = $2",
                    &[
                        (&record.org.as_str(), Type::TEXT),
                        (&record.fingerprint().as_slice(), Type::BYTEA),
                    ],
                )
                .await
                .map_err(db)?;
            if let Some(same) = same {
                tx.rollback().await.map_err(db)?;
                return Ok(Inserted::Duplicate(key_id(same.get(0))?));
            }
            if org.count >= insert.quota {
                self.append_event(&tx, &record.org, &org, insert.refused.clone())
                    .await?;
                tx.commit().await.map_err(db)?;
                return Ok(Inserted::QuotaExceeded(org.count));
            }
            self.add_key(&tx, record).await?;
            self.append_event(&tx, &record.org, &org, insert.created.clone())
                .await?;
            let version = stamp(&tx, &[record.id]).await?;
            tx.commit().await.map_err(db)?;
            Ok(Inserted::Yes(version))
        })
        .await
    }

    async fn change_key(&self, change: KeyChange) -> Result<Changed, StoreError> {
        on_conn!(self, &self.pool, |client| {
            let tx = self.begin(client).await?;
            self.lock_org(&tx, &change.org).await?;
            let Some(record) = self.live_record(&tx, &change.org, change.id).await? else {
                tx.rollback().await.map_err(db)?;
                return Ok(Changed::NotFound);
            };
            let (next, events) = match change.apply(&record) {
                Ok(applied) => applied,
                Err(why) => {
                    tx.rollback().await.map_err(db)?;
                    return Ok(Changed::Conflict(why));
                }
            };
            if events.is_empty() {
                let version = tx
                    .query_typed_one(
                        "SELECT version FROM keys WHERE id = $1",
                        &[(&change.id.to_bytes().as_slice(), Type::BYTEA)],
                    )
                    .await
                    .map_err(db)?
                    .get::<_, i64>(0);
                tx.rollback().await.map_err(db)?;
                return Ok(Changed::Unchanged(record, version as u64));
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
        })
        .await
    }

    async fn rotate_key(&self, rotation: KeyRotation) -> Result<Rotation, StoreError> {
        on_conn!(self, &self.pool, |client| {
            let org = &rotation.org;
            let tx = self.begin(client).await?;
            let row = self.lock_org(&tx, org).await?;
            let Some(old) = self.live_record(&tx, org, rotation.old).await? else {
                tx.rollback().await.map_err(db)?;
                return Ok(Rotation::NotFound);
            };
            if row.count >= rotation.quota {
                self.append_event(&tx, org, &row, rotation.refused.clone())
                    .await?;
                tx.commit().await.map_err(db)?;
                return Ok(Rotation::QuotaExceeded(row.count));
            }
            let retired = rotation.retire(&old);
            self.update_record(&tx, &retired).await?;
            self.add_key(&tx, &rotation.successor).await?;
            self.append_event(&tx, org, &row, rotation.rotated.clone())
                .await?;
            // The successor and the old key's new expiry reach the other
            // instances as one change.
            let version = stamp(&tx, &[rotation.successor.id, rotation.old]).await?;
            tx.commit().await.map_err(db)?;
            Ok(Rotation::Yes(retired, version))
        })
        .await
    }

    async fn delete_key(&self, delete: Delete) -> Result<Deleted, StoreError> {
        on_conn!(self, &self.pool, |client| {
            let Delete { org, id, event } = &delete;
            let tx = self.begin(client).await?;
            let row = self.lock_org(&tx, org).await?;
            let removed = tx
                .query_typed_opt(
                    "DELETE FROM keys WHERE id = $1 AND org = $2 RETURNING record",
                    &[
                        (&id.to_bytes().as_slice(), Type::BYTEA),
                        (&org.as_str(), Type::TEXT),
                    ],
                )
                .await
                .map_err(db)?;
            let Some(removed) = removed else {
                // Deleted before? Its 404 waits for that deletion like a 204.
                let gone = tx
                    .query_typed_opt(
                        "SELECT version FROM tombstones WHERE id = $1 AND org = $2",
                        &[
                            (&id.to_bytes().as_slice(), Type::BYTEA),
                            (&org.as_str(), Type::TEXT),
                        ],
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
            tx.query_typed(
                "UPDATE orgs SET key_count = greatest(key_count - 1, 0) WHERE org = $1",
                &[(&org.as_str(), Type::TEXT)],
            )
            .await
            .map_err(db)?;
            self.append_event(&tx, org, &row, event.clone()).await?;
            // Last: the counter's row stays locked until commit.
            let version = tx
                .query_typed_one(
                    "WITH v AS (
                         UPDATE change_counter SET version = version + 1 RETURNING version
                     ), t AS (
                         INSERT INTO tombstones (id, org, record, version)
                         SELECT $1, $2, $3, version FROM v
                     )
                     SELECT version, pg_notify($4, version::text) FROM v",
                    &[
                        (&id.to_bytes().as_slice(), Type::BYTEA),
                        (&org.as_str(), Type::TEXT),
                        (&record, Type::BYTEA),
                        (&CHANNEL, Type::TEXT),
                    ],
                )
                .await
                .map_err(db)?
                .get::<_, i64>(0);
            tx.commit().await.map_err(db)?;
            Ok(Deleted::Now(version as u64))
        })
        .await
    }

    async fn record_event(&self, org: OrgId, event: NewEvent) -> Result<(), StoreError> {
        on_conn!(self, &self.pool, |client| {
            let tx = self.begin(client).await?;
            let row = self.lock_org(&tx, &org).await?;
            self.append_event(&tx, &org, &row, event.clone()).await?;
            tx.commit().await.map_err(db)
        })
        .await
    }

    async fn key_count(&self, org: OrgId) -> Result<u32, StoreError> {
        on_conn!(self, &self.pool, |client| {
            let row = client
                .query_typed_opt(
                    "SELECT key_count FROM orgs WHERE org = $1",
                    &[(&org.as_str(), Type::TEXT)],
                )
                .await
                .map_err(db)?;
            Ok(row.map_or(0, |r| r.get::<_, i32>(0).max(0) as u32))
        })
        .await
    }

    async fn get_key(&self, id: KeyId) -> Result<Option<PublicKeyRecord>, StoreError> {
        on_conn!(self, &self.pool, |client| {
            let row = client
                .query_typed_opt(
                    "SELECT record FROM keys WHERE id = $1",
                    &[(&id.to_bytes().as_slice(), Type::BYTEA)],
                )
                .await
                .map_err(db)?;
            Ok(row.and_then(|r| open_record(&self.sealer, id, r.get(0))))
        })
        .await
    }

    async fn list_org(&self, org: OrgId) -> Result<Vec<PublicKeyRecord>, StoreError> {
        on_conn!(self, &self.pool, |client| {
            let rows = client
                .query_typed(
                    "SELECT id, record FROM keys WHERE org = $1 ORDER BY id",
                    &[(&org.as_str(), Type::TEXT)],
                )
                .await
                .map_err(db)?;
            self.records(rows)
        })
        .await
    }

    async fn all_keys(&self) -> Result<Vec<PublicKeyRecord>, StoreError> {
        // Once, at start-up, and may be large: not bounded by the
        // statement timeout (the server's still applies).
        let mut conn = self.conn(&self.pool).await?;
        let tx = self.begin_long(&mut conn).await?;
        let rows = tx
            .query_typed("SELECT id, record FROM keys ORDER BY id", &[])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        conn.done();
        self.records(rows)
    }

    async fn audit_page(&self, page: AuditPage) -> Result<Vec<AuditEvent>, StoreError> {
        let AuditPage { org, limit, before } = page;
        on_conn!(self, &self.pool, |client| {
            // An id above every ULID: no bound.
            let before = before.map_or([0xff; 17].to_vec(), |id| id.to_bytes().to_vec());
            let rows = client
                .query_typed(
                    "SELECT event FROM audit WHERE org = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                    &[
                        (&org.as_str(), Type::TEXT),
                        (&before, Type::BYTEA),
                        (&(limit as i64), Type::INT8),
                    ],
                )
                .await
                .map_err(db)?;
            rows.iter()
                .map(|row| {
                    serde_json::from_slice(row.get(0)).map_err(|e| {
                        StoreError::Corrupt(format!("audit event does not parse: {e}"))
                    })
                })
                .collect()
        })
        .await
    }

    async fn verify_audit(&self) -> Result<Result<usize, BrokenLink>, StoreError> {
        // A whole-database check (the CLI): not bounded by the statement
        // timeout beyond each statement's.
        let mut conn = self.conn(&self.pool).await?;
        let tx = self.begin_long(&mut conn).await?;
        let orgs = tx
            .query_typed("SELECT org FROM orgs ORDER BY org", &[])
            .await
            .map_err(db)?;
        let mut total = 0;
        for org in orgs {
            let org: String = org.get(0);
            let rows = tx
                .query_typed(
                    "SELECT id, event FROM audit WHERE org = $1 ORDER BY id",
                    &[(&org, Type::TEXT)],
                )
                .await
                .map_err(db)?;
            let mut chain = Vec::with_capacity(rows.len());
            for row in &rows {
                chain.push((key_id(row.get(0))?.to_string(), row.get::<_, &[u8]>(1)));
            }
            match audit::check_chain(&org, chain) {
                Ok(n) => total += n,
                Err(broken) => {
                    tx.rollback().await.map_err(db)?;
                    conn.done();
                    return Ok(Err(broken));
                }
            }
        }
        tx.rollback().await.map_err(db)?;
        conn.done();
        Ok(Ok(total))
    }

    async fn reseal_all(&self) -> Result<usize, StoreError> {
        // Every record in one transaction (the CLI): not bounded by the
        // statement timeout beyond each statement's.
        let mut conn = self.conn(&self.pool).await?;
        let tx = self.begin_long(&mut conn).await?;
        let mut count = 0;
        for table in ["keys", "tombstones"] {
            let rows = tx
                .query_typed(&format!("SELECT id, record FROM {table} FOR UPDATE"), &[])
                .await
                .map_err(db)?;
            let update = format!("UPDATE {table} SET record = $2 WHERE id = $1");
            for row in rows {
                let raw: &[u8] = row.get(0);
                let value = reseal_value(&self.sealer, key_id(raw)?, row.get(1))?;
                tx.query_typed(&update, &[(&raw, Type::BYTEA), (&value, Type::BYTEA)])
                    .await
                    .map_err(db)?;
                count += 1;
            }
        }
        tx.commit().await.map_err(db)?;
        conn.done();
        Ok(count)
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // Every change committed before it was acknowledged.
        Ok(())
    }

    async fn is_usable(&self) -> bool {
        on_conn!(self, &self.pool, |client| {
            client.simple_query("SELECT 1").await.map_err(db)?;
            Ok(())
        })
        .await
        .is_ok()
    }
}

/// What a replica on another instance follows (see `crate::feed`).
impl crate::feed::ChangeFeed for PgStore {
    type Error = StoreError;

    async fn next(&self, applied: u64) -> Result<Changes, StoreError> {
        let rows = on_conn!(self, &self.follow, |client| {
            // One statement, one snapshot: every version up to the counter's
            // has committed. The counter's row comes first, then one row per
            // change (live keys with their record, deleted ones without).
            // The counter is a scalar subquery, not joined: the planner,
            // which takes the never-analysed one-row table for 2,200 rows,
            // would multiply the estimate of each join by that, and past
            // a few hundred keys its cost passes `jit_above_cost`, and each
            // re-read spends 10 to 45 ms compiling (docs/postgres.md).
            client
                .query_typed(
                    "WITH c AS (SELECT version FROM change_counter)
                     SELECT 0 AS kind, version, NULL::bytea, NULL::text, NULL::bytea FROM c
                     UNION ALL
                     SELECT 1, k.version, k.id, k.org, k.record FROM keys k
                      WHERE k.version > $1 AND k.version <= (SELECT version FROM c)
                     UNION ALL
                     SELECT 2, 0, t.id, t.org, NULL FROM tombstones t
                      WHERE t.version > $1 AND t.version <= (SELECT version FROM c)
                     ORDER BY kind",
                    &[(&(applied as i64), Type::INT8)],
                )
                .await
                .map_err(db)
        })
        .await?;
        let mut rows = rows.into_iter();
        let upto: i64 = rows
            .next()
            .ok_or_else(|| StoreError::Corrupt("change_counter has no row".into()))?
            .get(1);
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for row in rows {
            let id = key_id(row.get(2))?;
            match row.get::<_, Option<&[u8]>>(4) {
                Some(record) => {
                    let version = row.get::<_, i64>(1) as u64;
                    let record = open_record(&self.sealer, id, record);
                    live.extend(record.map(|r| (version, r)));
                }
                None => {
                    let org = OrgId::parse(row.get(3))
                        .map_err(|e| StoreError::Corrupt(format!("tombstone organisation: {e}")))?;
                    gone.push(Change::Deleted { org, kid: id });
                }
            }
        }
        live.sort_by_key(|(_, r)| r.id);
        // The keys of one change (a rotation's two) together, so that their
        // events in the feed are consecutive; then the deleted keys.
        let mut changes: Vec<Change> = Vec::with_capacity(live.len() + gone.len());
        for (version, record) in live {
            match changes.last_mut() {
                Some(Change::Keys {
                    version: v,
                    records,
                }) if *v == version => records.push(record),
                _ => changes.push(Change::Keys {
                    version,
                    records: vec![record],
                }),
            }
        }
        changes.extend(gone);
        Ok(Changes {
            upto: upto as u64,
            changes,
            start_over: false,
        })
    }

    /// Records the heartbeat; once it has committed, what the re-read
    /// before it showed is confirmed.
    async fn confirm(
        &self,
        me: &str,
        reported: u64,
        read: Confirmation,
        _round: Round,
    ) -> Result<Option<Confirmation>, StoreError> {
        self.heartbeat(me, reported).await?;
        Ok(Some(read))
    }

    fn announcements(&self) -> Option<tokio::sync::watch::Receiver<Heard>> {
        let mut listener = self.listener.lock().expect("listener lock poisoned");
        if let Some((events, _)) = &*listener {
            return Some(events.subscribe());
        }
        if self.settings.poll {
            // Nothing to listen to and no session to lose.
            let (events, receiver) = tokio::sync::watch::channel(Heard {
                session: 1,
                listening: true,
                polling: true,
            });
            *listener = Some((events, None));
            return Some(receiver);
        }
        let (events, receiver) = tokio::sync::watch::channel(Heard::default());
        let task = tokio::spawn(listen(
            self.pg_config.clone(),
            events.clone(),
            self.polling.clone(),
            self.acks.clone(),
        ));
        *listener = Some((events, Some(task.abort_handle())));
        Some(receiver)
    }
}

impl PgStore {
    /// Records that instance `instance` is alive and has applied every
    /// change through `applied`.
    async fn heartbeat(&self, instance: &str, applied: u64) -> Result<(), StoreError> {
        // Instances killed a day ago are forgotten on the way. While
        // listening, a heartbeat need not wait for the disk (it is visible
        // to other sessions at commit all the same; one lost in a crash of
        // PostgreSQL is replaced by the next, and the crash ends the
        // listening session, which fences this instance until it registers
        // again): without that wait a revocation's wait for the others'
        // heartbeats is not a disk flush per instance. While polling, no
        // session tells of a crash, so it waits.
        // While listening, each heartbeat is also announced (at commit),
        // so that a revocation's writer need not ask again and again.
        let polling = self.polling();
        let commit = if polling { "on" } else { "off" };
        let sql = if polling {
            "WITH quick AS (SELECT set_config('synchronous_commit', $3, true)),
             forgotten AS (
                 DELETE FROM instances WHERE heartbeat_at < now() - interval '1 day'
             )
             INSERT INTO instances (id, applied, heartbeat_at)
             SELECT $1, $2, now() FROM quick
             ON CONFLICT (id) DO UPDATE SET applied = $2, heartbeat_at = now()"
        } else {
            "WITH quick AS (SELECT set_config('synchronous_commit', $3, true)),
             forgotten AS (
                 DELETE FROM instances WHERE heartbeat_at < now() - interval '1 day'
             ),
             ack AS (SELECT pg_notify('signet_acks', $1 || ' ' || $2::text) AS sent)
             INSERT INTO instances (id, applied, heartbeat_at)
             SELECT $1, $2, now() FROM quick, ack
             ON CONFLICT (id) DO UPDATE SET applied = $2, heartbeat_at = now()"
        };
        on_conn!(self, &self.follow, |client| {
            client
                .query_typed(
                    sql,
                    &[
                        (&instance, Type::TEXT),
                        (&(applied as i64), Type::INT8),
                        (&commit, Type::TEXT),
                    ],
                )
                .await
                .map_err(db)?;
            Ok(())
        })
        .await
    }
}

/// What a revoking writer reads of every instance (see `crate::feed`).
impl crate::feed::Reports for PgStore {
    type Error = StoreError;

    async fn version(&self) -> Result<u64, StoreError> {
        on_conn!(self, &self.follow, |client| {
            let row = client
                .query_typed_one("SELECT version FROM change_counter", &[])
                .await
                .map_err(db)?;
            Ok(row.get::<_, i64>(0) as u64)
        })
        .await
    }

    async fn leave(&self, instance: &str) -> Result<(), StoreError> {
        on_conn!(self, &self.follow, |client| {
            client
                .query_typed(
                    "DELETE FROM instances WHERE id = $1",
                    &[(&instance, Type::TEXT)],
                )
                .await
                .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn lagging(
        &self,
        version: u64,
        me: &str,
        live: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let rows = on_conn!(self, &self.pool, |client| {
            client
                .query_typed(
                    "SELECT id FROM instances WHERE id <> $1 AND applied < $2
                       AND heartbeat_at > now() - make_interval(secs => $3)",
                    &[
                        (&me, Type::TEXT),
                        (&(version as i64), Type::INT8),
                        (&live.as_secs_f64(), Type::FLOAT8),
                    ],
                )
                .await
                .map_err(db)
        })
        .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    async fn instances(&self, live: Duration) -> Result<Vec<Instance>, StoreError> {
        let rows = on_conn!(self, &self.pool, |client| {
            client
                .query_typed(
                    "SELECT id, applied,
                            greatest(0, extract(epoch FROM now() - heartbeat_at) * 1000)::int8,
                            heartbeat_at > now() - make_interval(secs => $1)
                       FROM instances ORDER BY id",
                    &[(&live.as_secs_f64(), Type::FLOAT8)],
                )
                .await
                .map_err(db)
        })
        .await?;
        Ok(rows
            .iter()
            .map(|row| Instance {
                id: row.get(0),
                applied: row.get::<_, i64>(1) as u64,
                heard_ago: Duration::from_millis(row.get::<_, i64>(2) as u64),
                live: row.get(3),
            })
            .collect())
    }

    fn acknowledgements(&self) -> Option<tokio::sync::watch::Receiver<Acknowledged>> {
        (!self.polling()).then(|| self.acks.subscribe())
    }
}

/// A pool of `size` connections with `config`, every wait bounded by the
/// statement timeout; a connection idle for more than [`IDLE_CHECK`] is
/// checked (a round trip within half a second, or the statement timeout if
/// shorter) before use, and replaced if it fails.
fn new_pool(
    config: &tokio_postgres::Config,
    size: usize,
    settings: &Settings,
) -> Result<Pool, deadpool_postgres::BuildError> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let timeout = settings.statement_timeout;
    let check = timeout.min(Duration::from_millis(500));
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .pre_recycle(deadpool_postgres::Hook::async_fn(move |client, metrics| {
            let idle = metrics.last_used() > IDLE_CHECK;
            Box::pin(async move {
                if !idle {
                    return Ok(());
                }
                match tokio::time::timeout(check, client.simple_query("")).await {
                    Ok(Ok(_)) => Ok(()),
                    _ => Err(HookError::message("an idle connection did not answer")),
                }
            })
        }))
        .build()
}

/// Gives the keys `ids` the next change version and announces it: the
/// last step of a transaction that created or changed them (the counter's
/// row stays locked until commit, so versions commit in order).
async fn stamp(tx: &Transaction<'_>, ids: &[KeyId]) -> Result<u64, StoreError> {
    let ids: Vec<[u8; 16]> = ids.iter().map(|id| id.to_bytes()).collect();
    let ids: Vec<&[u8]> = ids.iter().map(|id| id.as_slice()).collect();
    let row = tx
        .query_typed_one(
            "WITH v AS (
                 UPDATE change_counter SET version = version + 1 RETURNING version
             ), k AS (
                 UPDATE keys SET version = v.version FROM v WHERE id = ANY($1)
             )
             SELECT version, pg_notify($2, version::text) FROM v",
            &[(&ids, Type::BYTEA_ARRAY), (&CHANNEL, Type::TEXT)],
        )
        .await
        .map_err(db)?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// A database error: the storage failing, as far as a caller can tell.
fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::Io(Box::new(DatabaseFailed(causes(&e).into())))
}

/// `e` and its causes, each once: tokio-postgres says only "db error" and
/// leaves what the server said to the source.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        next = cause.source();
    }
    out
}

/// The database out of reach or too slow to answer.
fn unreachable_db(message: String) -> StoreError {
    StoreError::Io(Box::new(DatabaseFailed(message.into())))
}

/// The database server failed or could not be reached: not the local
/// disk (see [`StoreError::is_database_server`]).
#[derive(Debug)]
pub struct DatabaseFailed(crate::store::BackendError);

impl std::fmt::Display for DatabaseFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DatabaseFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
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
