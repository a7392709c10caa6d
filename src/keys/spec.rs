//! What kind of key pair a key is: RSA of an algorithm and a size, ECDSA on
//! a named curve, or Ed25519. One type for the API, the stored record, the
//! pool, the JWK encoding and the verifier.

use serde::{Deserialize, Serialize};

use super::{Algorithm, Bits, ParseError};

/// A NIST curve for ECDSA; each has exactly one JWS algorithm (RFC 7518 §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    /// The JWK `crv` name.
    pub fn jwk_name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
        }
    }

    /// Bytes in one coordinate, and in each of `r` and `s` of a signature.
    pub fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }

    pub fn from_jwk_name(name: &str) -> Option<Curve> {
        [Curve::P256, Curve::P384]
            .into_iter()
            .find(|c| c.jwk_name() == name)
    }
}

/// A key type with everything needed to generate, encode and verify it.
///
/// Built from client input only by [`KeySpec::new`], which keeps the RSA
/// variant's `alg` an RSA algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySpec {
    Rsa { alg: Algorithm, bits: Bits },
    Ec { curve: Curve },
    Ed25519,
}

impl Default for KeySpec {
    /// RS256 with 2048 bits: what a create without `algorithm` gets.
    fn default() -> Self {
        KeySpec::Rsa {
            alg: Algorithm::RS256,
            bits: Bits::B2048,
        }
    }
}

impl KeySpec {
    /// The spec a create asks for: `bits` defaults to 2048 for RSA and must
    /// be absent for the others.
    pub fn new(alg: Algorithm, bits: Option<Bits>) -> Result<KeySpec, ParseError> {
        match (alg, bits) {
            (alg, bits) if alg.is_rsa() => Ok(KeySpec::Rsa {
                alg,
                bits: bits.unwrap_or_default(),
            }),
            (alg, Some(_)) => Err(ParseError::BitsNotRsa(alg)),
            (Algorithm::ES256, None) => Ok(KeySpec::Ec { curve: Curve::P256 }),
            (Algorithm::ES384, None) => Ok(KeySpec::Ec { curve: Curve::P384 }),
            (_, None) => Ok(KeySpec::Ed25519),
        }
    }

    /// The one JWS algorithm tokens of this key are signed with.
    pub fn algorithm(self) -> Algorithm {
        match self {
            KeySpec::Rsa { alg, .. } => alg,
            KeySpec::Ec { curve: Curve::P256 } => Algorithm::ES256,
            KeySpec::Ec { curve: Curve::P384 } => Algorithm::ES384,
            KeySpec::Ed25519 => Algorithm::EdDSA,
        }
    }

    /// The RSA modulus size; `None` for EC and Ed25519 keys.
    pub fn bits(self) -> Option<Bits> {
        match self {
            KeySpec::Rsa { bits, .. } => Some(bits),
            _ => None,
        }
    }

    /// The spec of a public key given for `alg` (SPKI DER; for EC and
    /// Ed25519 also the bare point or key), and its canonical SPKI DER: the
    /// form signet stores and the JWK encoding expects. Refuses a key of
    /// another type, curve or size than `alg` calls for.
    pub fn of_public_key(alg: Algorithm, der: &[u8]) -> Result<(KeySpec, Vec<u8>), ParseError> {
        use aws_lc_rs::encoding::AsDer;
        use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
        use rsa::traits::PublicKeyParts;
        let refused = || ParseError::PublicKey(alg);
        if alg.is_rsa() {
            let key = rsa::RsaPublicKey::from_public_key_der(der).map_err(|_| refused())?;
            let bits = Bits::from_u64(key.n().bits() as u64).map_err(|_| refused())?;
            let der = key.to_public_key_der().map_err(|_| refused())?;
            return Ok((KeySpec::Rsa { alg, bits }, der.into_vec()));
        }
        let parsed = aws_lc_rs::signature::ParsedPublicKey::new(alg.verification(), der)
            .map_err(|_| refused())?;
        let der = parsed.as_der().map_err(|_| refused())?;
        let spec = KeySpec::new(alg, None).map_err(|_| refused())?;
        Ok((spec, der.as_ref().to_vec()))
    }
}

/// The JSON form, flattened into the stored record and the API's key
/// documents: `"algorithm"` and `"bits"` (null unless RSA).
#[derive(Serialize, Deserialize)]
struct Fields {
    algorithm: Algorithm,
    #[serde(default)]
    bits: Option<u16>,
}

