//! The replica: this instance kept in step with the others through a
//! [`ChangeFeed`] (the shared database), built once with its feed, the
//! registry, the verifier, its freshness and the followers it serves.
//!
//! Every key change carries a version; the store commits versions in order.
//! The replica's task re-reads the changes after the version it has applied
//! (`ChangeFeed::changes_since`) whenever the feed announces one, after every
//! reconnect of its listener, and at least four times per
//! `cluster.max_staleness`, and applies them through the registry (which
//! drops a change older than one applied) and the verifier's cache, then
//! reports to the feed that it is alive and how far it has applied (a
//! heartbeat, by the database's clock): the lowest of its own applied
//! version and that of every live follower it serves. "Fresh as of"
//! is the moment the last re-read that was followed by a successful
//! heartbeat was *sent*; while it is older than `max_staleness`, the
//! instance refuses to verify (unless `stale_verification = "serve"`).
//!
//! Only a re-read sent after this instance's first heartbeat of the
//! current listening session had committed counts: a revocation whose
//! writer did not see this instance among the live ones committed before
//! that heartbeat, so such a re-read sees it. When the listening
//! connection drops, the instance stops vouching at once (`fence`), and a
//! new session starts with a new registration: heartbeats are committed
//! without waiting for the disk, so a crash of the database may lose the
//! latest, and an instance must not vouch on a registration the others
//! can no longer see.
//!
//! Notifications are only a wake-up. When the store is polled instead
//! (`cluster.notify = "poll"`, or notifications found not to arrive), the
//! follower re-reads every `max_staleness / 8`, there is no session to
//! lose, and heartbeats wait for the disk, so nothing fences on a lost
//! connection: freshness alone decides.
//!
//! A revocation (a delete, a disable, a rotation that retires the old key
//! at once) waits, after it has committed at version v, until every other
//! live instance (a heartbeat within `max_staleness`) has applied v, or
//! until `max_staleness` plus a margin has passed: by then an instance that
//! has not applied v has stopped vouching on its own, because its last
//! confirmation predates the commit (or it would have seen v), and one
//! that is not live has not confirmed within `max_staleness` either.
//! Every timing is measured on this instance's monotonic clock; liveness
//! is judged by the database's clock alone.
//!
//! On sled no other process writes, so there is no feed, no replica, and
//! verification is never refused for staleness.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::feed::{ChangeFeed, Heard};
use crate::followers::Followers;
use crate::freshness::{Freshness, Heartbeat};
use crate::metrics::ClusterMetrics;
use crate::registry::Registry;
use crate::verify::Verifier;

/// Whether a re-read should be followed by another at once.
#[derive(PartialEq, Eq)]
enum Step {
    Done,
    /// This instance has just registered in the current session: a re-read
    /// sent now can make it fresh.
    Again,
}

/// One replica: what it follows and what it updates.
pub(crate) struct Replica<F> {
    pub feed: Arc<F>,
    pub published: Arc<Registry>,
    pub verifier: Arc<Verifier>,
    pub keys: Gauge,
    pub metrics: ClusterMetrics,
    pub fresh: Arc<Freshness>,
    /// The followers this instance serves: its heartbeat reports the
    /// lowest of its own applied version and theirs.
    pub followers: Arc<Followers>,
}

