//! `signet keys …` against a running server, through its HTTP API (and
//! only through `http::client`): the same commands and output as offline,
//! with a credential the server checks.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::output::{self, Style};
use super::{data_config, DataArgs, KeysCommand, Outcome, ServerArgs, UploadBody};
use crate::http::client::{self, Answer, ClientError, Verb};
use crate::keys::{Bits, KeyId, KeyName, KeySpec, OrgId};
use crate::secret_file::SecretFile;

/// A server to manage and the credential to do it with.
pub(super) struct Remote {
    base: String,
    token: Zeroizing<String>,
    /// Where the credential came from, to name it (never the token itself).
    source: String,
    cacert: Option<PathBuf>,
}

impl Remote {
    /// Checks `url` and finds the credential: `--token-file`, else
    /// `SIGNET_TOKEN`, else the local config's operator token
    /// (`auth.admin_token`, else `{data_dir}/admin.token`).
    pub(super) fn connect(
        url: String,
        data: &DataArgs,
        args: &ServerArgs,
    ) -> anyhow::Result<Remote> {
        let base = url.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("the server URL {base:?} has no http:// or https:// scheme: write it as http://{base} (or https:// for a server with TLS)");
        }
        let (token, source) = credential(&base, data, args)?;
        let token = Zeroizing::new(token.trim().to_owned());
        if token.is_empty() {
            bail!("the credential from {source} is empty");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("the credential from {source} holds spaces or characters an HTTP header cannot carry; a signet token is one line of visible ASCII");
        }
        Ok(Remote {
            base,
            token,
            source,
            cacert: args.cacert.clone(),
        })
    }

    pub(super) async fn run(
        &self,
        command: KeysCommand,
        out: Option<SecretFile>,
        style: Style,
    ) -> anyhow::Result<Outcome> {
        match command {
            KeysCommand::Create(new) => {
                let org = OrgId::parse(&new.org)?;
                // Checked here as offline, so that a bad argument is a
                // usage error (exit 2) whichever way the command runs.
                KeyName::parse(&new.name)?;
                KeySpec::new(
                    new.algorithm.parse()?,
                    new.bits.map(Bits::from_u64).transpose()?,
                )?;
                if let Some(at) = &new.expires_at {
                    crate::keys::parse_time(at)?;
                }
                let mut body = json!({"name": new.name, "algorithm": new.algorithm});
                if let Some(bits) = new.bits {
                    body["bits"] = json!(bits);
                }
                if let Some(at) = new.expires_at {
                    body["expiresAt"] = json!(at);
                }
                let path = format!("/v1/organisations/{org}/keys");
                self.issue(&path, body, out, style).await
            }
            KeysCommand::List { org } => {
                let Some(org) = org else {
                    bail!("against a server, `signet keys list` needs --org: the API lists one organisation's keys at a time");
                };
                let org = OrgId::parse(&org)?;
                let path = format!("/v1/organisations/{org}/keys");
                Ok(match self.call(Verb::Get, &path, None).await? {
                    Ok(list) => {
                        output::keys(style, &list)?;
                        Outcome::Success
                    }
                    Err(refused) => refused,
                })
            }
            KeysCommand::Delete { org, id } => {
                let path = key_path(&org, &id)?;
                Ok(match self.call(Verb::Delete, &path, None).await? {
                    Ok(_) => {
                        eprintln!("deleted key {id}");
                        Outcome::Success
                    }
                    Err(refused) => refused,
                })
            }
            KeysCommand::Disable { org, id } => self.set_state(&org, &id, "disabled", style).await,
            KeysCommand::Enable { org, id } => self.set_state(&org, &id, "active", style).await,
            KeysCommand::Upload(upload) => {
                let org = OrgId::parse(&upload.org)?;
                KeyName::parse(&upload.name)?;
                if let Some(at) = &upload.expires_at {
                    crate::keys::parse_time(at)?;
                }
                let file = upload.file();
                let parsed_algorithm = upload.algorithm.as_deref().map(str::parse).transpose()?;
                // Checked here first, as offline: a private key in the file
                // is refused before it is sent anywhere.
                let (key, checked) = file.read(parsed_algorithm)?;
                if let Err(e) = checked {
                    eprintln!("signet: {e}");
                    return Ok(Outcome::Refused);
                }
                let mut body = json!({ "name": upload.name });
                match key {
                    UploadBody::Pem(pem) => body["publicKey"] = json!(pem),
                    UploadBody::Jwk(jwk) => body["jwk"] = Value::Object(jwk),
                }
                if let Some(a) = upload.algorithm {
                    body["algorithm"] = json!(a);
                }
                if let Some(at) = upload.expires_at {
                    body["expiresAt"] = json!(at);
                }
                let path = format!("/v1/organisations/{org}/keys");
                Ok(match self.call(Verb::Post, &path, Some(body)).await? {
                    Ok(key) => {
                        output::key(style, &key)?;
                        Outcome::Success
                    }
                    Err(refused) => refused,
                })
            }
            KeysCommand::Rotate {
                org,
                id,
                grace_seconds,
                out: _,
            } => {
                let path = format!("{}/rotate", key_path(&org, &id)?);
                let body = json!({ "graceSeconds": grace_seconds });
                self.issue(&path, body, out, style).await
            }
        }
    }

    /// PATCHes a key's `state` and prints the key as it now stands.
    async fn set_state(
        &self,
        org: &str,
        id: &str,
        state: &str,
        style: Style,
    ) -> anyhow::Result<Outcome> {
        let path = key_path(org, id)?;
        let body = json!({ "state": state });
        Ok(match self.call(Verb::Patch, &path, Some(body)).await? {
            Ok(key) => {
                eprintln!("key {id} is {}", key["state"].as_str().unwrap_or("?"));
                output::key(style, &key)?;
                Outcome::Success
            }
            Err(refused) => refused,
        })
    }

    /// POSTs a request that makes a key (create, rotate) and hands over its
    /// private key: into `out`, claimed before the request, or onto stdout.
    async fn issue(
        &self,
        path: &str,
        body: Value,
        out: Option<SecretFile>,
        style: Style,
    ) -> anyhow::Result<Outcome> {
        match self.call(Verb::Post, path, Some(body)).await {
            Ok(Ok(set)) => {
                let made = key_path(
                    set["organisationId"].as_str().unwrap_or("?"),
                    set["id"].as_str().unwrap_or("?"),
                );
                output::hand_over(style, set, out, || async {
                    let path = made.map_err(|e| e.to_string())?;
                    match self.call(Verb::Delete, &path, None).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(_)) => Err("the server refused the delete".to_owned()),
                        Err(e) => Err(e.to_string()),
                    }
                })
                .await?;
                Ok(Outcome::Success)
            }
            Ok(Err(refused)) => Ok(refused),
            Err(e) if e.downcast_ref::<ClientError>().is_some_and(|c| matches!(c, ClientError::Timeout(_))) => {
                Err(e.context("the server may have made the key before it stopped answering; check with `signet keys list --org …` and delete a key nobody holds"))
            }
            Err(e) => Err(e),
        }
    }

    /// Calls the API. `Err` is a server that could not be asked or failed
    /// (exit 2); `Ok(Err(Refused))` a refusal already said on stderr
    /// (exit 1); `Ok(Ok(json))` the answer's JSON (`null` when empty).
    async fn call(
        &self,
        verb: Verb,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Result<Value, Outcome>> {
        let url = format!("{}{path}", self.base);
        let json = body.map(|b| serde_json::to_vec(&b)).transpose()?;
        let answer = client::call_with_token(verb, &url, &self.token, json, self.cacert.as_deref())
            .await
            .map_err(|e| match e {
                // Only a refused or failed connection suggests starting
                // the server; a TLS or protocol failure says its own cause.
                ClientError::Unreachable { ref cause, .. } if cause.contains("onnect") => {
                    anyhow!("{e} (is `signet serve` running at {}?)", self.base)
                }
                e => anyhow!(e),
            })?;
        if answer.ok {
            if answer.body.is_empty() {
                return Ok(Ok(Value::Null));
            }
            return serde_json::from_slice(&answer.body)
                .map(Ok)
                .with_context(|| {
                    format!(
                        "{url} answered {} with a body that is not JSON",
                        answer.status
                    )
                });
        }
        let said = said(&answer);
        let said = said.trim_end_matches('.');
        match answer.code {
            401 => eprintln!(
                "signet: {} refused the credential from {}: {said}. Use the operator token or a valid organisation token (SIGNET_TOKEN or --token-file).",
                self.base, self.source
            ),
            403 => eprintln!(
                "signet: the credential from {} may not do this: {said}.",
                self.source
            ),
            400..=499 => eprintln!("signet: {said}."),
            _ => bail!("{url} answered {}: {said}", answer.status),
        }
        Ok(Err(Outcome::Refused))
    }
}

