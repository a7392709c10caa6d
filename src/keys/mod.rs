//! The domain of signing keys: identifiers and names parsed at the boundary,
//! the supported algorithms and key types, and the public-key record that is
//! the only thing signet keeps of a key pair.

mod ed25519;
mod generate;
mod jwk;
mod jwt;
mod spec;
pub mod upload;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use generate::{generate, generate_with_rsa_crate, GeneratedKey};
pub use jwk::{Jwk, JwkError};
pub use jwt::jwt_alg;
pub use spec::{Curve, KeySpec};

/// Why a piece of client input is not a valid identifier, name or parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// An organisation id outside `[A-Za-z0-9._-]{1,64}`.
    #[error("organisation id must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'")]
    OrgId,
    /// A key id that is not a 26-character ULID.
    #[error("key id must be a 26-character ULID")]
    KeyId,
    /// A key name that is empty, too long or holds control characters.
    #[error("name must be 1 to 128 characters without control characters")]
    KeyName,
    /// An algorithm signet does not issue keys for.
    #[error(
        "algorithm must be one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
    )]
    Algorithm,
    /// A key size other than 2048, 3072 or 4096 bits.
    #[error("bits must be one of 2048, 3072, 4096")]
    Bits,
    /// `bits` given for an algorithm whose key size is fixed by its curve.
    #[error("bits applies only to RSA algorithms; leave it out for {0}")]
    BitsNotRsa(Algorithm),
    /// An expiry that is not an RFC 3339 time.
    #[error("expiresAt must be an RFC 3339 time such as 2027-01-31T12:00:00Z")]
    ExpiresAt,
    /// A public key that is not of the type and size its algorithm needs.
    #[error("the public key is not a valid key for {0}: RS* and PS* need RSA of 2048, 3072 or 4096 bits, ES256 P-256, ES384 P-384, EdDSA Ed25519")]
    PublicKey(Algorithm),
}

/// An organisation id: 1–64 characters of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct OrgId(String);

