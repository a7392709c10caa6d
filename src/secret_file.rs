//! The one way signet writes a secret to disk (the operator token, the seal
//! key, a private key the CLI was asked to save): a new file, mode 0600,
//! synced together with its directory before the caller reports success.
//! A file can be claimed first ([`SecretFile::create`]) and filled later, so
//! that a command makes a key only once it knows where the key will go.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a secret file could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretFileError {
    /// The file is there already; a secret is never written over another.
    #[error("{0} already exists; signet never overwrites a file with a secret: choose a new name or move the old file away")]
    Exists(PathBuf),
    /// The directory the file would go into is missing.
    #[error("cannot create {path}: the directory {dir} does not exist")]
    NoDirectory { path: PathBuf, dir: PathBuf },
    /// The directory does not let this user create the file.
    #[error("cannot create {path}: permission denied (this user may not create files in {dir})")]
    Permission { path: PathBuf, dir: PathBuf },
    /// Any other reason the file could not be created.
    #[error("cannot create {path}: {source}")]
    Other {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SecretFileError {
    /// The `std::io::ErrorKind` behind the error, for callers that branch on it.
    pub fn kind(&self) -> std::io::ErrorKind {
        match self {
            SecretFileError::Exists(_) => std::io::ErrorKind::AlreadyExists,
            SecretFileError::NoDirectory { .. } => std::io::ErrorKind::NotFound,
            SecretFileError::Permission { .. } => std::io::ErrorKind::PermissionDenied,
            SecretFileError::Other { source, .. } => source.kind(),
        }
    }
}

impl From<SecretFileError> for std::io::Error {
    fn from(e: SecretFileError) -> std::io::Error {
        std::io::Error::new(e.kind(), e)
    }
}

/// A secret file that exists, empty, until [`SecretFile::fill`]; dropped
/// unfilled, it is removed again, so that a command that fails after
/// claiming it leaves nothing behind.
#[derive(Debug)]
pub struct SecretFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl SecretFile {
    /// Creates `path`, mode 0600, failing if it exists (so no other file is
    /// ever touched).
    pub fn create(path: &Path) -> Result<SecretFile, SecretFileError> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let dir = || match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let file = options.open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => SecretFileError::Exists(path.to_owned()),
            std::io::ErrorKind::NotFound => SecretFileError::NoDirectory {
                path: path.to_owned(),
                dir: dir(),
            },
            std::io::ErrorKind::PermissionDenied => SecretFileError::Permission {
                path: path.to_owned(),
                dir: dir(),
            },
            _ => SecretFileError::Other {
                path: path.to_owned(),
                source,
            },
        })?;
        Ok(SecretFile {
            path: path.to_owned(),
            file: Some(file),
        })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` and syncs the file and its directory. On failure
    /// the partial file is removed.
    pub fn fill(mut self, contents: &[u8]) -> std::io::Result<()> {
        let mut file = self.file.take().expect("a secret file is filled once");
        let written = file
            .write_all(contents)
            .and_then(|()| file.sync_all())
            .and_then(|()| sync_dir(&self.path));
        if written.is_err() {
            drop(file);
            let _ = std::fs::remove_file(&self.path);
        }
        written
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Claimed but never filled: the command failed before it had a
            // secret to hand over, so the empty file is ours to remove.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates `path` with mode 0600 (failing if it exists), writes `contents`,
/// and syncs the file and its directory, so that a crash cannot leave the
/// secret missing or half-written after signet said it was there.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    SecretFile::create(path)?.fill(contents)
}

/// Makes a rename or a new file in `path`'s directory durable.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_secret_file(&path, b"one").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let err = write_secret_file(&path, b"two").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"one", "left as it was");
    }

    #[test]
    fn a_claimed_file_that_is_never_filled_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let claimed = SecretFile::create(&path).unwrap();
        assert!(path.exists(), "claimed before anything is made");
        drop(claimed);
        assert!(!path.exists());
    }

    #[test]
    fn each_bad_path_says_what_is_wrong_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let taken = dir.path().join("taken");
        std::fs::write(&taken, "x").unwrap();
        let e = SecretFile::create(&taken).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        let missing = dir.path().join("nodir").join("k.pem");
        let e = SecretFile::create(&missing).unwrap_err().to_string();
        assert!(e.contains("does not exist") && e.contains("nodir"), "{e}");
        assert!(
            !e.contains("exists"),
            "a missing directory never 'exists': {e}"
        );
    }
}
