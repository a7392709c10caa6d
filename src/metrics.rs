//! Prometheus metrics: requests by route and status, latency, verification
//! outcomes, cache counters, the number of stored keys, refusals of
//! unauthenticated requests, connections closed by deadline, and the TLS
//! certificate's expiry and reloads.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::keys::Bits;
use crate::verify::CacheStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BitsLabel {
    pub bits: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// Why a request without a valid credential was refused: a code from a
/// fixed set (`AuthError::reason`), never request text.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabel, Histogram>,
    pub verifications: Family<OutcomeLabel, Counter>,
    pub keys: Gauge,
    pub storage_errors: Counter,
    pool_depth: Family<BitsLabel, Gauge>,
    pub unauthenticated: Family<ReasonLabel, Counter>,
    /// Connections closed for hitting a deadline, by which one.
    pub connections_closed: Family<ReasonLabel, Counter>,
    /// The served TLS certificate's notAfter, in Unix seconds.
    pub tls_not_after: Gauge,
    tls_reloads: Family<ResultLabel, Counter>,
    pub cluster: ClusterMetrics,
    /// Followers of this instance, `state` = `registered` or `live`.
    pub followers: Family<StateLabel, Gauge>,
    /// Time revocations waited for followers' acknowledgements.
    pub follower_ack_seconds: Histogram,
    /// Subscribers of the change feed now.
    pub feed_subscribers: Gauge,
    /// `verifications{outcome="valid"}`, taken from its family once.
    valid: OnceLock<Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// How this instance keeps up with others on a shared store.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// The change version applied through.
    pub applied_version: Gauge,
    /// Versions behind the store when last checked.
    pub lag_versions: Gauge,
    /// Seconds since this instance last confirmed it was current,
    /// computed when scraped.
    pub fresh_age_seconds: Reading,
    /// Live instances on the store, this one included.
    pub live_instances: Gauge,
    /// Seconds since changes were announced (or a re-read failed) that
    /// this instance has not applied yet (0 when current), computed when
    /// scraped.
    pub lag_seconds: Reading,
    /// Time revocations (deletes, disables, rotations that retire the old
    /// key at once) waited for other instances to apply them.
    pub revocation_wait_seconds: Histogram,
    /// 1 while this instance polls its source for changes instead of
    /// being told of them, computed when scraped.
    pub polling: Reading,
}

/// A gauge whose value is computed when scraped, by a function set once
/// (0 until then).
#[derive(Clone, Default)]
pub struct Reading(std::sync::Arc<OnceLock<Box<dyn Fn() -> f64 + Send + Sync>>>);

impl Reading {
    /// Computes the value with `read` from now on (the first call wins).
    pub fn read_with(&self, read: impl Fn() -> f64 + Send + Sync + 'static) {
        let _ = self.0.set(Box::new(read));
    }

    /// The value now.
    pub fn get(&self) -> f64 {
        self.0.get().map_or(0.0, |read| read())
    }
}

impl std::fmt::Debug for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Reading").field(&self.get()).finish()
    }
}

impl prometheus_client::encoding::EncodeMetric for Reading {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}

