//! The followers an instance serves: who holds a follower token, how far
//! each has applied this instance's feed, and the wait of a revoking
//! change for every live follower's acknowledgement.
//!
//! A follower is live while it was heard within `max_staleness`. A revoking
//! change numbered `e` answers once every live follower has acknowledged
//! an event id of at least `e`, or once `max_staleness` plus [`MARGIN`] has
//! passed since it was numbered: by then a follower that has not applied
//! it has stopped verifying on its own, since its freshness rests on a
//! round trip sent before the change (see `follower`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

use crate::config::Config;
use crate::events::Feed;

/// Which followers an instance accepts, and how stale they may be: given
/// when the service is built.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// SHA-256 of each accepted follower token.
    pub tokens: Vec<[u8; 32]>,
    pub max_staleness: Duration,
    /// Most streams of the change feed at once, followers included.
    pub max_subscribers: usize,
}

impl Settings {
    /// The settings `config` names: `followers.token_sha256`,
    /// `SIGNET_FOLLOWER_TOKEN`, `cluster.max_staleness_ms` and
    /// `events.max_subscribers`.
    pub fn of(config: &Config) -> Settings {
        let mut tokens: Vec<[u8; 32]> = config
            .followers
            .token_sha256
            .iter()
            .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
            .collect();
        if let Some(token) = &config.followers.token {
            tokens.push(Sha256::digest(token.expose().as_bytes()).into());
        }
        Settings {
            tokens,
            max_staleness: Duration::from_millis(config.cluster.max_staleness_ms),
            max_subscribers: config.events.max_subscribers,
        }
    }
}

/// How much longer than `max_staleness` a revocation waits for a follower
/// that has not acknowledged it: covers clocks running at slightly
/// different rates and a verification under way when the follower fenced.
pub const MARGIN: Duration = Duration::from_millis(250);

/// The most followers remembered; beyond it, the longest silent is
/// forgotten (it is not live anyway).
const MAX_FOLLOWERS: usize = 100_000;

struct Follower {
    /// The last event id it acknowledged applying.
    acked: u64,
    heard: Instant,
}

/// One registered follower as this instance last heard of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The id it chose at start (a ULID).
    pub id: String,
    /// The last event id of this instance's feed it acknowledged applying.
    pub acked: u64,
    /// How long ago it was last heard.
    pub ago: Duration,
    /// Whether that was within `max_staleness`.
    pub live: bool,
}

/// The registered followers.
pub struct Followers {
    /// SHA-256 of each accepted follower token.
    tokens: Vec<[u8; 32]>,
    max_staleness: Duration,
    list: Mutex<HashMap<String, Follower>>,
    /// Woken on every acknowledgement.
    acked: Notify,
    /// Holds a wake-up after an acknowledgement for the heartbeat, which
    /// then reports it.
    moved: Notify,
    feed: Arc<Feed>,
    /// Delays between a follower's acknowledgements... observed as the
    /// time from a revoking change to each live follower's acknowledgement.
    ack_seconds: Histogram,
}

impl Followers {
    pub fn new(settings: Settings, feed: Arc<Feed>, ack_seconds: Histogram) -> Followers {
        Followers {
            tokens: settings.tokens,
            max_staleness: settings.max_staleness,
            list: Mutex::new(HashMap::new()),
            acked: Notify::new(),
            moved: Notify::new(),
            feed,
            ack_seconds,
        }
    }

    /// Whether any follower token is configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Whether `token` is a follower token, compared in constant time.
    pub fn accepts(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut ok = subtle::Choice::from(0);
        for t in &self.tokens {
            ok |= t.ct_eq(&digest);
        }
        ok.into()
    }

