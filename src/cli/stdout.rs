//! Standard output for every command: written in full and flushed. A
//! failure to write it (a full disk, a closed pipe) is an error that says
//! so (exit 2), never a panic.

use std::io::Write;

/// Standard output did not take what a command printed.
#[derive(Debug, thiserror::Error)]
#[error("could not write to standard output: {0}")]
pub struct Unwritten(#[from] pub std::io::Error);

/// Writes `text` to standard output and flushes it.
pub fn print(text: impl AsRef<[u8]>) -> Result<(), Unwritten> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_ref())?;
    out.flush()?;
    Ok(())
}
