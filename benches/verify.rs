//! The cost of one JWT verification, side by side: signet's cached verifier
//! (hot path), jsonwebtoken's `decode`, and the bare aws-lc-rs signature
//! check that both of them end in; for RS256 and PS256 (RSA-2048), ES256,
//! ES384 and EdDSA (Ed25519).
//!
//! One key of each type is generated once; tokens carry `kid`, a future
//! `exp` and `aud: "signet"`, as organisation tokens do.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::signature::{self as lc, ParsedPublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;

use signet::keys::jwt_alg;
use signet::keys::{generate, Algorithm, KeyId, KeyName, KeySpec, OrgId, PublicKeyRecord};
use signet::verify::{
    decode_object, Expect, KeyMaterial, KeySource, KeySourceError, Policy, Verifier,
};

/// A key source that is a map in memory: after the first fill the verifier
/// never asks it again.
struct MemorySource(HashMap<KeyId, (OrgId, Algorithm, Vec<u8>)>);

impl KeySource for MemorySource {
    fn lookup(&self, id: KeyId) -> Result<Option<KeyMaterial>, KeySourceError> {
        Ok(self.0.get(&id).map(|(org, algorithm, der)| KeyMaterial {
            org: Some(org.clone()),
            algorithm: *algorithm,
            spki_der: der.clone(),
        }))
    }
    fn contains(&self, id: KeyId) -> Result<bool, KeySourceError> {
        Ok(self.0.contains_key(&id))
    }
}

fn sign(private_pem: &[u8], alg: Algorithm, kid: KeyId, org: &OrgId) -> String {
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => jsonwebtoken::EncodingKey::from_ec_pem(private_pem),
        Algorithm::EdDSA => jsonwebtoken::EncodingKey::from_ed_pem(private_pem),
        _ => jsonwebtoken::EncodingKey::from_rsa_pem(private_pem),
    }
    .expect("a PKCS#8 key of the algorithm");
    let mut header = jsonwebtoken::Header::new(jwt_alg(alg));
    header.kid = Some(kid.to_string());
    let now = signet::verify::unix_now();
    let claims = json!({
        "org": org,
        "role": "OWNER",
        "sub": "bench@example.com",
        "aud": "signet",
        "iat": now,
        "exp": now + 24 * 3600,
    });
    jsonwebtoken::encode(&header, &claims, &key).expect("signing works")
}

fn bench(c: &mut Criterion) {
    let generated = generate(KeySpec::default());
    let private_pem = generated.pkcs8_pem();
    let org = OrgId::parse("bench-org").unwrap();
    let rs_id = KeyId::new(ulid::Ulid::new());
    let ps_id = KeyId::new(ulid::Ulid::new());
    let spki = generated.spki_der().to_vec();

    let mut keys = HashMap::new();
    keys.insert(rs_id, (org.clone(), Algorithm::RS256, spki.clone()));
    keys.insert(ps_id, (org.clone(), Algorithm::PS256, spki.clone()));
    let verifier = Verifier::new(Arc::new(MemorySource(keys)), Policy::default());
    let expect = Expect {
        audience: Some("signet"),
        issuer: None,
    };

    let rs_token = sign(private_pem.as_bytes(), Algorithm::RS256, rs_id, &org);
    let ps_token = sign(private_pem.as_bytes(), Algorithm::PS256, ps_id, &org);
    // Warm the cache, and check every contender accepts its token.
    verifier
        .verify(&rs_token, expect)
        .expect("RS256 token verifies");
    verifier
        .verify(&ps_token, expect)
        .expect("PS256 token verifies");

    // jsonwebtoken, with its DecodingKey built once from the SPKI PEM.
    let record = PublicKeyRecord {
        id: rs_id,
        org: org.clone(),
        name: KeyName::parse("bench").unwrap(),
        spec: KeySpec::default(),
        spki_der: spki.clone(),
        created_at_ms: 0,
        life: Default::default(),
    };
    let decoding_key =
        jsonwebtoken::DecodingKey::from_rsa_pem(record.public_key_pem().as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["signet"]);
    validation.leeway = 30;
    let jwt_decode = |token: &str| {
        jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &decoding_key,
            &validation,
        )
    };
    jwt_decode(&rs_token).expect("jsonwebtoken accepts the token");

    // Bare aws-lc-rs: the key parsed once, the signature decoded once.
    let parsed = ParsedPublicKey::new(&lc::RSA_PKCS1_2048_8192_SHA256, &spki).unwrap();
    let (signing_input, sig_b64) = rs_token.rsplit_once('.').unwrap();
    let signature = URL_SAFE_NO_PAD.decode(sig_b64).unwrap();
    parsed
        .verify_sig(signing_input.as_bytes(), &signature)
        .expect("raw signature verifies");
    let (header_b64, payload_b64) = signing_input.split_once('.').unwrap();

    let mut group = c.benchmark_group("verify_rsa2048");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));
    group.bench_function("signet_verifier_RS256", |b| {
        b.iter(|| verifier.verify(black_box(&rs_token), expect).unwrap())
    });
    group.bench_function("jsonwebtoken_decode_RS256", |b| {
        b.iter(|| jwt_decode(black_box(&rs_token)).unwrap())
    });
    group.bench_function("aws_lc_rs_verify_sig_RS256", |b| {
        b.iter(|| {
            parsed
                .verify_sig(black_box(signing_input.as_bytes()), black_box(&signature))
                .unwrap()
        })
    });
    group.bench_function("signet_verifier_PS256", |b| {
        b.iter(|| verifier.verify(black_box(&ps_token), expect).unwrap())
    });
    group.finish();

    bench_curves(c, &org, expect);

    // What the verifier does besides the signature check: decoding the
    // header and payload JSON (the parse also base64-decodes the signature).
    let mut group = c.benchmark_group("verify_overhead");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("decode_header_and_payload", |b| {
        b.iter(|| {
            (
                decode_object(black_box(header_b64), "header").unwrap(),
                decode_object(black_box(payload_b64), "payload").unwrap(),
            )
        })
    });
    group.finish();
}

/// ES256, ES384 and EdDSA: signet's verifier against the bare aws-lc-rs
/// check it ends in, one fresh key each.
fn bench_curves(c: &mut Criterion, org: &OrgId, expect: Expect<'_>) {
    let mut group = c.benchmark_group("verify_ec_ed25519");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for alg in [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA] {
        let spec = KeySpec::new(alg, None).unwrap();
        let generated = generate(spec);
        let id = KeyId::new(ulid::Ulid::new());
        let spki = generated.spki_der().to_vec();
        let keys = HashMap::from([(id, (org.clone(), alg, spki.clone()))]);
        let verifier = Verifier::new(Arc::new(MemorySource(keys)), Policy::default());
        let token = sign(generated.pkcs8_pem().as_bytes(), alg, id, org);
        verifier.verify(&token, expect).expect("the token verifies");
        let parsed = ParsedPublicKey::new(alg.verification(), &spki).unwrap();
        let (signing_input, sig_b64) = token.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(sig_b64).unwrap();
        parsed
            .verify_sig(signing_input.as_bytes(), &signature)
            .expect("raw signature verifies");
        group.bench_function(format!("signet_verifier_{alg}"), |b| {
            b.iter(|| verifier.verify(black_box(&token), expect).unwrap())
        });
        group.bench_function(format!("aws_lc_rs_verify_sig_{alg}"), |b| {
            b.iter(|| {
                parsed
                    .verify_sig(black_box(signing_input.as_bytes()), black_box(&signature))
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
