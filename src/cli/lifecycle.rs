//! `signet keys disable|enable|upload|rotate`: the key lifecycle, directly
//! in the data directory (server stopped), like the other key commands.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

use super::keys::{print_issued, public_view};
use super::{Outcome, ALGORITHMS};
use crate::keys::{upload, KeyId, KeyName, OrgId};
use crate::secret_file::SecretFile;
use crate::service::{Caller, Patch, ServiceError, Signet};

#[derive(Subcommand)]
pub(super) enum LifecycleCommand {
    /// Disable a key: its tokens are refused and it leaves the JWK Sets
    /// until it is enabled again.
    Disable {
        /// The organisation that owns the key.
        #[arg(long)]
        org: String,
        /// The key's id (a ULID, the `kid` of its tokens).
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Enable a disabled key again (an expired key cannot be).
    Enable {
        /// The organisation that owns the key.
        #[arg(long)]
        org: String,
        /// The key's id (a ULID, the `kid` of its tokens).
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Store a public key the organisation made itself (its private key
    /// never leaves it); prints the key's PublicKey JSON.
    Upload {
        /// The organisation that will own the key.
        #[arg(long)]
        org: String,
        /// A label for the key (1–128 characters, no control characters).
        #[arg(long)]
        name: String,
        /// An SPKI PEM file (BEGIN PUBLIC KEY).
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "jwk",
            conflicts_with = "jwk"
        )]
        public_key: Option<PathBuf>,
        /// A file holding one public JWK (RSA, EC P-256/P-384, OKP Ed25519).
        #[arg(long, value_name = "FILE")]
        jwk: Option<PathBuf>,
        /// Required for an RSA key (RS* or PS*); otherwise it follows from the curve.
        #[arg(long, value_parser = ALGORITHMS)]
        algorithm: Option<String>,
        /// When the key expires (RFC 3339, e.g. 2027-01-31T12:00:00Z).
        #[arg(long, value_name = "TIME")]
        expires_at: Option<String>,
    },
    /// Make a successor of a key (same name and type) and retire the key
    /// after a grace period; prints the successor's SigningKeySet, or
    /// writes its private key to --out.
    Rotate {
        /// The organisation that owns the key.
        #[arg(long)]
        org: String,
        /// The key's id (a ULID, the `kid` of its tokens).
        #[arg(value_name = "ID")]
        id: String,
        /// How long the old key stays valid; 0 retires it at once.
        #[arg(long, default_value_t = 86_400, value_name = "SECONDS")]
        grace_seconds: u32,
        /// Write the successor's private key PEM to this file (mode 0600) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// Runs one lifecycle command against `signet`.
pub(super) async fn run(
    command: LifecycleCommand,
    signet: &Signet,
    caller: &Caller,
    out: Option<SecretFile>,
) -> anyhow::Result<Outcome> {
    let disable = matches!(command, LifecycleCommand::Disable { .. });
    let done = match command {
        LifecycleCommand::Disable { org, id } | LifecycleCommand::Enable { org, id } => {
            let (org, id) = (OrgId::parse(&org)?, KeyId::parse(&id)?);
            let patch = Patch {
                disable: Some(disable),
                name: None,
            };
            signet.change(org, id, patch, caller).await.map(|record| {
                eprintln!("key {id} is {}", record.state_at(crate::keys::now_secs()));
                println!("{}", pretty(&public_view(&record)));
            })
        }
        LifecycleCommand::Upload {
            org,
            name,
            public_key,
            jwk,
            algorithm,
            expires_at,
        } => {
            let (org, name) = (OrgId::parse(&org)?, KeyName::parse(&name)?);
            let algorithm = algorithm.map(|a| a.parse()).transpose()?;
            let expires_at = expires_at
                .as_deref()
                .map(crate::keys::parse_time)
                .transpose()?;
            let parsed = match (public_key, jwk) {
                (Some(path), _) => upload::from_pem(&read(&path)?, algorithm),
                (None, Some(path)) => match serde_json::from_str::<Value>(&read(&path)?) {
                    Ok(Value::Object(jwk)) => upload::from_jwk(&jwk, algorithm),
                    _ => anyhow::bail!("{} does not hold one JSON object (a JWK)", path.display()),
                },
                (None, None) => unreachable!("clap requires --public-key or --jwk"),
            };
            let upload = match parsed {
                Ok(upload) => upload,
                Err(e) => {
                    eprintln!("signet: {e}");
                    return Ok(Outcome::Refused);
                }
            };
            signet
                .upload(org, name, upload, expires_at, caller)
                .await
                .map(|record| println!("{}", pretty(&public_view(&record))))
        }
        LifecycleCommand::Rotate {
            org,
            id,
            grace_seconds,
            out: _,
        } => {
            let (org, id) = (OrgId::parse(&org)?, KeyId::parse(&id)?);
            let grace = std::time::Duration::from_secs(grace_seconds.into());
            match signet.rotate(org, id, grace, caller).await {
                Ok((record, key, _)) => {
                    print_issued(&record, &key, out)?;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    };
    match done {
        Ok(()) => Ok(Outcome::Success),
        Err(e @ (ServiceError::Store(_) | ServiceError::Task(_))) => Err(e.into()),
        Err(e) => {
            eprintln!("signet: {e}");
            Ok(Outcome::Refused)
        }
    }
}

fn read(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("a value always serialises")
}
