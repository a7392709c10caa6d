//! Whether this process may vouch that it has seen every key change made
//! elsewhere: "fresh as of", given by whatever confirms it (the
//! replica's confirmations, from a heartbeat after a re-read or the
//! answer to a follower's acknowledgement), and
//! `max_staleness`, past which a process that follows others refuses to
//! verify (unless `stale_verification = "serve"`).
//!
//! Everything here is settled at construction: whether this process
//! follows others, and how stale it may be. A process that follows
//! nothing (sled, a command that runs once) always vouches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How stale an instance may be: `cluster.max_staleness_ms` and
/// `cluster.stale_verification`, given when the service is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staleness {
    pub max: Duration,
    /// Keep verifying from memory while stale.
    pub serve_stale: bool,
}

impl From<&crate::config::Cluster> for Staleness {
    fn from(cluster: &crate::config::Cluster) -> Staleness {
        Staleness {
            max: Duration::from_millis(cluster.max_staleness_ms),
            serve_stale: cluster.stale_verification == crate::config::StaleVerification::Serve,
        }
    }
}

impl Default for Staleness {
    fn default() -> Staleness {
        Staleness::from(&crate::config::Cluster::default())
    }
}

/// Whether this instance can vouch for revocations made elsewhere.
pub struct Freshness {
    /// What this process follows, if anything (set at construction).
    follows: Option<Source>,
    staleness: Staleness,
    /// The store version through which every change has been applied.
    applied: AtomicU64,
    confirmed: Mutex<Confirmed>,
    /// This instance's id in the store's list of instances.
    instance: String,
}

/// What a following process confirms its freshness with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An instance: the store's other instances, through the database.
    Database,
    /// A follower: its upstream's change feed.
    Upstream,
}

/// What this instance has confirmed with its source.
#[derive(Default, Clone, Copy)]
struct Confirmed {
    /// "Fresh as of": when the last confirmation that counts was sent.
    as_of: Option<Instant>,
    /// The latest "fresh as of" ever, or when following started: what
    /// `/metrics` counts its age from (a fence does not reset it).
    latest: Option<Instant>,
    /// Since when changes announced, or a re-read that failed, have not
    /// been applied.
    behind_since: Option<Instant>,
    /// The listening session in which a heartbeat of this instance was
    /// committed: only a re-read sent after that counts.
    registered: Option<u64>,
}

/// What a heartbeat committed after a re-read means for freshness.
#[derive(Debug, PartialEq, Eq)]
pub enum Heartbeat {
    /// The session changed or is lost: the re-read does not count.
    Lost,
    /// This instance has just registered in the session: a re-read sent
    /// now can make it fresh.
    Registered,
    /// Fresh as of when the re-read was sent.
    Fresh,
}

impl Freshness {
    /// `applied`: the version every change up to which is applied already;
    /// `follows`: what this process follows, if anything (it then vouches
    /// only while a confirmation within `max_staleness` stands).
    pub fn new(applied: u64, staleness: Staleness, follows: Option<Source>) -> Freshness {
        let following = follows.is_some();
        Freshness {
            follows,
            staleness,
            applied: AtomicU64::new(applied),
            confirmed: Mutex::new(Confirmed {
                latest: following.then(Instant::now),
                ..Confirmed::default()
            }),
            instance: ulid::Ulid::new().to_string(),
        }
    }

    /// How stale this process may be.
    pub fn max_staleness(&self) -> Duration {
        self.staleness.max
    }

    /// `Err(why)` while this instance follows others, has not confirmed
    /// within `max_staleness` that it has seen every change, and must not
    /// serve stale verdicts.
    pub fn vouch(&self) -> Result<(), String> {
        let Some(source) = self.follows.filter(|_| !self.staleness.serve_stale) else {
            return Ok(());
        };
        let max = self.max_staleness();
        let (this, what) = match source {
            Source::Database => ("instance", "the database"),
            Source::Upstream => ("follower", "its upstream"),
        };
        match self.confirmed().as_of {
            Some(at) if at.elapsed() <= max => Ok(()),
            _ => Err(format!(
                "this {this} cannot vouch that it has seen every key change: it has not confirmed so within {} ms, or has stopped listening for changes since (is {what} reachable?)",
                max.as_millis()
            )),
        }
    }

    /// The version through which every change has been applied.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// Every change through `upto` is applied; the version through which
    /// every change is applied now (never lower than before).
    pub fn applied_through(&self, upto: u64) -> u64 {
        self.applied.fetch_max(upto, Ordering::SeqCst).max(upto)
    }

    /// The source started over (another run of an upstream, whose
    /// versions count afresh): every change through `upto` is applied,
    /// even if that is lower than before.
    pub fn applied_from(&self, upto: u64) {
        self.applied.store(upto, Ordering::SeqCst);
    }

