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
        if rel != "store.rs" {
            assert!(
                !code.contains("sled::") && !code.contains("use sled"),
                "{rel} uses sled: only store may"
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
    let store = std::fs::read_to_string(src.join("store.rs")).unwrap();
    assert!(
        !store.contains("GeneratedKey") && !store.contains("pkcs8_pem"),
        "store never sees a private key"
    );
}