/// What an error answer says: the API's `message` and `cause`, else its
/// body as text; control characters shown as `?`.
fn said(answer: &Answer) -> String {
    let text = match serde_json::from_slice::<Value>(&answer.body) {
        Ok(v) if v["message"].is_string() => match v["cause"].as_str() {
            Some(cause) => format!("{} ({cause})", v["message"].as_str().unwrap_or_default()),
            None => v["message"].as_str().unwrap_or_default().to_owned(),
        },
        _ => format!(
            "{} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        ),
    };
    text.chars()
        .take(1000)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `/v1/organisations/{org}/keys/{id}`, both checked first.
fn key_path(org: &str, id: &str) -> anyhow::Result<String> {
    let (org, id) = (OrgId::parse(org)?, KeyId::parse(id)?);
    Ok(format!("/v1/organisations/{org}/keys/{id}"))
}

/// The credential and where it came from.
fn credential(base: &str, data: &DataArgs, args: &ServerArgs) -> anyhow::Result<(String, String)> {
    if let Some(path) = &args.token_file {
        let token = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the credential file {} (--token-file)",
                path.display()
            )
        })?;
        return Ok((token, format!("--token-file {}", path.display())));
    }
    if let Ok(token) = std::env::var("SIGNET_TOKEN") {
        return Ok((token, "SIGNET_TOKEN".to_owned()));
    }
    let config = data_config(data)?;
    if let Some(secret) = &config.auth.admin_token {
        return Ok((
            secret.expose().to_owned(),
            "the local config's auth.admin_token (SIGNET_ADMIN_TOKEN)".to_owned(),
        ));
    }
    let path = config.storage.data_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(token) => Ok((token, format!("{} (the local operator token)", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no credential for {base}: set SIGNET_TOKEN, pass --token-file FILE, or run where the server's {} is",
            path.display()
        ),
        Err(e) => Err(anyhow!(e).context(format!("cannot read the operator token {}", path.display()))),
    }
}
