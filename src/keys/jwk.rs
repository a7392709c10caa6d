//! The JSON Web Key form of a public key, in both directions: RSA `n`/`e`
//! (RFC 7518 §6.3), EC `crv`/`x`/`y` with fixed-length coordinates
//! (RFC 7518 §6.2) and Ed25519 as `OKP` `x` (RFC 8037), all unpadded
//! base64url.
//!
//! EC and Ed25519 public keys have one DER encoding each, so their SPKI is a
//! fixed prefix followed by the point (`04 ‖ x ‖ y`) or the 32-byte key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rsa::pkcs8::EncodePublicKey;
use rsa::{BigUint, RsaPublicKey};
use serde::{Deserialize, Serialize};

use super::{Algorithm, Curve, KeyId, KeySpec, PublicKeyRecord};

/// SPKI of a P-256 key up to its point: id-ecPublicKey, prime256v1, BIT STRING.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// SPKI of a P-384 key up to its point: id-ecPublicKey, secp384r1, BIT STRING.
const P384_SPKI_PREFIX: &[u8] = &[
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];
/// SPKI of an Ed25519 key up to its 32 bytes: id-Ed25519, BIT STRING.
pub(super) const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const ED25519_KEY_LEN: usize = 32;

/// One entry of a JWK Set as signet publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

