//! Read-only commands on a directory without signet data: exit 2 with a
//! sentence naming the directory, and nothing is created.

use crate::cli::{signet, stderr};

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
