//! Sealing of stored key records with AES-256-GCM (aws-lc-rs), so that an
//! attacker who can write the database files, but not read the seal key,
//! cannot plant or move a verification key.
//!
//! A sealed value is `1 ‖ key fingerprint (8) ‖ org length (1) ‖ org ‖
//! nonce (12) ‖ ciphertext ‖ tag`. The associated data is the record's id
//! and organisation, so a record copied under another id or organisation
//! does not open. The seal key comes from `SIGNET_SEAL_KEY` (64 hex
//! characters), `storage.seal_key_file`, or `{data_dir}/seal.key`, which is
//! generated (mode 0600) only into a data dir that holds no database yet:
//! next to existing data a missing key file is an error, never a new key,
//! and records that the configured key cannot open refuse the store (see
//! `store::check_seal`). During `signet seal rotate` a second key, `seal.key.next`, is
//! also accepted, so a crash mid-rotation leaves every record readable.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::keys::{KeyId, OrgId};

const VERSION: u8 = 1;
const FINGERPRINT_LEN: usize = 8;

/// Why a sealed value does not open, or a seal key cannot be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The value is not in the sealed format.
    #[error("the stored value is not a sealed record")]
    Format,
    /// No known seal key has this fingerprint.
    #[error("the record was sealed under an unknown seal key ({0})")]
    UnknownKey(String),
    /// Authentication failed: the record was forged, edited or moved.
    #[error(
        "the record does not authenticate under its id and organisation (forged, edited or moved)"
    )]
    Forged,
    /// `SIGNET_SEAL_KEY` or a seal key file is not 32 bytes of hex.
    #[error("seal key from {0} must be 64 hexadecimal characters")]
    BadKey(String),
    /// The configured seal key file does not exist.
    #[error("the seal key file {0} does not exist")]
    Missing(PathBuf),
    /// The data dir's seal key file is gone, but its database is there.
    #[error("the seal key file {} is missing, but {} holds a signet database sealed with it: restore seal.key from your backup or set SIGNET_SEAL_KEY to that key (a new key would open none of the stored keys, so none is made)", .path.display(), .dir.display())]
    MissingForData { path: PathBuf, dir: PathBuf },
    /// The stored records were sealed with another key than the configured one.
    #[error("the key records in {location} do not open with the seal key from {from}: it is not the key they were sealed with; configure that key (restore it from your backup)")]
    WrongKey { location: String, from: SealSource },
    /// The seal key file could not be read or written.
    #[error("cannot read or write seal key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct SealKey {
    fingerprint: [u8; FINGERPRINT_LEN],
    key: LessSafeKey,
}

impl SealKey {
    fn new(bytes: &[u8; 32]) -> SealKey {
        let digest = Sha256::digest([b"signet seal key v1".as_slice(), bytes].concat());
        SealKey {
            fingerprint: digest[..FINGERPRINT_LEN].try_into().expect("8 bytes"),
            key: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key"),
            ),
        }
    }
}

/// Where a sealer's key came from, as an error names it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealSource {
    /// The environment variable `SIGNET_SEAL_KEY`.
    Env,
    /// `SIGNET_SEAL_KEY` and `SIGNET_NEW_SEAL_KEY`, during a rotation.
    EnvRotating,
    /// The file named by `storage.seal_key_file`.
    File(PathBuf),
    /// `{data_dir}/seal.key`.
    DataDir(PathBuf),
    /// Keys handed to [`Sealer::from_keys`].
    Given,
}

impl std::fmt::Display for SealSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealSource::Env => f.write_str("the environment variable SIGNET_SEAL_KEY"),
            SealSource::EnvRotating => {
                f.write_str("the environment variables SIGNET_SEAL_KEY and SIGNET_NEW_SEAL_KEY")
            }
            SealSource::File(path) => write!(f, "storage.seal_key_file {}", path.display()),
            SealSource::DataDir(path) => write!(f, "the file {}", path.display()),
            SealSource::Given => f.write_str("the given keys"),
        }
    }
}

