//! Native TLS for `serve` (docs/tls.md): TLS 1.2 and 1.3 only through
//! rustls, ALPN `h2` and `http/1.1`, and a certificate pair that can be
//! replaced while serving. New connections get the pair loaded last; open
//! ones keep theirs. A pair that fails to load leaves the previous one in
//! place. Reloads come from SIGHUP and from a poll of both files' content
//! (a SHA-256 of the bytes every `reload_poll_secs`): polling two small
//! files costs nothing, sees every way of replacing them (in place, rename,
//! a symlink swap as Kubernetes does) and needs no watcher crate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use sha2::{Digest, Sha256};
use tokio_rustls::rustls::crypto::{aws_lc_rs, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, version, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;
use crate::metrics::Metrics;

/// Why a certificate pair cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file is missing or unreadable.
    #[error("cannot read the TLS {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("the TLS certificate file {0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    /// The certificate file is not valid PEM, or its first certificate is
    /// not a valid X.509 certificate.
    #[error("the TLS certificate file {path} is not usable: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    /// The key file holds no PEM private key, or one rustls cannot use.
    #[error("the TLS key file {path} is not usable: {reason}")]
    BadKey { path: PathBuf, reason: String },
    /// The key is not the certificate's.
    #[error("the TLS key file {key} does not match the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
}

/// A loaded pair and what is known about its certificate.
struct Pair {
    key: Arc<CertifiedKey>,
    /// The certificate's notAfter, in Unix seconds.
    not_after: i64,
}

/// The pair new handshakes use.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("never poisoned").clone())
    }
}

/// The TLS side of the server: the acceptor and its reloadable pair.
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    /// SHA-256 of both files as last seen by a reload.
    seen: Mutex<[u8; 32]>,
    not_after: Gauge,
    reloaded: Counter,
    failed: Counter,
}

impl Tls {
    /// Loads the configured pair; any problem is a start-up error.
    /// Checks that the pair loads, without serving it: start-up calls this
    /// before it writes anything, so a bad pair leaves no files behind.
    pub fn check(files: &TlsFiles) -> Result<(), TlsError> {
        load_pair(files, &Arc::new(aws_lc_rs::default_provider())).map(drop)
    }

    pub fn load(files: &TlsFiles, metrics: &Metrics) -> Result<Tls, TlsError> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let (pair, seen) = load_pair(files, &provider)?;
        let current = Arc::new(Current(RwLock::new(pair.key.clone())));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .expect("aws-lc-rs supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tls = Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            files: files.clone(),
            provider,
            seen: Mutex::new(seen),
            not_after: metrics.tls_not_after.clone(),
            reloaded: metrics.tls_reloads("success"),
            failed: metrics.tls_reloads("failure"),
        };
        tls.installed(&pair);
        Ok(tls)
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Loads the pair again: new connections get it, open ones keep
    /// theirs. A failure keeps the previous pair and logs one line.
    /// Whether the new pair was loaded.
    pub fn reload(&self) -> bool {
        match load_pair(&self.files, &self.provider) {
            Ok((pair, seen)) => {
                *self.current.0.write().expect("never poisoned") = pair.key.clone();
                *self.seen.lock().expect("never poisoned") = seen;
                self.installed(&pair);
                self.reloaded.inc();
                tracing::info!(
                    cert = %self.files.cert_file.display(),
                    "reloaded the TLS certificate"
                );
                true
            }
            Err(e) => {
                self.failed.inc();
                tracing::warn!("TLS reload failed, still serving the previous certificate: {e}");
                false
            }
        }
    }

    /// Reloads if either file's content changed since the last reload
    /// (which tried it, whether it worked or not).
    fn reload_if_changed(&self) {
        let now = digest(&self.files);
        let mut seen = self.seen.lock().expect("never poisoned");
        if *seen == now {
            return;
        }
        *seen = now;
        drop(seen);
        self.reload();
    }

