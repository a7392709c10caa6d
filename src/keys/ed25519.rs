//! The Ed25519 public keys signet refuses wherever a key enters (an upload,
//! a JWK read back or fetched): off the curve, of small order, or not
//! canonically encoded. aws-lc checks none of this, and under a small-order
//! key a token with R = -[k]A, S = 0 verifies without any private key
//! (RFC 8032 §5.1.7 as written accepts it).

/// Why an Ed25519 public key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// 32 bytes that decode to no point of the curve.
    #[error("the Ed25519 key is not a point of the curve")]
    OffCurve,
    /// The identity or a point of order 2, 4 or 8, in any encoding.
    #[error("the Ed25519 key is a point of small order (the identity or a point of order 2, 4 or 8), under which signatures can be forged without a private key")]
    SmallOrder,
    /// A point whose encoding is not its one canonical form (y ≥ p).
    #[error("the Ed25519 key is not canonically encoded: its y coordinate is 2^255 - 19 or more")]
    NotCanonical,
}

/// `Ok` for the 32-byte encoding of a point of the prime-order subgroup in
/// its one canonical encoding.
pub fn check(key: &[u8]) -> Result<(), Refused> {
    let bytes: [u8; 32] = key.try_into().map_err(|_| Refused::OffCurve)?;
    let compressed = curve25519_dalek::edwards::CompressedEdwardsY(bytes);
    let point = compressed.decompress().ok_or(Refused::OffCurve)?;
    if point.is_small_order() {
        return Err(Refused::SmallOrder);
    }
    // dalek reduces y modulo p and takes x's sign bit as given, so a point
    // read from a non-canonical encoding re-encodes differently.
    if point.compress() != compressed {
        return Err(Refused::NotCanonical);
    }
    Ok(())
}
