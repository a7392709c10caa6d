//! What a replica needs from the source it follows: the changes after a
//! version (each live key with the version of its latest change, and the
//! keys deleted), a wake-up when there may be more, and a way to report
//! how far it has applied (a heartbeat), which is also what confirms it
//! current. A revoking writer reads the same reports to wait for every
//! live replica (`lagging`, woken by `acknowledgements`); `instances`
//! lists those reports for people (`GET /v1/cluster`).
//!
//! Implemented by the shared store (`store::postgres`: `pg_notify` and
//! `LISTEN` as the wake-up, versioned re-reads as the truth, heartbeat
//! rows as the reports); the SQL stays in that file, the only one that
//! knows PostgreSQL. A follower's upstream signet is the other source a
//! process can follow; it pushes its changes instead (`follower`, and
//! ARCHITECTURE.md for what the two share).

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use crate::keys::{KeyId, OrgId, PublicKeyRecord};

/// The source a replica follows.
pub trait ChangeFeed: Send + Sync + 'static {
    /// Why a read or a report failed.
    type Error: std::fmt::Display + Send;

    /// The version of the newest committed key change.
    fn version(&self) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// The key changes committed after version `applied`, by any instance.
    fn changes_since(
        &self,
        applied: u64,
    ) -> impl Future<Output = Result<Changes, Self::Error>> + Send;

    /// Records that instance `instance` is alive and has applied every
    /// change through `applied`.
    fn heartbeat(
        &self,
        instance: &str,
        applied: u64,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Removes instance `instance` from the live ones (it is stopping), so
    /// that no revocation waits for it.
    fn leave(&self, instance: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// How many live instances other than `me` (a heartbeat within `live`,
    /// by the source's clock) have not applied `version` yet.
    fn lagging(
        &self,
        version: u64,
        me: &str,
        live: Duration,
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// Every instance in the source's list, each with how long ago its
    /// last heartbeat was (by the source's clock) and whether that is
    /// within `live`.
    fn instances(
        &self,
        live: Duration,
    ) -> impl Future<Output = Result<Vec<Instance>, Self::Error>> + Send;

    /// Changes whenever another instance's heartbeat is heard (pushed
    /// acknowledgements), or `None` when none are pushed: polled instead.
    fn acknowledgements(&self) -> Option<watch::Receiver<u64>>;

    /// What the wake-up has heard (it changes on every announced change,
    /// every reconnect and every loss of the listening connection), or
    /// `None` if it cannot start.
    fn announcements(&self) -> Option<watch::Receiver<Heard>>;
}

/// One instance as the source last heard of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    /// The version through which it (and its live followers) has applied
    /// every change.
    pub applied: u64,
    /// How long ago its last heartbeat was.
    pub heard_ago: Duration,
    /// Whether that heartbeat is recent enough for it to count as live.
    pub live: bool,
}

/// What a feed's listener for other instances' key changes has heard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heard {
    /// Counts the listening sessions: announcements made between two
    /// sessions may have been missed.
    pub session: u64,
    /// Whether the listening connection is up.
    pub listening: bool,
    /// Whether the store is polled instead (`cluster.notify = "poll"`, or
    /// notifications found not to arrive): no session to lose, so losing
    /// one fences nothing.
    pub polling: bool,
}

/// Key changes after a version, up to the newest committed one.
#[derive(Debug, Default)]
pub struct Changes {
    /// Every change up to this version is in here or was before.
    pub upto: u64,
    /// Keys created or changed since, each with the version of its latest
    /// change.
    pub live: Vec<(u64, PublicKeyRecord)>,
    /// Keys deleted since.
    pub gone: Vec<(OrgId, KeyId)>,
}
