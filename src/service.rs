//! The key lifecycle: create, upload, list, get, change (disable, enable,
//! rename), rotate, delete, and expiry. It ties the store, the published
//! JWK Sets and the verifier's cache together so that each change reaches
//! all three in the right order: durable in the store first, then
//! published or withdrawn, then forgotten by the verifier before the caller
//! hears back. One timer task withdraws each key at the second it expires.

mod lifecycle;
mod usage;

use std::sync::Arc;
use std::time::Duration;

pub use lifecycle::Lifetimes;

use crate::audit::{Action, Actor, AuditEvent, BrokenLink, EventId, NewEvent};
use crate::feed::Reports;
use crate::freshness::{self, Freshness, Staleness};
use crate::jwks::Document;
use crate::keys::upload::Upload;
use crate::keys::{
    now_secs, GeneratedKey, KeyId, KeyName, KeySpec, KeyState, Lifecycle, OrgId, Origin,
    PublicKeyRecord,
};
use crate::metrics::Metrics;
use crate::pool::KeyPool;
use crate::refusals::Refusals;
use crate::registry::{Reading, Registry};
use crate::replica::Replica;
use crate::store::{
    AuditPage, Changed, Delete, Deleted, Insert, Inserted, KeyChange, KeyRotation, Rotation, Store,
    StoreError,
};
use crate::verify::{Expect, Policy, Verified, Verifier, VerifyError};

/// The longest a verification of a key id a follower does not know waits
/// for the follower to catch up with its upstream: an acknowledgement's
/// round trip and the events it brings, with room for a slow network.
const CATCH_UP: Duration = Duration::from_millis(250);

/// The longest an instance on a shared store spends catching up with the
/// database for a follower's catch-up: well inside the follower's
/// [`CATCH_UP`], so the follower still has time to apply the answer.
const FOR_FOLLOWER: Duration = Duration::from_millis(100);

/// Why a key operation did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The organisation already holds its quota of keys.
    #[error("Maximum number of organisation keys ({0}) has been reached. Delete existing keys before creating new ones.")]
    QuotaExceeded(u32),
    /// No such key in this organisation.
    #[error("key {0} does not exist")]
    NotFound(KeyId),
    /// The organisation already holds this public key.
    #[error("this public key is already key {0} of the organisation")]
    Duplicate(KeyId),
    /// The change is refused in the key's current state.
    #[error("{0}")]
    Conflict(String),
    /// A requested expiry is in the past or beyond the configured cap.
    #[error("{0}")]
    Lifetime(String),
    /// Storage failed; nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task died.
    #[error("a background task failed: {0}")]
    Task(String),
}

/// A key id unknown here that could not be looked up: the store was asked
/// and gave no answer. Not a verdict: the key may exist, so its tokens get
/// 503, never `unknown_key`. The store's own error is counted in
/// `signet_storage_errors_total`, not told to an anonymous caller.
#[derive(Debug, thiserror::Error)]
#[error("key {kid} is not known to this instance and could not be looked up in the store just now; retry later")]
pub struct Unchecked {
    kid: KeyId,
}

/// Who asked for a change, for the audit log.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: Actor,
    pub client: Option<String>,
}

/// What a client asks for when creating a key.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: KeyName,
    pub spec: KeySpec,
}

/// What `PATCH` asks to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    /// `Some(true)` disables, `Some(false)` enables.
    pub disable: Option<bool>,
    pub name: Option<KeyName>,
}

/// What [`Signet::cluster`] answers.
#[derive(Debug)]
pub struct Cluster {
    /// This instance's id among the store's instances.
    pub me: String,
    /// How long ago this instance was last fresh (zero when it follows
    /// nothing), `None` before it ever was.
    pub fresh_age: Option<Duration>,
    pub instances: Vec<crate::feed::Instance>,
    pub followers: Vec<crate::followers::Status>,
}

