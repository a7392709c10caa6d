//! Configuration: `config.toml` defaults, then environment overrides
//! (`SIGNET_LISTEN`, `SIGNET_DATA_DIR`, `SIGNET_ADMIN_TOKEN`, `SIGNET_LOG`,
//! `ORGKEYS_MAX`, `SIGNET_SEAL_KEY` and `SIGNET_DATABASE_URL`). Unknown keys and bad values are errors that name the key
//! and the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A secret string whose `Debug` prints nothing of it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub storage: Storage,
    pub keys: Keys,
    pub auth: Auth,
    pub verify: Verify,
    pub jwks: Jwks,
    pub log: Log,
    pub cluster: Cluster,
}

/// Several instances on one PostgreSQL.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// How far behind the store's key changes an instance may be, in
    /// milliseconds, before it refuses to verify.
    pub max_staleness_ms: u64,
    /// `refuse` (503 while stale) or `serve` (keep verifying from memory).
    pub stale_verification: StaleVerification,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StaleVerification {
    #[default]
    Refuse,
    Serve,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            max_staleness_ms: 2000,
            stale_verification: StaleVerification::Refuse,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Time a client has to send its request headers.
    pub header_read_timeout_secs: u64,
    /// Most connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Time in-flight requests get to finish on shutdown.
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Where records live: `sled` (embedded, in `data_dir`) or `postgres`.
    pub backend: Backend,
    pub data_dir: PathBuf,
    /// The record seal key (64 hex characters); only ever set from
    /// `SIGNET_SEAL_KEY`. Without it, `seal_key_file` is used, else (sled
    /// only) `{data_dir}/seal.key`.
    #[serde(skip)]
    pub seal_key: Option<Secret>,
    /// A file holding the seal key (64 hex characters).
    pub seal_key_file: Option<PathBuf>,
    /// The PostgreSQL connection string (`postgres://user:password@host/db`,
    /// or `SIGNET_DATABASE_URL`).
    pub url: Option<Secret>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Sled,
    Postgres,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Keys {
    /// Most keys one organisation may hold (`ORGKEYS_MAX`).
    pub max_per_org: u32,
    /// Pre-generated 2048-bit key pairs kept in memory (0 disables).
    pub pool_2048: usize,
    /// Pre-generated 3072-bit key pairs kept in memory.
    pub pool_3072: usize,
    /// Pre-generated 4096-bit key pairs kept in memory.
    pub pool_4096: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Audience organisation tokens must carry.
    pub audience: String,
    /// SHA-256 (hex) of the operator token.
    pub admin_token_sha256: Option<String>,
    /// The operator token itself; only ever set from `SIGNET_ADMIN_TOKEN`.
    #[serde(skip)]
    pub admin_token: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Verify {
    pub leeway_secs: u64,
    pub require_exp: bool,
    pub max_token_bytes: usize,
    pub cache_capacity: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Jwks {
    /// `Cache-Control: max-age` of the JWK Sets, in seconds.
    pub max_age_secs: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A `tracing` filter such as `info` or `signet=debug` (`SIGNET_LOG`).
    pub filter: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            max_body_bytes: 64 * 1024,
            header_read_timeout_secs: 10,
            max_connections: 10_000,
            shutdown_grace_secs: 10,
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            backend: Backend::Sled,
            data_dir: PathBuf::from("./data"),
            seal_key: None,
            seal_key_file: None,
            url: None,
        }
    }
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            max_per_org: 5,
            pool_2048: 8,
            pool_3072: 0,
            pool_4096: 0,
        }
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            audience: "signet".into(),
            admin_token_sha256: None,
            admin_token: None,
        }
    }
}

impl Default for Verify {
    fn default() -> Self {
        Verify {
            leeway_secs: 30,
            require_exp: true,
            max_token_bytes: 16 * 1024,
            cache_capacity: 10_000,
        }
    }
}

impl Default for Jwks {
    fn default() -> Self {
        Jwks { max_age_secs: 60 }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            filter: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a bad value.
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    /// An environment variable has a bad value.
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Env {
        name: &'static str,
        value: String,
        reason: String,
    },
    /// A value parsed but cannot work.
    #[error("config {key} {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Config {
    /// Reads `path` (or `./config.toml` if `None` and it exists, else the
    /// built-in defaults), then applies the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, |name| std::env::var(name).ok())
    }

