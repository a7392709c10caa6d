//! One test body, both storage backends. `on_both_backends!(name, …)`
//! turns each `async fn name()` into the tests `name::sled` and
//! `name::postgres`; inside, `spawn_app`, `BinServer` and
//! [`storage_args`] use the backend of the running test (a fresh database
//! per data directory on PostgreSQL, found again when a test restarts the
//! server on the same directory).

use std::future::Future;
use std::path::{Path, PathBuf};

use signet::config::{Backend, Config, Secret};

use crate::pg;

tokio::task_local! {
    static BACKEND: Backend;
}

/// The backend of the running test: sled unless a test runs on PostgreSQL.
pub fn current() -> Backend {
    BACKEND.try_with(|b| *b).unwrap_or(Backend::Sled)
}

/// Runs `test` with `backend` as the current one. On PostgreSQL without
/// PostgreSQL installed, does not run it (the cluster said so loudly).
pub async fn run_on(backend: Backend, test: impl Future<Output = ()>) {
    if backend == Backend::Postgres && pg::shared().is_none() {
        return;
    }
    BACKEND.scope(backend, test).await
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn sled() {
                $crate::backends::run_on(signet::config::Backend::Sled, super::$name()).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                $crate::backends::run_on(signet::config::Backend::Postgres, super::$name()).await
            }
        }
    )*};
}

/// A private PostgreSQL cluster (for a test that stops it or cuts its
/// connections) with one fresh database, and the temp dir holding that
/// database's seal key; `None` without PostgreSQL (said loudly).
pub fn private_database() -> Option<(pg::Cluster, tempfile::TempDir, Database)> {
    let cluster = pg::private()?;
    let dir = tempfile::tempdir().unwrap();
    let database = Database::on(&cluster, dir.path());
    Some((cluster, dir, database))
}

/// The database of the data directory `dir`: created on first use, found
/// again by a file in `dir` when a test restarts the server there.
pub struct Database {
    pub url: String,
    pub seal_key_file: PathBuf,
}

impl Database {
    pub fn of(dir: &Path) -> Database {
        std::fs::create_dir_all(dir).unwrap();
        let marker = dir.join("postgres.url");
        let url = match std::fs::read_to_string(&marker) {
            Ok(url) => url,
            Err(_) => {
                let url = pg::shared().expect("PostgreSQL is there").create_database();
                std::fs::write(&marker, &url).unwrap();
                url
            }
        };
        let seal_key_file = dir.join("seal.key");
        if !seal_key_file.exists() {
            signet::seal::write_key_file(&seal_key_file, &signet::seal::random_key()).unwrap();
        }
        Database { url, seal_key_file }
    }

    /// A fresh database on `cluster`, with a new seal key file in `dir`.
    pub fn on(cluster: &pg::Cluster, dir: &Path) -> Database {
        let seal_key_file = dir.join("seal.key");
        signet::seal::write_key_file(&seal_key_file, &signet::seal::random_key()).unwrap();
        Database {
            url: cluster.create_database(),
            seal_key_file,
        }
    }

    /// Points `config` at this database.
    pub fn configure(&self, config: &mut Config) {
        config.storage.backend = Backend::Postgres;
        config.storage.url = Some(Secret::new(self.url.clone()));
        config.storage.seal_key_file = Some(self.seal_key_file.clone());
    }

    /// A config file for the binary, pointing at this database.
    pub fn config_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("postgres.toml");
        std::fs::write(
            &path,
            format!(
                "[storage]\nbackend = \"postgres\"\nurl = {:?}\nseal_key_file = {:?}\n",
                self.url, self.seal_key_file
            ),
        )
        .unwrap();
        path
    }
}

/// On PostgreSQL, points `config` at the database of its data directory.
pub fn prepare(config: &mut Config) {
    if current() == Backend::Postgres {
        Database::of(&config.storage.data_dir).configure(config);
    }
}

/// The arguments that point the binary at the storage of `dir`:
/// `--data-dir DIR` on sled, `--config FILE` on PostgreSQL.
pub fn storage_args(dir: &Path) -> Vec<String> {
    let (flag, path) = match current() {
        Backend::Sled => ("--data-dir", dir.to_owned()),
        Backend::Postgres => ("--config", Database::of(dir).config_file(dir)),
    };
    vec![
        flag.into(),
        path.to_str().expect("a UTF-8 temp path").into(),
    ]
}
