//! The only module that knows hyper: the accept loop with graceful
//! shutdown, the route table, and the mapping of every outcome to a
//! response. Also the small HTTP client `signet verify --server` uses.

mod body;
pub mod client;
mod lifecycle;
mod reply;
mod routes;

#[doc(hidden)]
pub use routes::fuzz_parsers;

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
use crate::metrics::{RequestLabels, RouteLabel};
use crate::service::Signet;

/// What every request can reach.
pub struct App {
    pub signet: Signet,
    pub config: Config,
    pub operator: OperatorToken,
    jwks_cache_control: HeaderValue,
}

impl App {
    pub fn new(signet: Signet, config: Config, operator: OperatorToken) -> App {
        let jwks_cache_control =
            HeaderValue::try_from(format!("public, max-age={}", config.jwks.max_age_secs))
                .expect("a number is a valid header value");
        App {
            signet,
            config,
            operator,
            jwks_cache_control,
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and
/// gives in-flight requests up to the configured grace period.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.header_read_timeout());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let first_bytes = app.config.header_read_timeout();
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(app.config.server.max_connections));
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
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(answer(&app, req, peer).await) }
        });
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            // auto::Builder waits for a client's first bytes (to tell HTTP/1
            // from HTTP/2) with no timer of its own: a connection that never
            // speaks would hold its permit forever.
            // (`readable()` may report ready before any byte arrives; a peek
            // does not.)
            let mut first = [0u8; 1];
            if !matches!(
                timeout(first_bytes, stream.peek(&mut first)).await,
                Ok(Ok(1))
            ) {
                return;
            }
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let _ = watcher.watch(conn).await;
            drop(permit);
        });
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
async fn answer(
    app: &App,
    req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> reply::Reply {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .filter(|v| v.len() <= 128)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::try_from(ulid::Ulid::new().to_string()).expect("a ULID is a valid header")
        });
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (route, mut reply) = routes::handle(app, req, peer).await;
    let elapsed = started.elapsed();
    let status = reply.status().as_u16();
    app.signet
        .metrics
        .requests
        .get_or_create(&RequestLabels { route, status })
        .inc();
    app.signet
        .metrics
        .latency
        .get_or_create(&RouteLabel { route })
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        request_id = request_id.to_str().unwrap_or("-"),
        %method,
        path = %path,
        status,
        micros = elapsed.as_micros() as u64,
        client = %peer.ip(),
        "request"
    );
    reply.headers_mut().insert("x-request-id", request_id);
    reply
}
