//! Uploading public keys through the real server: a table of hostile
//! uploads, each with the status and code it must get and nothing stored;
//! duplicates; the quota; and uploaded keys verifying exactly like
//! generated ones.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use pkcs8::der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, UintRef};
use pkcs8::der::{Decode, Encode};
use pkcs8::spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use serde_json::{json, Value};

use crate::lifecycle::verdict;
use crate::support::{all_bytes, claims, spawn_with, Signer, TestApp, ADMIN};

const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP256K1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.10");
const ED448: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.113");

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn pem(der: &[u8], label: &str) -> String {
    pkcs8::der::pem::encode_string(label, pkcs8::LineEnding::LF, der).unwrap()
}

fn pem_der(text: &str) -> Vec<u8> {
    pkcs8::der::pem::decode_vec(text.as_bytes()).unwrap().1
}

/// An SPKI PEM of `key` under `oid` with `params` (DER) as parameters.
fn spki_pem(oid: ObjectIdentifier, params: Option<&[u8]>, key: &[u8]) -> String {
    let parameters = params.map(|p| AnyRef::from_der(p).unwrap());
    let info = SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef { oid, parameters },
        subject_public_key: BitStringRef::from_bytes(key).unwrap(),
    };
    pem(&info.to_der().unwrap(), "PUBLIC KEY")
}

/// An RSA SPKI PEM with modulus `n` and exponent `e` (big-endian).
fn rsa_pem(n: &[u8], e: &[u8]) -> String {
    let key = rsa::pkcs1::RsaPublicKey {
        modulus: UintRef::new(n).unwrap(),
        public_exponent: UintRef::new(e).unwrap(),
    };
    spki_pem(RSA, Some(&[0x05, 0x00]), &key.to_der().unwrap())
}

/// An odd number of exactly `bits` bits.
fn odd(bits: usize) -> Vec<u8> {
    let mut n = vec![0x9du8; bits.div_ceil(8)];
    n[0] = match bits % 8 {
        0 => 0xc5,
        top => 1 << (top - 1) | 1,
    };
    n
}

/// Keys made by signet in the organisation `donor`, whose halves the
/// tests upload elsewhere.
struct Donor {
    created: Value,
    jwk: Value,
}

impl Donor {
    async fn new(app: &TestApp, algorithm: &str) -> Donor {
        let created = app
            .create_key("donor", json!({"name": algorithm, "algorithm": algorithm}))
            .await;
        let jwks = app.get("/v1/organisations/donor/jwks.json").await.json();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == created["id"])
            .unwrap()
            .clone();
        Donor { created, jwk }
    }

    fn public_pem(&self) -> &str {
        self.created["publicKey"].as_str().unwrap()
    }

    fn private_pem(&self) -> &str {
        self.created["privateKey"].as_str().unwrap()
    }

    fn signer(&self) -> Signer {
        Signer::from_pem(self.private_pem())
    }

    /// The JWK with `edit` applied.
    fn jwk_with(&self, edit: Value) -> Value {
        let mut jwk = self.jwk.clone();
        for (k, v) in edit.as_object().unwrap() {
            match v {
                Value::Null => jwk.as_object_mut().unwrap().remove(k),
                v => jwk.as_object_mut().unwrap().insert(k.clone(), v.clone()),
            };
        }
        jwk
    }

    fn member(&self, name: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(self.jwk[name].as_str().unwrap())
            .unwrap()
    }
}

