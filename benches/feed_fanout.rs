//! The change feed's targets, against the `signet` binary (release build,
//! sled, a fresh data directory), started and stopped here:
//!
//!   cargo bench --bench feed_fanout -- fanout 1000 200
//!   cargo bench --bench feed_fanout -- idle 10000
//!   SIGNET_BIN=/path/to/other/signet cargo bench --bench feed_fanout -- idle 10000
//!
//! `SIGNET_BIN` runs another build of the server (an earlier commit, say)
//! with the same client, so that two builds are compared in one session.
//!
//! `fanout N ROUNDS`: N subscribers of `GET /v1/events`; ROUNDS times, a
//! key is created, then deleted, and for each DELETE the time from its
//! answer (and from sending it) to the moment the last of the N subscribers
//! has read its `withdrawn` event: p50, p99 and max.
//!
//! `idle N`: the server's VmRSS before and after opening N subscribers that
//! read their heartbeats and nothing else (each counted open once its
//! `reset` arrived, then 5 s more), the server's CPU time over the last 4 s
//! of those (their heartbeats, at the default 500 ms: 2N a second), and the
//! rate of `GET
//! /.well-known/jwks.json` (wrk -t2 -c64 -d5s, if wrk is installed) without
//! them and under them, alternating: without, under, under, without.
//!
//! The subscribers are tasks of this process on one thread of their own;
//! on a small host they share its cores with the server and wrk. A
//! measurement, not a test: it asserts nothing.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

const ADMIN: &str = "operator-token-0123456789abcdef";

/// The server under measurement; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// A server that accepts `subscribers` streams and as many connections
    /// and 1,000 more.
    fn start(subscribers: usize) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nmax_connections = {}\n\n[events]\nmax_subscribers = {}\n",
                subscribers + 1000,
                subscribers.max(1)
            ),
        )
        .expect("write config.toml");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().unwrap().port()
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // SIGNET_BIN: another build of the server, to compare two side by side.
        let bin =
            std::env::var_os("SIGNET_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_signet").into());
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("SIGNET_LISTEN", addr.to_string())
            .env("SIGNET_DATA_DIR", dir.path().join("data"))
            .env("SIGNET_ADMIN_TOKEN", ADMIN)
            .env("SIGNET_LOG", "warn")
            .env("ORGKEYS_MAX", "1000")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start signet");
        let server = Server {
            child,
            addr,
            _dir: dir,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "not listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The server's CPU time so far (user and system), in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("/proc/PID/stat");
        // The fields after the command name, which ends with the last ')':
        // utime and stime are the 12th and 13th of them.
        let after = &stat[stat.rfind(')').expect("a command name") + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// One keep-alive HTTP/1 connection for the writes.
struct Admin {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Admin {
    async fn connect(addr: SocketAddr) -> Admin {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Admin { send }
    }

    async fn call(&mut self, method: &str, path: &str, body: &str) -> (u16, Bytes) {
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "bench")
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let resp = self.send.send_request(req).await.expect("request");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body)
    }

    async fn create(&mut self) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/v1/organisations/acme/keys",
                r#"{"name":"k","algorithm":"ES256"}"#,
            )
            .await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["id"].as_str().unwrap().to_owned()
    }
}

/// Opens a subscriber; it reads until the stream ends, reporting the
/// moment each `withdrawn` event arrived (counted from 1) on `seen`.
async fn subscriber(
    addr: SocketAddr,
    opened: mpsc::UnboundedSender<()>,
    seen: Option<mpsc::UnboundedSender<(usize, Instant)>>,
) {
    let mut tcp = match TcpStream::connect(addr).await {
        Ok(tcp) => tcp,
        Err(e) => panic!("connect: {e}"),
    };
    tcp.write_all(b"GET /v1/events HTTP/1.1\r\nhost: bench\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    // The end of the previous read, so a needle split across reads is found.
    let mut carry: Vec<u8> = Vec::new();
    let mut withdrawn = 0;
    let mut reset = false;
    loop {
        let n = match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let at = Instant::now();
        carry.extend_from_slice(&buf[..n]);
        if !reset && find(&carry, b"event: reset").is_some() {
            reset = true;
            let _ = opened.send(());
        }
        let mut from = 0;
        while let Some(i) = find(&carry[from..], b"event: withdrawn") {
            withdrawn += 1;
            if let Some(seen) = &seen {
                let _ = seen.send((withdrawn, at));
            }
            from += i + 1;
        }
        let keep = carry.len().saturating_sub(20);
        carry.drain(..keep);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Opens `n` subscribers on `rt` and waits until each has its `reset`.
fn open(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    n: usize,
    seen: Option<mpsc::UnboundedSender<(usize, Instant)>>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(1000));
    for _ in 0..n {
        let (tx, seen, gate) = (tx.clone(), seen.clone(), gate.clone());
        rt.spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
            tokio::spawn(subscriber(addr, ready_tx, seen));
            if ready_rx.recv().await.is_some() {
                let _ = tx.send(());
            }
            drop(permit);
        });
    }
    drop(tx);
    rt.block_on(async {
        for i in 0..n {
            tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("only {i} of {n} subscribers opened"))
                .expect("a subscriber ended before its reset");
        }
    });
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn summary(label: &str, mut xs: Vec<f64>) {
    xs.sort_by(f64::total_cmp);
    println!(
        "{label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&xs, 0.5),
        pct(&xs, 0.99),
        xs[xs.len() - 1]
    );
}

