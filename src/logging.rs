//! Log set-up for `signet serve`: the filter from `log.filter` or
//! `SIGNET_LOG`, checked before anything starts, text or JSON lines on
//! stderr, and ANSI colours only when stderr is a terminal.
//!
//! Lines are written by a dedicated thread (`tracing_appender`), so a
//! request never waits for stderr; the queue blocks rather than drop a line
//! when full, and the [`LogGuard`] flushes it on a clean shutdown.
//!
//! Something retried while it fails (a follower's reports and change
//! feed, a replica's reads) is told as an [`Outage`]: a few lines, not one
//! per retry.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// While an [`Outage`] lasts, at most one line per this interval.
pub const OUTAGE_LINE_EVERY: Duration = Duration::from_secs(10);

/// A run of consecutive failures of one thing that is retried: a line at
/// `warn` at the first failure, then at most one per [`OUTAGE_LINE_EVERY`]
/// saying how many failures and how long, and one at `info` when it ends.
/// Retried every 100 ms, a line per failure would be 36,000 lines an hour.
#[derive(Default)]
pub struct Outage {
    started: Option<Instant>,
    failures: u64,
    logged: Option<Instant>,
}

impl Outage {
    /// One more failure at `now`; logged as `what` with `error` if due, and
    /// then `true`.
    pub fn failed(&mut self, what: &str, error: &dyn std::fmt::Display, now: Instant) -> bool {
        self.failures += 1;
        let started = *self.started.get_or_insert(now);
        if self
            .logged
            .is_some_and(|at| now.duration_since(at) < OUTAGE_LINE_EVERY)
        {
            return false;
        }
        self.logged = Some(now);
        tracing::warn!(
            %error,
            failures = self.failures,
            for_ms = millis(now.duration_since(started)),
            "{what} (retrying; one line per {}s at most while it fails)",
            OUTAGE_LINE_EVERY.as_secs()
        );
        true
    }

    /// A success at `now`: if it ends an outage, logged as `what`, and then
    /// `true`.
    pub fn ended(&mut self, what: &str, now: Instant) -> bool {
        let Some(started) = self.started else {
            return false;
        };
        tracing::info!(
            failures = self.failures,
            for_ms = millis(now.duration_since(started)),
            "{what}"
        );
        *self = Outage::default();
        true
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

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
    #[test]
    fn an_outage_is_told_at_its_start_every_ten_seconds_and_at_its_end() {
        use super::Outage;
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut outage = Outage::default();
        assert!(!outage.ended("back", at(0)), "no outage, nothing to end");
        // (milliseconds, failed or succeeded, logged)
        let steps = [
            (0, false, true),
            (100, false, false),
            (9_999, false, false),
            (10_000, false, true),
            (19_999, false, false),
            (20_100, false, true),
            (20_200, true, true),
            (20_300, true, false),
            (20_400, false, true),
            (20_500, false, false),
            (20_600, true, true),
        ];
        for (ms, succeeded, logged) in steps {
            let told = match succeeded {
                true => outage.ended("back", at(ms)),
                false => outage.failed("down", &"refused", at(ms)),
            };
            assert_eq!(told, logged, "at {ms} ms, succeeded {succeeded}");
        }
    }

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