on_both_backends!(hostile_uploads_are_refused_and_store_nothing);
async fn hostile_uploads_are_refused_and_store_nothing() {
    let app = spawn_with(|c| c.keys.max_per_org = 10).await;
    let rsa = Donor::new(&app, "RS256").await;
    let p256 = Donor::new(&app, "ES256").await;
    let ed = Donor::new(&app, "EdDSA").await;
    let (n, x, y) = (rsa.member("n"), p256.member("x"), p256.member("y"));
    let e = [1, 0, 1];
    let pkcs1_private = rsa::RsaPrivateKey::from_pkcs8_pem(rsa.private_pem())
        .unwrap()
        .to_pkcs1_pem(pkcs8::LineEnding::LF)
        .unwrap()
        .to_string();
    let pkcs8_der = pem_der(p256.private_pem());
    let relabel = |label: &str| pem(&pkcs8_der, label);
    let secret_d = b64(&[0x5a; 32]);
    let mut off_curve = pem_der(p256.public_pem());
    *off_curve.last_mut().unwrap() ^= 1;
    let mut compressed = vec![0x02];
    compressed.extend_from_slice(&x);
    let mut uncompressed = vec![0x04];
    uncompressed.extend_from_slice(&x);
    uncompressed.extend_from_slice(&y);
    let p256_params = P256.to_der().unwrap();
    let k1_params = SECP256K1.to_der().unwrap();
    let explicit_params = [0x30, 0x03, 0x02, 0x01, 0x01];
    let small = rsa::pkcs8::EncodePublicKey::to_public_key_pem(
        &rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024)
            .unwrap()
            .to_public_key(),
        pkcs8::LineEnding::LF,
    )
    .unwrap();
    let cert = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
    let with = |body: Value| {
        let mut b = json!({"name": "hostile"});
        b.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        b
    };
    // Each refused with 400 invalid_request.
    let refused: Vec<(&str, Value)> = vec![
        // Private material, in every form.
        (
            "PKCS#8 private key",
            with(json!({"publicKey": p256.private_pem()})),
        ),
        (
            "PKCS#1 private key",
            with(json!({"publicKey": pkcs1_private, "algorithm": "RS256"})),
        ),
        (
            "SEC1 private key",
            with(json!({"publicKey": relabel("EC PRIVATE KEY")})),
        ),
        (
            "encrypted private key",
            with(json!({"publicKey": relabel("ENCRYPTED PRIVATE KEY")})),
        ),
        (
            "OpenSSH private key",
            with(json!({"publicKey": relabel("OPENSSH PRIVATE KEY")})),
        ),
        (
            "private key labelled public",
            with(json!({"publicKey": relabel("PUBLIC KEY")})),
        ),
        (
            "public key then private key",
            with(json!({"publicKey": format!("{}{}", p256.public_pem(), p256.private_pem())})),
        ),
        (
            "JWK with d",
            with(json!({"jwk": p256.jwk_with(json!({"d": secret_d}))})),
        ),
        (
            "JWK with p and q",
            with(json!({"jwk": rsa.jwk_with(json!({"p": secret_d, "q": secret_d}))})),
        ),
        (
            "JWK with dp",
            with(json!({"jwk": rsa.jwk_with(json!({"dp": secret_d}))})),
        ),
        (
            "JWK with dq",
            with(json!({"jwk": rsa.jwk_with(json!({"dq": secret_d}))})),
        ),
        (
            "JWK with qi",
            with(json!({"jwk": rsa.jwk_with(json!({"qi": secret_d}))})),
        ),
        (
            "JWK with oth",
            with(json!({"jwk": rsa.jwk_with(json!({"oth": [{"r": secret_d}]}))})),
        ),
        (
            "Ed25519 JWK with d",
            with(json!({"jwk": ed.jwk_with(json!({"d": secret_d}))})),
        ),
        (
            "symmetric JWK",
            with(json!({"jwk": {"kty": "oct", "k": secret_d}})),
        ),
        // Weak, huge or broken RSA.
        (
            "RSA 1024 bits",
            with(json!({"publicKey": small, "algorithm": "RS256"})),
        ),
        (
            "RSA 2047 bits",
            with(json!({"publicKey": rsa_pem(&odd(2047), &e), "algorithm": "RS256"})),
        ),
        (
            "RSA 8193 bits",
            with(json!({"publicKey": rsa_pem(&odd(8193), &e), "algorithm": "RS256"})),
        ),
        (
            "RSA 16384 bits as JWK",
            with(json!({"jwk": rsa.jwk_with(json!({"n": b64(&odd(16384))}))})),
        ),
        (
            "RSA exponent 3",
            with(json!({"publicKey": rsa_pem(&n, &[3]), "algorithm": "RS256"})),
        ),
        (
            "RSA exponent 1",
            with(json!({"jwk": rsa.jwk_with(json!({"e": b64(&[1])}))})),
        ),
        (
            "RSA exponent 65535",
            with(json!({"jwk": rsa.jwk_with(json!({"e": b64(&[0xff, 0xff])}))})),
        ),
        (
            "RSA exponent 65536 (even)",
            with(json!({"jwk": rsa.jwk_with(json!({"e": b64(&[1, 0, 0])}))})),
        ),
        (
            "RSA exponent 2^34 + 1",
            with(json!({"jwk": rsa.jwk_with(json!({"e": b64(&[4, 0, 0, 0, 1])}))})),
        ),
        (
            "RSA even modulus",
            with(
                json!({"publicKey": rsa_pem(&[&n[..255], &[n[255] & 0xfe]].concat(), &e), "algorithm": "PS256"}),
            ),
        ),
        (
            "RSA empty e",
            with(json!({"jwk": rsa.jwk_with(json!({"e": ""}))})),
        ),
        (
            "RSA padded n",
            with(json!({"jwk": rsa.jwk_with(json!({"n": format!("{}=", b64(&n))}))})),
        ),
        // Points and curves.
        (
            "EC point off its curve (PEM)",
            with(json!({"publicKey": pem(&off_curve, "PUBLIC KEY")})),
        ),
        (
            "EC point off its curve (JWK)",
            with(json!({"jwk": p256.jwk_with(json!({"y": b64(&x)}))})),
        ),
        (
            "EC point at zero",
            with(json!({"jwk": p256.jwk_with(json!({"x": b64(&[0; 32]), "y": b64(&[0; 32])}))})),
        ),
        (
            "EC compressed point",
            with(json!({"publicKey": spki_pem(EC, Some(&p256_params), &compressed)})),
        ),
        (
            "EC short coordinate",
            with(json!({"jwk": p256.jwk_with(json!({"x": b64(&x[1..])}))})),
        ),
        (
            "secp256k1",
            with(json!({"publicKey": spki_pem(EC, Some(&k1_params), &uncompressed)})),
        ),
        (
            "explicit curve parameters",
            with(json!({"publicKey": spki_pem(EC, Some(&explicit_params), &uncompressed)})),
        ),
        (
            "P-521 JWK",
            with(
                json!({"jwk": {"kty": "EC", "crv": "P-521", "x": b64(&[1; 66]), "y": b64(&[1; 66])}}),
            ),
        ),
        (
            "X25519 JWK",
            with(json!({"jwk": ed.jwk_with(json!({"crv": "X25519", "alg": null}))})),
        ),
        (
            "Ed448 SPKI",
            with(json!({"publicKey": spki_pem(ED448, None, &[7; 57])})),
        ),
        (
            "DSA-like key type",
            with(json!({"jwk": {"kty": "DSA", "y": "AA"}})),
        ),
        // Algorithms.
        (
            "RSA without algorithm",
            with(json!({"publicKey": rsa.public_pem()})),
        ),
        (
            "RSA said to be ES256",
            with(json!({"publicKey": rsa.public_pem(), "algorithm": "ES256"})),
        ),
        (
            "P-256 said to be ES384",
            with(json!({"publicKey": p256.public_pem(), "algorithm": "ES384"})),
        ),
        (
            "Ed25519 said to be ES256",
            with(json!({"publicKey": ed.public_pem(), "algorithm": "ES256"})),
        ),
        (
            "JWK alg HS256",
            with(json!({"jwk": p256.jwk_with(json!({"alg": "HS256"}))})),
        ),
        (
            "JWK alg disagrees",
            with(json!({"jwk": rsa.jwk_with(json!({"alg": "RS256"})), "algorithm": "PS256"})),
        ),
        (
            "JWK use enc",
            with(json!({"jwk": p256.jwk_with(json!({"use": "enc"}))})),
        ),
        (
            "algorithm none",
            with(json!({"publicKey": rsa.public_pem(), "algorithm": "none"})),
        ),
        // Not one SPKI public key.
        (
            "PKCS#1 public key",
            with(
                json!({"publicKey": pem(&rsa::pkcs1::RsaPublicKey { modulus: UintRef::new(&n).unwrap(), public_exponent: UintRef::new(&e).unwrap() }.to_der().unwrap(), "RSA PUBLIC KEY"), "algorithm": "RS256"}),
            ),
        ),
        ("certificate", with(json!({"publicKey": cert}))),
        (
            "two public keys",
            with(json!({"publicKey": format!("{}{}", p256.public_pem(), ed.public_pem())})),
        ),
        ("not PEM", with(json!({"publicKey": "ssh-ed25519 AAAA"}))),
        ("empty", with(json!({"publicKey": ""}))),
        (
            "both forms",
            with(json!({"publicKey": ed.public_pem(), "jwk": ed.jwk})),
        ),
        (
            "bits with an upload",
            with(json!({"publicKey": rsa.public_pem(), "algorithm": "RS256", "bits": 2048})),
        ),
        (
            "JWK not an object",
            with(json!({"jwk": "eyJrdHkiOiJFQyJ9"})),
        ),
        (
            "publicKey not a string",
            with(json!({"publicKey": {"pem": ed.public_pem()}})),
        ),
        ("empty JWK", with(json!({"jwk": {}}))),
        ("no name", json!({"publicKey": ed.public_pem()})),
    ];
    // The same public key again, in the organisation that made it: 409.
    let conflicts: Vec<(&str, Value)> = vec![
        (
            "a generated key's own public key",
            json!({"name": "again", "publicKey": p256.public_pem()}),
        ),
        ("the same as JWK", json!({"name": "again", "jwk": ed.jwk})),
        (
            "the same RSA key as PS512",
            json!({"name": "again", "publicKey": rsa.public_pem(), "algorithm": "PS512"}),
        ),
    ];
    let private_texts = [secret_d.clone(), b64(&pkcs8_der)[..40].to_owned()];
    let cases = refused
        .iter()
        .map(|(what, body)| (what, body, 400, "invalid_request"))
        .chain(
            conflicts
                .iter()
                .map(|(what, body)| (what, body, 409, "conflict")),
        );
    for (what, body, status, code) in cases {
        let r = app.create_key_raw("donor", body, ADMIN).await;
        assert_eq!(r.status.as_u16(), status, "{what}: {}", r.text());
        r.assert_error(status, code);
        let text = r.text();
        for private in &private_texts {
            assert!(
                !text.contains(private.as_str()),
                "{what}: the answer repeats private material"
            );
        }
        assert!(
            !text.contains("MIG") && !text.contains("MII"),
            "{what}: the answer repeats a key: {text}"
        );
    }
    assert_eq!(app.key_count("donor").await, 3, "refusals stored nothing");
    let app_dir = app.dir.path().to_owned();
    for (path, bytes) in all_bytes(&app_dir) {
        for private in &private_texts {
            let found = bytes
                .windows(private.len())
                .any(|w| w == private.as_bytes());
            assert!(!found, "{path} holds private material");
        }
    }
    println!(
        "hostile uploads: {} refused, {} conflicts",
        refused.len(),
        conflicts.len()
    );
}