impl OrgId {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let ok = (1..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(OrgId(raw.to_owned()))
        } else {
            Err(ParseError::OrgId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for OrgId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        OrgId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A key id: a ULID, which is also the JWT `kid` and sorts by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(ulid::Ulid);

impl KeyId {
    pub fn new(ulid: ulid::Ulid) -> Self {
        KeyId(ulid)
    }

    /// Parses the canonical 26-character form (Crockford base32, any case).
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.len() != ulid::ULID_LEN {
            return Err(ParseError::KeyId);
        }
        // The ulid crate silently wraps values above 7ZZZ…; insisting on
        // the canonical spelling keeps one id per string.
        match ulid::Ulid::from_string(raw) {
            Ok(id) if id.to_string().eq_ignore_ascii_case(raw) => Ok(KeyId(id)),
            _ => Err(ParseError::KeyId),
        }
    }

    /// Parses the canonical spelling only, in upper case, as a JWT's `kid`
    /// must be: it is case-sensitive (RFC 7515), and a JWK Set lists each
    /// key's id in upper case.
    pub fn parse_exact(raw: &str) -> Result<Self, ParseError> {
        let id = KeyId::parse(raw)?;
        let mut buf = [0u8; ulid::ULID_LEN];
        match id.0.array_to_str(&mut buf) == raw {
            true => Ok(id),
            false => Err(ParseError::KeyId),
        }
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        KeyId(ulid::Ulid::from_bytes(bytes))
    }

    /// Milliseconds since the Unix epoch at which the id was minted.
    pub fn timestamp_ms(self) -> u64 {
        self.0.timestamp_ms()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        KeyId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A human label for a key: 1–128 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct KeyName(String);

impl KeyName {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let chars = raw.chars().count();
        if (1..=128).contains(&chars) && !raw.chars().any(char::is_control) {
            Ok(KeyName(raw.to_owned()))
        } else {
            Err(ParseError::KeyName)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        KeyName::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The JWS algorithms signet issues keys for: RSA PKCS#1 v1.5, RSA-PSS,
/// ECDSA on P-256 and P-384, and EdDSA with Ed25519.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    #[default]
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// The aws-lc-rs verification algorithm for this JWS algorithm. ECDSA
    /// takes only the fixed-length `r ‖ s` signatures of RFC 7518 §3.4.
    pub fn verification(self) -> &'static dyn aws_lc_rs::signature::VerificationAlgorithm {
        use aws_lc_rs::signature as s;
        match self {
            Algorithm::RS256 => &s::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::RS384 => &s::RSA_PKCS1_2048_8192_SHA384,
            Algorithm::RS512 => &s::RSA_PKCS1_2048_8192_SHA512,
            Algorithm::PS256 => &s::RSA_PSS_2048_8192_SHA256,
            Algorithm::PS384 => &s::RSA_PSS_2048_8192_SHA384,
            Algorithm::PS512 => &s::RSA_PSS_2048_8192_SHA512,
            Algorithm::ES256 => &s::ECDSA_P256_SHA256_FIXED,
            Algorithm::ES384 => &s::ECDSA_P384_SHA384_FIXED,
            Algorithm::EdDSA => &s::ED25519,
        }
    }

    /// Whether keys of this algorithm are RSA keys (and so have a size).
    pub fn is_rsa(self) -> bool {
        !matches!(self, Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA)
    }

    /// A JOSE `alg` (a JWK's or a token header's): one of signet's names,
    /// or `Ed25519`, RFC 9864's fully-specified name for EdDSA over
    /// Ed25519. signet itself always writes `EdDSA`.
    pub fn from_jose(alg: &str) -> Result<Algorithm, ParseError> {
        match alg {
            "Ed25519" => Ok(Algorithm::EdDSA),
            other => other.parse(),
        }
    }
}

impl FromStr for Algorithm {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or(ParseError::Algorithm)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Algorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// RSA modulus size in bits. Generated keys are 2048, 3072 or 4096 bits
/// ([`Bits::from_u64`]); an uploaded key may be any size from 2048 to 8192
/// ([`Bits::uploaded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bits(u16);

impl Default for Bits {
    fn default() -> Self {
        Bits::B2048
    }
}

impl Bits {
    pub const B2048: Bits = Bits(2048);
    pub const B3072: Bits = Bits(3072);
    pub const B4096: Bits = Bits(4096);
    /// The sizes signet generates.
    pub const ALL: [Bits; 3] = [Bits::B2048, Bits::B3072, Bits::B4096];
    /// The smallest and largest modulus an uploaded key may have.
    pub const UPLOAD_RANGE: std::ops::RangeInclusive<u16> = 2048..=8192;

    pub fn get(self) -> u16 {
        self.0
    }

    /// A size signet generates: 2048, 3072 or 4096.
    pub fn from_u64(bits: u64) -> Result<Self, ParseError> {
        Bits::ALL
            .into_iter()
            .find(|b| u64::from(b.get()) == bits)
            .ok_or(ParseError::Bits)
    }

    /// The size of an uploaded modulus: 2048 to 8192 bits.
    pub fn uploaded(bits: usize) -> Option<Self> {
        u16::try_from(bits)
            .ok()
            .filter(|b| Bits::UPLOAD_RANGE.contains(b))
            .map(Bits)
    }
}

impl Serialize for Bits {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.get())
    }
}

impl<'de> Deserialize<'de> for Bits {
    /// Strict: only the sizes a create may ask for.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = u64::deserialize(d)?;
        Bits::from_u64(raw).map_err(serde::de::Error::custom)
    }
}

/// Where a key pair was made: by signet, or by the organisation, which
/// uploaded only its public half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    #[default]
    Generated,
    Uploaded,
}

/// A key's state as the API shows it. `disabled` is stored; `expired` is
/// derived from `expiresAt` and the clock, and wins over `disabled`, since
/// it is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Active,
    Disabled,
    Expired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Disabled => "disabled",
            KeyState::Expired => "expired",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a key's life holds beyond its material. Every field has a default,
/// so a record written before keys could expire, be disabled or be uploaded
/// reads as an active, generated key that never expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Lifecycle {
    #[serde(default)]
    pub disabled: bool,
    /// Seconds since the Unix epoch; from that second on the key is expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_secs: Option<u64>,
    #[serde(default)]
    pub origin: Origin,
}

