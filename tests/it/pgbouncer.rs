//! signet behind a real PgBouncer in transaction mode, with
//! `server_round_robin = 1` so that transactions land on different server
//! connections: three instances polling keep every
//! revocation, fence while PgBouncer is paused or killed and recover; an
//! instance left at `notify = "listen"` falls back to polling, or (when
//! PgBouncer refuses startup options) exits naming the cause. It falls
//! back behind PgBouncer's default reuse too (the server connection freed
//! last is the next one handed out), where every statement of an idle
//! client may run on one server connection.
//!
//! Without PgBouncer installed these tests fail: they never pass silently.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use signet::config::{Config, Notify, Secret};

use crate::backends::Database;
use crate::pg;
use crate::support::*;

/// A PgBouncer in transaction mode in front of `127.0.0.1:upstream`,
/// run as `postgres` when the tests run as root (it refuses root).
struct PgBouncer {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    as_postgres: bool,
}

/// How a PgBouncer hands out its server connections.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reuse {
    /// In turn (`server_round_robin = 1`).
    RoundRobin,
    /// The one freed last first (PgBouncer's default).
    LastFreed,
}

fn binary() -> PathBuf {
    let found = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "PgBouncer is not installed (apt-get install pgbouncer): the pooler tests cannot run"
        )
    })
}

impl PgBouncer {
    /// Starts one; `ignore_options` says whether it lets the startup
    /// parameter `options` through (ignored) or refuses it (PgBouncer's
    /// default), and `reuse` how it hands out server connections.
    fn start(upstream: u16, ignore_options: bool, reuse: Reuse) -> PgBouncer {
        let dir = tempfile::Builder::new()
            .prefix("signet-pgbouncer-")
            .tempdir()
            .unwrap()
            .keep();
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ignore = match ignore_options {
            true => "extra_float_digits,options",
            false => "extra_float_digits",
        };
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port={upstream}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\n\
                 pool_mode = transaction\nserver_round_robin = {round_robin}\n\
                 default_pool_size = 6\nmax_client_conn = 500\n\
                 admin_users = postgres\nignore_startup_parameters = {ignore}\n\
                 logfile = {log}\npidfile = {pid}\n",
                users = dir.join("users.txt").display(),
                round_robin = u8::from(reuse == Reuse::RoundRobin),
                log = dir.join("pgbouncer.log").display(),
                pid = dir.join("pgbouncer.pid").display(),
            ),
        )
        .unwrap();
        if as_postgres {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let mut bouncer = PgBouncer {
            dir,
            port,
            child: None,
            as_postgres,
        };
        bouncer.run();
        bouncer
    }

    /// Starts the process (again) and waits until it takes connections.
    fn run(&mut self) {
        let mut cmd = match self.as_postgres {
            true => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(binary());
                c
            }
            false => Command::new(binary()),
        };
        let child = cmd
            .arg(self.dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "pgbouncer did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it outright (no goodbye to anyone).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // runuser passes signals on; kill the pgbouncer itself too.
            if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
                let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.join("pgbouncer.pid"));
    }

    /// Runs `command` on its admin console.
    fn admin(&self, command: &str, psql: &Path) {
        let out = Command::new(psql)
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "pgbouncer", "-c"])
            .arg(command)
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    fn url(&self, database: &Database) -> String {
        let name = database.url.rsplit('/').next().unwrap();
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn psql() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/psql"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().expect("psql")
}

async fn verify_status(app: &TestApp, token: &str) -> (u16, bool) {
    let body = serde_json::to_vec(&json!({ "token": token })).unwrap();
    let r = app
        .request(
            hyper::Method::POST,
            "/v1/verify",
            &[("content-type", "application/json")],
            body,
        )
        .await;
    let valid = r.status.as_u16() == 200 && r.json()["valid"] == true;
    (r.status.as_u16(), valid)
}

