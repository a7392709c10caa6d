//! Pure JWS compact parsing and claim checks: no keys, no I/O, no clock of
//! its own. Everything here runs before or after the one signature check.
//!
//! The header and the claims are decoded into fixed structs that borrow
//! from the decoded bytes: only the members the checks read are kept,
//! every other member is still parsed as strictly as a `serde_json::Value`
//! would be (numbers in range, strings valid, nesting bounded), and a
//! duplicate member name, known or not, refuses the token. A verified
//! token keeps its header's and claims' JSON text, from which
//! `POST /v1/verify` builds the full objects when it answers.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::VerifyError;
use crate::keys::{Algorithm, KeyId};

/// Header parameters that carry or point to a key. signet never fetches or
/// trusts a key named by a token, so a token that has one is refused.
const EMBEDDED_KEY_HEADERS: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

/// A compact JWS split into its parts, header decoded and checked.
pub struct Parsed<'t> {
    pub alg: Algorithm,
    pub kid: KeyId,
    /// The header's JSON text, with room for the claims' after it.
    text: Vec<u8>,
    /// `base64url(header) . base64url(payload)`: what the signature covers.
    pub signing_input: &'t str,
    payload_b64: &'t str,
    pub signature: Signature,
}

impl Parsed<'_> {
    /// Decodes the claims; call once the signature verified.
    pub fn contents(self) -> Result<Contents, VerifyError> {
        let mut text = self.text;
        let header_len = text.len();
        URL_SAFE_NO_PAD
            .decode_vec(self.payload_b64, &mut text)
            .map_err(|_| VerifyError::Malformed("payload is not unpadded base64url".into()))?;
        Contents::new(text, header_len)
    }
}

/// Room on the stack for a decoded signature: any of them (RSA 4096 is 512
/// bytes), so that it costs no allocation.
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

/// The bytes unpadded base64url `part` decodes to, at most.
fn decoded_len(part: &str) -> usize {
    part.len() / 4 * 3 + 3
}

/// Refuses a token longer than `max_bytes` (`verify.max_token_bytes`)
/// before anything of it is decoded.
pub fn within_limit(token: &str, max_bytes: usize) -> Result<(), VerifyError> {
    match token.len() > max_bytes {
        true => Err(VerifyError::Malformed(format!(
            "token is {} bytes, over the limit of {max_bytes}",
            token.len()
        ))),
        false => Ok(()),
    }
}

pub fn parse(token: &str, max_bytes: usize) -> Result<Parsed<'_>, VerifyError> {
    within_limit(token, max_bytes)?;
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed(
            "a JWS in compact form has exactly three dot-separated parts".into(),
        ));
    };
    // One allocation holds the header's and then the claims' JSON.
    let mut text = Vec::with_capacity(decoded_len(h) + decoded_len(p));
    URL_SAFE_NO_PAD
        .decode_vec(h, &mut text)
        .map_err(|_| VerifyError::Malformed("header is not unpadded base64url".into()))?;
    let header = serde_json::from_slice::<Object<Header>>(&text)
        .map_err(|e| VerifyError::Malformed(format!("header is not a JSON object: {e}")))?
        .0;
    let alg = match &header.alg {
        Some(Member::Str(alg)) => Algorithm::from_jose(alg).map_err(|_| {
            VerifyError::UnsupportedAlgorithm(format!(
                "algorithm {:?} is not accepted; only RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA and Ed25519 are",
                &**alg
            ))
        })?,
        Some(_) => return Err(VerifyError::Malformed("header alg must be a string".into())),
        None => return Err(VerifyError::Malformed("header has no alg".into())),
    };
    if let Some(name) = EMBEDDED_KEY_HEADERS
        .iter()
        .zip(&header.embedded)
        .find_map(|(name, member)| member.is_some().then_some(name))
    {
        return Err(VerifyError::Malformed(format!(
            "header carries {name:?}; signet never uses a key named or carried by a token"
        )));
    }
    if let Some(crit) = &header.crit {
        // RFC 7515 §4.1.11: a non-empty array of names this verifier must
        // understand. signet understands no extension, so any entry refuses.
        return Err(match crit {
            Member::Strings(names) if names.is_empty() => {
                VerifyError::Malformed("header crit must be a non-empty array".into())
            }
            Member::Strings(_) | Member::Array => {
                // Rare: the message shows the value as the token wrote it.
                let crit = decode_object(h, "header")
                    .ok()
                    .and_then(|mut h| h.remove("crit"))
                    .unwrap_or_default();
                VerifyError::Malformed(format!(
                    "header marks {crit} as critical, and signet understands no JWS extension"
                ))
            }
            _ => VerifyError::Malformed("header crit must be a non-empty array".into()),
        });
    }
    let kid = match &header.kid {
        Some(Member::Str(kid)) => KeyId::parse_exact(kid).map_err(|_| {
            VerifyError::UnknownKey(format!(
                "kid {:?} is not a signet key id (26 characters, upper case)",
                &**kid
            ))
        })?,
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
        alg,
        kid,
        text,
        signing_input: &token[..h.len() + 1 + p.len()],
        payload_b64: p,
        signature,
    })
}