    /// Records that follower `id` has applied every event up to `applied`.
    pub fn ack(&self, id: &str, applied: u64) {
        let now = Instant::now();
        let mut list = self.lock();
        if list.len() >= MAX_FOLLOWERS && !list.contains_key(id) {
            let oldest = list
                .iter()
                .min_by_key(|(_, f)| f.heard)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                list.remove(&oldest);
            }
        }
        let entry = list.entry(id.to_owned()).or_insert(Follower {
            acked: applied,
            heard: now,
        });
        entry.acked = entry.acked.max(applied);
        entry.heard = now;
        drop(list);
        self.acked.notify_waiters();
        self.moved.notify_one();
    }

    /// Resolves after an acknowledgement (one that came since the last
    /// such wake-up included): the heartbeat then reports it.
    pub async fn moved(&self) {
        self.moved.notified().await
    }

    /// How many followers are registered and how many of them are live.
    pub fn counts(&self) -> (usize, usize) {
        let list = self.lock();
        let live = list
            .values()
            .filter(|f| f.heard.elapsed() <= self.max_staleness)
            .count();
        (list.len(), live)
    }

    /// Every registered follower, by id.
    pub fn list(&self) -> Vec<Status> {
        let mut listed: Vec<Status> = self
            .lock()
            .iter()
            .map(|(id, f)| {
                let ago = f.heard.elapsed();
                Status {
                    id: id.clone(),
                    acked: f.acked,
                    ago,
                    live: ago <= self.max_staleness,
                }
            })
            .collect();
        listed.sort_by(|a, b| a.id.cmp(&b.id));
        listed
    }

    /// The store version through which every live follower (and this
    /// instance, at `own`) has applied every change.
    pub fn applied_floor(&self, own: u64) -> u64 {
        let list = self.lock();
        list.values()
            .filter(|f| f.heard.elapsed() <= self.max_staleness)
            .filter_map(|f| self.feed.applied_by(f.acked))
            .fold(own, u64::min)
    }

    /// Until when some live follower that has not acknowledged event `id`
    /// stays live, if there is one.
    fn lagging(&self, id: u64) -> Option<Instant> {
        self.lock()
            .values()
            .filter(|f| f.heard.elapsed() <= self.max_staleness && f.acked < id)
            .map(|f| f.heard + self.max_staleness)
            .max()
    }

    /// Waits until every live follower has acknowledged event `id`, or
    /// `max_staleness` plus the margin has passed since now (the change
    /// was numbered before this is called).
    pub async fn applied_everywhere(&self, id: u64) {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.max_staleness + MARGIN;
        if self.tokens.is_empty() {
            return;
        }
        loop {
            let notified = self.acked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Some(live_until) = self.lagging(id) else {
                break;
            };
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    event = id,
                    "a revocation answered after waiting the longest for followers that have not acknowledged it"
                );
                break;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline.min(live_until.into())) => {}
            }
        }
        self.ack_seconds.observe(started.elapsed().as_secs_f64());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Follower>> {
        self.list.lock().expect("followers lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn followers(tokens: &[&str]) -> Followers {
        let mut config = Config::default();
        config.followers.token_sha256 = tokens
            .iter()
            .map(|t| hex::encode(Sha256::digest(t.as_bytes())))
            .collect();
        config.cluster.max_staleness_ms = 200;
        Followers::new(
            Settings::of(&config),
            Arc::new(Feed::new(1)),
            Histogram::new([1.0]),
        )
    }

    #[test]
    fn tokens_are_checked_by_digest() {
        let f = followers(&["first-follower-token", "second-follower-token"]);
        assert!(f.enabled());
        assert!(f.accepts("second-follower-token"));
        assert!(!f.accepts("third-follower-token"));
        assert!(!followers(&[]).accepts(""));
    }

    #[tokio::test]
    async fn a_revocation_waits_for_live_followers_only() {
        let f = Arc::new(followers(&["t"]));
        f.ack("a", 5);
        // Acknowledged already: no wait.
        let started = Instant::now();
        f.applied_everywhere(5).await;
        assert!(started.elapsed() < Duration::from_millis(200));
        // Woken by the acknowledgement.
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.applied_everywhere(6).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        f.ack("a", 6);
        waiter.await.unwrap();
        // A follower that falls silent stops counting after max_staleness.
        let started = Instant::now();
        f.applied_everywhere(7).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(f.counts(), (1, 0));
        let listed = f.list();
        assert_eq!((listed[0].id.as_str(), listed[0].acked), ("a", 6));
        assert!(!listed[0].live);
    }
}