on_both_backends!(uploaded_keys_verify_exactly_like_generated_ones);
async fn uploaded_keys_verify_exactly_like_generated_ones() {
    let app = spawn_with(|c| c.keys.max_per_org = 5).await;
    let donors = [
        (Donor::new(&app, "PS256").await, "pem", Some("PS256")),
        (Donor::new(&app, "RS512").await, "jwk", None),
        (Donor::new(&app, "ES256").await, "jwk", None),
        (Donor::new(&app, "ES384").await, "pem", Some("ES384")),
        (Donor::new(&app, "EdDSA").await, "pem", None),
    ];
    let mut uploaded = Vec::new();
    for (donor, form, algorithm) in &donors {
        let mut body = json!({"name": format!("uploaded {form}")});
        match *form {
            "pem" => body["publicKey"] = json!(donor.public_pem()),
            _ => body["jwk"] = donor.jwk.clone(),
        }
        if let Some(alg) = algorithm {
            body["algorithm"] = json!(alg);
        }
        let r = app.create_key_raw("acme", &body, ADMIN).await;
        assert_eq!(r.status, 201, "{form} {algorithm:?}: {}", r.text());
        let key = r.json();
        let id = key["id"].as_str().unwrap().to_owned();
        assert_eq!(
            r.header("location"),
            Some(format!("/v1/keys/{id}").as_str())
        );
        assert!(key.get("privateKey").is_none(), "{key}");
        assert_eq!(
            (key["origin"].as_str(), key["state"].as_str()),
            (Some("uploaded"), Some("active"))
        );
        for field in ["algorithm", "bits", "publicKey"] {
            assert_eq!(key[field], donor.created[field], "{field}");
        }
        assert_eq!(
            app.get(&format!("/v1/keys/{id}")).await.json()["origin"],
            "uploaded"
        );
        assert!(app.is_public("acme", &id).await);
        // Tokens signed by the organisation's own private key verify under
        // the uploaded key, and authenticate on the management API.
        let signer = donor.signer();
        let alg = donor.created["algorithm"].as_str().unwrap();
        let token = signer.sign(
            &json!({"alg": alg, "kid": id}),
            &claims("acme", "OWNER"),
            alg,
        );
        assert_eq!(verdict(&app, &token).await, "valid", "{alg}");
        let r = app
            .request_as(hyper::Method::GET, "/v1/organisations/acme/audit", &token)
            .await;
        assert_eq!(r.status, 200, "{alg}: {}", r.text());
        uploaded.push((id, token));
    }
    // They count towards the quota.
    let r = app
        .create_key_raw(
            "acme",
            &json!({"name": "one more", "algorithm": "EdDSA"}),
            ADMIN,
        )
        .await;
    r.assert_error(400, "quota_exceeded");
    // They are audited, disabled, enabled and deleted like any key, but
    // not rotated: signet does not hold a key like them.
    let (id, token) = &uploaded[0];
    let r = app.rotate_key("acme", id, None, &[]).await;
    r.assert_error(409, "conflict");
    app.patch_key("acme", id, json!({"state": "disabled"}))
        .await;
    assert_eq!(verdict(&app, token).await, "key_disabled");
    assert_eq!(app.delete_key("acme", id, ADMIN).await.status, 204);
    // A deleted key's public key may be uploaded again.
    let again =
        json!({"name": "back", "publicKey": donors[0].0.public_pem(), "algorithm": "PS384"});
    let r = app.create_key_raw("acme", &again, ADMIN).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["algorithm"], "PS384");
    let uploads = app
        .audit_actions("acme")
        .await
        .into_iter()
        .filter(|(a, _)| a == "key.uploaded")
        .count();
    assert_eq!(uploads, 6);
    // Another organisation may hold the same public key.
    let r = app.create_key_raw("elsewhere", &again, ADMIN).await;
    assert_eq!(r.status, 201, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_uploaded_rsa_key_is_kept_and_published() {
    // A valid modulus of any size from 2048 to 8192 bits (primality is
    // not checked, and nothing here signs with it).
    let app = spawn_with(|_| {}).await;
    let e = [1, 0, 1];
    for bits in [2049, 8192] {
        let body =
            json!({"name": "big", "algorithm": "RS256", "publicKey": rsa_pem(&odd(bits), &e)});
        let r = app.create_key_raw("acme", &body, ADMIN).await;
        assert_eq!(r.status, 201, "{bits}: {}", r.text());
        let key = r.json();
        assert_eq!(key["bits"], bits);
        let id = key["id"].as_str().unwrap();
        assert!(app.is_public("acme", id).await, "{bits}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_database_of_schema_1_gets_its_fingerprints_filled() {
    use crate::backends::{run_on, Database};
    use signet::config::Backend;
    run_on(Backend::Postgres, async {
        let app = spawn_with(|_| {}).await;
        let created = app
            .create_key("acme", json!({"name": "old", "algorithm": "EdDSA"}))
            .await;
        let dir = app.stop().await;
        // Take the database back to the first schema, as an older signet
        // left it: no fingerprint column.
        let db = Database::of(dir.path());
        let cluster = crate::pg::shared().expect("PostgreSQL is there");
        for sql in [
            "ALTER TABLE keys DROP COLUMN fingerprint",
            "UPDATE signet_schema SET version = 1, record_version = 2",
        ] {
            cluster.sql(&db.url, sql);
        }
        let app = spawn_with(|c| c.storage.data_dir = dir.path().to_owned()).await;
        let again = json!({"name": "again", "publicKey": created["publicKey"]});
        app.create_key_raw("acme", &again, ADMIN)
            .await
            .assert_error(409, "conflict");
        drop(dir);
    })
    .await
}
