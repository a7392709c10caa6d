//! A follower's link to its upstream signet, over hyper's client: the
//! change feed read as a stream (`GET /v1/events`, resumed with
//! `Last-Event-ID`) into `follower::Pushed`, and the acknowledgements
//! (`POST /v1/followers/ack`) whose answers keep the follower fresh. What
//! the events and answers mean is `follower`'s; when to acknowledge is
//! the replica's (`replica`, the same as an instance's).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use super::client::{connect_tls, tls_config, ClientError};
use crate::follower::{Ack, AckAnswer, AckFailure, Pushed, Refused, SseParser, Transport};
use crate::logging::Outage;

/// Why a stream ended when the acknowledgements found another run of the
/// upstream than the stream's.
const RESTART: &str = "the upstream restarted";

/// The longest event accepted from the upstream (a `reset` of every key).
const MAX_EVENT: usize = 1 << 30;

/// Why a follower cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// No follower token is configured.
    #[error(
        "a follower needs its follower token: set SIGNET_UPSTREAM_TOKEN or upstream.token_file"
    )]
    NoToken,
    /// The token file cannot be read.
    #[error("cannot read the follower token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The upstream refused the token.
    #[error("the upstream {url} refused the follower token from {from} ({status}): check that its followers.token_sha256 or SIGNET_FOLLOWER_TOKEN holds this token")]
    Refused {
        url: String,
        from: String,
        status: String,
    },
    /// The upstream's certificate is not trusted here.
    #[error("the follower cannot follow its upstream {url}: {why}")]
    Untrusted { url: String, why: String },
    /// The upstream URL or CA certificate cannot be used.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// How to reach the upstream.
pub struct Link {
    base: String,
    authority: hyper::http::uri::Authority,
    token: String,
    /// Where the token came from, for messages (never the token).
    token_from: String,
    cacert: Option<PathBuf>,
    tls: Option<Arc<rustls::ClientConfig>>,
    max_staleness: Duration,
    /// The acknowledgements' connection, kept between them (one is in
    /// flight at a time).
    acks: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl Link {
    pub fn new(config: &crate::config::Config) -> Result<Link, LinkError> {
        let up = config.upstream.clone().unwrap_or_default();
        let (token, token_from) = match (&up.token, &up.token_file) {
            (Some(t), _) => (t.expose().to_owned(), "SIGNET_UPSTREAM_TOKEN".to_owned()),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| LinkError::TokenFile {
                        path: path.clone(),
                        source,
                    })?;
                (
                    text.trim().to_owned(),
                    format!("upstream.token_file {}", path.display()),
                )
            }
            (None, None) => return Err(LinkError::NoToken),
        };
        if token.is_empty() {
            return Err(LinkError::NoToken);
        }
        let base = up.url.trim_end_matches('/').to_owned();
        let uri: hyper::Uri = base
            .parse()
            .map_err(|_| ClientError::BadUrl(base.clone()))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| ClientError::BadUrl(base.clone()))?;
        let tls = match uri.scheme_str() {
            Some("https") => Some(tls_config(up.cacert.as_deref())?),
            Some("http") => None,
            _ => return Err(ClientError::BadUrl(base).into()),
        };
        Ok(Link {
            base,
            authority,
            token,
            token_from,
            cacert: up.cacert,
            tls,
            max_staleness: Duration::from_millis(config.cluster.max_staleness_ms),
            acks: Mutex::new(None),
        })
    }

    /// The start-up error for a token the upstream refused, naming where
    /// the token came from (never the token), or for its certificate.
    pub fn refused(&self, refused: Refused) -> LinkError {
        let url = self.base.clone();
        match refused {
            Refused::Token(status) => LinkError::Refused {
                url,
                from: self.token_from.clone(),
                status,
            },
            Refused::Untrusted(why) => LinkError::Untrusted { url, why },
        }
    }

    /// A new HTTP/1.1 connection to the upstream; [`AckFailure::Untrusted`] if the
    /// upstream's certificate is refused or it does not speak TLS.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, AckFailure> {
        let other = |e: &dyn std::fmt::Display| AckFailure::Other(e.to_string());
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let default_port = if self.tls.is_some() { 443 } else { 80 };
        let port = self.authority.port_u16().unwrap_or(default_port);
        let (sender, conn) = match &self.tls {
            None => {
                let tcp = TcpStream::connect((host, port))
                    .await
                    .map_err(|e| other(&e))?;
                let _ = tcp.set_nodelay(true);
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| other(&e))?;
                (
                    sender,
                    tokio::spawn(async move { conn.await.map_err(|e| e.to_string()) }),
                )
            }
            Some(config) => {
                let tls = connect_tls(
                    &self.base,
                    &self.authority,
                    config.clone(),
                    self.cacert.as_deref(),
                )
                .await
                .map_err(|e| match e {
                    ClientError::Certificate { .. } => AckFailure::Untrusted(
                        "its TLS certificate is trusted neither by the system's roots nor by upstream.cacert (set upstream.cacert in config.toml to the certificate of the CA that signed it)".into(),
                    ),
                    ClientError::NotTls { .. } => AckFailure::Untrusted(
                        "it does not answer TLS there (use an http:// URL)".into(),
                    ),
                    e => other(&e),
                })?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| other(&e))?;
                (
                    sender,
                    tokio::spawn(async move { conn.await.map_err(|e| e.to_string()) }),
                )
            }
        };
        drop(conn);
        Ok(sender)
    }

    fn request(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.authority.as_str())
    }
}

