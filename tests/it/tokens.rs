//! The verifier's verdicts as data: `fixtures/tokens.json` through one loop.
//! Every fixture key belongs to organisation `acme`; a case with
//! `max_token_lifetime` is checked under that lifetime cap.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};
use signet::keys::{Algorithm, Jwk, KeyId, KeyName, KeySpec, OrgId, PublicKeyRecord};
use signet::verify::{Expect, KeyMaterial, KeySource, KeySourceError, Policy, Verifier};

use crate::support::Signer;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

struct FixtureKey {
    kid: String,
    alg: Algorithm,
    signer: Signer,
    public_pem: String,
    spki_der: Vec<u8>,
}

struct Source(HashMap<KeyId, (Algorithm, Vec<u8>)>);

impl KeySource for Source {
    fn lookup(&self, id: KeyId) -> Result<Option<KeyMaterial>, KeySourceError> {
        Ok(self.0.get(&id).map(|(algorithm, der)| KeyMaterial {
            org: Some(OrgId::parse("acme").unwrap()),
            algorithm: *algorithm,
            spki_der: der.clone(),
        }))
    }
    fn contains(&self, id: KeyId) -> Result<bool, KeySourceError> {
        Ok(self.0.contains_key(&id))
    }
}

fn load_keys(doc: &Value) -> HashMap<String, FixtureKey> {
    doc["keys"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(label, k)| {
            let pem = std::fs::read_to_string(format!("{FIXTURES}/{}", k["pem"].as_str().unwrap()))
                .unwrap();
            let signer = Signer::from_pem(&pem);
            let spki_der = signer.spki_der();
            let key = FixtureKey {
                kid: k["kid"].as_str().unwrap().to_owned(),
                alg: k["alg"].as_str().unwrap().parse().unwrap(),
                signer,
                public_pem: pkcs8::der::pem::encode_string(
                    "PUBLIC KEY",
                    pkcs8::LineEnding::LF,
                    &spki_der,
                )
                .unwrap(),
                spki_der,
            };
            (label.clone(), key)
        })
        .collect()
}

