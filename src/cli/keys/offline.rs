//! `signet keys create|list|delete` offline: directly in a sled data
//! directory (server stopped) or a PostgreSQL database.

use anyhow::bail;

use super::output::{self, Style};
use super::Outcome;
use crate::config::Config;
use crate::keys::{self, Bits, KeyId, KeyName, KeySpec, OrgId};
use crate::secret_file::SecretFile;
use crate::service::{Caller, NewKey, ServiceError, Settings, Signet};
use crate::store::{Store, StoreError};

/// The service over the configured store; `read_only` creates nothing.
pub(super) async fn open(config: &Config, read_only: bool) -> anyhow::Result<Signet> {
    let store = match read_only {
        true => Store::open_existing(config).await,
        false => Store::open(config).await,
    };
    let store = match store {
        Err(StoreError::Locked(dir)) => bail!(
            "the database in {} is locked by a running server (stop it first, or manage its keys through it with --server URL or SIGNET_SERVER)",
            dir.display()
        ),
        other => other?,
    };
    Ok(Signet::new(store, Settings::once(config)).await?)
}

/// `keys create`'s arguments, as given.
pub(super) struct NewKeyArgs {
    pub org: String,
    pub name: String,
    pub algorithm: String,
    pub bits: Option<u64>,
    pub expires_at: Option<String>,
}

pub(super) async fn create(
    signet: &Signet,
    args: NewKeyArgs,
    out: Option<SecretFile>,
    caller: &Caller,
    style: Style,
) -> anyhow::Result<Outcome> {
    let new = NewKey {
        name: KeyName::parse(&args.name)?,
        spec: KeySpec::new(
            args.algorithm.parse()?,
            args.bits.map(Bits::from_u64).transpose()?,
        )?,
    };
    let org = OrgId::parse(&args.org)?;
    let expires_at = args
        .expires_at
        .as_deref()
        .map(keys::parse_time)
        .transpose()?;
    let (record, key) = match signet.create_expiring(org, new, expires_at, caller).await {
        Err(ServiceError::QuotaExceeded(n)) => {
            eprintln!("signet: Maximum number of organisation keys ({n}) has been reached. Delete existing keys before creating new ones.");
            return Ok(Outcome::Refused);
        }
        Err(e @ ServiceError::Lifetime(_)) => {
            eprintln!("signet: {e}");
            return Ok(Outcome::Refused);
        }
        other => other?,
    };
    super::hand_over_stored(signet, &record, &key, out, caller, style).await?;
    Ok(Outcome::Success)
}

pub(super) async fn list(
    signet: &Signet,
    org: Option<String>,
    style: Style,
) -> anyhow::Result<Outcome> {
    let records = match org {
        Some(org) => signet.list(&OrgId::parse(&org)?).await?,
        None => signet.list_all().await?,
    };
    let keys: Vec<serde_json::Value> = records.iter().map(output::public_view).collect();
    output::keys(style, &serde_json::json!({ "keys": keys }))?;
    Ok(Outcome::Success)
}

pub(super) async fn delete(
    signet: &Signet,
    org: &str,
    id: &str,
    caller: &Caller,
) -> anyhow::Result<Outcome> {
    let (org, id) = (OrgId::parse(org)?, KeyId::parse(id)?);
    match signet.delete(org, id, caller).await {
        Ok(()) => {
            eprintln!("deleted key {id}");
            Ok(Outcome::Success)
        }
        Err(ServiceError::NotFound(_)) => {
            eprintln!("signet: key {id} does not exist in that organisation");
            Ok(Outcome::Refused)
        }
        Err(e) => Err(e.into()),
    }
}
