//! Public keys an organisation uploads: an SPKI PEM (`BEGIN PUBLIC KEY`) or
//! a JWK, checked and turned into the one canonical SPKI DER signet stores.
//!
//! Refused: anything carrying private material (a private-key PEM, a JWK
//! with `d`, `p`, `q`, `dp`, `dq`, `qi`, `oth` or `k`), RSA moduli outside
//! 2048–8192 bits, even or small (< 65537) RSA exponents, EC points not on
//! their curve, at infinity or not uncompressed, Ed25519 keys that are not
//! a point of the curve, are of small order (any signature verifies under
//! the identity, and forgeries are easy under the points of order 2, 4 and
//! 8) or are not canonically encoded, curves other than P-256, P-384 and
//! Ed25519, and an algorithm that does not fit the key. No error message
//! repeats any of the input, so nothing of a private key sent by mistake
//! reaches a response or a log line.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use pkcs8::der::asn1::ObjectIdentifier;
use pkcs8::der::Decode;
use rsa::pkcs8::EncodePublicKey;
use rsa::{BigUint, RsaPublicKey};
use serde_json::{Map, Value};

use super::{Algorithm, Bits, Curve, KeySpec};

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The JWK members that hold private or secret key material.
pub const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The largest RSA public exponent accepted (as in aws-lc's verifiers).
const MAX_EXPONENT: u64 = (1 << 33) - 1;

/// Why an uploaded public key was refused. No variant carries input text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// The upload holds a private or secret key; nothing of it was kept.
    #[error("the upload holds private key material; send only the public key (an SPKI PEM, BEGIN PUBLIC KEY, or a JWK without d, p, q, dp, dq, qi, oth or k); nothing of it was stored or logged")]
    PrivateKey,
    /// Not exactly one PEM block labelled `PUBLIC KEY`.
    #[error("publicKey must be exactly one SPKI PEM block (-----BEGIN PUBLIC KEY-----){0}")]
    NotSpkiPem(&'static str),
    /// The DER inside the PEM is not a SubjectPublicKeyInfo.
    #[error("publicKey does not decode as a SubjectPublicKeyInfo")]
    NotSpki,
    /// A key type signet does not verify with.
    #[error("the key type is not RSA, EC (P-256, P-384) or Ed25519")]
    KeyType,
    /// An EC or OKP key on a curve signet does not verify with.
    #[error("the curve is not P-256, P-384 or Ed25519")]
    UnknownCurve,
    /// An RSA modulus too small or too large.
    #[error("the RSA modulus has {0} bits; an uploaded RSA key must have 2048 to 8192")]
    RsaSize(usize),
    /// An RSA modulus that is even cannot be a product of two odd primes.
    #[error("the RSA modulus is even, so it is not an RSA key")]
    RsaEvenModulus,
    /// An even, small or huge RSA public exponent.
    #[error("the RSA public exponent must be odd and from 65537 to 2^33 - 1")]
    RsaExponent,
    /// An EC point that is not on its curve.
    #[error("the EC point is not on its curve")]
    NotOnCurve,
    /// The EC point at infinity (the single byte 00).
    #[error("the EC point is the point at infinity, which is no public key")]
    Infinity,
    /// 32 bytes that decode to no point of the Ed25519 curve.
    #[error("the Ed25519 key is not a point of the curve")]
    Ed25519OffCurve,
    /// The identity or a point of order 2, 4 or 8, in any encoding.
    #[error("the Ed25519 key is a point of small order (the identity or a point of order 2, 4 or 8), under which signatures can be forged without a private key")]
    Ed25519SmallOrder,
    /// A point whose encoding is not the one canonical form.
    #[error("the Ed25519 key is not canonically encoded: its y coordinate is 2^255 - 19 or more")]
    Ed25519NotCanonical,
    /// A compressed or otherwise encoded EC point.
    #[error("the EC point must be uncompressed (04, x, y)")]
    CompressedPoint,
    /// A JWK member is missing, not a string, or not unpadded base64url of
    /// the right length.
    #[error("the JWK member {0} is missing or is not unpadded base64url of the right length")]
    Member(&'static str),
    /// A JWK `use` other than `sig`.
    #[error("the JWK's use must be \"sig\"")]
    Use,
    /// An RSA key without an algorithm.
    #[error(
        "algorithm is required for an RSA key: one of RS256, RS384, RS512, PS256, PS384, PS512"
    )]
    AlgorithmRequired,
    /// The JWK's `alg` is not an algorithm signet verifies with.
    #[error(
        "the JWK's alg is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, Ed25519"
    )]
    UnsupportedAlg,
    /// The algorithm does not fit the key, or the JWK's `alg` and
    /// `algorithm` disagree.
    #[error("algorithm {given} does not fit this {key} key{hint}")]
    AlgorithmMismatch {
        given: Algorithm,
        key: &'static str,
        hint: String,
    },
    /// The numbers do not form a usable public key.
    #[error("the public key is not usable for verification")]
    Invalid,
}

