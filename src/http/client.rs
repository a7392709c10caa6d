//! A minimal HTTP/1.1 client for the command line (`signet verify --server`
//! and `--jwks URL`), over `http://` or `https://`. TLS trusts the system's
//! roots (the operating system's store, through rustls-native-certs, so that
//! a CA an operator installed there counts) plus an optional `--cacert`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

/// Why a request to a server did not produce a response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not an `http://` or `https://` URL.
    #[error("{0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    /// The URL has no scheme (`127.0.0.1:8081`).
    #[error("{0:?} has no scheme: write http://{0} (or https://{0} for a server with TLS)")]
    NoScheme(String),
    /// An https:// URL names a server that answers without TLS.
    #[error("{url} does not speak TLS (it answered in plain HTTP): use http:// for it, or configure [server.tls] on the server")]
    NotTls { url: String },
    /// The server's certificate is not trusted or not valid for it.
    #[error(
        "the TLS certificate of {url} was refused: {problem} (trusting the system's roots{extra})"
    )]
    Certificate {
        url: String,
        problem: String,
        extra: String,
    },
    /// The `--cacert` file cannot be used.
    #[error("cannot use the CA certificate file {path}: {reason}")]
    CaCert { path: PathBuf, reason: String },
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
    /// The status code, e.g. 401.
    pub code: u16,
}

/// A request method, named without hyper's types (which stay inside `http`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    Patch,
    Delete,
}

impl ClientError {
    /// Whether the server was reached but its certificate refused.
    pub fn is_certificate(&self) -> bool {
        matches!(self, ClientError::Certificate { .. })
    }

    /// Whether nothing answered at the address: the server may be down.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::Timeout(_)
        )
    }
}

/// `GET url`; `cacert` is trusted besides the system's roots.
pub async fn get(url: &str, cacert: Option<&Path>) -> Result<Answer, ClientError> {
    send(Method::GET, url, None, cacert, None).await
}

/// `POST url` with a JSON body.
pub async fn post_json(
    url: &str,
    json: Vec<u8>,
    cacert: Option<&Path>,
) -> Result<Answer, ClientError> {
    send(Method::POST, url, Some(json), cacert, None).await
}

/// `verb url` with `Authorization: Bearer {token}` and, if given, a JSON
/// body: a call to the management API. The caller checks that `token` is
/// visible ASCII; one that is not is refused here as it could not be sent.
pub async fn call_with_token(
    verb: Verb,
    url: &str,
    token: &str,
    json: Option<Vec<u8>>,
    cacert: Option<&Path>,
) -> Result<Answer, ClientError> {
    let method = match verb {
        Verb::Get => Method::GET,
        Verb::Post => Method::POST,
        Verb::Patch => Method::PATCH,
        Verb::Delete => Method::DELETE,
    };
    send(method, url, json, cacert, Some(token)).await
}

async fn send(
    method: Method,
    url: &str,
    json: Option<Vec<u8>>,
    cacert: Option<&Path>,
    bearer: Option<&str>,
) -> Result<Answer, ClientError> {
    if !url.contains("://") {
        // `127.0.0.1:8081/v1/verify`: name what the user typed.
        let typed = url.split('/').next().unwrap_or(url);
        return Err(ClientError::NoScheme(typed.into()));
    }
    let uri: hyper::Uri = url.parse().map_err(|_| ClientError::BadUrl(url.into()))?;
    let https = match uri.scheme_str() {
        Some("http") => None,
        Some("https") => Some(tls_config(cacert)?),
        _ => return Err(ClientError::BadUrl(url.into())),
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| ClientError::BadUrl(url.into()))?;
    let mut req = Request::builder().method(method);
    req = match https {
        None => req.uri(uri.clone()),
        Some(_) => req
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(hyper::header::HOST, authority.as_str()),
    };
    if json.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    if let Some(token) = bearer {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Full::new(json.map(Bytes::from).unwrap_or_default()))
        .map_err(|_| ClientError::BadUrl(url.into()))?;
    let unreachable = |cause: String| ClientError::Unreachable {
        url: url.into(),
        cause,
    };
    let exchange = async {
        let res = match https {
            None => Client::builder(TokioExecutor::new())
                .build_http::<Full<Bytes>>()
                .request(req)
                .await
                .map_err(|e| unreachable(error_chain(&e)))?,
            Some(config) => {
                let tls = connect_tls(url, &authority, config, cacert).await?;
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| unreachable(error_chain(&e)))?;
                tokio::spawn(conn);
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| unreachable(error_chain(&e)))?
            }
        };
        let status: StatusCode = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Answer {
            ok: status.is_success(),
            code: status.as_u16(),
            status: status.to_string(),
            body: body.to_bytes(),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| ClientError::Timeout(url.into()))?
}

