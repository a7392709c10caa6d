//! The command line explains itself: each message names the cause and a fix
//! that exists for the command at hand, and `--help` describes every flag.

use std::path::Path;

use hyper::Method;

use crate::cli::{signet, stderr};
use crate::support::*;

/// Runs the binary and expects exit 2 with every needle on stderr and none
/// of the forbidden strings.
fn fails_with(args: &[&str], env: &[(&str, &str)], needles: &[&str], forbidden: &[&str]) {
    let o = signet(args, env);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
    for needle in needles {
        assert!(e.contains(needle), "{args:?}: {needle:?} missing from: {e}");
    }
    for bad in forbidden {
        assert!(!e.contains(bad), "{args:?}: {bad:?} in: {e}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_locked_database_suggests_only_flags_the_command_has() {
    let app = spawn_app().await;
    let dir = app.dir.path().to_str().unwrap().to_owned();
    tokio::task::spawn_blocking(move || {
        fails_with(
            &["audit", "verify", "--data-dir", &dir],
            &[],
            &["locked", "stop it"],
            &["--server"],
        );
        // `keys` has --server too, to manage the keys through the server.
        for args in [
            &["keys", "list", "--data-dir", &dir][..],
            &[
                "keys",
                "delete",
                "--data-dir",
                &dir,
                "--org",
                "acme",
                "01J00000000000000000000000",
            ],
        ] {
            fails_with(args, &[], &["locked", "stop it", "--server"], &[]);
        }
        // `verify` does have --server, and is told to use it.
        fails_with(
            &["verify", "x.y.z", "--data-dir", &dir],
            &[],
            &["--server"],
            &[],
        );
    })
    .await
    .unwrap();
}

#[test]
fn a_bad_log_filter_stops_start_up_and_names_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fails_with(
        &["serve"],
        &[
            ("SIGNET_LOG", "debg"),
            ("SIGNET_LISTEN", "127.0.0.1:0"),
            ("SIGNET_DATA_DIR", data.to_str().unwrap()),
        ],
        &["\"debg\"", "SIGNET_LOG", "level"],
        &[],
    );
    assert!(!data.exists(), "nothing was created");
}

#[test]
fn a_serve_that_cannot_listen_writes_no_secrets() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fails_with(
        &["serve"],
        &[
            ("SIGNET_LISTEN", &addr),
            ("SIGNET_DATA_DIR", data.to_str().unwrap()),
        ],
        &["cannot listen on", &addr],
        &[],
    );
    for secret in ["admin.token", "seal.key"] {
        assert!(!data.join(secret).exists(), "{secret} was written");
    }
}

#[test]
fn a_token_from_a_public_key_is_explained() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/pem");
    for file in ["a_pub.pem", "a_pkcs1_pub.pem"] {
        let path = seeds.join(file);
        fails_with(
            &[
                "token",
                "--key",
                path.to_str().unwrap(),
                "--kid",
                "01J00000000000000000000000",
                "--org",
                "acme",
            ],
            &[],
            &[
                file,
                "holds a public key",
                "private key",
                "when the key was created",
            ],
            &["UnexpectedError", "signature error"],
        );
    }
}

#[test]
fn config_errors_name_the_file_and_keep_the_caret_diagram() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "[keys]\nmax_per_org = 0\n",
            &["zero.toml", "max_per_org", "at least 1"],
        ),
        ("[server]\nlisten = 8081\n", &["zero.toml", "line 2", "^"]),
        ("[server\n", &["zero.toml", "line 1", "^"]),
    ];
    for (toml, needles) in cases {
        let path = dir.path().join("zero.toml");
        std::fs::write(&path, toml).unwrap();
        fails_with(
            &["serve", "--config", path.to_str().unwrap()],
            &[],
            needles,
            &[],
        );
    }
}

#[test]
fn listen_accepts_localhost_and_explains_other_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[server]\nlisten = \"localhost:1\"\n").unwrap();
    // The config loads; `verify` then asks the resolved address, where
    // nothing listens.
    fails_with(
        &["verify", "x.y.z", "--config", path.to_str().unwrap()],
        &[],
        &["127.0.0.1:1", "is `signet serve` running?"],
        &["invalid socket address"],
    );
    std::fs::write(&path, "[server]\nlisten = \"signet.example:8081\"\n").unwrap();
    fails_with(
        &["serve", "--config", path.to_str().unwrap()],
        &[],
        &["c.toml", "signet.example:8081", "use an IP address"],
        &["invalid socket address"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mistyped_operator_token_is_told_apart_from_a_bad_jwt() {
    let app = spawn_app().await;
    let path = "/v1/organisations/acme/keys";
    let typo = &ADMIN[..ADMIN.len() - 1];
    let r = app.request_as(Method::GET, path, typo).await;
    r.assert_error(401, "unauthorized");
    let message = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("neither the operator token nor an organisation token"),
        "{message}"
    );
    let r = app.request_as(Method::GET, path, "a.b.c").await;
    r.assert_error(401, "unauthorized");
    let message = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("not the operator token, and not a valid organisation token")
            && message.contains("malformed"),
        "{message}"
    );
}

#[test]
fn every_flag_and_argument_is_described() {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        if cmd.get_about().is_none() {
            missing.push(format!("{path} (the command)"));
        }
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if arg.get_help().is_none() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut cli = signet::cli::Cli::command();
    cli.build();
    let mut missing = Vec::new();
    walk(&cli, "signet", &mut missing);
    assert!(missing.is_empty(), "no description: {missing:?}");
}

#[test]
fn roles_and_algorithms_are_checked_and_listed() {
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/keys/a.pem");
    let token = |flag: &str, value: &str| {
        vec![
            "token".to_owned(),
            "--key".into(),
            key.to_str().unwrap().into(),
            "--kid".into(),
            "01J00000000000000000000000".into(),
            "--org".into(),
            "acme".into(),
            flag.into(),
            value.into(),
        ]
    };
    let roles = ["OWNER", "ADMINISTRATOR", "MEMBER"];
    let algs = ["RS256", "PS512", "ES256", "ES384", "EdDSA"];
    for (args, listed) in [
        (token("--role", "ADMIN"), &roles[..]),
        (token("--alg", "HS256"), &algs[..]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, &[], listed, &[]);
    }
    let help = signet(&["token", "--help"], &[]);
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in roles.iter().chain(&algs) {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let o = signet(&["completions", shell], &[]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        let script = String::from_utf8_lossy(&o.stdout);
        for word in ["signet", "keys", "data-dir"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    fails_with(&["completions", "tcsh"], &[], &["bash", "zsh", "fish"], &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(dir.path(), &[], "info", true);
    server.wait_ready().await;
    server.terminate();
    let out = tokio::task::spawn_blocking(move || server.child.wait_with_output().unwrap())
        .await
        .unwrap();
    let log = String::from_utf8(out.stderr).unwrap();
    assert!(log.contains("signet is listening"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape in a piped log: {log:?}"
    );
}
