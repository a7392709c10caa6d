//! The `signet` binary: parse arguments, run the command, exit 0 / 1 / 2.

fn main() -> std::process::ExitCode {
    signet::cli::main()
}
