//! signet's scale targets, measured on a real data directory: by default
//! 50,000 keys in 10,000 organisations (5 each); `SCALE_ORGS=200000` gives
//! the million-key case.
//!
//!   cargo bench --bench scale
//!   SCALE_ORGS=200000 SCALE_DATA_DIR=/var/tmp/scale-1m cargo bench --bench scale
//!
//! Seeds a temporary data dir through `Store::insert_key` (each insert is
//! synced, as in production), drops the store, then measures in this process:
//! - startup: `Application::build` on that dir (open sled, read every
//!   sealed record in batches, opened on every core, into the JWK Sets),
//!   median of 3, and its parts (`Store::open`, `SledStore::each_key` into
//!   a `jwks::Loading`, `Jwks::loaded`) timed separately, and the first
//!   build of the global JWK Set (built on request);
//! - resident memory (VmRSS) before seeding, after seeding and dropping the
//!   store, and after `Application::build`;
//! - per-organisation JWKS latency: sequential `GET
//!   /v1/organisations/{org}/jwks.json` for random organisations, p50/p99,
//!   side by side with a server whose data dir holds 5 keys in 1 organisation
//!   (both servers run at once; rounds alternate between them).
//!
//! Five RSA keys are generated and their SPKIs reused in every organisation
//! under distinct ids (the same key twice in one organisation is refused):
//! nothing measured here depends on the keys being different, and generating 50,000
//! keys would take an hour.
//!
//! Memory is measured with the binary's allocator (jemalloc, as in
//! `src/main.rs`); "trimmed" figures purge jemalloc's arenas first (and
//! glibc's heap, which the C libraries still use), so they show live data.
//!
//! Startup time and RSS are also measured in fresh processes (this program
//! re-executed with SCALE_CHILD set), as a restarted server would see them,
//! free of the seeding's allocations.
//!
//! Environment knobs (optional): SCALE_ORGS (default 10000), SCALE_REQUESTS
//! (default 2000 per data dir), SCALE_SEED_THREADS (default 4), SCALE_DATA_DIR
//! (keep the big data dir there, and reuse it if a run already seeded it
//! with as many organisations: seeding a million keys takes minutes).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;

use signet::app::Application;
use signet::audit::{Action, Actor, NewEvent};
use signet::config::{Config, Secret};
use signet::jwks::{Jwks, Loading};
use signet::keys::{generate, KeyName, KeySpec, OrgId, PublicKeyRecord};
use signet::seal::Sealer;
use signet::store::sled::SledStore as Store;
use signet::store::Inserted;

/// The binary's allocator (`src/main.rs`), so that memory is measured as
/// the server uses it.
#[cfg(unix)]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const KEYS_PER_ORG: usize = 5;
const SEAL_KEY: [u8; 32] = [7u8; 32];
const ROUNDS: usize = 4;
const WARMUP: usize = 100;
const STARTUP_RUNS: usize = 3;
/// Organisations whose documents are built, then asked for again, in one
/// start-up's parts.
const ORG_SAMPLE: usize = 2000;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;
type Shutdown = tokio::sync::oneshot::Sender<()>;
type ServerTask = tokio::task::JoinHandle<()>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// VmRSS of this process, in MiB.
fn rss_mib() -> f64 {
    proc_status_kib("VmRSS:") / 1024.0
}

/// Peak resident memory (VmHWM) of this process, in MiB.
fn hwm_mib() -> f64 {
    proc_status_kib("VmHWM:") / 1024.0
}

/// Returns freed memory to the kernel, so that RSS shows live data rather
/// than what the allocators keep for reuse: jemalloc's dirty pages (every
/// arena purged), and glibc's free heap (aws-lc's C allocations, which
/// jemalloc's prefixed symbols do not take, in the binary as here).
fn trim() {
    #[cfg(unix)]
    {
        // `arena.<MALLCTL_ARENAS_ALL>.purge`: neither reads nor writes a
        // value, so every pointer is null (the tikv-jemalloc-ctl wrappers
        // pass a non-null one, which jemalloc refuses).
        let name = b"arena.4096.purge\0";
        // SAFETY: a NUL-terminated name; jemalloc reads nothing else.
        let ret = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(ret, 0, "jemalloc's arena.4096.purge");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's malloc_trim only releases free heap pages; no
        // pointers are invalidated.
        unsafe {
            malloc_trim(0);
        }
    }
}

