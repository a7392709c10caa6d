//! Many change feed subscribers: an HTTP/2 subscriber that stops reading
//! is reset without harm to its connection's other streams, and the server
//! raises its open files limit so that `server.max_connections` fit.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::Method;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

type Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// `GET url` on an HTTP/2 connection: the status and the body, unread.
async fn h2_get(send: &mut Sender, url: &str) -> (u16, Incoming) {
    let req = hyper::Request::get(url).body(Empty::new()).unwrap();
    let res = send.send_request(req).await.expect("an HTTP/2 answer");
    (res.status().as_u16(), res.into_body())
}

/// Reads `body` until `needle` has arrived (within 10 s).
async fn read_until(body: &mut Incoming, needle: &str) {
    let mut seen = String::new();
    while !seen.contains(needle) {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} within 10 s"))
            .expect("the stream goes on")
            .expect("no stream error");
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

fn subscribers(metrics: &str) -> f64 {
    metric(metrics, "signet_feed_subscribers")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_subscriber_that_stops_reading_is_reset_and_its_connection_goes_on() {
    let app = spawn_with(|c| {
        c.events.send_timeout_ms = 300;
        c.events.heartbeat_ms = 100;
        c.keys.max_per_org = 100;
    })
    .await;
    // HTTP/2 with prior knowledge; a stream window of 4 KiB, so that a few
    // unread events shut it, and a connection window that stays open.
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(4096u32)
        .initial_connection_window_size(8u32 << 20)
        .handshake(TokioIo::new(tcp))
        .await
        .expect("an HTTP/2 connection");
    tokio::spawn(conn);
    let events = app.url("/v1/events");
    let (status, mut stuck) = h2_get(&mut send, &events).await;
    assert_eq!(status, 200);
    let (status, mut reader) = h2_get(&mut send, &events).await;
    assert_eq!(status, 200);
    read_until(&mut reader, "event: reset").await;
    // The reader reads on; `stuck` is never read until it has been ended.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        while let Some(Ok(frame)) = reader.frame().await {
            if let Ok(data) = frame.into_data() {
                let _ = seen_tx.send(String::from_utf8_lossy(&data).into_owned());
            }
        }
    });
    let created = app.create_key("acme", json!({"name": "k"})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let rename = |name: String| {
        let path = format!("/v1/organisations/acme/keys/{id}");
        let app = &app;
        async move {
            let r = app
                .request(
                    Method::PATCH,
                    &path,
                    &[
                        ("authorization", &bearer(ADMIN)),
                        ("content-type", "application/json"),
                    ],
                    serde_json::to_vec(&json!({ "name": name })).unwrap(),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
    };
    // Renames publish the key again and again (~1.5 KB each) while the
    // stuck stream's window is shut: the server ends that stream rather
    // than keep what it cannot send.
    let mut renames = 0;
    let started = std::time::Instant::now();
    while subscribers(&app.get("/metrics").await.text()) > 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the stuck stream is still subscribed after {renames} renames"
        );
        rename(format!("name {renames}")).await;
        renames += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // On the wire: reading it now yields what the window let through, then
    // its end (a reset), instead of more events.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = stuck.frame().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stuck stream was reset");
    // The connection's other stream still gets every change, and the
    // connection serves new requests and streams.
    rename("after the reset".into()).await;
    let mut text = String::new();
    while !text.contains("after the reset") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("the reader gets the rename within 10 s")
            .expect("the reader's stream goes on");
        text.push_str(&chunk);
    }
    let (status, body) = h2_get(&mut send, &app.url("/.well-known/jwks.json")).await;
    assert_eq!(status, 200);
    body.collect().await.expect("the JWK Set");
    let (status, mut again) = h2_get(&mut send, &events).await;
    assert_eq!(status, 200);
    read_until(&mut again, "event: reset").await;
    assert_eq!(subscribers(&app.get("/metrics").await.text()), 2.0);
    reading.abort();
}

/// The soft and hard "Max open files" of `/proc/PID/limits`.
fn open_files(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    let soft = numbers.next().expect("a soft limit");
    let hard = numbers.next().unwrap_or(u64::MAX);
    (soft, hard)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_open_files_soft_limit_is_raised_for_max_connections() {
    const LOWERED: u64 = 256;
    let (_, hard) = open_files("self");
    if hard <= LOWERED * 2 {
        eprintln!("the hard limit on open files ({hard}) leaves nothing to raise");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    // The default server.max_connections (10,000) needs more than the
    // lowered soft limit; the shell lowers it and becomes the server.
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -S -n {LOWERED} && exec \"$0\" serve"))
        .arg(env!("CARGO_BIN_EXE_signet"))
        .env("SIGNET_DATA_DIR", dir.path())
        .env("SIGNET_LISTEN", &addr)
        .env("SIGNET_ADMIN_TOKEN", ADMIN)
        .env("SIGNET_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut server = BinServer { child, addr };
    server.wait_ready().await;
    let pid = server.child.id().to_string();
    let (soft, server_hard) = open_files(&pid);
    assert_eq!(
        soft, server_hard,
        "the soft limit was raised to the hard one"
    );
    // More connections at once than the lowered limit allowed, each
    // answered while all are open.
    let (own_soft, _) = open_files("self");
    let many = usize::try_from((LOWERED * 2).min(own_soft / 2)).unwrap();
    let mut held = Vec::new();
    for i in 0..many {
        let mut tcp = tokio::net::TcpStream::connect(&server.addr)
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("connection {i} answered within 10 s"))
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "connection {i}: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        held.push(tcp);
    }
    server.terminate();
    let _ = server.child.wait();
}
