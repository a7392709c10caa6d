//! `signet keys disable|enable|upload|rotate` offline: the key lifecycle,
//! directly in a sled data directory (server stopped) or a PostgreSQL
//! database.

use anyhow::Context;

use super::output::{self, Style};
use super::{Outcome, UploadFile};
use crate::keys::{KeyId, KeyName, OrgId};
use crate::secret_file::SecretFile;
use crate::service::{Caller, Patch, ServiceError, Signet};

/// A service outcome, with `then` run on success: storage failures are
/// errors (exit 2), every other refusal is said once and is exit 1.
fn judged<T>(
    done: Result<T, ServiceError>,
    then: impl FnOnce(T) -> anyhow::Result<()>,
) -> anyhow::Result<Outcome> {
    match done {
        Ok(done) => then(done).map(|()| Outcome::Success),
        Err(e @ (ServiceError::Store(_) | ServiceError::Task(_))) => Err(e.into()),
        Err(e) => {
            eprintln!("signet: {e}");
            Ok(Outcome::Refused)
        }
    }
}

/// Disables (`disable`) or enables a key.
pub(super) async fn set_state(
    signet: &Signet,
    org: &str,
    id: &str,
    disable: bool,
    caller: &Caller,
    style: Style,
) -> anyhow::Result<Outcome> {
    let (org, id) = (OrgId::parse(org)?, KeyId::parse(id)?);
    let patch = Patch {
        disable: Some(disable),
        name: None,
    };
    judged(signet.change(org, id, patch, caller).await, |record| {
        eprintln!("key {id} is {}", record.state_at(crate::keys::now_secs()));
        Ok(output::key(style, &output::public_view(&record))?)
    })
}

/// `keys upload`'s arguments, as given.
pub(super) struct UploadArgs {
    pub org: String,
    pub name: String,
    pub file: UploadFile,
    pub algorithm: Option<String>,
    pub expires_at: Option<String>,
}

pub(super) async fn upload(
    signet: &Signet,
    args: UploadArgs,
    caller: &Caller,
    style: Style,
) -> anyhow::Result<Outcome> {
    let (org, name) = (OrgId::parse(&args.org)?, KeyName::parse(&args.name)?);
    let algorithm = args.algorithm.map(|a| a.parse()).transpose()?;
    let expires_at = args
        .expires_at
        .as_deref()
        .map(crate::keys::parse_time)
        .transpose()?;
    let upload = match args.file.read(algorithm)?.1 {
        Ok(upload) => upload,
        Err(e) => {
            eprintln!("signet: {e}");
            return Ok(Outcome::Refused);
        }
    };
    let uploaded = signet.upload(org, name, upload, expires_at, caller).await;
    judged(uploaded, |record| {
        Ok(output::key(style, &output::public_view(&record))?)
    })
}

pub(super) async fn rotate(
    signet: &Signet,
    org: &str,
    id: &str,
    grace_seconds: u32,
    out: Option<SecretFile>,
    caller: &Caller,
    style: Style,
) -> anyhow::Result<Outcome> {
    let (org, id) = (OrgId::parse(org)?, KeyId::parse(id)?);
    let grace = std::time::Duration::from_secs(grace_seconds.into());
    let (record, key, _) = match signet.rotate(org, id, grace, caller).await {
        Ok(rotated) => rotated,
        Err(e) => return judged(Err::<(), _>(e), |()| Ok(())),
    };
    super::hand_over_stored(signet, &record, &key, out, caller, style)
        .await
        .with_context(|| {
            format!("key {id} was rotated, but its successor could not be handed over")
        })?;
    Ok(Outcome::Success)
}