/// Decodes one base64url part into a JSON object whose keys are unique.
pub fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, VerifyError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| VerifyError::Malformed(format!("{what} is not unpadded base64url")))?;
    serde_json::from_slice::<UniqueObject>(&bytes)
        .map(|o| o.0)
        .map_err(|e| VerifyError::Malformed(format!("{what} is not a JSON object: {e}")))
}

/// A JSON object that refuses duplicate member names, so that two parsers
/// can never read two different values out of one token.
struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
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
                            return Err(duplicate(e.key()));
                        }
                    }
                }
                Ok(UniqueObject(map))
            }
        }
        d.deserialize_map(V)
    }
}

fn duplicate<E: serde::de::Error>(name: &str) -> E {
    E::custom(format!("duplicate member {name:?}"))
}

/// The members of a JSON object that a struct keeps; every other member
/// is parsed and dropped.
trait Members<'de>: Default {
    /// Where the value of member `name` goes, if this struct keeps it.
    fn slot(&mut self, name: &str) -> Option<&mut Option<Member<'de>>>;
}

/// A JSON object decoded into `T`, refusing duplicate member names like
/// `UniqueObject`, with the same errors at the same positions.
struct Object<T>(T);

impl<'de, T: Members<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Members<'de>> Visitor<'de> for V<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Object<T>, A::Error> {
                let mut kept = T::default();
                let mut others = Names::default();
                while let Some(Name(name)) = access.next_key::<Name<'de>>()? {
                    match kept.slot(&name) {
                        Some(slot) if slot.is_none() => *slot = Some(access.next_value()?),
                        Some(_) => return Err(duplicate(&name)),
                        None => match others.insert(name) {
                            Ok(()) => access.next_value::<Skip>().map(drop)?,
                            Err(name) => return Err(duplicate(&name)),
                        },
                    }
                }
                Ok(Object(kept))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Member names seen, other than the kept ones: on the stack for the
/// usual few, in a tree beyond (so that a token of ten thousand names
/// costs no quadratic scan).
struct Names<'de> {
    inline: [Cow<'de, str>; 8],
    len: usize,
    spill: BTreeSet<Cow<'de, str>>,
}

impl Default for Names<'_> {
    fn default() -> Self {
        Names {
            inline: [const { Cow::Borrowed("") }; 8],
            len: 0,
            spill: BTreeSet::new(),
        }
    }
}

impl<'de> Names<'de> {
    /// Adds `name`; gives it back if it was there.
    fn insert(&mut self, name: Cow<'de, str>) -> Result<(), Cow<'de, str>> {
        if self.inline[..self.len].contains(&name) || self.spill.contains(&name) {
            return Err(name);
        }
        if self.len < self.inline.len() {
            self.inline[self.len] = name;
            self.len += 1;
        } else {
            self.spill.insert(name);
        }
        Ok(())
    }
}

/// A member name, borrowed from the input unless it had escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A kept member's value, as far as the checks tell values apart.
#[derive(Debug)]
enum Member<'de> {
    Number(f64),
    Str(Cow<'de, str>),
    /// An array of strings only (possibly empty).
    Strings(Vec<Cow<'de, str>>),
    /// An array with an element that is not a string.
    Array,
    /// `true`, `false`, `null` or an object.
    Other,
}

impl<'de> Deserialize<'de> for Member<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Classify { in_array: false })
    }
}

