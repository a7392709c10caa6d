//! Hostile clients: every connection state has a deadline. Each shape of
//! stalled client is closed within its deadline (plus a generous margin),
//! the closure is counted by reason in `/metrics`, and a fresh client is
//! served while the stalled ones hold their slots.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

/// Slack for a loaded two-core machine on top of each deadline.
const MARGIN: Duration = Duration::from_secs(5);
/// Stalled clients held at once; `max_connections` leaves one slot free.
const HELD: usize = 3;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// `GET /healthz` as one HEADERS frame (END_STREAM | END_HEADERS) on
/// stream 1, HPACK-encoded by hand.
fn h2_get_healthz() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x44, 8];
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x41, 1, b'x']);
    let mut frame = vec![0, 0, block.len() as u8, 1, 0x05, 0, 0, 0, 1];
    frame.extend(block);
    frame
}

const POST_HEAD: &str = "POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n";

/// How a stalled client behaves.
enum Then {
    /// Says nothing more.
    Silence,
    /// Sends these bytes one at a time, 300 ms apart, ignoring failures.
    Trickle(&'static [u8]),
    /// Pipelines requests for a large document and never reads.
    NeverRead,
}

struct Shape {
    name: &'static str,
    first: Vec<u8>,
    then: Then,
    /// The `reason` label the closure is counted under.
    reason: &'static str,
    /// The deadline that applies with the test config below (the HTTP/2
    /// ping one: the interval plus the timeout).
    deadline: Duration,
}

fn shapes() -> Vec<Shape> {
    let secs = Duration::from_secs;
    let h2_request = [H2_PREFACE, H2_SETTINGS, &h2_get_healthz()].concat();
    vec![
        Shape {
            name: "connects and says nothing",
            first: vec![],
            then: Then::Silence,
            reason: "first_request",
            deadline: secs(2),
        },
        Shape {
            name: "one byte, then silence (protocol detection)",
            first: b"P".to_vec(),
            then: Then::Silence,
            reason: "first_request",
            deadline: secs(2),
        },
        Shape {
            name: "slowloris: half the headers, then silence",
            first: b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n".to_vec(),
            then: Then::Silence,
            reason: "first_request",
            deadline: secs(2),
        },
        Shape {
            name: "slowloris: headers a byte at a time",
            first: b"GET /healthz HTTP/1.1\r\n".to_vec(),
            then: Then::Trickle(
                b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ),
            reason: "first_request",
            deadline: secs(2),
        },
        Shape {
            name: "HTTP/2 preface and SETTINGS, then silence",
            first: [H2_PREFACE, H2_SETTINGS].concat(),
            then: Then::Silence,
            reason: "first_request",
            deadline: secs(2),
        },
        Shape {
            name: "a POST body that stops part-way",
            first: format!("{POST_HEAD}{{\"token\":").into_bytes(),
            then: Then::Silence,
            reason: "body",
            deadline: secs(2),
        },
        Shape {
            name: "a POST body a byte at a time",
            first: POST_HEAD.as_bytes().to_vec(),
            then: Then::Trickle(&[b' '; 4096]),
            reason: "body",
            deadline: secs(4),
        },
        Shape {
            name: "requests whose responses are never read",
            first: vec![],
            then: Then::NeverRead,
            reason: "write",
            deadline: secs(2),
        },
        Shape {
            name: "HTTP/1 keep-alive, idle after one request",
            first: b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            then: Then::Silence,
            reason: "idle",
            deadline: secs(6),
        },
        Shape {
            name: "HTTP/1 keep-alive, then the next headers a byte at a time",
            first: b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n".to_vec(),
            then: Then::Trickle(
                b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ),
            reason: "headers",
            deadline: secs(2),
        },
        Shape {
            name: "HTTP/2 client that stops answering pings",
            first: h2_request,
            then: Then::Silence,
            reason: "keepalive",
            deadline: secs(3),
        },
    ]
}

async fn stalled_client(app: &TestApp, shape: &Shape) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if matches!(shape.then, Then::NeverRead) {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    let mut s = socket.connect(app.addr).await.unwrap();
    s.write_all(&shape.first).await.unwrap();
    s
}

/// Starts what the shape does after its first bytes; returns the socket
/// to read from (the write half is moved into a task when one is needed).
fn carry_on(s: TcpStream, then: &Then) -> ReadSide {
    match *then {
        Then::Silence => ReadSide::Whole(s),
        Then::Trickle(bytes) => {
            let (read, mut write) = s.into_split();
            tokio::spawn(async move {
                for b in bytes {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if write.write_all(&[*b]).await.is_err() {
                        break;
                    }
                }
                // Keep the write half open until the server is done.
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
            ReadSide::Half(read)
        }
        Then::NeverRead => {
            let (read, mut write) = s.into_split();
            tokio::spawn(async move {
                let req = b"GET /openapi.yaml HTTP/1.1\r\nHost: x\r\n\r\n";
                while write.write_all(req).await.is_ok() {}
            });
            ReadSide::Half(read)
        }
    }
}

enum ReadSide {
    Whole(TcpStream),
    Half(tokio::net::tcp::OwnedReadHalf),
}

impl ReadSide {
    /// Reads until the server closes (EOF or reset); `None` if it does
    /// not within `limit`.
    async fn until_closed(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let mut got = Vec::new();
        let read_all = async {
            let mut buf = [0u8; 16384];
            loop {
                let n = match self {
                    ReadSide::Whole(s) => s.read(&mut buf).await,
                    ReadSide::Half(r) => r.read(&mut buf).await,
                };
                match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(limit, read_all).await.ok()?;
        Some(got)
    }
}

async fn closed_count(app: &TestApp, reason: &str) -> u64 {
    let metrics = app.get("/metrics").await.text();
    let needle = format!("signet_connections_closed_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Polls the count of `reason` until it reaches `want` or `until` passes.
async fn counted_within(app: &TestApp, reason: &str, want: u64, until: Instant) -> u64 {
    loop {
        let counted = closed_count(app, reason).await;
        if counted >= want || Instant::now() >= until {
            return counted;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_stalled_connection_is_closed_within_its_deadline() {
    for shape in shapes() {
        let app = spawn_with(|c| {
            let s = &mut c.server;
            s.max_connections = HELD + 1;
            s.header_read_timeout_secs = 2;
            s.idle_timeout_secs = 6;
            s.body_read_timeout_secs = 4;
            s.body_progress_timeout_secs = 2;
            s.write_timeout_secs = 2;
            s.http2_keepalive_interval_secs = 1;
            s.http2_keepalive_timeout_secs = 2;
        })
        .await;
        let name = shape.name;
        let opened = Instant::now();
        let mut held = Vec::new();
        for _ in 0..HELD {
            let s = stalled_client(&app, &shape).await;
            held.push(carry_on(s, &shape.then));
        }
        if matches!(shape.then, Then::NeverRead) {
            // Give the pipelines time to fill the socket buffers.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }

        // A fresh client is served while they hold their slots: before any
        // of them has been cut off.
        let fresh = app.get("/healthz").await;
        assert_eq!(fresh.status.as_u16(), 200, "{name}");
        assert_eq!(
            closed_count(&app, shape.reason).await,
            0,
            "{name}: the fresh client was served while the stalled ones were held"
        );

        // Counted without reading first: reading would let a stalled write
        // go on. The count follows the close by a moment.
        let limit = shape.deadline + MARGIN;
        let counted = counted_within(&app, shape.reason, HELD as u64, opened + limit).await;
        assert_eq!(
            counted, HELD as u64,
            "{name}: {HELD} closures counted as {} within {limit:?}",
            shape.reason
        );
        for side in &mut held {
            let got = side
                .until_closed(Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("{name}: counted but not closed"));
            if shape.reason == "body" {
                let head = String::from_utf8_lossy(&got);
                assert!(head.starts_with("HTTP/1.1 408"), "{name}: {head}");
            }
        }
        // The slots are free again: as many fresh connections as the limit
        // allows are served at once.
        let mut fresh = Vec::new();
        for _ in 0..HELD + 1 {
            let url = app.url("/healthz");
            fresh.push(tokio::spawn(async move {
                send(hyper::Method::GET, &url, &[], bytes::Bytes::new()).await
            }));
        }
        for r in fresh {
            assert_eq!(r.await.unwrap().status.as_u16(), 200, "{name}");
        }
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_http2_connection_that_answers_pings_is_closed_as_idle() {
    use http_body_util::Empty;
    let app = spawn_with(|c| {
        c.server.idle_timeout_secs = 2;
        c.server.http2_keepalive_interval_secs = 1;
        c.server.http2_keepalive_timeout_secs = 5;
    })
    .await;
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    // hyper's client answers the server's pings while it drives `conn`.
    let conn = tokio::spawn(conn);
    let res = h2
        .send_request(
            hyper::Request::get(app.url("/healthz"))
                .body(Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let idle_from = Instant::now();
    tokio::time::timeout(Duration::from_secs(2) + MARGIN, conn)
        .await
        .expect("the server closes the idle connection")
        .unwrap()
        .ok();
    assert!(
        idle_from.elapsed() >= Duration::from_millis(1500),
        "not before the idle timeout: {:?}",
        idle_from.elapsed()
    );
    let counted = counted_within(&app, "idle", 1, Instant::now() + MARGIN).await;
    assert_eq!(counted, 1, "closed as idle, not for a missed ping");
    assert_eq!(closed_count(&app, "keepalive").await, 0);
}
