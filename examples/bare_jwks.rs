//! The ceiling for serving a JWK Set on signet's stack: a bare hyper server
//! (the same tokio runtime and `hyper_util` auto builder as signet) that
//! answers every request with one file's bytes, and does nothing else.
//! `benches/load.sh` builds and runs it beside signet.
//!
//!   cargo run --release --example bare_jwks -- FILE 127.0.0.1:PORT
#![forbid(unsafe_code)]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(file), Some(addr)) = (args.next(), args.next()) else {
        return Err("usage: bare_jwks FILE ADDRESS".into());
    };
    let body = Bytes::from(std::fs::read(&file).map_err(|e| format!("cannot read {file}: {e}"))?);
    let listener = TcpListener::bind(&addr).await?;
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (body, builder) = (body.clone(), builder.clone());
        tokio::spawn(async move {
            let service = service_fn(move |_req| {
                let mut answer = Response::new(Full::new(body.clone()));
                answer
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                async move { Ok::<_, Infallible>(answer) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
