//! ARCHITECTURE.md's invariants, checked on the source text.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

#[test]
fn module_boundaries_hold() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = sources(&src);
    assert!(files.len() > 10, "the scan sees the sources");
    for file in &files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(file).unwrap();
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        // The backends are named by their modules (`self::sled::…`);
        // their crates only inside them.
        let crates = code
            .replace("self::sled::", "")
            .replace("store::sled::", "");
        if rel != "store/sled.rs" {
            assert!(
                !crates.contains("sled::") && !crates.contains("use sled"),
                "{rel} uses sled: only store::sled may"
            );
        }
        if rel != "store/postgres.rs" {
            assert!(
                !["postgres::", "use postgres", "tokio_postgres", "deadpool"]
                    .iter()
                    .any(|c| crates.replace("self::postgres::", "").contains(c)),
                "{rel} uses PostgreSQL: only store::postgres may"
            );
        }
        if !rel.starts_with("http/") {
            assert!(!code.contains("hyper"), "{rel} uses hyper: only http may");
        }
        assert!(
            text.starts_with("//!"),
            "{rel} does not start with a //! line saying what it is for"
        );
        assert!(!code.contains("unsafe "), "{rel} has unsafe code");
    }
}

#[test]
fn private_keys_stay_out_of_logs_and_store() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for file in sources(&src) {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines().filter(|l| l.contains("tracing::")) {
            assert!(
                !line.contains("pkcs8_pem")
                    && !line.contains("pkcs1_pem")
                    && !line.contains("private"),
                "{}: {line}",
                file.display()
            );
        }
    }
    let store = sources(&src.join("store"));
    assert!(store.len() >= 2, "the scan sees the store's sources");
    for file in store {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("GeneratedKey") && !text.contains("pkcs8_pem"),
            "{}: the store never sees a private key",
            file.display()
        );
    }
}
