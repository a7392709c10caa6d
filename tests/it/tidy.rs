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

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .unwrap()
}

/// Every file of the repository's own text, outside build output and git.
fn repo_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(
                name.as_str(),
                "target" | ".git" | "node_modules" | "corpus" | "artifacts" | "data"
            ) {
                out.extend(repo_files(&path));
            }
        } else {
            out.push(path);
        }
    }
    out
}

/// The GitHub-style anchor of a Markdown heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The targets of the `[text](target)` links of a Markdown text.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_resolves_inside_the_repository() {
    let root = repo_root();
    let mut docs = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    assert!(
        docs.len() >= 5,
        "README, ARCHITECTURE and docs/*.md: {docs:?}"
    );
    let mut checked = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for target in link_targets(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if file.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(file)
            };
            let shown = format!("{}: ({target})", doc.display());
            let resolved = resolved
                .canonicalize()
                .unwrap_or_else(|_| panic!("{shown} names no file"));
            assert!(
                resolved.starts_with(&root),
                "{shown} points outside the repository"
            );
            if !anchor.is_empty() {
                let headings = std::fs::read_to_string(&resolved).unwrap();
                assert!(
                    headings
                        .lines()
                        .filter_map(|l| l.strip_prefix('#'))
                        .any(|h| slug(h.trim_start_matches('#')) == anchor),
                    "{shown}: no heading #{anchor}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "the scan sees the links ({checked})");
}

#[test]
fn the_project_documents_itself() {
    // Spelled in pieces so that this file does not name them itself.
    let outside = [
        concat!("..", "/shared"),
        concat!("SPEC", " §"),
        concat!("SPEC", ".md"),
    ];
    let root = repo_root();
    let files = repo_files(&root);
    assert!(files.len() > 50, "the scan sees the repository");
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue; // binary fixtures and seeds
        };
        for needle in outside {
            assert!(
                !text.contains(needle),
                "{} mentions {needle:?}: the repository must stand on its own",
                file.display()
            );
        }
    }
}

/// The subcommands `signet ARGS… --help` lists under "Commands:", `help`
/// aside.
fn subcommands(args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(args)
        .arg("--help")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "signet {args:?} --help: {help}");
    let mut names = Vec::new();
    let mut listing = false;
    for line in help.lines() {
        if line == "Commands:" {
            listing = true;
        } else if listing {
            // A command's line is indented by two; its wrapped description
            // by more, and a blank line ends the list.
            let Some(rest) = line.strip_prefix("  ") else {
                break;
            };
            if rest.starts_with(' ') {
                continue;
            }
            let name = rest.split_whitespace().next().unwrap();
            if name != "help" {
                names.push(name.to_owned());
            }
        }
    }
    names
}

/// The first code span of each row of the README's commands table: the
/// command it documents, `signet keys create [--out FILE] …` say.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Commands\n")
        .nth(1)
        .expect("the README has a ## Commands section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|l| l.starts_with("| `signet "))
        .map(|l| l[3..].split('`').next().unwrap().to_owned())
        .collect()
}

#[test]
fn the_readme_commands_table_lists_every_subcommand_of_the_binary() {
    let documented = readme_commands();
    assert!(
        documented.len() >= 5,
        "the scan sees the table: {documented:?}"
    );
    let has = |command: &str| {
        documented
            .iter()
            .any(|d| d == command || d.starts_with(&format!("{command} ")))
    };
    let top = subcommands(&[]);
    assert!(
        ["serve", "keys", "verify"]
            .iter()
            .all(|c| top.iter().any(|t| t == c)),
        "the scan sees `signet --help`: {top:?}"
    );
    let mut checked = 0;
    for name in &top {
        let nested = subcommands(&[name]);
        if nested.is_empty() {
            assert!(
                has(&format!("signet {name}")),
                "`signet {name}` is missing from the README's commands table"
            );
            checked += 1;
        }
        for sub in nested {
            assert!(
                has(&format!("signet {name} {sub}")),
                "`signet {name} {sub}` is missing from the README's commands table"
            );
            checked += 1;
        }
    }
    let keys = subcommands(&["keys"]);
    assert!(
        ["create", "list", "delete"]
            .iter()
            .all(|c| keys.iter().any(|k| k == c)),
        "the scan sees `signet keys --help`: {keys:?}"
    );
    assert!(checked > keys.len(), "{checked} checked");
}

