//! `signet audit verify`: check the audit log's hash chains.

use clap::Subcommand;

use super::{data_config, open_existing, DataArgs, Outcome};

#[derive(Subcommand)]
pub(super) enum AuditCommand {
    /// Walk every organisation's chain and report the first broken link.
    Verify,
}

pub(super) async fn verify(data: &DataArgs) -> anyhow::Result<Outcome> {
    let signet = open_existing(&data_config(data)?).await?;
    match signet.verify_audit().await? {
        Ok(n) => {
            super::stdout::print(format!("audit log intact: {n} events checked\n"))?;
            Ok(Outcome::Success)
        }
        Err(broken) => {
            super::stdout::print(format!("{broken}\n"))?;
            Ok(Outcome::Refused)
        }
    }
}
