//! Start-up and shut-down of the server: open the data directory, load the
//! operator token, bind the listener (port 0 in tests), serve until told to
//! stop, then sync storage.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::auth::OperatorToken;
use crate::config::{Backend, Config};
use crate::http::{self, ServerState};
use crate::service::{Settings, Signet};
use crate::store::{create_private_dir, Store, StoreError};

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Storage failed at shutdown.
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
    /// The seal key could not be loaded or created.
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
    /// The operator token could not be read or written.
    #[error("cannot read or create the operator token {path}: {source}")]
    AdminToken {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TLS certificate pair cannot be used.
    #[error(transparent)]
    Tls(#[from] http::tls::TlsError),
    /// Instances sharing a database need one configured operator token.
    #[error("on PostgreSQL the operator token must be configured (auth.admin_token_sha256 or SIGNET_ADMIN_TOKEN): a generated one would lock the other instances out")]
    NoOperatorToken,
    /// A follower cannot reach or register with its upstream.
    #[error(transparent)]
    Follower(#[from] http::upstream::LinkError),
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr}: {source} (set server.listen or SIGNET_LISTEN to a free address)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Application {
    listener: TcpListener,
    app: Arc<ServerState>,
    addr: SocketAddr,
    /// A follower's link to its upstream, which names a refused token.
    link: Option<Arc<http::upstream::Link>>,
}

impl Application {
    pub async fn build(config: Config) -> Result<Application, StartupError> {
        // Bind first: a server that cannot listen must not have written
        // an operator token or a seal key it will never use.
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        // Likewise a certificate pair that cannot serve.
        if let Some(files) = &config.server.tls {
            http::tls::Tls::check(files)?;
        }
        if config.upstream.is_some() {
            return Application::follower(config, listener).await;
        }
        let data_dir = config.storage.data_dir.clone();
        if config.storage.backend == Backend::Postgres {
            if config.auth.admin_token.is_none() && config.auth.admin_token_sha256.is_none() {
                return Err(StartupError::NoOperatorToken);
            }
        } else {
            create_private_dir(&data_dir).map_err(|source| StartupError::DataDir {
                path: data_dir.clone(),
                source,
            })?;
        }
        let store = Store::open(&config).await?;
        let (operator, generated) =
            OperatorToken::load_or_create(&config).map_err(|source| StartupError::AdminToken {
                path: data_dir.join("admin.token"),
                source,
            })?;
        if let Some(path) = generated {
            tracing::info!(path = %path.display(), "generated an operator token (mode 0600); read it from this file");
        }
        warn_readable_secrets(&config);
        let signet = Signet::new(store, Settings::of(&config)).await?;
        Application::serving(listener, signet, config, operator)
    }

    /// A follower (`--upstream`): no store, no seal key, no operator
    /// token; registers with the upstream (a refused token is an error)
    /// and mirrors it.
    async fn follower(config: Config, listener: TcpListener) -> Result<Application, StartupError> {
        let link = Arc::new(http::upstream::Link::new(&config)?);
        // Registers, follows, and returns once current; with the upstream
        // away, after max_staleness (verification is refused until it is
        // back).
        let policy = crate::verify::Policy::from(&config.verify);
        let signet = Signet::follower(policy, &config, link.clone())
            .await
            .map_err(|refused| link.refused(refused))?;
        // Matches nothing: every route that would need it answers 421.
        let operator = OperatorToken::from_secret(&ulid::Ulid::new().to_string());
        let mut application = Application::serving(listener, signet, config, operator)?;
        application.link = Some(link);
        Ok(application)
    }

    /// `signet` served on `listener`, behind the TLS pair of `config` if
    /// it names one.
    fn serving(
        listener: TcpListener,
        signet: Signet,
        config: Config,
        operator: OperatorToken,
    ) -> Result<Application, StartupError> {
        let tls = match &config.server.tls {
            Some(files) => Some(http::tls::Tls::load(files, &signet.metrics)?),
            None => None,
        };
        let addr = listener.local_addr().map_err(|source| StartupError::Bind {
            addr: config.server.listen,
            source,
        })?;
        let mut app = ServerState::new(signet, config, operator);
        if let Some(tls) = tls {
            app = app.with_tls(tls);
        }
        Ok(Application {
            listener,
            app: Arc::new(app),
            addr,
            link: None,
        })
    }

    /// The bound address, with the real port when the config asked for 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, drains, then syncs storage.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), StartupError> {
        tracing::info!(
            addr = %self.addr,
            tls = self.app.config.server.tls.is_some(),
            "signet is listening"
        );
        // A follower whose token its upstream refuses before ever
        // accepting it stops as if refused at start.
        let mut refused = None;
        let stop = async {
            tokio::select! {
                () = shutdown => {}
                r = self.app.signet.refused_unregistered() => refused = Some(r),
            }
        };
        http::serve(self.listener, self.app.clone(), stop).await;
        self.app.signet.leave().await;
        self.app.signet.sync().await?;
        if let (Some(refused), Some(link)) = (refused, &self.link) {
            return Err(link.refused(refused).into());
        }
        tracing::info!("storage synced; bye");
        Ok(())
    }
}

/// Logs one warning naming the secret files in use (the seal key file and
/// its rotation successor, the generated operator token) that group or
/// others may read.
fn warn_readable_secrets(config: &Config) {
    let mut files = Vec::new();
    if let Some(seal) = config.seal_key_file() {
        files.push(crate::seal::next_of(&seal));
        files.push(seal);
    }
    if config.auth.admin_token.is_none() && config.auth.admin_token_sha256.is_none() {
        files.push(config.storage.data_dir.join("admin.token"));
    }
    let readable: Vec<String> = files
        .iter()
        .filter(|path| readable_by_others(path))
        .map(|path| path.display().to_string())
        .collect();
    if !readable.is_empty() {
        tracing::warn!(
            files = %readable.join(", "),
            "secret files are readable by group or others; restrict them with chmod 600"
        );
    }
}

#[cfg(unix)]
fn readable_by_others(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o044 != 0)
}

#[cfg(not(unix))]
fn readable_by_others(_: &std::path::Path) -> bool {
    false
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
