//! The only module that knows hyper: the accept loop with graceful
//! shutdown, the route table, and the mapping of every outcome to a
//! response. Also the small HTTP client `signet verify --server` uses.

mod audit;
mod bodies;
mod body;
mod call;
pub mod client;
mod cluster;
mod console;
mod deadline;
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

use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The socket wrapper keeps the header clock (deadline.rs).
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(server.http2_keepalive_interval_secs))
        .keep_alive_timeout(Duration::from_secs(server.http2_keepalive_timeout_secs));
    let builder = Arc::new(builder);
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
        let service = {
            let (app, activity) = (app.clone(), activity.clone());
            service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let app = app.clone();
                let in_flight = activity.begin(req.version());
                // A stream (the change feed) keeps its connection busy.
                req.extensions_mut().insert(activity.clone());
                async move {
                    let reply = handle_request(&app, req, peer, in_flight).await;
                    Ok::<_, Infallible>(reply)
                }
            })
        };
        let (builder, watcher, app) = (builder.clone(), graceful.watcher(), app.clone());
        tokio::spawn(async move {
            // Detection, handshakes and the first headers are bounded by the
            // socket wrapper; so are idle keep-alive and stalled writes.
            let io = deadline::Guarded::new(stream, activity.clone(), limits);
            let result = match &app.tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(io), service);
                    watcher.watch(conn).await
                }
                Some(tls) => match tls.acceptor().accept(io).await {
                    Ok(io) => {
                        let conn = builder.serve_connection(TokioIo::new(io), service);
                        watcher.watch(conn).await
                    }
                    Err(e) => Err(e.into()),
                },
            };
            let reason = activity.closed_for().or_else(|| {
                let e = result.as_ref().err()?;
                deadline::hyper_reason(e.as_ref())
            });
            if let Some(reason) = reason {
                app.signet
                    .metrics
                    .connections_closed
                    .get_or_create(&ReasonLabel {
                        reason: reason.label(),
                    })
                    .inc();
            }
            drop(permit);
        });
    }
    for task in reloaders {
        task.abort();
    }
    drop(listener);
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    let grace = app.config.shutdown_grace();
    if timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            ?grace,
            "in-flight requests did not finish within the grace period"
        );
    }
}

/// Routes one request and logs and counts it.
async fn handle_request(
    app: &ServerState,
    req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    in_flight: deadline::InFlight,
) -> reply::Reply {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .filter(|v| v.len() <= 128)
        .cloned()
        .unwrap_or_else(request_id::next);
    let method = req.method().clone();
    // Only a request log line needs its own copy of the path.
    let path = tracing::enabled!(tracing::Level::INFO).then(|| req.uri().path().to_owned());
    let (route, row, mut reply) = routes::dispatch(app, req, peer).await;
    // One clock read ends both the latency and the request in flight.
    let ended = Instant::now();
    in_flight.end_at(ended);
    let elapsed = ended - started;
    let status = reply.status().as_u16();
    let metrics = &app.signet.metrics;
    app.series
        .observe(metrics, row, route, status, elapsed.as_secs_f64());
    tracing::info!(
        request_id = request_id.to_str().unwrap_or("-"),
        %method,
        path = %path.as_deref().unwrap_or_default(),
        status,
        micros = elapsed.as_micros() as u64,
        client = %peer.ip(),
        "request"
    );
    reply.headers_mut().insert("x-request-id", request_id);
    reply
}
