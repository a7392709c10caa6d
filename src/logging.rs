//! Log set-up for `signet serve`: the filter from `log.filter` or
//! `SIGNET_LOG`, checked before anything starts, text or JSON lines on
//! stderr, and ANSI colours only when stderr is a terminal.
//!
//! Lines are written by a dedicated thread (`tracing_appender`), so a
//! request never waits for stderr; the queue blocks rather than drop a line
//! when full, and the [`LogGuard`] flushes it on a clean shutdown.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Why the log filter cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("log filter {value:?} (log.filter or SIGNET_LOG) is invalid: {reason}")]
pub struct LogFilterError {
    value: String,
    reason: String,
}

/// Parses a filter such as `info` or `info,signet=debug`. A bare word must
/// be a level: `tracing` would take `debg` as the name of a target and log
/// nothing at all, which is how a typo used to silence the server.
pub fn filter(value: &str) -> Result<EnvFilter, LogFilterError> {
    let error = |reason: String| LogFilterError {
        value: value.to_owned(),
        reason,
    };
    for directive in value.split(',').map(str::trim) {
        if directive.is_empty() || directive.contains('=') || directive.contains('[') {
            continue;
        }
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive)) {
            return Err(error(format!(
                "{directive:?} is not a level ({}); to name a target give its level too, e.g. signet=debug",
                LEVELS.join(", ")
            )));
        }
    }
    EnvFilter::try_new(value).map_err(|e| error(e.to_string()))
}

/// Keeps the log writer thread alive; dropping it writes every queued
/// line before it returns. Hold it until the process is about to exit.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard(#[allow(dead_code)] tracing_appender::non_blocking::WorkerGuard);

/// Installs the global subscriber for `config`.
pub fn init(config: &Config) -> Result<LogGuard, LogFilterError> {
    let colours = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let filter = filter(&config.log.filter)?;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("signet-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours)
        .with_writer(writer);
    // A second init (tests building several servers) keeps the first.
    let _ = match config.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(LogGuard(guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_levels_or_targets_with_levels() {
        for good in [
            "info",
            "DEBUG",
            "warn,signet=debug",
            "signet::http=trace",
            "",
        ] {
            assert!(filter(good).is_ok(), "{good:?}");
        }
        for bad in ["debg", "info,verbose", "signet=loud"] {
            let e = filter(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