/// The one door to keys, JWK Sets, verification and the audit log: the
/// HTTP routes, the CLI and start-up go through it, never to the store.
pub struct Signet {
    /// `None` on a follower, which mirrors an upstream signet instead.
    store: Option<Store>,
    /// What is published, withheld (disabled, expired) and when keys expire.
    published: Arc<Registry>,
    verifier: Arc<Verifier>,
    lifetimes: Lifetimes,
    /// The expiry timer; stopped when the service is dropped.
    timer: tokio::task::JoinHandle<()>,
    /// Moves usage counts into buckets and flushes them; stopped likewise.
    usage_task: tokio::task::JoinHandle<()>,
    /// How current this instance is with changes made by others.
    fresh: Arc<Freshness>,
    /// Look-ups of keys created elsewhere and not applied here yet (in
    /// the store, or on a follower, its catch-ups with the upstream).
    unknown: crate::replica::UnknownKeys,
    /// Asks this process's replica, if it has one, to catch up with its
    /// source now: on an instance the database, on a follower the upstream.
    catch_ups: Option<Arc<crate::replica::CatchUps>>,
    /// The tasks that follow the source this process follows (the
    /// replica, and on a follower the stream it reads), if any.
    following: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    /// Counters only: callers count into it, nothing reaches storage.
    pub metrics: Metrics,
    /// Requests refused for want of a valid credential: counted, not audited.
    pub refusals: Refusals,
    quota: u32,
    pool: KeyPool,
    /// The store generation the derived state (JWK Sets, cache) reflects.
    seen_generation: std::sync::atomic::AtomicU64,
    /// The followers of this instance, and the wait for them.
    followers: Arc<crate::followers::Followers>,
    /// On a follower: whether the upstream has accepted its token.
    registered: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// On a follower: the upstream's refusal of a token it never accepted.
    refused: Option<tokio::sync::watch::Receiver<Option<crate::follower::Refused>>>,
}

/// What the service is built with, all given at construction.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: Policy,
    /// `ORGKEYS_MAX`: the most keys one organisation may hold.
    pub quota: u32,
    /// Pre-generated RSA key pairs to keep per modulus size, in
    /// `Bits::ALL` order.
    pub pool: [usize; 3],
    pub lifetimes: Lifetimes,
    pub staleness: Staleness,
    /// Whether to follow the changes other instances make to a shared
    /// store (a server does; a command that runs once does not, and never
    /// vouches for them, so it never refuses to verify for staleness).
    pub replicate: bool,
    /// The followers this instance accepts.
    pub followers: crate::followers::Settings,
}

impl Settings {
    /// The settings `config` names.
    pub fn of(config: &crate::config::Config) -> Settings {
        Settings {
            policy: Policy::from(&config.verify),
            quota: config.keys.max_per_org,
            pool: [
                config.keys.pool_2048,
                config.keys.pool_3072,
                config.keys.pool_4096,
            ],
            lifetimes: Lifetimes {
                max: config.keys.max_lifetime,
                default: config.keys.default_lifetime,
            },
            staleness: Staleness::from(&config.cluster),
            replicate: true,
            followers: crate::followers::Settings::of(config),
        }
    }

    /// [`Settings::of`] for a command that runs once: no pool of key pairs.
    pub fn once(config: &crate::config::Config) -> Settings {
        Settings {
            pool: [0; 3],
            replicate: false,
            ..Settings::of(config)
        }
    }
}

impl Signet {
    pub async fn new(store: Store, settings: Settings) -> Result<Signet, StoreError> {
        let Settings {
            policy,
            quota,
            pool,
            lifetimes,
            staleness,
            replicate,
            followers,
        } = settings;
        // Shared with other instances: changes are counted from here on.
        let version = match store.feed() {
            Some(feed) => feed.version().await?,
            None => 0,
        };
        let reading = store.each_key(Reading::default(), Reading::add).await?;
        let keys = reading.len();
        let following = replicate && store.feed().is_some();
        let follows = following.then_some(freshness::Source::Database);
        let fresh = Arc::new(Freshness::new(version, staleness, follows));
        let published = Arc::new(Registry::new(fresh.clone(), followers.max_subscribers));
        let feed = published.feed().clone();
        let verifier = Arc::new(Verifier::new(published.clone(), policy));
        published.reset(reading, &verifier);
        let timer = tokio::spawn(crate::registry::expire_forever(
            published.clone(),
            verifier.clone(),
        ));
        // On sled, the counts flushed before a restart. They are advisory:
        // a store that cannot give them back does not stop the start.
        if let Err(e) = usage::restore(verifier.usage(), &store).await {
            tracing::warn!(error = %e, "could not read back the key usage kept before the restart");
        }
        let usage_task = tokio::spawn(usage::count_forever(
            verifier.usage().clone(),
            Some(store.downgrade()),
            published.clone(),
        ));
        let metrics = Metrics::new(verifier.stats());
        let pool = KeyPool::start(pool, metrics.pool_depth());
        metrics.keys.set(keys as i64);
        let refusals = Refusals::new(metrics.unauthenticated.clone());
        let followers = Arc::new(crate::followers::Followers::new(
            followers,
            feed,
            metrics.follower_ack_seconds.clone(),
        ));
        // Follows the other instances from now on; serves once current, or
        // after max_staleness with the database away (verification is
        // then refused until it is back).
        let mut following_tasks = Vec::new();
        let mut catch_ups = None;
        if following {
            let feed = store.feed().expect("following a shared store");
            let count = crate::replica::count_instances(
                feed.clone(),
                fresh.clone(),
                metrics.cluster.live_instances.clone(),
            );
            following_tasks.push(tokio::spawn(count).abort_handle());
            let replica = Replica {
                feed,
                published: published.clone(),
                verifier: verifier.clone(),
                keys: metrics.keys.clone(),
                metrics: metrics.cluster.clone(),
                fresh: fresh.clone(),
                followers: followers.clone(),
                catch_ups: catch_ups
                    .insert(Arc::new(crate::replica::CatchUps::new()))
                    .clone(),
            };
            following_tasks.extend(replica.start().await);
        }
        Ok(Signet {
            published,
            lifetimes,
            timer,
            usage_task,
            store: Some(store),
            verifier,
            fresh,
            unknown: crate::replica::UnknownKeys::new(),
            following: std::sync::Mutex::new(following_tasks),
            metrics,
            refusals,
            quota,
            pool,
            seen_generation: Default::default(),
            followers,
            registered: None,
            refused: None,
            catch_ups,
        })
    }

