//! `signet keys`: create, list or delete keys directly in the data
//! directory (server stopped); the lifecycle commands are in `lifecycle`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

use super::lifecycle::LifecycleCommand;
use super::{data_config, open_existing, DataArgs, Outcome, ALGORITHMS};
use crate::audit::Actor;
use crate::keys::{self, Bits, GeneratedKey, KeyId, KeyName, KeySpec, OrgId, PublicKeyRecord};
use crate::service::{Caller, NewKey, Settings, Signet};
use crate::store::Store;

#[derive(Subcommand)]
pub(super) enum KeysCommand {
    /// Create a key; prints the SigningKeySet JSON, or writes the private key to --out.
    Create {
        /// The organisation that will own the key (1–64 of A-Z a-z 0-9 . _ -).
        #[arg(long)]
        org: String,
        /// A label for the key (1–128 characters, no control characters).
        #[arg(long)]
        name: String,
        /// RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA.
        #[arg(long, default_value = "RS256", value_parser = ALGORITHMS)]
        algorithm: String,
        /// RSA modulus size (2048, 3072 or 4096) [default: 2048; RSA only].
        #[arg(long)]
        bits: Option<u64>,
        /// Write the private key PEM to this file (mode 0600) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// When the key expires (RFC 3339, e.g. 2027-01-31T12:00:00Z)
        /// [default: keys.default_lifetime or keys.max_lifetime, if set].
        #[arg(long, value_name = "TIME")]
        expires_at: Option<String>,
    },
    /// List keys as JSON, of one organisation or of all.
    List {
        /// Only this organisation's keys [default: every organisation's].
        #[arg(long)]
        org: Option<String>,
    },
    /// Delete a key.
    Delete {
        /// The organisation that owns the key.
        #[arg(long)]
        org: String,
        /// The key's id (a ULID, the `kid` of its tokens).
        #[arg(value_name = "ID")]
        id: String,
    },
    #[command(flatten)]
    Lifecycle(LifecycleCommand),
}

pub(super) async fn run(command: KeysCommand, data: DataArgs) -> anyhow::Result<Outcome> {
    let config = data_config(&data)?;
    let signet = if matches!(command, KeysCommand::List { .. }) {
        open_existing(&config).await?
    } else {
        let store = Store::open(&config).await?;
        Signet::new(store, Settings::once(&config)).await?
    };
    let caller = Caller {
        actor: Actor::Cli,
        client: None,
    };
    match command {
        KeysCommand::Create {
            org,
            name,
            algorithm,
            bits,
            out,
            expires_at,
        } => {
            let new = NewKey {
                name: KeyName::parse(&name)?,
                spec: KeySpec::new(algorithm.parse()?, bits.map(Bits::from_u64).transpose()?)?,
            };
            let org = OrgId::parse(&org)?;
            let expires_at = expires_at.as_deref().map(keys::parse_time).transpose()?;
            let created = signet.create_expiring(org, new, expires_at, &caller).await;
            let (record, key) = match created {
                Err(crate::service::ServiceError::QuotaExceeded(n)) => {
                    eprintln!("signet: Maximum number of organisation keys ({n}) has been reached. Delete existing keys before creating new ones.");
                    return Ok(Outcome::Refused);
                }
                Err(e @ crate::service::ServiceError::Lifetime(_)) => {
                    eprintln!("signet: {e}");
                    return Ok(Outcome::Refused);
                }
                other => other?,
            };
            print_issued(&record, &key, out)?;
        }
        KeysCommand::Lifecycle(command) => {
            let outcome = super::lifecycle::run(command, &signet, &caller).await?;
            signet.sync().await?;
            return Ok(outcome);
        }
        KeysCommand::List { org } => {
            let records = match org {
                Some(org) => signet.list(&OrgId::parse(&org)?).await?,
                None => signet.list_all().await?,
            };
            let keys: Vec<Value> = records.iter().map(public_view).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "keys": keys }))?
            );
        }
        KeysCommand::Delete { org, id } => {
            let (org, id) = (OrgId::parse(&org)?, KeyId::parse(&id)?);
            match signet.delete(org, id, &caller).await {
                Ok(()) => eprintln!("deleted key {id}"),
                Err(crate::service::ServiceError::NotFound(_)) => {
                    eprintln!("signet: key {id} does not exist in that organisation");
                    return Ok(Outcome::Refused);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    signet.sync().await?;
    Ok(Outcome::Success)
}

/// Prints a new key's SigningKeySet JSON, or writes its private key to
/// `out` (mode 0600) and prints the rest.
pub(super) fn print_issued(
    record: &PublicKeyRecord,
    key: &GeneratedKey,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut view = public_view(record);
    match out {
        Some(path) => {
            crate::secret_file::write_secret_file(&path, key.pkcs8_pem().as_bytes()).with_context(
                || format!("cannot create {} (it must not exist yet)", path.display()),
            )?;
            eprintln!("private key written to {}", path.display());
        }
        None => {
            view["privateKey"] = Value::String(key.pkcs8_pem().to_string());
        }
    }
    println!("{}", serde_json::to_string_pretty(&view)?);
    Ok(())
}

pub(super) fn public_view(r: &keys::PublicKeyRecord) -> Value {
    serde_json::to_value(keys::KeyView::new(r)).expect("a key view always serialises")
}
