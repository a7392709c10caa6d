//! Shared helpers: `spawn_app`, a small HTTP client, token minting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    ECDSA_P384_SHA384_FIXED_SIGNING, RSA_PKCS1_SHA256, RSA_PKCS1_SHA384, RSA_PKCS1_SHA512,
    RSA_PSS_SHA256, RSA_PSS_SHA384, RSA_PSS_SHA512,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde_json::{json, Value};
use signet::app::Application;
use signet::config::Config;
use tempfile::TempDir;

pub const ADMIN: &str = "test-operator-token-0123456789";

/// A running server; dropping it closes the shutdown channel, which stops it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub dir: TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("utf-8 body")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }

    /// Asserts the error shape of docs/api.md and its code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        assert_eq!(body["code"], code, "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
}

pub fn config(dir: &Path) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.storage.data_dir = dir.to_owned();
    config.auth.admin_token = Some(signet::config::Secret::new(ADMIN.into()));
    config
}

pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    adjust(&mut config);
    crate::backends::prepare(&mut config);
    let app = Application::build(config).await.expect("server starts");
    let addr = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run_until(async {
            let _ = rx.await;
        })
        .await
        .expect("server stops cleanly");
    });
    TestApp {
        addr,
        dir,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        send(method, &self.url(path), headers, body.into()).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    /// `method path` with `Authorization: Bearer credential` and no body.
    pub async fn request_as(&self, method: Method, path: &str, credential: &str) -> Resp {
        let auth = bearer(credential);
        self.request(method, path, &[("authorization", &auth)], Bytes::new())
            .await
    }

    /// `GET path` with `headers`, without a credential.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request(Method::GET, path, headers, Bytes::new()).await
    }

    /// Creates a key as the operator, asking for its private key as a PEM
    /// file (`Accept: application/x-pem-file`); whatever the answer.
    pub async fn create_key_pem(&self, org: &str, body: &Value) -> Resp {
        let accept = [("accept", "application/x-pem-file")];
        self.post_key(org, body, ADMIN, &accept).await
    }

    /// Creates a key as the operator; panics unless 201.
    pub async fn create_key(&self, org: &str, body: Value) -> Value {
        let r = self.create_key_raw(org, &body, ADMIN).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        r.json()
    }

    pub async fn create_key_raw(&self, org: &str, body: &Value, credential: &str) -> Resp {
        self.post_key(org, body, credential, &[]).await
    }

    /// `POST /v1/organisations/{org}/keys` of `body` with `credential` and
    /// the `extra` headers.
    async fn post_key(
        &self,
        org: &str,
        body: &Value,
        credential: &str,
        extra: &[(&str, &str)],
    ) -> Resp {
        let auth = bearer(credential);
        let mut headers = vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        let path = format!("/v1/organisations/{org}/keys");
        self.request(
            Method::POST,
            &path,
            &headers,
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    pub async fn delete_key(&self, org: &str, id: &str, credential: &str) -> Resp {
        self.request_as(
            Method::DELETE,
            &format!("/v1/organisations/{org}/keys/{id}"),
            credential,
        )
        .await
    }

    /// `POST /v1/verify` of `token`: the verdict; panics unless 200.
    pub async fn verify(&self, token: &str) -> Value {
        let r = verify_raw(self, token).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()
    }

    pub async fn stop(mut self) -> TempDir {
        self.shutdown.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap();
        self.dir
    }
}

/// `POST /v1/verify` of `token`, whatever the answer.
pub async fn verify_raw(app: &TestApp, token: &str) -> Resp {
    let body = serde_json::to_vec(&json!({ "token": token })).unwrap();
    app.request(
        Method::POST,
        "/v1/verify",
        &[("content-type", "application/json")],
        body,
    )
    .await
}

/// `N` instances sharing one store, started one after another: under
/// `run_on(Backend::Postgres, …)`, the database of the temp dir returned
/// (keep it while they run).
pub async fn spawn_sharing<const N: usize>() -> (TempDir, [TestApp; N]) {
    let dir = tempfile::tempdir().unwrap();
    let mut apps = Vec::with_capacity(N);
    for _ in 0..N {
        apps.push(spawn_with(|c| c.storage.data_dir = dir.path().to_owned()).await);
    }
    let Ok(apps) = apps.try_into() else {
        unreachable!("{N} instances were started")
    };
    (dir, apps)
}

pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Resp {
    try_send(method, url, headers, body)
        .await
        .expect("server answers")
}

/// Like `send`, but a server that does not answer is an `Err`.
pub async fn try_send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Resp, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = client
        .request(req.body(Full::new(body)).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status();
    let headers = res.headers().clone();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// A private key and how to sign with it, for minting test tokens.
pub struct Signer {
    pair: Pair,
}

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl Signer {
    /// From a PKCS#8 PEM of an RSA, P-256, P-384 or Ed25519 key.
    pub fn from_pem(pem: &str) -> Signer {
        let (label, der) = pkcs8::der::pem::decode_vec(pem.as_bytes()).expect("a PEM");
        assert_eq!(label, "PRIVATE KEY", "a PKCS#8 PEM");
        let ec = |alg| EcdsaKeyPair::from_pkcs8(alg, &der).ok().map(Pair::Ec);
        let pair = ec(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .or_else(|| ec(&ECDSA_P384_SHA384_FIXED_SIGNING))
            .or_else(|| Ed25519KeyPair::from_pkcs8(&der).ok().map(Pair::Ed25519))
            .unwrap_or_else(|| {
                let der = rsa::RsaPrivateKey::from_pkcs8_der(&der)
                    .expect("an RSA, EC or Ed25519 PKCS#8 key")
                    .to_pkcs8_der()
                    .unwrap();
                Pair::Rsa(RsaKeyPair::from_pkcs8(der.as_bytes()).expect("aws-lc accepts the key"))
            });
        Signer { pair }
    }

    /// SubjectPublicKeyInfo DER of the public half.
    pub fn spki_der(&self) -> Vec<u8> {
        use aws_lc_rs::encoding::AsDer;
        let der = match &self.pair {
            Pair::Rsa(p) => p.public_key().as_der().map(|d| d.as_ref().to_vec()),
            Pair::Ec(p) => p.public_key().as_der().map(|d| d.as_ref().to_vec()),
            Pair::Ed25519(p) => p.public_key().as_der().map(|d| d.as_ref().to_vec()),
        };
        der.unwrap()
    }

    /// Signs `header`/`claims` as given (nothing added), with the algorithm
    /// `alg` names (see [`Signer::sign_raw`]).
    pub fn sign(&self, header: &Value, claims: &Value, alg: &str) -> String {
        let input = signing_input(header, claims);
        format!("{input}.{}", self.sign_raw(&input, alg))
    }

    /// The base64url signature of `input`. An RSA key signs with the RSA
    /// algorithm `alg` names; an EC or Ed25519 key with its own algorithm
    /// (fixed-length `r ‖ s` for ECDSA), whatever `alg` says.
    pub fn sign_raw(&self, input: &str, alg: &str) -> String {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pair = match &self.pair {
            Pair::Rsa(pair) => pair,
            Pair::Ec(pair) => {
                let sig = pair.sign(&rng, input.as_bytes()).unwrap();
                return URL_SAFE_NO_PAD.encode(sig.as_ref());
            }
            Pair::Ed25519(pair) => return URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes())),
        };
        let padding: &'static dyn aws_lc_rs::signature::RsaEncoding = match alg {
            "RS256" => &RSA_PKCS1_SHA256,
            "RS384" => &RSA_PKCS1_SHA384,
            "RS512" => &RSA_PKCS1_SHA512,
            "PS256" => &RSA_PSS_SHA256,
            "PS384" => &RSA_PSS_SHA384,
            "PS512" => &RSA_PSS_SHA512,
            other => panic!("not an RSA algorithm: {other}"),
        };
        let mut sig = vec![0; pair.public_modulus_len()];
        pair.sign(padding, &rng, input.as_bytes(), &mut sig)
            .unwrap();
        URL_SAFE_NO_PAD.encode(sig)
    }

    /// A standard organisation token.
    pub fn org_token(&self, kid: &str, claims: Value) -> String {
        let alg = self.alg();
        self.sign(&json!({"alg": alg, "typ": "JWT", "kid": kid}), &claims, alg)
    }

    /// The algorithm `org_token` signs with: RS256 for an RSA key, else the
    /// one its curve fixes.
    pub fn alg(&self) -> &'static str {
        match &self.pair {
            Pair::Rsa(_) => "RS256",
            Pair::Ec(p) if p.public_key().as_ref().len() == 65 => "ES256",
            Pair::Ec(_) => "ES384",
            Pair::Ed25519(_) => "EdDSA",
        }
    }
}

pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    )
}

pub fn now() -> u64 {
    signet::verify::unix_now()
}

/// Claims of a valid organisation token.
pub fn claims(org: &str, role: &str) -> Value {
    json!({"org": org, "role": role, "sub": format!("{role}@{org}"), "aud": "signet", "exp": now() + 600})
}

/// A created key's id and signer.
pub fn key_of(created: &Value) -> (String, Signer) {
    (
        created["id"].as_str().unwrap().to_owned(),
        Signer::from_pem(created["privateKey"].as_str().unwrap()),
    )
}

/// Creates two keys in `acme` (RS256 2048, PS256 3072); their private PEMs.
pub async fn create_secret_keys(app: &TestApp) -> Vec<String> {
    let mut privates = Vec::new();
    for (alg, bits) in [("RS256", 2048), ("PS256", 3072)] {
        let set = app
            .create_key(
                "acme",
                json!({"name": "secret", "algorithm": alg, "bits": bits}),
            )
            .await;
        privates.push(set["privateKey"].as_str().unwrap().to_owned());
    }
    privates
}

/// Byte runs that only the private keys `pems` (PKCS#8 or PKCS#1) hold,
/// named, for scanning storage for them.
pub fn secret_needles(pems: &[&str]) -> Vec<(String, Vec<u8>)> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::traits::PrivateKeyParts;
    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    let keys = pems.iter().map(|p| {
        rsa::RsaPrivateKey::from_pkcs8_pem(p)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(p))
            .unwrap()
    });
    for (i, key) in keys.enumerate() {
        needles.push((format!("d of key {i}"), key.d().to_bytes_be()));
        for (j, p) in key.primes().iter().enumerate() {
            needles.push((format!("prime {j} of key {i}"), p.to_bytes_be()));
        }
        needles.push((
            format!("d of key {i}, little-endian"),
            key.d().to_bytes_le(),
        ));
    }
    for pem in pems {
        // 48-byte runs from the private tail of the PEM body and of its DER
        // (the head holds the public modulus, which is rightly stored).
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let tail = body.len() - 200;
        needles.push(("PEM body".into(), body.as_bytes()[tail..tail + 48].to_vec()));
        let der = base64::engine::general_purpose::STANDARD
            .decode(&body)
            .unwrap();
        needles.push(("DER".into(), der[der.len() - 100..der.len() - 52].to_vec()));
    }
    needles
}