    /// A follower's service: no store, the keys its upstream publishes
    /// (a replica whose feed is the upstream, reached through `link`),
    /// verification only while the upstream's answers keep it fresh.
    /// Registers first: a refused token is an error; an unreachable
    /// upstream is not. Returns once fresh, or after `max_staleness`.
    pub async fn follower<T: crate::follower::Transport>(
        policy: Policy,
        config: &crate::config::Config,
        link: Arc<T>,
    ) -> Result<Signet, crate::follower::Refused> {
        let staleness = Staleness::from(&config.cluster);
        let follows = Some(freshness::Source::Upstream);
        let fresh = Arc::new(Freshness::new(0, staleness, follows));
        let published = Arc::new(Registry::new(
            fresh.clone(),
            crate::config::Events::default().max_subscribers,
        ));
        let verifier = Arc::new(Verifier::new(published.clone(), policy));
        let timer = tokio::spawn(crate::registry::expire_forever(
            published.clone(),
            verifier.clone(),
        ));
        let metrics = Metrics::new(verifier.stats());
        let refusals = Refusals::new(metrics.unauthenticated.clone());
        let followers = Arc::new(crate::followers::Followers::new(
            crate::followers::Settings::default(),
            published.feed().clone(),
            metrics.follower_ack_seconds.clone(),
        ));
        let pool = KeyPool::start([0, 0, 0], metrics.pool_depth());
        // Counted here, sent upstream with the acknowledgements.
        let usage_task = tokio::spawn(usage::count_forever(
            verifier.usage().clone(),
            None,
            published.clone(),
        ));
        let pushed = Arc::new(crate::follower::Pushed::default());
        let feed = crate::follower::UpstreamFeed::new(
            link.clone(),
            pushed.clone(),
            verifier.usage().clone(),
        );
        let registered = feed.registered();
        let refused = feed.refusals();
        if let Err(refused) = feed.register(fresh.instance()).await {
            timer.abort();
            usage_task.abort();
            return Err(refused);
        }
        let mut following = vec![tokio::spawn(link.follow(pushed)).abort_handle()];
        let catch_ups = Arc::new(crate::replica::CatchUps::new());
        let replica = Replica {
            feed: Arc::new(feed),
            published: published.clone(),
            verifier: verifier.clone(),
            // A follower counts no keys of its own.
            keys: prometheus_client::metrics::gauge::Gauge::default(),
            metrics: metrics.cluster.clone(),
            fresh: fresh.clone(),
            followers: followers.clone(),
            catch_ups: catch_ups.clone(),
        };
        following.extend(replica.start().await);
        Ok(Signet {
            published,
            lifetimes: Lifetimes::default(),
            timer,
            store: None,
            verifier,
            fresh,
            unknown: crate::replica::UnknownKeys::new(),
            following: std::sync::Mutex::new(following),
            metrics,
            refusals,
            quota: 0,
            pool,
            usage_task,
            seen_generation: Default::default(),
            followers,
            registered: Some(registered),
            refused: Some(refused),
            catch_ups: Some(catch_ups),
        })
    }

