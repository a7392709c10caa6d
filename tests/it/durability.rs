//! Crash safety with the real binary: `kill -9` during a stream of creates
//! loses no acknowledged key and leaves no half-written one.

use std::process::Command;

use bytes::Bytes;
use hyper::Method;
use serde_json::json;

use crate::support::*;

on_both_backends!(kill_9_loses_no_acknowledged_write);
async fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: Vec<(String, String)> = Vec::new(); // (org, id)
    let mut deleted: Vec<String> = Vec::new();
    for cycle in 0..5 {
        let mut server = BinServer::start(dir.path(), &[], "warn", false);
        server.wait_ready().await;
        let base = server.base();
        // Everything acknowledged before is here; everything deleted is gone.
        for (_, id) in &acknowledged {
            assert_eq!(
                key_status(&base, id).await,
                200,
                "cycle {cycle}: acknowledged key {id} lost"
            );
        }
        for id in &deleted {
            assert_eq!(
                key_status(&base, id).await,
                404,
                "cycle {cycle}: deleted key {id} came back"
            );
        }
        // Delete the oldest surviving key: acknowledged deletes must stick too.
        if !acknowledged.is_empty() {
            let (org, id) = acknowledged.remove(0);
            let url = format!("{base}/v1/organisations/{org}/keys/{id}");
            let r = send(
                Method::DELETE,
                &url,
                &[("authorization", &bearer(ADMIN))],
                Bytes::new(),
            )
            .await;
            assert_eq!(r.status.as_u16(), 204);
            deleted.push(id);
        }
        // A stream of concurrent creates, killed mid-way.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let (base, tx) = (base.clone(), tx.clone());
                tokio::spawn(async move {
                    let org = format!("crash{w}");
                    let auth = bearer(ADMIN);
                    let headers = [
                        ("authorization", auth.as_str()),
                        ("content-type", "application/json"),
                    ];
                    let url = format!("{base}/v1/organisations/{org}/keys");
                    for i in 0.. {
                        let body =
                            serde_json::to_vec(&json!({"name": format!("c{cycle}w{w}i{i}")}))
                                .unwrap();
                        // The server dies under this task: an unanswered request ends it.
                        let Ok(r) = try_send(Method::POST, &url, &headers, body.into()).await
                        else {
                            return;
                        };
                        if r.status.as_u16() != 201 {
                            return;
                        }
                        let _ = tx.send((org.clone(), r.json()["id"].as_str().unwrap().to_owned()));
                    }
                })
            })
            .collect();
        drop(tx);
        // Let some creates land, then kill at an arbitrary point.
        for _ in 0..3 + cycle {
            acknowledged.push(rx.recv().await.expect("creates succeed"));
        }
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        // Responses that raced the kill are acknowledged too: they must survive.
        for w in writers {
            let _ = w.await;
        }
        while let Ok(ack) = rx.try_recv() {
            acknowledged.push(ack);
        }
    }
    // Finally the offline view agrees, and nothing is half-written.
    let out = Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(["keys", "list"])
        .args(crate::backends::storage_args(dir.path()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = listed["keys"].as_array().unwrap();
    let ids: Vec<&str> = keys.iter().map(|k| k["id"].as_str().unwrap()).collect();
    for (_, id) in &acknowledged {
        assert!(
            ids.contains(&id.as_str()),
            "acknowledged {id} missing offline"
        );
    }
    for id in &deleted {
        assert!(!ids.contains(&id.as_str()), "deleted {id} present offline");
    }
    assert!(keys.iter().all(|k| k["publicKey"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----")));
    let audit = Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(["audit", "verify"])
        .args(crate::backends::storage_args(dir.path()))
        .output()
        .unwrap();
    assert_eq!(
        audit.status.code(),
        Some(0),
        "audit chain intact after crashes: {}",
        String::from_utf8_lossy(&audit.stdout)
    );
}

/// The status of `GET /v1/keys/{id}`.
async fn key_status(base: &str, id: &str) -> u16 {
    send(
        Method::GET,
        &format!("{base}/v1/keys/{id}"),
        &[],
        Bytes::new(),
    )
    .await
    .status
    .as_u16()
}
