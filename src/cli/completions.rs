//! `signet completions`: print a shell completion script.

use super::{Cli, Outcome};

pub(super) fn run(shell: clap_complete::Shell) -> anyhow::Result<Outcome> {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "signet", &mut script);
    super::stdout::print(script)?;
    Ok(Outcome::Success)
}