    /// Resolves with the upstream's refusal if it refuses this follower's
    /// token before ever accepting it (it could not be reached at start):
    /// the follower then exits, as one refused at start does. Never on an
    /// instance, nor once the follower has been accepted.
    pub async fn refused_unregistered(&self) -> crate::follower::Refused {
        if let Some(mut refusals) = self.refused.clone() {
            if let Ok(refused) = refusals.wait_for(Option::is_some).await {
                return refused.clone().expect("waited for a refusal");
            }
        }
        std::future::pending().await
    }

    /// The followers of this instance.
    pub fn followers(&self) -> &crate::followers::Followers {
        &self.followers
    }

    /// A follower acknowledged applying every event up to `applied`.
    pub fn follower_acked(&self, follower: &str, applied: u64) {
        self.followers.ack(follower, applied);
    }

    /// This instance's view of the others: the instances in the store's
    /// list (on sled, this one alone, current), the followers it serves,
    /// and how long ago it was last fresh.
    pub async fn cluster(&self) -> Result<Cluster, ServiceError> {
        let me = self.fresh.instance().to_owned();
        let instances = match self.store.as_ref().and_then(Store::feed) {
            Some(feed) => {
                let live = self.fresh.max_staleness() + crate::replica::MARGIN;
                self.storage(feed.instances(live)).await?
            }
            None => vec![crate::feed::Instance {
                id: me.clone(),
                applied: self.fresh.applied(),
                heard_ago: Duration::ZERO,
                live: true,
            }],
        };
        Ok(Cluster {
            me,
            fresh_age: self.fresh.stale_for(),
            instances,
            followers: self.followers.list(),
        })
    }

    /// The change feed and what it needs to start a stream.
    pub fn feed(&self) -> crate::events::Source {
        crate::events::Source {
            published: self.published.clone(),
            fresh: self.fresh.clone(),
        }
    }

    /// Updates the gauges computed on request (before `/metrics`).
    pub fn observe(&self) {
        let (registered, live) = self.followers.counts();
        use crate::metrics::StateLabel;
        let gauge = |state| self.metrics.followers.get_or_create(&StateLabel { state });
        gauge("registered").set(registered as i64);
        gauge("live").set(live as i64);
    }

    /// Generates a key pair, stores its public half under the quota, and
    /// returns both halves. The store has synced before this returns.
    pub async fn create(
        &self,
        org: OrgId,
        new: NewKey,
        caller: &Caller,
    ) -> Result<(PublicKeyRecord, GeneratedKey), ServiceError> {
        self.create_expiring(org, new, None, caller).await
    }

    /// [`Signet::create`] with an expiry (seconds since the epoch), held to
    /// the configured lifetimes.
    pub async fn create_expiring(
        &self,
        org: OrgId,
        new: NewKey,
        expires_at: Option<u64>,
        caller: &Caller,
    ) -> Result<(PublicKeyRecord, GeneratedKey), ServiceError> {
        let expires_at = self.lifetimes.expiry(expires_at, now_secs())?;
        self.refuse_if_full(&org, caller).await?;
        let generated = self.pool.get(new.spec).await;
        let life = Lifecycle {
            expires_at_secs: expires_at,
            ..Lifecycle::default()
        };
        let record = self.new_record(org, new, generated.spki_der().to_vec(), life);
        self.insert(&record, Action::KeyCreated, "created", caller)
            .await?;
        Ok((record, generated))
    }

    /// Stores a public key the organisation made itself, under the quota.
    pub async fn upload(
        &self,
        org: OrgId,
        name: KeyName,
        upload: Upload,
        expires_at: Option<u64>,
        caller: &Caller,
    ) -> Result<PublicKeyRecord, ServiceError> {
        let expires_at = self.lifetimes.expiry(expires_at, now_secs())?;
        self.refuse_if_full(&org, caller).await?;
        let new = NewKey {
            name,
            spec: upload.spec,
        };
        let life = Lifecycle {
            expires_at_secs: expires_at,
            origin: Origin::Uploaded,
            ..Lifecycle::default()
        };
        let record = self.new_record(org, new, upload.spki_der, life);
        self.insert(&record, Action::KeyUploaded, "uploaded", caller)
            .await?;
        Ok(record)
    }

