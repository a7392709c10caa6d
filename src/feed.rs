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

use std::collections::HashMap;
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

    /// The live instances other than `me` (a heartbeat within `live`, by
    /// the source's clock) that have not applied `version` yet.
    fn lagging(
        &self,
        version: u64,
        me: &str,
        live: Duration,
    ) -> impl Future<Output = Result<Vec<String>, Self::Error>> + Send;

    /// Every instance in the source's list, each with how long ago its
    /// last heartbeat was (by the source's clock) and whether that is
    /// within `live`.
    fn instances(
        &self,
        live: Duration,
    ) -> impl Future<Output = Result<Vec<Instance>, Self::Error>> + Send;

    /// Changes whenever another instance's heartbeat is heard (pushed
    /// acknowledgements), and holds what each reported, or `None` when none
    /// are pushed: polled instead.
    fn acknowledgements(&self) -> Option<watch::Receiver<Acknowledged>>;

    /// What the wake-up has heard (it changes on every announced change,
    /// every reconnect and every loss of the listening connection), or
    /// `None` if it cannot start.
    fn announcements(&self) -> Option<watch::Receiver<Heard>>;
}

/// What other instances' pushed heartbeats reported: for each, the
/// highest version it said it had applied (with its live followers).
/// Each report was committed after every version it covers, so "reached"
/// means what `lagging` would say of that instance once the report is
/// visible; liveness is not judged here (`lagging` does).
#[derive(Debug, Default)]
pub struct Acknowledged(HashMap<String, u64>);

impl Acknowledged {
    /// At most this many instances are remembered: ids are per process, so
    /// restarts add new ones; past it, the map starts over (a writer then
    /// asks `lagging` again, as it does on a quiet wait).
    const MAX: usize = 1024;

    /// Records a report of `instance` that it has applied `applied`.
    pub fn heard(&mut self, instance: &str, applied: u64) {
        if self.0.len() >= Self::MAX && !self.0.contains_key(instance) {
            self.0.clear();
        }
        let entry = self.0.entry(instance.to_owned()).or_default();
        *entry = (*entry).max(applied);
    }

    /// Whether `instance` has reported applying `version` or later.
    pub fn reached(&self, instance: &str, version: u64) -> bool {
        self.0
            .get(instance)
            .is_some_and(|&applied| applied >= version)
    }
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

#[cfg(test)]
mod tests {
    use super::Acknowledged;

    #[test]
    fn an_instance_has_reached_the_highest_version_it_reported() {
        let mut heard = Acknowledged::default();
        assert!(!heard.reached("b", 1), "nothing heard yet");
        heard.heard("b", 7);
        // A lower report later (a follower of b lagging) does not undo
        // that b once reported 7: a report of 7 is only possible after 7
        // committed, which is all a revoking writer waits for.
        heard.heard("b", 5);
        for (instance, version, reached) in [
            ("b", 6, true),
            ("b", 7, true),
            ("b", 8, false),
            ("c", 1, false),
        ] {
            assert_eq!(
                heard.reached(instance, version),
                reached,
                "{instance} {version}"
            );
        }
    }

    #[test]
    fn the_map_is_bounded_and_starts_over_when_full() {
        let mut heard = Acknowledged::default();
        for i in 0..Acknowledged::MAX {
            heard.heard(&i.to_string(), 3);
        }
        assert!(heard.reached("0", 3));
        heard.heard("one more", 3);
        assert!(
            !heard.reached("0", 3),
            "forgotten: the writer asks the store instead"
        );
        assert!(heard.reached("one more", 3));
    }
}
