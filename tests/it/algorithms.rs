//! EC (P-256, P-384) and Ed25519 keys beside RSA: created, published as
//! JWKs, used for organisation tokens and by the CLI; and a data dir written
//! before they existed, opened and served after the upgrade.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hyper::Method;
use serde_json::{json, Value};

use crate::cli::{signet, stderr, Offline};
use crate::support::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

/// algorithm, kty, crv, coordinate bytes, whether the JWK has `y`.
const CURVE_KEYS: [(&str, &str, &str, usize, bool); 3] = [
    ("ES256", "EC", "P-256", 32, true),
    ("ES384", "EC", "P-384", 48, true),
    ("EdDSA", "OKP", "Ed25519", 32, false),
];

fn pem_der(pem: &str, label: &str) -> Vec<u8> {
    let (found, der) = pkcs8::der::pem::decode_vec(pem.as_bytes()).unwrap();
    assert_eq!(found, label, "{pem}");
    der
}

#[tokio::test(flavor = "multi_thread")]
async fn ec_and_ed25519_keys_are_created_published_and_used() {
    let app = spawn_app().await;
    for (alg, kty, crv, len, has_y) in CURVE_KEYS {
        let created = app
            .create_key("acme", json!({"name": alg, "algorithm": alg}))
            .await;
        assert_eq!(created["algorithm"], alg);
        assert_eq!(created["bits"], Value::Null, "bits is null for {alg}");
        let (kid, signer) = key_of(&created);
        let spki = pem_der(created["publicKey"].as_str().unwrap(), "PUBLIC KEY");
        assert_eq!(spki, signer.spki_der(), "{alg}: publicKey is the SPKI");
        pem_der(created["privateKey"].as_str().unwrap(), "PRIVATE KEY");

        let public = app
            .get_with(
                &format!("/v1/keys/{kid}"),
                &[("accept", "application/x-pem-file")],
            )
            .await;
        assert_eq!(public.text(), created["publicKey"].as_str().unwrap());

        let jwks = app.get("/v1/organisations/acme/jwks.json").await.json();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .unwrap_or_else(|| panic!("{alg} key missing from {jwks}"));
        let mut members: Vec<&str> = jwk.as_object().unwrap().keys().map(|k| &**k).collect();
        members.sort();
        let expected: &[&str] = if has_y {
            &["alg", "crv", "kid", "kty", "use", "x", "y"]
        } else {
            &["alg", "crv", "kid", "kty", "use", "x"]
        };
        assert_eq!(members, expected, "{jwk}");
        assert_eq!(
            (&jwk["kty"], &jwk["crv"], &jwk["alg"], &jwk["use"]),
            (&json!(kty), &json!(crv), &json!(alg), &json!("sig"))
        );
        for c in ["x", "y"].into_iter().take(if has_y { 2 } else { 1 }) {
            let raw = jwk[c].as_str().unwrap();
            assert_eq!(URL_SAFE_NO_PAD.decode(raw).unwrap().len(), len, "{alg} {c}");
        }
        // The coordinates are the key's: the point ends the SPKI.
        let point: Vec<u8> = ["x", "y"]
            .iter()
            .filter_map(|c| jwk[c].as_str())
            .flat_map(|c| URL_SAFE_NO_PAD.decode(c).unwrap())
            .collect();
        assert!(spki.ends_with(&point), "{alg}: JWK and SPKI disagree");

        // An organisation token signed by the new key manages its org.
        let token = signer.org_token(&kid, claims("acme", "OWNER"));
        let listed = app
            .request_as(Method::GET, "/v1/organisations/acme/keys", &token)
            .await;
        assert_eq!(listed.status, 200, "{alg}: {}", listed.text());
        let verdict = app.verify(&token).await;
        assert_eq!(verdict["valid"], true, "{alg}: {verdict}");
        assert_eq!(verdict["header"]["alg"], alg);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ed25519_key_accepts_either_header_name_and_nothing_else() {
    let app = spawn_app().await;
    let created = app
        .create_key("acme", json!({"name": "ed", "algorithm": "EdDSA"}))
        .await;
    let (kid, signer) = key_of(&created);
    let cases = [
        ("EdDSA", "valid"),
        ("Ed25519", "valid"),
        ("ES256", "unsupported_algorithm"),
        ("RS256", "unsupported_algorithm"),
        ("Ed448", "unsupported_algorithm"),
    ];
    for (alg, expected) in cases {
        let header = json!({"alg": alg, "typ": "JWT", "kid": kid});
        let token = signer.sign(&header, &claims("acme", "OWNER"), alg);
        let v = app.verify(&token).await;
        let verdict = v["error"]["code"].as_str().unwrap_or("valid");
        assert_eq!(verdict, expected, "header alg {alg}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bits_belongs_to_rsa_only() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"name": "k", "algorithm": "ES256", "bits": 2048}),
            400,
        ),
        (
            json!({"name": "k", "algorithm": "EdDSA", "bits": 3072}),
            400,
        ),
        (json!({"name": "k", "algorithm": "Ed25519"}), 400),
        (json!({"name": "k", "algorithm": "ES512"}), 400),
        (
            json!({"name": "k", "algorithm": "ES384", "bits": null}),
            201,
        ),
        (
            json!({"name": "k", "algorithm": "PS256", "bits": null}),
            201,
        ),
    ];
    for (body, status) in cases {
        let r = app.create_key_raw("acme", &body, ADMIN).await;
        if status == 400 {
            r.assert_error(400, "invalid_request");
        } else {
            assert_eq!(r.status, 201, "{body}: {}", r.text());
        }
    }
    let listed = app.list_keys("acme").await.json();
    let specs: Vec<(Value, Value)> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["algorithm"].clone(), k["bits"].clone()))
        .collect();
    assert_eq!(
        specs,
        [(json!("ES384"), Value::Null), (json!("PS256"), json!(2048))],
        "only the two valid bodies made keys, RSA defaulting to 2048 bits"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pem_create_answers_pkcs8_for_every_algorithm() {
    let app = spawn_app().await;
    for alg in ["ES256", "EdDSA", "RS256"] {
        let r = app
            .create_key_pem("acme", &json!({"name": "pem", "algorithm": alg}))
            .await;
        assert_eq!(r.status, 201, "{alg}: {}", r.text());
        pem_der(&r.text(), "PRIVATE KEY");
    }
}

/// Copies the fixture data dir of schema version 1 into `dir`.
fn copy_v1_data(dir: &Path) {
    let from = Path::new(FIXTURES).join("v1-data/data");
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_of_schema_version_1_opens_and_serves_every_key() {
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{FIXTURES}/v1-data/keys.json")).unwrap(),
    )
    .unwrap();
    let seal_key = manifest["sealKey"].as_str().unwrap().to_owned();
    let app = spawn_with(|c| {
        copy_v1_data(&c.storage.data_dir);
        c.storage.seal_key = Some(signet::config::Secret::new(seal_key.clone()));
    })
    .await;
    let jwks = app.jwks_kids().await;
    let keys = manifest["keys"].as_array().unwrap();
    for key in keys {
        let id = key["id"].as_str().unwrap();
        let org = key["organisationId"].as_str().unwrap();
        let signer = Signer::from_pem(key["privateKey"].as_str().unwrap());
        let alg = key["algorithm"].as_str().unwrap();
        let header = json!({"alg": alg, "typ": "JWT", "kid": id});
        let token = signer.sign(&header, &claims(org, "OWNER"), alg);
        let got = app.get(&format!("/v1/keys/{id}")).await;
        let verdict = app.verify(&token).await;
        if key["deleted"] == true {
            assert_eq!(got.status, 404, "{id} stays deleted");
            assert_eq!(verdict["error"]["code"], "unknown_key", "{verdict}");
            assert!(!jwks.contains(&id.to_owned()));
            continue;
        }
        assert_eq!(got.status, 200, "{id}: {}", got.text());
        let got = got.json();
        for field in ["id", "organisationId", "name", "algorithm", "bits"] {
            assert_eq!(got[field], key[field], "{id} {field}");
        }
        assert!(jwks.contains(&id.to_owned()), "{id} is in the JWK Set");
        assert_eq!(verdict["valid"], true, "{id}: {verdict}");
    }
    let listed = app.list_keys("acme").await.json();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2);
    // New keys of every kind land beside the old ones.
    app.create_key("acme", json!({"name": "new", "algorithm": "ES256"}))
        .await;
    let dir = app.stop().await;

    let db = sled::open(dir.path()).unwrap();
    let version = db.open_tree("meta").unwrap().get("schema_version").unwrap();
    assert_eq!(
        version.unwrap().as_ref(),
        signet::store::SCHEMA_VERSION.to_be_bytes(),
        "restamped"
    );
    drop(db);
    let mut config = signet::config::Config::default();
    config.storage.data_dir = dir.path().to_owned();
    config.storage.seal_key = Some(signet::config::Secret::new(seal_key));
    let store = signet::store::Store::open_existing(&config).await.unwrap();
    assert_eq!(store.all_keys().await.unwrap().len(), 3);
    let audit = store.verify_audit().await.unwrap();
    assert!(
        audit.as_ref().is_ok_and(|n| *n >= 5),
        "the old audit chain continues intact: {audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_creates_signs_and_verifies_with_ec_and_ed25519_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let keys = Offline::data_dir(data);
    let create = |alg: &str, more: &[&str]| {
        keys.run(
            &format!("create --org acme --name {alg} --algorithm {alg}"),
            more,
        )
    };
    for (alg, ..) in CURVE_KEYS {
        let pem = dir.path().join(format!("{alg}.pem"));
        let pem = pem.to_str().unwrap();
        let o = create(alg, &["--out", pem]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let created: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(created["bits"], Value::Null);
        let kid = created["id"].as_str().unwrap();
        // No --alg: the PKCS#8 key says which.
        let o = signet(&["token", "--key", pem, "--kid", kid, "--org", "acme"], &[]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let token = String::from_utf8(o.stdout).unwrap().trim().to_owned();
        let o = signet(&["verify", &token, "--data-dir", data, "--json"], &[]);
        assert_eq!(o.status.code(), Some(0), "{alg}: {}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["header"]["alg"], alg);

        let wrong = if alg == "ES256" { "ES384" } else { "ES256" };
        let o = signet(
            &[
                "token", "--key", pem, "--kid", kid, "--org", "acme", "--alg", wrong,
            ],
            &[],
        );
        assert_eq!(o.status.code(), Some(2), "{alg} key signing as {wrong}");
        assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
    let o = create("EdDSA", &["--bits", "2048"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bits"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn signet_verify_reads_ec_and_okp_keys_from_a_jwk_set_and_a_server() {
    let app = spawn_app().await;
    let jwks_file = app.dir.path().join("jwks.json");
    let mut tokens = Vec::new();
    for (alg, ..) in CURVE_KEYS {
        let created = app
            .create_key("acme", json!({"name": alg, "algorithm": alg}))
            .await;
        let (kid, signer) = key_of(&created);
        tokens.push(signer.org_token(&kid, claims("acme", "OWNER")));
    }
    std::fs::write(
        &jwks_file,
        app.get("/.well-known/jwks.json").await.body.as_ref(),
    )
    .unwrap();
    let server = app.url("");
    let jwks_url = app.url("/.well-known/jwks.json");
    let sources: [&[&str]; 3] = [
        &["--jwks", jwks_file.to_str().unwrap()],
        &["--jwks", &jwks_url],
        &["--server", &server],
    ];
    for token in &tokens {
        for source in sources {
            let args: Vec<String> = ["verify", token.as_str()]
                .iter()
                .chain(source)
                .map(|a| a.to_string())
                .collect();
            let o = tokio::task::spawn_blocking(move || {
                signet(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[])
            })
            .await
            .unwrap();
            assert_eq!(o.status.code(), Some(0), "{source:?}: {}", stderr(&o));
        }
    }
}