    /// A full organisation is refused before a key pair is spent on it;
    /// the store's transaction re-checks atomically.
    async fn refuse_if_full(&self, org: &OrgId, caller: &Caller) -> Result<(), ServiceError> {
        if self.storage(self.store()?.key_count(org.clone())).await? < self.quota {
            return Ok(());
        }
        let refused = event(Action::QuotaExceeded, None, caller, "refused");
        self.storage(self.store()?.record_event(org.clone(), refused))
            .await?;
        Err(ServiceError::QuotaExceeded(self.quota))
    }

    fn new_record(
        &self,
        org: OrgId,
        new: NewKey,
        spki_der: Vec<u8>,
        life: Lifecycle,
    ) -> PublicKeyRecord {
        let id = self
            .store
            .as_ref()
            .map_or_else(|| KeyId::new(ulid::Ulid::new()), Store::new_id);
        PublicKeyRecord {
            id,
            org,
            name: new.name,
            spec: new.spec,
            spki_der,
            created_at_ms: id.timestamp_ms(),
            life,
        }
    }

    /// Inserts a new key under the quota and publishes it.
    async fn insert(
        &self,
        record: &PublicKeyRecord,
        action: Action,
        outcome: &str,
        caller: &Caller,
    ) -> Result<(), ServiceError> {
        let inserted = self
            .storage(self.store()?.insert_key(Insert {
                record: record.clone(),
                quota: self.quota,
                created: event(action, Some(record.id), caller, outcome),
                refused: event(Action::QuotaExceeded, Some(record.id), caller, "refused"),
            }))
            .await?;
        match inserted {
            Inserted::Yes(version) => {
                self.published.publish(record, version, &self.verifier);
                self.metrics.keys.inc();
                Ok(())
            }
            Inserted::QuotaExceeded(_) => Err(ServiceError::QuotaExceeded(self.quota)),
            Inserted::Duplicate(other) => Err(ServiceError::Duplicate(other)),
        }
    }

    /// Disables, enables or renames a key. A disable is durable, out of
    /// the JWK Sets and refused by the verifier when this returns, here
    /// and on every other live instance.
    pub async fn change(
        &self,
        org: OrgId,
        id: KeyId,
        patch: Patch,
        caller: &Caller,
    ) -> Result<PublicKeyRecord, ServiceError> {
        let change = KeyChange {
            org,
            id,
            disable: patch.disable,
            name: patch.name,
            now: now_secs(),
            event: event(Action::KeyRenamed, Some(id), caller, ""),
        };
        let disable = change.disable == Some(true);
        match self.storage(self.store()?.change_key(change)).await? {
            // Nothing differed: this repeats the key's latest change, which
            // may still be on its way to memory and the other instances. The
            // answer waits for it like the first, when it revokes.
            Changed::Yes(record, version) | Changed::Unchanged(record, version) => {
                let committed = std::time::Instant::now();
                self.published.publish(&record, version, &self.verifier);
                if disable && record.state_at(now_secs()) != KeyState::Active {
                    self.applied_everywhere(version, committed).await;
                }
                Ok(record)
            }
            Changed::NotFound => Err(ServiceError::NotFound(id)),
            Changed::Conflict(why) => Err(ServiceError::Conflict(why)),
        }
    }

    /// Makes a successor of key `id` (same name and key type) and retires
    /// the old key `grace` from now (at once for zero), in one change.
    /// Returns the successor, its private key, and the old key as it now
    /// stands.
    pub async fn rotate(
        &self,
        org: OrgId,
        id: KeyId,
        grace: Duration,
        caller: &Caller,
    ) -> Result<(PublicKeyRecord, GeneratedKey, PublicKeyRecord), ServiceError> {
        let old = self
            .storage(self.store()?.get_key(id))
            .await?
            .filter(|r| r.org == org)
            .ok_or(ServiceError::NotFound(id))?;
        if old.life.origin == Origin::Uploaded {
            return Err(ServiceError::Conflict(format!(
                "key {id} was uploaded, so signet cannot make its successor: upload the new public key, then disable or delete this one"
            )));
        }
        let now = now_secs();
        let expires_at = self.lifetimes.expiry(None, now)?;
        self.refuse_if_full(&org, caller).await?;
        let generated = self.pool.get(old.spec).await;
        let life = Lifecycle {
            expires_at_secs: expires_at,
            ..Lifecycle::default()
        };
        let new = NewKey {
            name: old.name.clone(),
            spec: old.spec,
        };
        let successor = self.new_record(org.clone(), new, generated.spki_der().to_vec(), life);
        let retire_at = now.saturating_add(grace.as_secs());
        let outcome = format!(
            "rotated to {}; retires {}",
            successor.id,
            crate::keys::rfc3339(retire_at.saturating_mul(1000))
        );
        let rotation = KeyRotation {
            org,
            old: id,
            successor: successor.clone(),
            retire_at,
            quota: self.quota,
            rotated: event(Action::KeyRotated, Some(id), caller, &outcome),
            refused: event(Action::QuotaExceeded, Some(successor.id), caller, "refused"),
        };
        match self.storage(self.store()?.rotate_key(rotation)).await? {
            Rotation::Yes(retired, version) => {
                let committed = std::time::Instant::now();
                // One change, two consecutive events in the feed.
                self.published
                    .publish_all(&[&successor, &retired], version, &self.verifier);
                self.metrics.keys.inc();
                // Retired at once: a revocation, like a delete.
                if retired.state_at(now_secs()) != KeyState::Active {
                    self.applied_everywhere(version, committed).await;
                }
                Ok((successor, generated, retired))
            }
            Rotation::NotFound => Err(ServiceError::NotFound(id)),
            Rotation::QuotaExceeded(_) => Err(ServiceError::QuotaExceeded(self.quota)),
        }
    }

