//! The key lifecycle: create, list, get, delete. It ties the store, the
//! published JWK Sets and the verifier's cache together so that each change
//! reaches all three in the right order: durable in the store first, then
//! published, then (for a delete) forgotten by the verifier before the
//! caller hears back.

use std::sync::Arc;

use crate::audit::{Action, Actor, AuditEvent, BrokenLink, EventId, NewEvent};
use crate::cluster::{Follower, Freshness};
use crate::jwks::{Document, Jwks};
use crate::keys::{GeneratedKey, Jwk, KeyId, KeyName, KeySpec, OrgId, PublicKeyRecord};
use crate::metrics::Metrics;
use crate::pool::KeyPool;
use crate::refusals::Refusals;
use crate::store::{AuditPage, Delete, Insert, Inserted, Store, StoreError};
use crate::verify::{
    Expect, KeyMaterial, KeySource, KeySourceError, Policy, Verified, Verifier, VerifyError,
};

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
    /// Storage failed; nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task died.
    #[error("a background task failed: {0}")]
    Task(String),
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

/// The one door to keys, JWK Sets, verification and the audit log: the
/// HTTP routes, the CLI and start-up go through it, never to the store.
pub struct Signet {
    store: Store,
    jwks: Arc<Jwks>,
    verifier: Arc<Verifier>,
    /// How current this instance is with changes made by others.
    fresh: Arc<Freshness>,
    /// Look-ups of keys created elsewhere and not applied here yet.
    unknown: crate::cluster::UnknownKeys,
    /// The task that applies changes made by other instances, if any.
    follower: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    /// Counters only: callers count into it, nothing reaches storage.
    pub metrics: Metrics,
    /// Requests refused for want of a valid credential: counted, not audited.
    pub refusals: Refusals,
    quota: u32,
    pool: KeyPool,
    /// The store generation the derived state (JWK Sets, cache) reflects.
    seen_generation: std::sync::atomic::AtomicU64,
}

impl Signet {
    /// `pool` is the number of pre-generated RSA key pairs to keep per
    /// modulus size, in `Bits::ALL` order.
    pub async fn new(
        store: Store,
        policy: Policy,
        quota: u32,
        pool: [usize; 3],
    ) -> Result<Signet, StoreError> {
        let version = store.version().await?;
        let records = store.all_keys().await?;
        let jwks = Arc::new(Jwks::new(&records));
        let fresh = Arc::new(Freshness::new(version));
        let published = PublishedKeys(jwks.clone(), fresh.clone());
        let verifier = Arc::new(Verifier::new(Arc::new(published), policy));
        let metrics = Metrics::new(verifier.stats());
        let pool = KeyPool::start(pool, metrics.pool_depth());
        metrics.keys.set(records.len() as i64);
        let refusals = Refusals::new(metrics.unauthenticated.clone());
        Ok(Signet {
            jwks,
            store,
            verifier,
            fresh,
            unknown: crate::cluster::UnknownKeys::new(),
            follower: Default::default(),
            metrics,
            refusals,
            quota,
            pool,
            seen_generation: Default::default(),
        })
    }

    /// Starts applying the key changes other instances make to the shared
    /// store (nothing on sled). While more than `max_staleness` behind,
    /// verification is refused, unless `serve_stale`.
    pub async fn follow(&self, max_staleness: std::time::Duration, serve_stale: bool) {
        let follower = Follower {
            store: self.store.clone(),
            jwks: self.jwks.clone(),
            verifier: self.verifier.clone(),
            keys: self.metrics.keys.clone(),
            metrics: self.metrics.cluster.clone(),
            fresh: self.fresh.clone(),
        };
        let task = follower.start(max_staleness, serve_stale).await;
        *self.follower.lock().expect("follower lock poisoned") = task;
    }

