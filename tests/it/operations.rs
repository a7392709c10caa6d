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
    // Silent ones and slow ones alike are cut off by the header timeout
    // rather than held forever.
    let mut cut = 0;
    for s in idle.iter_mut().take(40) {
        let mut buf = [0u8; 512];
        let read = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await;
        if matches!(read, Ok(Ok(_)) | Ok(Err(_))) {
            cut += 1;
        }
    }
    assert_eq!(
        cut, 40,
        "connections that never send or never finish their headers are closed"
    );
}

/// A change feed's stream never ends by itself: at SIGTERM the server ends
/// every stream, so that its subscribers (followers among them) reconnect
/// at once and the drain does not wait out its grace period (10 s).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_the_change_feeds_streams_and_exits_at_once() {
    use http_body_util::BodyExt;
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(dir.path(), &[], "warn", true);
    server.wait_ready().await;
    let mut streams = Vec::new();
    for path in ["/v1/events", "/v1/organisations/acme/events"] {
        let mut tcp = TcpStream::connect(&server.addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut head = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut head))
            .await
            .expect("the stream's head")
            .unwrap();
        let head = String::from_utf8_lossy(&head[..n]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("event: reset"), "{head}");
        streams.push(tcp);
    }
    // And one over HTTP/2, which must end as cleanly, not be reset.
    let tcp = TcpStream::connect(&server.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("an HTTP/2 connection");
    tokio::spawn(conn);
    let url = format!("http://{}/v1/events", server.addr);
    let req = hyper::Request::get(url)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let mut h2 = send.send_request(req).await.unwrap().into_body();
    let mut seen = String::new();
    while !seen.contains("event: reset") {
        let frame = tokio::time::timeout(Duration::from_secs(10), h2.frame())
            .await
            .expect("the reset within 10 s")
            .expect("the stream goes on")
            .expect("no stream error");
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    let signalled = std::time::Instant::now();
    server.terminate();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(8), h2.frame())
            .await
            .expect("the HTTP/2 stream ends before the grace period is over");
        match frame {
            None => break,
            Some(frame) => drop(frame.expect("ended, not reset")),
        }
    }
    for mut tcp in streams {
        // Heartbeats, then the chunked body's end, then the close.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(8), tcp.read_to_end(&mut rest))
            .await
            .expect("the stream ends before the grace period is over")
            .unwrap();
        let rest = String::from_utf8_lossy(&rest);
        assert!(rest.ends_with("0\r\n\r\n"), "ended cleanly: {rest:?}");
    }
    let exit = tokio::task::spawn_blocking(move || server.child.wait_with_output().unwrap())
        .await
        .unwrap();
    let took = signalled.elapsed();
    let log = String::from_utf8_lossy(&exit.stderr);
    assert_eq!(exit.status.code(), Some(0), "{log}");
    assert!(!log.contains("grace period"), "{log}");
    eprintln!("SIGTERM with two feed subscribers: exited in {took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(dir.path(), &[], "warn", true);
    server.wait_ready().await;
    let (base, addr) = (server.base(), server.addr.clone());
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
    server.terminate();
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
    let exit = tokio::task::spawn_blocking(move || server.child.wait_with_output().unwrap())
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

/// A tmpfs of `size` mounted for one test, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// `None` where this user may not mount (not root): the caller skips.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_writes_with_503_keeps_reads_and_recovers() {
    let Some(fs) = Tmpfs::mount("16m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let data = fs.0.path().join("data");
    let app = spawn_with(|c| {
        c.storage.data_dir = data.clone();
        c.keys.max_per_org = 1000;
    })
    .await;
    let before = app.create_key("acme", json!({"name": "before"})).await;
    let (kid, signer) = key_of(&before);
    let token = signer.org_token(&kid, claims("acme", "OWNER"));

    // Fill the disk.
    let junk = fs.0.path().join("junk");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&junk).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    // Writes that still fit in pages sled already holds may succeed (they
    // are synced, so they are real); the first that needs space is refused.
    let mut refused = None;
    for i in 0..100 {
        let name = format!("filling {i}");
        let r = app
            .create_key_raw("acme", &json!({ "name": name }), ADMIN)
            .await;
        if r.status.as_u16() != 201 {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("a full disk refuses writes");
    refused.assert_error(503, "unavailable");
    assert!(refused.json()["message"].as_str().unwrap().contains("disk"));
    // Reads keep working.
    assert_eq!(
        app.get(&format!("/v1/keys/{kid}")).await.status.as_u16(),
        200
    );
    assert_eq!(app.get("/.well-known/jwks.json").await.status.as_u16(), 200);
    assert_eq!(app.verify(&token).await["valid"], true);
    let refused_again = app
        .create_key_raw("acme", &json!({"name": "still"}), ADMIN)
        .await;
    refused_again.assert_error(503, "unavailable");

    // Space returns; so do writes (recovery probes the disk at most once a second).
    std::fs::remove_file(&junk).unwrap();
    let mut created = None;
    for _ in 0..20 {
        let r = app
            .create_key_raw("acme", &json!({"name": "after"}), ADMIN)
            .await;
        if r.status.as_u16() == 201 {
            created = Some(r.json());
            break;
        }
        r.assert_error(503, "unavailable");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let after = created.expect("writes work again once space returns");
    let kids = app.jwks_kids().await;
    assert!(
        kids.contains(&kid) && kids.contains(&after["id"].as_str().unwrap().to_owned()),
        "{kids:?}"
    );
    assert_eq!(app.verify(&token).await["valid"], true);
    assert_eq!(
        app.delete_key("acme", &kid, ADMIN).await.status.as_u16(),
        204
    );
    assert_eq!(app.verify(&token).await["error"]["code"], "unknown_key");
    app.stop().await;
    drop(fs);
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_with_prior_knowledge_is_served() {
    use http_body_util::{BodyExt, Full};
    let app = spawn_app().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    let res = client
        .get(app.url("/.well-known/jwks.json").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(res.version(), hyper::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, app.get("/.well-known/jwks.json").await.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_logs_can_be_json_and_never_carry_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = BinServer::start(dir.path(), &["--log-json"], "info", true);
    server.wait_ready().await;
    let base = server.base();
    let auth = format!("Bearer {ADMIN}");
    let created = send(
        hyper::Method::POST,
        &format!("{base}/v1/organisations/acme/keys"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("x-request-id", "trace-me-42"),
        ],
        serde_json::to_vec(&json!({"name": "logged"}))
            .unwrap()
            .into(),
    )
    .await
    .json();
    let (kid, signer) = key_of(&created);
    let token = signer.org_token(&kid, claims("acme", "OWNER"));
    let bearer = format!("Bearer {token}");
    send(
        hyper::Method::GET,
        &format!("{base}/v1/auth"),
        &[("authorization", &bearer)],
        bytes::Bytes::new(),
    )
    .await;
    server.terminate();
    let out = tokio::task::spawn_blocking(move || server.child.wait_with_output().unwrap())
        .await
        .unwrap();
    let log = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let create_line = lines
        .iter()
        .find(|l| l["fields"]["request_id"] == "trace-me-42")
        .expect("the request id is logged");
    assert_eq!(create_line["fields"]["status"], 201);
    let private_body: String = created["privateKey"]
        .as_str()
        .unwrap()
        .lines()
        .nth(5)
        .unwrap()
        .to_owned();
    for secret in [
        ADMIN,
        token.as_str(),
        token.split('.').nth(2).unwrap(),
        private_body.as_str(),
    ] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}