/// Why a JWK cannot be used as a signet verification key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwkError {
    /// A key type or curve signet does not verify with.
    #[error("key type {0:?} is not RSA, EC (P-256, P-384) or OKP (Ed25519)")]
    KeyType(String),
    /// A member the key type needs is absent.
    #[error("the JWK has no {0:?} member")]
    Missing(&'static str),
    /// A member is not unpadded base64url, or has the wrong length.
    #[error("{0} is not unpadded base64url of the right length")]
    Encoding(&'static str),
    /// The numbers do not form a usable public key.
    #[error("the JWK is not a valid public key: {0}")]
    InvalidKey(String),
    /// The key has no `kid` or its `kid` is not a ULID.
    #[error("kid is missing or is not a ULID")]
    Kid,
    /// The key has no `alg`, or one signet does not support or that does
    /// not fit the key type.
    #[error("alg is missing, unsupported, or does not fit the key type")]
    Alg,
}

impl Jwk {
    /// The JWK of a stored public key.
    pub fn from_record(record: &PublicKeyRecord) -> Jwk {
        Jwk::of(record.id, record.spec, &record.spki_der)
    }

    /// The JWK of key `id` of `spec` whose SPKI (as stored) is `spki`.
    pub fn of(id: KeyId, spec: KeySpec, spki: &[u8]) -> Jwk {
        let b64 = |bytes: &[u8]| Some(URL_SAFE_NO_PAD.encode(bytes));
        let text = |s: Option<&str>| s.map(str::to_owned);
        let m = Material::of(spec, spki);
        Jwk {
            kty: m.kty.into(),
            crv: text(m.crv),
            x: m.x.and_then(b64),
            y: m.y.and_then(b64),
            use_: Some("sig".into()),
            alg: Some(spec.algorithm().as_str().into()),
            kid: Some(id.to_string()),
            n: m.n.and_then(b64),
            e: m.e.and_then(b64),
        }
    }

    /// Appends to `out` the very bytes `serde_json` writes for
    /// [`Jwk::of`]`(id, spec, spki)`, without building it: every member is
    /// a fixed name, a ULID or base64url, none of which JSON escapes.
    pub fn write(out: &mut Vec<u8>, id: KeyId, spec: KeySpec, spki: &[u8]) {
        let m = Material::of(spec, spki);
        let text = |out: &mut Vec<u8>, name: &str, value: &[u8]| {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":\"");
            out.extend_from_slice(value);
            out.push(b'"');
        };
        let b64 = |out: &mut Vec<u8>, name: &str, value: Option<&[u8]>| {
            let Some(value) = value else { return };
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":\"");
            let at = out.len();
            out.resize(
                at + base64::encoded_len(value.len(), false).expect("small"),
                0,
            );
            URL_SAFE_NO_PAD
                .encode_slice(value, &mut out[at..])
                .expect("sized exactly");
            out.push(b'"');
        };
        out.extend_from_slice(b"{\"kty\":\"");
        out.extend_from_slice(m.kty.as_bytes());
        out.push(b'"');
        if let Some(crv) = m.crv {
            text(out, "crv", crv.as_bytes());
        }
        b64(out, "x", m.x);
        b64(out, "y", m.y);
        text(out, "use", b"sig");
        text(out, "alg", spec.algorithm().as_str().as_bytes());
        let mut kid = [0u8; ulid::ULID_LEN];
        let kid = ulid::Ulid::from_bytes(id.to_bytes())
            .array_to_str(&mut kid)
            .as_bytes();
        text(out, "kid", kid);
        b64(out, "n", m.n);
        b64(out, "e", m.e);
        out.push(b'}');
    }

    /// The key's id, algorithm and SPKI DER, for a verifier reading a JWK
    /// Set. The `alg` must be the one the key type and curve call for.
    pub fn to_parts(&self) -> Result<(KeyId, Algorithm, Vec<u8>), JwkError> {
        let kid = self.kid.as_deref().ok_or(JwkError::Kid)?;
        let kid = KeyId::parse(kid).map_err(|_| JwkError::Kid)?;
        let alg = Algorithm::from_jose(self.alg.as_deref().ok_or(JwkError::Alg)?)
            .map_err(|_| JwkError::Alg)?;
        let der = match (self.kty.as_str(), self.crv.as_deref()) {
            ("RSA", _) if alg.is_rsa() => self.rsa_der()?,
            ("EC", Some(crv)) => {
                let curve = Curve::from_jwk_name(crv)
                    .ok_or_else(|| JwkError::KeyType(format!("EC {crv}")))?;
                if KeySpec::new(alg, None) != Ok(KeySpec::Ec { curve }) {
                    return Err(JwkError::Alg);
                }
                let len = curve.coordinate_len();
                let mut der = ec_prefix(curve).to_vec();
                der.push(0x04);
                der.extend(member("x", self.x.as_deref(), len)?);
                der.extend(member("y", self.y.as_deref(), len)?);
                der
            }
            ("OKP", Some("Ed25519")) if alg == Algorithm::EdDSA => {
                let key = member("x", self.x.as_deref(), ED25519_KEY_LEN)?;
                // A small-order key in someone's JWK Set would let anyone
                // forge its tokens.
                super::ed25519::check(&key).map_err(|e| JwkError::InvalidKey(e.to_string()))?;
                let mut der = ED25519_SPKI_PREFIX.to_vec();
                der.extend(key);
                der
            }
            ("RSA", _) | ("OKP", Some("Ed25519")) => return Err(JwkError::Alg),
            ("EC" | "OKP", None) => return Err(JwkError::Missing("crv")),
            (kty, crv) => {
                let name = crv.map_or(kty.to_owned(), |c| format!("{kty} {c}"));
                return Err(JwkError::KeyType(name));
            }
        };
        aws_lc_rs::signature::ParsedPublicKey::new(alg.verification(), &der)
            .map_err(|e| JwkError::InvalidKey(e.to_string()))?;
        Ok((kid, alg, der))
    }

    fn rsa_der(&self) -> Result<Vec<u8>, JwkError> {
        let decode = |name: &'static str, v: &Option<String>| {
            let v = v.as_deref().ok_or(JwkError::Missing(name))?;
            URL_SAFE_NO_PAD
                .decode(v)
                .map(|b| BigUint::from_bytes_be(&b))
                .map_err(|_| JwkError::Encoding(name))
        };
        let public =
            RsaPublicKey::new_with_max_size(decode("n", &self.n)?, decode("e", &self.e)?, 8192)
                .map_err(|e| JwkError::InvalidKey(e.to_string()))?;
        let der = public
            .to_public_key_der()
            .map_err(|e| JwkError::InvalidKey(e.to_string()))?;
        Ok(der.into_vec())
    }
}

