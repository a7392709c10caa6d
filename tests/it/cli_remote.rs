//! `signet keys … --server URL`: every key command through the binary
//! against a running server, each effect checked through the HTTP API; a
//! refused credential, a down server and hostile arguments.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::cli::{argv, assert_exit, isolated, json_out, stderr};
use crate::support::*;

/// `signet keys …` in `cwd` (so no ./config.toml or ./data of the crate
/// counts), with none of the variables that pick a target or credential
/// unless `env` sets them.
struct Remote {
    cwd: PathBuf,
    env: Vec<(String, String)>,
}

impl Remote {
    fn new(cwd: &Path, env: &[(&str, &str)]) -> Remote {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Remote {
            cwd: cwd.to_owned(),
            env: env.collect(),
        }
    }

    /// `signet keys LINE… MORE…` (see [`argv`]), off the async runtime,
    /// which the server in-process runs on.
    async fn run(&self, line: &str, more: &[&str]) -> Output {
        let mut cmd = isolated(&self.cwd);
        cmd.arg("keys").args(argv(line, more));
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    /// `run`, which must exit 0; its stdout as JSON.
    async fn json(&self, line: &str, more: &[&str]) -> Value {
        json_out(&self.run(line, more).await)
    }
}

/// The operator against the server at `url`, in `cwd`.
fn operator(cwd: &Path, url: &str) -> Remote {
    Remote::new(cwd, &[("SIGNET_SERVER", url), ("SIGNET_TOKEN", ADMIN)])
}

/// A server, a directory to run the CLI in, and the operator there.
async fn served() -> (TestApp, TempDir, Remote) {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = operator(dir.path(), &app.url(""));
    (app, dir, keys)
}

/// A token for `kid`, signed with the private key in `pem_file`.
fn token_from(pem_file: &Path, kid: &str) -> String {
    let signer = Signer::from_pem(&std::fs::read_to_string(pem_file).unwrap());
    signer.org_token(kid, claims("acme", "OWNER"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_key_command_drives_a_running_server() {
    let (app, dir, keys) = served().await;
    let cwd = dir.path();

    // create, its private key into --out (0600), the public half published.
    let out = cwd.join("a.pem");
    let created = keys
        .json(
            "create --org acme --name cli --algorithm ES256 --out",
            &[out.to_str().unwrap()],
        )
        .await;
    assert!(created.get("privateKey").is_none(), "{created}");
    let kid = created["id"].as_str().unwrap().to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let published = app.get(&format!("/v1/keys/{kid}")).await;
    assert_eq!(published.status, 200, "{}", published.text());
    assert_eq!(published.json()["publicKey"], created["publicKey"]);
    let token = token_from(&out, &kid);
    assert_eq!(app.verify(&token).await["valid"], true);

    // list, as JSON (stdout is not a terminal here, and --json says so too).
    for line in ["list --org acme", "list --org acme --json"] {
        let listed = keys.json(line, &[]).await;
        assert_eq!(listed["keys"][0]["id"], kid.as_str(), "{listed}");
    }

    // disable: the key's token is refused; enable: accepted again.
    let disabled = keys.json("disable --org acme", &[&kid]).await;
    assert_eq!(disabled["state"], "disabled");
    let v = app.verify(&token).await;
    assert_eq!(v["error"]["code"], "key_disabled", "{v}");
    let enabled = keys.json("enable --org acme", &[&kid]).await;
    assert_eq!(enabled["state"], "active");
    assert_eq!(app.verify(&token).await["valid"], true);

    // rotate: --out holds the successor, whose public half is published.
    let r_out = cwd.join("r.pem");
    let rotate = format!("rotate --org acme {kid} --grace-seconds 0 --out");
    let successor = keys.json(&rotate, &[r_out.to_str().unwrap()]).await;
    let next = successor["id"].as_str().unwrap().to_owned();
    assert_ne!(next, kid);
    assert!(successor.get("privateKey").is_none());
    let published = app.get(&format!("/v1/keys/{next}")).await;
    assert_eq!(published.status, 200);
    let signer = Signer::from_pem(&std::fs::read_to_string(&r_out).unwrap());
    let spki =
        pkcs8::der::pem::decode_vec(published.json()["publicKey"].as_str().unwrap().as_bytes())
            .unwrap()
            .1;
    assert_eq!(
        signer.spki_der(),
        spki,
        "--out holds the published key's pair"
    );
    assert_eq!(app.verify(&token_from(&r_out, &next)).await["valid"], true);
    assert_eq!(
        app.get(&format!("/v1/keys/{kid}")).await.status,
        404,
        "retired"
    );

    // upload the successor's public key into another organisation.
    let public = cwd.join("pub.pem");
    std::fs::write(&public, successor["publicKey"].as_str().unwrap()).unwrap();
    let upload = "upload --org beta --name up --public-key";
    let uploaded = keys.json(upload, &[public.to_str().unwrap()]).await;
    assert_eq!(uploaded["origin"], "uploaded");
    let listed = app.list_keys("beta").await.json();
    assert_eq!(listed["keys"][0]["id"], uploaded["id"]);
    assert_eq!(listed["keys"][0]["origin"], "uploaded");

    // delete: 404 after; a second delete is the API's refusal, exit 1.
    assert_exit(&keys.run("delete --org acme", &[&next]).await, 0, "");
    assert_eq!(app.get(&format!("/v1/keys/{next}")).await.status, 404);
    let o = keys.run("delete --org acme", &[&next]).await;
    assert_exit(&o, 1, "does not exist");

    // Any other refusal is exit 1 with the API's message: the quota.
    let quota = spawn_with(|c| c.keys.max_per_org = 1).await;
    let quota_keys = operator(cwd, &quota.url(""));
    let create = "create --org acme --name q --algorithm EdDSA";
    let first = quota_keys.json(create, &[]).await;
    assert!(
        first["privateKey"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----"),
        "without --out the private key is in the answer"
    );
    let refused_out = cwd.join("refused.pem");
    let o = quota_keys
        .run(create, &["--out", refused_out.to_str().unwrap()])
        .await;
    assert_exit(&o, 1, "Maximum number of organisation keys (1)");
    assert!(
        !refused_out.exists(),
        "the claimed --out file is removed again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_out_path_sends_nothing_to_the_server() {
    let (app, dir, keys) = served().await;
    let set = app
        .create_key("acme", json!({"name": "old", "algorithm": "EdDSA"}))
        .await;
    let kid = set["id"].as_str().unwrap().to_owned();
    let cwd = dir.path();
    let taken = cwd.join("taken.pem");
    std::fs::write(&taken, "x").unwrap();
    let nodir = cwd.join("nodir").join("r.pem");
    let rotate = format!("rotate --org acme {kid} --grace-seconds 0 --out");
    for (out, says) in [(&taken, "already exists"), (&nodir, "does not exist")] {
        let out = out.to_str().unwrap();
        let o = keys.run("create --org acme --name n --out", &[out]).await;
        assert_exit(&o, 2, "");
        assert_exit(&keys.run(&rotate, &[out]).await, 2, says);
    }
    let listed = app.list_keys("acme").await.json();
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "nothing created: {listed}");
    assert_eq!(keys[0]["state"], "active", "nothing retired: {listed}");
    assert_eq!(std::fs::read_to_string(&taken).unwrap(), "x");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_credential_is_exit_1_and_names_where_it_came_from() {
    let app = spawn_app().await;
    let set = app
        .create_key("acme", json!({"name": "k", "algorithm": "ES256"}))
        .await;
    let (kid, signer) = key_of(&set);
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let url = app.url("");
    let wrong = "not-the-operator-token-0123456789";

    let o = Remote::new(cwd, &[("SIGNET_TOKEN", wrong)])
        .run(&format!("list --org acme --server {url}"), &[])
        .await;
    assert_exit(&o, 1, "credential");
    let e = stderr(&o);
    assert!(e.contains("SIGNET_TOKEN"), "{e}");
    assert!(!e.contains(wrong), "the token itself is never printed: {e}");

    let file = cwd.join("token");
    std::fs::write(&file, format!("{wrong}\n")).unwrap();
    let disable = format!("disable --org acme {kid} --server {url} --token-file");
    let o = Remote::new(cwd, &[])
        .run(&disable, &[file.to_str().unwrap()])
        .await;
    assert_exit(&o, 1, "credential");
    assert!(stderr(&o).contains("--token-file"), "{}", stderr(&o));
    assert_eq!(
        app.get(&format!("/v1/keys/{kid}")).await.status,
        200,
        "still active"
    );

    // A valid organisation token that may read but not manage: 403.
    let member = signer.org_token(&kid, claims("acme", "MEMBER"));
    let keys = Remote::new(cwd, &[("SIGNET_SERVER", &url), ("SIGNET_TOKEN", &member)]);
    let listed = keys.json("list --org acme", &[]).await;
    assert_eq!(listed["keys"][0]["id"], kid.as_str());
    let o = keys.run("delete --org acme", &[&kid]).await;
    assert_exit(&o, 1, "credential from SIGNET_TOKEN may not");
    assert_eq!(
        app.get(&format!("/v1/keys/{kid}")).await.status,
        200,
        "not deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_operator_token_is_the_last_resort() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let keys = Remote::new(cwd, &[]);
    let list = format!("list --org acme --server {}", app.url(""));
    // No credential anywhere: exit 2, saying where one may come from.
    let o = keys.run(&list, &[]).await;
    assert_exit(&o, 2, "SIGNET_TOKEN");
    assert!(stderr(&o).contains("admin.token"), "{}", stderr(&o));

    // ./data/admin.token of the local (default) config.
    std::fs::create_dir(cwd.join("data")).unwrap();
    std::fs::write(cwd.join("data").join("admin.token"), format!("{ADMIN}\n")).unwrap();
    let listed = keys.json(&list, &[]).await;
    assert_eq!(listed["keys"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_server_is_exit_2_naming_its_url() {
    // An address that was free a moment ago: nobody listens there.
    let bare = free_addr();
    let url = format!("http://{bare}");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let out = cwd.join("k.pem");
    let started = Instant::now();
    let o = operator(cwd, &url)
        .run("create --org acme --name n --out", &[out.to_str().unwrap()])
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_exit(&o, 2, &url);
    assert!(!out.exists(), "nothing left behind");

    // A server address without a scheme: exit 2, showing the fix.
    let o = Remote::new(cwd, &[("SIGNET_TOKEN", ADMIN)])
        .run(&format!("list --org acme --server {bare}"), &[])
        .await;
    assert_exit(&o, 2, &format!("http://{bare}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_arguments_are_refused_before_anything_is_sent() {
    let (app, dir, keys) = served().await;
    let cwd = dir.path();
    // Ids and organisations are parsed, so no path can be smuggled in.
    for line in [
        "delete --org acme/../x 01JD0000000000000000000000",
        "delete --org acme ../../v1/verify",
        "disable --org acme 01JD000000000000000000000?",
    ] {
        let o = keys.run(line, &[]).await;
        assert_eq!(o.status.code(), Some(2), "{line}: {}", stderr(&o));
    }
    // A credential that would split the header.
    let url = app.url("");
    let split = [
        ("SIGNET_SERVER", &*url),
        ("SIGNET_TOKEN", "abc\r\nX-Evil: 1"),
    ];
    let o = Remote::new(cwd, &split).run("list --org acme", &[]).await;
    assert_exit(&o, 2, "SIGNET_TOKEN");
    // A private key offered as a public one never leaves the machine.
    let pem = cwd.join("private.pem");
    let set = app
        .create_key("acme", json!({"name": "k", "algorithm": "EdDSA"}))
        .await;
    std::fs::write(&pem, set["privateKey"].as_str().unwrap()).unwrap();
    let upload = "upload --org acme --name u --public-key";
    let o = keys.run(upload, &[pem.to_str().unwrap()]).await;
    assert_exit(&o, 1, "");
    assert!(!stderr(&o).contains("BEGIN PRIVATE KEY"), "{}", stderr(&o));
    let listed = app.list_keys("acme").await.json();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1, "{listed}");
    // Offline-only listing of every organisation needs --org here.
    assert_exit(&keys.run("list", &[]).await, 2, "--org");
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_cacert() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let (cert, key, ca_file) = (
        cwd.join("cert.pem"),
        cwd.join("key.pem"),
        cwd.join("ca.pem"),
    );
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let tls = signet::config::TlsFiles {
        cert_file: cert,
        key_file: key,
        reload_poll_secs: 0,
    };
    let app = spawn_with(move |c| c.server.tls = Some(tls)).await;
    let keys = operator(cwd, &format!("https://{}", app.addr));
    let (out, cacert) = (cwd.join("k.pem"), ca_file.to_str().unwrap());
    let created = keys
        .json(
            "create --org acme --name tls --algorithm EdDSA",
            &["--out", out.to_str().unwrap(), "--cacert", cacert],
        )
        .await;
    let kid = created["id"].as_str().unwrap();
    // Untrusted without --cacert.
    assert_exit(&keys.run("list --org acme", &[]).await, 2, "certificate");
    let listed = keys.json("list --org acme --cacert", &[cacert]).await;
    assert_eq!(listed["keys"][0]["id"], kid);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_arguments_are_usage_errors_as_offline() {
    let (app, dir, keys) = served().await;
    let cwd = dir.path();
    let data = cwd.join("data");
    let offline = Remote::new(cwd, &[]);
    for line in [
        "create --org acme --name bad\u{7}name",
        "create --org acme --name n --algorithm ES256 --bits 2048",
        "create --org acme --name n --expires-at tomorrow",
    ] {
        let o = keys.run(line, &[]).await;
        assert_eq!(o.status.code(), Some(2), "{line:?}: {}", stderr(&o));
        let o = offline
            .run(line, &["--data-dir", data.to_str().unwrap()])
            .await;
        assert_eq!(o.status.code(), Some(2), "offline {line:?}: {}", stderr(&o));
    }
    let listed = app.list_keys("acme").await.json();
    assert_eq!(listed["keys"], json!([]), "nothing was made");
}
