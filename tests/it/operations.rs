//! Operating under stress: idle and slow connections, graceful shutdown.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn idle_and_half_open_connections_do_not_lock_out_a_fresh_client() {
    let app = spawn_with(|c| c.server.header_read_timeout_secs = 1).await;
    let mut idle = Vec::new();
    for i in 0..500 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        if i % 2 == 0 {
            // Half a request line, then silence (slowloris).
            s.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        idle.push(s);
    }
    let r = tokio::time::timeout(Duration::from_secs(30), app.get("/.well-known/jwks.json"))
        .await
        .expect("a fresh client is served while 500 connections idle");
    assert_eq!(r.status.as_u16(), 200);
    // The slow ones are cut off by the header timeout rather than held forever.
    let mut cut = 0;
    for s in idle.iter_mut().step_by(2).take(20) {
        let mut buf = [0u8; 512];
        let read = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await;
        if matches!(read, Ok(Ok(_)) | Ok(Err(_))) {
            cut += 1;
        }
    }
    assert_eq!(
        cut, 20,
        "connections that never finish their headers are closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_signet"))
        .arg("serve")
        .env("SIGNET_DATA_DIR", dir.path())
        .env("SIGNET_LISTEN", &addr)
        .env("SIGNET_ADMIN_TOKEN", ADMIN)
        .env("SIGNET_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://{addr}");
    let mut ready = false;
    for _ in 0..200 {
        if TcpStream::connect(&addr).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "server started");
    // A slow request: a 4096-bit key is never pooled by default.
    let slow = {
        let base = base.clone();
        tokio::spawn(async move {
            send(
                hyper::Method::POST,
                &format!("{base}/v1/organisations/acme/keys"),
                &[
                    ("authorization", &format!("Bearer {ADMIN}")),
                    ("content-type", "application/json"),
                ],
                serde_json::to_vec(&json!({"name": "slow", "bits": 4096}))
                    .unwrap()
                    .into(),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !slow.is_finished(),
        "the create is in flight when the signal arrives"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // New connections are refused once the listener is closed.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(&addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "new connections are refused after SIGTERM");
    let r = slow.await.unwrap();
    assert_eq!(
        r.status.as_u16(),
        201,
        "the in-flight create completed: {}",
        r.text()
    );
    let exit = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        exit.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&exit.stderr)
    );
    // And the key it answered for is durable.
    let out = Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(["keys", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["keys"][0]["id"], r.json()["id"]);
}