/// A value read the way `serde_json::Value` reads it (`deserialize_any`:
/// numbers in range, strings valid), and classified. Inside an array only
/// strings are kept: anything else there is read and becomes `Other`.
#[derive(Clone, Copy)]
struct Classify {
    in_array: bool,
}

impl Classify {
    /// A number, as `serde_json::Number::as_f64` gives it.
    fn number<'de>(self, n: f64) -> Member<'de> {
        if self.in_array {
            Member::Other
        } else {
            Member::Number(n)
        }
    }
}

impl<'de> DeserializeSeed<'de> for Classify {
    type Value = Member<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Member<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Classify {
    type Value = Member<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Member<'de>, E> {
        Ok(Member::Other)
    }
    fn visit_i64<E>(self, n: i64) -> Result<Member<'de>, E> {
        Ok(self.number(n as f64))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Member<'de>, E> {
        Ok(self.number(n as f64))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Member<'de>, E> {
        Ok(self.number(n))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Member<'de>, E> {
        Ok(Member::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Member<'de>, E> {
        Ok(Member::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Member<'de>, E> {
        Ok(Member::Str(Cow::Owned(s)))
    }
    fn visit_unit<E>(self) -> Result<Member<'de>, E> {
        Ok(Member::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Member<'de>, A::Error> {
        if self.in_array {
            return Skip.visit_seq(seq).map(|()| Member::Other);
        }
        let mut strings = Some(Vec::new());
        while let Some(element) = seq.next_element_seed(Classify { in_array: true })? {
            match (element, &mut strings) {
                (Member::Str(s), Some(all)) => all.push(s),
                (Member::Str(_), None) => {}
                _ => strings = None,
            }
        }
        Ok(strings.map_or(Member::Array, Member::Strings))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Member<'de>, A::Error> {
        Skip.visit_map(map).map(|()| Member::Other)
    }
}

/// A value read as strictly as `serde_json::Value` reads it, and dropped.
/// (`serde::de::IgnoredAny` would let serde_json skip it unchecked.)
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Skip).map(|()| Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(())
    }
}

/// The header members the checks read; `embedded` in the order of
/// `EMBEDDED_KEY_HEADERS`.
#[derive(Default)]
struct Header<'de> {
    alg: Option<Member<'de>>,
    kid: Option<Member<'de>>,
    crit: Option<Member<'de>>,
    embedded: [Option<Member<'de>>; 4],
}

impl<'de> Members<'de> for Header<'de> {
    fn slot(&mut self, name: &str) -> Option<&mut Option<Member<'de>>> {
        match name {
            "alg" => Some(&mut self.alg),
            "kid" => Some(&mut self.kid),
            "crit" => Some(&mut self.crit),
            _ => EMBEDDED_KEY_HEADERS
                .iter()
                .position(|n| *n == name)
                .map(|i| &mut self.embedded[i]),
        }
    }
}

/// The claims the checks (and `/v1/auth`'s `x-signet-sub`) read.
#[derive(Default)]
struct Claims<'de> {
    exp: Option<Member<'de>>,
    nbf: Option<Member<'de>>,
    iat: Option<Member<'de>>,
    aud: Option<Member<'de>>,
    iss: Option<Member<'de>>,
    org: Option<Member<'de>>,
    sub: Option<Member<'de>>,
}

impl<'de> Members<'de> for Claims<'de> {
    fn slot(&mut self, name: &str) -> Option<&mut Option<Member<'de>>> {
        Some(match name {
            "exp" => &mut self.exp,
            "nbf" => &mut self.nbf,
            "iat" => &mut self.iat,
            "aud" => &mut self.aud,
            "iss" => &mut self.iss,
            "org" => &mut self.org,
            "sub" => &mut self.sub,
            _ => return None,
        })
    }
}

/// Where a string lies in `Contents::text`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

/// A NumericDate claim as the token wrote it.
#[derive(Debug, Clone, Copy)]
enum Time {
    Absent,
    Number(f64),
    NotNumber,
}

/// A claim that must be a string where it is checked.
#[derive(Debug, Clone, Copy)]
enum Text {
    Absent,
    Str(Span),
    NotString,
}

