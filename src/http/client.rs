//! A minimal HTTP/1.1 client for the command line (`signet verify --server`
//! and `--jwks URL`). Plain `http://` only: signet itself serves plain HTTP
//! behind whatever terminates TLS.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Why a request to a server did not produce a response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not an `http://` URL.
    #[error("{0:?} is not an http:// URL (signet's client does not speak TLS; use a file or a local address)")]
    BadUrl(String),
    /// Connecting or talking to the server failed.
    #[error("could not reach {url}: {cause}")]
    Unreachable { url: String, cause: String },
    /// No answer within the deadline.
    #[error("{0} did not answer within 10 seconds")]
    Timeout(String),
}

/// A response: whether it was a 2xx, its status line, and its body.
pub struct Answer {
    pub ok: bool,
    pub status: String,
    pub body: Bytes,
}

/// `GET url`.
pub async fn get(url: &str) -> Result<Answer, ClientError> {
    send(Method::GET, url, None).await
}

/// `POST url` with a JSON body.
pub async fn post_json(url: &str, json: Vec<u8>) -> Result<Answer, ClientError> {
    send(Method::POST, url, Some(json)).await
}

async fn send(method: Method, url: &str, json: Option<Vec<u8>>) -> Result<Answer, ClientError> {
    let uri: hyper::Uri = url.parse().map_err(|_| ClientError::BadUrl(url.into()))?;
    if uri.scheme_str() != Some("http") {
        return Err(ClientError::BadUrl(url.into()));
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder().method(method).uri(uri);
    if json.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(json.map(Bytes::from).unwrap_or_default()))
        .map_err(|_| ClientError::BadUrl(url.into()))?;
    let unreachable = |cause: String| ClientError::Unreachable {
        url: url.into(),
        cause,
    };
    let exchange = async {
        let res = client
            .request(req)
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        let status: StatusCode = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Answer {
            ok: status.is_success(),
            status: status.to_string(),
            body: body.to_bytes(),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| ClientError::Timeout(url.into()))?
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