    /// Deletes a key. Once this returns, the key is gone from the store
    /// (durably), from the JWK Sets and from the verifier's cache.
    pub async fn delete(&self, org: OrgId, id: KeyId, caller: &Caller) -> Result<(), ServiceError> {
        let event = event(Action::KeyDeleted, Some(id), caller, "deleted");
        let deleted = self
            .storage(self.store()?.delete_key(Delete {
                org: org.clone(),
                id,
                event,
            }))
            .await?;
        let committed = std::time::Instant::now();
        let (version, now) = match deleted {
            Deleted::Now(version) => (version, true),
            // Deleted by another request, which may not have answered yet:
            // this 404 revokes too, so it waits exactly as a 204 would.
            Deleted::Already(version) => (version, false),
            Deleted::NotFound => return Err(ServiceError::NotFound(id)),
        };
        // Unpublished first: the verifier fills its cache from the
        // published keys, so once it forgets, nothing brings the key back.
        if self.published.remove(&org, id, &self.verifier) {
            self.metrics.keys.dec();
        }
        self.verifier.usage().remove(id);
        self.applied_everywhere(version, committed).await;
        match now {
            true => Ok(()),
            false => Err(ServiceError::NotFound(id)),
        }
    }

    /// Waits until a revocation (a delete, a disable, a rotation that
    /// retires the old key at once) committed at `version` is in force on
    /// every other live instance too, or until those that have not applied
    /// it have stopped verifying on their own.
    async fn applied_everywhere(&self, version: u64, committed: std::time::Instant) {
        // This instance's own followers: every event numbered so far, the
        // revocation's included.
        let event = self.published.feed().latest();
        let followers = self.followers.applied_everywhere(event);
        let Some(feed) = self.store.as_ref().and_then(Store::feed) else {
            followers.await;
            return;
        };
        let instances = crate::replica::applied_everywhere(
            &*feed,
            &self.fresh,
            version,
            committed,
            &self.metrics.cluster.revocation_wait_seconds,
        );
        tokio::join!(instances, followers);
    }

    /// The store, which a follower does not have.
    fn store(&self) -> Result<&Store, ServiceError> {
        self.store.as_ref().ok_or_else(|| {
            ServiceError::Store(StoreError::Unavailable(
                "a follower holds no store: send changes to its upstream".into(),
            ))
        })
    }

    /// An active key: a disabled or expired one is not found here (the
    /// public routes show only active keys).
    pub async fn get(&self, id: KeyId) -> Result<PublicKeyRecord, ServiceError> {
        // The published keys are the active ones, in memory; with other
        // instances, one created elsewhere a moment ago may be stored only.
        let record = match self.published.record(id) {
            None if self.fresh.following() && self.store.is_some() => {
                self.storage(self.store()?.get_key(id)).await?
            }
            held => held,
        };
        record
            .filter(|r| r.state_at(now_secs()) == KeyState::Active)
            .ok_or(ServiceError::NotFound(id))
    }

    pub async fn list(&self, org: &OrgId) -> Result<Vec<PublicKeyRecord>, ServiceError> {
        self.storage(self.store()?.list_org(org.clone())).await
    }

    /// Every live key, oldest first.
    pub async fn list_all(&self) -> Result<Vec<PublicKeyRecord>, ServiceError> {
        self.storage(self.store()?.all_keys()).await
    }

