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
            println!("audit log intact: {n} events checked");
            Ok(Outcome::Success)
        }
        Err(broken) => {
            println!("{broken}");
            Ok(Outcome::Refused)
        }
    }
}
