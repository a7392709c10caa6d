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
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
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
            "EC point at infinity (PEM)",
            with(json!({"publicKey": spki_pem(EC, Some(&p256_params), &[0])})),
        ),
        (
            "P-384 point at infinity (PEM)",
            with(json!({"publicKey": spki_pem(EC, Some(&P384.to_der().unwrap()), &[0])})),
        ),
        (
            "P-384 point off its curve (JWK)",
            with(
                json!({"jwk": {"kty": "EC", "crv": "P-384", "x": b64(&[1; 48]), "y": b64(&[1; 48])}}),
            ),
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
        // Take the database back to the schema before fingerprints, as an
        // older signet left it: no fingerprint column.
        let db = Database::of(dir.path());
        let cluster = crate::pg::shared().expect("PostgreSQL is there");
        for sql in [
            "ALTER TABLE keys DROP COLUMN fingerprint",
            "UPDATE signet_schema SET version = 3, record_version = 2",
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

/// Ed25519 public keys an upload must refuse, with a word of the reason:
/// the eight points of small order in their canonical encodings, the same
/// points encoded otherwise (the sign bit set on x = 0, y ≥ p), canonical
/// failures that are not of small order, and a y with no x.
const ED25519_REFUSED: [(&str, &str, &str); 15] = [
    (
        "identity",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "small order",
    ),
    (
        "order 2",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "small order",
    ),
    (
        "order 4, sign bit 0",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "small order",
    ),
    (
        "order 4, sign bit 1",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "small order",
    ),
    (
        "order 8 (a)",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "small order",
    ),
    (
        "order 8 (a, -x)",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "small order",
    ),
    (
        "order 8 (b)",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "small order",
    ),
    (
        "order 8 (b, -x)",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "small order",
    ),
    (
        "identity, sign bit on x = 0",
        "0100000000000000000000000000000000000000000000000000000000000080",
        "small order",
    ),
    (
        "order 2, sign bit on x = 0",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "small order",
    ),
    (
        "y = p (order 4)",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "small order",
    ),
    (
        "y = p + 1 (identity)",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "small order",
    ),
    (
        "y = p + 3",
        "f0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "not canonically encoded",
    ),
    (
        "y = 2^255 - 1",
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "not canonically encoded",
    ),
    (
        "y = 2, off the curve",
        "0200000000000000000000000000000000000000000000000000000000000000",
        "not a point of the curve",
    ),
];

/// The 32 bytes of an `ED25519_REFUSED` entry.
fn ed25519_key(hex: &str) -> Vec<u8> {
    hex::decode(hex).unwrap()
}

/// RFC 8032 §7.1, test 1: the secret key and its public key.
const RFC8032_SECRET: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

/// A PKCS#8 (v1) PEM of an Ed25519 secret key.
fn ed25519_pkcs8(seed: &[u8]) -> String {
    let prefix = hex::decode("302e020100300506032b657004220420").unwrap();
    pem(&[&prefix[..], seed].concat(), "PRIVATE KEY")
}

#[test]
fn the_small_order_table_is_the_eight_torsion_subgroup() {
    let mut torsion: Vec<Vec<u8>> = curve25519_dalek::constants::EIGHT_TORSION
        .iter()
        .map(|p| p.compress().to_bytes().to_vec())
        .collect();
    let mut table: Vec<Vec<u8>> = ED25519_REFUSED[..8]
        .iter()
        .map(|(_, k, _)| ed25519_key(k))
        .collect();
    torsion.sort();
    table.sort();
    assert_eq!(torsion, table);
}

on_both_backends!(small_order_off_curve_and_non_canonical_ed25519_keys_are_refused);
async fn small_order_off_curve_and_non_canonical_ed25519_keys_are_refused() {
    let app = spawn_with(|c| c.keys.max_per_org = 10).await;
    for (what, key, reason) in ED25519_REFUSED {
        let key = ed25519_key(key);
        let forms = [
            (
                "JWK",
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&key)}),
            ),
            (
                "JWK with alg",
                json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "x": b64(&key)}),
            ),
        ];
        let mut bodies: Vec<(String, Value)> = forms
            .into_iter()
            .map(|(form, jwk)| {
                (
                    format!("{what} as {form}"),
                    json!({"name": "forged", "jwk": jwk}),
                )
            })
            .collect();
        let spki = spki_pem(ED25519, None, &key);
        bodies.push((
            format!("{what} as PEM"),
            json!({"name": "forged", "publicKey": spki}),
        ));
        for (case, body) in bodies {
            let r = app.create_key_raw("acme", &body, ADMIN).await;
            r.assert_error(400, "invalid_request");
            let answer = r.json();
            let message = answer["message"].as_str().unwrap();
            assert!(message.contains(reason), "{case}: {message}");
            let text = r.text();
            assert!(
                !text.contains(&b64(&key)),
                "{case}: the key is echoed: {text}"
            );
            assert!(
                !text.contains(&spki[27..60]),
                "{case}: the PEM is echoed: {text}"
            );
        }
    }
    assert_eq!(app.key_count("acme").await, 0, "no refused key was stored");
    assert!(app.jwks_kids().await.is_empty());

    // Real keys keep working: RFC 8032's, one made by openssl, one made
    // by signet; a token each signs verifies under the uploaded key.
    let mut real: Vec<(&str, String, Signer)> = Vec::new();
    let rfc_seed = hex::decode(RFC8032_SECRET).unwrap();
    let rfc_public = spki_pem(ED25519, None, &hex::decode(RFC8032_PUBLIC).unwrap());
    real.push((
        "RFC 8032 test 1",
        rfc_public,
        Signer::from_pem(&ed25519_pkcs8(&rfc_seed)),
    ));
    let dir = tempfile::tempdir().unwrap();
    let openssl_key = dir.path().join("ed25519.pem");
    let generated = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&openssl_key)
        .status();
    if generated.is_ok_and(|s| s.success()) {
        let public = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&openssl_key)
            .output()
            .unwrap();
        assert!(public.status.success());
        let private = std::fs::read_to_string(&openssl_key).unwrap();
        real.push((
            "openssl",
            String::from_utf8(public.stdout).unwrap(),
            Signer::from_pem(&private),
        ));
    } else {
        eprintln!("SKIPPED the openssl-made Ed25519 key: no openssl command on PATH");
    }
    let donor = Donor::new(&app, "EdDSA").await;
    real.push(("signet", donor.public_pem().to_owned(), donor.signer()));
    for (what, public, signer) in real {
        let r = app
            .create_key_raw("acme", &json!({"name": what, "publicKey": public}), ADMIN)
            .await;
        assert_eq!(r.status, 201, "{what}: {}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_owned();
        let token = signer.sign(
            &json!({"alg": "EdDSA", "kid": id}),
            &claims("acme", "OWNER"),
            "EdDSA",
        );
        assert_eq!(verdict(&app, &token).await, "valid", "{what}");
    }
}