    /// Generates a key pair, stores its public half under the quota, and
    /// returns both halves. The store has synced before this returns.
    pub async fn create(
        &self,
        org: OrgId,
        new: NewKey,
        caller: &Caller,
    ) -> Result<(PublicKeyRecord, GeneratedKey), ServiceError> {
        // A full organisation is refused before a key pair is spent on it;
        // the transaction below re-checks atomically.
        if self.storage(self.store.key_count(org.clone())).await? >= self.quota {
            let refused = NewEvent {
                action: Action::QuotaExceeded,
                key_id: None,
                actor: caller.actor.clone(),
                client: caller.client.clone(),
                outcome: "refused".into(),
            };
            self.storage(self.store.record_event(org, refused)).await?;
            return Err(ServiceError::QuotaExceeded(self.quota));
        }
        let generated = self.pool.get(new.spec).await;
        let id = self.store.new_id();
        let record = PublicKeyRecord {
            id,
            org,
            name: new.name,
            spec: new.spec,
            spki_der: generated.spki_der().to_vec(),
            created_at_ms: id.timestamp_ms(),
        };
        let event = |action, outcome: &str| NewEvent {
            action,
            key_id: Some(record.id),
            actor: caller.actor.clone(),
            client: caller.client.clone(),
            outcome: outcome.into(),
        };
        let (created, refused) = (
            event(Action::KeyCreated, "created"),
            event(Action::QuotaExceeded, "refused"),
        );
        let inserted = self
            .storage(self.store.insert_key(Insert {
                record: record.clone(),
                quota: self.quota,
                created,
                refused,
            }))
            .await?;
        match inserted {
            Inserted::Yes => {
                if self.jwks.added(&record) {
                    self.metrics.keys.inc();
                }
                Ok((record, generated))
            }
            Inserted::QuotaExceeded(_) => Err(ServiceError::QuotaExceeded(self.quota)),
        }
    }

    /// Deletes a key. Once this returns, the key is gone from the store
    /// (durably), from the JWK Sets and from the verifier's cache.
    pub async fn delete(&self, org: OrgId, id: KeyId, caller: &Caller) -> Result<(), ServiceError> {
        let event = NewEvent {
            action: Action::KeyDeleted,
            key_id: Some(id),
            actor: caller.actor.clone(),
            client: caller.client.clone(),
            outcome: "deleted".into(),
        };
        let deleted = self
            .storage(self.store.delete_key(Delete {
                org: org.clone(),
                id,
                event,
            }))
            .await?;
        let committed = std::time::Instant::now();
        let Some(version) = deleted else {
            return Err(ServiceError::NotFound(id));
        };
        // Unpublished first: the verifier fills its cache from the
        // published keys, so once it forgets, nothing brings the key back.
        if self.jwks.removed(&org, id) {
            self.metrics.keys.dec();
        }
        self.verifier.forget(id);
        // In force on every other instance too before the caller hears back.
        crate::cluster::applied_everywhere(
            &self.store,
            &self.fresh,
            version,
            committed,
            &self.metrics.cluster.delete_wait_seconds,
        )
        .await;
        Ok(())
    }

    pub async fn get(&self, id: KeyId) -> Result<PublicKeyRecord, ServiceError> {
        self.storage(self.store.get_key(id))
            .await?
            .ok_or(ServiceError::NotFound(id))
    }

    pub async fn list(&self, org: &OrgId) -> Result<Vec<PublicKeyRecord>, ServiceError> {
        self.storage(self.store.list_org(org.clone())).await
    }

    /// Every live key, oldest first.
    pub async fn list_all(&self) -> Result<Vec<PublicKeyRecord>, ServiceError> {
        self.storage(self.store.all_keys()).await
    }

    /// An organisation's audit events, newest first: at most `limit`, all
    /// strictly older than `before` if given.
    pub async fn audit_page(
        &self,
        org: &OrgId,
        limit: usize,
        before: Option<EventId>,
    ) -> Result<Vec<AuditEvent>, ServiceError> {
        self.storage(self.store.audit_page(AuditPage {
            org: org.clone(),
            limit,
            before,
        }))
        .await
    }

    /// Walks every organisation's audit chain: the number of events
    /// checked, or the first broken link.
    pub async fn verify_audit(&self) -> Result<Result<usize, BrokenLink>, ServiceError> {
        self.storage(self.store.verify_audit()).await
    }

    /// Whether storage answers a read: the readiness probe.
    pub async fn is_ready(&self) -> bool {
        self.fresh.vouch().is_ok() && self.store.is_usable().await
    }

    /// Makes everything written so far durable (at shutdown).
    pub async fn sync(&self) -> Result<(), ServiceError> {
        self.storage(self.store.sync()).await
    }