/// A checked public key: what a record needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub spec: KeySpec,
    /// Canonical SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
}

/// A public key before its algorithm is settled.
enum Material {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { curve: Curve, point: Vec<u8> },
    Ed25519(Vec<u8>),
}

/// An SPKI PEM; `algorithm` is required for RSA keys and otherwise must
/// fit the curve if given.
pub fn from_pem(text: &str, algorithm: Option<Algorithm>) -> Result<Upload, UploadError> {
    if text.contains("PRIVATE KEY") {
        return Err(UploadError::PrivateKey);
    }
    if text.matches("-----BEGIN ").count() != 1 {
        return Err(UploadError::NotSpkiPem(""));
    }
    let (label, der) = pkcs8::der::pem::decode_vec(text.trim().as_bytes())
        .map_err(|_| UploadError::NotSpkiPem(""))?;
    match label {
        "PUBLIC KEY" => {}
        "RSA PUBLIC KEY" => {
            return Err(UploadError::NotSpkiPem(
                "; this is PKCS#1, convert it with `openssl rsa -RSAPublicKey_in -pubout`",
            ))
        }
        _ => return Err(UploadError::NotSpkiPem("")),
    }
    finish(from_spki_der(&der)?, algorithm)
}

/// The material of an SPKI DER document.
fn from_spki_der(der: &[u8]) -> Result<Material, UploadError> {
    let Ok(spki) = pkcs8::spki::SubjectPublicKeyInfoRef::from_der(der) else {
        // A private key wrapped in a PUBLIC KEY label is still private.
        if pkcs8::PrivateKeyInfo::from_der(der).is_ok() {
            return Err(UploadError::PrivateKey);
        }
        return Err(UploadError::NotSpki);
    };
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or(UploadError::NotSpki)?;
    match spki.algorithm.oid {
        RSA_ENCRYPTION => {
            let public =
                rsa::pkcs1::RsaPublicKey::from_der(key).map_err(|_| UploadError::NotSpki)?;
            Ok(Material::Rsa {
                n: public.modulus.as_bytes().to_vec(),
                e: public.public_exponent.as_bytes().to_vec(),
            })
        }
        EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                .and_then(|oid| match oid {
                    P256 => Some(Curve::P256),
                    P384 => Some(Curve::P384),
                    _ => None,
                })
                .ok_or(UploadError::UnknownCurve)?;
            let point = match key.split_first() {
                Some((0x04, xy)) if xy.len() == 2 * curve.coordinate_len() => xy.to_vec(),
                Some((0x02 | 0x03, _)) => return Err(UploadError::CompressedPoint),
                Some((0x00, [])) => return Err(UploadError::Infinity),
                _ => return Err(UploadError::NotOnCurve),
            };
            Ok(Material::Ec { curve, point })
        }
        ED25519 if spki.algorithm.parameters.is_none() => match key.len() {
            32 => Ok(Material::Ed25519(key.to_vec())),
            _ => Err(UploadError::NotSpki),
        },
        _ => Err(UploadError::KeyType),
    }
}