/// The `aud` claim: a string or an array of strings.
#[derive(Debug)]
enum Audience {
    Absent,
    One(Span),
    Many(Box<[Span]>),
    Neither,
}

/// What a verified token says: the JSON text of its header and of its
/// claims, and the claims the checks read, decoded once. A cached verdict
/// keeps it, so a hit checks the claims without parsing anything.
#[derive(Debug)]
pub struct Contents {
    /// The header's JSON, the claims' JSON, then any kept claim string
    /// that had escapes, unescaped.
    text: String,
    header_end: usize,
    claims_end: usize,
    exp: Time,
    nbf: Time,
    iat: Time,
    aud: Audience,
    iss: Text,
    org: Text,
    sub: Text,
}

impl Contents {
    /// `text` holds the header's JSON (already checked by `parse`) in its
    /// first `header_end` bytes, then the claims' JSON.
    fn new(text: Vec<u8>, header_end: usize) -> Result<Contents, VerifyError> {
        let claims_end = text.len();
        let claims = serde_json::from_slice::<Object<Claims>>(&text[header_end..])
            .map_err(|e| VerifyError::Malformed(format!("payload is not a JSON object: {e}")))?
            .0;
        // Strings borrowed from `text` are found by their address; those
        // that had escapes go after the claims, in `unescaped`.
        let mut unescaped = String::new();
        let base = text.as_ptr() as usize;
        let mut span = |s: Cow<'_, str>| {
            let len = s.len();
            let start = match s {
                Cow::Borrowed(b) => b.as_ptr() as usize - base,
                Cow::Owned(o) => {
                    let start = claims_end + unescaped.len();
                    unescaped.push_str(&o);
                    start
                }
            };
            Span {
                start: start as u32,
                end: (start + len) as u32,
            }
        };
        let time = |m: Option<Member>| match m {
            None => Time::Absent,
            Some(Member::Number(n)) => Time::Number(n),
            Some(_) => Time::NotNumber,
        };
        let (exp, nbf, iat) = (time(claims.exp), time(claims.nbf), time(claims.iat));
        let mut text_claim = |m: Option<Member>| match m {
            None => Text::Absent,
            Some(Member::Str(s)) => Text::Str(span(s)),
            Some(_) => Text::NotString,
        };
        let (iss, org, sub) = (
            text_claim(claims.iss),
            text_claim(claims.org),
            text_claim(claims.sub),
        );
        let aud = match claims.aud {
            None => Audience::Absent,
            Some(Member::Str(s)) => Audience::One(span(s)),
            Some(Member::Strings(all)) => Audience::Many(all.into_iter().map(&mut span).collect()),
            Some(_) => Audience::Neither,
        };
        // serde_json accepted both as JSON, which is UTF-8 throughout.
        let mut text = String::from_utf8(text)
            .map_err(|_| VerifyError::Malformed("payload is not UTF-8".into()))?;
        text.push_str(&unescaped);
        Ok(Contents {
            text,
            header_end,
            claims_end,
            exp,
            nbf,
            iat,
            aud,
            iss,
            org,
            sub,
        })
    }

    /// Contents of the header's and the claims' JSON text, as a verified
    /// token's would be.
    #[cfg(test)]
    pub(super) fn from_json(header: &str, claims: &str) -> Result<Contents, VerifyError> {
        Contents::new(format!("{header}{claims}").into_bytes(), header.len())
    }

    /// The header, every member.
    pub fn header(&self) -> Map<String, Value> {
        whole(&self.text[..self.header_end])
    }

    /// The claims, every member.
    pub fn claims(&self) -> Map<String, Value> {
        whole(&self.text[self.header_end..self.claims_end])
    }

    /// Claim `name` if it is a string.
    pub fn claim_str(&self, name: &str) -> Option<Cow<'_, str>> {
        let kept = match name {
            "sub" => self.sub,
            "iss" => self.iss,
            "org" => self.org,
            _ => {
                return match self.claims().remove(name) {
                    Some(Value::String(s)) => Some(Cow::Owned(s)),
                    _ => None,
                }
            }
        };
        self.text_of(kept).map(Cow::Borrowed)
    }

    fn str(&self, span: Span) -> &str {
        &self.text[span.start as usize..span.end as usize]
    }

    fn text_of(&self, claim: Text) -> Option<&str> {
        match claim {
            Text::Str(span) => Some(self.str(span)),
            _ => None,
        }
    }

    /// The heap this takes, for the verdict cache's accounting.
    pub fn heap(&self) -> usize {
        let spans = match &self.aud {
            Audience::Many(all) => std::mem::size_of_val(&**all),
            _ => 0,
        };
        self.text.capacity() + spans
    }
}

