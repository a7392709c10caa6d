//! `signet seal rotate`: re-seal every stored record under a new key.

use clap::Subcommand;

use super::{data_config, DataArgs, Outcome};
use crate::store::Rotated;

#[derive(Subcommand)]
pub(super) enum SealCommand {
    /// Re-seal every record under a new key and make it the seal key.
    /// With SIGNET_SEAL_KEY set, the new key is read from SIGNET_NEW_SEAL_KEY
    /// and nothing is written to files.
    Rotate,
}

pub(super) async fn rotate(data: &DataArgs) -> anyhow::Result<Outcome> {
    let config = data_config(data)?;
    let next = std::env::var("SIGNET_NEW_SEAL_KEY").ok();
    let said = match crate::store::rotate_seal(&config, next.as_deref()).await? {
        Rotated::External { records } => {
            format!("re-sealed {records} records; set SIGNET_SEAL_KEY to the new key now\n")
        }
        Rotated::KeyFile { records, key_file } => format!(
            "re-sealed {records} records under a new seal key ({})\n",
            key_file.display()
        ),
    };
    super::stdout::print(said)?;
    Ok(Outcome::Success)
}