fn behind(bouncer: &PgBouncer, database: &Database, notify: Notify) -> impl FnOnce(&mut Config) {
    let url = bouncer.url(database);
    let seal = database.seal_key_file.clone();
    move |c: &mut Config| {
        c.storage.backend = signet::config::Backend::Postgres;
        c.storage.url = Some(Secret::new(url));
        c.storage.seal_key_file = Some(seal);
        c.cluster.notify = notify;
        c.cluster.max_staleness_ms = 1000;
        c.cluster.statement_timeout_ms = 2000;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_behind_a_transaction_pooling_pgbouncer_keep_every_revocation() {
    let cluster = pg::shared().expect("PostgreSQL for the pooler tests");
    let mut bouncer = PgBouncer::start(cluster.port, true, Reuse::RoundRobin);
    let dir = tempfile::tempdir().unwrap();
    let database = Database::on(cluster, dir.path());
    // Two polling; one left at the default, which must find out.
    let a = spawn_with(behind(&bouncer, &database, Notify::Poll)).await;
    let b = spawn_with(behind(&bouncer, &database, Notify::Poll)).await;
    let c = spawn_with(behind(&bouncer, &database, Notify::Listen)).await;
    let apps = [&a, &b, &c];
    let limit = Duration::from_secs(10);
    eventually("the one left listening polls", limit, || async {
        polling(&c).await == Some(true)
    })
    .await;

    // Creates through each, verified everywhere; deletes through each,
    // refused everywhere the moment each DELETE has answered.
    let mut tokens = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        for j in 0..3 {
            let org = format!("org{i}{j}");
            let created = app.create_key(&org, json!({"name": "k"})).await;
            let (kid, signer) = key_of(&created);
            tokens.push((
                org.clone(),
                kid.clone(),
                signer.org_token(&kid, claims(&org, "OWNER")),
            ));
        }
    }
    for (_, _, token) in &tokens {
        for app in apps {
            eventually("every instance verifies every key", limit, || async {
                verify_status(app, token).await.1
            })
            .await;
        }
    }
    let mut waits = Vec::new();
    for (n, (org, kid, token)) in tokens.iter().enumerate() {
        let through = apps[n % 3];
        let started = Instant::now();
        let r = through.delete_key(org, kid, ADMIN).await;
        waits.push(started.elapsed());
        assert_eq!(r.status.as_u16(), 204, "{}", r.text());
        for app in apps {
            assert!(
                !verify_status(app, token).await.1,
                "a token of a deleted key was accepted after its DELETE answered"
            );
        }
        // A second DELETE (404) holds too.
        let r = apps[(n + 1) % 3].delete_key(org, kid, ADMIN).await;
        assert_eq!(r.status.as_u16(), 404);
    }
    waits.sort();
    eprintln!(
        "behind PgBouncer (polling): DELETE p50 {:?}, max {:?}",
        waits[waits.len() / 2],
        waits[waits.len() - 1]
    );

    let live = a.create_key("acme", json!({"name": "live"})).await;
    let (kid, signer) = key_of(&live);
    let token = signer.org_token(&kid, claims("acme", "OWNER"));
    for app in apps {
        eventually("the live key verifies", limit, || async {
            verify_status(app, &token).await.1
        })
        .await;
    }

    // Paused: queries wait in PgBouncer; every instance fences, writes
    // answer 503 within their timeout; resumed: all recover.
    bouncer.admin("PAUSE", &psql());
    for app in apps {
        eventually("paused: the instance fences", limit, || async {
            verify_status(app, &token).await.0 == 503
        })
        .await;
    }
    let started = Instant::now();
    let r = a
        .create_key_raw("acme", &json!({"name": "paused"}), ADMIN)
        .await;
    r.assert_error(503, "unavailable");
    assert!(started.elapsed() <= Duration::from_secs(6));
    bouncer.admin("RESUME", &psql());
    for app in apps {
        eventually("resumed: verifying again", limit * 2, || async {
            verify_status(app, &token).await.1
        })
        .await;
    }

    // Killed: the same, and back once it is.
    bouncer.kill();
    for app in apps {
        eventually("killed: the instance fences", limit, || async {
            verify_status(app, &token).await.0 == 503
        })
        .await;
    }
    let r = b
        .create_key_raw("acme", &json!({"name": "killed"}), ADMIN)
        .await;
    r.assert_error(503, "unavailable");
    bouncer.run();
    for app in apps {
        eventually("restarted: verifying again", limit * 2, || async {
            verify_status(app, &token).await.1
        })
        .await;
    }
    let r = c.delete_key("acme", &kid, ADMIN).await;
    assert_eq!(r.status.as_u16(), 204);
    for app in apps {
        assert!(!verify_status(app, &token).await.1);
    }
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

/// Whether `app` polls for key changes, by its `/metrics`.
async fn polling(app: &TestApp) -> Option<bool> {
    let r = send(
        hyper::Method::GET,
        &app.url("/metrics"),
        &[],
        bytes::Bytes::new(),
    )
    .await;
    let text = r.text();
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("signet_cluster_polling "))?;
    Some(value.parse::<f64>().ok()? == 1.0)
}

/// Behind PgBouncer's default reuse, an idle instance's statements may all
/// run on one server connection, so a probe by one client alone can pass
/// by chance: every start falls back to polling all the same.
#[tokio::test(flavor = "multi_thread")]
async fn listening_behind_a_pgbouncer_that_reuses_the_last_connection_falls_back_every_time() {
    let cluster = pg::shared().expect("PostgreSQL for the pooler tests");
    let bouncer = PgBouncer::start(cluster.port, true, Reuse::LastFreed);
    let dir = tempfile::tempdir().unwrap();
    let database = Database::on(cluster, dir.path());
    for start in 0..4 {
        let app = spawn_with(behind(&bouncer, &database, Notify::Listen)).await;
        eventually(
            &format!("start {start}: the instance polls"),
            Duration::from_secs(10),
            || async { polling(&app).await == Some(true) },
        )
        .await;
        app.stop().await;
    }
    // Without a pooler, an instance listens.
    let app = spawn_with(|c| database.configure(c)).await;
    assert_eq!(
        polling(&app).await,
        Some(false),
        "an instance on PostgreSQL itself listens"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn listening_behind_a_pgbouncer_that_refuses_startup_options_fails_naming_the_cause() {
    let cluster = pg::shared().expect("PostgreSQL for the pooler tests");
    let bouncer = PgBouncer::start(cluster.port, false, Reuse::RoundRobin);
    let dir = tempfile::tempdir().unwrap();
    let database = Database::on(cluster, dir.path());
    let mut config = config(dir.path());
    behind(&bouncer, &database, Notify::Listen)(&mut config);
    let err = match signet::app::Application::build(config).await {
        Ok(_) => panic!("started behind a pooler it cannot listen through"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("cluster.notify"), "{err}");
    assert!(err.contains("PgBouncer"), "{err}");
    // Polling, the same pooler serves.
    let app = spawn_with(behind(&bouncer, &database, Notify::Poll)).await;
    app.create_key("acme", json!({"name": "k"})).await;
    app.stop().await;
}