/// A JWK (an object); `algorithm`, if given, must agree with its `alg`.
pub fn from_jwk(
    jwk: &Map<String, Value>,
    algorithm: Option<Algorithm>,
) -> Result<Upload, UploadError> {
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(UploadError::PrivateKey);
    }
    match jwk.get("use") {
        None | Some(Value::Null) => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(_) => return Err(UploadError::Use),
    }
    let alg = match jwk.get("alg") {
        None | Some(Value::Null) => algorithm,
        Some(Value::String(raw)) => {
            let alg = Algorithm::from_jose(raw).map_err(|_| UploadError::UnsupportedAlg)?;
            if let Some(given) = algorithm.filter(|g| *g != alg) {
                return Err(UploadError::AlgorithmMismatch {
                    given,
                    key: "JWK",
                    hint: format!(" (its alg is {alg})"),
                });
            }
            Some(alg)
        }
        Some(_) => return Err(UploadError::UnsupportedAlg),
    };
    let text = |name: &'static str| match jwk.get(name) {
        Some(Value::String(s)) => Ok(s.as_str()),
        _ => Err(UploadError::Member(name)),
    };
    let b64 = |name: &'static str, len: Option<usize>| {
        URL_SAFE_NO_PAD
            .decode(text(name)?)
            .ok()
            .filter(|b| !b.is_empty() && len.is_none_or(|l| b.len() == l))
            .ok_or(UploadError::Member(name))
    };
    let material = match text("kty").map_err(|_| UploadError::KeyType)? {
        "RSA" => Material::Rsa {
            n: b64("n", None)?,
            e: b64("e", None)?,
        },
        "EC" => {
            let curve = Curve::from_jwk_name(text("crv").map_err(|_| UploadError::UnknownCurve)?)
                .ok_or(UploadError::UnknownCurve)?;
            let len = Some(curve.coordinate_len());
            let mut point = b64("x", len)?;
            point.extend(b64("y", len)?);
            Material::Ec { curve, point }
        }
        "OKP" => match text("crv").map_err(|_| UploadError::UnknownCurve)? {
            "Ed25519" => Material::Ed25519(b64("x", Some(32))?),
            _ => return Err(UploadError::UnknownCurve),
        },
        _ => return Err(UploadError::KeyType),
    };
    finish(material, alg)
}

/// Settles the algorithm, checks the numbers, and builds the canonical SPKI.
fn finish(material: Material, alg: Option<Algorithm>) -> Result<Upload, UploadError> {
    let mismatch = |given, key, fits: Algorithm| UploadError::AlgorithmMismatch {
        given,
        key,
        hint: format!(" (use {fits})"),
    };
    let (spec, der) = match material {
        Material::Rsa { n, e } => {
            let n = BigUint::from_bytes_be(&n);
            let bits = n.bits();
            let size = Bits::uploaded(bits).ok_or(UploadError::RsaSize(bits))?;
            if n.to_bytes_be().last().is_none_or(|b| b & 1 == 0) {
                return Err(UploadError::RsaEvenModulus);
            }
            let e = exponent(&e)?;
            let alg = alg.ok_or(UploadError::AlgorithmRequired)?;
            if !alg.is_rsa() {
                return Err(mismatch(alg, "RSA", Algorithm::RS256));
            }
            let public = RsaPublicKey::new_with_max_size(n, BigUint::from(e), 8192)
                .map_err(|_| UploadError::Invalid)?;
            let der = public
                .to_public_key_der()
                .map_err(|_| UploadError::Invalid)?;
            (KeySpec::Rsa { alg, bits: size }, der.into_vec())
        }
        Material::Ec { curve, point } => {
            let spec = KeySpec::Ec { curve };
            if let Some(given) = alg.filter(|a| *a != spec.algorithm()) {
                return Err(mismatch(given, curve.jwk_name(), spec.algorithm()));
            }
            let mut der = super::jwk::ec_prefix(curve).to_vec();
            der.push(0x04);
            der.extend(point);
            (spec, der)
        }
        Material::Ed25519(key) => {
            if let Some(given) = alg.filter(|a| *a != Algorithm::EdDSA) {
                return Err(mismatch(given, "Ed25519", Algorithm::EdDSA));
            }
            check_ed25519(&key)?;
            let mut der = super::jwk::ED25519_SPKI_PREFIX.to_vec();
            der.extend(key);
            (KeySpec::Ed25519, der)
        }
    };
    // The verifier's own parser is the last word: it checks that an EC
    // point is on its curve and that an Ed25519 key decodes.
    aws_lc_rs::signature::ParsedPublicKey::new(spec.algorithm().verification(), &der).map_err(
        |_| match spec {
            KeySpec::Rsa { .. } => UploadError::Invalid,
            _ => UploadError::NotOnCurve,
        },
    )?;
    Ok(Upload {
        spec,
        spki_der: der,
    })
}

