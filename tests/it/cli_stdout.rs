//! A command whose standard output cannot be written (a full disk, a
//! closed pipe) exits 2 with a sentence, never a panic; one that made a key
//! whose private key reached nobody deletes that key again, offline and
//! against a server.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use crate::support::*;

/// Where a command's standard output goes.
#[derive(Clone, Copy, Debug)]
enum Sink {
    /// `/dev/full`: every write fails with ENOSPC.
    Full,
    /// A stream whose reader is gone: every write fails with EPIPE.
    ClosedPipe,
}

const SINKS: [Sink; 2] = [Sink::Full, Sink::ClosedPipe];

impl Sink {
    fn stdio(self) -> Stdio {
        match self {
            Sink::Full => std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap()
                .into(),
            Sink::ClosedPipe => {
                let (writer, reader) = std::os::unix::net::UnixStream::pair().unwrap();
                drop(reader);
                std::os::fd::OwnedFd::from(writer).into()
            }
        }
    }
}

/// The binary in `cwd` (no ./config.toml of the crate counts), with none
/// of the variables that pick a target or credential unless `env` sets
/// them, its standard output into `sink` (captured if `None`).
fn signet(cwd: &Path, args: &[&str], env: &[(&str, &str)], sink: Option<Sink>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_signet"));
    cmd.current_dir(cwd).args(args).stdin(Stdio::null());
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
    cmd.envs(env.iter().copied());
    if let Some(sink) = sink {
        cmd.stdout(sink.stdio());
    }
    cmd.output().unwrap()
}

/// An ES256 key of acme, made in the data dir `./data`.
const CREATE_OFFLINE: [&str; 10] = [
    "keys",
    "create",
    "--data-dir",
    "data",
    "--org",
    "acme",
    "--name",
    "k",
    "--algorithm",
    "ES256",
];

/// Exit 2, a sentence about standard output, no panic; the sentence.
fn refused_loudly(o: &Output, what: &str) -> String {
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{what}: {e}");
    assert!(!e.contains("panicked"), "{what}: {e}");
    assert!(e.contains("standard output"), "{what}: {e}");
    e
}

fn json_of(o: &Output) -> Value {
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{e}");
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn a_command_whose_output_cannot_be_written_exits_2_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let pem = cwd.join("k.pem");
    let pem = pem.to_str().unwrap();
    let created = json_of(&signet(
        cwd,
        &[&CREATE_OFFLINE[..], &["--out", pem]].concat(),
        &[],
        None,
    ));
    let kid = created["id"].as_str().unwrap();
    let token = signet(
        cwd,
        &["token", "--key", pem, "--kid", kid, "--org", "acme"],
        &[],
        None,
    );
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("ey"), "{token}");
    let commands: [&[&str]; 5] = [
        &["keys", "list", "--data-dir", "data", "--org", "acme"],
        &["token", "--key", pem, "--kid", kid, "--org", "acme"],
        &["verify", &token, "--data-dir", "data"],
        &["admin-token", "new"],
        &["completions", "bash"],
    ];
    for sink in SINKS {
        for args in commands {
            refused_loudly(
                &signet(cwd, args, &[], Some(sink)),
                &format!("{args:?} into {sink:?}"),
            );
        }
    }
    // Nothing else changed: the one key is still there.
    let listed = json_of(&signet(cwd, commands[0], &[], None));
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1, "{listed}");
}

/// The ids of acme's keys in the data dir under `cwd`.
fn offline_ids(cwd: &Path) -> Vec<String> {
    let listed = json_of(&signet(
        cwd,
        &["keys", "list", "--data-dir", "data", "--org", "acme"],
        &[],
        None,
    ));
    ids(&listed)
}

fn ids(listed: &Value) -> Vec<String> {
    let keys = listed["keys"].as_array().unwrap();
    keys.iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn an_offline_key_nobody_received_is_deleted_again() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let create = CREATE_OFFLINE;
    let kept = json_of(&signet(cwd, &create, &[], None));
    let kept = kept["id"].as_str().unwrap().to_owned();
    for sink in SINKS {
        let e = refused_loudly(
            &signet(cwd, &create, &[], Some(sink)),
            &format!("create into {sink:?}"),
        );
        assert!(e.contains("deleted again"), "{e}");
        assert_eq!(
            offline_ids(cwd),
            std::slice::from_ref(&kept),
            "after a create into {sink:?}"
        );
        let rotate = [
            "keys",
            "rotate",
            "--data-dir",
            "data",
            "--org",
            "acme",
            &kept,
        ];
        let e = refused_loudly(
            &signet(cwd, &rotate, &[], Some(sink)),
            &format!("rotate into {sink:?}"),
        );
        assert!(
            e.contains(&format!("key {kept} was rotated")) && e.contains("deleted again"),
            "{e}"
        );
        // The successor is gone; the old key verifies through its grace.
        assert_eq!(
            offline_ids(cwd),
            std::slice::from_ref(&kept),
            "after a rotate into {sink:?}"
        );
    }
    // A private key handed over into --out is kept, and the error says where.
    let pem = cwd.join("k.pem");
    let with_out = [&create[..], &["--out", pem.to_str().unwrap()]].concat();
    let e = refused_loudly(
        &signet(cwd, &with_out, &[], Some(Sink::Full)),
        "create --out",
    );
    assert!(e.contains("its private key written to"), "{e}");
    assert!(std::fs::read_to_string(&pem)
        .unwrap()
        .contains("PRIVATE KEY"));
    assert_eq!(offline_ids(cwd).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_made_by_a_server_that_nobody_received_is_deleted_again() {
    let app = spawn_app().await;
    let kept = app
        .create_key("acme", json!({"name": "kept", "algorithm": "ES256"}))
        .await;
    let kept = kept["id"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let (cwd, url) = (dir.path().to_owned(), app.url(""));
    for sink in SINKS {
        let (cwd, url, id) = (cwd.clone(), url.clone(), kept.clone());
        let (created, rotated) = tokio::task::spawn_blocking(move || {
            let env = [("SIGNET_TOKEN", ADMIN)];
            let create = [
                "keys",
                "create",
                "--server",
                &url,
                "--org",
                "acme",
                "--name",
                "k",
                "--algorithm",
                "ES256",
            ];
            let rotate = ["keys", "rotate", "--server", &url, "--org", "acme", &id];
            (
                signet(&cwd, &create, &env, Some(sink)),
                signet(&cwd, &rotate, &env, Some(sink)),
            )
        })
        .await
        .unwrap();
        let e = refused_loudly(&created, &format!("create into {sink:?}"));
        assert!(e.contains("deleted again"), "{e}");
        let e = refused_loudly(&rotated, &format!("rotate into {sink:?}"));
        assert!(e.contains("deleted again"), "{e}");
        assert_eq!(
            ids(&app.list_keys("acme").await.json()),
            std::slice::from_ref(&kept),
            "into {sink:?}"
        );
    }
}