impl<F: ChangeFeed> Replica<F> {
    /// Follows the store's announcements in a task that runs until
    /// aborted, and returns once this instance is current (or after
    /// `max_staleness`). `None` when the store has no other writers.
    pub async fn start(self) -> Option<tokio::task::AbortHandle> {
        let events = self.feed.announcements()?;
        let max_staleness = self.fresh.max_staleness();
        let fresh = self.fresh.clone();
        self.metrics
            .fresh_age_seconds
            .read_with(move || fresh.age().as_secs_f64());
        let fresh = self.fresh.clone();
        self.metrics
            .lag_seconds
            .read_with(move || fresh.lag().as_secs_f64());
        let fresh = self.fresh.clone();
        let fence = fence_when_deaf(fresh.clone(), events.clone());
        let task = tokio::spawn(async move {
            let replica = self;
            tokio::join!(
                replica.run(events, max_staleness),
                replica.observe(max_staleness / 4),
                fence
            )
        });
        // Serve once current; with the database away, no longer than
        // max_staleness (verification is then refused until it is back).
        let started = Instant::now();
        while !fresh.is_fresh() && started.elapsed() < max_staleness {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Some(task.abort_handle())
    }

    /// Re-reads on every announcement, and at least every
    /// `max_staleness / 4` (listening) or `/ 8` (polling).
    async fn run(&self, mut events: tokio::sync::watch::Receiver<Heard>, max_staleness: Duration) {
        loop {
            while self.catch_up(&events).await == Step::Again {}
            let every = match events.borrow().polling {
                true => max_staleness / 8,
                false => max_staleness / 4,
            };
            tokio::select! {
                changed = events.changed() => {
                    self.fresh.behind(Instant::now());
                    if changed.is_err() {
                        tokio::time::sleep(every).await;
                    }
                }
                // A follower acknowledged: the next heartbeat reports it.
                () = self.followers.moved() => {}
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Updates the count of live instances every `every`, apart from the
    /// re-reads so that a slow answer never delays one.
    async fn observe(&self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            // Every live instance but this one has applied less than this.
            let live = self.fresh.max_staleness() + MARGIN;
            if let Ok(others) = self
                .feed
                .lagging(i64::MAX as u64, self.fresh.instance(), live)
                .await
            {
                self.metrics.live_instances.set(others.len() as i64 + 1);
            }
        }
    }

    /// One re-read of the changes after `applied`, applied in order.
    async fn catch_up(&self, events: &tokio::sync::watch::Receiver<Heard>) -> Step {
        let heard = *events.borrow();
        let sent = Instant::now();
        let changes = match self.feed.changes_since(self.fresh.applied()).await {
            Ok(changes) => changes,
            Err(e) => {
                self.fresh.behind(sent);
                tracing::warn!(error = %e, "could not read key changes of other instances");
                return Step::Done;
            }
        };
        let behind = changes.upto.saturating_sub(self.fresh.applied());
        self.metrics.lag_versions.set(behind as i64);
        // Each key as its latest change left it: published or withheld
        // (disabled, expired, or retired by a rotation), unless a newer
        // change of it was applied here meanwhile.
        // The keys of one change (a rotation's two) together, so that their
        // events in the feed are consecutive.
        for group in changes.live.chunk_by(|a, b| a.0 == b.0) {
            let records: Vec<&crate::keys::PublicKeyRecord> =
                group.iter().map(|(_, r)| r).collect();
            let news = self
                .published
                .publish_all(&records, group[0].0, &self.verifier);
            for _ in news.into_iter().filter(|&new| new) {
                self.keys.inc();
            }
        }
        for (org, id) in &changes.gone {
            if self.published.remove(org, *id, &self.verifier) {
                self.keys.dec();
            }
        }
        let applied = self.fresh.applied_through(changes.upto);
        self.metrics.applied_version.set(applied as i64);
        self.fresh.caught_up(sent);
        // Fresh only once the store knows: an instance that is not live
        // must not be vouching.
        let reported = self.followers.applied_floor(applied);
        if let Err(e) = self.feed.heartbeat(self.fresh.instance(), reported).await {
            tracing::warn!(error = %e, "could not record this instance's heartbeat");
            return Step::Done;
        }
        // Only a re-read sent while listening, in a session in which this
        // instance was already registered, counts (see the module's
        // comment); checked and set under the lock that `fence` takes.
        let stands = || heard.listening && *events.borrow() == heard;
        match self.fresh.heartbeat(heard.session, sent, stands) {
            Heartbeat::Registered => Step::Again,
            Heartbeat::Lost | Heartbeat::Fresh => Step::Done,
        }
    }
}

/// Fences `fresh` whenever the listening connection is lost.
async fn fence_when_deaf(fresh: Arc<Freshness>, mut events: tokio::sync::watch::Receiver<Heard>) {
    while events.changed().await.is_ok() {
        let heard = *events.borrow_and_update();
        if !heard.listening && !heard.polling {
            fresh.fence();
            tracing::warn!("not vouching for revocations until listening again and caught up");
        }
    }
}

/// How much longer than `max_staleness` a delete waits for an instance
/// that has not applied it: covers monotonic clocks running at slightly
/// different rates.
pub(crate) const MARGIN: Duration = Duration::from_millis(100);

/// Waits until every other live instance has applied `version`, or until
/// `max_staleness` plus a margin has passed since `committed`, by when an
/// instance that has not applied it refuses to verify. Returns at once on
/// a store no other process writes. A process that does not follow (the
/// CLI on a shared database) waits all the same: its answer revokes too.
pub(crate) async fn applied_everywhere(
    feed: &impl ChangeFeed,
    fresh: &Freshness,
    version: u64,
    committed: Instant,
    waited: &Histogram,
) {
    let started = Instant::now();
    applied_or_fenced(feed, fresh, version, committed).await;
    waited.observe(started.elapsed().as_secs_f64());
}

async fn applied_or_fenced(
    feed: &impl ChangeFeed,
    fresh: &Freshness,
    version: u64,
    committed: Instant,
) {
    let max = fresh.max_staleness();
    // Heartbeats heard: each says how far its instance has applied, so the
    // instances found lagging are struck off as they report, and the store
    // is asked again only when none has reported for a while (a lost
    // notification, or an instance that stopped being live).
    let mut acks = feed.acknowledgements();
    loop {
        if let Some(acks) = acks.as_mut() {
            acks.borrow_and_update();
        }
        // Not live: no heartbeat within max_staleness plus the margin, so its
        // last confirmation is too old for it to vouch any more.
        let mut lagging = match feed.lagging(version, fresh.instance(), max + MARGIN).await {
            Ok(lagging) if lagging.is_empty() => return,
            Ok(lagging) => Some(lagging),
            // Unknown: ask again after the pause.
            Err(_) => None,
        };
        loop {
            if committed.elapsed() >= max + MARGIN {
                tracing::warn!(
                    version,
                    "a revocation answered after waiting the longest for instances that have not applied it"
                );
                return;
            }
            // Healthy instances apply a change within a millisecond or two:
            // look again soon; for one that is stalled, less often.
            let pause = if committed.elapsed() < Duration::from_millis(50) {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(10)
            };
            let Some(acks) = acks.as_mut() else {
                tokio::time::sleep(pause).await;
                break;
            };
            if tokio::time::timeout(pause * 5, acks.changed())
                .await
                .is_err()
            {
                break;
            }
            let Some(lagging) = lagging.as_mut() else {
                break;
            };
            let heard = acks.borrow_and_update();
            lagging.retain(|instance| !heard.reached(instance, version));
            if lagging.is_empty() {
                return;
            }
        }
    }
}

/// Store look-ups of key ids this instance does not know: a key created
/// through another instance a moment ago verifies at once. Bounded against
/// floods of made-up ids: ids found absent are remembered briefly, and at
/// most `LOOKUPS_PER_WINDOW` look-ups run per `LOOKUP_WINDOW`.
pub(crate) struct UnknownKeys {
    absent: moka::sync::Cache<crate::keys::KeyId, ()>,
    window: Mutex<(Instant, u32)>,
}

const LOOKUP_WINDOW: Duration = Duration::from_millis(100);
const LOOKUPS_PER_WINDOW: u32 = 20;

impl UnknownKeys {
    pub fn new() -> UnknownKeys {
        UnknownKeys {
            absent: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_millis(250))
                .build(),
            window: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Whether `id` may be looked up in the store now.
    pub fn may_look_up(&self, id: crate::keys::KeyId) -> bool {
        if self.absent.contains_key(&id) {
            return false;
        }
        let mut window = self.window.lock().expect("window lock poisoned");
        if window.0.elapsed() >= LOOKUP_WINDOW {
            *window = (Instant::now(), 0);
        }
        window.1 += 1;
        window.1 <= LOOKUPS_PER_WINDOW
    }

    /// `id` was looked up and is not in the store.
    pub fn absent(&self, id: crate::keys::KeyId) {
        self.absent.insert(id, ());
    }
}
