//! Key usage as the service serves it: the task that moves the verifier's
//! counts into buckets every second, flushes them into the store every few
//! seconds (and the service at shutdown) and forgets deleted keys; and the
//! reads. On PostgreSQL a read adds what the store holds (every instance's
//! flushed counts) to what this instance has not flushed yet; on sled the
//! counts are read in memory, and the store only keeps them over a restart
//! (put back at start, see [`restore`]).

use std::sync::Arc;
use std::time::Duration;

use super::{ServiceError, Signet};
use crate::keys::{now_ms, KeyId, OrgId, PublicKeyRecord};
use crate::registry::Registry;
use crate::store::{Store, StoreError, WeakStore};
use crate::usage::{KeyUsage, Usage};
use crate::verify::KeySource;

/// How often counts move from the hot counters into the buckets.
const TICK: Duration = Duration::from_secs(1);
/// How often, in ticks, the store gets this instance's counts.
const FLUSH_TICKS: u64 = 3;
/// How often, in ticks, deleted keys are forgotten and old rows pruned.
const PRUNE_TICKS: u64 = 600;
/// The longest the shutdown waits for the last flush of usage counts.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

/// Runs until aborted (when the service is dropped). `store` is where the
/// counts are flushed (none on a follower, which hands them upstream). The
/// task holds it weakly and only for a flush, so that it does not keep the
/// store open after the service is dropped: an aborted task is dropped
/// late, and on sled would hold the database's lock meanwhile.
pub(super) async fn count_forever(
    usage: Arc<Usage>,
    store: Option<WeakStore>,
    published: Arc<Registry>,
) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        interval.tick().await;
        ticks += 1;
        let now = now_ms();
        usage.tick(now);
        let prune = ticks % PRUNE_TICKS == 0;
        if prune {
            // Deleted here or elsewhere: neither published nor withheld.
            usage.retain(|id| {
                published.contains(id).unwrap_or(true) || published.withheld(id).is_some()
            });
        }
        if ticks % FLUSH_TICKS != 0 {
            continue;
        }
        let Some(store) = store.as_ref().and_then(WeakStore::upgrade) else {
            continue;
        };
        if let Err(e) = flush(&usage, &store, prune).await {
            tracing::warn!(error = %e, "could not flush key usage to the store; retrying");
        }
    }
}

/// Flushes the counts not flushed yet into `store` (with `prune`, also
/// drops old and deleted keys' rows); puts them back if that fails.
async fn flush(usage: &Usage, store: &Store, prune: bool) -> Result<(), StoreError> {
    let deltas = usage.take_deltas();
    if deltas.is_empty() && !prune {
        return Ok(());
    }
    let result = store.flush_usage(&deltas, now_ms(), prune).await;
    if result.is_err() {
        usage.requeue(&deltas, now_ms());
    }
    result
}

/// Puts back into `usage` the counts `store` kept for this process (on
/// sled: those flushed before a restart), as counts flushed already.
pub(super) async fn restore(usage: &Usage, store: &Store) -> Result<(), StoreError> {
    let now = now_ms();
    let kept = store.load_usage(now).await?;
    usage.restore(&kept, now);
    Ok(())
}

impl Signet {
    /// The per-key usage counts of this process: a follower hands them
    /// upstream with `take_deltas`, an upstream adds a follower's with
    /// `absorb`.
    pub fn usage(&self) -> &Arc<Usage> {
        self.verifier.usage()
    }

    /// Flushes the usage counts not flushed yet into the store (at
    /// shutdown: on sled, so that they count again after a restart), for at
    /// most [`SHUTDOWN_FLUSH`]. A failure is logged, not returned: the
    /// counts are advisory, and a database that is away must not hold up
    /// the shutdown.
    pub async fn flush_usage(&self) {
        let Some(store) = &self.store else {
            return; // a follower hands its counts upstream
        };
        let usage = self.usage();
        usage.tick(now_ms());
        match tokio::time::timeout(SHUTDOWN_FLUSH, flush(usage, store, false)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not flush key usage to the store"),
            Err(_) => tracing::warn!("gave up flushing key usage to the store at shutdown"),
        }
    }

    /// The usage of each of `records`, in order: on a shared store, what
    /// every instance flushed plus what this one has not yet; else this
    /// process's own.
    pub async fn usage_of(
        &self,
        records: &[PublicKeyRecord],
    ) -> Result<Vec<KeyUsage>, ServiceError> {
        let now = now_ms();
        let usage = self.usage();
        if !self.store.as_ref().is_some_and(Store::is_shared) {
            return Ok(records.iter().map(|r| usage.local(r.id, now)).collect());
        }
        let ids: Vec<KeyId> = records.iter().map(|r| r.id).collect();
        let stored = self.storage(self.store()?.usage_of(&ids, now)).await?;
        Ok(ids
            .iter()
            .map(|id| {
                let flushed = stored.get(id).copied().unwrap_or_default();
                flushed.plus(usage.unsent(*id, now))
            })
            .collect())
    }

    /// Whether key `id` of `org` verified a token in the last `window`.
    pub async fn used_within(
        &self,
        org: &OrgId,
        id: KeyId,
        window: Duration,
    ) -> Result<bool, ServiceError> {
        let record = self
            .storage(self.store()?.get_key(id))
            .await?
            .filter(|r| &r.org == org)
            .ok_or(ServiceError::NotFound(id))?;
        let usage = self.usage_of(std::slice::from_ref(&record)).await?;
        let since = now_ms().saturating_sub(window.as_millis().min(u64::MAX as u128) as u64);
        Ok(usage[0].used_since(since))
    }

    /// Every organisation that holds keys, with how many, by id.
    pub async fn organisations(&self) -> Result<Vec<(OrgId, usize)>, ServiceError> {
        let mut counts: std::collections::BTreeMap<OrgId, usize> = Default::default();
        for record in self.list_all().await? {
            *counts.entry(record.org).or_default() += 1;
        }
        Ok(counts.into_iter().collect())
    }

    /// Walks one organisation's audit chain: the number of events
    /// checked, or its first broken link.
    pub async fn verify_org_audit(
        &self,
        org: &OrgId,
    ) -> Result<Result<usize, crate::audit::BrokenLink>, ServiceError> {
        self.storage(self.store()?.verify_org_audit(org.clone()))
            .await
    }
}
