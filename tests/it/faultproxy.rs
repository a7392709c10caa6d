//! A TCP proxy that injects network faults between signet and PostgreSQL,
//! switchable while it runs: pass bytes through; drop them silently (every
//! connection stays open but nothing is forwarded either way, no RST, no
//! FIN; held bytes go through once the path heals, as TCP would retransmit
//! them); delay each chunk; cut (close both sides of every connection, and
//! of new ones); hold a client's `COMMIT` (the server waits inside its
//! transaction); or forward a `COMMIT` and then drop everything, on every
//! connection, as if the path failed just after it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Silently drop: forward nothing, close nothing.
    Drop,
    /// Forward each chunk after this long.
    Delay(Duration),
    /// Close both sides of every connection, and new ones at once.
    Cut,
    /// Hold every client chunk holding a `COMMIT`, and what follows it on
    /// that connection: the server sits inside the transaction.
    StallBeforeCommit,
    /// Forward the first `COMMIT`, then switch to `Drop`: its reply, and
    /// everything else, is held.
    StallAfterCommit,
}

pub struct FaultProxy {
    pub port: u16,
    mode: Arc<watch::Sender<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on a free local port in front of `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(watch::channel(Mode::Pass).0);
        let shared = mode.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(connection(client, upstream, shared.clone()));
            }
        });
        FaultProxy { port, mode, task }
    }

    /// `url` (a `postgres://` URL of the upstream) through this proxy.
    pub fn url(&self, url: &str, upstream: u16) -> String {
        url.replace(
            &format!("127.0.0.1:{upstream}/"),
            &format!("127.0.0.1:{}/", self.port),
        )
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Ends every connection too.
        self.set(Mode::Cut);
    }
}

async fn connection(client: TcpStream, upstream: u16, mode: Arc<watch::Sender<Mode>>) {
    let mut watch = mode.subscribe();
    // A dropped path does not connect either (until it heals).
    let Ok(now) = watch.wait_for(|m| *m != Mode::Drop).await.map(|m| *m) else {
        return;
    };
    if now == Mode::Cut {
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut cut = mode.subscribe();
    tokio::select! {
        () = pump(client_read, server_write, mode.clone(), true, stalled.clone()) => {}
        () = pump(server_read, client_write, mode.clone(), false, stalled) => {}
        _ = cut.wait_for(|m| *m == Mode::Cut) => {}
    }
}

/// A simple-protocol `COMMIT`: `Q`, length 11, the text and its NUL.
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mode: Arc<watch::Sender<Mode>>,
    from_client: bool,
    stalled: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    let mut watch = mode.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let commit = from_client && chunk.windows(COMMIT.len()).any(|w| w == COMMIT);
        let sending = loop {
            let now = *watch.borrow_and_update();
            let hold = match now {
                Mode::Cut => return,
                Mode::Drop => true,
                Mode::StallBeforeCommit => commit || stalled.load(SeqCst),
                _ => false,
            };
            if !hold {
                if let Mode::Delay(by) = now {
                    tokio::time::sleep(by).await;
                }
                break now;
            }
            if now == Mode::StallBeforeCommit {
                stalled.store(true, SeqCst);
            }
            if watch.changed().await.is_err() {
                return;
            }
        };
        if commit && sending == Mode::StallAfterCommit {
            // Before the COMMIT reaches the server: its reply is held.
            mode.send_replace(Mode::Drop);
        }
        if to.write_all(chunk).await.is_err() {
            return;
        }
    }
}
