//! Key-pair generation (RSA, ECDSA P-256/P-384, Ed25519) and the
//! private-key encodings handed to a client exactly once. Nothing here
//! writes anywhere: the private key lives in this value until it is
//! dropped, and is zeroized on drop (`rsa` does it for RSA keys, `Zeroizing`
//! for the PKCS#8 bytes of the others).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::RsaPrivateKey;
use zeroize::Zeroizing;

use super::{Bits, Curve, KeySpec};

/// A freshly generated key pair. Its `Debug` shows nothing of the key.
pub struct GeneratedKey {
    private: Private,
    spki_der: Vec<u8>,
}

enum Private {
    Rsa(Box<RsaPrivateKey>),
    /// An EC or Ed25519 private key as PKCS#8 v1 DER.
    Pkcs8(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GeneratedKey(..)")
    }
}

/// Generates a key pair of `spec` with aws-lc-rs. RSA is CPU-bound for
/// 50–500 ms (call it from a blocking thread, never an async worker); EC
/// and Ed25519 take tens of microseconds.
pub fn generate(spec: KeySpec) -> GeneratedKey {
    use aws_lc_rs::signature::{
        EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
        ECDSA_P384_SHA384_FIXED_SIGNING,
    };
    let (pkcs8, spki) = match spec {
        KeySpec::Rsa { bits, .. } => return generate_rsa(bits),
        KeySpec::Ec { curve } => {
            let alg = match curve {
                Curve::P256 => &ECDSA_P256_SHA256_FIXED_SIGNING,
                Curve::P384 => &ECDSA_P384_SHA384_FIXED_SIGNING,
            };
            let pair = EcdsaKeyPair::generate(alg).expect("EC key generation cannot fail");
            (
                pair.to_pkcs8v1()
                    .expect("an EC key always encodes as PKCS#8"),
                pair.public_key().as_der().map(|d| d.as_ref().to_vec()),
            )
        }
        KeySpec::Ed25519 => {
            let pair = Ed25519KeyPair::generate().expect("Ed25519 generation cannot fail");
            (
                pair.to_pkcs8v1()
                    .expect("an Ed25519 key always encodes as PKCS#8"),
                pair.public_key().as_der().map(|d| d.as_ref().to_vec()),
            )
        }
    };
    GeneratedKey {
        private: Private::Pkcs8(Zeroizing::new(pkcs8.as_ref().to_vec())),
        spki_der: spki.expect("a public key always encodes as SPKI"),
    }
}

/// Generates an RSA key pair with public exponent 65537.
///
/// aws-lc-rs generates (about twice as fast as the `rsa` crate here, and
/// constant-time); the `rsa` crate holds the result and does the encodings.
fn generate_rsa(bits: Bits) -> GeneratedKey {
    use rsa::pkcs8::DecodePrivateKey;
    let size = match bits {
        Bits::B2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
        Bits::B3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
        Bits::B4096 => aws_lc_rs::rsa::KeySize::Rsa4096,
        // Only uploaded keys have other sizes, and signet does not make
        // keys like them (docs/api.md, "Key lifecycle").
        other => return generate_with_rsa_crate(other),
    };
    let pair = aws_lc_rs::rsa::KeyPair::generate(size)
        .expect("RSA generation of a supported size cannot fail");
    let der = Zeroizing::new(
        pair.as_der()
            .expect("a generated key always encodes as PKCS#8")
            .as_ref()
            .to_vec(),
    );
    drop(pair);
    let private = RsaPrivateKey::from_pkcs8_der(&der).expect("aws-lc-rs writes valid PKCS#8");
    from_private(private)
}

/// Generates with the `rsa` crate alone: the baseline in `benches/keygen.rs`.
#[doc(hidden)]
pub fn generate_with_rsa_crate(bits: Bits) -> GeneratedKey {
    let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, usize::from(bits.get()))
        .expect("RSA generation with a supported size and the OS RNG cannot fail");
    from_private(private)
}

fn from_private(private: RsaPrivateKey) -> GeneratedKey {
    let spki_der = private
        .to_public_key()
        .to_public_key_der()
        .expect("an RSA public key always encodes as SPKI")
        .into_vec();
    GeneratedKey {
        private: Private::Rsa(Box::new(private)),
        spki_der,
    }
}

impl GeneratedKey {
    /// SubjectPublicKeyInfo DER of the public half.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The private key as PKCS#8 PEM (`BEGIN PRIVATE KEY`).
    pub fn pkcs8_pem(&self) -> Zeroizing<String> {
        match &self.private {
            Private::Rsa(key) => key
                .to_pkcs8_pem(LineEnding::LF)
                .expect("an RSA private key always encodes as PKCS#8"),
            Private::Pkcs8(der) => Zeroizing::new(
                pkcs8::der::pem::encode_string("PRIVATE KEY", LineEnding::LF, der)
                    .expect("PKCS#8 DER always encodes as PEM"),
            ),
        }
    }

    /// The private key as PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`), for the
    /// compatibility route; `None` for a key that is not RSA.
    pub fn pkcs1_pem(&self) -> Option<Zeroizing<String>> {
        match &self.private {
            Private::Rsa(key) => Some(
                key.to_pkcs1_pem(LineEnding::LF)
                    .expect("an RSA private key always encodes as PKCS#1"),
            ),
            Private::Pkcs8(_) => None,
        }
    }

    /// The RSA private key itself, for tests that look for its bytes on disk.
    pub fn rsa_private(&self) -> Option<&RsaPrivateKey> {
        match &self.private {
            Private::Rsa(key) => Some(key),
            Private::Pkcs8(_) => None,
        }
    }
}