/// Replaces `@label` placeholders and resolves `name@rel` offsets.
fn resolve(value: &Value, keys: &HashMap<String, FixtureKey>, doc: &Value, now: u64) -> Value {
    match value {
        Value::String(s) if s == "@deleted" => doc["deleted"].clone(),
        Value::String(s) if s.starts_with("@jwk:") => {
            let k = &keys[&s[5..]];
            let record = PublicKeyRecord {
                id: KeyId::parse(&k.kid).unwrap(),
                org: OrgId::parse("acme").unwrap(),
                name: KeyName::parse("x").unwrap(),
                spec: KeySpec::new(k.alg, None).unwrap(),
                spki_der: k.spki_der.clone(),
                created_at_ms: 0,
                life: Default::default(),
            };
            serde_json::to_value(Jwk::from_record(&record)).unwrap()
        }
        Value::String(s) if s.starts_with('@') => Value::String(keys[&s[1..]].kid.clone()),
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                match k.strip_suffix("@rel") {
                    Some(name) => {
                        let offset = v.as_f64().unwrap();
                        let at = now as f64 + offset;
                        let at = if at.fract() == 0.0 {
                            Value::from(at as u64)
                        } else {
                            Value::from(at)
                        };
                        out.insert(name.to_owned(), at);
                    }
                    None => {
                        out.insert(k.clone(), resolve(v, keys, doc, now));
                    }
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Builds the token a case describes.
fn build(case: &Value, keys: &HashMap<String, FixtureKey>, doc: &Value, now: u64) -> String {
    if let Some(raw) = case.get("raw") {
        return raw.as_str().unwrap().to_owned();
    }
    let header = match case.get("header_raw") {
        Some(raw) => {
            let mut s = raw.as_str().unwrap().to_owned();
            for (label, k) in keys {
                s = s.replace(&format!("@{label}"), &k.kid);
            }
            s.into_bytes()
        }
        None => serde_json::to_vec(&resolve(&case["header"], keys, doc, now)).unwrap(),
    };
    let payload = match case.get("payload_raw") {
        Some(raw) => raw.as_str().unwrap().as_bytes().to_vec(),
        None => serde_json::to_vec(&resolve(&case["claims"], keys, doc, now)).unwrap(),
    };
    let input = format!("{}.{}", b64(&header), b64(&payload));
    let sign = &case["sign"];
    let header_alg = case["header"]["alg"].as_str().unwrap_or("RS256");
    let mut signature: Vec<u8> = if sign == "none" {
        Vec::new()
    } else if let Some(label) = sign.get("hmac") {
        let alg = match sign["alg"].as_str().unwrap() {
            "HS256" => hmac::HMAC_SHA256,
            "HS384" => hmac::HMAC_SHA384,
            _ => hmac::HMAC_SHA512,
        };
        let key = hmac::Key::new(alg, keys[label.as_str().unwrap()].public_pem.as_bytes());
        hmac::sign(&key, input.as_bytes()).as_ref().to_vec()
    } else {
        let key = &keys[sign["with"].as_str().unwrap()];
        let alg = sign["alg"].as_str().unwrap_or(
            if header_alg.parse::<Algorithm>().is_ok_and(|a| a.is_rsa()) {
                header_alg
            } else {
                "RS256"
            },
        );
        let token = key.signer.sign_raw(&input, alg);
        URL_SAFE_NO_PAD.decode(token).unwrap()
    };
    if let Some(edit) = case.get("edit") {
        signature = edit_signature(signature, edit.as_str().unwrap());
    }
    if let Some(n) = case.get("truncate") {
        signature.truncate(signature.len() - n.as_u64().unwrap() as usize);
    }
    let signature = match case.get("raw_signature") {
        Some(s) => s.as_str().unwrap().to_owned(),
        None => b64(&signature),
    };
    let payload_part = match case.get("tamper") {
        Some(claims) => b64(&serde_json::to_vec(&resolve(claims, keys, doc, now)).unwrap()),
        None => b64(&payload),
    };
    format!("{}.{payload_part}.{signature}", b64(&header))
}

/// Rewrites a fixed-length ECDSA signature `r ‖ s`: to its DER form, or with
/// `r` or `s` zeroed.
fn edit_signature(fixed: Vec<u8>, edit: &str) -> Vec<u8> {
    let half = fixed.len() / 2;
    let (r, s) = fixed.split_at(half);
    match edit {
        "zero_r" => [vec![0; half], s.to_vec()].concat(),
        "zero_s" => [r.to_vec(), vec![0; half]].concat(),
        "der" => {
            let integer = |v: &[u8]| {
                let v = &v[v.iter().take_while(|b| **b == 0).count()..];
                let pad = v.first().is_some_and(|b| b & 0x80 != 0);
                let body = [if pad { vec![0] } else { vec![] }, v.to_vec()].concat();
                [vec![0x02, body.len() as u8], body].concat()
            };
            let body = [integer(r), integer(s)].concat();
            [vec![0x30, body.len() as u8], body].concat()
        }
        other => panic!("unknown signature edit {other:?}"),
    }
}

#[test]
fn every_fixture_token_gets_its_verdict() {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/tokens.json")).unwrap())
            .unwrap();
    let now = doc["now"].as_u64().unwrap();
    let keys = load_keys(&doc);
    let source = Source(
        keys.values()
            .map(|k| (KeyId::parse(&k.kid).unwrap(), (k.alg, k.spki_der.clone())))
            .collect(),
    );
    let source = Arc::new(source);
    let verifier = Verifier::new(source.clone(), Policy::default());
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 50, "the attack matrix stays broad");
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let expected = case["expect"].as_str().unwrap();
        let token = build(case, &keys, &doc, now);
        let expect = Expect {
            audience: case["audience"].as_str(),
            issuer: case["issuer"].as_str(),
        };
        // A case may set `max_token_lifetime` (a humantime string, as in
        // the config); it gets a verifier of its own with that cap.
        let capped;
        let verifier = match case.get("max_token_lifetime") {
            Some(cap) => {
                let policy = Policy {
                    max_token_lifetime: Some(
                        humantime::parse_duration(cap.as_str().unwrap()).unwrap(),
                    ),
                    ..Policy::default()
                };
                capped = Verifier::new(source.clone(), policy);
                &capped
            }
            None => &verifier,
        };
        // Twice: a cold and a cached key must give the same verdict.
        for round in ["cold", "cached"] {
            let verdict = match verifier.verify_at(&token, expect, now) {
                Ok(_) => "valid".to_owned(),
                Err(e) => e.code().to_owned(),
            };
            if verdict != expected {
                failures.push(format!(
                    "{name} ({round}): expected {expected}, got {verdict}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
