//! RSA key-pair generation and the private-key encodings handed to a client
//! exactly once. Nothing here writes anywhere: the private key lives in this
//! value until it is dropped, and `rsa` zeroizes it on drop.

use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::RsaPrivateKey;
use zeroize::Zeroizing;

use super::Bits;

/// A freshly generated key pair. Its `Debug` shows nothing of the key.
pub struct GeneratedKey {
    private: RsaPrivateKey,
    spki_der: Vec<u8>,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GeneratedKey(..)")
    }
}

/// Generates an RSA key pair with public exponent 65537. CPU-bound for
/// 50–500 ms: call it from a blocking thread, never an async worker.
///
/// aws-lc-rs generates (about twice as fast as the `rsa` crate here, and
/// constant-time); the `rsa` crate holds the result and does the encodings.
pub fn generate(bits: Bits) -> GeneratedKey {
    use aws_lc_rs::encoding::AsDer;
    use rsa::pkcs8::DecodePrivateKey;
    let size = match bits {
        Bits::B2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
        Bits::B3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
        Bits::B4096 => aws_lc_rs::rsa::KeySize::Rsa4096,
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
    GeneratedKey { private, spki_der }
}

impl GeneratedKey {
    /// SubjectPublicKeyInfo DER of the public half.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The private key as PKCS#8 PEM (`BEGIN PRIVATE KEY`).
    pub fn pkcs8_pem(&self) -> Zeroizing<String> {
        self.private
            .to_pkcs8_pem(LineEnding::LF)
            .expect("an RSA private key always encodes as PKCS#8")
    }

    /// The private key as PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`), for the
    /// compatibility route.
    pub fn pkcs1_pem(&self) -> Zeroizing<String> {
        self.private
            .to_pkcs1_pem(LineEnding::LF)
            .expect("an RSA private key always encodes as PKCS#1")
    }

    /// The private key itself, for tests that look for its bytes on disk.
    pub fn private(&self) -> &RsaPrivateKey {
        &self.private
    }
}