on_both_backends!(a_token_forged_for_the_identity_key_never_verifies);
async fn a_token_forged_for_the_identity_key_never_verifies() {
    use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
    let app = spawn_with(|_| {}).await;
    let identity = ed25519_key(ED25519_REFUSED[0].1);
    // Under the identity key, R = identity and S = 0 is a signature of any
    // message for a verifier that follows RFC 8032 as written (aws-lc's
    // does): this is the forgery the refusal prevents.
    let forged_signature = [&identity[..], &[0; 32]].concat();
    let forge = |kid: &str| {
        let input = crate::support::signing_input(
            &json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
            &claims("acme", "OWNER"),
        );
        let verified = UnparsedPublicKey::new(&ED25519, &identity)
            .verify(input.as_bytes(), &forged_signature)
            .is_ok();
        assert!(
            verified,
            "the forged signature verifies under the identity key itself"
        );
        format!("{input}.{}", b64(&forged_signature))
    };
    let body =
        json!({"name": "forged", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64(&identity)}});
    let upload = app.create_key_raw("acme", &body, ADMIN).await;
    // Whatever kid the forger names (the uploaded key's, had the upload
    // been accepted, or a real key's), the token does not verify and does
    // not authenticate.
    let real = app
        .create_key("acme", json!({"name": "real", "algorithm": "EdDSA"}))
        .await;
    let mut kids = vec![real["id"].as_str().unwrap().to_owned()];
    kids.extend(upload.json()["id"].as_str().map(str::to_owned));
    for kid in kids {
        let token = forge(&kid);
        assert_ne!(verdict(&app, &token).await, "valid", "{kid}");
        let r = app
            .request_as(hyper::Method::GET, "/v1/organisations/acme/audit", &token)
            .await;
        r.assert_error(401, "unauthorized");
    }
    upload.assert_error(400, "invalid_request");
    assert_eq!(app.key_count("acme").await, 1);
}