/// The keys records are sealed and opened with: the first seals, all open.
pub struct Sealer {
    keys: Vec<SealKey>,
    rng: SystemRandom,
    source: SealSource,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl Sealer {
    /// A sealer from raw 32-byte keys; the first seals.
    pub fn from_keys(keys: &[[u8; 32]]) -> Sealer {
        assert!(!keys.is_empty(), "a sealer needs a key");
        Sealer {
            keys: keys.iter().map(SealKey::new).collect(),
            rng: SystemRandom::new(),
            source: SealSource::Given,
        }
    }

    fn sourced(self, source: SealSource) -> Sealer {
        Sealer { source, ..self }
    }

    /// Where the key came from.
    pub fn source(&self) -> &SealSource {
        &self.source
    }

    /// The seal key for `data_dir`: `SIGNET_SEAL_KEY` if given (hex), else
    /// `{data_dir}/seal.key`, created if absent. A `seal.key.next` left by an
    /// interrupted rotation is accepted for opening too, and seals.
    pub fn load_or_create(data_dir: &Path, from_env: Option<&str>) -> Result<Sealer, SealError> {
        Sealer::for_data_dir(data_dir, from_env, true)
    }

    /// As [`Sealer::load_or_create`], but a missing `seal.key` is created
    /// only with `create` (a data dir without a database yet); otherwise it
    /// is an error, since a new key would open none of the stored records.
    pub fn for_data_dir(
        data_dir: &Path,
        from_env: Option<&str>,
        create: bool,
    ) -> Result<Sealer, SealError> {
        if let Some(hex) = from_env {
            return Ok(
                Sealer::from_keys(&[parse_hex(hex, "SIGNET_SEAL_KEY")?]).sourced(SealSource::Env)
            );
        }
        let path = data_dir.join("seal.key");
        let current = match read_key_file(&path)? {
            Some(key) => key,
            None if !create => {
                return Err(SealError::MissingForData {
                    path,
                    dir: data_dir.to_owned(),
                })
            }
            None => {
                let key = random_key();
                write_key_file(&path, &key)?;
                tracing::info!(path = %path.display(), "generated a seal key (mode 0600); back it up with the data directory");
                *key
            }
        };
        let sealer = match read_key_file(&next_path(data_dir))? {
            Some(next) => Sealer::from_keys(&[next, current]),
            None => Sealer::from_keys(&[current]),
        };
        Ok(sealer.sourced(SealSource::DataDir(path)))
    }

    /// The seal key in `path`, which must exist; a `{path}.next` left by an
    /// interrupted rotation is accepted for opening too, and seals.
    pub fn load_file(path: &Path) -> Result<Sealer, SealError> {
        let current = read_key_file(path)?.ok_or_else(|| SealError::Missing(path.to_owned()))?;
        let sealer = match read_key_file(&next_of(path))? {
            Some(next) => Sealer::from_keys(&[next, current]),
            None => Sealer::from_keys(&[current]),
        };
        Ok(sealer.sourced(SealSource::File(path.to_owned())))
    }

    /// A sealer that seals with `next_hex` and opens with it or `current_hex`.
    pub fn rotating(next_hex: &str, current_hex: &str) -> Result<Sealer, SealError> {
        let next = parse_hex(next_hex, "SIGNET_NEW_SEAL_KEY")?;
        let current = parse_hex(current_hex, "SIGNET_SEAL_KEY")?;
        Ok(Sealer::from_keys(&[next, current]).sourced(SealSource::EnvRotating))
    }

    /// Seals `plain` for the record `id` of `org`.
    pub fn seal(&self, id: KeyId, org: &OrgId, plain: &[u8]) -> Vec<u8> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the system RNG works");
        let org = org.as_str().as_bytes();
        let mut out =
            Vec::with_capacity(2 + FINGERPRINT_LEN + org.len() + NONCE_LEN + plain.len() + 16);
        out.push(VERSION);
        out.extend_from_slice(&key.fingerprint);
        out.push(u8::try_from(org.len()).expect("organisation ids are at most 64 bytes"));
        out.extend_from_slice(org);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(id, org)),
                &mut body,
            )
            .expect("sealing a small buffer cannot fail");
        out.extend_from_slice(&body);
        out
    }

    /// Opens a value sealed for the record `id`; returns the organisation
    /// it was sealed for and the plaintext.
    pub fn open(&self, id: KeyId, sealed: &[u8]) -> Result<(String, Vec<u8>), SealError> {
        let (&version, rest) = sealed.split_first().ok_or(SealError::Format)?;
        if version != VERSION || rest.len() < FINGERPRINT_LEN + 1 {
            return Err(SealError::Format);
        }
        let (fingerprint, rest) = rest.split_at(FINGERPRINT_LEN);
        let (&org_len, rest) = rest.split_first().ok_or(SealError::Format)?;
        if rest.len() < usize::from(org_len) + NONCE_LEN {
            return Err(SealError::Format);
        }
        let (org, rest) = rest.split_at(usize::from(org_len));
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let key = self
            .keys
            .iter()
            .find(|k| k.fingerprint == fingerprint)
            .ok_or_else(|| SealError::UnknownKey(hex::encode(fingerprint)))?;
        let mut body = body.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Format)?;
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(aad(id, org)), &mut body)
            .map_err(|_| SealError::Forged)?
            .len();
        // The plaintext is `body`'s start: kept in place, not copied.
        body.truncate(plain);
        let org = String::from_utf8(org.to_vec()).map_err(|_| SealError::Format)?;
        Ok((org, body))
    }
}

