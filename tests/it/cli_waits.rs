//! The CLI's revoking commands on a shared database wait for the running
//! instances exactly as a server's answer does: once `signet keys
//! delete|disable|rotate --grace-seconds 0` has exited, no instance accepts
//! the key's tokens, not even one that was stopped while it ran.

use std::path::Path;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::json;
use signet::config::{Backend, Config};

use crate::backends::{run_on, storage_args, Database};
use crate::pg;
use crate::support::*;

/// Each revoking command, as its arguments after `keys`.
const REVOKING: &[&[&str]] = &[
    &["delete"],
    &["disable"],
    &["rotate", "--grace-seconds", "0"],
];

#[tokio::test(flavor = "multi_thread")]
async fn revoking_cli_commands_wait_for_a_stopped_instance() {
    run_on(Backend::Postgres, async {
        let dir = tempfile::tempdir().unwrap();
        let mut instance = BinServer::start(dir.path(), &[], "warn", false);
        instance.wait_ready().await;
        let base = instance.base();
        let id = instance_id(&base).await;
        let max_staleness = Duration::from_millis(Config::default().cluster.max_staleness_ms);
        let pid = instance.child.id().to_string();
        let signal = |sig: &str| {
            let sent = std::process::Command::new("kill")
                .args([sig, &pid])
                .status();
            assert!(sent.unwrap().success(), "kill {sig}");
        };
        for command in REVOKING {
            let created = send(
                Method::POST,
                &format!("{base}/v1/organisations/acme/keys"),
                &[
                    ("authorization", &bearer(ADMIN)),
                    ("content-type", "application/json"),
                ],
                serde_json::to_vec(&json!({"name": "k", "algorithm": "EdDSA"}))
                    .unwrap()
                    .into(),
            )
            .await;
            assert_eq!(created.status, 201, "{}", created.text());
            let (kid, signer) = key_of(&created.json());
            let token = signer.org_token(&kid, claims("acme", "OWNER"));
            assert_eq!(verdict_at(&base, &token).await, Some(true), "{command:?}");

            signal("-STOP");
            let started = Instant::now();
            let heard = heartbeat_age(dir.path(), &id);
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_signet"))
                .arg("keys")
                .args(*command)
                .args(["--org", "acme", &kid])
                .args(storage_args(dir.path()))
                .current_dir(dir.path())
                .output()
                .unwrap();
            let took = started.elapsed();
            signal("-CONT");
            assert!(
                out.status.success(),
                "{command:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // The stopped instance was live and had not applied the change:
            // the command may exit only once that instance's last heartbeat
            // is max_staleness (plus a margin) old by the database's clock,
            // when the instance has fenced itself. `started` was read before
            // the heartbeat's age was, so `heard + took` is at least how old
            // the heartbeat was when the command exited.
            assert!(
                heard + took >= max_staleness,
                "{command:?} exited when the stopped instance's last heartbeat was \
                 at most {:?} old ({heard:?} at the stop, then {took:?}): it did not \
                 wait until it was {max_staleness:?} old",
                heard + took
            );
            for _ in 0..50 {
                assert_ne!(
                    verdict_at(&base, &token).await,
                    Some(true),
                    "{command:?}: the stopped instance accepted a revoked key"
                );
            }
        }
        instance.child.kill().unwrap();
        instance.child.wait().unwrap();
    })
    .await
}

/// The id the instance at `base` heartbeats as (`GET /v1/cluster`).
async fn instance_id(base: &str) -> String {
    let r = send(
        Method::GET,
        &format!("{base}/v1/cluster"),
        &[("authorization", &bearer(ADMIN))],
        Vec::<u8>::new().into(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["self"].as_str().expect("self").to_owned()
}

/// How long ago, by the database's clock, instance `id` of the database
/// of `dir` last heartbeated.
fn heartbeat_age(dir: &Path, id: &str) -> Duration {
    let ms = pg::shared().expect("PostgreSQL is there").sql(
        &Database::of(dir).url,
        &format!(
            "SELECT (extract(epoch FROM now() - heartbeat_at) * 1000)::int8
               FROM instances WHERE id = '{id}'"
        ),
    );
    let ms: i64 = ms
        .parse()
        .unwrap_or_else(|_| panic!("no heartbeat of {id}: {ms:?}"));
    Duration::from_millis(ms.max(0) as u64)
}

/// `Some(valid)` from `/v1/verify` at `base`, `None` for a 503.
async fn verdict_at(base: &str, token: &str) -> Option<bool> {
    let r = send(
        Method::POST,
        &format!("{base}/v1/verify"),
        &[("content-type", "application/json")],
        serde_json::to_vec(&json!({ "token": token }))
            .unwrap()
            .into(),
    )
    .await;
    match r.status.as_u16() {
        503 => None,
        200 => Some(r.json()["valid"] == true),
        other => panic!("/v1/verify answered {other}: {}", r.text()),
    }
}
