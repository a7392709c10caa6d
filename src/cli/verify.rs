//! `signet verify`: check a token against a server, a JWK Set or a data
//! directory.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use super::Outcome;
use crate::config::Config;
use crate::service::{Settings, Signet};
use crate::store::{Store, StoreError};
use crate::verify::{
    self, Expect, InvalidReport, JwkSetSource, KeySource, Policy, Report, Verifier, VerifyError,
};

#[derive(clap::Args)]
pub(super) struct VerifyArgs {
    /// The token; `-` or absent reads it from stdin.
    token: Option<String>,
    /// Ask this signet server (e.g. http://127.0.0.1:8081).
    #[arg(long, value_name = "URL", conflicts_with_all = ["jwks", "data_dir"])]
    server: Option<String>,
    /// Use the keys of this JWK Set (an http:// or https:// URL, or a file).
    #[arg(long, value_name = "URL_OR_FILE", conflicts_with = "data_dir")]
    jwks: Option<String>,
    /// Trust this PEM CA certificate for https:// besides the system's roots.
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Read keys from this data directory (the server must be stopped).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Require this audience in the token's `aud` claim.
    #[arg(long)]
    audience: Option<String>,
    /// Require this issuer in the token's `iss` claim.
    #[arg(long)]
    issuer: Option<String>,
    /// Clock leeway in seconds [default: the config's, 30].
    #[arg(long, value_name = "SECONDS")]
    leeway: Option<u64>,
    /// Print the /v1/verify result JSON.
    #[arg(long)]
    json: bool,
    /// Configuration file (for the default server address and leeway).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub(super) async fn run(args: VerifyArgs) -> anyhow::Result<Outcome> {
    let token = match args.token.as_deref() {
        Some(t) if t != "-" => t.to_owned(),
        _ => {
            if std::io::stdin().is_terminal() {
                bail!("no token given: pass it as an argument or on stdin");
            }
            let mut t = String::new();
            std::io::stdin()
                .take(1 << 20)
                .read_to_string(&mut t)
                .context("cannot read the token from stdin")?;
            // The line ends that `echo` and files add; any other blank is
            // part of the token, and malformed as it is over HTTP.
            t.truncate(t.trim_end_matches(['\n', '\r']).len());
            t
        }
    };
    let token = token.as_str();
    if token.trim().is_empty() {
        bail!("no token given: pass it as an argument or on stdin");
    }
    let config = Config::load(args.config.as_deref())?;
    let expect = Expect {
        audience: args.audience.as_deref(),
        issuer: args.issuer.as_deref(),
    };
    let mut policy = Policy::from(&config.verify);
    if let Some(leeway) = args.leeway {
        policy.leeway = Duration::from_secs(leeway);
    }
    // One token: a large cache would only cost memory.
    policy.cache_capacity = 16;
    // One token, verified once.
    policy.token_cache_entries = 0;
    policy.token_cache_bytes = 0;
    let judged = |result: Result<verify::Verified, VerifyError>| -> anyhow::Result<Report> {
        if let Err(VerifyError::Unavailable(cause)) = &result {
            bail!("could not read keys: {cause}");
        }
        Ok(Report::of(&result))
    };
    let local =
        |source: Arc<dyn KeySource>| judged(Verifier::new(source, policy).verify(token, expect));
    let result = if let Some(source) = &args.jwks {
        let bytes = if source.starts_with("http://") || source.starts_with("https://") {
            let answer = crate::http::client::get(source, args.cacert.as_deref()).await?;
            if !answer.ok {
                bail!("{source} answered {}", answer.status);
            }
            answer.body.to_vec()
        } else {
            std::fs::read(source).with_context(|| format!("cannot read {source}"))?
        };
        local(Arc::new(JwkSetSource::parse(&bytes)?))?
    } else if let Some(dir) = &args.data_dir {
        let mut config = config.clone();
        config.storage.data_dir = dir.clone();
        // --data-dir names a sled directory, whatever the config's backend.
        config.storage.backend = crate::config::Backend::Sled;
        let store = match Store::open_existing(&config).await {
            Err(StoreError::Locked(_)) => bail!(
                "the database in {} is locked by a running server; ask it instead with --server {}",
                dir.display(),
                own_server(&config)
            ),
            other => other?,
        };
        let signet = Signet::new(
            store,
            Settings {
                policy,
                ..Settings::once(&config)
            },
        )
        .await?;
        judged(signet.verify(token, expect).await)?
    } else if let Err(too_long) = verify::within_limit(token, policy.max_token_bytes) {
        // The server would refuse the request's body before reading the
        // token; the verdict is the one every other point gives.
        Report::of(&Err(too_long))
    } else {
        let base = args.server.clone().unwrap_or_else(|| own_server(&config));
        let url = format!("{}/v1/verify", base.trim_end_matches('/'));
        let mut body = json!({"token": token});
        if let Some(a) = &args.audience {
            body["audience"] = json!(a);
        }
        if let Some(i) = &args.issuer {
            body["issuer"] = json!(i);
        }
        let answer = crate::http::client::post_json(
            &url,
            serde_json::to_vec(&body)?,
            args.cacert.as_deref(),
        )
        .await
        .map_err(|e| match e.is_unreachable() {
            true => anyhow!("{e}; is `signet serve` running? or use --jwks or --data-dir"),
            false => anyhow!("{e}"),
        })?;
        if !answer.ok {
            bail!(
                "{url} answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        serde_json::from_slice::<Report>(&answer.body)
            .with_context(|| format!("{url} did not answer a verification result"))?
    };
    let valid = result.is_valid();
    if args.json {
        super::stdout::print(serde_json::to_string_pretty(&result)? + "\n")?;
    } else {
        super::stdout::print(describe(&result, token))?;
    }
    Ok(if valid {
        Outcome::Success
    } else {
        Outcome::Refused
    })
}

/// The human report of a verification result. For an invalid token the
/// fields shown are decoded but unverified, and say so.
fn describe(result: &Report, token: &str) -> String {
    let unverified = |i: usize| {
        token
            .split('.')
            .nth(i)
            .and_then(|p| verify::decode_object(p, "part").ok())
            .map_or(Value::Null, Value::Object)
    };
    let (header, claims, note) = match result {
        Report::Valid(v) => (
            Value::Object(v.header.clone()),
            Value::Object(v.claims.clone()),
            "",
        ),
        Report::Invalid(_) => (unverified(0), unverified(1), " (unverified)"),
    };
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let (mut out, key_id, org) = match result {
        Report::Valid(v) => (
            "valid: yes\n".to_owned(),
            Some(v.key_id.clone()),
            v.organisation_id.clone(),
        ),
        Report::Invalid(InvalidReport { error, .. }) => (
            format!("valid: no ({}: {})\n", error.code, error.message),
            None,
            None,
        ),
    };
    let key_id = key_id.or_else(|| text(&header["kid"]));
    let org = org.or_else(|| text(&claims["org"]));
    let mut line = |label: &str, value: Option<String>| {
        out.push_str(&format!(
            "{label:<14}{}{note}\n",
            value.unwrap_or_else(|| "-".into())
        ));
    };
    line("key id:", key_id);
    line("organisation:", org);
    line("subject:", text(&claims["sub"]));
    line("expires:", claims["exp"].as_i64().map(format_time));
    if !claims.is_null() {
        let pretty = serde_json::to_string_pretty(&claims).unwrap_or_default();
        out.push_str(&format!("claims{note}:\n{pretty}\n"));
    }
    out
}

/// `2026-11-22T16:25:23Z (2026-11-22 17:25:23 +01:00 local)`.
fn format_time(secs: i64) -> String {
    match chrono::DateTime::from_timestamp(secs, 0) {
        Some(utc) => format!(
            "{} ({} local)",
            utc.format("%Y-%m-%dT%H:%M:%SZ"),
            utc.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S %:z")
        ),
        None => format!("{secs} (out of range)"),
    }
}

/// The server the config describes: https when it serves TLS.
fn own_server(config: &Config) -> String {
    let scheme = match config.server.tls {
        Some(_) => "https",
        None => "http",
    };
    format!("{scheme}://{}", config.server.listen)
}
