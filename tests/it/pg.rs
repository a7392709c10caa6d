//! A private PostgreSQL for the tests: `initdb --auth=trust` into a temp
//! dir, a free port, sockets in the temp dir, one cluster per test process
//! and one fresh database per test. Run as the `postgres` user when the
//! tests run as root (initdb and postgres refuse root). A watchdog shell
//! stops the cluster and removes its directory once the test process is
//! gone, however it ends.
//!
//! Without PostgreSQL binaries the PostgreSQL tests do not run and say so
//! loudly on stderr; with `CI` set they fail instead.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub struct Cluster {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    pub port: u16,
    /// Whether the server's commands run as the `postgres` user.
    as_postgres: bool,
    /// Stops the server once this process is gone; outlives it.
    watchdog: Option<std::process::Child>,
}

static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The cluster shared by this test process, started on first use; `None`
/// (after a loud banner) if PostgreSQL is not installed.
pub fn shared() -> Option<&'static Cluster> {
    SHARED
        .get_or_init(|| bin_dir().map(Cluster::start))
        .as_ref()
}

/// A cluster of the caller's own, for a test that stops and starts it.
pub fn private() -> Option<Cluster> {
    bin_dir().map(Cluster::start)
}

/// Where initdb, pg_ctl and postgres live: `SIGNET_PG_BIN`, else the
/// newest `/usr/lib/postgresql/*/bin`, else `$PATH`.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SIGNET_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    debian.sort();
    let found = debian.pop().map(|(_, bin)| bin).or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
        })
    });
    if found.is_none() {
        let why = "no initdb in /usr/lib/postgresql/*/bin or $PATH (install Debian's `postgresql` package, or set SIGNET_PG_BIN)";
        if std::env::var_os("CI").is_some() {
            panic!("PostgreSQL tests cannot run under CI: {why}");
        }
        eprintln!(
            "\n{bar}\n!! PostgreSQL tests DID NOT RUN: {why}\n{bar}\n",
            bar = "!".repeat(78)
        );
    }
    found
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `(uid, gid)` of the `postgres` user.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "running as root, the tests need a `postgres` user to run PostgreSQL as"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// A new cluster, running, stopped by a watchdog once this process is
    /// gone (or by [`Cluster::stop`]).
    pub fn start(bin: PathBuf) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("signet-pg-")
            .tempdir()
            .unwrap()
            .keep();
        let as_postgres = is_root();
        if as_postgres {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).unwrap();
        }
        let mut cluster = Cluster {
            data: root.join("data"),
            bin,
            root,
            port: free_port(),
            as_postgres,
            watchdog: None,
        };
        let mut initdb = cluster.server_cmd("initdb");
        initdb.arg("-D").arg(&cluster.data).args([
            "--auth=trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb");
        cluster.watchdog = Some(cluster.spawn_watchdog());
        cluster.start_server();
        cluster
    }

    /// Runs `program` from the bin dir, as `postgres` when we are root.
    fn server_cmd(&self, program: &str) -> Command {
        self.as_server(self.bin.join(program))
    }

    fn as_server(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub fn start_server(&self) {
        let mut pg_ctl = self.server_cmd("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.root.join("log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400",
                self.port,
                self.root.display()
            ))
            .arg("start")
            .stdout(Stdio::null());
        run(pg_ctl, "pg_ctl start");
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop_server(&self) {
        let mut pg_ctl = self.server_cmd("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-m", "fast", "stop"])
            .stdout(Stdio::null());
        run(pg_ctl, "pg_ctl stop");
    }

    fn spawn_watchdog(&self) -> std::process::Child {
        let mut sh = self.as_server("sh");
        sh.args([
            "-c",
            r#"while [ -d "/proc/$0" ]; do sleep 1; done
               "$1/pg_ctl" -D "$2" -m immediate stop >/dev/null 2>&1
               rm -rf "$3""#,
        ])
        .arg(std::process::id().to_string())
        .arg(&self.bin)
        .arg(&self.data)
        .arg(&self.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        sh.spawn().expect("start the PostgreSQL watchdog")
    }

    /// Stops the server at once and removes its directory.
    pub fn destroy(&self) {
        let mut pg_ctl = self.server_cmd("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = pg_ctl.status();
        let _ = std::fs::remove_dir_all(&self.root);
    }

    fn psql(&self, database: &str, sql: &str) -> String {
        let mut psql = Command::new(self.bin.join("psql"));
        psql.args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-qAt",
        ])
        .arg("-p")
        .arg(self.port.to_string())
        .args(["-d", database, "-c", sql])
        .stdin(Stdio::null());
        let out = psql.output().expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A fresh, empty database; its URL.
    pub fn create_database(&self) -> String {
        let name = format!(
            "signet_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs one SQL statement in the database of `url`; its output.
    pub fn sql(&self, url: &str, sql: &str) -> String {
        let database = url.rsplit('/').next().unwrap();
        self.psql(database, sql)
    }

    /// `pg_dump` of the database of `url`, plain SQL.
    pub fn dump(&self, url: &str) -> Vec<u8> {
        let out = Command::new(self.bin.join("pg_dump"))
            .args(["-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg(url.rsplit('/').next().unwrap())
            .stdin(Stdio::null())
            .output()
            .expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}