fn proc_status_kib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("a VmRSS/VmHWM line in /proc/self/status")
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn org_name(i: usize) -> String {
    format!("org-{i:05}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of `xs` (any order).
fn pct(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn median(xs: &[f64]) -> f64 {
    pct(xs, 50.0)
}

/// Seeds `dir` with `orgs` organisations of `KEYS_PER_ORG` keys each, the
/// k-th of each holding `spkis[k]`, through the production insert path
/// (synced per insert). Several threads insert at once so that their syncs
/// overlap.
fn seed(dir: &Path, spkis: &[Vec<u8>], orgs: usize, threads: usize) {
    let store = Store::open(dir, Sealer::from_keys(&[SEAL_KEY])).expect("open store for seeding");
    let total = orgs * KEYS_PER_ORG;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let threads = threads.clamp(1, orgs.max(1));
    std::thread::scope(|s| {
        for t in 0..threads {
            let (store, done) = (&store, &done);
            s.spawn(move || {
                for org in (t..orgs).step_by(threads) {
                    let org_id = OrgId::parse(&org_name(org)).expect("valid org id");
                    for (k, spki) in spkis.iter().enumerate().take(KEYS_PER_ORG) {
                        let id = store.new_id();
                        let record = PublicKeyRecord {
                            id,
                            org: org_id.clone(),
                            name: KeyName::parse(&format!("scale key {k}")).expect("valid name"),
                            spec: KeySpec::default(),
                            spki_der: spki.clone(),
                            created_at_ms: id.timestamp_ms(),
                            life: Default::default(),
                        };
                        let event = |action, outcome: &str| NewEvent {
                            action,
                            key_id: Some(id),
                            actor: Actor::Cli,
                            client: None,
                            outcome: outcome.into(),
                        };
                        let inserted = store
                            .insert_key(
                                &record,
                                KEYS_PER_ORG as u32,
                                event(Action::KeyCreated, "created"),
                                event(Action::QuotaExceeded, "refused"),
                            )
                            .expect("insert_key");
                        assert!(matches!(inserted, Inserted::Yes(_)), "{inserted:?}");
                        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        if n % 10_000 == 0 && total >= 10_000 {
                            eprintln!(
                                "[scale]   {n}/{total} keys inserted ({:.0} s)",
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                }
            });
        }
    });
}

fn config(dir: &Path) -> Config {
    let mut config = Config::default();
    config.storage.data_dir = dir.to_owned();
    config.storage.seal_key = Some(Secret::new(
        SEAL_KEY.iter().map(|b| format!("{b:02x}")).collect(),
    ));
    config.server.listen = "127.0.0.1:0".parse().expect("socket address");
    config.auth.admin_token = Some(Secret::new("scale-bench-operator-token-0123456789".into()));
    config.keys.pool_2048 = 0;
    config.keys.max_per_org = KEYS_PER_ORG as u32;
    config
}

async fn build_timed(dir: &Path) -> (Application, Duration) {
    let started = Instant::now();
    let app = Application::build(config(dir))
        .await
        .expect("Application::build");
    (app, started.elapsed())
}

fn serve(app: Application) -> (SocketAddr, Shutdown, ServerTask) {
    let addr = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run_until(async {
            let _ = rx.await;
        })
        .await
        .expect("server stops cleanly");
    });
    (addr, tx, task)
}

async fn stop(shutdown: Shutdown, task: ServerTask) {
    let _ = shutdown.send(());
    task.await.expect("server task");
}

/// GETs `path`, returning the time to the whole body, and the body.
async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> (Duration, Bytes) {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .expect("request");
    let started = Instant::now();
    let res = client.request(req).await.expect("server answers");
    let status = res.status();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{path}: {body:?}");
    (elapsed, body)
}

fn kid_count(body: &[u8]) -> usize {
    body.windows(6).filter(|w| w == b"\"kid\":").count()
}

/// One server under test: where it listens and how many orgs it has.
struct Target {
    addr: SocketAddr,
    orgs: usize,
    latencies_ms: Vec<f64>,
    round_p99s: Vec<f64>,
}

impl Target {
    async fn round(&mut self, client: &HttpClient, n: usize, record: bool) {
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let org = rand::thread_rng().gen_range(0..self.orgs);
            let path = format!("/v1/organisations/{}/jwks.json", org_name(org));
            let (t, body) = get(client, self.addr, &path).await;
            assert_eq!(kid_count(&body), KEYS_PER_ORG, "{path} holds 5 keys");
            lat.push(ms(t));
        }
        if record {
            self.round_p99s.push(pct(&lat, 99.0));
            self.latencies_ms.extend(lat);
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match std::env::var("SCALE_CHILD") {
        Ok(mode) => {
            let dir = PathBuf::from(std::env::var("SCALE_DIR").expect("SCALE_DIR"));
            runtime.block_on(child(&mode, &dir));
        }
        Err(_) => runtime.block_on(run()),
    }
}

/// One startup in a fresh process, as a restarted server does it; prints
/// `name=value` pairs (times in ms, memory in MiB) on one line.
async fn child(mode: &str, dir: &Path) {
    let rss0 = rss_mib();
    match mode {
        "build" => {
            let (app, t) = build_timed(dir).await;
            let rss = rss_mib();
            trim();
            println!(
                "build={:.3} rss0={rss0:.1} rss={rss:.1} rss_trimmed={:.1} hwm={:.1}",
                ms(t),
                rss_mib(),
                hwm_mib()
            );
            drop(app);
        }
        "parts" => {
            let t = Instant::now();
            let store = Store::open(dir, Sealer::from_keys(&[SEAL_KEY])).expect("Store::open");
            let (open, rss_open) = (ms(t.elapsed()), rss_mib());
            let t = Instant::now();
            let mut loading = Loading::default();
            store
                .each_key(|batch| batch.iter().for_each(|r| loading.add(r)))
                .expect("each_key");
            let (read, rss_read) = (ms(t.elapsed()), rss_mib());
            let keys = loading.len();
            let t = Instant::now();
            let jwks = Jwks::loaded(loading);
            let (prep, rss_jwks) = (ms(t.elapsed()), rss_mib());
            // Memory freed but kept by the allocators vs still live.
            trim();
            let rss_trimmed = rss_mib();
            drop(store);
            trim();
            let rss_no_store = rss_mib();
            // Per-organisation documents: built on first request, then kept.
            let orgs = keys / KEYS_PER_ORG;
            let sample: Vec<OrgId> = (0..ORG_SAMPLE.min(orgs))
                .map(|_| OrgId::parse(&org_name(rand::thread_rng().gen_range(0..orgs))).unwrap())
                .collect();
            let time_all = |sample: &[OrgId]| {
                let t = Instant::now();
                let bytes: usize = sample.iter().map(|org| jwks.of(org).body.len()).sum();
                assert!(bytes > 0);
                t.elapsed().as_secs_f64() * 1e6 / sample.len() as f64
            };
            let (org_build_us, org_kept_us) = (time_all(&sample), time_all(&sample));
            // Every organisation's document asked for once: what is kept
            // stays within its bound.
            for i in 0..orgs {
                jwks.of(&OrgId::parse(&org_name(i)).unwrap());
            }
            trim();
            let rss_kept = rss_mib();
            // The global document, built on its first request.
            let t = Instant::now();
            let global = jwks.all();
            let (global_ms, rss_global) = (ms(t.elapsed()), rss_mib());
            let global_doc = global.body.len();
            drop(global);
            drop(jwks);
            trim();
            let rss_nothing = rss_mib();
            println!(
                "open={open:.3} read={read:.3} jwks={prep:.3} keys={keys} rss0={rss0:.1} \
                 rss_open={rss_open:.1} rss_read={rss_read:.1} rss_jwks={rss_jwks:.1} \
                 rss_trimmed={rss_trimmed:.1} \
                 rss_no_store={rss_no_store:.1} rss_nothing={rss_nothing:.1} hwm={:.1} \
                 global_ms={global_ms:.3} rss_global={rss_global:.1} global_doc_mb={:.3} \
                 org_build_us={org_build_us:.3} org_kept_us={org_kept_us:.3} \
                 rss_kept={rss_kept:.1}",
                hwm_mib(),
                global_doc as f64 / 1e6,
            );
        }
        other => panic!("unknown SCALE_CHILD mode {other}"),
    }
}

type Fields = HashMap<String, f64>;

/// Runs `child(mode, dir)` in a new process of this program; its fields.
fn spawn_child(mode: &str, dir: &Path) -> Fields {
    let out = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .env("SCALE_CHILD", mode)
        .env("SCALE_DIR", dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("spawn a child process");
    assert!(out.status.success(), "child {mode} failed: {}", out.status);
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().expect("a number")))
        .collect()
}

fn field(runs: &[Fields], key: &str) -> Vec<f64> {
    runs.iter().map(|r| r[key]).collect()
}

fn list(xs: &[f64], decimals: usize) -> String {
    xs.iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

async fn run() {
    let orgs = env_usize("SCALE_ORGS", 10_000).max(1);
    let requests = env_usize("SCALE_REQUESTS", 2_000).max(ROUNDS);
    let seed_threads = env_usize("SCALE_SEED_THREADS", 4).max(1);
    let total = orgs * KEYS_PER_ORG;
    let temp_dir = tempfile::tempdir().expect("temp dir");
    let kept_dir = std::env::var_os("SCALE_DATA_DIR").map(PathBuf::from);
    let big_dir = kept_dir.clone().unwrap_or(temp_dir.path().to_owned());
    // Beside a kept data dir: it was seeded with this many organisations.
    let seeded = kept_dir.map(|dir| dir.with_extension(format!("seeded-{orgs}")));
    let small_dir = tempfile::tempdir().expect("temp dir");

    let rss_before = rss_mib();
    eprintln!("[scale] generating {KEYS_PER_ORG} RSA-2048 key pairs");
    let spkis: Vec<Vec<u8>> = (0..KEYS_PER_ORG)
        .map(|_| generate(KeySpec::default()).spki_der().to_vec())
        .collect();

    let started = Instant::now();
    if let Some(marker) = seeded.as_ref().filter(|m| m.exists()) {
        eprintln!(
            "[scale] reusing {} ({})",
            big_dir.display(),
            marker.display()
        );
    } else {
        eprintln!(
            "[scale] seeding {total} keys in {orgs} organisations \
             ({seed_threads} threads, each insert synced)"
        );
        seed(&big_dir, &spkis, orgs, seed_threads);
        if let Some(marker) = &seeded {
            std::fs::write(marker, b"").expect("mark the data dir seeded");
        }
    }
    let seed_time = started.elapsed();
    let rss_seeded = rss_mib();
    let disk_mib = dir_size(&big_dir) as f64 / (1024.0 * 1024.0);
    eprintln!(
        "[scale] seeded in {:.1} s; data dir {disk_mib:.1} MiB; RSS {rss_seeded:.1} MiB",
        seed_time.as_secs_f64(),
    );

    // Startup on the big data dir, in this process.
    let (big_app, first_build) = build_timed(&big_dir).await;
    let rss_built = rss_mib();
    let hwm_built = hwm_mib();
    eprintln!(
        "[scale] Application::build: {:.0} ms; RSS {rss_built:.1} MiB",
        ms(first_build)
    );

    // The small data dir: 5 keys in 1 organisation, same insert path.
    seed(small_dir.path(), &spkis, 1, 1);
    let (small_app, small_first_build) = build_timed(small_dir.path()).await;

    let (big_addr, big_stop, big_task) = serve(big_app);
    let (small_addr, small_stop, small_task) = serve(small_app);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    // The global document at this size, once (informational).
    let (global_time, global_body) = get(&client, big_addr, "/.well-known/jwks.json").await;
    assert_eq!(
        kid_count(&global_body),
        total,
        "global JWKS holds every key"
    );
    let (global_again, again) = get(&client, big_addr, "/.well-known/jwks.json").await;
    assert_eq!(again, global_body, "the same document, kept");
    let global_mb = global_body.len() as f64 / 1e6;
    drop((again, global_body));

    let mut big = Target {
        addr: big_addr,
        orgs,
        latencies_ms: Vec::new(),
        round_p99s: Vec::new(),
    };
    let mut small = Target {
        addr: small_addr,
        orgs: 1,
        latencies_ms: Vec::new(),
        round_p99s: Vec::new(),
    };
    eprintln!(
        "[scale] per-org JWKS: {requests} sequential GETs per data dir, \
         {ROUNDS} alternating rounds"
    );
    big.round(&client, WARMUP, false).await;
    small.round(&client, WARMUP, false).await;
    let per_round = requests / ROUNDS;
    for r in 0..ROUNDS {
        // Alternate which goes first, so neither always follows the other.
        if r % 2 == 0 {
            big.round(&client, per_round, true).await;
            small.round(&client, per_round, true).await;
        } else {
            small.round(&client, per_round, true).await;
            big.round(&client, per_round, true).await;
        }
    }
    drop(client);
    stop(big_stop, big_task).await;
    stop(small_stop, small_task).await;

    // Startup again, each in a fresh process as a restarted server: whole
    // builds (alternating data dirs), then the parts of one, step by step.
    eprintln!(
        "[scale] startup in fresh processes: {STARTUP_RUNS}× build per data dir, \
         {STARTUP_RUNS}× its parts"
    );
    let (mut big_runs, mut small_runs) = (Vec::new(), Vec::new());
    for _ in 0..STARTUP_RUNS {
        big_runs.push(spawn_child("build", &big_dir));
        small_runs.push(spawn_child("build", small_dir.path()));
    }
    let parts: Vec<Fields> = (0..STARTUP_RUNS)
        .map(|_| spawn_child("parts", &big_dir))
        .collect();
    assert!(parts.iter().all(|p| p["keys"] as usize == total));

    let big_builds = field(&big_runs, "build");
    let small_builds = field(&small_runs, "build");
    let build = median(&big_builds);
    let part = |key: &str| median(&field(&parts, key));
    let (open, read, prep) = (part("open"), part("read"), part("jwks"));
    let fresh_rss = median(&field(&big_runs, "rss"));
    let fresh_hwm = median(&field(&big_runs, "hwm"));
    let small_rss = median(&field(&small_runs, "rss"));
    // The targets: 1 s and 150 MB at 50,000 keys; 3 s and 1 GiB at a million.
    let (startup_target, rss_target, targets) = if total >= 1_000_000 {
        (3000.0, 1024.0, ("≤ 3 s", "≤ 1 GiB"))
    } else {
        (1000.0, 150.0 / 1.048_576, ("≤ 1 s", "≤ 150 MB"))
    };
    let below = |mib: f64| mib <= rss_target;
    let per_key = |mib: f64| mib * 1024.0 * 1024.0 / total as f64;
    let (b, s) = (&big.latencies_ms, &small.latencies_ms);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());

    println!();
    println!(
        "signet scale bench: {total} keys in {orgs} organisations ({KEYS_PER_ORG} each) \
         vs 5 keys in 1; {cpus} CPUs shared with other work; seeding took {:.0} s \
         ({:.2} ms per synced insert, {seed_threads} threads); data dir {disk_mib:.1} MiB",
        seed_time.as_secs_f64(),
        ms(seed_time) / total as f64 * seed_threads as f64,
    );
    println!();
    println!("| measurement | {total} keys / {orgs} orgs | 5 keys / 1 org | target |");
    println!("| --- | ---: | ---: | --- |");
    println!(
        "| startup: `Application::build`, fresh process, median of {STARTUP_RUNS} (runs) \
         | {build:.0} ms ({} ms) | {:.1} ms ({} ms) | {}: {} |",
        list(&big_builds, 0),
        median(&small_builds),
        list(&small_builds, 1),
        targets.0,
        verdict(build <= startup_target)
    );
    println!(
        "| startup: `Application::build` in this process, first after seeding \
         | {:.0} ms | {:.1} ms | |",
        ms(first_build),
        ms(small_first_build)
    );
    println!("| … `Store::open` (sled), fresh process | {open:.0} ms | | |");
    println!(
        "| … `SledStore::each_key` into a `jwks::Loading` (read in batches, unseal + \
         parse on every core, each key copied into its compact form) | {read:.0} ms | | |"
    );
    println!(
        "| … `Jwks::loaded` (index every key; documents are built on request) | {prep:.0} ms | | |"
    );
    println!(
        "| … rest of build (verifier, metrics, token, bind) | {:.0} ms | | |",
        (build - open - read - prep).max(0.0)
    );
    println!("| RSS, this process: before seeding | {rss_before:.1} MiB | | |");
    println!("| RSS, this process: after seeding + drop of the store | {rss_seeded:.1} MiB | | |");
    println!(
        "| RSS, this process: after `Application::build` (peak {hwm_built:.1} MiB) \
         | {rss_built:.1} MiB | | {}: {} |",
        targets.1,
        verdict(below(rss_built))
    );
    println!(
        "| RSS, fresh process after `Application::build`, median (peak {fresh_hwm:.1} MiB) \
         | {fresh_rss:.1} MiB | {small_rss:.1} MiB | {}: {} |",
        targets.1,
        verdict(below(fresh_rss))
    );
    println!(
        "| … same, after purging jemalloc's arenas (and `malloc_trim(0)` for C allocations): \
         live data; the rest is freed memory the allocators keep \
         | {:.1} MiB | {:.1} MiB | |",
        median(&field(&big_runs, "rss_trimmed")),
        median(&field(&small_runs, "rss_trimmed")),
    );
    println!(
        "| … RSS, fresh process: start → `Store::open` → `each_key` → `Jwks::loaded` \
         | {:.1} → {:.1} → {:.1} → {:.1} MiB | | |",
        part("rss0"),
        part("rss_open"),
        part("rss_read"),
        part("rss_jwks"),
    );
    println!(
        "| … then, trimmed: store + JWK Sets → JWK Sets only (sled closed) → nothing \
         | {:.1} → {:.1} → {:.1} MiB | | |",
        part("rss_trimmed"),
        part("rss_no_store"),
        part("rss_nothing"),
    );
    println!(
        "| memory per key: the published keys (trimmed RSS with them − without) \
         | {:.0} B | | |",
        per_key(part("rss_no_store") - part("rss_nothing")),
    );
    println!(
        "| memory per key: the whole process after start-up (RSS / keys) | {:.0} B | | |",
        per_key(fresh_rss),
    );
    println!(
        "| global JWK Set, first build (`Jwks::all`, fresh process): time, size, RSS added \
         | {:.0} ms, {:.1} MB, +{:.1} MiB | | |",
        part("global_ms"),
        part("global_doc_mb"),
        part("rss_global") - part("rss_kept"),
    );
    println!(
        "| per-org JWK Set (`Jwks::of`, fresh process, {ORG_SAMPLE} random orgs): \
         first request (built), again (kept) | {:.1} µs, {:.1} µs | | |",
        part("org_build_us"),
        part("org_kept_us"),
    );
    println!(
        "| … every organisation's document asked for once (kept up to {} MiB): RSS added \
         | +{:.1} MiB | | |",
        signet::jwks::KEPT_BYTES >> 20,
        part("rss_kept") - part("rss_no_store"),
    );
    println!(
        "| per-org JWKS p50 (n={} each, sequential, keep-alive) | {:.3} ms | {:.3} ms | |",
        b.len(),
        median(b),
        median(s)
    );
    println!(
        "| per-org JWKS p99 | {:.3} ms | {:.3} ms | ≤ 1.2×: {:.2}×, {} |",
        pct(b, 99.0),
        pct(s, 99.0),
        pct(b, 99.0) / pct(s, 99.0),
        verdict(pct(b, 99.0) <= 1.2 * pct(s, 99.0))
    );
    println!(
        "| per-org JWKS p99 of each round (median) | {} ({:.3}) ms | {} ({:.3}) ms | |",
        list(&big.round_p99s, 3),
        median(&big.round_p99s),
        list(&small.round_p99s, 3),
        median(&small.round_p99s),
    );
    println!(
        "| global `/.well-known/jwks.json`: first GET (builds), second (kept) \
         | {:.1} ms, {:.1} ms; {:.1} MB | | |",
        ms(global_time),
        ms(global_again),
        global_mb
    );
}
