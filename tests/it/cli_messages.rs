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

/// Runs `openssl ARGS…` in `dir`; it must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    let o = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "openssl {args:?}: {}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn server_messages_point_at_the_real_cause() {
    let app = spawn_app().await;
    let plain = format!("https://{}", app.addr);
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    let empty = empty.to_str().unwrap().to_owned();
    tokio::task::spawn_blocking(move || {
        let running = "is `signet serve` running";
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (
                &["verify", "--server", "127.0.0.1:8081", "x.y.z"],
                &["no scheme", "http://127.0.0.1:8081"],
                &[running],
            ),
            (
                &["verify", "--server", &plain, "x.y.z"],
                &["does not speak TLS", "http://"],
                &["InvalidContentType", "corrupt message", running],
            ),
            (
                &[
                    "verify",
                    "--server",
                    "https://127.0.0.1:1",
                    "--cacert",
                    &empty,
                    "x.y.z",
                ],
                &["empty.pem", "no PEM certificate"],
                &[running],
            ),
        ];
        for (args, needles, forbidden) in cases {
            fails_with(args, &[], needles, forbidden);
        }
    })
    .await
    .unwrap();
}

#[test]
fn token_reads_sec1_ec_keys_and_explains_the_keys_it_cannot_use() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-out",
            "p256.pem",
        ],
    );
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "secp384r1",
            "-genkey",
            "-noout",
            "-out",
            "p384.pem",
        ],
    );
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "secp521r1",
            "-genkey",
            "-out",
            "p521.pem",
        ],
    );
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-aes256",
            "-pass",
            "pass:secret",
            "-out",
            "enc.pem",
        ],
    );
    let key = |name: &str| d.join(name).to_str().unwrap().to_owned();
    let token = |file: &str, alg: Option<&str>| {
        let file = key(file);
        let mut args = vec![
            "token",
            "--key",
            &file,
            "--kid",
            "01J00000000000000000000000",
            "--org",
            "acme",
        ];
        if let Some(alg) = alg {
            args.extend(["--alg", alg]);
        }
        signet(&args, &[])
    };
    // SEC1, as `openssl ecparam -genkey` writes it (with and without its
    // EC PARAMETERS block): the curve picks the algorithm.
    for (file, alg) in [("p256.pem", "ES256"), ("p384.pem", "ES384")] {
        let o = token(file, None);
        assert_eq!(o.status.code(), Some(0), "{file}: {}", stderr(&o));
        let jwt = String::from_utf8(o.stdout).unwrap();
        let header = jwt.split('.').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], alg, "{file}");
        let o = token(file, Some(alg));
        assert_eq!(
            o.status.code(),
            Some(0),
            "{file} --alg {alg}: {}",
            stderr(&o)
        );
    }
    let cases: &[(&str, Option<&str>, &[&str])] = &[
        (
            "p521.pem",
            None,
            &["P-521", "openssl ecparam -name prime256v1"],
        ),
        ("enc.pem", None, &["encrypted PKCS#8", "openssl pkcs8 -in"]),
        ("p256.pem", Some("ES384"), &["P-256", "--alg ES256"]),
        ("p384.pem", Some("RS256"), &["P-384", "--alg ES384"]),
    ];
    for (file, alg, needles) in cases {
        let o = token(file, *alg);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{file} {alg:?}: {e}");
        for needle in *needles {
            assert!(
                e.contains(needle),
                "{file} {alg:?}: {needle:?} missing from: {e}"
            );
        }
        for bad in ["InvalidEcdsaKey", "as --alg RS256 needs"] {
            assert!(!e.contains(bad), "{file} {alg:?}: {bad:?} in: {e}");
        }
    }
}

