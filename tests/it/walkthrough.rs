//! The README's walk-through, extracted from README.md itself and run with
//! bash against a real server: it must succeed as written, and leave no
//! private key behind, neither where it was started nor in its temp dir.

use std::path::Path;
use std::process::Command;

use crate::support::*;

/// The README's shell blocks marked `sh walkthrough`, in order.
fn walkthrough() -> String {
    let readme = include_str!("../../README.md");
    let mut script = String::new();
    let mut inside = false;
    for line in readme.lines() {
        if inside && line.trim_end() == "```" {
            inside = false;
        } else if inside {
            script.push_str(line);
            script.push('\n');
        } else if line.trim_end() == "```sh walkthrough" {
            inside = true;
        }
    }
    assert!(!inside, "an unterminated walk-through block");
    script
}

/// Every file under `dir` whose content holds a private key.
fn private_keys_under(dir: &Path) -> Vec<String> {
    all_bytes(dir)
        .into_iter()
        .filter(|(_, bytes)| String::from_utf8_lossy(bytes).contains("PRIVATE KEY"))
        .map(|(path, _)| path)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_walkthrough_runs_and_leaks_no_private_key() {
    let script = walkthrough();
    assert!(script.contains("umask 077") && script.contains("mktemp -d"));
    let app = spawn_app().await;
    // Where the reader stands: the repository, with the server's data dir.
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir(repo.path().join("data")).unwrap();
    std::fs::write(repo.path().join("data/admin.token"), ADMIN).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let base = app.url("");
    let (repo_path, tmp_path) = (repo.path().to_owned(), tmp.path().to_owned());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(&repo_path)
            .env("SIGNET", base)
            .env("SIGNET_BIN", env!("CARGO_BIN_EXE_signet"))
            .env("TMPDIR", &tmp_path)
            .env_remove("SIGNET_ADMIN_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for needle in [
        "created key ",
        "BEGIN PUBLIC KEY",
        "\"keys\":[",
        "valid: yes",
        "\"valid\":true",
        "x-signet-org: acme",
        "key.created",
        "204",
        "unknown_key",
    ] {
        assert!(
            stdout.to_lowercase().contains(&needle.to_lowercase()),
            "{needle:?} missing from:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    // `ls -l` in the temp dir: every file private.
    let listed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("-rw")).collect();
    assert!(listed.len() >= 4, "{stdout}");
    assert!(
        listed.iter().all(|l| l.starts_with("-rw-------")),
        "{listed:?}"
    );
    assert!(!stdout.contains("PRIVATE KEY"), "a private key was printed");
    for dir in [repo.path(), tmp.path()] {
        assert_eq!(private_keys_under(dir), Vec::<String>::new());
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "the walk-through removes its temp dir");
    let repo_files: Vec<String> = all_bytes(repo.path()).into_keys().collect();
    assert_eq!(
        repo_files.len(),
        1,
        "nothing written beside admin.token: {repo_files:?}"
    );
    assert!(
        app.list_keys("acme").await.json()["keys"]
            .as_array()
            .unwrap()
            .is_empty(),
        "the walk-through deletes what it created, so it can run again"
    );
}
