//! `signet token`: mint a JWT from a private-key PEM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Map, Value};

use super::{value_name, Outcome, ALGORITHMS};
use crate::auth::Role;
use crate::keys::{jwt_alg, Algorithm, KeyId, OrgId};
use crate::verify;

#[derive(clap::Args)]
pub(super) struct TokenArgs {
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

pub(super) fn run(args: TokenArgs) -> anyhow::Result<Outcome> {
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
