//! PostgreSQL only: what sled cannot show (several instances on one
//! database, an outage of the database server, `pg_dump`), the refusals at
//! start, and the offline CLI against a database.

use std::sync::Arc;

use serde_json::{json, Value};
use signet::config::Backend;

use crate::backends::{private_database, run_on, Database};
use crate::cli::{signet, stderr};
use crate::pg;
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn quota_and_audit_chain_hold_across_two_instances() {
    run_on(Backend::Postgres, async {
        // Two instances migrating one fresh database at once.
        let dir = tempfile::tempdir().unwrap();
        let on_dir = |c: &mut signet::config::Config| c.storage.data_dir = dir.path().to_owned();
        let (a, b) = tokio::join!(spawn_with(on_dir), spawn_with(on_dir));
        let apps = [Arc::new(a), Arc::new(b)];
        let creates: Vec<_> = (0..20)
            .map(|i| {
                let app = apps[i % 2].clone();
                tokio::spawn(async move {
                    app.create_key_raw("shared", &json!({"name": format!("k{i}")}), ADMIN)
                        .await
                })
            })
            .collect();
        let mut created = 0;
        for create in creates {
            let r = create.await.unwrap();
            match r.status.as_u16() {
                201 => created += 1,
                _ => r.assert_error(400, "quota_exceeded"),
            }
        }
        assert_eq!(created, 5, "exactly the quota, across both instances");
        for app in &apps {
            let listed = app.list_keys("shared").await.json();
            assert_eq!(listed["keys"].as_array().unwrap().len(), 5);
        }
        // 5 creates and 15 refusals, chained without a fork.
        let storage = crate::backends::storage_args(dir.path());
        let mut args = vec!["audit", "verify"];
        args.extend(storage.iter().map(String::as_str));
        let audit = signet(&args, &[]);
        assert_eq!(audit.status.code(), Some(0), "{}", stderr(&audit));
        assert!(
            String::from_utf8_lossy(&audit.stdout).contains("20 events"),
            "{}",
            String::from_utf8_lossy(&audit.stdout)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn no_private_key_material_reaches_the_database() {
    run_on(Backend::Postgres, async {
        let app = spawn_app().await;
        let pems = create_secret_keys(&app).await;
        let dir = app.stop().await;
        let url = Database::of(dir.path()).url;
        let dump = pg::shared().unwrap().dump(&url);
        let hex = |bytes: &[u8]| hex::encode(bytes).into_bytes();
        let needles = secret_needles(&pems.iter().map(String::as_str).collect::<Vec<_>>());
        for (what, needle) in &needles {
            for form in [needle.clone(), hex(needle)] {
                assert!(
                    !dump.windows(form.len()).any(|w| w == form.as_slice()),
                    "{what} found in pg_dump"
                );
            }
        }
        // The dump does hold the records: every key id is in it (hex bytea).
        let mut config = signet::config::Config::default();
        Database::of(dir.path()).configure(&mut config);
        let store = signet::store::Store::open_existing(&config).await.unwrap();
        let records = store.all_keys().await.unwrap();
        assert_eq!(records.len(), 2, "the scan sees every stored record");
        let opened = serde_json::to_vec(&records).unwrap();
        for r in &records {
            let id = hex(&r.id.to_bytes());
            assert!(
                dump.windows(id.len()).any(|w| w == id.as_slice()),
                "{} not in the dump",
                r.id
            );
        }
        for (what, needle) in &needles {
            assert!(
                !opened.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{what} found in a sealed record"
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_refuses_writes_keeps_reads_and_recovers() {
    let Some((cluster, _dir, database)) = private_database() else {
        return;
    };
    let app = spawn_with(|c| {
        database.configure(c);
        // Verification from memory for as long as the outage lasts.
        c.cluster.stale_verification = signet::config::StaleVerification::Serve;
    })
    .await;
    let created = app.create_key("acme", json!({"name": "before"})).await;
    let (kid, signer) = key_of(&created);
    let token = signer.org_token(&kid, claims("acme", "OWNER"));

    cluster.stop_server();
    app.create_key_raw("acme", &json!({"name": "during"}), ADMIN)
        .await
        .assert_error(503, "unavailable");
    app.delete_key("acme", &kid, ADMIN)
        .await
        .assert_error(503, "unavailable");
    assert_eq!(app.get("/readyz").await.status.as_u16(), 503);
    // Reads that need the database fail as unavailable too, the audit log
    // included.
    for path in [
        "/v1/organisations/acme/audit",
        "/v1/organisations/acme/keys",
    ] {
        app.request_as(hyper::Method::GET, path, ADMIN)
            .await
            .assert_error(503, "unavailable");
    }
    // What is served from memory keeps working.
    assert_eq!(app.verify(&token).await["valid"], true);
    assert_eq!(app.jwks_kids().await, vec![kid.clone()]);

    cluster.start_server();
    assert_eq!(app.get("/readyz").await.status.as_u16(), 200);
    app.create_key("acme", json!({"name": "after"})).await;
    let listed = app.list_keys("acme").await.json();
    let names: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["before", "after"],
        "the refused writes left nothing"
    );
    app.stop().await;
    cluster.destroy();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_starts_are_exit_2_with_a_sentence() {
    run_on(Backend::Postgres, async {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::of(dir.path());
        let file = |name: &str, storage: &str| {
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                format!("[storage]\nbackend = \"postgres\"\n{storage}"),
            )
            .unwrap();
            path.to_str().unwrap().to_owned()
        };
        let seal = format!("seal_key_file = {:?}\n", database.seal_key_file);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let unreachable = format!("postgres://signet:hunter2-secret@127.0.0.1:{port}/signet");
        let good = file("good.toml", &format!("url = {:?}\n{seal}", database.url));
        // A schema newer than this build.
        let started = signet(&["keys", "list", "--config", &good], &[]);
        assert_eq!(
            started.status.code(),
            Some(2),
            "no data yet: {}",
            stderr(&started)
        );
        let serve = BinServer::start(dir.path(), &[], "warn", false);
        serve.wait_ready().await;
        serve.terminate();
        let mut serve = serve;
        serve.child.wait().unwrap();
        pg::shared()
            .unwrap()
            .sql(&database.url, "UPDATE signet_schema SET version = 99");

        struct Case<'a> {
            what: &'a str,
            config: String,
            token: bool,
            says: Vec<String>,
            never: Option<&'a str>,
        }
        let cases = [
            Case {
                what: "unreachable",
                config: file("down.toml", &format!("url = {unreachable:?}\n{seal}")),
                token: true,
                says: vec![format!("postgres://signet@127.0.0.1:{port}/signet")],
                never: Some("hunter2"),
            },
            Case {
                what: "no operator token",
                config: good.clone(),
                token: false,
                says: vec!["operator token must be configured".into()],
                never: None,
            },
            Case {
                what: "no seal key",
                config: file("noseal.toml", &format!("url = {:?}\n", database.url)),
                token: true,
                says: vec!["seal_key_file".into(), "postgres".into()],
                never: None,
            },
            Case {
                what: "newer schema",
                config: good.clone(),
                token: true,
                says: vec!["schema version 99".into(), "upgrade signet".into()],
                never: None,
            },
        ];
        for case in cases {
            let mut env = vec![("SIGNET_LISTEN", "127.0.0.1:0")];
            if case.token {
                env.push(("SIGNET_ADMIN_TOKEN", ADMIN));
            }
            let o = signet(&["serve", "--config", &case.config], &env);
            let (what, e) = (case.what, stderr(&o));
            assert_eq!(o.status.code(), Some(2), "{what}: {e}");
            for s in &case.says {
                assert!(e.contains(s.as_str()), "{what}: {e}");
            }
            assert!(case.never.is_none_or(|n| !e.contains(n)), "{what}: {e}");
            assert_eq!(e.trim().lines().count(), 1, "{what}: one sentence: {e}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_offline_cli_works_against_postgres() {
    run_on(Backend::Postgres, async {
        let url = pg::shared().unwrap().create_database();
        let (old, new) = ("11".repeat(32), "22".repeat(32));
        let with = |key: &str| {
            vec![
                ("SIGNET_DATABASE_URL", url.clone()),
                ("SIGNET_SEAL_KEY", key.to_owned()),
            ]
        };
        let run = |args: &[&str], env: &[(&str, String)]| {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            signet(args, &env)
        };
        // A key that opens none of the records is refused, naming its source.
        let refused = |key: &str, source: &str| {
            let o = run(&["keys", "list"], &with(key));
            assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
            assert!(stderr(&o).contains(source), "{}", stderr(&o));
        };
        let list = |key: &str| -> Vec<Value> {
            let o = run(&["keys", "list"], &with(key));
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            v["keys"].as_array().unwrap().clone()
        };
        let o = run(&["keys", "list"], &with(&old));
        assert_eq!(
            o.status.code(),
            Some(2),
            "an empty database: {}",
            stderr(&o)
        );
        assert!(
            stderr(&o).contains("no signet data in postgres://postgres@127.0.0.1"),
            "{}",
            stderr(&o)
        );

        let o = run(
            &["keys", "create", "--org", "acme", "--name", "cli"],
            &with(&old),
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let created: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(list(&old).len(), 1);

        let o = run(&["audit", "verify", "--database-url", &url], &with(&old));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("1 events"));

        let mut rotate = with(&old);
        rotate.push(("SIGNET_NEW_SEAL_KEY", new.clone()));
        let o = run(&["seal", "rotate"], &rotate);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("re-sealed 1 records"));
        assert_eq!(list(&new).len(), 1, "the new key opens the record");
        refused(&old, "SIGNET_SEAL_KEY"); // the old key opens nothing any more

        // With the key in storage.seal_key_file, rotation replaces the file.
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("seal.key");
        std::fs::write(&key_file, &new).unwrap();
        let config = dir.path().join("signet.toml");
        std::fs::write(
            &config,
            format!(
                "[storage]\nbackend = \"postgres\"\nurl = {url:?}\nseal_key_file = {key_file:?}\n"
            ),
        )
        .unwrap();
        let config = config.to_str().unwrap();
        let o = run(&["seal", "rotate", "--config", config], &[]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let newest = std::fs::read_to_string(&key_file).unwrap();
        assert_ne!(newest, new, "the key file holds a new key");
        assert!(!dir.path().join("seal.key.next").exists());
        assert_eq!(list(&newest).len(), 1, "the newest key opens the record");
        refused(&new, "SIGNET_SEAL_KEY"); // the replaced key opens nothing any more

        let id = created["id"].as_str().unwrap();
        let o = run(&["keys", "delete", "--org", "acme", id], &with(&newest));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(list(&newest).is_empty());
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_audit_row_breaks_the_chain() {
    run_on(Backend::Postgres, async {
        let app = spawn_app().await;
        for i in 0..3 {
            app.create_key("acme", json!({"name": format!("k{i}")}))
                .await;
        }
        let dir = app.stop().await;
        let storage = crate::backends::storage_args(dir.path());
        let mut args = vec!["audit", "verify"];
        args.extend(storage.iter().map(String::as_str));
        let intact = signet(&args, &[]);
        assert_eq!(intact.status.code(), Some(0), "{}", stderr(&intact));
        // An edit that still parses, of the second event: only the chain can tell.
        pg::shared().unwrap().sql(
            &Database::of(dir.path()).url,
            r#"UPDATE audit SET event = convert_to(replace(convert_from(event, 'UTF8'),
                 '"outcome":"created"', '"outcome":"Created"'), 'UTF8')
               WHERE id = (SELECT id FROM audit ORDER BY id OFFSET 1 LIMIT 1)"#,
        );
        let broken = signet(&args, &[]);
        assert_eq!(broken.status.code(), Some(1), "{}", stderr(&broken));
        let report = String::from_utf8_lossy(&broken.stdout);
        assert!(
            report.contains("organisation acme") && report.contains("event #2"),
            "{report}"
        );
    })
    .await
}