fn aad(id: KeyId, org: &[u8]) -> Vec<u8> {
    [b"signet key record v1".as_slice(), &id.to_bytes(), org].concat()
}

/// Where the seal key of `data_dir` lives.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("seal.key")
}

/// Where a rotation writes the next seal key before moving it into place.
pub fn next_path(data_dir: &Path) -> PathBuf {
    next_of(&key_path(data_dir))
}

/// Where a rotation of the key file `path` writes the next key.
pub fn next_of(path: &Path) -> PathBuf {
    let mut next = path.as_os_str().to_owned();
    next.push(".next");
    PathBuf::from(next)
}

/// 32 fresh random bytes.
pub fn random_key() -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(key.as_mut())
        .expect("the system RNG works");
    key
}

fn parse_hex(text: &str, source: &str) -> Result<[u8; 32], SealError> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut key)
        .map_err(|_| SealError::BadKey(source.to_owned()))?;
    Ok(key)
}

fn read_key_file(path: &Path) -> Result<Option<[u8; 32]>, SealError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_hex(&Zeroizing::new(text), &path.display().to_string()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SealError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes a key file with mode 0600 (failing if it exists) and syncs it.
pub fn write_key_file(path: &Path, key: &[u8; 32]) -> Result<(), SealError> {
    let hex = Zeroizing::new(hex::encode(key));
    crate::secret_file::write_secret_file(path, hex.as_bytes()).map_err(|source| SealError::Io {
        path: path.to_owned(),
        source,
    })
}

pub use crate::secret_file::sync_dir;

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (KeyId, KeyId, OrgId, OrgId) {
        (
            KeyId::new(ulid::Ulid::from_parts(1, 1)),
            KeyId::new(ulid::Ulid::from_parts(1, 2)),
            OrgId::parse("acme").unwrap(),
            OrgId::parse("evil").unwrap(),
        )
    }

    #[test]
    fn sealed_records_open_only_where_they_were_sealed() {
        let (id, other_id, org, other_org) = ids();
        let sealer = Sealer::from_keys(&[[7; 32]]);
        let sealed = sealer.seal(id, &org, b"record");
        assert_eq!(
            sealer.open(id, &sealed).unwrap(),
            ("acme".into(), b"record".to_vec())
        );
        assert!(
            matches!(sealer.open(other_id, &sealed), Err(SealError::Forged)),
            "moved to another id"
        );
        let moved = sealer.seal(id, &other_org, b"record");
        let mut relabelled = sealed.clone();
        relabelled[10..14].copy_from_slice(b"evil");
        assert!(
            matches!(sealer.open(id, &relabelled), Err(SealError::Forged)),
            "moved to another org"
        );
        assert_ne!(moved, sealed);
        for i in 0..sealed.len() {
            let mut edited = sealed.clone();
            edited[i] ^= 1;
            assert!(
                sealer.open(id, &edited).is_err(),
                "an edit at byte {i} went unnoticed"
            );
        }
        let stranger = Sealer::from_keys(&[[8; 32]]);
        assert!(matches!(
            stranger.open(id, &sealed),
            Err(SealError::UnknownKey(_))
        ));
        assert!(matches!(sealer.open(id, b""), Err(SealError::Format)));
        assert!(matches!(
            sealer.open(id, b"{\"id\":1}"),
            Err(SealError::Format)
        ));
    }

    #[test]
    fn a_rotating_sealer_opens_both_and_seals_with_the_new_key() {
        let (id, _, org, _) = ids();
        let old = Sealer::from_keys(&[[1; 32]]);
        let both = Sealer::from_keys(&[[2; 32], [1; 32]]);
        let new = Sealer::from_keys(&[[2; 32]]);
        let sealed_old = old.seal(id, &org, b"x");
        assert!(both.open(id, &sealed_old).is_ok());
        let sealed_new = both.seal(id, &org, b"x");
        assert!(new.open(id, &sealed_new).is_ok());
        assert!(old.open(id, &sealed_new).is_err());
    }

    #[test]
    fn seal_keys_parse_from_hex_only() {
        assert!(parse_hex(&"ab".repeat(32), "t").is_ok());
        for bad in [
            "",
            "zz",
            &"ab".repeat(31),
            &"é".repeat(32),
            &"gg".repeat(32),
        ] {
            assert!(parse_hex(bad, "t").is_err(), "{bad:?}");
        }
    }
}