fn subscriber_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn fanout(n: usize, rounds: usize) {
    let server = Server::start(n);
    let subs = subscriber_runtime();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    open(&subs, server.addr, n, Some(seen_tx));
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (from_answer, from_send) = client.block_on(async {
        let mut admin = Admin::connect(server.addr).await;
        let (mut from_answer, mut from_send) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let kid = admin.create().await;
            // Let the `published` event reach everyone first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let sent = Instant::now();
            let (status, _) = admin
                .call("DELETE", &format!("/v1/organisations/acme/keys/{kid}"), "")
                .await;
            let answered = Instant::now();
            assert_eq!(status, 204);
            let mut last = None::<Instant>;
            let mut got = 0;
            while got < n {
                let (count, at) = tokio::time::timeout(Duration::from_secs(30), seen.recv())
                    .await
                    .expect("every subscriber gets the event")
                    .expect("subscribers alive");
                assert_eq!(count, round, "one withdrawn event per round");
                got += 1;
                last = Some(last.map_or(at, |l| l.max(at)));
            }
            let last = last.unwrap();
            let signed_ms = |from: Instant| match last.checked_duration_since(from) {
                Some(d) => d.as_secs_f64() * 1e3,
                None => -(from - last).as_secs_f64() * 1e3,
            };
            from_answer.push(signed_ms(answered));
            from_send.push(signed_ms(sent));
        }
        (from_answer, from_send)
    });
    println!("{n} subscribers, {rounds} DELETEs, release build, sled");
    summary(
        "DELETE answered -> last subscriber has `withdrawn`",
        from_answer,
    );
    summary(
        "DELETE sent     -> last subscriber has `withdrawn`",
        from_send,
    );
    drop(subs);
}

/// wrk's requests per second for the global JWK Set, if wrk is installed.
fn jwks_rate(server: &Server) -> Option<f64> {
    let out = Command::new("wrk")
        .args(["-t2", "-c64", "-d5s"])
        .arg(server.url("/.well-known/jwks.json"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The kernel's clock ticks a second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn idle(n: usize) {
    let server = Server::start(n);
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client.block_on(async {
        let mut admin = Admin::connect(server.addr).await;
        for _ in 0..5 {
            admin.create().await;
        }
    });
    // Warm up: the JWK Set built, one subscriber come and gone.
    let without_1 = jwks_rate(&server);
    {
        let subs = subscriber_runtime();
        open(&subs, server.addr, 1, None);
    }
    std::thread::sleep(Duration::from_secs(1));
    let before = server.rss_kib();
    let subs = subscriber_runtime();
    let started = Instant::now();
    open(&subs, server.addr, n, None);
    let opened_in = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    // What their heartbeats cost the server: CPU time over 4 s of them.
    let (cpu_from, cpu_started) = (server.cpu_ticks(), Instant::now());
    std::thread::sleep(Duration::from_secs(4));
    let cpu_share = (server.cpu_ticks() - cpu_from) as f64
        / clock_ticks_per_second()
        / cpu_started.elapsed().as_secs_f64();
    let after = server.rss_kib();
    let under_1 = jwks_rate(&server);
    let under_2 = jwks_rate(&server);
    let after_load = server.rss_kib();
    drop(subs);
    std::thread::sleep(Duration::from_secs(2));
    let without_2 = jwks_rate(&server);
    let added = after.saturating_sub(before);
    println!("{n} idle subscribers, release build, sled (opened in {opened_in:.1?})");
    println!(
        "VmRSS before {:.1} MiB, with them {:.1} MiB: {:.1} MiB added, {:.2} KiB each; after wrk under them {:.1} MiB",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        added as f64 / 1024.0,
        added as f64 / n as f64,
        after_load as f64 / 1024.0,
    );
    println!(
        "server CPU under them, idle: {:.1} % of one core ({:.1} µs a heartbeat at {} a second)",
        cpu_share * 100.0,
        cpu_share * 1e6 / (n as f64 * 2.0),
        n * 2
    );
    match (without_1, under_1, under_2, without_2) {
        (Some(w1), Some(u1), Some(u2), Some(w2)) => println!(
            "GET /.well-known/jwks.json, wrk -t2 -c64 -d5s: without {w1:.0} and {w2:.0} req/s, under them {u1:.0} and {u2:.0} req/s: {:.2}x",
            (u1 + u2) / (w1 + w2)
        ),
        _ => println!("wrk is not installed: no JWK Set rates"),
    }
}

fn main() {
    // cargo bench passes --bench; anything starting with - is cargo's.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let num =
        |i: usize, default: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("idle") => idle(num(1, 10_000)),
        Some("fanout") | None => fanout(num(1, 1000), num(2, 200)),
        Some(other) => {
            eprintln!("unknown mode {other}: fanout N ROUNDS | idle N");
            std::process::exit(2);
        }
    }
}
