//! Read-only commands create nothing: on a directory without signet data
//! they exit 2 with a sentence naming the directory, and on one with data
//! they leave every file as it was.

use std::path::Path;

use crate::cli::{argv, json_out, offline_key, signet, stderr, Offline};
use crate::support::all_bytes;

#[test]
fn read_only_commands_create_nothing_where_there_is_no_data() {
    let parent = tempfile::tempdir().unwrap();
    let empty = parent.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = parent.path().join("missing");
    for dir in [&empty, &missing] {
        let d = dir.to_str().unwrap();
        let commands: [&[&str]; 5] = [
            &["keys", "list", "--data-dir", d],
            &["keys", "list", "--org", "acme", "--data-dir", d],
            &["audit", "verify", "--data-dir", d],
            &["verify", "a.b.c", "--data-dir", d],
            &["seal", "rotate", "--data-dir", d],
        ];
        for args in commands {
            let o = signet(args, &[]);
            let e = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
            assert!(
                e.contains(&format!("no signet data in {d}")),
                "{args:?}: {e}"
            );
            assert_eq!(e.trim().lines().count(), 1, "{args:?}: one sentence: {e}");
        }
    }
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "nothing created in {empty:?}"
    );
    assert!(!missing.exists(), "{missing:?} was created");
}

/// sled writes into its files whenever it opens a database (a snapshot,
/// the recovered log); a read-only command reads a private copy instead.
#[test]
fn read_only_commands_change_nothing_where_there_is_data() {
    let dir = tempfile::tempdir().unwrap();
    let (data, pem, created) = offline_key(dir.path(), "k");
    let (data, pem) = (data.as_str(), pem.as_str());
    let keys = Offline::data_dir(data);
    let kid = created["id"].as_str().unwrap();
    let token = signet(
        &argv("token --org acme", &["--key", pem, "--kid", kid]),
        &[],
    );
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let before = all_bytes(Path::new(data));
    let commands: [&[&str]; 4] = [
        &["keys", "list", "--data-dir", data],
        &["keys", "list", "--org", "acme", "--data-dir", data],
        &["audit", "verify", "--data-dir", data],
        &["verify", &token, "--data-dir", data],
    ];
    for args in commands {
        let o = signet(args, &[]);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    }
    let listed = json_out(&signet(&["keys", "list", "--data-dir", data], &[]));
    assert_eq!(listed["keys"][0]["id"], kid);
    let after = all_bytes(Path::new(data));
    let names = |files: &std::collections::HashMap<String, Vec<u8>>| {
        let mut names: Vec<String> = files.keys().cloned().collect();
        names.sort();
        names
    };
    assert_eq!(names(&before), names(&after), "the same files");
    for (path, bytes) in &before {
        assert!(after[path] == *bytes, "{path:?} changed");
    }
    // A write still writes: the copy was only for reading.
    let o = keys.run("delete --org acme", &[kid]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let listed = json_out(&signet(&["keys", "list", "--data-dir", data], &[]));
    assert_eq!(listed["keys"], serde_json::json!([]));
}
