//! The only module that knows hyper: the accept loop with graceful
//! shutdown, the route table, and the mapping of every outcome to a
//! response. Also the small HTTP client `signet verify --server` uses.

mod audit;
mod bodies;
mod body;
mod call;
mod cancel;
pub mod client;
mod cluster;
mod console;
mod deadline;
mod detect;
mod events;
mod followers;
mod jwks;
mod keys;
mod lifecycle;
mod ops;
mod reply;
mod request_id;
mod routes;
pub mod tls;
pub mod upstream;
mod verify;

#[cfg(feature = "test-hooks")]
pub use routes::fuzz_parsers;
pub use routes::paths;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::pin::Pin;

use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher as GracefulWatcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;

use crate::auth::OperatorToken;
use crate::config::Config;
use crate::metrics::{ReasonLabel, RouteSeries};
use crate::service::Signet;

/// What every request can reach: the service, the configuration, the
/// operator token and prepared header values.
pub struct ServerState {
    pub signet: Signet,
    pub config: Config,
    pub operator: OperatorToken,
    jwks_cache_control: HeaderValue,
    tls: Option<Arc<tls::Tls>>,
    series: RouteSeries,
    /// The change feed's streams and the task that wakes them.
    feed_hub: events::Hub,
}

impl ServerState {
    pub fn new(signet: Signet, config: Config, operator: OperatorToken) -> ServerState {
        let jwks_cache_control =
            HeaderValue::try_from(format!("public, max-age={}", config.jwks.max_age_secs))
                .expect("a number is a valid header value");
        ServerState {
            signet,
            config,
            operator,
            jwks_cache_control,
            tls: None,
            series: RouteSeries::new(routes::rows()),
            feed_hub: events::Hub::default(),
        }
    }

    /// Serve TLS with this pair instead of plain HTTP.
    pub fn with_tls(mut self, tls: tls::Tls) -> ServerState {
        self.tls = Some(Arc::new(tls));
        self
    }
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and
/// gives in-flight requests up to the configured grace period.
pub async fn serve(
    listener: TcpListener,
    app: Arc<ServerState>,
    shutdown: impl Future<Output = ()>,
) {
    let server = &app.config.server;
    raise_file_limit(server.max_connections);
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        // The socket wrapper keeps the header clock (deadline.rs).
        .header_read_timeout(None);
    let mut http2 = http2::Builder::new(cancel::StreamExecutor);
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(server.http2_keepalive_interval_secs))
        .keep_alive_timeout(Duration::from_secs(server.http2_keepalive_timeout_secs));
    let builders = Arc::new(Builders { http1, http2 });
    let limits = deadline::Limits::from_config(&app.config);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(server.max_connections));
    let reloaders = match &app.tls {
        Some(tls) => tls.spawn_reloaders(),
        None => tls::ignore_sighup(),
    };
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("semaphore never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = deadline::Activity::new();
        let connection = Connection {
            handler: Handler(Arc::new(Peer {
                app: app.clone(),
                activity: activity.clone(),
                address: peer,
            })),
            builders: builders.clone(),
            watcher: graceful.watcher(),
        };
        // Detection, handshakes and the first headers are bounded by the
        // socket wrapper; so are idle keep-alive and stalled writes.
        let io = deadline::Guarded::new(stream, activity.clone(), limits);
        let ended = Ended {
            app: app.clone(),
            activity,
            _permit: permit,
        };
        // Plain and TLS connections are separate tasks: a plain one does
        // not carry the room a TLS session takes.
        match &app.tls {
            None => {
                tokio::spawn(async move { ended.record(connection.serve(io).await) });
            }
            Some(tls) => {
                let tls = tls.clone();
                tokio::spawn(async move {
                    let result = match tls.acceptor().accept(io).await {
                        Ok(io) => connection.serve(io).await,
                        Err(e) => Err(e.into()),
                    };
                    ended.record(result)
                });
            }
        }
    }
    for task in reloaders {
        task.abort();
    }
    drop(listener);
    app.feed_hub.end_all();
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    let grace = app.config.shutdown_grace();
    if timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            ?grace,
            "in-flight requests did not finish within the grace period"
        );
    }
}

/// hyper's settings for each protocol.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<cancel::StreamExecutor>,
}

type ConnectionError = Box<dyn std::error::Error + Send + Sync>;

/// One accepted connection, ready to be served.
struct Connection {
    handler: Handler,
    builders: Arc<Builders>,
    watcher: GracefulWatcher,
}

impl Connection {
    /// Serves HTTP/1 or HTTP/2 on `io`, whichever the client speaks, until
    /// the connection ends.
    async fn serve<I>(self, io: I) -> Result<(), ConnectionError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (protocol, io) = detect::detect(io).await?;
        let io = TokioIo::new(io);
        match protocol {
            detect::Protocol::Http1 => {
                let conn = self.builders.http1.serve_connection(io, self.handler);
                self.watcher.watch(conn).await?;
            }
            // Boxed: an HTTP/1 connection does not carry its room.
            detect::Protocol::Http2 => {
                let conn = self.builders.http2.serve_connection(io, self.handler);
                Box::pin(self.watcher.watch(conn)).await?;
            }
        }
        Ok(())
    }
}

