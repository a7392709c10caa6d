//! `signet keys`: the key commands, against a running server over its HTTP
//! API (`remote`), or offline on a sled data directory or a PostgreSQL
//! database (`offline` for create, list and delete, `lifecycle` for the
//! rest). Both print through `output`; neither offline module imports the
//! other.

mod lifecycle;
mod offline;
mod output;
mod remote;

use std::path::PathBuf;

use clap::Subcommand;

use super::{data_config, DataArgs, Outcome, ALGORITHMS};
use crate::audit::Actor;
use crate::keys::upload;
use crate::secret_file::SecretFile;
use crate::service::Caller;

use output::Style;

#[derive(Subcommand)]
pub(super) enum KeysCommand {
    /// Create a key; prints the SigningKeySet, or writes the private key to --out.
    Create(CreateCommand),
    /// List keys, of one organisation or (offline only) of all.
    List {
        /// Only this organisation's keys [default: every organisation's;
        /// required with --server].
        #[arg(long)]
        org: Option<String>,
    },
    /// Delete a key.
    Delete {
        /// The organisation that owns the key.
        #[arg(long)]
        org: String,
        /// The key's id (a ULID, the `kid` of its tokens).
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Disable a key: its tokens are refused and it leaves the JWK Sets
    /// until it is enabled again.
    Disable {
        /// The organisation that owns the key.
        #[arg(long)]
        org: String,
        /// The key's id (a ULID, the `kid` of its tokens).
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Enable a disabled key again (an expired key cannot be).
    Enable {
        /// The organisation that owns the key.
        #[arg(long)]
        org: String,
        /// The key's id (a ULID, the `kid` of its tokens).
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Store a public key the organisation made itself (its private key
    /// never leaves it); prints the key's PublicKey.
    Upload(UploadCommand),
    /// Make a successor of a key (same name and type) and retire the key
    /// after a grace period; prints the successor's SigningKeySet, or
    /// writes its private key to --out.
    Rotate {
        /// The organisation that owns the key.
        #[arg(long)]
        org: String,
        /// The key's id (a ULID, the `kid` of its tokens).
        #[arg(value_name = "ID")]
        id: String,
        /// How long the old key stays valid; 0 retires it at once.
        #[arg(long, default_value_t = 86_400, value_name = "SECONDS")]
        grace_seconds: u32,
        /// Write the successor's private key PEM to this new file (mode
        /// 0600) instead of stdout; it is created before the successor is.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

// The arguments of `keys create` and `keys upload`, which the offline and
// the remote run both read. Plain comments, so that only the variant's doc
// comment can become the command's help.
#[derive(clap::Args)]
pub(super) struct CreateCommand {
    /// The organisation that will own the key (1–64 of A-Z a-z 0-9 . _ -).
    #[arg(long)]
    org: String,
    /// A label for the key (1–128 characters, no control characters).
    #[arg(long)]
    name: String,
    /// RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA.
    #[arg(long, default_value = "RS256", value_parser = ALGORITHMS)]
    algorithm: String,
    /// RSA modulus size (2048, 3072 or 4096) [default: 2048; RSA only].
    #[arg(long)]
    bits: Option<u64>,
    /// Write the private key PEM to this new file (mode 0600) instead of
    /// stdout; it is created before the key is, and never overwritten.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// When the key expires (RFC 3339, e.g. 2027-01-31T12:00:00Z)
    /// [default: keys.default_lifetime or keys.max_lifetime, if set].
    #[arg(long, value_name = "TIME")]
    expires_at: Option<String>,
}

#[derive(clap::Args)]
pub(super) struct UploadCommand {
    /// The organisation that will own the key.
    #[arg(long)]
    org: String,
    /// A label for the key (1–128 characters, no control characters).
    #[arg(long)]
    name: String,
    /// An SPKI PEM file (BEGIN PUBLIC KEY).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "jwk",
        conflicts_with = "jwk"
    )]
    public_key: Option<PathBuf>,
    /// A file holding one public JWK (RSA, EC P-256/P-384, OKP Ed25519).
    #[arg(long, value_name = "FILE")]
    jwk: Option<PathBuf>,
    /// Required for an RSA key (RS* or PS*); otherwise it follows from the curve.
    #[arg(long, value_parser = ALGORITHMS)]
    algorithm: Option<String>,
    /// When the key expires (RFC 3339, e.g. 2027-01-31T12:00:00Z).
    #[arg(long, value_name = "TIME")]
    expires_at: Option<String>,
}

impl UploadCommand {
    /// The file `--public-key` or `--jwk` names.
    fn file(&self) -> UploadFile {
        match (&self.public_key, &self.jwk) {
            (Some(path), _) => UploadFile::Pem(path.clone()),
            (None, Some(path)) => UploadFile::Jwk(path.clone()),
            (None, None) => unreachable!("clap requires --public-key or --jwk"),
        }
    }
}

/// Where the key commands act and how they print.
#[derive(clap::Args)]
pub(super) struct ServerArgs {
    /// Manage the keys of this running server through its HTTP API, e.g.
    /// http://127.0.0.1:8081 [env: SIGNET_SERVER; --data-dir and
    /// --database-url work offline instead].
    #[arg(long, value_name = "URL", global = true, conflicts_with = "data_dir")]
    server: Option<String>,
    /// With a server: read the credential (the operator token or an
    /// organisation token) from this file [default: SIGNET_TOKEN, else the
    /// config's auth.admin_token, else {data_dir}/admin.token].
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
    /// With an https:// server: trust this PEM CA certificate besides the
    /// system's roots.
    #[arg(long, value_name = "FILE", global = true)]
    cacert: Option<PathBuf>,
    /// Print JSON (the API's shapes) even when stdout is a terminal; it is
    /// the default when stdout is not one.
    #[arg(long, global = true)]
    json: bool,
}

/// Runs a key command where `data` and `server` point.
pub(super) async fn run(
    command: KeysCommand,
    data: DataArgs,
    server: ServerArgs,
) -> anyhow::Result<Outcome> {
    let style = Style::pick(server.json);
    // Claimed before anything else is done: a path that cannot take the
    // private key is an error with nothing made.
    let out = match &command {
        KeysCommand::Create(CreateCommand {
            out: Some(path), ..
        })
        | KeysCommand::Rotate {
            out: Some(path), ..
        } => Some(SecretFile::create(path)?),
        _ => None,
    };
    match remote_url(&data, &server) {
        Some(url) => {
            let remote = remote::Remote::connect(url, &data, &server)?;
            remote.run(command, out, style).await
        }
        None => run_offline(command, &data, out, style).await,
    }
}

/// The server to manage: `--server`, else `SIGNET_SERVER` unless the
/// command names a data directory or a database of its own.
fn remote_url(data: &DataArgs, server: &ServerArgs) -> Option<String> {
    if let Some(url) = &server.server {
        return Some(url.clone());
    }
    let env = std::env::var("SIGNET_SERVER")
        .ok()
        .filter(|u| !u.trim().is_empty())?;
    // An explicit --database-url (not only SIGNET_DATABASE_URL) wins, as
    // does --data-dir: the flag on the command line says what was meant.
    let database_flag = data.database_url.is_some()
        && std::env::var("SIGNET_DATABASE_URL").ok() != data.database_url;
    if data.data_dir.is_some() || database_flag {
        return None;
    }
    Some(env)
}

async fn run_offline(
    command: KeysCommand,
    data: &DataArgs,
    out: Option<SecretFile>,
    style: Style,
) -> anyhow::Result<Outcome> {
    let config = data_config(data)?;
    let read_only = matches!(command, KeysCommand::List { .. });
    let signet = offline::open(&config, read_only).await?;
    let caller = Caller {
        actor: Actor::Cli,
        client: None,
    };
    let outcome = match command {
        KeysCommand::Create(new) => {
            let new = offline::NewKeyArgs {
                org: new.org,
                name: new.name,
                algorithm: new.algorithm,
                bits: new.bits,
                expires_at: new.expires_at,
            };
            offline::create(&signet, new, out, &caller, style).await?
        }
        KeysCommand::List { org } => offline::list(&signet, org, style).await?,
        KeysCommand::Delete { org, id } => offline::delete(&signet, &org, &id, &caller).await?,
        KeysCommand::Disable { org, id } => {
            lifecycle::set_state(&signet, &org, &id, true, &caller, style).await?
        }
        KeysCommand::Enable { org, id } => {
            lifecycle::set_state(&signet, &org, &id, false, &caller, style).await?
        }
        KeysCommand::Upload(upload) => {
            let upload = lifecycle::UploadArgs {
                file: upload.file(),
                org: upload.org,
                name: upload.name,
                algorithm: upload.algorithm,
                expires_at: upload.expires_at,
            };
            lifecycle::upload(&signet, upload, &caller, style).await?
        }
        KeysCommand::Rotate {
            org,
            id,
            grace_seconds,
            out: _,
        } => lifecycle::rotate(&signet, &org, &id, grace_seconds, out, &caller, style).await?,
    };
    signet.sync().await?;
    Ok(outcome)
}

/// Hands over a key just made in the store (offline `create`, `rotate`'s
/// successor) with its private key; one that reached nobody is deleted
/// from the store again.
async fn hand_over_stored(
    signet: &crate::service::Signet,
    record: &crate::keys::PublicKeyRecord,
    key: &crate::keys::GeneratedKey,
    out: Option<SecretFile>,
    caller: &Caller,
    style: Style,
) -> anyhow::Result<()> {
    let mut set = output::public_view(record);
    set["privateKey"] = serde_json::Value::String(key.pkcs8_pem().to_string());
    output::hand_over(style, set, out, || async {
        let deleted = signet.delete(record.org.clone(), record.id, caller).await;
        deleted.map_err(|e| e.to_string())
    })
    .await
}

/// The file `keys upload` reads its public key from.
pub(super) enum UploadFile {
    /// `--public-key`: an SPKI PEM.
    Pem(PathBuf),
    /// `--jwk`: one public JWK.
    Jwk(PathBuf),
}

impl UploadFile {
    /// Reads and checks the file as an upload of `algorithm`; a key that
    /// signet would refuse is refused here, before it goes anywhere.
    fn read(
        &self,
        algorithm: Option<crate::keys::Algorithm>,
    ) -> anyhow::Result<(UploadBody, Result<upload::Upload, upload::UploadError>)> {
        use anyhow::Context;
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
        };
        Ok(match self {
            UploadFile::Pem(path) => {
                let text = read(path)?;
                let parsed = upload::from_pem(&text, algorithm);
                (UploadBody::Pem(text), parsed)
            }
            UploadFile::Jwk(path) => match serde_json::from_str(&read(path)?) {
                Ok(serde_json::Value::Object(jwk)) => {
                    let parsed = upload::from_jwk(&jwk, algorithm);
                    (UploadBody::Jwk(jwk), parsed)
                }
                _ => anyhow::bail!("{} does not hold one JSON object (a JWK)", path.display()),
            },
        })
    }
}

/// What an upload sends: the file's own text or JWK, as the API takes it.
pub(super) enum UploadBody {
    Pem(String),
    Jwk(serde_json::Map<String, serde_json::Value>),
}

#[cfg(test)]
mod tests {
    /// The offline modules share only `output` and this module: neither
    /// imports the other (nor `remote`), so none can grow a cycle.
    #[test]
    fn offline_lifecycle_and_remote_do_not_import_each_other() {
        let sources = [
            ("offline", include_str!("offline.rs")),
            ("lifecycle", include_str!("lifecycle.rs")),
            ("remote", include_str!("remote.rs")),
        ];
        for (name, text) in sources {
            for (other, _) in sources.iter().filter(|(o, _)| *o != name) {
                for import in [format!("super::{other}"), format!("keys::{other}")] {
                    assert!(!text.contains(&import), "{name} imports {other}");
                }
            }
        }
    }
}
