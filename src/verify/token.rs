//! Pure JWS compact parsing and claim checks: no keys, no I/O, no clock of
//! its own. Everything here runs before or after the one signature check.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::VerifyError;
use crate::keys::{Algorithm, KeyId};

/// Header parameters that carry or point to a key. signet never fetches or
/// trusts a key named by a token, so a token that has one is refused.
const EMBEDDED_KEY_HEADERS: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

/// A compact JWS split into its parts, header decoded and checked.
pub struct Parsed<'t> {
    pub header: Map<String, Value>,
    pub alg: Algorithm,
    pub kid: KeyId,
    /// `base64url(header) . base64url(payload)`: what the signature covers.
    pub signing_input: &'t str,
    pub payload_b64: &'t str,
    pub signature: Signature,
}

/// Room on the stack for a decoded part: any signature (RSA 4096 is 512
/// bytes) and the usual header or claims, so that they cost no allocation.
const INLINE: usize = 768;

/// A decoded signature: inline when it fits, as all of signet's do.
/// Large on purpose: it lives on the stack for one verification.
#[allow(clippy::large_enum_variant)]
pub enum Signature {
    Inline([u8; INLINE], usize),
    Heap(Vec<u8>),
}

impl Signature {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Signature::Inline(buf, len) => &buf[..*len],
            Signature::Heap(v) => v,
        }
    }
}

/// Decodes unpadded base64url `part` and hands the bytes to `f`: from a
/// buffer on the stack when they fit, else from the heap.
fn with_decoded<R>(part: &str, f: impl FnOnce(&[u8]) -> R) -> Result<R, base64::DecodeError> {
    let mut buf = [0u8; INLINE];
    match URL_SAFE_NO_PAD.decode_slice(part, &mut buf) {
        Ok(len) => Ok(f(&buf[..len])),
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => Ok(f(&URL_SAFE_NO_PAD.decode(part)?)),
        Err(base64::DecodeSliceError::DecodeError(e)) => Err(e),
    }
}

pub fn parse(token: &str, max_bytes: usize) -> Result<Parsed<'_>, VerifyError> {
    if token.len() > max_bytes {
        return Err(VerifyError::Malformed(format!(
            "token is {} bytes, over the limit of {max_bytes}",
            token.len()
        )));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed(
            "a JWS in compact form has exactly three dot-separated parts".into(),
        ));
    };
    let header = decode_object(h, "header")?;
    let alg = match header.get("alg") {
        // RFC 9864 names Ed25519 itself; it means EdDSA with an Ed25519 key.
        Some(Value::String(alg)) if alg == "Ed25519" => Algorithm::EdDSA,
        Some(Value::String(alg)) => alg.parse::<Algorithm>().map_err(|_| {
            VerifyError::UnsupportedAlgorithm(format!(
                "algorithm {alg:?} is not accepted; only RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA and Ed25519 are"
            ))
        })?,
        Some(_) => return Err(VerifyError::Malformed("header alg must be a string".into())),
        None => return Err(VerifyError::Malformed("header has no alg".into())),
    };
    if let Some(name) = EMBEDDED_KEY_HEADERS
        .iter()
        .find(|n| header.contains_key(**n))
    {
        return Err(VerifyError::Malformed(format!(
            "header carries {name:?}; signet never uses a key named or carried by a token"
        )));
    }
    if let Some(crit) = header.get("crit") {
        // RFC 7515 §4.1.11: a non-empty array of names this verifier must
        // understand. signet understands no extension, so any entry refuses.
        return Err(match crit {
            Value::Array(names) if !names.is_empty() => VerifyError::Malformed(format!(
                "header marks {crit} as critical, and signet understands no JWS extension"
            )),
            _ => VerifyError::Malformed("header crit must be a non-empty array".into()),
        });
    }
    let kid = match header.get("kid") {
        Some(Value::String(kid)) => KeyId::parse(kid)
            .map_err(|_| VerifyError::UnknownKey(format!("kid {kid:?} is not a signet key id")))?,
        Some(_) => return Err(VerifyError::Malformed("header kid must be a string".into())),
        None => return Err(VerifyError::Malformed("header has no kid".into())),
    };
    let bad_signature = |_| VerifyError::Malformed("signature is not unpadded base64url".into());
    let mut buf = [0u8; INLINE];
    let signature = match URL_SAFE_NO_PAD.decode_slice(s, &mut buf) {
        Ok(len) => Signature::Inline(buf, len),
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
            Signature::Heap(URL_SAFE_NO_PAD.decode(s).map_err(bad_signature)?)
        }
        Err(base64::DecodeSliceError::DecodeError(e)) => return Err(bad_signature(e)),
    };
    Ok(Parsed {
        header,
        alg,
        kid,
        signing_input: &token[..h.len() + 1 + p.len()],
        payload_b64: p,
        signature,
    })
}

/// Decodes one base64url part into a JSON object whose keys are unique.
pub fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, VerifyError> {
    with_decoded(part, |bytes| {
        serde_json::from_slice::<UniqueObject>(bytes)
            .map(|o| o.0)
            .map_err(|e| VerifyError::Malformed(format!("{what} is not a JSON object: {e}")))
    })
    .map_err(|_| VerifyError::Malformed(format!("{what} is not unpadded base64url")))?
}

