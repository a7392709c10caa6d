//! Configuration: `config.toml` defaults, then environment overrides
//! (`SIGNET_LISTEN`, `SIGNET_DATA_DIR`, `SIGNET_ADMIN_TOKEN`, `SIGNET_LOG`,
//! `ORGKEYS_MAX`, `SIGNET_SEAL_KEY`, `SIGNET_DATABASE_URL`, `SIGNET_TLS_CERT` and `SIGNET_TLS_KEY`, `SIGNET_UPSTREAM`, `SIGNET_UPSTREAM_TOKEN`, `SIGNET_FOLLOWER_TOKEN`). Unknown keys and bad values are errors that name the key
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
    pub events: Events,
    /// Set on a follower (`signet serve --upstream URL`).
    pub upstream: Option<Upstream>,
    pub followers: Followers,
    pub console: Console,
}

/// The change feed (`GET /v1/events`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Events {
    /// How often a stream sends `event: fresh`, in milliseconds.
    pub heartbeat_ms: u64,
    /// How long a subscriber may stop reading before it is disconnected.
    pub send_timeout_ms: u64,
    /// Most streams at once, followers included.
    pub max_subscribers: usize,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            heartbeat_ms: 500,
            send_timeout_ms: 5000,
            max_subscribers: 10_000,
        }
    }
}

/// What a follower follows (`[upstream]`, `SIGNET_UPSTREAM`,
/// `SIGNET_UPSTREAM_TOKEN`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    /// The upstream signet's base URL, `http://` or `https://`.
    pub url: String,
    /// A file holding the follower token.
    pub token_file: Option<PathBuf>,
    /// A CA certificate to trust besides the system's roots.
    pub cacert: Option<PathBuf>,
    /// The follower token itself; only ever set from `SIGNET_UPSTREAM_TOKEN`.
    #[serde(skip)]
    pub token: Option<Secret>,
}

/// The followers an instance accepts (`[followers]`,
/// `SIGNET_FOLLOWER_TOKEN`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Followers {
    /// SHA-256 (hex) of each accepted follower token.
    pub token_sha256: Vec<String>,
    /// One follower token itself; only ever set from `SIGNET_FOLLOWER_TOKEN`.
    #[serde(skip)]
    pub token: Option<Secret>,
}

/// The web console at `/console`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Console {
    /// `false` answers 404 at `/console` and everything under it.
    pub enabled: bool,
}

impl Default for Console {
    fn default() -> Self {
        Console { enabled: true }
    }
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
    /// Longest a request waits on the database (a pooled connection, a
    /// statement, a commit), in milliseconds, before it answers 503. Also
    /// read as `statement_timeout`: milliseconds, or a duration ("5s").
    #[serde(alias = "statement_timeout", deserialize_with = "millis")]
    pub statement_timeout_ms: u64,
    /// Longest a statement waits for a row lock held by another session,
    /// in milliseconds; a session idle inside a transaction for half of it
    /// is ended by the database. Also read as `lock_timeout`, like
    /// `statement_timeout`.
    #[serde(alias = "lock_timeout", deserialize_with = "millis")]
    pub lock_timeout_ms: u64,
    /// `listen` (woken by `LISTEN`/`NOTIFY`) or `poll` (no session state:
    /// works behind a transaction-pooling PgBouncer).
    pub notify: Notify,
}

/// How an instance learns of other instances' key changes.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Notify {
    #[default]
    Listen,
    Poll,
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
            statement_timeout_ms: 5000,
            lock_timeout_ms: 5000,
            notify: Notify::Listen,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Address to listen on: `IP:PORT`, or `localhost:PORT`.
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Time a client has to send its request headers.
    pub header_read_timeout_secs: u64,
    /// Most connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Time in-flight requests get to finish on shutdown.
    pub shutdown_grace_secs: u64,
    /// Time a keep-alive connection may sit with no request in flight.
    pub idle_timeout_secs: u64,
    /// Time a client has to send a whole request body.
    pub body_read_timeout_secs: u64,
    /// Longest wait for the next piece of a request body.
    pub body_progress_timeout_secs: u64,
    /// Longest a response write may make no progress (a client that
    /// does not read).
    pub write_timeout_secs: u64,
    /// Interval of HTTP/2 keep-alive pings.
    pub http2_keepalive_interval_secs: u64,
    /// Time an HTTP/2 client has to answer a ping.
    pub http2_keepalive_timeout_secs: u64,
    /// Serve TLS with this certificate pair (`[server.tls]`).
    pub tls: Option<TlsFiles>,
}