on_both_backends!(signet_keys_upload_refuses_small_order_keys);
async fn signet_keys_upload_refuses_small_order_keys() {
    use crate::cli::{signet, stderr};
    let dir = tempfile::tempdir().unwrap();
    let storage = crate::backends::storage_args(&dir.path().join("data"));
    let keys = |args: &[&str]| {
        let mut all = vec!["keys"];
        all.extend(storage.iter().map(String::as_str));
        all.extend_from_slice(args);
        signet(&all, &[])
    };
    let cases = [
        (0, "jwk"),
        (9, "jwk"),
        (12, "public-key"),
        (14, "public-key"),
    ];
    for (row, form) in cases {
        let (what, key, reason) = ED25519_REFUSED[row];
        let key = ed25519_key(key);
        let file = dir.path().join(format!("{row}.{form}"));
        let text = match form {
            "jwk" => json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&key)}).to_string(),
            _ => spki_pem(ED25519, None, &key),
        };
        std::fs::write(&file, text).unwrap();
        let flag = format!("--{form}");
        let o = keys(&[
            "upload",
            "--org",
            "acme",
            "--name",
            "forged",
            &flag,
            file.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        assert!(stderr(&o).contains(reason), "{what}: {}", stderr(&o));
        assert!(!stderr(&o).contains(&b64(&key)), "{what}: {}", stderr(&o));
    }
    let list = keys(&["list", "--org", "acme"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list["keys"], json!([]), "nothing was stored");
    // A real key is still taken by the same command.
    let public = dir.path().join("rfc8032.pem");
    std::fs::write(
        &public,
        spki_pem(ED25519, None, &hex::decode(RFC8032_PUBLIC).unwrap()),
    )
    .unwrap();
    let o = keys(&[
        "upload",
        "--org",
        "acme",
        "--name",
        "real",
        "--public-key",
        public.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ecdsa_signatures_high_s_twin_is_accepted_as_rfc_7518_allows() {
    // docs/api.md says so: (r, n - s) verifies like (r, s).
    use rsa::BigUint;
    let app = spawn_with(|_| {}).await;
    let created = app
        .create_key("acme", json!({"name": "ec", "algorithm": "ES256"}))
        .await;
    let (id, signer) = crate::support::key_of(&created);
    let token = signer.org_token(&id, claims("acme", "OWNER"));
    let (input, signature) = token.rsplit_once('.').unwrap();
    let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    let n = BigUint::parse_bytes(
        b"FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551",
        16,
    )
    .unwrap();
    let s = BigUint::from_bytes_be(&signature[32..]);
    let twin_s = (&n - &s).to_bytes_be();
    let mut twin = signature[..32].to_vec();
    twin.extend(std::iter::repeat_n(0, 32 - twin_s.len()));
    twin.extend(twin_s);
    assert_ne!(twin, signature);
    assert_eq!(verdict(&app, &token).await, "valid");
    assert_eq!(
        verdict(&app, &format!("{input}.{}", b64(&twin))).await,
        "valid"
    );
}