/// Everything signet keeps of a key pair. There is no private half here, by
/// construction: this type is what `store` persists.
///
/// The key spec is stored as `algorithm` and `bits` (null for EC and
/// Ed25519 keys), so a record written before EC and Ed25519 keys existed
/// (always RSA, always with `bits`) reads unchanged; likewise the
/// [`Lifecycle`] fields. Unknown fields are not refused here (serde cannot
/// combine that with flattened fields); the record is sealed, so only
/// signet itself writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyRecord {
    pub id: KeyId,
    pub org: OrgId,
    pub name: KeyName,
    #[serde(flatten)]
    pub spec: KeySpec,
    /// SubjectPublicKeyInfo, DER.
    #[serde(with = "b64")]
    pub spki_der: Vec<u8>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    #[serde(flatten)]
    pub life: Lifecycle,
}

impl PublicKeyRecord {
    /// The public key as SPKI PEM (`BEGIN PUBLIC KEY`).
    pub fn public_key_pem(&self) -> String {
        pkcs8::Document::try_from(self.spki_der.as_slice())
            .and_then(|doc| doc.to_pem("PUBLIC KEY", pkcs8::LineEnding::LF))
            .expect("a stored SPKI document always re-encodes as PEM")
    }

    /// The creation time as RFC 3339 UTC, to the second.
    pub fn created_at(&self) -> String {
        rfc3339(self.created_at_ms)
    }

    /// The state at `now` (seconds since the epoch).
    pub fn state_at(&self, now: u64) -> KeyState {
        match self.life {
            Lifecycle {
                expires_at_secs: Some(at),
                ..
            } if now >= at => KeyState::Expired,
            Lifecycle { disabled: true, .. } => KeyState::Disabled,
            _ => KeyState::Active,
        }
    }

    /// SHA-256 of the SPKI DER: the same public key has the same
    /// fingerprint whatever its algorithm or encoding on upload.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(&self.spki_der).into()
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Parses an RFC 3339 time (any offset) into whole seconds since the epoch,
/// rounded down, so a key never outlives the instant it was given.
pub fn parse_time(raw: &str) -> Result<u64, ParseError> {
    chrono::DateTime::parse_from_rfc3339(raw)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp()).ok())
        .ok_or(ParseError::ExpiresAt)
}

/// The API's `PublicKey` document, and with `private_key` set, its
/// `SigningKeySet`: the one JSON form of a key, for HTTP and the CLI.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyView<'a> {
    id: KeyId,
    organisation_id: &'a OrgId,
    name: &'a KeyName,
    #[serde(flatten)]
    spec: KeySpec,
    public_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<&'a str>,
    created_at: String,
    expires_at: Option<String>,
    state: KeyState,
    origin: Origin,
}