    pub fn load_with_env(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let default = Path::new("config.toml");
        let mut config = match path {
            Some(path) => Self::from_file(path)?,
            None if default.exists() => Self::from_file(default)?,
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.check()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(name: &'static str, value: String) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value.parse().map_err(|e: T::Err| ConfigError::Env {
                name,
                reason: e.to_string(),
                value,
            })
        }
        if let Some(v) = env("SIGNET_LISTEN") {
            self.server.listen = parse("SIGNET_LISTEN", v)?;
        }
        if let Some(v) = env("SIGNET_DATA_DIR") {
            self.storage.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env("SIGNET_SEAL_KEY") {
            self.storage.seal_key = Some(Secret(v));
        }
        if let Some(v) = env("SIGNET_DATABASE_URL") {
            self.storage.url = Some(Secret(v));
        }
        if let Some(v) = env("SIGNET_ADMIN_TOKEN") {
            self.auth.admin_token = Some(Secret(v));
        }
        if let Some(v) = env("SIGNET_LOG") {
            self.log.filter = v;
        }
        if let Some(v) = env("ORGKEYS_MAX") {
            self.keys.max_per_org = parse("ORGKEYS_MAX", v)?;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
        };
        if self.keys.max_per_org == 0 {
            return invalid("keys.max_per_org (ORGKEYS_MAX)", "must be at least 1");
        }
        if let Some(h) = &self.auth.admin_token_sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return invalid(
                    "auth.admin_token_sha256",
                    "must be 64 hexadecimal characters",
                );
            }
        }
        if matches!(&self.auth.admin_token, Some(t) if t.expose().len() < 16) {
            return invalid("SIGNET_ADMIN_TOKEN", "must be at least 16 characters");
        }
        if self.auth.audience.is_empty() {
            return invalid("auth.audience", "must not be empty");
        }
        if self.server.max_body_bytes == 0 || self.verify.max_token_bytes == 0 {
            return invalid(
                "server.max_body_bytes / verify.max_token_bytes",
                "must be positive",
            );
        }
        if [
            self.keys.pool_2048,
            self.keys.pool_3072,
            self.keys.pool_4096,
        ]
        .iter()
        .any(|&n| n > 1024)
        {
            return invalid("keys.pool_*", "must be at most 1024");
        }
        if self.server.max_connections == 0 {
            return invalid("server.max_connections", "must be at least 1");
        }
        if self.storage.backend == Backend::Postgres {
            if self.storage.url.is_none() {
                return invalid(
                    "storage.url (SIGNET_DATABASE_URL)",
                    "must be set when storage.backend is \"postgres\"",
                );
            }
            // Instances share the database: a seal key generated by one
            // would lock the others out.
            if self.storage.seal_key.is_none() && self.storage.seal_key_file.is_none() {
                return invalid(
                    "storage.seal_key_file (SIGNET_SEAL_KEY)",
                    "must be set when storage.backend is \"postgres\"",
                );
            }
        }
        Ok(())
    }

    /// Points storage at the PostgreSQL database `url` (`--database-url`).
    pub fn use_database(&mut self, url: &str) -> Result<(), ConfigError> {
        self.storage.backend = Backend::Postgres;
        self.storage.url = Some(Secret(url.to_owned()));
        self.check()
    }

    /// The record sealer: `SIGNET_SEAL_KEY`, else `storage.seal_key_file`,
    /// else (created if absent) `{data_dir}/seal.key`.
    pub fn sealer(&self) -> Result<crate::seal::Sealer, crate::seal::SealError> {
        match (&self.storage.seal_key, &self.storage.seal_key_file) {
            (None, Some(file)) => crate::seal::Sealer::load_file(file),
            (from_env, _) => crate::seal::Sealer::load_or_create(
                &self.storage.data_dir,
                from_env.as_ref().map(Secret::expose),
            ),
        }
    }

    /// The file the seal key is kept in, unless it comes from the
    /// environment.
    pub fn seal_key_file(&self) -> Option<PathBuf> {
        match (&self.storage.seal_key, &self.storage.seal_key_file) {
            (Some(_), _) => None,
            (None, Some(file)) => Some(file.clone()),
            (None, None) => Some(crate::seal::key_path(&self.storage.data_dir)),
        }
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.server.header_read_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.server.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load_with_env(Some(&path), |k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn the_shipped_config_is_the_default() {
        let shipped = include_str!("../config.toml");
        assert_eq!(Config::from_toml(shipped).unwrap(), Config::default());
    }

    #[test]
    fn env_overrides_the_file() {
        let c = load(
            "[keys]\nmax_per_org = 9\n",
            &[
                ("ORGKEYS_MAX", "3"),
                ("SIGNET_LISTEN", "127.0.0.1:0"),
                ("SIGNET_DATA_DIR", "/tmp/x"),
                ("SIGNET_LOG", "debug"),
                ("SIGNET_ADMIN_TOKEN", "0123456789abcdef"),
            ],
        )
        .unwrap();
        assert_eq!(c.keys.max_per_org, 3);
        assert_eq!(c.server.listen.port(), 0);
        assert_eq!(c.storage.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.log.filter, "debug");
        assert_eq!(c.auth.admin_token.unwrap().expose(), "0123456789abcdef");
    }

    #[test]
    fn bad_configs_name_the_cause() {
        type Env<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(&str, Env, &str)] = &[
            ("[server]\nlisten = \"nowhere\"\n", &[], "listen"),
            ("[server]\nlistn = \"127.0.0.1:1\"\n", &[], "listn"),
            ("[nope]\n", &[], "nope"),
            ("[keys]\nmax_per_org = -1\n", &[], "max_per_org"),
            ("[keys]\nmax_per_org = 0\n", &[], "max_per_org"),
            (
                "[auth]\nadmin_token_sha256 = \"abc\"\n",
                &[],
                "admin_token_sha256",
            ),
            ("", &[("ORGKEYS_MAX", "many")], "ORGKEYS_MAX"),
            ("", &[("SIGNET_LISTEN", "localhost")], "SIGNET_LISTEN"),
            ("", &[("SIGNET_ADMIN_TOKEN", "short")], "SIGNET_ADMIN_TOKEN"),
            ("[log]\nformat = \"xml\"\n", &[], "format"),
        ];
        for (toml, env, needle) in cases {
            let err = load(toml, env).expect_err(toml).to_string();
            assert!(err.contains(needle), "{toml:?} {env:?}: {err}");
        }
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let s = Secret::new("hunter2hunter2hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