/// The system's roots plus `cacert`, HTTP/1.1 by ALPN.
pub(super) fn tls_config(cacert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable entries of the system store are skipped, as curl does.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    let mut pinned = Vec::new();
    if let Some(path) = cacert {
        let bad = |reason: String| ClientError::CaCert {
            path: path.to_owned(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("it holds no PEM certificate".into()));
        }
        for cert in &certs {
            roots.add(cert.clone()).map_err(|e| bad(e.to_string()))?;
        }
        pinned = certs;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| ClientError::CaCert {
        path: cacert.map(Path::to_owned).unwrap_or_default(),
        reason: e.to_string(),
    })?;
    let verifier = Arc::new(PinnedOrWebPki { webpki, pinned });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub(super) async fn connect_tls(
    url: &str,
    authority: &hyper::http::uri::Authority,
    config: Arc<rustls::ClientConfig>,
    cacert: Option<&Path>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
    let unreachable = |cause: String| ClientError::Unreachable {
        url: url.into(),
        cause,
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name =
        ServerName::try_from(host.to_owned()).map_err(|_| ClientError::BadUrl(url.into()))?;
    let tcp = TcpStream::connect((host, authority.port_u16().unwrap_or(443)))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(
            |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
                    ClientError::NotTls { url: url.into() }
                }
                Some(rustls::Error::InvalidCertificate(problem)) => ClientError::Certificate {
                    url: url.into(),
                    problem: match problem.to_string() {
                        p if p.contains("CaUsedAsEndEntity") => "it is a self-signed CA certificate that is not trusted here; give that certificate with --cacert to trust it".into(),
                        p => p,
                    },
                    extra: cacert.map_or_else(String::new, |p| format!(" and {}", p.display())),
                },
                _ => unreachable(error_chain(&e)),
            },
        )
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

/// The system's roots and `--cacert` through webpki, plus one case webpki
/// refuses and curl accepts: a self-signed certificate made by `openssl req
/// -x509`, which marks it a CA (`CaUsedAsEndEntity`). When the server's
/// certificate is byte for byte one the user gave with `--cacert`, it is
/// trusted as given, after its name and validity period are still checked;
/// the handshake's signatures are checked by webpki as always, so the
/// server must hold that certificate's private key.
#[derive(Debug)]
struct PinnedOrWebPki {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let refused = match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(refused) => refused,
        };
        if !self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Err(refused);
        }
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        let (not_before, not_after) = validity(end_entity).ok_or(
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding),
        )?;
        let now = now.as_secs();
        if now < not_before {
            return Err(rustls::CertificateError::NotValidYet.into());
        }
        if now > not_after {
            return Err(rustls::CertificateError::Expired.into());
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A certificate's validity period (notBefore, notAfter) in seconds since
/// the epoch, read from its DER.
fn validity(cert: &[u8]) -> Option<(u64, u64)> {
    use pkcs8::der::asn1::{AnyRef, GeneralizedTime, UtcTime};
    use pkcs8::der::{Decode, Reader, SliceReader, Tag, TagNumber};
    fn time<'a, R: Reader<'a>>(r: &mut R) -> pkcs8::der::Result<u64> {
        Ok(match r.peek_tag()? {
            Tag::UtcTime => UtcTime::decode(r)?.to_unix_duration().as_secs(),
            _ => GeneralizedTime::decode(r)?.to_unix_duration().as_secs(),
        })
    }
    let mut reader = SliceReader::new(cert).ok()?;
    reader
        .sequence(|certificate| {
            let period = certificate.sequence(|tbs| {
                let version = Tag::ContextSpecific {
                    constructed: true,
                    number: TagNumber::N0,
                };
                if tbs.peek_tag()? == version {
                    AnyRef::decode(tbs)?;
                }
                AnyRef::decode(tbs)?; // serialNumber
                AnyRef::decode(tbs)?; // signature
                AnyRef::decode(tbs)?; // issuer
                let period = tbs.sequence(|v| Ok((time(v)?, time(v)?)))?;
                while !tbs.is_finished() {
                    AnyRef::decode(tbs)?;
                }
                Ok(period)
            })?;
            while !certificate.is_finished() {
                AnyRef::decode(certificate)?;
            }
            Ok(period)
        })
        .ok()
}
