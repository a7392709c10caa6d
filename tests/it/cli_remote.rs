//! `signet keys … --server URL`: every key command through the binary
//! against a running server, each effect checked through the HTTP API; a
//! refused credential, a down server and hostile arguments.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Value};

use crate::support::*;

/// Runs the binary in `cwd` (so no ./config.toml or ./data of the crate
/// counts), with none of the variables that pick a target or credential
/// unless `env` sets them.
fn keys_cli(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_signet"));
    cmd.current_dir(cwd).arg("keys").args(args);
    for var in [
        "SIGNET_SERVER",
        "SIGNET_TOKEN",
        "SIGNET_ADMIN_TOKEN",
        "SIGNET_DATA_DIR",
        "SIGNET_DATABASE_URL",
        "ORGKEYS_MAX",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// `keys_cli` off the async runtime, which the server in-process runs on.
async fn run(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let cwd = cwd.to_owned();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        keys_cli(&cwd, &args, &env)
    })
    .await
    .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_out(o: &Output) -> Value {
    assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// A token for `kid`, signed with the private key in `pem_file`.
fn token_from(pem_file: &Path, kid: &str) -> String {
    let signer = Signer::from_pem(&std::fs::read_to_string(pem_file).unwrap());
    signer.org_token(kid, claims("acme", "OWNER"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_key_command_drives_a_running_server() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let url = app.url("");
    let env = [("SIGNET_SERVER", url.as_str()), ("SIGNET_TOKEN", ADMIN)];

    // create, its private key into --out (0600), the public half published.
    let out = cwd.join("a.pem");
    let created = json_out(
        &run(
            cwd,
            &[
                "create",
                "--org",
                "acme",
                "--name",
                "cli",
                "--algorithm",
                "ES256",
                "--out",
                out.to_str().unwrap(),
            ],
            &env,
        )
        .await,
    );
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
    for extra in [&[][..], &["--json"][..]] {
        let mut args = vec!["list", "--org", "acme"];
        args.extend_from_slice(extra);
        let listed = json_out(&run(cwd, &args, &env).await);
        assert_eq!(listed["keys"][0]["id"], kid.as_str(), "{listed}");
    }

    // disable: the key's token is refused; enable: accepted again.
    let disabled = json_out(&run(cwd, &["disable", "--org", "acme", &kid], &env).await);
    assert_eq!(disabled["state"], "disabled");
    let v = app.verify(&token).await;
    assert_eq!(v["error"]["code"], "key_disabled", "{v}");
    let enabled = json_out(&run(cwd, &["enable", "--org", "acme", &kid], &env).await);
    assert_eq!(enabled["state"], "active");
    assert_eq!(app.verify(&token).await["valid"], true);

    // rotate: --out holds the successor, whose public half is published.
    let r_out = cwd.join("r.pem");
    let successor = json_out(
        &run(
            cwd,
            &[
                "rotate",
                "--org",
                "acme",
                &kid,
                "--grace-seconds",
                "0",
                "--out",
                r_out.to_str().unwrap(),
            ],
            &env,
        )
        .await,
    );
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
    let uploaded = json_out(
        &run(
            cwd,
            &[
                "upload",
                "--org",
                "beta",
                "--name",
                "up",
                "--public-key",
                public.to_str().unwrap(),
            ],
            &env,
        )
        .await,
    );
    assert_eq!(uploaded["origin"], "uploaded");
    let listed = app
        .request_as(Method::GET, "/v1/organisations/beta/keys", ADMIN)
        .await
        .json();
    assert_eq!(listed["keys"][0]["id"], uploaded["id"]);
    assert_eq!(listed["keys"][0]["origin"], "uploaded");

    // delete: 404 after; a second delete is the API's refusal, exit 1.
    let o = run(cwd, &["delete", "--org", "acme", &next], &env).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(app.get(&format!("/v1/keys/{next}")).await.status, 404);
    let o = run(cwd, &["delete", "--org", "acme", &next], &env).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));

    // Any other refusal is exit 1 with the API's message: the quota.
    let quota = spawn_with(|c| c.keys.max_per_org = 1).await;
    let qurl = quota.url("");
    let qenv = [("SIGNET_SERVER", qurl.as_str()), ("SIGNET_TOKEN", ADMIN)];
    let args = [
        "create",
        "--org",
        "acme",
        "--name",
        "q",
        "--algorithm",
        "EdDSA",
    ];
    let first = json_out(&run(cwd, &args, &qenv).await);
    assert!(
        first["privateKey"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----"),
        "without --out the private key is in the answer"
    );
    let refused_out = cwd.join("refused.pem");
    let mut with_out = args.to_vec();
    with_out.extend(["--out", refused_out.to_str().unwrap()]);
    let o = run(cwd, &with_out, &qenv).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Maximum number of organisation keys (1)"),
        "{}",
        stderr(&o)
    );
    assert!(
        !refused_out.exists(),
        "the claimed --out file is removed again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_out_path_sends_nothing_to_the_server() {
    let app = spawn_app().await;
    let set = app
        .create_key("acme", json!({"name": "old", "algorithm": "EdDSA"}))
        .await;
    let kid = set["id"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let url = app.url("");
    let env = [("SIGNET_SERVER", url.as_str()), ("SIGNET_TOKEN", ADMIN)];
    let taken = cwd.join("taken.pem");
    std::fs::write(&taken, "x").unwrap();
    let nodir = cwd.join("nodir").join("r.pem");
    for (out, says) in [(&taken, "already exists"), (&nodir, "does not exist")] {
        let out = out.to_str().unwrap();
        let o = run(
            cwd,
            &["create", "--org", "acme", "--name", "n", "--out", out],
            &env,
        )
        .await;
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let o = run(
            cwd,
            &[
                "rotate",
                "--org",
                "acme",
                &kid,
                "--grace-seconds",
                "0",
                "--out",
                out,
            ],
            &env,
        )
        .await;
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
    }
    let listed = app
        .request_as(Method::GET, "/v1/organisations/acme/keys", ADMIN)
        .await
        .json();
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

    let o = run(
        cwd,
        &["list", "--org", "acme", "--server", &url],
        &[("SIGNET_TOKEN", wrong)],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("credential") && e.contains("SIGNET_TOKEN"),
        "{e}"
    );
    assert!(!e.contains(wrong), "the token itself is never printed: {e}");

    let file = cwd.join("token");
    std::fs::write(&file, format!("{wrong}\n")).unwrap();
    let o = run(
        cwd,
        &[
            "disable",
            "--org",
            "acme",
            &kid,
            "--server",
            &url,
            "--token-file",
            file.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("credential") && e.contains("--token-file"),
        "{e}"
    );
    assert_eq!(
        app.get(&format!("/v1/keys/{kid}")).await.status,
        200,
        "still active"
    );

    // A valid organisation token that may read but not manage: 403.
    let member = signer.org_token(&kid, claims("acme", "MEMBER"));
    let env = [
        ("SIGNET_SERVER", url.as_str()),
        ("SIGNET_TOKEN", member.as_str()),
    ];
    let listed = json_out(&run(cwd, &["list", "--org", "acme"], &env).await);
    assert_eq!(listed["keys"][0]["id"], kid.as_str());
    let o = run(cwd, &["delete", "--org", "acme", &kid], &env).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("credential from SIGNET_TOKEN may not"),
        "{}",
        stderr(&o)
    );
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
    let url = app.url("");
    // No credential anywhere: exit 2, saying where one may come from.
    let o = run(cwd, &["list", "--org", "acme", "--server", &url], &[]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("SIGNET_TOKEN") && e.contains("admin.token"),
        "{e}"
    );

    // ./data/admin.token of the local (default) config.
    std::fs::create_dir(cwd.join("data")).unwrap();
    std::fs::write(cwd.join("data").join("admin.token"), format!("{ADMIN}\n")).unwrap();
    let listed = json_out(&run(cwd, &["list", "--org", "acme", "--server", &url], &[]).await);
    assert_eq!(listed["keys"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_server_is_exit_2_naming_its_url() {
    // A port that was free a moment ago: nobody listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let out = cwd.join("k.pem");
    let started = Instant::now();
    let o = run(
        cwd,
        &[
            "create",
            "--org",
            "acme",
            "--name",
            "n",
            "--out",
            out.to_str().unwrap(),
        ],
        &[("SIGNET_SERVER", &url), ("SIGNET_TOKEN", ADMIN)],
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(&url), "{}", stderr(&o));
    assert!(!out.exists(), "nothing left behind");

    // A server address without a scheme: exit 2, showing the fix.
    let bare = format!("127.0.0.1:{port}");
    let o = run(
        cwd,
        &["list", "--org", "acme", "--server", &bare],
        &[("SIGNET_TOKEN", ADMIN)],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("http://{bare}")),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_arguments_are_refused_before_anything_is_sent() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let url = app.url("");
    let env = [("SIGNET_SERVER", url.as_str()), ("SIGNET_TOKEN", ADMIN)];
    // Ids and organisations are parsed, so no path can be smuggled in.
    for args in [
        &["delete", "--org", "acme/../x", "01JD0000000000000000000000"][..],
        &["delete", "--org", "acme", "../../v1/verify"][..],
        &["disable", "--org", "acme", "01JD000000000000000000000?"][..],
    ] {
        let o = run(cwd, args, &env).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    // A credential that would split the header.
    let o = run(
        cwd,
        &["list", "--org", "acme"],
        &[
            ("SIGNET_SERVER", url.as_str()),
            ("SIGNET_TOKEN", "abc\r\nX-Evil: 1"),
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("SIGNET_TOKEN"), "{}", stderr(&o));
    // A private key offered as a public one never leaves the machine.
    let pem = cwd.join("private.pem");
    let set = app
        .create_key("acme", json!({"name": "k", "algorithm": "EdDSA"}))
        .await;
    std::fs::write(&pem, set["privateKey"].as_str().unwrap()).unwrap();
    let o = run(
        cwd,
        &[
            "upload",
            "--org",
            "acme",
            "--name",
            "u",
            "--public-key",
            pem.to_str().unwrap(),
        ],
        &env,
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!stderr(&o).contains("BEGIN PRIVATE KEY"), "{}", stderr(&o));
    let listed = app
        .request_as(Method::GET, "/v1/organisations/acme/keys", ADMIN)
        .await
        .json();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1, "{listed}");
    // Offline-only listing of every organisation needs --org here.
    let o = run(cwd, &["list"], &env).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--org"), "{}", stderr(&o));
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
    let url = format!("https://{}", app.addr);
    let env = [("SIGNET_SERVER", url.as_str()), ("SIGNET_TOKEN", ADMIN)];
    let out = cwd.join("k.pem");
    let created = json_out(
        &run(
            cwd,
            &[
                "create",
                "--org",
                "acme",
                "--name",
                "tls",
                "--algorithm",
                "EdDSA",
                "--out",
                out.to_str().unwrap(),
                "--cacert",
                ca_file.to_str().unwrap(),
            ],
            &env,
        )
        .await,
    );
    let kid = created["id"].as_str().unwrap();
    let o = run(cwd, &["list", "--org", "acme"], &env).await;
    assert_eq!(
        o.status.code(),
        Some(2),
        "untrusted without --cacert: {}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("certificate"), "{}", stderr(&o));
    let listed = json_out(
        &run(
            cwd,
            &[
                "list",
                "--org",
                "acme",
                "--cacert",
                ca_file.to_str().unwrap(),
            ],
            &env,
        )
        .await,
    );
    assert_eq!(listed["keys"][0]["id"], kid);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_arguments_are_usage_errors_as_offline() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let url = app.url("");
    let env = [("SIGNET_SERVER", url.as_str()), ("SIGNET_TOKEN", ADMIN)];
    for args in [
        &["create", "--org", "acme", "--name", "bad\u{7}name"][..],
        &[
            "create",
            "--org",
            "acme",
            "--name",
            "n",
            "--algorithm",
            "ES256",
            "--bits",
            "2048",
        ],
        &[
            "create",
            "--org",
            "acme",
            "--name",
            "n",
            "--expires-at",
            "tomorrow",
        ],
    ] {
        let o = run(cwd, args, &env).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let data = cwd.join("data");
        let mut offline = args.to_vec();
        offline.extend(["--data-dir", data.to_str().unwrap()]);
        let o = run(cwd, &offline, &[]).await;
        assert_eq!(o.status.code(), Some(2), "offline {args:?}: {}", stderr(&o));
    }
    let listed = app
        .request_as(Method::GET, "/v1/organisations/acme/keys", ADMIN)
        .await
        .json();
    assert_eq!(listed["keys"], json!([]), "nothing was made");
}
