//! A command whose standard output cannot be written (a full disk, a
//! closed pipe) exits 2 with a sentence, never a panic; one that made a key
//! whose private key reached nobody deletes that key again, offline and
//! against a server.

use std::path::Path;
use std::process::{Output, Stdio};

use serde_json::{json, Value};

use crate::cli::{argv, isolated, json_out, stderr};
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

/// `signet LINE… MORE…` (see [`argv`]) through [`isolated`], with `env`,
/// its standard output into `sink` (captured if `None`).
fn signet(
    cwd: &Path,
    line: &str,
    more: &[&str],
    env: &[(&str, &str)],
    sink: Option<Sink>,
) -> Output {
    let mut cmd = isolated(cwd);
    cmd.args(argv(line, more)).stdin(Stdio::null());
    cmd.envs(env.iter().copied());
    if let Some(sink) = sink {
        cmd.stdout(sink.stdio());
    }
    cmd.output().unwrap()
}

/// An ES256 key of acme, made in the data dir `./data`.
const CREATE_OFFLINE: &str = "keys create --data-dir data --org acme --name k --algorithm ES256";
const LIST_OFFLINE: &str = "keys list --data-dir data --org acme";

/// Exit 2, a sentence about standard output, no panic; the sentence.
fn refused_loudly(o: &Output, what: &str) -> String {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{what}: {e}");
    assert!(!e.contains("panicked"), "{what}: {e}");
    assert!(e.contains("standard output"), "{what}: {e}");
    e
}

#[test]
fn a_command_whose_output_cannot_be_written_exits_2_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let pem = cwd.join("k.pem");
    let pem = pem.to_str().unwrap();
    let created = json_out(&signet(cwd, CREATE_OFFLINE, &["--out", pem], &[], None));
    let kid = created["id"].as_str().unwrap();
    let mint = signet(
        cwd,
        "token --org acme --key",
        &[pem, "--kid", kid],
        &[],
        None,
    );
    let token = String::from_utf8(mint.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("ey"), "{token}");
    let commands: [(&str, &[&str]); 5] = [
        (LIST_OFFLINE, &[]),
        ("token --org acme --key", &[pem, "--kid", kid]),
        ("verify --data-dir data", &[&token]),
        ("admin-token new", &[]),
        ("completions bash", &[]),
    ];
    for sink in SINKS {
        for (line, more) in commands {
            let o = signet(cwd, line, more, &[], Some(sink));
            refused_loudly(&o, &format!("{line} into {sink:?}"));
        }
    }
    // Nothing else changed: the one key is still there.
    assert_eq!(offline_ids(cwd), [kid]);
}

/// The ids of acme's keys in the data dir under `cwd`.
fn offline_ids(cwd: &Path) -> Vec<String> {
    ids(&json_out(&signet(cwd, LIST_OFFLINE, &[], &[], None)))
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
    let kept = json_out(&signet(cwd, CREATE_OFFLINE, &[], &[], None));
    let kept = kept["id"].as_str().unwrap().to_owned();
    for sink in SINKS {
        let o = signet(cwd, CREATE_OFFLINE, &[], &[], Some(sink));
        let e = refused_loudly(&o, &format!("create into {sink:?}"));
        assert!(e.contains("deleted again"), "{e}");
        assert_eq!(
            offline_ids(cwd),
            [kept.as_str()],
            "after a create into {sink:?}"
        );
        let rotate = "keys rotate --data-dir data --org acme";
        let o = signet(cwd, rotate, &[kept.as_str()], &[], Some(sink));
        let e = refused_loudly(&o, &format!("rotate into {sink:?}"));
        assert!(e.contains(&format!("key {kept} was rotated")), "{e}");
        assert!(e.contains("deleted again"), "{e}");
        // The successor is gone; the old key verifies through its grace.
        assert_eq!(
            offline_ids(cwd),
            [kept.as_str()],
            "after a rotate into {sink:?}"
        );
    }
    // A private key handed over into --out is kept, and the error says where.
    let pem = cwd.join("k.pem");
    let more = ["--out", pem.to_str().unwrap()];
    let o = signet(cwd, CREATE_OFFLINE, &more, &[], Some(Sink::Full));
    let e = refused_loudly(&o, "create --out");
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
    for sink in SINKS {
        let (cwd, url, id) = (dir.path().to_owned(), app.url(""), kept.clone());
        let (created, rotated) = tokio::task::spawn_blocking(move || {
            let env = [("SIGNET_TOKEN", ADMIN)];
            let target = ["--server", &url, "--org", "acme"];
            let create = "keys create --name k --algorithm ES256";
            let rotate = [&target[..], &[&id]].concat();
            (
                signet(&cwd, create, &target, &env, Some(sink)),
                signet(&cwd, "keys rotate", &rotate, &env, Some(sink)),
            )
        })
        .await
        .unwrap();
        let e = refused_loudly(&created, &format!("create into {sink:?}"));
        assert!(e.contains("deleted again"), "{e}");
        let e = refused_loudly(&rotated, &format!("rotate into {sink:?}"));
        assert!(e.contains("deleted again"), "{e}");
        let listed = app.list_keys("acme").await.json();
        assert_eq!(ids(&listed), [kept.as_str()], "into {sink:?}");
    }
}