/// The members of a key's JWK, as raw bytes where they are base64url.
struct Material<'a> {
    kty: &'static str,
    crv: Option<&'static str>,
    x: Option<&'a [u8]>,
    y: Option<&'a [u8]>,
    n: Option<&'a [u8]>,
    e: Option<&'a [u8]>,
}

impl<'a> Material<'a> {
    /// Read from a stored SPKI of `spec`, which always holds such a key.
    fn of(spec: KeySpec, spki: &'a [u8]) -> Material<'a> {
        let none = Material {
            kty: "",
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
        };
        match spec {
            KeySpec::Rsa { .. } => {
                // Read without the `rsa` crate's 4096-bit cap: uploaded
                // keys go up to 8192 bits.
                use pkcs8::der::Decode;
                let public = pkcs8::spki::SubjectPublicKeyInfoRef::from_der(spki)
                    .ok()
                    .and_then(|info| info.subject_public_key.as_bytes())
                    .and_then(|key| rsa::pkcs1::RsaPublicKey::from_der(key).ok())
                    .expect("a stored RSA SPKI is always a valid RSA public key");
                Material {
                    kty: "RSA",
                    n: Some(public.modulus.as_bytes()),
                    e: Some(public.public_exponent.as_bytes()),
                    ..none
                }
            }
            KeySpec::Ec { curve } => {
                let point = spki
                    .strip_prefix(ec_prefix(curve))
                    .and_then(|p| p.strip_prefix(&[0x04]))
                    .filter(|p| p.len() == 2 * curve.coordinate_len())
                    .expect("a stored EC SPKI is always an uncompressed point on its curve");
                let (x, y) = point.split_at(curve.coordinate_len());
                Material {
                    kty: "EC",
                    crv: Some(curve.jwk_name()),
                    x: Some(x),
                    y: Some(y),
                    ..none
                }
            }
            KeySpec::Ed25519 => {
                let key = spki
                    .strip_prefix(ED25519_SPKI_PREFIX)
                    .filter(|k| k.len() == ED25519_KEY_LEN)
                    .expect("a stored Ed25519 SPKI is always 32 bytes of key");
                Material {
                    kty: "OKP",
                    crv: Some("Ed25519"),
                    x: Some(key),
                    ..none
                }
            }
        }
    }
}

/// A fixed-length base64url member.
fn member(name: &'static str, v: Option<&str>, len: usize) -> Result<Vec<u8>, JwkError> {
    let v = v.ok_or(JwkError::Missing(name))?;
    URL_SAFE_NO_PAD
        .decode(v)
        .ok()
        .filter(|b| b.len() == len)
        .ok_or(JwkError::Encoding(name))
}

pub(super) fn ec_prefix(curve: Curve) -> &'static [u8] {
    match curve {
        Curve::P256 => P256_SPKI_PREFIX,
        Curve::P384 => P384_SPKI_PREFIX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate, Bits, KeyName, OrgId};

    fn record(spec: KeySpec) -> PublicKeyRecord {
        PublicKeyRecord {
            id: KeyId::new(ulid::Ulid::new()),
            org: OrgId::parse("acme").unwrap(),
            name: KeyName::parse("k").unwrap(),
            spec,
            spki_der: generate(spec).spki_der().to_vec(),
            created_at_ms: 0,
            life: Default::default(),
        }
    }

    #[test]
    fn jwks_round_trip_with_fixed_lengths() {
        let cases = [
            (Algorithm::ES256, "EC", Some(32)),
            (Algorithm::ES384, "EC", Some(48)),
            (Algorithm::EdDSA, "OKP", None),
        ];
        for (alg, kty, coordinate) in cases {
            // Many keys, so that short coordinates (leading zero bytes)
            // would show up if they were not padded.
            for _ in 0..64 {
                let r = record(KeySpec::new(alg, None).unwrap());
                let jwk = Jwk::from_record(&r);
                assert_eq!(jwk.kty, kty);
                let x = URL_SAFE_NO_PAD.decode(jwk.x.as_deref().unwrap()).unwrap();
                assert_eq!(x.len(), coordinate.unwrap_or(32), "{alg}");
                let y = jwk.y.as_deref().map(|y| URL_SAFE_NO_PAD.decode(y).unwrap());
                assert_eq!(y.map(|y| y.len()), coordinate, "{alg}");
                assert_eq!(jwk.to_parts(), Ok((r.id, alg, r.spki_der.clone())));
            }
        }
    }

