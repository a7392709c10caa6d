//! Sealed key records: a record written into the database without the
//! seal key, or moved, is treated as absent; rotation keeps every record;
//! a seal key that opens none of the records is an error for every command
//! and for `serve`, and a lost seal key is never replaced by a new one.

use std::path::Path;

use serde_json::json;
use signet::keys::{KeyId, KeyName, KeySpec, OrgId, PublicKeyRecord};
use signet::seal::Sealer;
use signet::store::sled::SledStore as Store;

use crate::backends::storage_args;
use crate::cli::{signet, stderr};
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
        let with_old = Store::open(dir.path(), Sealer::from_keys(&[old]));
        assert!(
            matches!(
                with_old,
                Err(signet::store::StoreError::Seal(
                    signet::seal::SealError::WrongKey { .. }
                ))
            ),
            "the old key opens nothing any more, so the store is refused"
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

/// The names in `dir`, but for sled's snapshots, which its every open
/// may write.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("snap."))
        .collect();
    names.sort();
    names
}

/// A data dir (or database) holding one key, with the server stopped.
async fn stopped_with_a_key() -> tempfile::TempDir {
    let app = spawn_app().await;
    app.create_key("acme", json!({"name": "kept"})).await;
    app.stop().await
}

/// Runs `signet serve` on `dir` (or on `storage`, `--config FILE` on
/// PostgreSQL) with `env`; it must exit
/// within 20 s. Returns its exit code and stderr.
fn serve_exits(dir: &Path, storage: &[String], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_signet"));
    cmd.arg("serve").args(storage);
    cmd.env("SIGNET_DATA_DIR", dir)
        .env("SIGNET_LISTEN", "127.0.0.1:0")
        .env("SIGNET_ADMIN_TOKEN", ADMIN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(20) {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "serve kept running with a seal key that opens nothing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_seal_key_is_an_error_and_no_new_key_is_made() {
    let dir = stopped_with_a_key().await;
    let key_file = dir.path().join("seal.key");
    std::fs::remove_file(&key_file).unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let named = key_file.to_str().unwrap().to_owned();
    tokio::task::spawn_blocking(move || {
        for args in [
            &["keys", "list", "--data-dir", &data][..],
            &[
                "keys",
                "create",
                "--data-dir",
                &data,
                "--org",
                "acme",
                "--name",
                "n",
            ],
            &["audit", "verify", "--data-dir", &data],
        ] {
            let o = signet(args, &[]);
            let e = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
            assert!(e.contains(&named) && e.contains("missing"), "{args:?}: {e}");
            assert!(o.stdout.is_empty(), "{args:?}: printed something");
        }
        let (code, e) = serve_exits(Path::new(&data), &[], &[]);
        assert_eq!(code, Some(2), "{e}");
        assert!(e.contains(&named), "{e}");
        assert!(!Path::new(&named).exists(), "a new seal key was written");
    })
    .await
    .unwrap();
}

/// A wrong `SIGNET_SEAL_KEY` opens none of the records: `keys list` and
/// `serve` exit 2 naming the variable, on sled and on PostgreSQL.
async fn a_wrong_seal_key_is_an_error() {
    let dir = stopped_with_a_key().await;
    let path = dir.path().to_owned();
    // The backend is known in this task only.
    let storage = storage_args(&path);
    let serve_storage = match crate::backends::current() {
        signet::config::Backend::Postgres => storage.clone(),
        signet::config::Backend::Sled => Vec::new(),
    };
    tokio::task::spawn_blocking(move || {
        let wrong = "ab".repeat(32);
        let env = [("SIGNET_SEAL_KEY", wrong.as_str())];
        let mut args = vec!["keys".to_owned(), "list".to_owned()];
        args.extend(storage);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let before = names(&path);
        let o = signet(&args, &env);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(
            e.contains("SIGNET_SEAL_KEY") && e.contains("do not open"),
            "{e}"
        );
        assert!(
            o.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        let (code, e) = serve_exits(&path, &serve_storage, &env);
        assert_eq!(code, Some(2), "{e}");
        assert!(e.contains("SIGNET_SEAL_KEY"), "{e}");
        assert!(
            !e.contains("ignoring a stored key record"),
            "one error, not one per record: {e}"
        );
        assert_eq!(names(&path), before, "nothing was created");
        // The right key still opens everything.
        let o = signet(&args, &[]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("kept"));
    })
    .await
    .unwrap();
}

on_both_backends!(a_wrong_seal_key_is_an_error);

#[tokio::test(flavor = "multi_thread")]
async fn a_readable_seal_key_is_warned_about_once() {
    let dir = stopped_with_a_key().await;
    let key_file = dir.path().join("seal.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let server = BinServer::start(dir.path(), &[], "info", true);
    server.wait_ready().await;
    server.terminate();
    let out = server.child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("readable by group or others"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains(key_file.to_str().unwrap()), "{log}");
    // A private key file is not warned about.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let server = BinServer::start(dir.path(), &[], "info", true);
    server.wait_ready().await;
    server.terminate();
    let out = server.child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("readable by group or others"), "{log}");
}