/// The whole object of JSON text that decoded once already as one.
fn whole(json: &str) -> Map<String, Value> {
    serde_json::from_str(json).expect("this text decoded as a JSON object before")
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

pub fn check_claims(claims: &Contents, rules: ClaimRules<'_>) -> Result<(), VerifyError> {
    // A non-string org is malformed wherever the key's organisation is
    // known or not (a JWK Set does not say it).
    match (claims.org, rules.key_org) {
        (Text::NotString, _) => {
            return Err(VerifyError::Malformed("claim org must be a string".into()))
        }
        (Text::Str(org), Some(key_org)) if claims.str(org) != key_org => {
            return Err(VerifyError::WrongOrganisation(format!(
                "the token's org claim names another organisation than {key_org:?}, whose key signed it"
            )))
        }
        _ => {}
    }
    let now = rules.now as f64;
    let leeway = rules.leeway as f64;
    let exp = numeric(claims.exp, "exp")?;
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
    if let Some(nbf) = numeric(claims.nbf, "nbf")? {
        if nbf - leeway > now {
            return Err(VerifyError::NotYetValid(format!(
                "token is not valid before {} (leeway {}s)",
                nbf as u64, rules.leeway
            )));
        }
    }
    let iat = numeric(claims.iat, "iat")?;
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
        let ok = match &claims.aud {
            Audience::Absent => {
                return Err(VerifyError::MissingClaim("token has no aud claim".into()))
            }
            Audience::One(aud) => claims.str(*aud) == expected,
            Audience::Many(auds) => auds.iter().any(|a| claims.str(*a) == expected),
            Audience::Neither => {
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
        match claims.iss {
            Text::Absent => return Err(VerifyError::MissingClaim("token has no iss claim".into())),
            Text::Str(iss) if claims.str(iss) == expected => {}
            Text::Str(iss) => {
                return Err(VerifyError::WrongIssuer(format!(
                    "token was issued by {:?}, not {expected:?}",
                    claims.str(iss)
                )))
            }
            Text::NotString => {
                return Err(VerifyError::Malformed("claim iss must be a string".into()))
            }
        }
    }
    Ok(())
}

/// A NumericDate claim (RFC 7519 §2): absent, or a finite JSON number.
fn numeric(claim: Time, name: &str) -> Result<Option<f64>, VerifyError> {
    match claim {
        Time::Absent => Ok(None),
        Time::Number(n) if n.is_finite() => Ok(Some(n)),
        Time::Number(_) => Err(VerifyError::Malformed(format!(
            "claim {name} is not a usable number"
        ))),
        Time::NotNumber => Err(VerifyError::Malformed(format!(
            "claim {name} must be a number (NumericDate)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    //! The typed decoding against the map-based decoding it replaced
    //! (`UniqueObject`, kept as the oracle): every input gets the same
    //! error and message, or else every kept member is seen the same way,
    //! so that the checks, which read only those, give the same verdicts.
    use super::*;

    /// A kept member as the checks tell values apart.
    fn member(m: Option<&Member>) -> String {
        match m {
            None => "absent".into(),
            Some(Member::Number(n)) => format!("number {n:?}"),
            Some(Member::Str(s)) => format!("string {s:?}"),
            Some(Member::Strings(all)) => format!("strings {all:?}"),
            Some(Member::Array) => "array".into(),
            Some(Member::Other) => "other".into(),
        }
    }

    /// The same, read from the map-based decoding.
    fn value(v: Option<&Value>) -> String {
        match v {
            None => "absent".into(),
            Some(Value::Number(n)) => format!("number {:?}", n.as_f64().unwrap()),
            Some(Value::String(s)) => format!("string {s:?}"),
            Some(Value::Array(all)) => {
                match all.iter().map(Value::as_str).collect::<Option<Vec<_>>>() {
                    Some(all) => format!("strings {all:?}"),
                    None => "array".into(),
                }
            }
            Some(_) => "other".into(),
        }
    }

    /// Decodes `json` both ways: the same error, or the kept members of
    /// `T` (named `names`) seen the same way and the same whole object.
    fn check<'a, T: Members<'a>>(json: &'a [u8], names: &[&str]) -> Option<T> {
        let case = String::from_utf8_lossy(json);
        let new = serde_json::from_slice::<Object<T>>(json);
        let old = serde_json::from_slice::<UniqueObject>(json);
        let (mut new, old) = match (new, old) {
            (Ok(new), Ok(old)) => (new.0, old.0),
            (new, old) => {
                let text = |e: Option<serde_json::Error>| e.map(|e| e.to_string());
                assert_eq!(text(new.err()), text(old.err()), "{case}");
                return None;
            }
        };
        for name in names {
            let kept = new.slot(name).expect("a kept member");
            assert_eq!(
                member(kept.as_ref()),
                value(old.get(*name)),
                "{case}: {name}"
            );
        }
        Some(new)
    }

    const KID: &str = "01JA000000000000000000000A";

    #[test]
    fn headers_decode_as_the_map_based_decoding_did() {
        let many_names: String = (0..20).map(|i| format!(r#""n{i}":{i},"#)).collect();
        let cases: Vec<Vec<u8>> = [
            format!(r#"{{"alg":"RS256","kid":"{KID}"}}"#),
            format!(r#"{{"alg":"ES256","kid":"{KID}","typ":"JWT"}}"#),
            format!(r#"{{"alg":"Ed25519","kid":"{KID}"}}"#),
            format!(r#"{{"alg":"\u0052S256","kid":"{KID}"}}"#),
            format!(r#"{{"alg":"none","kid":"{KID}"}}"#),
            format!(r#"{{"alg":5,"kid":"{KID}"}}"#),
            format!(r#"{{"alg":null,"kid":"{KID}"}}"#),
            format!(r#"{{"kid":"{KID}"}}"#),
            r#"{"alg":"RS256","kid":5}"#.to_owned(),
            r#"{"alg":"RS256","kid":"01JA00000000000000000000\u0030A"}"#.to_owned(),
            format!(r#"{{"alg":"RS256","kid":"{KID}","jwk":{{"kty":"RSA"}}}}"#),
            format!(r#"{{"alg":"RS256","kid":"{KID}","x5c":[],"jku":"https://e"}}"#),
            format!(r#"{{"alg":"RS256","kid":"{KID}","x5u":null}}"#),
            format!(r#"{{"alg":"RS256","kid":"{KID}","crit":["b64"]}}"#),
            format!(r#"{{"alg":"RS256","kid":"{KID}","crit":[1, {{"a":[]}}]}}"#),
            format!(r#"{{"alg":"RS256","kid":"{KID}","crit":[]}}"#),
            format!(r#"{{"alg":"RS256","kid":"{KID}","crit":"b64"}}"#),
            format!(r#"{{"alg":"RS256","kid":"{KID}","alg":"RS256"}}"#),
            format!(r#"{{"alg":"RS256","kid":"{KID}","\u0061lg":"ES256"}}"#),
            format!(r#"{{"alg":"RS256","kid":"{KID}","typ":"JWT","typ":"JWT"}}"#),
            format!(r#"{{"alg":"RS256","kid":"{KID}","t\u0079p":1,"typ":2}}"#),
            format!(r#"{{{many_names}"alg":"RS256","kid":"{KID}"}}"#),
            format!(r#"{{{many_names}"alg":"RS256","kid":"{KID}","n17":0}}"#),
            format!(r#"{{"alg":"RS256","kid":"{KID}","x":1e400}}"#),
            format!(r#"{{"alg":"RS256","kid":"{KID}","x":[[[{{"y":"\ud800"}}]]]}}"#),
            format!(r#"{{"alg":"RS256","kid":"{KID}"}} x"#),
            format!(r#"{{"alg":"RS256","kid":"{KID}",}}"#),
            format!(r#"["alg","RS256","kid","{KID}"]"#),
            "\"RS256\"".to_owned(),
            "{".to_owned(),
            String::new(),
            format!(
                r#"{{"x":{}1{},"alg":"RS256","kid":"{KID}"}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
        ]
        .into_iter()
        .map(String::into_bytes)
        .chain([b"{\"alg\":\"RS256\",\"kid\":\"x\xff\"}".to_vec()])
        .collect();
        let names = ["alg", "kid", "crit", "jwk", "jku", "x5u", "x5c"];
        for json in &cases {
            check::<Header>(json, &names);
        }
    }

    #[test]
    fn claims_decode_as_the_map_based_decoding_did() {
        let many_names: String = (0..20).map(|i| format!(r#""n{i}":{i},"#)).collect();
        let cases: Vec<Vec<u8>> = [
            "{}".to_owned(),
            r#"{"exp":1800000060.5,"iat":1800000000,"nbf":-5}"#.to_owned(),
            r#"{"exp":1e300,"iat":-1e300}"#.to_owned(),
            r#"{"exp":1e400}"#.to_owned(),
            r#"{"exp":18446744073709551615999}"#.to_owned(),
            r#"{"exp":"soon","nbf":true,"iat":{}}"#.to_owned(),
            r#"{"exp":null}"#.to_owned(),
            r#"{"exp":[1]}"#.to_owned(),
            r#"{"exp":1,"exp":2}"#.to_owned(),
            r#"{"exp":1,"e\u0078p":1}"#.to_owned(),
            r#"{"aud":"signet"}"#.to_owned(),
            r#"{"aud":["other","sig\u006eet"]}"#.to_owned(),
            r#"{"aud":"sig\u006eet"}"#.to_owned(),
            r#"{"aud":[]}"#.to_owned(),
            r#"{"aud":["signet",1]}"#.to_owned(),
            r#"{"aud":[["signet"]]}"#.to_owned(),
            r#"{"aud":5}"#.to_owned(),
            r#"{"aud":null}"#.to_owned(),
            r#"{"aud":{"signet":1}}"#.to_owned(),
            r#"{"iss":"\u006de","org":"acme","sub":"u","role":"OWNER"}"#.to_owned(),
            r#"{"iss":["me"],"org":7,"sub":false}"#.to_owned(),
            r#"{"org":"ac\u006de","sub":"\u00e9\n\"x"}"#.to_owned(),
            r#"{"x":{"a":1,"a":2}}"#.to_owned(),
            r#"{"x":[1,{"y":1e400}]}"#.to_owned(),
            r#"{"x":"\ud800"}"#.to_owned(),
            r#"{"x":1,"x":1}"#.to_owned(),
            r#"{"\u0078":1,"x":1}"#.to_owned(),
            format!(r#"{{{many_names}"exp":1}}"#),
            format!(r#"{{{many_names}"exp":1,"n3":1}}"#),
            format!(r#"{{{many_names}"exp":1,"n19":1}}"#),
            format!(r#"{{"x":{}1{}}}"#, "[".repeat(200), "]".repeat(200)),
            format!(r#"{{"x":{}1{}}}"#, "[".repeat(100), "]".repeat(100)),
            r#"{"exp":1} x"#.to_owned(),
            "[]".to_owned(),
            "5".to_owned(),
            "{".to_owned(),
            String::new(),
        ]
        .into_iter()
        .map(String::into_bytes)
        .chain([
            b"{\"sub\":\"\xff\"}".to_vec(),
            b"{\"s\xc3\xa9\":1}".to_vec(),
        ])
        .collect();
        let names = ["exp", "nbf", "iat", "aud", "iss", "org", "sub"];
        let header = format!(r#"{{"alg":"RS256","kid":"{KID}"}}"#);
        for json in &cases {
            let kept = check::<Claims>(json, &names).is_some();
            // What a verified token keeps: the same members, read back.
            let mut text = header.clone().into_bytes();
            text.extend_from_slice(json);
            let contents = Contents::new(text, header.len());
            assert_eq!(contents.is_ok(), kept);
            let Ok(contents) = contents else { continue };
            let old = serde_json::from_slice::<UniqueObject>(json).unwrap().0;
            assert_eq!(contents.claims(), old);
            for name in ["sub", "iss", "org", "role", "aud"] {
                let map = old.get(name).and_then(Value::as_str);
                assert_eq!(contents.claim_str(name).as_deref(), map, "{name}");
            }
        }
    }
}