/// A PEM certificate (chain) and its private key.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// `SIGNET_TLS_CERT`.
    pub cert_file: PathBuf,
    /// `SIGNET_TLS_KEY`.
    pub key_file: PathBuf,
    /// How often to look for changed files, in seconds (0: SIGHUP only).
    #[serde(default = "TlsFiles::default_poll")]
    pub reload_poll_secs: u64,
}

impl TlsFiles {
    fn default_poll() -> u64 {
        2
    }
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
    /// Where `url` came from, for messages, when not from the file.
    #[serde(skip)]
    pub url_origin: Option<&'static str>,
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
    /// Latest `expiresAt` a create may ask for, from now (`"90d"`); keys
    /// created without one expire at this cap. Unset: no cap.
    #[serde(deserialize_with = "humantime_opt")]
    pub max_lifetime: Option<Duration>,
    /// The lifetime of keys created without `expiresAt`. Unset: they do
    /// not expire (unless `max_lifetime` is set).
    #[serde(deserialize_with = "humantime_opt")]
    pub default_lifetime: Option<Duration>,
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
    /// Longest token lifetime accepted (`exp - iat`, or `exp - now` without
    /// `iat`), as a humantime string such as `"24h"`; unset accepts any.
    #[serde(deserialize_with = "humantime_opt")]
    pub max_token_lifetime: Option<Duration>,
    /// Most verified tokens remembered by `/v1/auth`, `/v1/verify` and
    /// organisation-token checks (0 disables the token cache).
    pub token_cache_entries: usize,
    /// Most memory the remembered tokens may take, in bytes (0 disables).
    pub token_cache_bytes: usize,
}

/// Milliseconds, given as a whole number or as a duration (`"5s"`).
fn millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Millis {
        Number(u64),
        Text(String),
    }
    match Millis::deserialize(d)? {
        Millis::Number(ms) => Ok(ms),
        Millis::Text(text) => humantime::parse_duration(&text)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a number of milliseconds or a duration like \"5s\": {e}"
                ))
            }),
    }
}

