//! The storage backends side by side: the latency of the store's part of a
//! create (one `insert_key`: quota check, sealed record, audit event,
//! durable) on sled and on PostgreSQL, and start-up (`Application::build`:
//! connect, read and unseal every record, build the JWK Sets) with many
//! keys on PostgreSQL.
//!
//!   SIGNET_BENCH_DATABASE_URL=postgres://… cargo bench --bench storage
//!
//! The database must be empty (a fresh one); it is filled with
//! STORAGE_KEYS (default 50,000) keys in organisations of 5. Without the
//! variable only sled is measured. Then the latency of a delete through
//! one of 1 and of 3 instances following each other on that database
//! (each delete answers once every other instance has applied it). One RSA key's SPKI is reused under
//! distinct ids, as in the `scale` bench. Knobs: STORAGE_INSERTS (default
//! 300 sequential inserts per backend), STORAGE_SEED_TASKS (16).

use std::time::{Duration, Instant};

use signet::app::Application;
use signet::audit::{Action, Actor, NewEvent};
use signet::config::{Backend, Config, Secret};
use signet::keys::{generate, KeyName, KeySpec, OrgId, PublicKeyRecord};
use signet::service::Settings;
use signet::service::{Caller, Signet};
use signet::store::{Insert, Inserted, Store};

const KEYS_PER_ORG: usize = 5;
const SEAL_KEY_HEX: &str = "0707070707070707070707070707070707070707070707070707070707070707";
const STARTUP_RUNS: usize = 3;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(storage: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::default();
    config.storage.seal_key = Some(Secret::new(SEAL_KEY_HEX.into()));
    config.server.listen = "127.0.0.1:0".parse().expect("socket address");
    config.auth.admin_token = Some(Secret::new("storage-bench-operator-token".into()));
    config.keys.pool_2048 = 0;
    storage(&mut config);
    config
}

fn insert(store: &Store, spki: &[u8], org: &str, name: &str) -> Insert {
    let id = store.new_id();
    let created = NewEvent {
        action: Action::KeyCreated,
        key_id: Some(id),
        actor: Actor::Cli,
        client: None,
        outcome: "created".into(),
    };
    let refused = NewEvent {
        action: Action::QuotaExceeded,
        outcome: "refused".into(),
        ..created.clone()
    };
    Insert {
        record: PublicKeyRecord {
            id,
            org: OrgId::parse(org).expect("valid org id"),
            name: KeyName::parse(name).expect("valid name"),
            spec: KeySpec::default(),
            spki_der: spki.to_vec(),
            created_at_ms: id.timestamp_ms(),
            life: Default::default(),
        },
        quota: KEYS_PER_ORG as u32,
        created,
        refused,
    }
}

/// Nearest-rank percentile, in ms.
fn pct(xs: &[Duration], p: f64) -> f64 {
    let mut v: Vec<f64> = xs.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// `n` sequential inserts, each into an organisation of its own.
async fn insert_latencies(store: &Store, spki: &[u8], n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let insert = insert(store, spki, &format!("bench-{i:06}"), "bench");
        let started = Instant::now();
        let inserted = store.insert_key(insert).await.expect("insert_key");
        out.push(started.elapsed());
        assert!(matches!(inserted, Inserted::Yes(_)), "{inserted:?}");
    }
    out
}

