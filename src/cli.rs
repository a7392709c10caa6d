//! The command line: argument definitions, one function per command, and
//! the mapping of outcomes to exit codes (0 success or valid, 1 invalid or
//! refused, 2 usage, configuration or I/O error).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};

use crate::app::{self, Application};
use crate::audit::Actor;
use crate::config::{Config, LogFormat};
use crate::keys::{self, Algorithm, Bits, Jwk, KeyId, KeyName, KeySpec, OrgId};
use crate::service::{Caller, NewKey, Signet};
use crate::store::{Rotated, Store, StoreError};
use crate::verify::{self, Expect, KeyMaterial, KeySource, Policy, Verifier, VerifyError};

#[derive(Parser)]
#[command(
    name = "signet",
    version,
    about = "A signing-key service: RSA, EC and Ed25519 key pairs, JWK Sets and a JWT verifier."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server until SIGINT or SIGTERM.
    Serve {
        /// Configuration file [default: ./config.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Log one JSON object per line instead of text (overrides log.format).
        #[arg(long)]
        log_json: bool,
    },
    /// Check a token: exit 0 if valid, 1 if not, 2 if it could not be checked.
    Verify(VerifyArgs),
    /// Create, list or delete keys directly in the data directory (server stopped).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Mint a JWT from a private-key PEM (for bootstrap and tests).
    Token(TokenArgs),
    /// Check the audit log's hash chains.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Manage the key that seals stored key records (server stopped).
    Seal {
        #[command(subcommand)]
        command: SealCommand,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Print a shell completion script, e.g. `signet completions bash > /etc/bash_completion.d/signet`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The `role` claim of an organisation token.
#[derive(Clone, Copy, clap::ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
enum Role {
    /// May manage the organisation's keys and read its audit log.
    Owner,
    /// The same rights as OWNER.
    Administrator,
    /// May list the organisation's keys.
    Member,
}

/// The signing algorithms, as `--alg` and `--algorithm` accept them.
const ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// The name a value enum was given on the command line (`OWNER`).
fn value_name(value: impl clap::ValueEnum) -> String {
    let value = value.to_possible_value().expect("no value is skipped");
    value.get_name().to_owned()
}

#[derive(Subcommand)]
enum SealCommand {
    /// Re-seal every record under a new key and make it the seal key.
    /// With SIGNET_SEAL_KEY set, the new key is read from SIGNET_NEW_SEAL_KEY
    /// and nothing is written to files.
    Rotate,
}

#[derive(clap::Args)]
struct DataArgs {
    /// Configuration file whose data directory to use.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Data directory [default: the config's storage.data_dir].
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; prints the SigningKeySet JSON, or writes the private key to --out.
    Create {
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
        /// Write the private key PEM to this file (mode 0600) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// List keys as JSON, of one organisation or of all.
    List {
        /// Only this organisation's keys [default: every organisation's].
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
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk every organisation's chain and report the first broken link.
    Verify,
}

#[derive(clap::Args)]
struct VerifyArgs {
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

#[derive(clap::Args)]
struct TokenArgs {
    /// Private key PEM: PKCS#8 for any algorithm, or PKCS#1 for RSA.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The signing key's id (the `kid`).
    #[arg(long)]
    kid: String,
    /// The `org` claim: the organisation the token speaks for, which must own the key.
    #[arg(long)]
    org: String,
    /// The `role` claim.
    #[arg(long, value_enum, default_value_t = Role::Owner)]
    role: Role,
    /// The `sub` claim: who the token speaks for.
    #[arg(long, default_value = "cli")]
    sub: String,
    /// Lifetime, e.g. 15m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    ttl: humantime::Duration,
    /// The `aud` claim; organisation tokens need the server's auth.audience.
    #[arg(long, default_value = "signet")]
    aud: String,
    /// The `iss` claim [default: none].
    #[arg(long)]
    iss: Option<String>,
    /// The key's algorithm [default: ES256, ES384 or EdDSA for such a
    /// PKCS#8 key, else RS256].
    #[arg(long, value_parser = ALGORITHMS)]
    alg: Option<String>,
    /// Extra claim `name=value`; a value that parses as JSON is used as JSON.
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    claims: Vec<String>,
}

/// A command's verdict when it ran to the end.
enum Outcome {
    Success,
    /// Token invalid or request refused.
    Refused,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Refused) => ExitCode::from(1),
        Err(e) => {
            eprintln!("signet: {}", sentence(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each said once: our errors already name their
/// cause in their own message, foreign ones may not.
fn sentence(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve { config, log_json } => {
            let mut config = Config::load(config.as_deref())?;
            if log_json {
                config.log.format = LogFormat::Json;
            }
            crate::logging::init(&config)?;
            runtime.block_on(async {
                let app = Application::build(config).await?;
                app.run_until(app::shutdown_signal()).await
            })?;
            Ok(Outcome::Success)
        }
        Command::Verify(args) => runtime.block_on(verify_cmd(args)),
        Command::Keys { command, data } => runtime.block_on(keys_cmd(command, data)),
        Command::Token(args) => token_cmd(args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "signet", &mut std::io::stdout());
            Ok(Outcome::Success)
        }
        Command::Seal {
            command: SealCommand::Rotate,
            data,
        } => runtime.block_on(seal_rotate(&data)),
        Command::Audit {
            command: AuditCommand::Verify,
            data,
        } => runtime.block_on(async {
            let signet = open_existing(&data_config(&data)?).await?;
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
        }),
    }
}

/// The configuration with `--data-dir` applied.
fn data_config(data: &DataArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(data.config.as_deref())?;
    if let Some(dir) = &data.data_dir {
        config.storage.data_dir = dir.clone();
    }
    Ok(config)
}

/// The service over existing data, for offline reading; creates nothing.
async fn open_existing(config: &Config) -> anyhow::Result<Signet> {
    let store = Store::open_existing(config).await?;
    Ok(Signet::new(store, Policy::default(), config.keys.max_per_org, [0; 3]).await?)
}

async fn seal_rotate(data: &DataArgs) -> anyhow::Result<Outcome> {
    let config = data_config(data)?;
    let next = std::env::var("SIGNET_NEW_SEAL_KEY").ok();
    match crate::store::rotate_seal(&config, next.as_deref()).await? {
        Rotated::External { records } => {
            println!("re-sealed {records} records; set SIGNET_SEAL_KEY to the new key now")
        }
        Rotated::KeyFile { records, key_file } => println!(
            "re-sealed {records} records under a new seal key ({})",
            key_file.display()
        ),
    }
    Ok(Outcome::Success)
}

async fn keys_cmd(command: KeysCommand, data: DataArgs) -> anyhow::Result<Outcome> {
    let config = data_config(&data)?;
    let signet = if matches!(command, KeysCommand::List { .. }) {
        open_existing(&config).await?
    } else {
        let store = Store::open(&config).await?;
        Signet::new(store, Policy::default(), config.keys.max_per_org, [0; 3]).await?
    };
    let caller = Caller {
        actor: Actor::Cli,
        client: None,
    };
    match command {
        KeysCommand::Create {
            org,
            name,
            algorithm,
            bits,
            out,
        } => {
            let new = NewKey {
                name: KeyName::parse(&name)?,
                spec: KeySpec::new(algorithm.parse()?, bits.map(Bits::from_u64).transpose()?)?,
            };
            let org = OrgId::parse(&org)?;
            let (record, key) = match signet.create(org, new, &caller).await {
                Err(crate::service::ServiceError::QuotaExceeded(n)) => {
                    eprintln!("signet: Maximum number of organisation keys ({n}) has been reached. Delete existing keys before creating new ones.");
                    return Ok(Outcome::Refused);
                }
                other => other?,
            };
            let mut view = public_view(&record);
            match out {
                Some(path) => {
                    crate::secret_file::write_secret_file(&path, key.pkcs8_pem().as_bytes())
                        .with_context(|| {
                            format!("cannot create {} (it must not exist yet)", path.display())
                        })?;
                    eprintln!("private key written to {}", path.display());
                }
                None => {
                    view["privateKey"] = Value::String(key.pkcs8_pem().to_string());
                }
            }
            println!("{}", serde_json::to_string_pretty(&view)?);
        }
        KeysCommand::List { org } => {
            let records = match org {
                Some(org) => signet.list(&OrgId::parse(&org)?).await?,
                None => signet.list_all().await?,
            };
            let keys: Vec<Value> = records.iter().map(public_view).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "keys": keys }))?
            );
        }
        KeysCommand::Delete { org, id } => {
            let (org, id) = (OrgId::parse(&org)?, KeyId::parse(&id)?);
            match signet.delete(org, id, &caller).await {
                Ok(()) => eprintln!("deleted key {id}"),
                Err(crate::service::ServiceError::NotFound(_)) => {
                    eprintln!("signet: key {id} does not exist in that organisation");
                    return Ok(Outcome::Refused);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    signet.sync().await?;
    Ok(Outcome::Success)
}

fn public_view(r: &keys::PublicKeyRecord) -> Value {
    serde_json::to_value(keys::KeyView::new(r)).expect("a key view always serialises")
}

fn token_cmd(args: TokenArgs) -> anyhow::Result<Outcome> {
    let pem =
        std::fs::read(&args.key).with_context(|| format!("cannot read {}", args.key.display()))?;
    if holds_public_key(&pem) {
        bail!(
            "{} holds a public key; a token must be signed with the private key, which signet returned once, when the key was created (its privateKey, or the .pem file of a create with Accept: application/x-pem-file)",
            args.key.display()
        );
    }
    let alg: Algorithm = match &args.alg {
        Some(alg) => alg.parse()?,
        None => pkcs8_algorithm(&pem).unwrap_or_default(),
    };
    let (key, kind) = match alg {
        Algorithm::ES256 | Algorithm::ES384 => {
            (jsonwebtoken::EncodingKey::from_ec_pem(&pem), "an EC")
        }
        Algorithm::EdDSA => (jsonwebtoken::EncodingKey::from_ed_pem(&pem), "an Ed25519"),
        _ => (jsonwebtoken::EncodingKey::from_rsa_pem(&pem), "an RSA"),
    };
    let key = key.with_context(|| {
        format!(
            "{} is not {kind} private key PEM, as --alg {alg} needs",
            args.key.display()
        )
    })?;
    let kid = KeyId::parse(&args.kid)?;
    let org = OrgId::parse(&args.org)?;
    let now = verify::unix_now();
    let ttl: Duration = args.ttl.into();
    let mut claims = Map::new();
    claims.insert("org".into(), json!(org));
    claims.insert("role".into(), json!(value_name(args.role)));
    claims.insert("sub".into(), json!(args.sub));
    claims.insert("aud".into(), json!(args.aud));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + ttl.as_secs()));
    if let Some(iss) = args.iss {
        claims.insert("iss".into(), json!(iss));
    }
    for claim in &args.claims {
        let (name, value) = claim
            .split_once('=')
            .ok_or_else(|| anyhow!("--claim {claim:?} must look like name=value"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
        claims.insert(name.into(), value);
    }
    let mut header = jsonwebtoken::Header::new(jwt_alg(alg));
    header.kid = Some(kid.to_string());
    let token = jsonwebtoken::encode(&header, &claims, &key).context("could not sign the token")?;
    println!("{token}");
    Ok(Outcome::Success)
}

/// Whether a PEM file holds a public key (SPKI or PKCS#1), not a private one.
fn holds_public_key(pem: &[u8]) -> bool {
    let text = String::from_utf8_lossy(pem);
    text.contains("-----BEGIN PUBLIC KEY-----") || text.contains("-----BEGIN RSA PUBLIC KEY-----")
}

/// The algorithm of an EC or Ed25519 PKCS#8 private key PEM; `None` for
/// anything else.
fn pkcs8_algorithm(pem: &[u8]) -> Option<Algorithm> {
    use aws_lc_rs::signature::{
        EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
        ECDSA_P384_SHA384_FIXED_SIGNING,
    };
    let (label, der) = pkcs8::der::pem::decode_vec(pem).ok()?;
    let der = zeroize::Zeroizing::new(der);
    if label != "PRIVATE KEY" {
        return None;
    }
    if EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).is_ok() {
        Some(Algorithm::ES256)
    } else if EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &der).is_ok() {
        Some(Algorithm::ES384)
    } else if Ed25519KeyPair::from_pkcs8(&der).is_ok() {
        Some(Algorithm::EdDSA)
    } else {
        None
    }
}

pub fn jwt_alg(alg: Algorithm) -> jsonwebtoken::Algorithm {
    match alg {
        Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
        Algorithm::RS384 => jsonwebtoken::Algorithm::RS384,
        Algorithm::RS512 => jsonwebtoken::Algorithm::RS512,
        Algorithm::PS256 => jsonwebtoken::Algorithm::PS256,
        Algorithm::PS384 => jsonwebtoken::Algorithm::PS384,
        Algorithm::PS512 => jsonwebtoken::Algorithm::PS512,
        Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
        Algorithm::ES384 => jsonwebtoken::Algorithm::ES384,
        Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
    }
}

/// The keys of a JWK Set, for `signet verify --jwks`.
struct JwkSetSource(std::collections::HashMap<KeyId, (Algorithm, Vec<u8>)>);

impl KeySource for JwkSetSource {
    fn lookup(&self, id: KeyId) -> Result<Option<KeyMaterial>, String> {
        Ok(self.0.get(&id).map(|(algorithm, der)| KeyMaterial {
            org: None,
            algorithm: *algorithm,
            spki_der: der.clone(),
        }))
    }
    fn contains(&self, id: KeyId) -> Result<bool, String> {
        Ok(self.0.contains_key(&id))
    }
}

fn parse_jwk_set(bytes: &[u8]) -> anyhow::Result<JwkSetSource> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    let set: Set = serde_json::from_slice(bytes).context("the JWK Set is not {\"keys\": [...]}")?;
    let mut keys = std::collections::HashMap::new();
    for key in set.keys {
        // Keys signet cannot use (other types, no kid) are skipped, as JOSE
        // libraries do; a token naming one then fails as unknown_key.
        let Ok(jwk) = serde_json::from_value::<Jwk>(key) else {
            continue;
        };
        if let Ok((kid, alg, der)) = jwk.to_parts() {
            keys.insert(kid, (alg, der));
        }
    }
    Ok(JwkSetSource(keys))
}

async fn verify_cmd(args: VerifyArgs) -> anyhow::Result<Outcome> {
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
            t
        }
    };
    let token = token.trim();
    if token.is_empty() {
        bail!("no token given: pass it as an argument or on stdin");
    }
    let config = Config::load(args.config.as_deref())?;
    let expect = Expect {
        audience: args.audience.as_deref(),
        issuer: args.issuer.as_deref(),
    };
    let policy = Policy {
        leeway: Duration::from_secs(args.leeway.unwrap_or(config.verify.leeway_secs)),
        require_exp: config.verify.require_exp,
        max_token_bytes: config.verify.max_token_bytes,
        cache_capacity: 16,
        max_token_lifetime: config.verify.max_token_lifetime,
    };
    let judged = |result: Result<verify::Verified, VerifyError>| -> anyhow::Result<Value> {
        if let Err(VerifyError::Unavailable(cause)) = &result {
            bail!("could not read keys: {cause}");
        }
        Ok(verify::result_json(&result))
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
        local(Arc::new(parse_jwk_set(&bytes)?))?
    } else if let Some(dir) = &args.data_dir {
        let mut config = config.clone();
        config.storage.data_dir = dir.clone();
        let store = match Store::open_existing(&config).await {
            Err(StoreError::Locked(_)) => bail!(
                "the database in {} is locked by a running server; ask it instead with --server http://{}",
                dir.display(),
                config.server.listen
            ),
            other => other?,
        };
        let signet = Signet::new(store, policy, config.keys.max_per_org, [0; 3]).await?;
        judged(signet.verify(token, expect))?
    } else {
        let base = args
            .server
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.server.listen));
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
        .map_err(|e| match e.is_certificate() {
            true => anyhow!("{e}"),
            false => anyhow!("{e}; is `signet serve` running? or use --jwks or --data-dir"),
        })?;
        if !answer.ok {
            bail!(
                "{url} answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        serde_json::from_slice(&answer.body)
            .with_context(|| format!("{url} did not answer a verification result"))?
    };
    let valid = result["valid"] == Value::Bool(true);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", describe(&result, token));
    }
    Ok(if valid {
        Outcome::Success
    } else {
        Outcome::Refused
    })
}

/// The human report of a verification result. For an invalid token the
/// fields shown are decoded but unverified, and say so.
fn describe(result: &Value, token: &str) -> String {
    let valid = result["valid"] == Value::Bool(true);
    let (header, claims, note) = if valid {
        (result["header"].clone(), result["claims"].clone(), "")
    } else {
        let part = |i: usize| {
            token
                .split('.')
                .nth(i)
                .and_then(|p| verify::decode_object(p, "part").ok())
                .map_or(Value::Null, Value::Object)
        };
        (part(0), part(1), " (unverified)")
    };
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let mut out = if valid {
        "valid: yes\n".to_owned()
    } else {
        let code = result["error"]["code"].as_str().unwrap_or("unknown");
        let message = result["error"]["message"].as_str().unwrap_or("");
        format!("valid: no ({code}: {message})\n")
    };
    let key_id = text(&result["keyId"]).or_else(|| text(&header["kid"]));
    let org = text(&result["organisationId"]).or_else(|| text(&claims["org"]));
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
