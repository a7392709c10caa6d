//! Requests refused for want of a valid credential (401): counted in
//! `/metrics` by reason, and sampled into the log at most once per
//! [`LOG_INTERVAL`], each line saying how many refusals it stands for.
//!
//! They are not audit events. The audit log records what authenticated
//! principals did; anyone can send a request without a credential, so one
//! event each would let an anonymous client fill the disk and bury real
//! history. Aggregating them into one audit event per organisation per
//! interval was the other choice, and it was not taken: the organisation
//! comes from the request's path, so a client that varies it still causes a
//! write (and a new chain) per name per interval, or needs a table of
//! pending counts that it can churn. A counter and a rate-limited log line
//! cost neither disk nor memory that a client controls.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::keys::OrgId;
use crate::metrics::ReasonLabel;

/// At most one log line about unauthenticated refusals per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

pub struct Refusals {
    counter: Family<ReasonLabel, Counter>,
    log: Throttle,
}

impl Refusals {
    pub fn new(counter: Family<ReasonLabel, Counter>) -> Refusals {
        Refusals {
            counter,
            log: Throttle::new(LOG_INTERVAL),
        }
    }

    /// Notes a request to `org` from `client` refused for `reason` (a code
    /// from a fixed set: `AuthError::reason`).
    pub fn unauthenticated(&self, org: &OrgId, client: IpAddr, reason: &'static str) {
        self.counter.get_or_create(&ReasonLabel { reason }).inc();
        if let Some(unlogged) = self.log.admit() {
            tracing::warn!(
                %org,
                %client,
                reason,
                unlogged_before = unlogged,
                "refused a request without a valid credential (sampled: one line per {}s at most; signet_unauthenticated_refusals_total counts them all)",
                LOG_INTERVAL.as_secs()
            );
        }
    }
}

/// Admits one event per interval and counts the ones it turns away.
struct Throttle {
    start: Instant,
    interval_ms: u64,
    /// Milliseconds after `start` before which nothing more is admitted.
    next_ms: AtomicU64,
    turned_away: AtomicU64,
}

impl Throttle {
    fn new(interval: Duration) -> Throttle {
        Throttle {
            start: Instant::now(),
            interval_ms: interval.as_millis().try_into().unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            turned_away: AtomicU64::new(0),
        }
    }

    /// `Some(events turned away since the last admitted one)`, or `None`.
    fn admit(&self) -> Option<u64> {
        let elapsed = self
            .start
            .elapsed()
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX);
        self.admit_at(elapsed)
    }

    fn admit_at(&self, elapsed_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Acquire);
        let admitted = elapsed_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    elapsed_ms.saturating_add(self.interval_ms),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        if admitted {
            Some(self.turned_away.swap(0, Ordering::AcqRel))
        } else {
            self.turned_away.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_admits_one_per_interval_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_secs(10));
        // (milliseconds since start, expected answer)
        let steps = [
            (0, Some(0)),
            (1, None),
            (9_999, None),
            (10_000, Some(2)),
            (10_001, None),
            (50_000, Some(1)),
            (50_000, None),
            // No overflow at the far end of time.
            (u64::MAX, Some(1)),
        ];
        for (at, expected) in steps {
            assert_eq!(t.admit_at(at), expected, "at {at} ms");
        }
    }

    #[test]
    fn concurrent_callers_get_one_admission_per_interval() {
        let t = std::sync::Arc::new(Throttle::new(Duration::from_secs(3600)));
        let admitted: usize = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || (0..10_000).filter(|_| t.admit().is_some()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, 1);
        assert_eq!(t.turned_away.load(Ordering::SeqCst), 79_999);
    }
}