    /// An organisation's audit events, newest first: at most `limit`, all
    /// strictly older than `before` if given.
    pub async fn audit_page(
        &self,
        org: &OrgId,
        limit: usize,
        before: Option<EventId>,
    ) -> Result<Vec<AuditEvent>, ServiceError> {
        self.storage(self.store()?.audit_page(AuditPage {
            org: org.clone(),
            limit,
            before,
        }))
        .await
    }

    /// Walks every organisation's audit chain: the number of events
    /// checked, or the first broken link.
    pub async fn verify_audit(&self) -> Result<Result<usize, BrokenLink>, ServiceError> {
        self.storage(self.store()?.verify_audit()).await
    }

    /// Whether storage answers a read: the readiness probe.
    pub async fn is_ready(&self) -> bool {
        let usable = match &self.store {
            Some(store) => store.is_usable().await,
            // A follower: ready once its upstream has accepted it.
            None => self
                .registered
                .as_ref()
                .is_some_and(|r| r.load(std::sync::atomic::Ordering::SeqCst)),
        };
        self.fresh.vouch().is_ok() && usable
    }

    /// Makes everything written so far durable (at shutdown), with the
    /// key usage counted so far.
    pub async fn sync(&self) -> Result<(), ServiceError> {
        self.flush_usage().await;
        match &self.store {
            Some(_) => self.storage(self.store()?.sync()).await,
            None => Ok(()),
        }
    }

    /// Stops the tasks that follow the source this process follows.
    fn stop_following(&self) {
        let tasks = std::mem::take(&mut *self.following.lock().expect("following lock poisoned"));
        for task in tasks {
            task.abort();
        }
    }

    /// Stops following other instances and leaves their list, so that no
    /// delete waits for this instance any more (at shutdown).
    pub async fn leave(&self) {
        self.stop_following();
        let feed = self.store.as_ref().and_then(Store::feed);
        if let (true, Some(feed)) = (self.fresh.following(), feed) {
            // Not on the list any more: no revocation waits for this
            // instance, so it must not vouch for one either.
            self.fresh.fence();
            if let Err(e) = feed.leave(self.fresh.instance()).await {
                tracing::warn!(error = %e, "could not leave the list of instances");
            }
        }
    }

    /// Verifies a token against the published keys; with other instances
    /// on the store, a key id unknown here is looked up there first (a key
    /// created elsewhere a moment ago); on a follower, it is verified again
    /// once the follower has caught up with its upstream.
    pub async fn verify(&self, token: &str, expect: Expect<'_>) -> Result<Verified, VerifyError> {
        let result = self.verifier.verify(token, expect);
        if matches!(result, Err(VerifyError::UnknownKey(_))) {
            match self.learn_key_of(token).await {
                Ok(true) => return self.verifier.verify(token, expect),
                Ok(false) => {}
                // No verdict: the key may well exist.
                Err(unchecked) => return Err(VerifyError::Unavailable(unchecked.to_string())),
            }
        }
        result
    }

    /// With other instances on the store, publishes the key that `token`
    /// (a JWT) names if it is unknown here but in the store: created
    /// elsewhere a moment ago. On a follower, waits until it has caught up
    /// with its upstream as of now instead. Whether the key is published
    /// now (also when the replica published it meanwhile), or on a
    /// follower known at all (a verification may then answer otherwise).
    /// [`Unchecked`] when the store was asked and gave no answer in time:
    /// no verdict on that key can be given then.
    /// Call before authenticating an organisation token.
    pub async fn learn_key_of(&self, token: &str) -> Result<bool, Unchecked> {
        let store = self.store.as_ref().filter(|_| self.fresh.following());
        if store.is_none() && self.catch_ups.is_none() {
            return Ok(false);
        }
        let kid = token
            .split('.')
            .next()
            .and_then(|header| crate::verify::decode_object(header, "header").ok())
            .and_then(|header| header.get("kid")?.as_str().map(str::to_owned))
            .and_then(|kid| KeyId::parse(&kid).ok());
        let Some(kid) = kid else {
            return Ok(false);
        };
        if self.published.is_published(kid) {
            return Ok(true);
        }
        // A key deleted, disabled or expired here is no news; only ids
        // this instance knows nothing of are worth the store's time. Past
        // the look-ups' budget an id is not asked for: a flood of made-up
        // ids stays `unknown_key` without costing the store.
        if self.published.knows(kid) || !self.unknown.may_look_up(kid) {
            return Ok(false);
        }
        let Some(store) = store else {
            return Ok(self.caught_up_with(kid).await);
        };
        match store.get_key(kid).await {
            Ok(Some(record)) => {
                // Only an active key, and only if nothing about it was
                // applied here meanwhile: this read may predate that change.
                if self.published.learn(&record) {
                    self.metrics.keys.inc();
                }
                Ok(self.published.is_published(kid))
            }
            Ok(None) => {
                self.unknown.absent(kid);
                Ok(false)
            }
            Err(_) => {
                self.metrics.storage_errors.inc();
                Err(Unchecked { kid })
            }
        }
    }