/// Refuses an Ed25519 key of small order, off the curve or not canonical.
fn check_ed25519(key: &[u8]) -> Result<(), UploadError> {
    super::ed25519::check(key).map_err(|refused| match refused {
        super::ed25519::Refused::OffCurve => UploadError::Ed25519OffCurve,
        super::ed25519::Refused::SmallOrder => UploadError::Ed25519SmallOrder,
        super::ed25519::Refused::NotCanonical => UploadError::Ed25519NotCanonical,
    })
}

/// An RSA public exponent: odd, from 65537 to 2^33 - 1.
fn exponent(e: &[u8]) -> Result<u64, UploadError> {
    let e = e.iter().skip_while(|b| **b == 0).collect::<Vec<_>>();
    if e.len() > 8 {
        return Err(UploadError::RsaExponent);
    }
    let value = e.iter().fold(0u64, |acc, b| acc << 8 | u64::from(**b));
    if value % 2 == 0 || !(65537..=MAX_EXPONENT).contains(&value) {
        return Err(UploadError::RsaExponent);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate;
    use pkcs8::der::asn1::{AnyRef, BitStringRef};
    use pkcs8::der::Encode;
    use pkcs8::spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An SPKI PEM of `key` under `oid`, with a curve OID as parameter.
    fn spki_pem(oid: ObjectIdentifier, curve: Option<ObjectIdentifier>, key: &[u8]) -> String {
        let curve_der = curve.map(|c| c.to_der().unwrap());
        let parameters = curve_der.as_deref().map(|d| AnyRef::from_der(d).unwrap());
        let null = [0x05, 0x00];
        let parameters = match oid {
            RSA_ENCRYPTION => Some(AnyRef::from_der(&null).unwrap()),
            _ => parameters,
        };
        let info = SubjectPublicKeyInfoRef {
            algorithm: AlgorithmIdentifierRef { oid, parameters },
            subject_public_key: BitStringRef::from_bytes(key).unwrap(),
        };
        pem(&info.to_der().unwrap(), "PUBLIC KEY")
    }

    fn pem(der: &[u8], label: &str) -> String {
        pkcs8::der::pem::encode_string(label, pkcs8::LineEnding::LF, der).unwrap()
    }

    /// The PKCS#1 body of an RSA public key with `n` and `e`.
    fn rsa_key(n: &[u8], e: &[u8]) -> Vec<u8> {
        rsa::pkcs1::RsaPublicKey {
            modulus: pkcs8::der::asn1::UintRef::new(n).unwrap(),
            public_exponent: pkcs8::der::asn1::UintRef::new(e).unwrap(),
        }
        .to_der()
        .unwrap()
    }

    /// An odd number of exactly `bits` bits (not an RSA modulus, but the
    /// parser checks sizes and parity, not primes).
    fn odd(bits: usize) -> Vec<u8> {
        let mut n = vec![0xa5u8; bits.div_ceil(8)];
        let top = bits % 8;
        n[0] = if top == 0 { 0xc5 } else { 1 << (top - 1) | 1 };
        *n.last_mut().unwrap() |= 1;
        n
    }

    #[test]
    fn hostile_uploads_are_refused_with_their_reason() {
        use Algorithm::*;
        let rsa_real = generate(KeySpec::default());
        let ec_real = generate(KeySpec::Ec { curve: Curve::P256 });
        let ec_point = &ec_real.spki_der()[26..];
        let (x, y) = (&ec_point[1..33], &ec_point[33..]);
        let mut off_curve = ec_point.to_vec();
        off_curve[64] ^= 1;
        let mut compressed = vec![0x02];
        compressed.extend_from_slice(x);
        let secp256k1 = ObjectIdentifier::new_unwrap("1.3.132.0.10");
        let e = [1, 0, 1];
        type Case = (&'static str, Result<Upload, UploadError>, UploadError);
        let pem_cases: Vec<Case> = vec![
            (
                "private PKCS#8",
                from_pem(&pem(&[0x30, 0x03, 0x02, 0x01, 0x00], "PRIVATE KEY"), None),
                UploadError::PrivateKey,
            ),
            (
                "private PKCS#1 after a public key",
                from_pem(
                    &format!(
                        "{}{}",
                        spki_pem(RSA_ENCRYPTION, None, &rsa_key(&odd(2048), &e)),
                        pem(&[1, 2, 3], "RSA PRIVATE KEY")
                    ),
                    Some(RS256),
                ),
                UploadError::PrivateKey,
            ),
            (
                "PKCS#1 public",
                from_pem(
                    &pem(&rsa_key(&odd(2048), &e), "RSA PUBLIC KEY"),
                    Some(RS256),
                ),
                UploadError::NotSpkiPem(
                    "; this is PKCS#1, convert it with `openssl rsa -RSAPublicKey_in -pubout`",
                ),
            ),
            (
                "not PEM",
                from_pem("hello", Some(RS256)),
                UploadError::NotSpkiPem(""),
            ),
            (
                "RSA 2047 bits",
                from_pem(
                    &spki_pem(RSA_ENCRYPTION, None, &rsa_key(&odd(2047), &e)),
                    Some(RS256),
                ),
                UploadError::RsaSize(2047),
            ),
            (
                "RSA 8193 bits",
                from_pem(
                    &spki_pem(RSA_ENCRYPTION, None, &rsa_key(&odd(8193), &e)),
                    Some(RS256),
                ),
                UploadError::RsaSize(8193),
            ),
            (
                "RSA exponent 3",
                from_pem(
                    &spki_pem(RSA_ENCRYPTION, None, &rsa_key(&odd(2048), &[3])),
                    Some(RS256),
                ),
                UploadError::RsaExponent,
            ),
            (
                "RSA without algorithm",
                from_pem(
                    &spki_pem(RSA_ENCRYPTION, None, &rsa_key(&odd(2048), &e)),
                    None,
                ),
                UploadError::AlgorithmRequired,
            ),
            (
                "EC off its curve",
                from_pem(&spki_pem(EC_PUBLIC_KEY, Some(P256), &off_curve), None),
                UploadError::NotOnCurve,
            ),
            (
                "EC compressed",
                from_pem(&spki_pem(EC_PUBLIC_KEY, Some(P256), &compressed), None),
                UploadError::CompressedPoint,
            ),
            (
                "secp256k1",
                from_pem(&spki_pem(EC_PUBLIC_KEY, Some(secp256k1), ec_point), None),
                UploadError::UnknownCurve,
            ),
            (
                "EC key said to be ES384",
                from_pem(&spki_pem(EC_PUBLIC_KEY, Some(P256), ec_point), Some(ES384)),
                UploadError::AlgorithmMismatch {
                    given: ES384,
                    key: "P-256",
                    hint: " (use ES256)".into(),
                },
            ),
        ];
        let jwk = |v: serde_json::Value| from_jwk(v.as_object().unwrap(), None);
        let jwk_cases: Vec<Case> = vec![
            (
                "JWK with d",
                jwk(json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y), "d": "AA"})),
                UploadError::PrivateKey,
            ),
            (
                "JWK oct",
                jwk(json!({"kty": "oct", "k": "c2VjcmV0"})),
                UploadError::PrivateKey,
            ),
            (
                "JWK P-521",
                jwk(json!({"kty": "EC", "crv": "P-521", "x": b64(x), "y": b64(y)})),
                UploadError::UnknownCurve,
            ),
            (
                "JWK X25519",
                jwk(json!({"kty": "OKP", "crv": "X25519", "x": b64(x)})),
                UploadError::UnknownCurve,
            ),
            (
                "JWK even exponent",
                jwk(
                    json!({"kty": "RSA", "alg": "RS256", "n": b64(&odd(2048)), "e": b64(&[1, 0, 0])}),
                ),
                UploadError::RsaExponent,
            ),
            (
                "JWK even modulus",
                jwk(
                    json!({"kty": "RSA", "alg": "RS256", "n": b64(&[&odd(2048)[..255], &[2]].concat()), "e": b64(&e)}),
                ),
                UploadError::RsaEvenModulus,
            ),
            (
                "JWK alg HS256",
                jwk(json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y), "alg": "HS256"})),
                UploadError::UnsupportedAlg,
            ),
            (
                "JWK use enc",
                jwk(json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y), "use": "enc"})),
                UploadError::Use,
            ),
            (
                "JWK short x",
                jwk(json!({"kty": "EC", "crv": "P-256", "x": b64(&x[1..]), "y": b64(y)})),
                UploadError::Member("x"),
            ),
        ];
        for (name, got, want) in pem_cases.into_iter().chain(jwk_cases) {
            assert_eq!(got, Err(want), "{name}");
        }
        // The real keys pass, as PEM and as JWK, to the same SPKI.
        let rsa_pem = pem(rsa_real.spki_der(), "PUBLIC KEY");
        let up = from_pem(&rsa_pem, Some(PS256)).unwrap();
        assert_eq!(up.spki_der, rsa_real.spki_der());
        assert_eq!(
            up.spec,
            KeySpec::Rsa {
                alg: PS256,
                bits: Bits::B2048
            }
        );
        let ec = jwk(
            json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y), "alg": "ES256", "kid": "mine"}),
        );
        assert_eq!(ec.unwrap().spki_der, ec_real.spki_der());
        let big = from_pem(
            &spki_pem(RSA_ENCRYPTION, None, &rsa_key(&odd(8192), &e)),
            Some(RS512),
        );
        assert_eq!(big.unwrap().spec.bits().map(Bits::get), Some(8192));
    }

    /// The encodings an Ed25519 upload must be refused for: every point
    /// of small order, canonical or not, y ≥ p, and a y with no x.
    const ED25519_REFUSED: [(&str, &str, UploadError); 15] = {
        use UploadError::{Ed25519NotCanonical as N, Ed25519OffCurve as O, Ed25519SmallOrder as S};
        [
            (
                "identity",
                "0100000000000000000000000000000000000000000000000000000000000000",
                S,
            ),
            (
                "order 2",
                "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
                S,
            ),
            (
                "order 4, sign bit 0",
                "0000000000000000000000000000000000000000000000000000000000000000",
                S,
            ),
            (
                "order 4, sign bit 1",
                "0000000000000000000000000000000000000000000000000000000000000080",
                S,
            ),
            (
                "order 8 (a)",
                "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
                S,
            ),
            (
                "order 8 (a, -x)",
                "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
                S,
            ),
            (
                "order 8 (b)",
                "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
                S,
            ),
            (
                "order 8 (b, -x)",
                "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
                S,
            ),
            (
                "identity, sign bit on x = 0",
                "0100000000000000000000000000000000000000000000000000000000000080",
                S,
            ),
            (
                "order 2, sign bit on x = 0",
                "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
                S,
            ),
            (
                "y = p (order 4)",
                "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
                S,
            ),
            (
                "y = p + 1 (identity)",
                "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
                S,
            ),
            (
                "y = p + 3",
                "f0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
                N,
            ),
            (
                "y = 2^255 - 1",
                "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
                N,
            ),
            (
                "y = 2, off the curve",
                "0200000000000000000000000000000000000000000000000000000000000000",
                O,
            ),
        ]
    };

    #[test]
    fn ed25519_keys_of_small_order_off_the_curve_or_non_canonical_are_refused() {
        // The first eight are exactly the canonical encodings of the
        // eight-torsion subgroup.
        let mut torsion: Vec<[u8; 32]> = curve25519_dalek::constants::EIGHT_TORSION
            .iter()
            .map(|p| p.compress().to_bytes())
            .collect();
        let mut table: Vec<[u8; 32]> = ED25519_REFUSED[..8]
            .iter()
            .map(|(_, h, _)| hex::decode(h).unwrap().try_into().unwrap())
            .collect();
        torsion.sort();
        table.sort();
        assert_eq!(torsion, table);
        for (what, key, want) in ED25519_REFUSED {
            let key = hex::decode(key).unwrap();
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&key)});
            let got = from_jwk(jwk.as_object().unwrap(), None);
            assert_eq!(got, Err(want.clone()), "{what} as JWK");
            let pem = spki_pem(ED25519, None, &key);
            assert_eq!(from_pem(&pem, None), Err(want), "{what} as PEM");
        }
        // RFC 8032 §7.1's public keys, and one signet makes, are accepted.
        let generated = generate(KeySpec::Ed25519);
        let mut real = vec![generated.spki_der()[12..].to_vec()];
        for rfc in [
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
        ] {
            real.push(hex::decode(rfc).unwrap());
        }
        for key in real {
            // Without alg, with EdDSA, and with RFC 9864's name for it.
            for alg in [None, Some("EdDSA"), Some("Ed25519")] {
                let mut jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&key)});
                if let Some(alg) = alg {
                    jwk["alg"] = json!(alg);
                }
                let up = from_jwk(jwk.as_object().unwrap(), Some(Algorithm::EdDSA))
                    .unwrap_or_else(|e| panic!("a real key, alg {alg:?}: {e}"));
                assert_eq!(up.spki_der[12..], key[..]);
                assert_eq!(up.spec, KeySpec::Ed25519);
            }
        }
        // Ed25519 names no other key type.
        let ec = generate(KeySpec::Ec { curve: Curve::P256 });
        let (x, y) = ec.spki_der()[27..].split_at(32);
        let jwk =
            json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(&y[..32]), "alg": "Ed25519"});
        assert!(from_jwk(jwk.as_object().unwrap(), None).is_err());
    }

    #[test]
    fn ec_points_at_infinity_or_off_the_curve_are_refused() {
        let p384 = ObjectIdentifier::new_unwrap("1.3.132.0.34");
        let real = generate(KeySpec::Ec { curve: Curve::P384 });
        let point = &real.spki_der()[23..];
        assert_eq!(point.len(), 97);
        let mut off = point.to_vec();
        off[96] ^= 1;
        let zero = [&[4u8][..], &[0; 96]].concat();
        for (what, key, want) in [
            ("P-256 infinity", (P256, vec![0u8]), UploadError::Infinity),
            ("P-384 infinity", (p384, vec![0u8]), UploadError::Infinity),
            ("P-384 off the curve", (p384, off), UploadError::NotOnCurve),
            ("P-384 (0, 0)", (p384, zero), UploadError::NotOnCurve),
        ] {
            let pem = spki_pem(EC_PUBLIC_KEY, Some(key.0), &key.1);
            assert_eq!(from_pem(&pem, None), Err(want), "{what}");
        }
        let pem = spki_pem(EC_PUBLIC_KEY, Some(p384), point);
        assert_eq!(from_pem(&pem, None).unwrap().spki_der, real.spki_der());
    }

    #[test]
    fn messages_never_repeat_the_input() {
        let secret = "SECRETSECRETSECRET";
        let cases = [
            from_pem(
                &format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
                None,
            ),
            from_pem(
                &format!("-----BEGIN PUBLIC KEY-----\n{secret}\n-----END PUBLIC KEY-----\n"),
                None,
            ),
            from_jwk(json!({"kty": secret}).as_object().unwrap(), None),
            from_jwk(
                json!({"kty": "EC", "crv": secret}).as_object().unwrap(),
                None,
            ),
            from_jwk(
                json!({"kty": "RSA", "alg": secret}).as_object().unwrap(),
                None,
            ),
        ];
        for got in cases {
            let message = got.expect_err("refused").to_string();
            assert!(!message.contains(secret), "{message}");
        }
    }
}
