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
    /// Private key PEM: PKCS#8 for any algorithm, SEC1 (`BEGIN EC PRIVATE
    /// KEY`) for P-256 and P-384, or PKCS#1 for RSA.
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
    let file = args.key.display().to_string();
    let kind = KeyFile::read(&pem, &file)?;
    let alg: Algorithm = match &args.alg {
        Some(alg) => alg.parse()?,
        None => kind.algorithm(),
    };
    let key = kind.encoding_key(&pem, alg, &file, args.alg.is_some())?;
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
    super::stdout::print(format!("{token}\n"))?;
    Ok(Outcome::Success)
}

/// Whether a PEM file holds a public key (SPKI or PKCS#1), not a private one.
fn holds_public_key(pem: &[u8]) -> bool {
    let text = String::from_utf8_lossy(pem);
    text.contains("-----BEGIN PUBLIC KEY-----") || text.contains("-----BEGIN RSA PUBLIC KEY-----")
}

/// An EC curve, by the name `openssl` and JOSE give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }
}

/// What a private-key PEM file holds, as far as `signet token` cares.
enum KeyFile {
    /// An EC key, as PKCS#8 DER (a SEC1 key is converted).
    Ec(Curve, zeroize::Zeroizing<Vec<u8>>),
    Ed25519,
    /// PKCS#1, or a PKCS#8 key of no other kind: RSA if anything.
    Rsa,
}

impl KeyFile {
    /// Reads the PEM's label and key; refuses with what the file is and
    /// how to make it usable.
    fn read(pem: &[u8], file: &str) -> anyhow::Result<KeyFile> {
        use aws_lc_rs::signature::{
            EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
            ECDSA_P384_SHA384_FIXED_SIGNING, ECDSA_P521_SHA512_FIXED_SIGNING,
        };
        const USABLE: &str = "signet token takes PKCS#8 (BEGIN PRIVATE KEY), SEC1 EC (BEGIN EC PRIVATE KEY, P-256 or P-384) or PKCS#1 RSA (BEGIN RSA PRIVATE KEY)";
        // `openssl ecparam -genkey` writes an EC PARAMETERS block first.
        let text = String::from_utf8_lossy(pem);
        let block = text
            .match_indices("-----BEGIN ")
            .map(|(at, _)| &text[at..])
            .find(|b| !b.starts_with("-----BEGIN EC PARAMETERS-----"))
            .unwrap_or(&text);
        // Only that block: the decoder refuses anything after it.
        let block = block
            .find("-----END ")
            .and_then(|end| {
                let tail = end + "-----END ".len();
                block[tail..]
                    .find("-----")
                    .map(|close| &block[..tail + close + "-----".len()])
            })
            .unwrap_or(block);
        let Ok((label, der)) = pkcs8::der::pem::decode_vec(block.as_bytes()) else {
            bail!("{file} is not a PEM file; {USABLE}");
        };
        let der = zeroize::Zeroizing::new(der);
        let curves = [
            (Curve::P256, &ECDSA_P256_SHA256_FIXED_SIGNING),
            (Curve::P384, &ECDSA_P384_SHA384_FIXED_SIGNING),
            (Curve::P521, &ECDSA_P521_SHA512_FIXED_SIGNING),
        ];
        let ec = |sec1: bool| {
            curves.iter().find_map(|(curve, alg)| {
                let pair = match sec1 {
                    true => EcdsaKeyPair::from_private_key_der(alg, &der).ok()?,
                    false => EcdsaKeyPair::from_pkcs8(alg, &der).ok()?,
                };
                let pkcs8 = pair.to_pkcs8v1().ok()?;
                Some((*curve, zeroize::Zeroizing::new(pkcs8.as_ref().to_vec())))
            })
        };
        let found = match label {
            "EC PRIVATE KEY" => match ec(true) {
                Some((curve, pkcs8)) => KeyFile::Ec(curve, pkcs8),
                None => bail!("{file} is a SEC1 EC private key (BEGIN EC PRIVATE KEY) that does not parse, or of a curve signet does not sign with; make a P-256 key with `openssl ecparam -name prime256v1 -genkey -noout -out key.pem`"),
            },
            "PRIVATE KEY" => match ec(false) {
                Some((curve, pkcs8)) => KeyFile::Ec(curve, pkcs8),
                None if Ed25519KeyPair::from_pkcs8(&der).is_ok() => KeyFile::Ed25519,
                None => KeyFile::Rsa,
            },
            "RSA PRIVATE KEY" => KeyFile::Rsa,
            "ENCRYPTED PRIVATE KEY" => bail!(
                "{file} is an encrypted PKCS#8 private key; decrypt it first with `openssl pkcs8 -in {file} -out key.pem` (it asks for the passphrase), then pass --key key.pem"
            ),
            other => bail!("{file} holds a PEM {other:?}, not a private key; {USABLE}"),
        };
        if let KeyFile::Ec(Curve::P521, _) = found {
            bail!("{file} is an EC P-521 private key, and signet signs only with P-256 (ES256) and P-384 (ES384); make a P-256 key with `openssl ecparam -name prime256v1 -genkey -noout -out key.pem`");
        }
        Ok(found)
    }

    /// The algorithm the key signs with when no `--alg` is given.
    fn algorithm(&self) -> Algorithm {
        match self {
            KeyFile::Ec(Curve::P384, _) => Algorithm::ES384,
            KeyFile::Ec(..) => Algorithm::ES256,
            KeyFile::Ed25519 => Algorithm::EdDSA,
            KeyFile::Rsa => Algorithm::RS256,
        }
    }

    /// The key for `alg`, or why this file cannot sign with it.
    fn encoding_key(
        &self,
        pem: &[u8],
        alg: Algorithm,
        file: &str,
        alg_given: bool,
    ) -> anyhow::Result<jsonwebtoken::EncodingKey> {
        let fits = self.algorithm();
        let mismatch = |what: &str, algs: &str| {
            anyhow!("{file} is {what}, which signs {algs}, not --alg {alg}: use --alg {fits}, or leave --alg out")
        };
        match (self, alg) {
            (KeyFile::Ec(curve, pkcs8), Algorithm::ES256 | Algorithm::ES384) => {
                if alg != fits {
                    return Err(mismatch(&format!("an EC {} key", curve.name()), &fits.to_string()));
                }
                Ok(jsonwebtoken::EncodingKey::from_ec_der(pkcs8))
            }
            (KeyFile::Ec(curve, _), _) => Err(mismatch(&format!("an EC {} key", curve.name()), &fits.to_string())),
            (KeyFile::Ed25519, Algorithm::EdDSA) => jsonwebtoken::EncodingKey::from_ed_pem(pem)
                .with_context(|| format!("{file} is not a usable Ed25519 private key")),
            (KeyFile::Ed25519, _) => Err(mismatch("an Ed25519 key", "EdDSA")),
            (KeyFile::Rsa, Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA) => Err(mismatch(
                "an RSA key (or a PKCS#8 key of no EC or Ed25519 kind)",
                "RS256/384/512 and PS256/384/512",
            )),
            (KeyFile::Rsa, _) => jsonwebtoken::EncodingKey::from_rsa_pem(pem).with_context(|| match alg_given {
                true => format!("{file} is not an RSA private key, as --alg {alg} needs"),
                false => format!("{file} is not an RSA, EC (P-256, P-384) or Ed25519 private key signet can sign with"),
            }),
        }
    }
}