    fn installed(&self, pair: &Pair) {
        self.not_after.set(pair.not_after);
        if pair.not_after < crate::verify::unix_now() as i64 {
            tracing::warn!(
                cert = %self.files.cert_file.display(),
                not_after = pair.not_after,
                "the TLS certificate has expired; serving it anyway"
            );
        }
    }

    /// Reloads on SIGHUP and when the files change, until dropped.
    pub fn spawn_reloaders(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        if self.files.reload_poll_secs > 0 {
            let (tls, every) = (
                self.clone(),
                Duration::from_secs(self.files.reload_poll_secs),
            );
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let tls = tls.clone();
                    let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
                }
            }));
        }
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::hangup()) {
                Ok(mut hup) => {
                    let tls = self.clone();
                    tasks.push(tokio::spawn(async move {
                        while hup.recv().await.is_some() {
                            tracing::info!("SIGHUP: reloading the TLS certificate");
                            let tls = tls.clone();
                            let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
                        }
                    }));
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
            }
        }
        tasks
    }
}

/// Without TLS there is nothing to reload, but SIGHUP (systemd's
/// `ExecReload`) must not end the server either: it is logged and ignored.
pub fn ignore_sighup() -> Vec<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                return vec![tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP: nothing to reload (no TLS configured)");
                    }
                })];
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
        }
    }
    Vec::new()
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// SHA-256 over both files (an unreadable one counts as empty).
fn digest(files: &TlsFiles) -> [u8; 32] {
    let read = |p: &Path| std::fs::read(p).unwrap_or_default();
    hash_pair(&read(&files.cert_file), &read(&files.key_file))
}

fn hash_pair(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for bytes in [cert, key] {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    h.finalize().into()
}

fn load_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<(Pair, [u8; 32]), TlsError> {
    let (cert_path, key_path) = (&files.cert_file, &files.key_file);
    let cert_pem = read("certificate", cert_path)?;
    let key_pem = read("key", key_path)?;
    let seen = hash_pair(&cert_pem, &key_pem);
    let bad_cert = |reason: String| TlsError::BadCertificate {
        path: cert_path.clone(),
        reason,
    };
    let bad_key = |reason: String| TlsError::BadKey {
        path: key_path.clone(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_cert(e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate(cert_path.clone()));
    };
    let not_after = der::not_after(leaf)
        .ok_or_else(|| bad_cert("its first certificate is not valid X.509".into()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => bad_key("it holds no PEM private key".into()),
        e => bad_key(e.to_string()),
    })?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: cert_path.clone(),
            key: key_path.clone(),
        },
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            bad_cert(e.to_string())
        }
        e => bad_key(e.to_string()),
    })?;
    Ok((
        Pair {
            key: Arc::new(key),
            not_after,
        },
        seen,
    ))
}

/// Just enough DER to find a certificate's notAfter.
mod der {
    /// One tag-length-value: (tag, content, rest).
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    /// Certificate → tbsCertificate → [version] serial signature issuer
    /// validity → notAfter, as Unix seconds.
    pub fn not_after(cert: &[u8]) -> Option<i64> {
        let (0x30, cert, _) = tlv(cert)? else {
            return None;
        };
        let (0x30, mut tbs, _) = tlv(cert)? else {
            return None;
        };
        if tbs.first() == Some(&0xa0) {
            tbs = tlv(tbs)?.2; // the explicit version
        }
        for _ in 0..3 {
            tbs = tlv(tbs)?.2; // serial, signature, issuer
        }
        let (0x30, validity, _) = tlv(tbs)? else {
            return None;
        };
        let (_, _, rest) = tlv(validity)?;
        let (tag, time, _) = tlv(rest)?;
        let time = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
        let full = match (tag, time.len()) {
            (0x17, 12) => {
                // UTCTime: YY 50..99 is 19YY.
                let yy: u32 = time[..2].parse().ok()?;
                format!("{}{time}", if yy >= 50 { 19 } else { 20 })
            }
            (0x18, 14) => time.to_owned(),
            _ => return None,
        };
        chrono::NaiveDateTime::parse_from_str(&full, "%Y%m%d%H%M%S")
            .ok()
            .map(|t| t.and_utc().timestamp())
    }
}