/// What a connection holds until it ends: its place among the
/// connections, and what tells why it ended.
struct Ended {
    app: Arc<ServerState>,
    activity: Arc<deadline::Activity>,
    _permit: OwnedSemaphorePermit,
}

impl Ended {
    /// Counts the closure by its reason, if a deadline ended it.
    fn record(self, result: Result<(), ConnectionError>) {
        let reason = self.activity.closed_for().or_else(|| {
            let e = result.as_ref().err()?;
            deadline::hyper_reason(e.as_ref())
        });
        if let Some(reason) = reason {
            self.app
                .signet
                .metrics
                .connections_closed
                .get_or_create(&ReasonLabel {
                    reason: reason.label(),
                })
                .inc();
        }
    }
}

/// Each request of a connection.
#[derive(Clone)]
struct Handler(Arc<Peer>);

/// What every request of one connection shares. A request clones this
/// connection's `Arc`, not the server's: two cores serving two connections
/// then write no shared reference count.
struct Peer {
    app: Arc<ServerState>,
    activity: Arc<deadline::Activity>,
    address: SocketAddr,
}

impl Service<hyper::Request<Incoming>> for Handler {
    type Response = reply::Reply;
    type Error = Infallible;
    /// Boxed: hyper keeps room for one request's future for as long as
    /// the connection lasts, and a boxed one takes a pointer's.
    type Future = Pin<Box<dyn Future<Output = Result<reply::Reply, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let peer = self.0.clone();
        let in_flight = peer.activity.begin(req.version());
        // Boxed once here: the request then moves through the futures
        // below as a pointer, not as its few hundred bytes.
        let req = Box::new(req);
        Box::pin(async move { Ok(handle_request(&peer, req, in_flight).await) })
    }
}

/// A request's id, echoed or minted: a constant, so that no request parses
/// the name.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Descriptors a server needs besides its connections: listeners, the
/// store's files, logs, outgoing connections.
const SPARE_FILES: u64 = 256;

/// Raises the soft limit on open files to the hard limit when it is below
/// `connections` plus some: a default soft limit of 1024 would refuse
/// connections long before `server.max_connections`.
#[cfg(unix)]
fn raise_file_limit(connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let need = u64::try_from(connections)
        .unwrap_or(u64::MAX)
        .saturating_add(SPARE_FILES);
    let limit = getrlimit(Resource::Nofile);
    let Some(soft) = limit.current.filter(|&soft| soft < need) else {
        return;
    };
    let raised = Rlimit {
        current: limit.maximum.or(Some(need)),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            from = soft,
            to = raised.current,
            "raised the open files limit to its hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, soft, "could not raise the open files limit"),
    }
    if let Some(hard) = limit.maximum.filter(|&hard| hard < need) {
        tracing::warn!(
            hard,
            connections,
            "the hard limit on open files is below server.max_connections plus {SPARE_FILES}: \
             connections beyond it fail to be accepted"
        );
    }
}

#[cfg(not(unix))]
fn raise_file_limit(_connections: usize) {}

/// Routes one request and logs and counts it.
async fn handle_request(
    peer: &Peer,
    req: Box<hyper::Request<hyper::body::Incoming>>,
    in_flight: deadline::InFlight,
) -> reply::Reply {
    let app = &*peer.app;
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(X_REQUEST_ID)
        .filter(|v| v.len() <= 128)
        .cloned()
        .unwrap_or_else(request_id::next);
    let method = req.method().clone();
    // Only a request log line needs its own copy of the path; at `info`,
    // only a request that may carry a credential has one.
    let logged = tracing::enabled!(tracing::Level::DEBUG)
        || (tracing::enabled!(tracing::Level::INFO)
            && req.headers().contains_key(hyper::header::AUTHORIZATION));
    let path = logged.then(|| req.uri().path().to_owned());
    let routes::Answered {
        route,
        row,
        mut reply,
        credited,
    } = routes::dispatch(app, req, peer.address, &peer.activity).await;
    // One clock read ends both the latency and the request in flight.
    let ended = Instant::now();
    in_flight.end_at(ended);
    let elapsed = ended - started;
    let status = reply.status().as_u16();
    let metrics = &app.signet.metrics;
    app.series
        .observe(metrics, row, route, status, elapsed.as_secs_f64());
    // One line per request at `info` only for a valid credential: an
    // anonymous client (the JWK Sets, verification, every 401) must not
    // cost a log write per request. Its requests are at `debug`; the
    // metrics count them all, and 401s are sampled at `warn`.
    macro_rules! request_line {
        ($level:expr) => {
            tracing::event!(
                $level,
                request_id = request_id.to_str().unwrap_or("-"),
                %method,
                path = %path.as_deref().unwrap_or_default(),
                status,
                micros = elapsed.as_micros() as u64,
                client = %peer.address.ip(),
                "request"
            )
        };
    }
    if credited {
        request_line!(tracing::Level::INFO);
    } else {
        request_line!(tracing::Level::DEBUG);
    }
    reply.headers_mut().insert(X_REQUEST_ID, request_id);
    reply
}
