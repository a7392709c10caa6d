//! The CLI's revoking commands on a shared database wait for the running
//! instances exactly as a server's answer does: once `signet keys
//! delete|disable|rotate --grace-seconds 0` has exited, no instance accepts
//! the key's tokens, not even one that was stopped while it ran.

use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::json;
use signet::config::Backend;

use crate::backends::{run_on, storage_args};
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
            // the command waited until it had fenced itself (max_staleness,
            // 2 s by default, from its last heartbeat).
            assert!(
                took >= Duration::from_millis(1000),
                "{command:?} exited after {took:?} without waiting"
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