/// A JSON object that refuses duplicate member names, so that two parsers
/// can never read two different values out of one token.
struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
                let mut map = Map::new();
                while let Some(k) = access.next_key::<String>()? {
                    match map.entry(k) {
                        serde_json::map::Entry::Vacant(e) => {
                            e.insert(access.next_value::<Value>()?);
                        }
                        serde_json::map::Entry::Occupied(e) => {
                            return Err(serde::de::Error::custom(format!(
                                "duplicate member {:?}",
                                e.key()
                            )));
                        }
                    }
                }
                Ok(UniqueObject(map))
            }
        }
        d.deserialize_map(V)
    }
}

/// What the caller expects of the claims beyond a valid signature.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRules<'a> {
    pub now: u64,
    pub leeway: u64,
    pub require_exp: bool,
    pub audience: Option<&'a str>,
    pub issuer: Option<&'a str>,
    /// The signing key's organisation, when the key source knows it.
    pub key_org: Option<&'a str>,
    /// The longest lifetime accepted, if capped.
    pub max_lifetime: Option<std::time::Duration>,
}

pub fn check_claims(claims: &Map<String, Value>, rules: ClaimRules<'_>) -> Result<(), VerifyError> {
    if let Some(key_org) = rules.key_org {
        match claims.get("org") {
            None => {}
            Some(Value::String(org)) if org == key_org => {}
            Some(Value::String(_)) => {
                return Err(VerifyError::WrongOrganisation(format!(
                    "the token's org claim names another organisation than {key_org:?}, whose key signed it"
                )))
            }
            Some(_) => return Err(VerifyError::Malformed("claim org must be a string".into())),
        }
    }
    let now = rules.now as f64;
    let leeway = rules.leeway as f64;
    let exp = numeric(claims, "exp")?;
    match exp {
        None if rules.require_exp => {
            return Err(VerifyError::MissingClaim("token has no exp claim".into()))
        }
        // A token without exp would outlive any cap.
        None if rules.max_lifetime.is_some() => {
            return Err(VerifyError::MissingClaim(
                "token has no exp claim, and verify.max_token_lifetime needs one".into(),
            ))
        }
        Some(exp) if exp + leeway <= now => {
            return Err(VerifyError::Expired(format!(
                "token expired at {} (leeway {}s)",
                exp as u64, rules.leeway
            )))
        }
        _ => {}
    }
    if let Some(nbf) = numeric(claims, "nbf")? {
        if nbf - leeway > now {
            return Err(VerifyError::NotYetValid(format!(
                "token is not valid before {} (leeway {}s)",
                nbf as u64, rules.leeway
            )));
        }
    }
    let iat = numeric(claims, "iat")?;
    if let Some(iat) = iat {
        if iat - leeway > now {
            return Err(VerifyError::NotYetValid(format!(
                "token claims to be issued at {}, in the future (leeway {}s)",
                iat as u64, rules.leeway
            )));
        }
    }
    if let (Some(cap), Some(exp)) = (rules.max_lifetime, exp) {
        // With `iat`, the lifetime the issuer granted; without it, the time
        // left, so that leaving `iat` out cannot escape the cap. Floats
        // throughout: `exp: 1e300` is simply a very long lifetime.
        let lifetime = exp - iat.unwrap_or(now);
        if lifetime > cap.as_secs_f64() {
            return Err(VerifyError::Expired(format!(
                "token lives longer than the limit of {}s (verify.max_token_lifetime)",
                cap.as_secs()
            )));
        }
    }
    if let Some(expected) = rules.audience {
        let ok = match claims.get("aud") {
            None => return Err(VerifyError::MissingClaim("token has no aud claim".into())),
            Some(Value::String(aud)) => aud == expected,
            Some(Value::Array(auds)) => {
                if !auds.iter().all(Value::is_string) {
                    return Err(VerifyError::Malformed(
                        "claim aud must be a string or an array of strings".into(),
                    ));
                }
                auds.iter().any(|a| a == expected)
            }
            Some(_) => {
                return Err(VerifyError::Malformed(
                    "claim aud must be a string or an array of strings".into(),
                ))
            }
        };
        if !ok {
            return Err(VerifyError::WrongAudience(format!(
                "token is not meant for audience {expected:?}"
            )));
        }
    }
    if let Some(expected) = rules.issuer {
        match claims.get("iss") {
            None => return Err(VerifyError::MissingClaim("token has no iss claim".into())),
            Some(Value::String(iss)) if iss == expected => {}
            Some(Value::String(iss)) => {
                return Err(VerifyError::WrongIssuer(format!(
                    "token was issued by {iss:?}, not {expected:?}"
                )))
            }
            Some(_) => return Err(VerifyError::Malformed("claim iss must be a string".into())),
        }
    }
    Ok(())
}

/// A NumericDate claim (RFC 7519 §2): absent, or a finite JSON number.
fn numeric(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, VerifyError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| VerifyError::Malformed(format!("claim {name} is not a usable number"))),
        Some(_) => Err(VerifyError::Malformed(format!(
            "claim {name} must be a number (NumericDate)"
        ))),
    }
}