/// An optional humantime duration (`"90s"`, `"24h"`, `"7d"`).
fn humantime_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!("{text:?} is not a duration like \"24h\": {e}"))
    })
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Jwks {
    /// `Cache-Control: max-age` of the JWK Sets, in seconds.
    pub max_age_secs: u64,
    /// Whether `/.well-known/jwks.json` serves the JWK Set of every key;
    /// when false it answers 404 naming the per-organisation route.
    pub global: bool,
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
            idle_timeout_secs: 60,
            body_read_timeout_secs: 30,
            body_progress_timeout_secs: 10,
            write_timeout_secs: 10,
            http2_keepalive_interval_secs: 30,
            http2_keepalive_timeout_secs: 10,
            tls: None,
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
            url_origin: None,
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
            max_lifetime: None,
            default_lifetime: None,
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
            max_token_lifetime: None,
            token_cache_entries: 100_000,
            token_cache_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for Jwks {
    fn default() -> Self {
        Jwks {
            max_age_secs: 60,
            global: true,
        }
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
    /// An environment variable's value parsed but cannot work; the value
    /// is not repeated (it may be a secret).
    #[error("environment variable {name} {reason}")]
    InvalidEnv { name: &'static str, reason: String },
    /// A value parsed but cannot work, with the config file it was read from.
    #[error("config file {path}: {key} {reason}")]
    InvalidIn {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

/// `IP:PORT`, or `localhost:PORT` for `127.0.0.1:PORT`. Other host names
/// are refused rather than looked up: what a name resolves to can change,
/// and a listen address should say which interface it means.
pub fn resolve_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    if let Some((host, port)) = text.rsplit_once(':') {
        if let (true, Ok(port)) = (host.eq_ignore_ascii_case("localhost"), port.parse::<u16>()) {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    Err(format!(
        "{text:?} is not IP:PORT: use an IP address, e.g. 127.0.0.1:8081, 0.0.0.0:8081 or [::]:8081 (of host names only localhost is accepted)"
    ))
}

fn listen_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    resolve_listen(&text).map_err(serde::de::Error::custom)
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
        let file = path.or(default.exists().then_some(default));
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        // A relative path in a config file is the file's neighbour,
        // wherever signet was started; paths from the environment and the
        // command line stay relative to the working directory.
        if let Some(dir) = file.and_then(Path::parent) {
            config.anchor_paths(dir);
        }
        config.apply_env(env)?;
        config.check().map_err(|e| match (e, file) {
            (ConfigError::Invalid { key, reason }, Some(path)) => ConfigError::InvalidIn {
                path: path.to_owned(),
                key,
                reason,
            },
            (e, _) => e,
        })?;
        Ok(config)
    }

    /// Resolves every relative path the file names (the data directory,
    /// the seal key, the TLS pair, the follower's token and CA) against
    /// `dir`, the file's directory.
    fn anchor_paths(&mut self, dir: &Path) {
        if dir.as_os_str().is_empty() {
            return;
        }
        let anchor = |path: &mut PathBuf| {
            if path.is_relative() && !path.as_os_str().is_empty() {
                *path = dir.join(&*path);
            }
        };
        anchor(&mut self.storage.data_dir);
        let tls = self.server.tls.iter_mut();
        tls.flat_map(|t| [&mut t.cert_file, &mut t.key_file])
            .chain(self.storage.seal_key_file.as_mut())
            .chain(
                self.upstream
                    .iter_mut()
                    .flat_map(|u| u.token_file.as_mut().into_iter().chain(u.cacert.as_mut())),
            )
            .for_each(anchor);
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
        // TOML's message is several lines: where, a caret under the
        // offending text, and why. Kept whole, it reads as TOML wrote it.
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
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
            self.server.listen = resolve_listen(&v).map_err(|reason| ConfigError::Env {
                name: "SIGNET_LISTEN",
                value: v,
                reason,
            })?;
        }
        if let Some(v) = env("SIGNET_DATA_DIR") {
            self.storage.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env("SIGNET_SEAL_KEY") {
            self.storage.seal_key = Some(Secret(v));
        }
        if let Some(v) = env("SIGNET_DATABASE_URL") {
            self.storage.url = Some(Secret(v));
            self.storage.url_origin = Some("SIGNET_DATABASE_URL");
        }
        if let Some(v) = env("SIGNET_ADMIN_TOKEN") {
            self.auth.admin_token = Some(Secret(v));
        }
        if let Some(v) = env("SIGNET_LOG") {
            self.log.filter = v;
        }
        for (name, cert) in [("SIGNET_TLS_CERT", true), ("SIGNET_TLS_KEY", false)] {
            if let Some(v) = env(name) {
                let tls = self.server.tls.get_or_insert_with(|| TlsFiles {
                    reload_poll_secs: TlsFiles::default_poll(),
                    ..TlsFiles::default()
                });
                *(if cert {
                    &mut tls.cert_file
                } else {
                    &mut tls.key_file
                }) = PathBuf::from(v);
            }
        }
        if let Some(v) = env("SIGNET_UPSTREAM") {
            self.upstream.get_or_insert_with(Upstream::default).url = v;
        }
        if let Some(v) = env("SIGNET_UPSTREAM_TOKEN") {
            self.upstream.get_or_insert_with(Upstream::default).token = Some(Secret(v));
        }
        if let Some(v) = env("SIGNET_FOLLOWER_TOKEN") {
            self.followers.token = Some(Secret(v));
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
            return Err(ConfigError::InvalidEnv {
                name: "SIGNET_ADMIN_TOKEN",
                reason: "must be at least 16 characters (`signet admin-token new` makes one)"
                    .into(),
            });
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
        for (key, n) in [
            ("keys.pool_2048", self.keys.pool_2048),
            ("keys.pool_3072", self.keys.pool_3072),
            ("keys.pool_4096", self.keys.pool_4096),
        ] {
            if n > 1024 {
                return invalid(key, "must be at most 1024");
            }
        }
        if let Some(tls) = &self.server.tls {
            if tls.cert_file.as_os_str().is_empty() {
                return invalid("server.tls.cert_file (SIGNET_TLS_CERT)", "must be set");
            }
            if tls.key_file.as_os_str().is_empty() {
                return invalid("server.tls.key_file (SIGNET_TLS_KEY)", "must be set");
            }
        }
        if self.server.max_connections == 0 {
            return invalid("server.max_connections", "must be at least 1");
        }
        for (key, life) in [
            ("keys.max_lifetime", self.keys.max_lifetime),
            ("keys.default_lifetime", self.keys.default_lifetime),
        ] {
            if life.is_some_and(|l| l < Duration::from_secs(1)) {
                return invalid(key, "must be at least one second (leave it unset for none)");
            }
        }
        if let (Some(max), Some(default)) = (self.keys.max_lifetime, self.keys.default_lifetime) {
            if default > max {
                return invalid(
                    "keys.default_lifetime",
                    "must not be longer than keys.max_lifetime",
                );
            }
        }
        if self.verify.max_token_lifetime == Some(Duration::ZERO) {
            return invalid(
                "verify.max_token_lifetime",
                "must be longer than zero (leave it unset for no limit)",
            );
        }
        let s = &self.server;
        for (key, secs) in [
            (
                "server.header_read_timeout_secs",
                s.header_read_timeout_secs,
            ),
            ("server.idle_timeout_secs", s.idle_timeout_secs),
            ("server.body_read_timeout_secs", s.body_read_timeout_secs),
            (
                "server.body_progress_timeout_secs",
                s.body_progress_timeout_secs,
            ),
            ("server.write_timeout_secs", s.write_timeout_secs),
            (
                "server.http2_keepalive_interval_secs",
                s.http2_keepalive_interval_secs,
            ),
            (
                "server.http2_keepalive_timeout_secs",
                s.http2_keepalive_timeout_secs,
            ),
        ] {
            if secs == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        for h in &self.followers.token_sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return invalid(
                    "followers.token_sha256",
                    "must list 64-hexadecimal-character digests",
                );
            }
        }
        if matches!(&self.followers.token, Some(t) if t.expose().len() < 16) {
            return invalid("SIGNET_FOLLOWER_TOKEN", "must be at least 16 characters");
        }
        if self.events.heartbeat_ms == 0
            || self.events.send_timeout_ms == 0
            || self.events.max_subscribers == 0
        {
            return invalid(
                "events.heartbeat_ms / send_timeout_ms / max_subscribers",
                "must be at least 1",
            );
        }
        if let Some(up) = &self.upstream {
            if !(up.url.starts_with("http://") || up.url.starts_with("https://")) {
                return invalid(
                    "upstream.url (SIGNET_UPSTREAM)",
                    "must be an http:// or https:// URL",
                );
            }
        }
        if self.cluster.statement_timeout_ms == 0 || self.cluster.lock_timeout_ms == 0 {
            return invalid(
                "cluster.statement_timeout_ms / cluster.lock_timeout_ms",
                "must be at least 1",
            );
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
        self.storage.url_origin = Some("--database-url (or SIGNET_DATABASE_URL)");
        self.check()
    }

    /// The record sealer: `SIGNET_SEAL_KEY`, else `storage.seal_key_file`,
    /// else `{data_dir}/seal.key`, created if absent only with `create`
    /// (a data dir that holds no database yet).
    pub fn sealer(&self, create: bool) -> Result<crate::seal::Sealer, crate::seal::SealError> {
        match (&self.storage.seal_key, &self.storage.seal_key_file) {
            (None, Some(file)) => crate::seal::Sealer::load_file(file),
            (from_env, _) => crate::seal::Sealer::for_data_dir(
                &self.storage.data_dir,
                from_env.as_ref().map(Secret::expose),
                create,
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
    fn relative_paths_in_a_file_are_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("signet.toml");
        let text = "[server.tls]\ncert_file = \"tls/c.pem\"\nkey_file = \"/abs/k.pem\"\n\
                    [storage]\ndata_dir = \"d\"\nseal_key_file = \"s.key\"\n\
                    [upstream]\nurl = \"http://up:1\"\ntoken_file = \"t\"\ncacert = \"ca.pem\"\n";
        std::fs::write(&file, text).unwrap();
        let env = [("SIGNET_TLS_CERT", "env/c.pem")];
        let c = Config::load_with_env(Some(&file), |n| {
            env.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        });
        // Only the file's paths move; a path from the environment stays.
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        let tls = c.server.tls.as_ref().unwrap();
        let upstream = c.upstream.as_ref().unwrap();
        let beside = |name: &str| dir.path().join(name);
        let cases: &[(&str, &Path, PathBuf)] = &[
            ("data_dir", &c.storage.data_dir, beside("d")),
            (
                "seal_key_file",
                c.storage.seal_key_file.as_deref().unwrap(),
                beside("s.key"),
            ),
            (
                "key_file (absolute)",
                &tls.key_file,
                PathBuf::from("/abs/k.pem"),
            ),
            (
                "cert_file (environment)",
                &tls.cert_file,
                PathBuf::from("env/c.pem"),
            ),
            (
                "token_file",
                upstream.token_file.as_deref().unwrap(),
                beside("t"),
            ),
            (
                "cacert",
                upstream.cacert.as_deref().unwrap(),
                beside("ca.pem"),
            ),
        ];
        for (what, got, want) in cases {
            assert_eq!(*got, want.as_path(), "{what}");
        }
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
            ("[server]\nlisten = \"localhost\"\n", &[], "IP:PORT"),
            (
                "[server]\nlisten = \"example.com:80\"\n",
                &[],
                "use an IP address",
            ),
            ("[keys]\nmax_per_org = 0\n", &[], "c.toml"),
            ("[log]\nformat = \"xml\"\n", &[], "format"),
            (
                "[verify]\nmax_token_lifetime = \"forever\"\n",
                &[],
                "max_token_lifetime",
            ),
            (
                "[verify]\nmax_token_lifetime = \"0s\"\n",
                &[],
                "max_token_lifetime",
            ),
            ("[keys]\nmax_lifetime = \"soon\"\n", &[], "max_lifetime"),
            (
                "[keys]\ndefault_lifetime = \"0s\"\n",
                &[],
                "default_lifetime",
            ),
            (
                "[keys]\nmax_lifetime = \"1d\"\ndefault_lifetime = \"2d\"\n",
                &[],
                "must not be longer than keys.max_lifetime",
            ),
            (
                "[server]\nidle_timeout_secs = 0\n",
                &[],
                "server.idle_timeout_secs must",
            ),
            ("[keys]\npool_2048 = 5000\n", &[], "keys.pool_2048 must"),
            (
                "[cluster]\nstatement_timeout_ms = 0\n",
                &[],
                "cluster.statement_timeout_ms",
            ),
            ("[cluster]\nlock_timeout_ms = 0\n", &[], "lock_timeout_ms"),
            ("[cluster]\nnotify = \"push\"\n", &[], "notify"),
            ("", &[("SIGNET_TLS_CERT", "c.pem")], "SIGNET_TLS_KEY"),
            ("[server.tls]\ncert_file = \"c.pem\"\n", &[], "key_file"),
        ];
        for (toml, env, needle) in cases {
            let err = load(toml, env).expect_err(toml).to_string();
            assert!(err.contains(needle), "{toml:?} {env:?}: {err}");
        }
    }

    #[test]
    fn listen_takes_localhost() {
        let c = load("[server]\nlisten = \"localhost:8081\"\n", &[]).unwrap();
        assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 8081)));
        let c = load("", &[("SIGNET_LISTEN", "LOCALHOST:0")]).unwrap();
        assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 0)));
    }

    #[test]
    fn max_token_lifetime_is_a_humantime_duration() {
        assert_eq!(Config::default().verify.max_token_lifetime, None);
        let c = load("[verify]\nmax_token_lifetime = \"1h 30m\"\n", &[]).unwrap();
        assert_eq!(
            c.verify.max_token_lifetime,
            Some(Duration::from_secs(90 * 60))
        );
    }

    #[test]
    fn database_timeouts_take_milliseconds_or_a_duration_under_either_name() {
        let cases: &[(&str, u64, u64)] = &[
            (
                "statement_timeout_ms = 1500\nlock_timeout_ms = 700\n",
                1500,
                700,
            ),
            (
                "statement_timeout = \"2s\"\nlock_timeout = \"250ms\"\n",
                2000,
                250,
            ),
            (
                "statement_timeout = 3000\nlock_timeout = 4000\n",
                3000,
                4000,
            ),
        ];
        for (toml, statement, lock) in cases {
            let c = load(&format!("[cluster]\n{toml}"), &[]).unwrap();
            let got = (c.cluster.statement_timeout_ms, c.cluster.lock_timeout_ms);
            assert_eq!(got, (*statement, *lock), "{toml}");
        }
        let err = load("[cluster]\nstatement_timeout = \"soon\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("statement_timeout"), "{err}");
        assert!(load("[cluster]\nlock_timeout = \"0s\"\n", &[]).is_err());
    }

    #[test]
    fn key_lifetimes_are_humantime_durations() {
        assert_eq!(Config::default().keys.max_lifetime, None);
        let c = load(
            "[keys]\nmax_lifetime = \"90d\"\ndefault_lifetime = \"30d\"\n",
            &[],
        )
        .unwrap();
        let day = Duration::from_secs(86_400);
        assert_eq!(c.keys.max_lifetime, Some(day * 90));
        assert_eq!(c.keys.default_lifetime, Some(day * 30));
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let s = Secret::new("hunter2hunter2hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
