//! What a replica follows, and what a revoking writer reads of the
//! replicas that follow a shared source.
//!
//! [`ChangeFeed`]: the changes after a version (keys as a change left
//! them, keys deleted, keys withdrawn, or a complete reset), a wake-up
//! when there may be more, and a confirmation: reporting how far the
//! replica has applied, and learning that every change through some
//! version was known to the source as of some moment. `replica` turns
//! that into "fresh as of", the same way for every source.
//!
//! Two sources implement it. The shared store (`store::postgres`:
//! `pg_notify` and `LISTEN` as the wake-up, versioned re-reads as the
//! truth, a heartbeat row as the report, which confirms what the re-read
//! before it showed); the SQL stays in that file, the only one that knows
//! PostgreSQL. And an upstream signet (`follower::UpstreamFeed`: events
//! pushed over its change feed, buffered until the replica asks, and an
//! acknowledgement whose answer is the confirmation).
//!
//! [`Reports`]: what only the shared store has, the heartbeat rows of
//! every instance: a revoking writer waits on them (`lagging`, woken by
//! `acknowledgements`), `instances` lists them for people
//! (`GET /v1/cluster`).

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::events::{Held, Reason};
use crate::keys::{KeyId, OrgId, PublicKeyRecord};

/// The source a replica follows.
pub trait ChangeFeed: Send + Sync + 'static {
    /// Why a read or a confirmation failed.
    type Error: std::fmt::Display + Send;

    /// The changes after version `applied`, in the order to apply them.
    fn next(&self, applied: u64) -> impl Future<Output = Result<Changes, Self::Error>> + Send;

    /// Reports that replica `me` is alive and has applied every change
    /// through `reported`, and returns what confirms it current, if
    /// anything does. `read` is what the replica's last [`next`] showed
    /// (every change through its `upto`, as of when it was sent): a
    /// source read on demand confirms exactly that once the report is
    /// recorded; a source that pushes its changes answers with its own.
    /// In a [`Round::CatchUp`], a source that itself follows another one
    /// catches up with it before answering.
    ///
    /// [`next`]: ChangeFeed::next
    fn confirm(
        &self,
        me: &str,
        reported: u64,
        read: Confirmation,
        round: Round,
    ) -> impl Future<Output = Result<Option<Confirmation>, Self::Error>> + Send;

    /// How long to wait before reading and confirming again after `error`,
    /// when the replica would otherwise wait `every`.
    fn retry_after(&self, error: &Self::Error, every: Duration) -> Duration {
        let _ = error;
        every
    }

    /// What the wake-up has heard (it changes on every announced change,
    /// every reconnect and every loss of the listening connection), or
    /// `None` if it cannot start.
    fn announcements(&self) -> Option<watch::Receiver<Heard>>;
}

/// Why a replica reads and confirms now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Its schedule: an announcement, a follower's report, the timer.
    Routine,
    /// A verification of a key id the replica does not know waits on it.
    CatchUp,
}

/// The reports of every replica of a shared source, which a revoking
/// writer waits on.
pub trait Reports: Send + Sync + 'static {
    /// Why a read failed.
    type Error: std::fmt::Display + Send;

    /// The version of the newest committed key change.
    fn version(&self) -> impl Future<Output = Result<u64, Self::Error>> + Send;

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

/// What a feed's wake-up has heard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heard {
    /// Counts the listening sessions: announcements made between two
    /// sessions may have been missed.
    pub session: u64,
    /// Whether the listening connection is up.
    pub listening: bool,
    /// Whether the source is polled instead (`cluster.notify = "poll"`,
    /// or notifications found not to arrive): no session to lose, so
    /// losing one fences nothing, and it is read more often.
    pub polling: bool,
}

/// "Every change through `through` was known to the source as of
/// `as_of`" (this process's monotonic clock): once a replica has applied
/// through `through`, it is fresh as of `as_of`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmation {
    pub through: u64,
    pub as_of: Instant,
}

/// The changes after a version, up to `upto`.
#[derive(Debug, Default)]
pub struct Changes {
    /// Every change up to this version is in here or was before.
    pub upto: u64,
    /// The changes, in the order to apply them.
    pub changes: Vec<Change>,
    /// The source started over (another run of an upstream, or a lost
    /// stream): confirmations obtained before must not count.
    pub start_over: bool,
}

/// One change to apply.
#[derive(Debug)]
pub enum Change {
    /// Keys as one change (committed at `version`) left them: published,
    /// or withheld (disabled, expired, retired by a rotation). A
    /// rotation's two keys come together.
    Keys {
        version: u64,
        records: Vec<PublicKeyRecord>,
    },
    /// A key deleted, for good.
    Deleted { org: OrgId, kid: KeyId },
    /// A published key withdrawn, as the source announced it.
    Withdrawn {
        org: OrgId,
        kid: KeyId,
        reason: Reason,
    },
    /// A key that does not verify changed, as the source announced it
    /// (a follower's upstream): deleted, or refused otherwise.
    Held(Held),
    /// Everything published and withheld as of `version`, replacing what
    /// is here (a key deleted here stays deleted); applied through
    /// `version` from then on, even if that is lower than before (another
    /// run).
    Reset {
        version: u64,
        records: Vec<PublicKeyRecord>,
        withheld: Vec<Held>,
    },
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