    #[test]
    fn written_jwks_are_the_bytes_serde_writes() {
        let specs = [
            KeySpec::default(),
            KeySpec::new(Algorithm::PS512, Some(Bits::B3072)).unwrap(),
            KeySpec::new(Algorithm::ES256, None).unwrap(),
            KeySpec::new(Algorithm::ES384, None).unwrap(),
            KeySpec::Ed25519,
        ];
        for spec in specs {
            for _ in 0..if matches!(spec, KeySpec::Rsa { .. }) {
                2
            } else {
                32
            } {
                let r = record(spec);
                let mut written = b"[".to_vec();
                Jwk::write(&mut written, r.id, r.spec, &r.spki_der);
                let serde = serde_json::to_vec(&Jwk::from_record(&r)).unwrap();
                assert_eq!(written[1..], serde[..], "{spec:?}");
            }
        }
        // An uploaded RSA key's exponent need not be 65537.
        let private =
            rsa::RsaPrivateKey::new_with_exp(&mut rand::thread_rng(), 2048, &BigUint::from(3u32))
                .unwrap();
        let r = PublicKeyRecord {
            spki_der: private
                .to_public_key()
                .to_public_key_der()
                .unwrap()
                .into_vec(),
            ..record(KeySpec::default())
        };
        let mut written = Vec::new();
        Jwk::write(&mut written, r.id, r.spec, &r.spki_der);
        assert_eq!(written, serde_json::to_vec(&Jwk::from_record(&r)).unwrap());
        assert!(std::str::from_utf8(&written)
            .unwrap()
            .ends_with(",\"e\":\"Aw\"}"));
    }

    #[test]
    fn mismatched_or_broken_jwks_are_refused() {
        let p256 = Jwk::from_record(&record(KeySpec::new(Algorithm::ES256, None).unwrap()));
        let ed = Jwk::from_record(&record(KeySpec::Ed25519));
        let edit = |base: &Jwk, f: &dyn Fn(&mut Jwk)| {
            let mut j = base.clone();
            f(&mut j);
            j.to_parts()
        };
        let cases: Vec<(&str, Result<_, JwkError>)> = vec![
            (
                "ES384 on P-256",
                edit(&p256, &|j| j.alg = Some("ES384".into())),
            ),
            (
                "RS256 on EC",
                edit(&p256, &|j| j.alg = Some("RS256".into())),
            ),
            ("ES256 on OKP", edit(&ed, &|j| j.alg = Some("ES256".into()))),
            ("P-521", edit(&p256, &|j| j.crv = Some("P-521".into()))),
            ("X25519", edit(&ed, &|j| j.crv = Some("X25519".into()))),
            ("short x", edit(&p256, &|j| j.x = Some("AAAA".into()))),
            ("no y", edit(&p256, &|j| j.y = None)),
            (
                "padded x",
                edit(&ed, &|j| j.x = Some(format!("{}=", j.x.clone().unwrap()))),
            ),
            ("not on the curve", edit(&p256, &|j| j.y = j.x.clone())),
            (
                "Ed25519 identity",
                edit(&ed, &|j| {
                    j.x = Some(URL_SAFE_NO_PAD.encode([&[1u8][..], &[0; 31]].concat()))
                }),
            ),
            (
                "Ed25519 y = 2",
                edit(&ed, &|j| {
                    j.x = Some(URL_SAFE_NO_PAD.encode([&[2u8][..], &[0; 31]].concat()))
                }),
            ),
        ];
        for (name, result) in cases {
            assert!(result.is_err(), "{name} was accepted");
        }
    }
}
