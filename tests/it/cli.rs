//! The binary: exit codes, error sentences, offline key admin, `verify`
//! against every source, `token`.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::support::*;

pub fn signet(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_signet"));
    cmd.args(args)
        .env_remove("SIGNET_ADMIN_TOKEN")
        .env_remove("ORGKEYS_MAX");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The binary run in `cwd` (so no ./config.toml or ./data of the crate
/// counts), with none of the variables that pick a target or credential.
pub fn isolated(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_signet"));
    cmd.current_dir(cwd);
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
    cmd
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One command line: the words of `line` (split at spaces: subcommands,
/// flags, ids), then `more` as they are (paths, values with spaces).
pub fn argv<'a>(line: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    line.split_whitespace()
        .chain(more.iter().copied())
        .collect()
}

/// Asserts that `o` exited with `code` and that its stderr says `says`.
pub fn assert_exit(o: &Output, code: i32, says: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{e}");
    assert!(e.contains(says), "{says:?} missing from: {e}");
}

/// Asserts that `o` exited 0; its stdout as JSON.
pub fn json_out(o: &Output) -> Value {
    assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// `signet keys …` offline, through [`signet`], on the store `place` names
/// (`--data-dir DIR`, or the arguments `backends::storage_args` gives).
pub struct Offline {
    place: Vec<String>,
    env: Vec<(String, String)>,
}

impl Offline {
    pub fn new<S: Into<String>>(place: impl IntoIterator<Item = S>) -> Offline {
        let place = place.into_iter().map(Into::into).collect();
        Offline {
            place,
            env: Vec::new(),
        }
    }

    /// On the data directory `data`.
    pub fn data_dir(data: &str) -> Offline {
        Offline::new(["--data-dir", data])
    }

    /// With the environment variable `key` set to `value`.
    pub fn env(mut self, key: &str, value: &str) -> Offline {
        self.env.push((key.into(), value.into()));
        self
    }

    /// `signet keys PLACE… LINE… MORE…` (see [`argv`]).
    pub fn run(&self, line: &str, more: &[&str]) -> Output {
        let mut args = vec!["keys"];
        args.extend(self.place.iter().map(String::as_str));
        args.extend(argv(line, more));
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (&**k, &**v)).collect();
        signet(&args, &env)
    }

    /// `run`, which must exit 0; its stdout as JSON.
    pub fn json(&self, line: &str, more: &[&str]) -> Value {
        json_out(&self.run(line, more))
    }
}

/// A data dir `dir/data` holding one acme key named `name`, made offline
/// with its private key written to `dir/k.pem`: the data dir, the PEM's
/// path and what `keys create` printed.
pub fn offline_key(dir: &Path, name: &str) -> (String, String, Value) {
    let data = dir.join("data").to_str().unwrap().to_owned();
    let pem = dir.join("k.pem").to_str().unwrap().to_owned();
    let created = Offline::data_dir(&data).json("create --org acme --name", &[name, "--out", &pem]);
    (data, pem, created)
}

#[test]
fn bad_configuration_is_exit_2_with_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"127.0.0.1:0\"\ncolour = \"blue\"\n",
    )
    .unwrap();
    let o = signet(&["serve", "--config", bad.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("colour") && e.contains("bad.toml"), "{e}");
    assert!(
        e.lines()
            .any(|l| l.trim_start().starts_with('|') && l.contains('^')),
        "TOML's caret diagram is kept whole: {e}"
    );

    let o = signet(&["serve", "--config", "/nonexistent/signet.toml"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/signet.toml"));

    let o = signet(
        &["serve"],
        &[
            ("ORGKEYS_MAX", "lots"),
            ("SIGNET_DATA_DIR", dir.path().to_str().unwrap()),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("ORGKEYS_MAX"));

    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let o = signet(
        &["serve"],
        &[
            ("SIGNET_DATA_DIR", file.to_str().unwrap()),
            ("SIGNET_LISTEN", "127.0.0.1:0"),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("data directory"), "{}", stderr(&o));

    assert_eq!(
        signet(&["frobnicate"], &[]).status.code(),
        Some(2),
        "usage errors are 2"
    );
    let help = signet(&["--help"], &[]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("verify"));
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", &99u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    // Its seal key, without which the data dir is refused first.
    let key = signet::seal::random_key();
    signet::seal::write_key_file(&signet::seal::key_path(dir.path()), &key).unwrap();
    let o = Offline::data_dir(dir.path().to_str().unwrap()).run("list", &[]);
    assert_exit(&o, 2, "schema version 99");
    let understood = format!("understands only up to {};", signet::store::SCHEMA_VERSION);
    assert_exit(&o, 2, &understood);
}

#[test]
fn offline_key_admin_and_the_whole_token_loop() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pem, created) = offline_key(dir.path(), "cli key");
    let (data, pem) = (data.as_str(), pem.as_str());
    let keys = Offline::data_dir(data);
    assert!(
        created.get("privateKey").is_none(),
        "written to --out, not printed"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(pem).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let kid = created["id"].as_str().unwrap();
    let listed = keys.json("list --org acme", &[]);
    assert_eq!(listed["keys"][0]["id"], kid);

    let o = signet(
        &argv(
            "token --org acme --sub robot --claim n=5",
            &["--key", pem, "--kid", kid],
        ),
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let token = String::from_utf8(o.stdout).unwrap().trim().to_owned();

    let o = signet(&["verify", &token, "--data-dir", data], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report = String::from_utf8_lossy(&o.stdout);
    for needle in ["valid: yes", kid, "acme", "robot", "UTC", "\"n\": 5"] {
        let needle = if needle == "UTC" { "Z (" } else { needle };
        assert!(
            report.contains(needle),
            "{needle:?} missing from:\n{report}"
        );
    }
    let o = signet(
        &argv(
            "verify --audience nope --json",
            &[&token, "--data-dir", data],
        ),
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["code"], "wrong_audience");

    // The JWK Set source, from a file.
    let jwks = dir.path().join("jwks.json");
    let sealer = signet::seal::Sealer::load_or_create(std::path::Path::new(data), None).unwrap();
    let record = signet::store::sled::SledStore::open(std::path::Path::new(data), sealer)
        .unwrap()
        .all_keys()
        .unwrap();
    let set =
        json!({"keys": record.iter().map(signet::keys::Jwk::from_record).collect::<Vec<_>>()});
    std::fs::write(&jwks, serde_json::to_vec(&set).unwrap()).unwrap();
    let o = signet(&["verify", "--jwks", jwks.to_str().unwrap()], &[]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "an empty stdin is a usage error, not an invalid token"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(["verify", "-", "--jwks", jwks.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{token}\r\n").as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "token from stdin, with its line end, verifies against the JWK Set"
    );
    // Malformed as over HTTP: blanks around a token given as an argument
    // (part of it, as in POST /v1/verify), and an org claim that is not a
    // string, though a JWK Set does not say the key's organisation; and a
    // token over verify.max_token_bytes, which --server judges without
    // sending (the server would refuse the body first; nothing listens at
    // that address).
    let signer = Signer::from_pem(&std::fs::read_to_string(pem).unwrap());
    let set = ["--jwks", jwks.to_str().unwrap()];
    let malformed = [
        (format!(" {token} "), set),
        (
            signer.org_token(kid, json!({"org": 7, "exp": now() + 600})),
            set,
        ),
        (
            "a".repeat(16 * 1024 + 1),
            ["--server", "http://127.0.0.1:9"],
        ),
    ];
    for (bad, [flag, source]) in &malformed {
        let o = signet(&["verify", bad, "--json", flag, source], &[]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert_eq!(
            serde_json::from_slice::<Value>(&o.stdout).unwrap()["error"]["code"],
            "malformed"
        );
    }

    assert_exit(&keys.run("delete --org acme", &[kid]), 0, "");
    let o = signet(&["verify", &token, "--data-dir", data, "--json"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["error"]["code"],
        "unknown_key"
    );
    let o = keys.run("delete --org acme", &[kid]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "deleting a missing key is refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_against_a_running_server() {
    let app = spawn_app().await;
    let set = app.create_key("acme", json!({"name": "srv"})).await;
    let (kid, signer) = key_of(&set);
    let token = signer.org_token(&kid, claims("acme", "OWNER"));
    let base = app.url("");
    let dir = app.dir.path().to_str().unwrap().to_owned();
    let token2 = token.clone();
    let (ok, locked, keys_locked, down) = tokio::task::spawn_blocking(move || {
        (
            signet(&["verify", &token2, "--server", &base], &[]),
            signet(&["verify", &token2, "--data-dir", &dir], &[]),
            signet(&["keys", "list", "--data-dir", &dir], &[]),
            signet(&["verify", &token2, "--server", "http://127.0.0.1:1"], &[]),
        )
    })
    .await
    .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("valid: yes"));
    assert_eq!(locked.status.code(), Some(2));
    assert!(
        stderr(&locked).contains("--server"),
        "a locked database suggests --server: {}",
        stderr(&locked)
    );
    assert_eq!(keys_locked.status.code(), Some(2));
    assert!(
        stderr(&keys_locked).contains("locked"),
        "{}",
        stderr(&keys_locked)
    );
    assert_eq!(
        down.status.code(),
        Some(2),
        "an unreachable server is 'could not check'"
    );
    let _ = token;
}

/// `keys list` of `data` as JSON.
fn listed(data: &str) -> Vec<Value> {
    let v = Offline::data_dir(data).json("list", &[]);
    v["keys"].as_array().unwrap().clone()
}

#[test]
fn create_with_a_bad_out_path_makes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let taken = dir.path().join("existing.pem");
    std::fs::write(&taken, "someone else's file").unwrap();
    let quota_one = Offline::data_dir(data).env("ORGKEYS_MAX", "1");
    let create = |out: &Path| {
        let out = out.to_str().unwrap();
        quota_one.run("create --org acme --name n --algorithm ES256 --out", &[out])
    };
    // The data dir must exist for `list` to have something to read.
    let kid = json_out(&create(&dir.path().join("first.pem")))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_exit(
        &Offline::data_dir(data).run("delete --org acme", &[&kid]),
        0,
        "",
    );

    let o = create(&taken);
    assert_exit(&o, 2, "already exists");
    assert!(stderr(&o).contains("existing.pem"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&taken).unwrap(),
        "someone else's file",
        "never overwritten"
    );
    assert!(listed(data).is_empty(), "no key was made");

    let o = create(&dir.path().join("nodir").join("k.pem"));
    assert_exit(&o, 2, "does not exist");
    let e = stderr(&o);
    assert!(e.contains("nodir"), "{e}");
    assert!(
        !e.contains("exists"),
        "a missing directory never 'exists': {e}"
    );
    assert!(listed(data).is_empty(), "no key was made");

    // With a quota of one, a create now succeeds: no slot was used.
    let good = dir.path().join("good.pem");
    assert_exit(&create(&good), 0, "");
    assert_eq!(listed(data).len(), 1);
    assert!(std::fs::read_to_string(&good)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));

    // A create refused by the quota leaves no empty file behind.
    let refused = dir.path().join("refused.pem");
    assert_exit(&create(&refused), 1, "");
    assert!(!refused.exists(), "the claimed file is removed again");
}

#[test]
fn rotate_with_a_bad_out_path_retires_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let offline = Offline::data_dir(data);
    let created = offline.json("create --org acme --name n --algorithm EdDSA", &[]);
    let kid = created["id"].as_str().unwrap();
    let rotate = |out: &Path| {
        let line = format!("rotate --org acme {kid} --grace-seconds 0 --out");
        offline.run(&line, &[out.to_str().unwrap()])
    };
    let taken = dir.path().join("taken.pem");
    std::fs::write(&taken, "x").unwrap();
    let nodir = dir.path().join("nodir").join("r.pem");
    for (out, says) in [(&nodir, "does not exist"), (&taken, "already exists")] {
        assert_exit(&rotate(out), 2, says);
        let keys = listed(data);
        assert_eq!(keys.len(), 1, "no successor was made: {keys:?}");
        assert_eq!(keys[0]["id"], kid);
        assert_eq!(keys[0]["state"], "active", "the old key is not retired");
        assert_eq!(keys[0]["expiresAt"], Value::Null);
    }
    assert_eq!(std::fs::read_to_string(&taken).unwrap(), "x");

    let out = dir.path().join("r.pem");
    let successor = json_out(&rotate(&out));
    assert!(successor.get("privateKey").is_none());
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    let keys = listed(data);
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["state"], "expired");
}