    /// Whether a confirmation within `max_staleness` stands, whatever
    /// `stale_verification` says.
    pub fn is_fresh(&self) -> bool {
        let max = self.max_staleness();
        self.confirmed().as_of.is_some_and(|at| at.elapsed() <= max)
    }

    /// Stops vouching until a new confirmation: the listening connection
    /// was lost (the database may have crashed and lost this instance's
    /// last heartbeats), or this instance left the list of instances.
    pub fn fence(&self) {
        let mut confirmed = self.lock();
        *confirmed = Confirmed {
            latest: confirmed.latest,
            behind_since: confirmed.behind_since,
            ..Confirmed::default()
        };
    }

    /// How long ago this instance last confirmed it was current (or
    /// started following, if it never did): grows without bound while it
    /// cannot confirm.
    pub fn age(&self) -> Duration {
        self.confirmed()
            .latest
            .map_or(Duration::ZERO, |at| at.elapsed())
    }

    /// How long changes known to exist (announced, or not read because a
    /// re-read failed) have waited to be applied here; zero when current.
    pub fn lag(&self) -> Duration {
        self.confirmed()
            .behind_since
            .map_or(Duration::ZERO, |at| at.elapsed())
    }

    /// Changes are known to be waiting since `at` (unless since earlier).
    pub fn behind(&self, at: Instant) {
        self.lock().behind_since.get_or_insert(at);
    }

    /// Every change up to a re-read sent at `sent` is applied.
    pub fn caught_up(&self, sent: Instant) {
        let mut confirmed = self.lock();
        if confirmed.behind_since.is_some_and(|at| at <= sent) {
            confirmed.behind_since = None;
        }
    }

    /// A heartbeat committed after a re-read sent at `sent` in listening
    /// session `session`. `stands` says, under the lock that [`fence`]
    /// takes, whether that session still stands: only a re-read sent in a
    /// session in which this instance was already registered counts.
    ///
    /// [`fence`]: Freshness::fence
    pub fn heartbeat(
        &self,
        session: u64,
        sent: Instant,
        stands: impl FnOnce() -> bool,
    ) -> Heartbeat {
        let mut confirmed = self.lock();
        if !stands() {
            return Heartbeat::Lost;
        }
        if confirmed.registered != Some(session) {
            confirmed.registered = Some(session);
            return Heartbeat::Registered;
        }
        if confirmed.as_of.is_none_or(|at| at < sent) {
            confirmed.as_of = Some(sent);
            confirmed.latest = Some(sent);
        }
        Heartbeat::Fresh
    }

    /// This instance's id among the store's instances.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Fresh as of `as_of` (never earlier than it was already).
    pub fn confirm(&self, as_of: Instant) {
        let mut confirmed = self.lock();
        if confirmed.as_of.is_none_or(|at| at < as_of) {
            confirmed.as_of = Some(as_of);
            confirmed.latest = Some(as_of);
        }
    }

    /// How long ago this instance was last fresh: zero when it follows
    /// nothing, `None` before its first confirmation.
    pub fn stale_for(&self) -> Option<Duration> {
        if self.follows.is_none() {
            return Some(Duration::ZERO);
        }
        self.confirmed().as_of.map(|at| at.elapsed())
    }

    /// Whether this process follows others.
    pub fn following(&self) -> bool {
        self.follows.is_some()
    }

    fn confirmed(&self) -> Confirmed {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Confirmed> {
        self.confirmed.lock().expect("freshness lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_re_read_in_a_registered_session_makes_fresh() {
        let staleness = Staleness {
            max: Duration::from_secs(60),
            serve_stale: false,
        };
        assert!(Freshness::new(0, staleness, None).vouch().is_ok());
        let fresh = Freshness::new(0, staleness, Some(Source::Database));
        assert!(fresh.vouch().is_err(), "never confirmed");
        // (session, whether it still stands, expected, vouches after)
        let steps = [
            (1, true, Heartbeat::Registered, false),
            (1, false, Heartbeat::Lost, false),
            (1, true, Heartbeat::Fresh, true),
            (2, true, Heartbeat::Registered, true),
            (2, true, Heartbeat::Fresh, true),
        ];
        for (i, (session, stands, expected, vouches)) in steps.into_iter().enumerate() {
            let got = fresh.heartbeat(session, Instant::now(), || stands);
            assert_eq!(got, expected, "step {i}");
            assert_eq!(fresh.vouch().is_ok(), vouches, "step {i}");
        }
        fresh.fence();
        assert!(fresh.vouch().is_err(), "fenced");
        assert_eq!(fresh.applied_through(7), 7);
        assert_eq!(fresh.applied_through(5), 7, "never lower");
    }
}
