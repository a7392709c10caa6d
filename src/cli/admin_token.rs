//! `signet admin-token new`: make an operator token and the SHA-256 that
//! `auth.admin_token_sha256` takes, so that no instance stores the token.

use clap::Subcommand;
use sha2::{Digest, Sha256};

use super::Outcome;

#[derive(Subcommand)]
pub(super) enum AdminTokenCommand {
    /// Print a fresh random operator token and its SHA-256 for
    /// `auth.admin_token_sha256`; nothing is written.
    New,
}

pub(super) fn run(command: AdminTokenCommand) -> anyhow::Result<Outcome> {
    match command {
        AdminTokenCommand::New => {
            let token = zeroize::Zeroizing::new(crate::auth::generate_secret());
            let digest = hex::encode(Sha256::digest(token.as_bytes()));
            let text = zeroize::Zeroizing::new(format!(
                "token: {}\nadmin_token_sha256 = \"{digest}\"\n",
                token.as_str()
            ));
            super::stdout::print(text.as_bytes())?;
            Ok(Outcome::Success)
        }
    }
}
