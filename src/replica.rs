//! The replica: this process kept in step with the source it follows
//! through a [`ChangeFeed`] (the shared database, or an upstream signet
//! for a follower), built once with its feed, the registry, the verifier,
//! its freshness and the followers it serves. The rule that makes a
//! revocation safe is written here once, for both sources.
//!
//! Every change carries a version, and a source's versions are in order.
//! The replica's task asks the feed for the changes after the version it
//! has applied (`ChangeFeed::next`) whenever the feed announces some, after
//! every reconnect of its listener, and at least four times per
//! `cluster.max_staleness`, applies them through the registry (which drops
//! a change older than one applied) and the verifier's cache, then reports
//! to the feed that it is alive and how far it has applied: the lowest of
//! its own applied version and that of every live follower it serves.
//! What the feed answers is a confirmation: "every change through
//! `through` was known as of `as_of`". Once every change through
//! `through` is applied here, the replica is fresh as of `as_of`; while
//! that is older than `max_staleness`, it refuses to verify (unless
//! `stale_verification = "serve"`).
//!
//! The shared store confirms a re-read once the heartbeat after it has
//! committed: fresh as of when the re-read was *sent*. Only a re-read sent
//! after this instance's first heartbeat of the current listening session
//! had committed counts: a revocation whose writer did not see this
//! instance among the live ones committed before that heartbeat, so such a
//! re-read sees it. When the listening connection drops, the instance stops
//! vouching at once (`fence`), and a new session starts with a new
//! registration: heartbeats are committed without waiting for the disk, so
//! a crash of the database may lose the latest, and an instance must not
//! vouch on a registration the others can no longer see. When the store is
//! polled instead (`cluster.notify = "poll"`, or notifications found not
//! to arrive), the replica re-reads every `max_staleness / 8`, there is no
//! session to lose, and heartbeats wait for the disk, so nothing fences on
//! a lost connection: freshness alone decides.
//!
//! An upstream signet pushes its changes (`follower::UpstreamFeed`); its
//! confirmation is the answer to an acknowledgement sent at `t_send`: its
//! latest event id, as of `t_send` minus its own staleness. The answer may
//! name events not applied here yet: it is held until they are, and
//! dropped if the stream starts over. Changes buffered while this process
//! was stopped never refresh it: only an answer to an acknowledgement sent
//! afterwards does. Like polling, no session fences it.
//!
//! A verification of a key id a follower does not know can ask for a round
//! now ([`CatchUps::caught_up`]) and wait until one that started after it
//! asked is confirmed with every change through its confirmation applied:
//! a key created upstream a moment ago then verifies here at once, for one
//! round shared by every verification waiting meanwhile.
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
use tokio::sync::{watch, Notify};

use crate::feed::{Change, ChangeFeed, Confirmation, Heard, Reports, Round};
use crate::followers::Followers;
use crate::freshness::{Freshness, Heartbeat};
use crate::logging::Outage;
use crate::metrics::ClusterMetrics;
use crate::registry::Registry;
use crate::verify::Verifier;

/// How a round of reading and confirming ended.
enum Step {
    Done,
    /// This instance has just registered in the current session: a re-read
    /// sent now can make it fresh.
    Again,
    /// The feed failed: try again after `after`.
    Failed(Failure),
}

/// Why a round failed, and when to try again.
struct Failure {
    after: Duration,
    what: &'static str,
    error: String,
}

/// The most confirmations held for changes not applied yet; beyond it,
/// the oldest is dropped (a newer one supersedes it).
const MAX_PENDING: usize = 64;

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
    /// Rounds asked for by verifications of unknown key ids.
    pub catch_ups: Arc<CatchUps>,
}

impl<F: ChangeFeed> Replica<F> {
    /// Follows the feed's announcements in a task that runs until
    /// aborted, and returns once this process is current (or after
    /// `max_staleness`). `None` when the feed cannot start.
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
        let heard = events.clone();
        self.metrics
            .polling
            .read_with(move || f64::from(u8::from(heard.borrow().polling)));
        let fresh = self.fresh.clone();
        let fence = fence_when_deaf(fresh.clone(), events.clone());
        let task = tokio::spawn(async move {
            let replica = self;
            tokio::join!(replica.run(events, max_staleness), fence)
        });
        // Serve once current; with the source away, no longer than
        // max_staleness (verification is then refused until it is back).
        let started = Instant::now();
        while !fresh.is_fresh() && started.elapsed() < max_staleness {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Some(task.abort_handle())
    }

