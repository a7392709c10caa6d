//! `signet serve`: run the HTTP server until SIGINT or SIGTERM.

use std::path::PathBuf;

use super::Outcome;
use crate::app::{self, Application};
use crate::config::{Config, LogFormat};

pub(super) fn run(
    config: Option<PathBuf>,
    log_json: bool,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Outcome> {
    let mut config = Config::load(config.as_deref())?;
    if log_json {
        config.log.format = LogFormat::Json;
    }
    crate::logging::init(&config)?;
    runtime.block_on(async {
        let app = Application::build(config).await?;
        app.run_until(app::shutdown_signal()).await
    })?;
    Ok(Outcome::Success)
}