/// The schema numbers in docs/deploy.md's sentence "This version writes
/// schema N on sled and schema M on PostgreSQL".
fn documented_schemas() -> (String, String) {
    let deploy = std::fs::read_to_string(repo_root().join("docs/deploy.md")).unwrap();
    let deploy = deploy.split_whitespace().collect::<Vec<_>>().join(" ");
    let rest = deploy
        .split("This version writes schema ")
        .nth(1)
        .expect("docs/deploy.md says which schema this version writes");
    let number = |s: &str| {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
    };
    let sled = number(rest);
    let rest = rest
        .strip_prefix(&format!("{sled} on sled and schema "))
        .expect("… schema N on sled and schema M on PostgreSQL");
    let postgres = number(rest);
    assert!(
        rest[postgres.len()..].starts_with(" on PostgreSQL"),
        "… schema N on sled and schema M on PostgreSQL"
    );
    (sled, postgres)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_documented_schema_versions_are_the_ones_written() {
    use crate::backends::{run_on, Database};
    use signet::config::Backend;
    let (sled, postgres) = documented_schemas();
    assert_eq!(sled, signet::store::SCHEMA_VERSION.to_string(), "on sled");
    run_on(Backend::Postgres, async {
        let app = crate::support::spawn_app().await;
        let dir = app.stop().await;
        let db = Database::of(dir.path());
        let written = crate::pg::shared()
            .expect("PostgreSQL is there")
            .sql(&db.url, "SELECT version FROM signet_schema");
        assert_eq!(postgres, written, "on PostgreSQL");
    })
    .await
}

#[test]
fn docs_api_lists_every_audit_action() {
    let audit = std::fs::read_to_string(repo_root().join("src/audit.rs")).unwrap();
    let actions = audit
        .split("pub enum Action {")
        .nth(1)
        .expect("src/audit.rs has `pub enum Action`");
    let actions = actions.split('}').next().unwrap();
    let names: Vec<&str> = actions
        .split("#[serde(rename = \"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert!(names.len() >= 4, "the scan sees the actions: {names:?}");
    let api = std::fs::read_to_string(repo_root().join("docs/api.md")).unwrap();
    let list = api
        .split("`action` is ")
        .nth(1)
        .expect("docs/api.md lists the audit actions after \"`action` is \"");
    let list = list.split(". ").next().unwrap();
    for name in names {
        assert!(
            list.contains(&format!("`{name}`")),
            "docs/api.md's list of audit actions misses `{name}`"
        );
    }
}

/// The modules of one level of `src` (top level, or one folder such as
/// `http`) and, for each, the sibling modules it names (`crate::x` at the
/// top level, `super::x` inside a folder), test modules left out.
fn sibling_imports(folder: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let base = src.join(folder);
    let mut graph = std::collections::BTreeMap::<String, Vec<String>>::new();
    for file in sources(&base) {
        let rel = file
            .strip_prefix(&base)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let module = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_owned();
        if ["lib", "main", "mod"].contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let prefix = if folder.is_empty() {
            "crate::"
        } else {
            "super::"
        };
        let named = graph.entry(module.clone()).or_default();
        for (i, _) in code.match_indices(prefix) {
            let rest = &code[i + prefix.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module && !named.contains(&name) {
                named.push(name);
            }
        }
        // `use super::{a, b}` / `use crate::{a, b}`.
        for (i, _) in code.match_indices(&format!("{prefix}{{")) {
            let rest = &code[i + prefix.len() + 1..];
            let list = &rest[..rest.find('}').unwrap_or(0)];
            for name in list
                .split(',')
                .map(|n| n.trim().split("::").next().unwrap().trim())
            {
                if !name.is_empty() && name != module && !named.iter().any(|n| n == name) {
                    named.push(name.to_owned());
                }
            }
        }
    }
    let modules: Vec<String> = graph.keys().cloned().collect();
    for named in graph.values_mut() {
        named.retain(|n| modules.contains(n));
    }
    graph
}

/// The modules that take part in an import cycle.
fn in_cycles(graph: &std::collections::BTreeMap<String, Vec<String>>) -> Vec<String> {
    let reaches = |from: &str, to: &str| {
        let mut seen = vec![from.to_owned()];
        let mut next = vec![from.to_owned()];
        while let Some(m) = next.pop() {
            for n in graph.get(&m).into_iter().flatten() {
                if n == to {
                    return true;
                }
                if !seen.contains(n) {
                    seen.push(n.clone());
                    next.push(n.clone());
                }
            }
        }
        false
    };
    graph.keys().filter(|m| reaches(m, m)).cloned().collect()
}

#[test]
fn no_new_import_cycles() {
    // No module imports one that stands above it (ARCHITECTURE.md, "Code
    // map"): every list here is empty, and must stay so.
    let known: &[(&str, &[&str])] = &[
        ("", &[]),
        ("http", &[]),
        ("cli", &[]),
        ("cli/keys", &[]),
        ("store", &[]),
        ("verify", &[]),
        ("keys", &[]),
    ];
    for (folder, allowed) in known {
        let graph = sibling_imports(folder);
        assert!(!graph.is_empty(), "src/{folder} has modules");
        let cycles = in_cycles(&graph);
        let new: Vec<_> = cycles
            .iter()
            .filter(|m| !allowed.contains(&m.as_str()))
            .collect();
        assert!(
            new.is_empty(),
            "src/{folder}: {new:?} now import each other in a cycle: {graph:?}"
        );
    }
}