async fn seed(store: &Store, spki: &[u8], keys: usize, tasks: usize) {
    let started = Instant::now();
    let orgs = keys.div_ceil(KEYS_PER_ORG);
    let work: Vec<_> = (0..tasks)
        .map(|t| {
            let (store, spki) = (store.clone(), spki.to_vec());
            tokio::spawn(async move {
                for org in (t..orgs).step_by(tasks) {
                    for k in 0..KEYS_PER_ORG {
                        let insert =
                            insert(&store, &spki, &format!("org-{org:05}"), &format!("k{k}"));
                        store.insert_key(insert).await.expect("seed insert");
                    }
                }
            })
        })
        .collect();
    for w in work {
        w.await.expect("seed task");
    }
    eprintln!(
        "[storage] seeded {} keys in {:.0} s",
        orgs * KEYS_PER_ORG,
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let spki = generate(KeySpec::default()).spki_der().to_vec();
        let inserts = env_usize("STORAGE_INSERTS", 300);
        let dir = tempfile::tempdir().expect("temp dir");
        let sled = config(|c| c.storage.data_dir = dir.path().to_owned());
        let store = Store::open(&sled).await.expect("open sled");
        let lat = insert_latencies(&store, &spki, inserts).await;
        println!("| backend | insert_key p50 | p99 | start-up with keys |");
        println!("| --- | --- | --- | --- |");
        println!(
            "| sled | {:.2} ms | {:.2} ms | (benches/scale.rs) |",
            pct(&lat, 50.0),
            pct(&lat, 99.0)
        );
        drop(store);

        let Ok(url) = std::env::var("SIGNET_BENCH_DATABASE_URL") else {
            println!(
                "(PostgreSQL not measured: set SIGNET_BENCH_DATABASE_URL to an empty database)"
            );
            return;
        };
        let pg = config(|c| {
            c.storage.backend = Backend::Postgres;
            c.storage.url = Some(Secret::new(url));
        });
        let store = Store::open(&pg).await.expect("open PostgreSQL");
        let lat = insert_latencies(&store, &spki, inserts).await;
        let keys = env_usize("STORAGE_KEYS", 50_000);
        seed(&store, &spki, keys, env_usize("STORAGE_SEED_TASKS", 16)).await;
        drop(store);
        let mut startups = Vec::new();
        for _ in 0..STARTUP_RUNS {
            let started = Instant::now();
            let app = Application::build(pg.clone())
                .await
                .expect("Application::build");
            startups.push(started.elapsed());
            drop(app);
        }
        println!(
            "| PostgreSQL | {:.2} ms | {:.2} ms | {:.0} ms median of {STARTUP_RUNS} ({} keys) |",
            pct(&lat, 50.0),
            pct(&lat, 99.0),
            pct(&startups, 50.0),
            keys + inserts
        );
        let deletes = env_usize("STORAGE_DELETES", 100);
        println!();
        println!("| instances on one database | delete p50 | p99 |");
        println!("| --- | --- | --- |");
        for instances in [1, 3] {
            let lat = delete_latencies(&pg, &spki, instances, deletes).await;
            println!(
                "| {instances} | {:.2} ms | {:.2} ms |",
                pct(&lat, 50.0),
                pct(&lat, 99.0)
            );
        }
    });
}

/// `n` sequential deletes through the first of `instances` services that
/// follow each other (each delete waits until the others applied it).
async fn delete_latencies(pg: &Config, spki: &[u8], instances: usize, n: usize) -> Vec<Duration> {
    let mut signets = Vec::new();
    for _ in 0..instances {
        let store = Store::open(pg).await.expect("open PostgreSQL");
        let settings = Settings {
            quota: KEYS_PER_ORG as u32,
            replicate: true,
            ..Settings::once(&Config::default())
        };
        let signet = Signet::new(store, settings).await.expect("Signet::new");
        signets.push(signet);
    }
    let store = Store::open(pg).await.expect("open PostgreSQL");
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let insert = insert(&store, spki, &format!("delete-{instances}-{i:05}"), "gone");
        ids.push((insert.record.org.clone(), insert.record.id));
        store.insert_key(insert).await.expect("insert_key");
    }
    let caller = Caller {
        actor: Actor::Cli,
        client: None,
    };
    let mut out = Vec::with_capacity(n);
    for (org, id) in ids {
        let started = Instant::now();
        signets[0].delete(org, id, &caller).await.expect("delete");
        out.push(started.elapsed());
    }
    for signet in &signets {
        signet.leave().await;
    }
    out
}
