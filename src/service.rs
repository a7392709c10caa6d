//! The key lifecycle: create, list, get, delete. It ties the store, the
//! published JWK Sets and the verifier's cache together so that each change
//! reaches all three in the right order: durable in the store first, then
//! published, then (for a delete) forgotten by the verifier before the
//! caller hears back.

use std::sync::Arc;

use crate::audit::{Action, Actor, NewEvent};
use crate::jwks::Jwks;
use crate::keys::{GeneratedKey, KeyId, KeyName, KeySpec, OrgId, PublicKeyRecord};
use crate::metrics::Metrics;
use crate::pool::KeyPool;
use crate::refusals::Refusals;
use crate::store::{Inserted, Store, StoreError};
use crate::verify::{KeyMaterial, KeySource, Policy, Verifier};

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

pub struct Signet {
    pub store: Arc<Store>,
    pub jwks: Jwks,
    pub verifier: Verifier,
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
    pub fn new(
        store: Store,
        policy: Policy,
        quota: u32,
        pool: [usize; 3],
    ) -> Result<Signet, StoreError> {
        let store = Arc::new(store);
        let records = store.all_keys()?;
        let verifier = Verifier::new(Arc::new(StoreSource(store.clone())), policy);
        let metrics = Metrics::new(verifier.stats());
        let pool = KeyPool::start(pool, metrics.pool_depth());
        metrics.keys.set(records.len() as i64);
        let refusals = Refusals::new(metrics.unauthenticated.clone());
        Ok(Signet {
            jwks: Jwks::new(&records),
            store,
            verifier,
            metrics,
            refusals,
            quota,
            pool,
            seen_generation: Default::default(),
        })
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
        if self.store.key_count(&org)? >= self.quota {
            let refused = NewEvent {
                action: Action::QuotaExceeded,
                key_id: None,
                actor: caller.actor.clone(),
                client: caller.client.clone(),
                outcome: "refused".into(),
            };
            let (store, org) = (self.store.clone(), org.clone());
            self.blocking(move || store.record_event(&org, refused))
                .await?;
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
        let store = self.store.clone();
        let (quota, to_store) = (self.quota, record.clone());
        let inserted = self
            .blocking(move || store.insert_key(&to_store, quota, created, refused))
            .await?;
        match inserted {
            Inserted::Yes => {
                self.jwks.added(&record);
                self.metrics.keys.inc();
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
        let store = self.store.clone();
        let org2 = org.clone();
        let deleted = self
            .blocking(move || store.delete_key(&org2, id, event))
            .await?;
        if !deleted {
            return Err(ServiceError::NotFound(id));
        }
        self.verifier.forget(id);
        self.jwks.removed(&org, id);
        self.metrics.keys.dec();
        Ok(())
    }

    pub fn get(&self, id: KeyId) -> Result<PublicKeyRecord, ServiceError> {
        self.store.get_key(id)?.ok_or(ServiceError::NotFound(id))
    }

    pub fn list(&self, org: &OrgId) -> Result<Vec<PublicKeyRecord>, ServiceError> {
        Ok(self.store.list_org(org)?)
    }

    /// Records in the organisation's audit log that an authenticated
    /// caller was refused (403), in signet's own words.
    pub fn record_denied(&self, org: &OrgId, caller: &Caller, outcome: &'static str) {
        let event = NewEvent {
            action: Action::AccessDenied,
            key_id: None,
            actor: caller.actor.clone(),
            client: caller.client.clone(),
            outcome: outcome.into(),
        };
        if let Err(e) = self.store.record_event(org, event) {
            self.metrics.storage_errors.inc();
            tracing::error!(error = %e, "could not record an access.denied audit event");
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let result = tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ServiceError::Task(e.to_string()))?;
        self.reconcile();
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
    fn reconcile(&self) {
        use std::sync::atomic::Ordering;
        let generation = self.store.generation();
        if self.seen_generation.swap(generation, Ordering::SeqCst) == generation {
            return;
        }
        match self.store.all_keys() {
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

/// The store as the verifier's key source.
pub struct StoreSource(pub Arc<Store>);

impl KeySource for StoreSource {
    fn lookup(&self, id: KeyId) -> Result<Option<KeyMaterial>, String> {
        Ok(self
            .0
            .get_key(id)
            .map_err(|e| e.to_string())?
            .map(|r| KeyMaterial {
                org: Some(r.org),
                algorithm: r.spec.algorithm(),
                spki_der: r.spki_der,
            }))
    }

    fn contains(&self, id: KeyId) -> Result<bool, String> {
        self.0.contains_key(id).map_err(|e| e.to_string())
    }
}