    /// Stops following other instances and leaves their list, so that no
    /// delete waits for this instance any more (at shutdown).
    pub async fn leave(&self) {
        if let Some(task) = self.follower.lock().expect("follower lock poisoned").take() {
            task.abort();
        }
        if self.fresh.following() {
            if let Err(e) = self.store.leave(self.fresh.instance()).await {
                tracing::warn!(error = %e, "could not leave the list of instances");
            }
        }
    }

    /// Verifies a token against the published keys; with other instances
    /// on the store, a key id unknown here is looked up there first (a key
    /// created elsewhere a moment ago).
    pub async fn verify(&self, token: &str, expect: Expect<'_>) -> Result<Verified, VerifyError> {
        let result = self.verifier.verify(token, expect);
        if matches!(result, Err(VerifyError::UnknownKey(_))) && self.learn_key_of(token).await {
            return self.verifier.verify(token, expect);
        }
        result
    }

    /// With other instances on the store, publishes the key that `token`
    /// (a JWT) names if it is unknown here but in the store: created
    /// elsewhere a moment ago. Whether it did. Call before authenticating
    /// an organisation token.
    pub async fn learn_key_of(&self, token: &str) -> bool {
        if !self.fresh.following() {
            return false;
        }
        let kid = token
            .split('.')
            .next()
            .and_then(|header| crate::verify::decode_object(header, "header").ok())
            .and_then(|header| header.get("kid")?.as_str().map(str::to_owned))
            .and_then(|kid| KeyId::parse(&kid).ok())
            .filter(|&kid| !self.jwks.contains(kid));
        let Some(kid) = kid.filter(|&kid| self.unknown.may_look_up(kid)) else {
            return false;
        };
        match self.store.get_key(kid).await {
            // Not if it was deleted meanwhile: removed keys stay removed.
            Ok(Some(record)) => {
                let learned = self.jwks.added(&record);
                if learned {
                    self.metrics.keys.inc();
                }
                learned
            }
            Ok(None) => {
                self.unknown.absent(kid);
                false
            }
            Err(_) => false,
        }
    }

    /// The verifier, for authenticating callers.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The JWK Set of every key.
    pub fn jwks_all(&self) -> Arc<Document> {
        self.jwks.all()
    }

    /// The JWK Set of one organisation.
    pub fn jwks_of(&self, org: &OrgId) -> Arc<Document> {
        self.jwks.of(org)
    }

    /// Records in the organisation's audit log that an authenticated
    /// caller was refused (403), in signet's own words.
    pub async fn record_denied(&self, org: &OrgId, caller: &Caller, outcome: &'static str) {
        let event = NewEvent {
            action: Action::AccessDenied,
            key_id: None,
            actor: caller.actor.clone(),
            client: caller.client.clone(),
            outcome: outcome.into(),
        };
        if let Err(e) = self.store.record_event(org.clone(), event).await {
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
        let generation = self.store.generation();
        if self.seen_generation.swap(generation, Ordering::SeqCst) == generation {
            return;
        }
        match self.store.all_keys().await {
            Ok(records) => {
                self.jwks.reset(&records);
                self.verifier.forget_all();
                self.metrics.keys.set(records.len() as i64);
                tracing::warn!(
                    keys = records.len(),
                    "rebuilt the JWK Sets after storage recovered"
                );
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
        if let Some(task) = self.follower.lock().expect("follower lock poisoned").take() {
            task.abort();
        }
    }
}

/// The published keys as the verifier's key source: verification reads
/// memory only, never storage, so it keeps working while storage is down
/// (for as long as this instance may vouch that it has seen every change).
struct PublishedKeys(Arc<Jwks>, Arc<Freshness>);

impl KeySource for PublishedKeys {
    fn lookup(&self, id: KeyId) -> Result<Option<KeyMaterial>, KeySourceError> {
        let Some((org, jwk)) = self.0.key(id) else {
            return Ok(None);
        };
        let (_, algorithm, spki_der) = serde_json::from_slice::<Jwk>(&jwk)
            .map_err(|e| e.to_string())
            .and_then(|jwk| jwk.to_parts().map_err(|e| e.to_string()))
            .map_err(|cause| KeySourceError::Unparsable { id, cause })?;
        Ok(Some(KeyMaterial {
            org: Some(org),
            algorithm,
            spki_der,
        }))
    }

    fn contains(&self, id: KeyId) -> Result<bool, KeySourceError> {
        Ok(self.0.contains(id))
    }

    fn vouch(&self) -> Result<(), String> {
        self.1.vouch()
    }
}