impl Metrics {
    pub fn new(cache: &CacheStats) -> Metrics {
        let mut registry = Registry::with_prefix("signet");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.5, 14))
        });
        let verifications = Family::<OutcomeLabel, Counter>::default();
        let keys = Gauge::default();
        let storage_errors = Counter::default();
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer a request",
            latency.clone(),
        );
        registry.register(
            "verifications",
            "Token verifications by outcome",
            verifications.clone(),
        );
        registry.register("keys", "Live keys stored", keys.clone());
        registry.register(
            "storage_errors",
            "Failed storage operations",
            storage_errors.clone(),
        );
        registry.register(
            "verify_cache_hits",
            "Verifications served from the key cache",
            cache.hits.clone(),
        );
        registry.register(
            "verify_cache_misses",
            "Key cache misses",
            cache.misses.clone(),
        );
        registry.register(
            "verify_cache_evictions",
            "Parsed keys evicted from the cache to respect its capacity",
            cache.evictions.clone(),
        );
        registry.register(
            "verify_unknown_keys",
            "Lookups of key ids that do not exist",
            cache.unknown.clone(),
        );
        registry.register(
            "verify_token_cache_hits",
            "Tokens accepted from the verified-token cache, without a signature check",
            cache.token_hits.clone(),
        );
        registry.register(
            "verify_token_cache_misses",
            "Verified-token cache lookups that found no live entry",
            cache.token_misses.clone(),
        );
        registry.register(
            "verifications_accepted",
            "Verifications accepted on any route, organisation tokens included (the sum of every key's usage)",
            cache.accepted.clone(),
        );
        let pool_depth = Family::<BitsLabel, Gauge>::default();
        registry.register(
            "keypool_depth",
            "Pre-generated key pairs ready, by modulus size",
            pool_depth.clone(),
        );
        let unauthenticated = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "unauthenticated_refusals",
            "Management requests refused for a missing or invalid credential (401), by reason; these are not audited",
            unauthenticated.clone(),
        );
        let connections_closed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections closed for hitting a deadline, by reason",
            connections_closed.clone(),
        );
        let tls_not_after = Gauge::default();
        registry.register(
            "tls_certificate_not_after_seconds",
            "The served TLS certificate's notAfter (Unix seconds)",
            tls_not_after.clone(),
        );
        let tls_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "tls_reloads",
            "TLS certificate reloads by result (success, failure)",
            tls_reloads.clone(),
        );
        let cluster = ClusterMetrics {
            applied_version: Gauge::default(),
            lag_versions: Gauge::default(),
            fresh_age_seconds: Reading::default(),
            live_instances: Gauge::default(),
            lag_seconds: Reading::default(),
            revocation_wait_seconds: Histogram::new(exponential_buckets(0.000_1, 2.5, 14)),
            polling: Reading::default(),
        };
        registry.register(
            "cluster_applied_version",
            "The key change version this instance has applied through",
            cluster.applied_version.clone(),
        );
        registry.register(
            "cluster_lag_versions",
            "Key changes this instance was behind the store when it last checked",
            cluster.lag_versions.clone(),
        );
        registry.register(
            "cluster_fresh_age_seconds",
            "Time since this instance last confirmed it had applied every key change",
            cluster.fresh_age_seconds.clone(),
        );
        registry.register(
            "cluster_live_instances",
            "Instances with a recent heartbeat on the shared store, this one included",
            cluster.live_instances.clone(),
        );
        registry.register(
            "cluster_lag_seconds",
            "Time since key changes were announced, or a re-read of them failed, that this instance has not applied yet (0 when current)",
            cluster.lag_seconds.clone(),
        );
        registry.register(
            "cluster_revocation_wait_seconds",
            "Time deletes, disables and immediate rotations waited for every other live instance to apply them",
            cluster.revocation_wait_seconds.clone(),
        );
        registry.register(
            "cluster_polling",
            "1 while this instance polls for key changes (cluster.notify = \"poll\", or notifications found not to arrive) instead of listening",
            cluster.polling.clone(),
        );
        let followers = Family::<StateLabel, Gauge>::default();
        registry.register(
            "followers",
            "Followers registered with this instance, and those heard within max_staleness (live)",
            followers.clone(),
        );
        let follower_ack_seconds = Histogram::new(exponential_buckets(0.000_1, 2.5, 14));
        registry.register(
            "follower_ack_seconds",
            "Time deletes, disables and immediate rotations waited for every live follower to acknowledge them",
            follower_ack_seconds.clone(),
        );
        let feed_subscribers = Gauge::default();
        registry.register(
            "feed_subscribers",
            "Open streams of the change feed, followers included",
            feed_subscribers.clone(),
        );
        Metrics {
            followers,
            follower_ack_seconds,
            feed_subscribers,
            cluster,
            registry,
            requests,
            latency,
            verifications,
            keys,
            storage_errors,
            pool_depth,
            unauthenticated,
            connections_closed,
            tls_not_after,
            tls_reloads,
            valid: OnceLock::new(),
        }
    }

    /// Counts one verification by its outcome (`valid` or an error code).
    pub fn verification(&self, outcome: &'static str) {
        let counter = || self.verifications.get_or_create(&OutcomeLabel { outcome });
        match outcome {
            "valid" => self.valid.get_or_init(|| counter().clone()).inc(),
            _ => counter().inc(),
        };
    }

    /// The TLS reload counter for `result`.
    pub fn tls_reloads(&self, result: &'static str) -> Counter {
        self.tls_reloads
            .get_or_create(&ResultLabel { result })
            .clone()
    }

    /// The key pool's depth gauges, one per modulus size in `Bits::ALL` order.
    pub fn pool_depth(&self) -> [Gauge; 3] {
        Bits::ALL.map(|b| {
            self.pool_depth
                .get_or_create(&BitsLabel { bits: b.get() })
                .clone()
        })
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Each route's latency histogram and count of 200 answers, taken from
/// their families on a route's first request instead of on every one (a
/// family lookup locks it and hashes the labels). Indexed by the row of the
/// route table; a series appears only once it has counted something.
pub struct RouteSeries(Box<[(OnceLock<Counter>, OnceLock<Histogram>)]>);

impl RouteSeries {
    pub fn new(rows: usize) -> RouteSeries {
        RouteSeries((0..rows).map(|_| Default::default()).collect())
    }

    /// Counts one answer of `route` (table row `row`, if it matched one).
    pub fn observe(
        &self,
        metrics: &Metrics,
        row: Option<usize>,
        route: &'static str,
        status: u16,
        seconds: f64,
    ) {
        let requests = || {
            metrics
                .requests
                .get_or_create(&RequestLabels { route, status })
        };
        let latency = || metrics.latency.get_or_create(&RouteLabel { route });
        match row.and_then(|row| self.0.get(row)) {
            Some((ok, histogram)) => {
                if status == 200 {
                    ok.get_or_init(|| requests().clone()).inc();
                } else {
                    requests().inc();
                }
                histogram.get_or_init(|| latency().clone()).observe(seconds);
            }
            None => {
                requests().inc();
                latency().observe(seconds);
            }
        }
    }
}