impl Transport for Link {
    fn url(&self) -> &str {
        &self.base
    }

    async fn follow(self: Arc<Self>, pushed: Arc<Pushed>) {
        follow(&self, &pushed).await
    }

    async fn acknowledge(&self, ack: &Ack<'_>) -> Result<AckAnswer, AckFailure> {
        let body = serde_json::to_vec(ack).map_err(|e| AckFailure::Other(e.to_string()))?;
        let req = self
            .request(Method::POST, "/v1/followers/ack")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| AckFailure::Other(e.to_string()))?;
        let conn = self.acks.lock().expect("acks lock poisoned").take();
        let exchange = async {
            let mut sender = match conn {
                Some(s) if !s.is_closed() => s,
                _ => self.connect().await?,
            };
            sender
                .ready()
                .await
                .map_err(|e| AckFailure::Other(e.to_string()))?;
            let res = sender
                .send_request(req)
                .await
                .map_err(|e| AckFailure::Other(e.to_string()))?;
            let status = res.status();
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| AckFailure::Other(e.to_string()))?
                .to_bytes();
            *self.acks.lock().expect("acks lock poisoned") = Some(sender);
            match status {
                StatusCode::OK => serde_json::from_slice::<AckAnswer>(&body).map_err(|e| {
                    AckFailure::Other(format!("an answer this follower cannot read: {e}"))
                }),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    Err(AckFailure::Refused(status.to_string()))
                }
                other => Err(AckFailure::Other(format!(
                    "{other}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                ))),
            }
        };
        match tokio::time::timeout(self.max_staleness.max(Duration::from_millis(500)), exchange)
            .await
        {
            Ok(answer) => answer,
            // The connection is dropped with the exchange.
            Err(_) => Err(AckFailure::Other("no answer in time".into())),
        }
    }
}

/// Reads the upstream's feed, reconnecting with `Last-Event-ID` after a
/// short pause when it ends.
async fn follow(link: &Link, pushed: &Pushed) {
    let mut pause = Duration::from_millis(50);
    let mut resume = true;
    let mut outage = Outage::default();
    loop {
        let last = if resume { pushed.last_event_id() } else { None };
        let started = Instant::now();
        let result = read_stream(link, pushed, last, &mut outage).await;
        pushed.lost();
        resume = true;
        match result {
            Ok(()) => {}
            // Straight to a new stream, from a reset.
            Err(why) if why == RESTART => {
                resume = false;
                continue;
            }
            Err(why) => {
                let what = format!("the change feed of the upstream {} ended", link.base);
                outage.failed(&what, &why, Instant::now());
            }
        }
        if started.elapsed() > Duration::from_secs(5) {
            pause = Duration::from_millis(50);
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = pushed.restart_asked() => resume = false,
        }
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Reads one stream until it ends; `outage` ends when it is answered.
async fn read_stream(
    link: &Link,
    pushed: &Pushed,
    last: Option<u64>,
    outage: &mut Outage,
) -> Result<(), String> {
    let mut sender = link.connect().await.map_err(|e| match e {
        AckFailure::Other(why) => format!("could not connect: {why}"),
        refused => refused.to_string(),
    })?;
    // With `event: held`: changes to keys the upstream withholds, so that
    // this follower refuses their tokens as the upstream does.
    let mut req = link
        .request(Method::GET, "/v1/events?withheld=true")
        .header(hyper::header::ACCEPT, "text/event-stream")
        .header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", link.token),
        );
    if let Some(last) = last {
        req = req.header("last-event-id", last.to_string());
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let res = tokio::time::timeout(
        link.max_staleness.max(Duration::from_secs(1)),
        sender.send_request(req),
    )
    .await
    .map_err(|_| "no answer in time".to_owned())?
    .map_err(|e| e.to_string())?;
    if res.status() != StatusCode::OK {
        return Err(format!("GET /v1/events answered {}", res.status()));
    }
    outage.ended("reading the upstream's change feed again", Instant::now());
    let mut body = res.into_body();
    let mut parser = SseParser::new(MAX_EVENT);
    // Heartbeats come every events.heartbeat_ms: a silent stream is dead.
    let silence = link.max_staleness.max(Duration::from_secs(2));
    loop {
        let frame = tokio::select! {
            frame = tokio::time::timeout(silence, body.frame()) => frame,
            () = pushed.restart_asked() => return Err(RESTART.into()),
        };
        let frame = match frame {
            Err(_) => return Err("no event nor heartbeat in time".into()),
            Ok(None) => return Ok(()),
            Ok(Some(frame)) => frame.map_err(|e| e.to_string())?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for event in parser.push(&data).map_err(|e| e.to_string())? {
            pushed.push(&event).map_err(|e| e.to_string())?;
        }
    }
}