impl<'a> KeyView<'a> {
    /// The key as it stands now.
    pub fn new(r: &'a PublicKeyRecord) -> KeyView<'a> {
        KeyView {
            id: r.id,
            organisation_id: &r.org,
            name: &r.name,
            spec: r.spec,
            public_key: r.public_key_pem(),
            private_key: None,
            created_at: r.created_at(),
            expires_at: r
                .life
                .expires_at_secs
                .map(|s| rfc3339(s.saturating_mul(1000))),
            state: r.state_at(now_secs()),
            origin: r.life.origin,
        }
    }
}

/// Formats milliseconds since the epoch as RFC 3339 UTC (`2026-11-22T15:25:23Z`).
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let raw = String::deserialize(d)?;
        STANDARD.decode(raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_ids() {
        for ok in ["a", "acme", "A.b_c-9", &"x".repeat(64)] {
            assert!(OrgId::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "a b", "a/b", "é", "a\0", &"x".repeat(65), "../etc"] {
            assert_eq!(OrgId::parse(bad), Err(ParseError::OrgId), "{bad:?}");
        }
    }

    #[test]
    fn key_ids() {
        let id = KeyId::new(ulid::Ulid::new());
        assert_eq!(KeyId::parse(&id.to_string()), Ok(id));
        assert_eq!(KeyId::parse(&id.to_string().to_lowercase()), Ok(id));
        for bad in [
            "",
            "01ARZ3NDEKTSV4RRFFQ69G5FA",
            "01ARZ3NDEKTSV4RRFFQ69G5FAVV",
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "01ARZ3NDEKTSV4RRFFQ69G5FA!",
        ] {
            assert_eq!(KeyId::parse(bad), Err(ParseError::KeyId), "{bad:?}");
        }
    }

    #[test]
    fn key_names() {
        assert!(KeyName::parse("Production signer ✓").is_ok());
        assert!(KeyName::parse(&"é".repeat(128)).is_ok());
        for bad in ["", "a\nb", "tab\there", "\u{7f}", &"x".repeat(129)] {
            assert_eq!(KeyName::parse(bad), Err(ParseError::KeyName), "{bad:?}");
        }
    }

    #[test]
    fn algorithms_and_bits_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.as_str().parse::<Algorithm>(), Ok(a));
        }
        for bad in ["rs256", "HS256", "none", "ES512", "Ed25519", "EDDSA", ""] {
            assert_eq!(bad.parse::<Algorithm>(), Err(ParseError::Algorithm));
        }
        for b in Bits::ALL {
            assert_eq!(Bits::from_u64(b.get().into()), Ok(b));
        }
        assert_eq!(Bits::from_u64(1024), Err(ParseError::Bits));
    }

    #[test]
    fn records_without_lifecycle_fields_read_as_active_generated_and_unexpiring() {
        // A record as schema 2 wrote it.
        let old = r#"{"id":"01JDBJ3Z4N8Q7XJ6V9W2F5K0AB","org":"acme","name":"k","algorithm":"ES256","bits":null,"spki_der":"AAEC","created_at_ms":5}"#;
        let record: PublicKeyRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.life, Lifecycle::default());
        assert_eq!(record.state_at(u64::MAX), KeyState::Active);
        assert_eq!(record.life.origin, Origin::Generated);
        // And the new fields round-trip.
        let mut new = record.clone();
        new.life = Lifecycle {
            disabled: true,
            expires_at_secs: Some(100),
            origin: Origin::Uploaded,
        };
        let json = serde_json::to_string(&new).unwrap();
        assert_eq!(serde_json::from_str::<PublicKeyRecord>(&json).unwrap(), new);
        let states = [(99, KeyState::Disabled), (100, KeyState::Expired)];
        for (now, state) in states {
            assert_eq!(new.state_at(now), state, "at {now}");
        }
    }

    #[test]
    fn times_parse_to_whole_seconds() {
        assert_eq!(parse_time("1970-01-01T00:00:10.999Z"), Ok(10));
        assert_eq!(parse_time("1970-01-01T01:00:10+01:00"), Ok(10));
        for bad in [
            "",
            "tomorrow",
            "1969-12-31T23:59:59Z",
            "2027-01-31 12:00:00",
        ] {
            assert_eq!(parse_time(bad), Err(ParseError::ExpiresAt), "{bad}");
        }
    }

    #[test]
    fn rfc3339_is_utc_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_999), "2023-11-14T22:13:20Z");
    }
}
