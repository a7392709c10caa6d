//! Crash safety with the real binary: `kill -9` during a stream of creates
//! loses no acknowledged key and leaves no half-written one.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::*;

struct Server {
    child: Child,
    addr: String,
}

fn start(dir: &std::path::Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_signet"))
        .arg("serve")
        .env("SIGNET_DATA_DIR", dir)
        .env("SIGNET_LISTEN", &addr)
        .env("SIGNET_ADMIN_TOKEN", ADMIN)
        .env("SIGNET_LOG", "warn")
        .env("ORGKEYS_MAX", "1000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Server { child, addr }
}

async fn wait_ready(addr: &str) {
    for _ in 0..200 {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), async {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            client
                .get(format!("http://{addr}/readyz").parse().unwrap())
                .await
        })
        .await
        {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {addr} never became ready");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: Vec<String> = Vec::new();
    let mut deleted: Vec<String> = Vec::new();
    for cycle in 0..5 {
        let mut server = start(dir.path());
        wait_ready(&server.addr).await;
        let base = format!("http://{}", server.addr);
        // Everything acknowledged before is here; everything deleted is gone.
        for id in &acknowledged {
            let r = send(
                hyper::Method::GET,
                &format!("{base}/v1/keys/{id}"),
                &[],
                bytes::Bytes::new(),
            )
            .await;
            assert_eq!(
                r.status.as_u16(),
                200,
                "cycle {cycle}: acknowledged key {id} lost"
            );
        }
        for id in &deleted {
            let r = send(
                hyper::Method::GET,
                &format!("{base}/v1/keys/{id}"),
                &[],
                bytes::Bytes::new(),
            )
            .await;
            assert_eq!(
                r.status.as_u16(),
                404,
                "cycle {cycle}: deleted key {id} came back"
            );
        }
        // A stream of concurrent creates (and a delete), killed mid-way.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let (base, tx) = (base.clone(), tx.clone());
                tokio::spawn(async move {
                    for i in 0.. {
                        let body =
                            serde_json::to_vec(&json!({"name": format!("c{cycle}w{w}i{i}")}))
                                .unwrap();
                        let auth = format!("Bearer {ADMIN}");
                        let client = hyper_util::client::legacy::Client::builder(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .build_http::<http_body_util::Full<bytes::Bytes>>();
                        let req =
                            hyper::Request::post(format!("{base}/v1/organisations/crash{w}/keys"))
                                .header("authorization", auth)
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                .unwrap();
                        let Ok(res) = client.request(req).await else {
                            return;
                        };
                        if res.status() != 201 {
                            return;
                        }
                        use http_body_util::BodyExt;
                        let Ok(body) = res.into_body().collect().await else {
                            return;
                        };
                        let v: serde_json::Value =
                            serde_json::from_slice(&body.to_bytes()).unwrap();
                        let _ = tx.send(v["id"].as_str().unwrap().to_owned());
                    }
                })
            })
            .collect();
        drop(tx);
        // Let some creates land, then kill at an arbitrary point.
        let mut seen = 0;
        while seen < 3 + cycle {
            let id = rx.recv().await.expect("creates succeed");
            acknowledged.push(id);
            seen += 1;
        }
        if let Some(victim) = acknowledged.first().cloned() {
            // Delete the oldest key through whichever organisation holds it.
            for w in 0..3 {
                let r = send(
                    hyper::Method::DELETE,
                    &format!("{base}/v1/organisations/crash{w}/keys/{victim}"),
                    &[("authorization", &format!("Bearer {ADMIN}"))],
                    bytes::Bytes::new(),
                )
                .await;
                if r.status.as_u16() == 204 {
                    acknowledged.retain(|id| *id != victim);
                    deleted.push(victim.clone());
                    break;
                }
            }
        }
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        // Responses that raced the kill may still be in the channel: they
        // were acknowledged too, so they must survive.
        for w in writers {
            let _ = w.await;
        }
        while let Ok(id) = rx.try_recv() {
            acknowledged.push(id);
        }
    }
    // Finally the offline view agrees, and nothing is half-written.
    let out = Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(["keys", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    for id in &acknowledged {
        assert!(
            ids.contains(&id.as_str()),
            "acknowledged {id} missing offline"
        );
    }
    for id in &deleted {
        assert!(!ids.contains(&id.as_str()), "deleted {id} present offline");
    }
    for key in listed["keys"].as_array().unwrap() {
        assert!(key["publicKey"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----"));
    }
    let audit = Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(["audit", "verify", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        audit.status.code(),
        Some(0),
        "audit chain intact after crashes: {}",
        String::from_utf8_lossy(&audit.stdout)
    );
}
