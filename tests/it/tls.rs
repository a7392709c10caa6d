//! Native TLS: real rustls clients against the real server, with
//! certificates made here (a test CA and leaves with chosen serials);
//! reload by file change and by SIGHUP; start-up errors; the CLI over
//! https with and without `--cacert`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SerialNumber};
use signet::config::TlsFiles;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::support::*;

/// A throw-away CA that issues leaves for 127.0.0.1 and localhost.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf as PEM files' contents, and its DER to compare with what is served.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self, serial: u64) -> Leaf {
        self.leaf_until(serial, None)
    }

    fn leaf_until(&self, serial: u64, not_after: Option<(i32, u8, u8)>) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        if let Some((y, m, d)) = not_after {
            params.not_before = rcgen::date_time_ymd(y - 1, m, d);
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// Where the server's pair lives; `install` replaces it (key, then cert).
struct Files {
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(dir: &Path, leaf: &Leaf) -> Files {
        let files = Files {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        files.install(leaf);
        files
    }

    fn install(&self, leaf: &Leaf) {
        self.write(&leaf.cert_pem, &leaf.key_pem);
    }

    /// Writes each file by rename, so that no reader sees half a file.
    fn write(&self, cert: &str, key: &str) {
        for (path, text) in [(&self.key, key), (&self.cert, cert)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }

    fn config(&self, poll_secs: u64) -> TlsFiles {
        TlsFiles {
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
            reload_poll_secs: poll_secs,
        }
    }
}

fn client_config(ca_pem: &str, alpn: &[u8]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(config)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("the TLS handshake succeeds")
}

fn served(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// The certificate a new connection is served.
async fn served_now(addr: SocketAddr, ca: &Ca) -> CertificateDer<'static> {
    served(&connect(addr, client_config(&ca.pem(), b"http/1.1")).await)
}

/// One HTTP/1.1 connection that can send several requests.
struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl H1 {
    async fn open(stream: TlsStream<TcpStream>) -> H1 {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        H1 { sender }
    }

    async fn get(&mut self, path: &str) -> (u16, Bytes) {
        let req = hyper::Request::get(path)
            .header("host", "127.0.0.1")
            .body(Empty::new())
            .unwrap();
        // The connection takes the next request only once it has finished
        // the previous one, which may be just after its body was read.
        self.sender.ready().await.unwrap();
        let res = self.sender.send_request(req).await.unwrap();
        let status = res.status().as_u16();
        (status, res.into_body().collect().await.unwrap().to_bytes())
    }
}

/// A CA, two leaves with serials `base` and `base + 1`, and the first
/// installed in a fresh directory.
struct Setup {
    ca: Ca,
    dir: tempfile::TempDir,
    first: Leaf,
    second: Leaf,
    files: Files,
}

impl Setup {
    fn new(base: u64) -> Setup {
        let ca = Ca::new();
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (ca.leaf(base), ca.leaf(base + 1));
        let files = Files::new(dir.path(), &first);
        Setup {
            ca,
            dir,
            first,
            second,
            files,
        }
    }
}

impl Setup {
    /// `new(base)` and a server for it (no polling).
    async fn serving(base: u64) -> (Setup, TestApp) {
        let setup = Setup::new(base);
        let app = spawn_tls(&setup.files, 0).await;
        (setup, app)
    }
}

async fn spawn_tls(files: &Files, poll_secs: u64) -> TestApp {
    let tls = files.config(poll_secs);
    spawn_with(move |c| {
        c.server.tls = Some(tls);
        c.server.header_read_timeout_secs = 1;
    })
    .await
}

/// A metric's value from an https `/metrics`.
async fn metric(addr: SocketAddr, ca: &Ca, line_start: &str) -> Option<f64> {
    let mut h1 = H1::open(connect(addr, client_config(&ca.pem(), b"http/1.1")).await).await;
    let (_, body) = h1.get("/metrics").await;
    String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

/// Polls until `check` holds, for up to `limit`.
async fn eventually<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn http1_and_http2_are_served_over_tls() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.leaf(1);
    let files = Files::new(dir.path(), &leaf);
    let app = spawn_tls(&files, 0).await;

    let stream = connect(app.addr, client_config(&ca.pem(), b"http/1.1")).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(served(&stream), leaf.der);
    let mut h1 = H1::open(stream).await;
    let (status, body) = h1.get("/healthz").await;
    assert_eq!((status, &body[..]), (200, &br#"{"status":"ok"}"#[..]));
    assert_eq!(h1.get("/.well-known/jwks.json").await.0, 200, "keep-alive");

    let stream = connect(app.addr, client_config(&ca.pem(), b"h2")).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let res = h2
        .send_request(
            hyper::Request::get("https://127.0.0.1/healthz")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.version(), hyper::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let not_after = metric(app.addr, &ca, "signet_tls_certificate_not_after_seconds ")
        .await
        .unwrap();
    assert!(not_after > now() as f64, "the gauge holds the notAfter");
}

#[tokio::test(flavor = "multi_thread")]
async fn old_protocols_and_plain_http_are_refused() {
    let (setup, app) = Setup::serving(1).await;
    let ca = &setup.ca;

    // Plain HTTP to the TLS port gets no HTTP answer at all.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // TLS 1.2 and 1.3 are served; TLS 1.1 is not (rustls cannot speak
    // 1.1, so the OpenSSL command line is the old client).
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        roots
            .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
            .unwrap();
        let config = ClientConfig::builder_with_protocol_versions(&[version])
            .with_root_certificates(roots)
            .with_no_client_auth();
        let stream = connect(app.addr, Arc::new(config)).await;
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
    }
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIPPED the TLS 1.1 check: no openssl command on PATH");
        return;
    }
    let addr = app.addr.to_string();
    let probe = move |flag: &str| {
        Command::new("openssl")
            .args(["s_client", "-connect", &addr, flag])
            // OpenSSL 3 refuses 1.0 and 1.1 itself at the default level.
            .args(["-cipher", "DEFAULT@SECLEVEL=0"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let old = tokio::task::spawn_blocking(move || {
        let out = probe("-tls1_1");
        let control = probe("-tls1_2");
        (out, control)
    })
    .await
    .unwrap();
    let (old, control) = old;
    let old_text =
        String::from_utf8_lossy(&old.stdout).into_owned() + &String::from_utf8_lossy(&old.stderr);
    assert!(
        control.status.success(),
        "the same command with -tls1_2 works"
    );
    assert!(!old.status.success(), "TLS 1.1 is refused: {old_text}");
    // The server read the ClientHello and answered with an alert (rustls
    // says handshake_failure when no version is shared): no session.
    assert!(
        old_text.contains("SSL alert number") && old_text.contains("Cipher is (NONE)"),
        "the server refused the handshake with an alert: {old_text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_pair_serves_new_connections_and_open_ones_continue() {
    let Setup {
        ca,
        dir: _dir,
        first,
        second,
        files,
    } = Setup::new(1001);
    let app = spawn_tls(&files, 1).await;

    let open = connect(app.addr, client_config(&ca.pem(), b"http/1.1")).await;
    assert_eq!(served(&open), first.der);
    let mut open = H1::open(open).await;
    assert_eq!(open.get("/healthz").await.0, 200);

    files.install(&second);
    assert!(
        eventually(Duration::from_secs(15), || async {
            served_now(app.addr, &ca).await == second.der
        })
        .await,
        "the new pair is served within a few polls"
    );
    assert_eq!(
        open.get("/healthz").await.0,
        200,
        "the open connection continues"
    );
    let reloads = metric(
        app.addr,
        &ca,
        "signet_tls_reloads_total{result=\"success\"} ",
    )
    .await;
    assert!(reloads >= Some(1.0), "{reloads:?}");

    // A broken pair keeps the one served: a key that is not the
    // certificate's, then a file that is not PEM at all.
    let third = ca.leaf(1003);
    let broken: [(&str, &str); 2] = [
        (&third.cert_pem, &second.key_pem),
        ("not a certificate", &third.key_pem),
    ];
    for (i, (cert, key)) in broken.into_iter().enumerate() {
        files.write(cert, key);
        let failures = "signet_tls_reloads_total{result=\"failure\"} ";
        assert!(
            eventually(Duration::from_secs(15), || async {
                metric(app.addr, &ca, failures).await >= Some(i as f64 + 1.0)
            })
            .await,
            "broken pair {i} is tried and refused"
        );
        assert_eq!(served_now(app.addr, &ca).await, second.der, "pair {i}");
    }

    // An expired certificate warns but loads: clients now refuse it.
    let expired = ca.leaf_until(1004, Some((2021, 6, 1)));
    files.install(&expired);
    assert!(
        eventually(Duration::from_secs(15), || async {
            let tcp = TcpStream::connect(app.addr).await.unwrap();
            let refused = TlsConnector::from(client_config(&ca.pem(), b"http/1.1"))
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
                .err();
            refused.is_some_and(|e| e.to_string().to_lowercase().contains("expired"))
        })
        .await,
        "the expired pair is served"
    );
    assert_eq!(
        open.get("/metrics").await.0,
        200,
        "the open connection continues"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_pair() {
    let Setup {
        ca,
        dir,
        first,
        second,
        files,
    } = Setup::new(2001);
    let config = dir.path().join("signet.toml");
    std::fs::write(
        &config,
        format!(
            "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\nreload_poll_secs = 0\n",
            files.cert, files.key
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = BinServer::start(
        &data,
        &["--config", config.to_str().unwrap()],
        "warn",
        false,
    );
    let addr: SocketAddr = server.addr.parse().unwrap();
    let ready = eventually(Duration::from_secs(30), || async {
        let Ok(tcp) = TcpStream::connect(addr).await else {
            return false;
        };
        TlsConnector::from(client_config(&ca.pem(), b"http/1.1"))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .is_ok()
    })
    .await;
    assert!(ready, "the TLS server came up");
    assert_eq!(served_now(addr, &ca).await, first.der);

    files.install(&second);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        served_now(addr, &ca).await,
        first.der,
        "with polling off, only the signal reloads"
    );
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        eventually(Duration::from_secs(10), || async {
            served_now(addr, &ca).await == second.der
        })
        .await,
        "SIGHUP loads the new pair"
    );
    server.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_the_handshake_is_cut_off() {
    let (setup, app) = Setup::serving(1).await;
    let ca = &setup.ca;
    // Silence, and the first bytes of a ClientHello record.
    let mut stalled = Vec::new();
    for first in [&b""[..], &[0x16, 0x03, 0x01, 0x02]] {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(first).await.unwrap();
        stalled.push(s);
    }
    let opened = Instant::now();
    // A fresh client is served meanwhile.
    let mut h1 = H1::open(connect(app.addr, client_config(&ca.pem(), b"http/1.1")).await).await;
    assert_eq!(h1.get("/healthz").await.0, 200);
    for mut s in stalled {
        let mut buf = Vec::new();
        let limit = Duration::from_secs(1) + Duration::from_secs(5);
        let read = tokio::time::timeout(limit, s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "cut off within the header read timeout");
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(500),
        "not before it"
    );
    // Counted a moment after the close.
    let cut = "signet_connections_closed_total{reason=\"first_request\"} ";
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(app.addr, ca, cut).await == Some(2.0)
        })
        .await,
        "both are counted as first_request closures"
    );
}

#[test]
fn unusable_pairs_stop_start_up_with_a_sentence_naming_the_file() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (leaf, other) = (ca.leaf(1), ca.leaf(2));
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let cert = write("cert.pem", &leaf.cert_pem);
    let key = write("key.pem", &leaf.key_pem);
    let other_key = write("other-key.pem", &other.key_pem);
    let missing = dir.path().join("missing.pem").to_str().unwrap().to_owned();
    let cases: [(&str, &str, &str, &str); 4] = [
        (&missing, &key, "missing.pem", "cannot read"),
        (&key, &key, "key.pem", "holds no PEM certificate"),
        (&cert, &cert, "cert.pem", "no PEM private key"),
        (&cert, &other_key, "other-key.pem", "does not match"),
    ];
    for (cert, key, names, says) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_signet"))
            .arg("serve")
            .env("SIGNET_DATA_DIR", dir.path().join("data"))
            .env("SIGNET_LISTEN", "127.0.0.1:0")
            .env("SIGNET_ADMIN_TOKEN", ADMIN)
            .env("SIGNET_TLS_CERT", cert)
            .env("SIGNET_TLS_KEY", key)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cert} {key}: {err}");
        let line = err.trim().lines().last().unwrap_or_default();
        assert!(line.contains(names) && line.contains(says), "{line}");
        assert!(
            !dir.path().join("data").exists(),
            "a pair that cannot serve stops start-up before anything is written"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_verifies_over_https_against_roots_plus_cacert() {
    let Setup { ca, dir, files, .. } = Setup::new(1);
    let app = spawn_tls(&files, 0).await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let base = format!("https://{}", app.addr);
    let jwks = format!("{base}/.well-known/jwks.json");
    let ca_file = ca_file.to_str().unwrap();
    let cases: [(&[&str], Option<i32>, &str); 4] = [
        (&["--server", &base], Some(2), "certificate"),
        (&["--jwks", &jwks], Some(2), "certificate"),
        (&["--server", &base, "--cacert", ca_file], Some(1), ""),
        (&["--jwks", &jwks, "--cacert", ca_file], Some(1), ""),
    ];
    assert_cli_verify(&cases, "is `signet serve` running").await;
}

/// systemd's `ExecReload` sends SIGHUP whether or not TLS is configured: a
/// plain server logs it and keeps serving instead of exiting.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_without_tls_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = BinServer::start(&dir.path().join("data"), &[], "warn", false);
    let addr: SocketAddr = server.addr.parse().unwrap();
    let healthz = || async move {
        let Ok(mut tcp) = TcpStream::connect(addr).await else {
            return false;
        };
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut answer = Vec::new();
        tcp.write_all(request).await.is_ok()
            && tcp.read_to_end(&mut answer).await.is_ok()
            && answer.starts_with(b"HTTP/1.1 200")
    };
    assert!(eventually(Duration::from_secs(30), healthz).await, "up");
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "SIGHUP must not end the server"
    );
    assert!(healthz().await, "still serving after SIGHUP");
    server.terminate();
}

/// A self-signed pair as `openssl req -x509` makes it (marked CA:TRUE),
/// for `names` (subjectAltName entries), in `dir`.
fn openssl_pair(dir: &Path, names: &str) -> Files {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=signet test",
            "-addext",
        ])
        .arg(format!("subjectAltName={names}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cert = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    assert!(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(dir.join("cert.pem"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("CA:TRUE"))
            .unwrap(),
        "openssl marks it a CA: {cert}"
    );
    Files {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

/// `signet verify ARGS… not.a.token`: exit code and stderr.
async fn cli_verify(args: &[&str]) -> (Option<i32>, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_signet"))
            .arg("verify")
            .args(args)
            .arg("not.a.token")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// `cli_verify` of each case's arguments: its exit code, and a stderr that
/// says what the case expects and never says `never`.
async fn assert_cli_verify(cases: &[(&[&str], Option<i32>, &str)], never: &str) {
    for (args, code, says) in cases {
        let shown = args.join(" ");
        let (got, err) = cli_verify(args).await;
        assert_eq!(got, *code, "{shown}: {err}");
        assert!(err.contains(says), "{shown}: {err}");
        assert!(!err.contains(never), "{shown}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_self_signed_openssl_certificate_given_as_cacert_is_trusted_for_its_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let files = openssl_pair(dir.path(), "DNS:localhost,IP:127.0.0.1");
    let app = spawn_tls(&files, 0).await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = openssl_pair(other_dir.path(), "DNS:other.example");
    let other_app = spawn_tls(&other, 0).await;
    let port = app.addr.port();
    let cacert = files.cert.to_str().unwrap();
    let other_cacert = other.cert.to_str().unwrap();
    let ip = format!("https://127.0.0.1:{port}");
    let name = format!("https://localhost:{port}");
    let jwks = format!("{ip}/.well-known/jwks.json");
    let wrong_name = format!("https://{}", other_app.addr);
    let cases: [(&[&str], Option<i32>, &str); 6] = [
        // Reached and answered: the token is invalid (exit 1).
        (&["--server", &ip, "--cacert", cacert], Some(1), ""),
        (&["--server", &name, "--cacert", cacert], Some(1), ""),
        (&["--jwks", &jwks, "--cacert", cacert], Some(1), ""),
        // Not given: not trusted.
        (&["--server", &ip], Some(2), "certificate"),
        // Given, but for another name: still refused.
        (
            &["--server", &wrong_name, "--cacert", other_cacert],
            Some(2),
            "certificate",
        ),
        // Another certificate given: refused.
        (
            &["--server", &ip, "--cacert", other_cacert],
            Some(2),
            "certificate",
        ),
    ];
    assert_cli_verify(&cases, "CaUsedAsEndEntity").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_self_signed_certificate_given_as_cacert_is_refused() {
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = Files {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    };
    files.write(&cert.pem(), &key.serialize_pem());
    let app = spawn_tls(&files, 0).await;
    let server = format!("https://{}", app.addr);
    let cacert = files.cert.to_str().unwrap();
    let (code, err) = cli_verify(&["--server", &server, "--cacert", cacert]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("certificate") && err.contains("xpired"),
        "{err}"
    );
}

/// A follower of an https upstream trusts the system's roots and
/// `upstream.cacert`. Without the upstream's CA it exits 2 at start,
/// naming `upstream.cacert`, as it does for a refused token, instead of
/// retrying for ever; with it, it follows.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_trusts_its_upstream_only_with_its_ca() {
    use crate::followers::{exit_of, follower_process_with, FOLLOWER_TOKEN};
    let setup = Setup::new(90);
    let tls = setup.files.config(0);
    let upstream = spawn_with(move |c| {
        c.server.tls = Some(tls);
        c.followers.token = Some(signet::config::Secret::new(FOLLOWER_TOKEN.into()));
        c.cluster.max_staleness_ms = 500;
    })
    .await;
    let url = format!("https://127.0.0.1:{}", upstream.addr.port());

    let dir = tempfile::tempdir().unwrap();
    let untrusting = follower_process_with(&url, Some(FOLLOWER_TOKEN), dir.path(), "", "warn");
    let (status, stderr) = exit_of(untrusting).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("upstream.cacert"), "{stderr}");
    assert!(!stderr.contains(FOLLOWER_TOKEN), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), setup.ca.pem()).unwrap();
    let config = "[upstream]\ncacert = \"ca.pem\"\n";
    let trusting = follower_process_with(&url, Some(FOLLOWER_TOKEN), dir.path(), config, "warn");
    trusting.wait_ready().await;
    trusting.terminate();
    let _ = tokio::task::spawn_blocking(move || trusting.child.wait_with_output()).await;
}