impl Serialize for KeySpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Fields {
            algorithm: self.algorithm(),
            bits: self.bits().map(Bits::get),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for KeySpec {
    /// Strict: an RSA spec must name its size (2048 to 8192 bits, as an
    /// uploaded key may have), others must not.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = Fields::deserialize(d)?;
        let bits = match (f.algorithm.is_rsa(), f.bits) {
            (true, Some(b)) => Some(Bits::uploaded(b.into()).ok_or(ParseError::Bits)),
            (true, None) => Some(Err(ParseError::Bits)),
            (false, b) => b.map(|_| Err(ParseError::BitsNotRsa(f.algorithm))),
        }
        .transpose()
        .map_err(serde::de::Error::custom)?;
        KeySpec::new(f.algorithm, bits).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_from_algorithm_and_bits() {
        let cases: &[(&str, Option<u64>, Result<KeySpec, ParseError>)] = &[
            ("RS256", None, Ok(KeySpec::default())),
            (
                "PS384",
                Some(4096),
                Ok(KeySpec::Rsa {
                    alg: Algorithm::PS384,
                    bits: Bits::B4096,
                }),
            ),
            ("ES256", None, Ok(KeySpec::Ec { curve: Curve::P256 })),
            ("ES384", None, Ok(KeySpec::Ec { curve: Curve::P384 })),
            ("EdDSA", None, Ok(KeySpec::Ed25519)),
            (
                "ES256",
                Some(2048),
                Err(ParseError::BitsNotRsa(Algorithm::ES256)),
            ),
            (
                "EdDSA",
                Some(2048),
                Err(ParseError::BitsNotRsa(Algorithm::EdDSA)),
            ),
        ];
        for (alg, bits, expected) in cases {
            let bits = bits.map(|b| Bits::from_u64(b).unwrap());
            let spec = KeySpec::new(alg.parse().unwrap(), bits);
            assert_eq!(&spec, expected, "{alg} {bits:?}");
            if let Ok(spec) = spec {
                assert_eq!(spec.algorithm().as_str(), *alg);
            }
        }
    }

    #[test]
    fn public_keys_must_fit_their_algorithm() {
        use crate::keys::generate;
        let spki = |alg| {
            let spec = KeySpec::new(alg, None).unwrap();
            (spec, generate(spec).spki_der().to_vec())
        };
        let [rsa, p256, p384, ed] = [
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ]
        .map(spki);
        for (spec, der) in [&rsa, &p256, &p384, &ed] {
            let got = KeySpec::of_public_key(spec.algorithm(), der);
            assert_eq!(got, Ok((*spec, der.clone())), "{spec:?}");
        }
        // A bare EC point comes back as its SPKI.
        let point = &p256.1[p256.1.len() - 65..];
        assert_eq!(
            KeySpec::of_public_key(Algorithm::ES256, point),
            Ok(p256.clone())
        );
        let small = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024)
            .unwrap()
            .to_public_key();
        let small = rsa::pkcs8::EncodePublicKey::to_public_key_der(&small).unwrap();
        let mismatches: [(Algorithm, &[u8]); 7] = [
            (Algorithm::RS256, small.as_bytes()),
            (Algorithm::RS256, &p256.1),
            (Algorithm::ES256, &p384.1),
            (Algorithm::ES384, &p256.1),
            (Algorithm::ES256, &rsa.1),
            (Algorithm::EdDSA, &p256.1),
            (Algorithm::ES256, &ed.1),
        ];
        for (alg, der) in mismatches {
            assert_eq!(
                KeySpec::of_public_key(alg, der),
                Err(ParseError::PublicKey(alg)),
                "{alg}"
            );
        }
    }

    #[test]
    fn json_form_round_trips_and_is_strict() {
        for alg in Algorithm::ALL {
            let spec = KeySpec::new(alg, None).unwrap();
            let json = serde_json::to_value(spec).unwrap();
            assert_eq!(json["algorithm"], alg.as_str());
            assert_eq!(json["bits"].is_null(), !alg.is_rsa());
            assert_eq!(serde_json::from_value::<KeySpec>(json).unwrap(), spec);
        }
        for bad in [
            r#"{"algorithm":"RS256"}"#,
            r#"{"algorithm":"RS256","bits":null}"#,
            r#"{"algorithm":"ES256","bits":2048}"#,
            r#"{"algorithm":"HS256","bits":null}"#,
            r#"{"algorithm":"RS256","bits":1024}"#,
            r#"{"algorithm":"RS256","bits":8200}"#,
        ] {
            assert!(serde_json::from_str::<KeySpec>(bad).is_err(), "{bad}");
        }
        // An uploaded key's size reads back as stored.
        let odd: KeySpec = serde_json::from_str(r#"{"algorithm":"PS256","bits":2560}"#).unwrap();
        assert_eq!(odd.bits().map(Bits::get), Some(2560));
    }
}