#[test]
fn config_errors_name_the_key_and_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, toml: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, toml).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let idle = file("idle.toml", "[server]\nidle_timeout_secs = 0\n");
    let pool = file("pool.toml", "[keys]\npool_2048 = 5000\n");
    let pg = file("pg.toml", "[storage]\nbackend = \"postgres\"\n");
    let listen = [("SIGNET_LISTEN", "127.0.0.1:0")];
    let long_token = ("SIGNET_ADMIN_TOKEN", "0123456789abcdef-long-enough");
    let bad_url = [
        listen[0],
        long_token,
        ("SIGNET_DATABASE_URL", "postgres://u@localhost:notaport/db"),
        ("SIGNET_SEAL_KEY", &"ab".repeat(32)),
    ];
    /// Arguments, environment, what stderr says, what it must not say.
    type Case<'a> = (
        &'a [&'a str],
        &'a [(&'a str, &'a str)],
        &'a [&'a str],
        &'a [&'a str],
    );
    let cases: &[Case] = &[
        (
            &["serve", "--config", &idle],
            &listen,
            &["server.idle_timeout_secs", "idle.toml"],
            &["*_timeout_secs"],
        ),
        (
            &["serve", "--config", &pool],
            &listen,
            &["keys.pool_2048", "pool.toml"],
            &["pool_*"],
        ),
        (
            &["serve", "--config", "/dev/null"],
            &[listen[0], ("SIGNET_ADMIN_TOKEN", "short")],
            &["environment variable SIGNET_ADMIN_TOKEN", "16 characters"],
            &["/dev/null", "short"],
        ),
        (
            &["serve", "--config", &pg],
            &bad_url,
            &["SIGNET_DATABASE_URL"],
            &["storage.url"],
        ),
    ];
    for (args, env, needles, forbidden) in cases {
        fails_with(args, env, needles, forbidden);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_token_new_makes_a_token_and_the_hash_the_config_takes() {
    use sha2::Digest;
    let (first, second) = tokio::task::spawn_blocking(|| {
        (
            signet(&["admin-token", "new"], &[]),
            signet(&["admin-token", "new"], &[]),
        )
    })
    .await
    .unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let out = String::from_utf8(first.stdout).unwrap();
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap_or_else(|| panic!("no token line: {out}"))
        .to_owned();
    let line = out
        .lines()
        .find(|l| l.starts_with("admin_token_sha256 = "))
        .unwrap_or_else(|| panic!("no hash line: {out}"));
    assert!(token.len() >= 32, "{token}");
    assert_ne!(
        String::from_utf8(second.stdout).unwrap(),
        out,
        "each token is fresh"
    );
    // The line goes into [auth] as it is, and the token then passes.
    let config = signet::config::Config::from_toml(&format!("[auth]\n{line}\n")).unwrap();
    let digest = config.auth.admin_token_sha256.clone().unwrap();
    assert_eq!(digest, hex::encode(sha2::Sha256::digest(token.as_bytes())));
    let app = spawn_with(|c| {
        c.auth.admin_token = None;
        c.auth.admin_token_sha256 = Some(digest);
    })
    .await;
    let r = app
        .request_as(Method::GET, "/v1/organisations/acme/keys", &token)
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let r = app
        .request_as(Method::GET, "/v1/organisations/acme/keys", ADMIN)
        .await;
    r.assert_error(401, "unauthorized");
}

#[test]
fn a_relative_data_dir_is_relative_to_the_config_file() {
    let root = tempfile::tempdir().unwrap();
    let conf = root.path().join("etc");
    let elsewhere = root.path().join("cwd");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(conf.join("signet.toml"), "[storage]\ndata_dir = \"data\"\n").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_signet"))
        .current_dir(&elsewhere)
        .args([
            "keys",
            "create",
            "--config",
            "../etc/signet.toml",
            "--org",
            "acme",
            "--name",
            "n",
        ])
        .env_remove("SIGNET_DATA_DIR")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        conf.join("data").join("seal.key").exists(),
        "data went beside the config file"
    );
    assert!(
        !elsewhere.join("data").exists(),
        "nothing in the working directory"
    );
}
