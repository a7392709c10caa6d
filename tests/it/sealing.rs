//! Sealed key records: a record written into the database without the
//! seal key, or moved, is treated as absent; rotation keeps every record.

use std::path::Path;

use serde_json::json;
use signet::keys::{KeyId, KeyName, KeySpec, OrgId, PublicKeyRecord};
use signet::seal::Sealer;
use signet::store::sled::SledStore as Store;

use crate::support::*;

fn open(dir: &Path) -> Store {
    Store::open(dir, Sealer::load_or_create(dir, None).unwrap()).unwrap()
}

fn attacker_record(id: KeyId) -> (PublicKeyRecord, Signer) {
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
    let pem = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys/b.pem"))
        .unwrap();
    let spki = rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
        .unwrap()
        .to_public_key()
        .to_public_key_der()
        .unwrap();
    let record = PublicKeyRecord {
        id,
        org: OrgId::parse("acme").unwrap(),
        name: KeyName::parse("planted").unwrap(),
        spec: KeySpec::default(),
        spki_der: spki.into_vec(),
        created_at_ms: 0,
        life: Default::default(),
    };
    (record, Signer::from_pem(&pem))
}

#[tokio::test(flavor = "multi_thread")]
async fn planted_and_moved_records_are_treated_as_absent() {
    let app = spawn_app().await;
    let genuine = app.create_key("acme", json!({"name": "genuine"})).await;
    let dir = app.stop().await;
    let planted_plain = KeyId::new(ulid::Ulid::new());
    let planted_foreign = KeyId::new(ulid::Ulid::new());
    let moved = KeyId::new(ulid::Ulid::new());
    {
        let store = open(dir.path());
        let keys = store.raw_keys_tree();
        // 1. A plain record, as an attacker without the seal key would write it.
        let (record, _) = attacker_record(planted_plain);
        keys.insert(
            planted_plain.to_bytes(),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        // 2. A record sealed under a key of the attacker's own.
        let (record, _) = attacker_record(planted_foreign);
        let foreign = Sealer::from_keys(&[[9; 32]]).seal(
            planted_foreign,
            &record.org,
            &serde_json::to_vec(&record).unwrap(),
        );
        keys.insert(planted_foreign.to_bytes(), foreign).unwrap();
        // 3. A genuine sealed record copied under another id.
        let genuine_id = KeyId::parse(genuine["id"].as_str().unwrap()).unwrap();
        let value = keys.get(genuine_id.to_bytes()).unwrap().unwrap();
        keys.insert(moved.to_bytes(), value).unwrap();
        store.sync().unwrap();
    }
    let app = spawn_with(|c| c.storage.data_dir = dir.path().to_owned()).await;
    let kids = app.jwks_kids().await;
    assert_eq!(
        kids,
        [genuine["id"].as_str().unwrap()],
        "only the genuine key is published"
    );
    for id in [planted_plain, planted_foreign, moved] {
        app.get(&format!("/v1/keys/{id}"))
            .await
            .assert_error(404, "not_found");
    }
    for id in [planted_plain, planted_foreign] {
        let (_, signer) = attacker_record(id);
        let token = signer.org_token(&id.to_string(), claims("acme", "OWNER"));
        let v = app.verify(&token).await;
        assert_eq!(
            v["error"]["code"], "unknown_key",
            "a planted key verifies nothing: {v}"
        );
        let r = app
            .request_as(hyper::Method::GET, "/v1/organisations/acme/keys", &token)
            .await;
        r.assert_error(401, "unauthorized");
    }
    let (kid, signer) = key_of(&genuine);
    assert_eq!(
        app.verify(&signer.org_token(&kid, claims("acme", "OWNER")))
            .await["valid"],
        true
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn seal_rotation_reseals_every_record() {
    let app = spawn_app().await;
    let a = app.create_key("acme", json!({"name": "a"})).await;
    let b = app.create_key("beta", json!({"name": "b"})).await;
    assert_eq!(
        app.delete_key("beta", b["id"].as_str().unwrap(), ADMIN)
            .await
            .status
            .as_u16(),
        204
    );
    let dir = app.stop().await;
    let old_key = std::fs::read_to_string(dir.path().join("seal.key")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(["seal", "rotate", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("re-sealed 2 records"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let new_key = std::fs::read_to_string(dir.path().join("seal.key")).unwrap();
    assert_ne!(old_key, new_key);
    assert!(!dir.path().join("seal.key.next").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("seal.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    {
        let mut old = [0u8; 32];
        for (i, b) in old.iter_mut().enumerate() {
            *b = u8::from_str_radix(&old_key[2 * i..2 * i + 2], 16).unwrap();
        }
        let with_old = Store::open(dir.path(), Sealer::from_keys(&[old])).unwrap();
        assert!(
            with_old.all_keys().unwrap().is_empty(),
            "the old key opens nothing any more"
        );
    }
    let app = spawn_with(|c| c.storage.data_dir = dir.path().to_owned()).await;
    let (kid, signer) = key_of(&a);
    assert_eq!(
        app.verify(&signer.org_token(&kid, claims("acme", "OWNER")))
            .await["valid"],
        true
    );
    app.get(&format!("/v1/keys/{}", b["id"].as_str().unwrap()))
        .await
        .assert_error(404, "not_found");
}