    /// A follower waits on its acknowledgement to learn a key id it does
    /// not know: an instance that follows a database reads it now and
    /// applies what it finds, at most for [`FOR_FOLLOWER`], so that the
    /// answer's version covers keys created through other instances.
    /// Nothing to do on a single instance, which makes every change itself.
    pub async fn catch_up_for_follower(&self) {
        if self.store.is_some() {
            if let Some(catch_ups) = &self.catch_ups {
                catch_ups.caught_up(&self.fresh, FOR_FOLLOWER).await;
            }
        }
    }

    /// On a follower, waits (at most [`CATCH_UP`]) until it has applied
    /// every event its upstream had numbered when asked; whether key `kid`
    /// is known then. An id still unknown is remembered as absent for a
    /// while, like one the store does not hold.
    async fn caught_up_with(&self, kid: KeyId) -> bool {
        let Some(catch_ups) = &self.catch_ups else {
            return false;
        };
        // Not caught up in time: the follower still vouches for every
        // change up to `max_staleness` ago (or it is fenced, and the
        // verifier says so), so its verdict stands as of then.
        if !catch_ups.caught_up(&self.fresh, CATCH_UP).await {
            return false;
        }
        let known = self.published.is_published(kid) || self.published.knows(kid);
        if !known {
            self.unknown.absent(kid);
        }
        known
    }

    /// The verifier, for authenticating callers.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The JWK Set of every key.
    pub fn jwks_all(&self) -> Arc<Document> {
        self.published.jwks_all()
    }

    /// The JWK Set of one organisation.
    pub fn jwks_of(&self, org: &OrgId) -> Arc<Document> {
        self.published.jwks_of(org)
    }

    /// Records in the organisation's audit log that an authenticated
    /// caller was refused (403), in signet's own words.
    pub async fn record_denied(&self, org: &OrgId, caller: &Caller, outcome: &'static str) {
        let event = event(Action::AccessDenied, None, caller, outcome);
        let Some(store) = &self.store else {
            return;
        };
        if let Err(e) = store.record_event(org.clone(), event).await {
            self.metrics.storage_errors.inc();
            tracing::error!(error = %e, "could not record an access.denied audit event");
        }
    }

    /// Awaits a storage call, counts its failure, and rebuilds derived
    /// state if the store reopened meanwhile.
    async fn storage<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ServiceError> {
        let result = call.await;
        self.reconcile().await;
        if result.is_err() {
            self.metrics.storage_errors.inc();
        }
        Ok(result?)
    }
}

impl Signet {
    /// After the store reopened itself (see `Store::recover`), rebuilds what
    /// is derived from it: a write that failed may or may not have reached
    /// the disk.
    async fn reconcile(&self) {
        use std::sync::atomic::Ordering;
        let Some(store) = &self.store else {
            return;
        };
        let generation = store.generation();
        if self.seen_generation.swap(generation, Ordering::SeqCst) == generation {
            return;
        }
        match store.each_key(Reading::default(), Reading::add).await {
            Ok(reading) => {
                let keys = reading.len();
                self.published.reset(reading, &self.verifier);
                self.metrics.keys.set(keys as i64);
                tracing::warn!(keys, "rebuilt the JWK Sets after storage recovered");
            }
            Err(e) => {
                self.seen_generation
                    .store(generation.wrapping_sub(1), Ordering::SeqCst);
                tracing::error!(error = %e, "could not rebuild the JWK Sets after storage recovered");
            }
        }
    }
}

impl Drop for Signet {
    fn drop(&mut self) {
        self.timer.abort();
        self.usage_task.abort();
        self.stop_following();
    }
}

/// An audit event of `caller`'s.
fn event(action: Action, key_id: Option<KeyId>, caller: &Caller, outcome: &str) -> NewEvent {
    NewEvent {
        action,
        key_id,
        actor: caller.actor.clone(),
        client: caller.client.clone(),
        outcome: outcome.into(),
    }
}