/// Reads every file under `dir`, recursively.
pub fn all_bytes(dir: &Path) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.insert(path.display().to_string(), std::fs::read(&path).unwrap());
        }
    }
    out
}

/// The real binary serving `dir`, as an operator would run it.
pub struct BinServer {
    pub child: std::process::Child,
    pub addr: String,
}

impl BinServer {
    /// Starts `signet serve ARGS…` on a free port; stderr is piped (read it
    /// with `wait_with_output`) when `capture_log`, else discarded.
    pub fn start(dir: &Path, args: &[&str], log: &str, capture_log: bool) -> BinServer {
        use std::process::Stdio;
        let addr = free_addr();
        let storage = match crate::backends::current() {
            signet::config::Backend::Sled => Vec::new(),
            signet::config::Backend::Postgres => crate::backends::storage_args(dir),
        };
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_signet"))
            .arg("serve")
            .args(storage)
            .args(args)
            .env("SIGNET_DATA_DIR", dir)
            .env("SIGNET_LISTEN", &addr)
            .env("SIGNET_ADMIN_TOKEN", ADMIN)
            .env("SIGNET_LOG", log)
            .env("ORGKEYS_MAX", "1000")
            .stdout(Stdio::null())
            .stderr(if capture_log {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        BinServer { child, addr }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits (bounded) until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.base());
        for _ in 0..200 {
            let probe = try_send(Method::GET, &url, &[], Bytes::new());
            if let Ok(Ok(r)) = tokio::time::timeout(std::time::Duration::from_secs(1), probe).await
            {
                if r.status == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("server at {} never became ready", self.addr);
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// `Bearer <credential>`.
pub fn bearer(credential: &str) -> String {
    format!("Bearer {credential}")
}

impl TestApp {
    /// The `kid`s of the global JWK Set, in document order.
    pub async fn jwks_kids(&self) -> Vec<String> {
        let jwks = self.get("/.well-known/jwks.json").await.json();
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Lists an organisation's keys as the operator.
    pub async fn list_keys(&self, org: &str) -> Resp {
        self.request_as(Method::GET, &format!("/v1/organisations/{org}/keys"), ADMIN)
            .await
    }
}

/// Polls `check` every 20 ms until it holds; panics after `limit`.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: std::time::Duration,
    mut check: impl FnMut() -> F,
) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The value of the unlabelled series `name` in a `/metrics` text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}