    /// Reads and confirms on every announcement, and at least every
    /// `max_staleness / 4` (listening) or `/ 8` (polling).
    async fn run(&self, mut events: tokio::sync::watch::Receiver<Heard>, max_staleness: Duration) {
        let mut pending = Vec::new();
        let every = |events: &tokio::sync::watch::Receiver<Heard>| match events.borrow().polling {
            true => max_staleness / 8,
            false => max_staleness / 4,
        };
        let mut round = Round::Routine;
        let mut outage = Outage::default();
        let back = "reached the source this process follows again";
        loop {
            let every = loop {
                match self
                    .catch_up(&events, &mut pending, every(&events), round)
                    .await
                {
                    Step::Again => {
                        outage.ended(back, Instant::now());
                    }
                    Step::Done => {
                        outage.ended(back, Instant::now());
                        break every(&events);
                    }
                    Step::Failed(failure) => {
                        outage.failed(failure.what, &failure.error, Instant::now());
                        break failure.after;
                    }
                }
            };
            round = Round::Routine;
            tokio::select! {
                changed = events.changed() => {
                    self.fresh.behind(Instant::now());
                    if changed.is_err() {
                        tokio::time::sleep(every).await;
                    }
                }
                // A follower acknowledged: the next heartbeat reports it.
                () = self.followers.moved() => {}
                () = self.catch_ups.wanted() => round = Round::CatchUp,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One read of the changes after `applied`, applied in order, then
    /// one confirmation.
    async fn catch_up(
        &self,
        events: &tokio::sync::watch::Receiver<Heard>,
        pending: &mut Vec<(Confirmation, Instant)>,
        every: Duration,
        round: Round,
    ) -> Step {
        let heard = *events.borrow();
        let sent = Instant::now();
        let changes = match self.feed.next(self.fresh.applied()).await {
            Ok(changes) => changes,
            Err(e) => {
                self.fresh.behind(sent);
                return Step::Failed(Failure {
                    after: self.feed.retry_after(&e, every),
                    what: "could not read the key changes of the source this process follows",
                    error: e.to_string(),
                });
            }
        };
        if changes.start_over {
            pending.clear();
        }
        let behind = changes.upto.saturating_sub(self.fresh.applied());
        self.metrics.lag_versions.set(behind as i64);
        for change in changes.changes {
            self.apply(change);
        }
        let applied = self.fresh.applied_through(changes.upto);
        self.metrics.applied_version.set(applied as i64);
        self.fresh.caught_up(sent);
        // Fresh only once the source knows: a replica that is not live
        // must not be vouching.
        let reported = self.followers.applied_floor(applied);
        let read = Confirmation {
            through: changes.upto,
            as_of: sent,
        };
        let confirmed = match self
            .feed
            .confirm(self.fresh.instance(), reported, read, round)
            .await
        {
            Ok(confirmed) => confirmed,
            Err(e) => {
                return Step::Failed(Failure {
                    after: self.feed.retry_after(&e, every),
                    what: "could not report to the source this process follows",
                    error: e.to_string(),
                });
            }
        };
        pending.extend(confirmed.map(|c| (c, sent)));
        if pending.len() > MAX_PENDING {
            pending.remove(0);
        }
        // The latest confirmation of changes all applied here.
        let applied = self.fresh.applied();
        let (mut as_of, mut started) = (None, None);
        pending.retain(|(c, round)| {
            let done = c.through <= applied;
            if done {
                as_of = as_of.max(Some(c.as_of));
                started = started.max(Some(*round));
            }
            !done
        });
        let (Some(as_of), Some(started)) = (as_of, started) else {
            return Step::Done;
        };
        // Only a confirmation obtained while listening, in a session in
        // which this instance was already registered, counts (see the
        // module's comment); checked and set under the lock that `fence`
        // takes.
        let stands = || heard.listening && *events.borrow() == heard;
        match self.fresh.heartbeat(heard.session, as_of, stands) {
            Heartbeat::Registered => Step::Again,
            Heartbeat::Lost => Step::Done,
            Heartbeat::Fresh => {
                self.catch_ups.confirmed(started);
                Step::Done
            }
        }
    }

    /// Applies one change through the registry and the verifier's cache.
    fn apply(&self, change: Change) {
        match change {
            // Each key as its latest change left it: published or withheld
            // (disabled, expired, or retired by a rotation), unless a newer
            // change of it was applied here meanwhile. The keys of one
            // change together, so that their events are consecutive.
            Change::Keys { version, records } => {
                let records: Vec<&crate::keys::PublicKeyRecord> = records.iter().collect();
                let news = self
                    .published
                    .publish_all(&records, version, &self.verifier);
                for _ in news.into_iter().filter(|&new| new) {
                    self.keys.inc();
                }
            }
            Change::Deleted { org, kid } => {
                if self.published.remove(&org, kid, &self.verifier) {
                    self.keys.dec();
                }
            }
            // Forgotten by the verifier before this returns, so before it
            // is confirmed.
            Change::Withdrawn { org, kid, reason } => {
                if self.published.withdraw(&org, kid, reason, &self.verifier) {
                    self.keys.dec();
                }
            }
            Change::Held(held) => {
                if self.published.held(&held, &self.verifier) {
                    self.keys.dec();
                }
            }
            Change::Reset {
                version,
                records,
                withheld,
            } => {
                self.published.replace(&records, &withheld, &self.verifier);
                self.fresh.applied_from(version);
            }
        }
    }
}

/// Updates the count of live instances every `max_staleness / 4`, apart
/// from the re-reads so that a slow answer never delays one.
pub(crate) async fn count_instances(feed: Arc<impl Reports>, fresh: Arc<Freshness>, live: Gauge) {
    let every = fresh.max_staleness() / 4;
    loop {
        tokio::time::sleep(every).await;
        // Every live instance but this one has applied less than this.
        let within = fresh.max_staleness() + MARGIN;
        if let Ok(others) = feed
            .lagging(i64::MAX as u64, fresh.instance(), within)
            .await
        {
            live.set(others.len() as i64 + 1);
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
    feed: &impl Reports,
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
    feed: &impl Reports,
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

/// The least time between two rounds asked for by catch-ups: a flood of
/// unknown key ids costs the source at most one confirmation per this.
const CATCH_UP_SPACING: Duration = Duration::from_millis(20);

/// Rounds of reading and confirming asked for now, by verifications of
/// key ids this process does not know, and the wait for their answer.
pub(crate) struct CatchUps {
    /// When the latest round whose confirmation counted, with every change
    /// through it applied, started: a catch-up waits for one that started
    /// after it asked.
    synced: watch::Sender<Option<Instant>>,
    /// Asks the replica for a round now.
    wanted: Notify,
    /// When the replica last answered a catch-up's request.
    wanted_at: Mutex<Option<Instant>>,
}

impl CatchUps {
    pub fn new() -> CatchUps {
        CatchUps {
            synced: watch::channel(None).0,
            wanted: Notify::new(),
            wanted_at: Mutex::new(None),
        }
    }

    /// Waits until the replica has applied every change its source had
    /// when this was called, at most `limit` and only while `fresh` may
    /// vouch: asks for a round now (one, for every caller waiting
    /// meanwhile) and waits until one that started after this call is
    /// confirmed and its changes are applied. Whether they are.
    pub async fn caught_up(&self, fresh: &Freshness, limit: Duration) -> bool {
        let asked = Instant::now();
        let mut synced = self.synced.subscribe();
        self.wanted.notify_one();
        let deadline = asked + limit;
        loop {
            if synced.borrow_and_update().is_some_and(|at| at >= asked) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || fresh.vouch().is_err() {
                return false;
            }
            // Looks at the fence again at least this often.
            let wait = (deadline - now).min(Duration::from_millis(20));
            let _ = tokio::time::timeout(wait, synced.changed()).await;
        }
    }

    /// Resolves when a catch-up asks for a round (at once if one asked
    /// since the last time), and no sooner than [`CATCH_UP_SPACING`] after
    /// it last did.
    async fn wanted(&self) {
        self.wanted.notified().await;
        let last = *self.lock();
        if let Some(at) = last {
            tokio::time::sleep_until((at + CATCH_UP_SPACING).into()).await;
        }
        *self.lock() = Some(Instant::now());
    }

    /// A round that started at `started` is confirmed, with every change
    /// through its confirmation applied.
    fn confirmed(&self, started: Instant) {
        self.synced.send_if_modified(|synced| {
            let newer = synced.is_none_or(|at| at < started);
            if newer {
                *synced = Some(started);
            }
            newer
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.wanted_at.lock().expect("catch-up lock poisoned")
    }
}
