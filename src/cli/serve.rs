//! `signet serve`: run the HTTP server until SIGINT or SIGTERM.

use std::path::PathBuf;

use super::Outcome;
use crate::app::{self, Application};
use crate::config::{Config, LogFormat};

pub(super) fn run(
    config: Option<PathBuf>,
    log_json: bool,
    upstream: Option<String>,
    runtime: tokio::runtime::Runtime,
) -> anyhow::Result<Outcome> {
    // `--upstream` counts as `SIGNET_UPSTREAM`, over it.
    let mut config = Config::load_with_env(config.as_deref(), |name| match name {
        "SIGNET_UPSTREAM" if upstream.is_some() => upstream.clone(),
        _ => std::env::var(name).ok(),
    })?;
    if log_json {
        config.log.format = LogFormat::Json;
    }
    let log = crate::logging::init(&config)?;
    let served = runtime.block_on(async {
        let app = Application::build(config).await?;
        app.run_until(app::shutdown_signal()).await
    });
    // Whatever the runtime logs while it stops is still written; then the
    // guard flushes every queued line.
    drop(runtime);
    drop(log);
    served?;
    Ok(Outcome::Success)
}
