//! The command line: argument definitions, dispatch to one module per
//! command, and the mapping of outcomes to exit codes (0 success or valid, 1 invalid or
//! refused, 2 usage, configuration or I/O error).

mod admin_token;
mod audit;
mod completions;
mod keys;
mod seal;
mod serve;
mod stdout;
mod token;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::service::{Settings, Signet};
use crate::store::Store;

use audit::AuditCommand;
use keys::{KeysCommand, ServerArgs};
use seal::SealCommand;
use token::TokenArgs;
use verify::VerifyArgs;

#[derive(Parser)]
#[command(
    name = "signet",
    version,
    about = "A signing-key service: RSA, EC and Ed25519 key pairs, JWK Sets and a JWT verifier."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server until SIGINT or SIGTERM.
    Serve {
        /// Configuration file [default: ./config.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Log one JSON object per line instead of text (overrides log.format).
        #[arg(long)]
        log_json: bool,
        /// Run as a follower of this signet (overrides upstream.url and SIGNET_UPSTREAM).
        #[arg(long, value_name = "URL")]
        upstream: Option<String>,
    },
    /// Check a token: exit 0 if valid, 1 if not, 2 if it could not be checked.
    Verify(VerifyArgs),
    /// Manage keys: on a running server through its HTTP API (--server or
    /// SIGNET_SERVER), or offline in a data directory (server stopped) or a
    /// PostgreSQL database.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Mint a JWT from a private-key PEM (for bootstrap and tests).
    Token(TokenArgs),
    /// Check the audit log's hash chains.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Manage the key that seals stored key records (server stopped).
    Seal {
        #[command(subcommand)]
        command: SealCommand,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Make an operator token and its SHA-256 for auth.admin_token_sha256.
    AdminToken {
        #[command(subcommand)]
        command: admin_token::AdminTokenCommand,
    },
    /// Print a shell completion script, e.g. `signet completions bash > /etc/bash_completion.d/signet`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The signing algorithms, as `--alg` and `--algorithm` accept them.
const ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// The name a value enum was given on the command line (`OWNER`).
fn value_name(value: impl clap::ValueEnum) -> String {
    let value = value.to_possible_value().expect("no value is skipped");
    value.get_name().to_owned()
}

#[derive(clap::Args)]
struct DataArgs {
    /// Configuration file whose data directory to use.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Data directory [default: the config's storage.data_dir].
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Use this PostgreSQL database instead of a data directory.
    #[arg(
        long,
        value_name = "URL",
        global = true,
        env = "SIGNET_DATABASE_URL",
        hide_env_values = true,
        conflicts_with = "data_dir"
    )]
    database_url: Option<String>,
}

/// A command's verdict when it ran to the end.
enum Outcome {
    Success,
    /// Token invalid or request refused.
    Refused,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Refused) => ExitCode::from(1),
        Err(e) => {
            eprintln!("signet: {}", sentence(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each said once: our errors already name their
/// cause in their own message, foreign ones may not.
fn sentence(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve {
            config,
            log_json,
            upstream,
        } => serve::run(config, log_json, upstream, runtime),
        Command::Verify(args) => runtime.block_on(verify::run(args)),
        Command::Keys {
            command,
            data,
            server,
        } => runtime.block_on(keys::run(command, data, server)),
        Command::Token(args) => token::run(args),
        Command::Completions { shell } => completions::run(shell),
        Command::AdminToken { command } => admin_token::run(command),
        Command::Seal {
            command: SealCommand::Rotate,
            data,
        } => runtime.block_on(seal::rotate(&data)),
        Command::Audit {
            command: AuditCommand::Verify,
            data,
        } => runtime.block_on(audit::verify(&data)),
    }
}

/// The configuration with `--data-dir` applied.
fn data_config(data: &DataArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(data.config.as_deref())?;
    if let Some(dir) = &data.data_dir {
        config.storage.data_dir = dir.clone();
    }
    if let Some(url) = &data.database_url {
        config.use_database(url)?;
    }
    Ok(config)
}

/// The service over existing data, for offline reading; creates nothing.
async fn open_existing(config: &Config) -> anyhow::Result<Signet> {
    let store = Store::open_existing(config).await?;
    Ok(Signet::new(store, Settings::once(config)).await?)
}
