//! No error repeats a request body that may hold key material: a private
//! key (a PKCS#8 PEM, or a JWK with `d`) sent as the value of every field
//! of every JSON body, and as a field name, is answered without any
//! 16-byte run of it, in the message, the cause or the server's log,
//! however the JSON parser would quote it.

use std::collections::HashSet;
use std::io::Read;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use hyper::Method;
use rsa::pkcs8::EncodePrivateKey;
use serde_json::{json, Map, Value};

use crate::support::*;

/// Every run of `RUN` bytes of the secrets.
const RUN: usize = 16;

fn runs(secrets: &[&str]) -> HashSet<Vec<u8>> {
    secrets
        .iter()
        .flat_map(|s| s.as_bytes().windows(RUN).map(<[u8]>::to_vec))
        .collect()
}

/// The first run of the secrets that `text` holds, if any.
fn leak(text: &[u8], runs: &HashSet<Vec<u8>>) -> Option<String> {
    text.windows(RUN)
        .find(|w| runs.contains(*w))
        .map(|w| String::from_utf8_lossy(w).into_owned())
}

/// `base` with the member at `path` set to `value`.
fn with(base: &Value, path: &[&str], value: &Value) -> Value {
    let mut body = base.clone();
    let mut target = &mut body;
    for p in path {
        target = &mut target[*p];
    }
    *target = value.clone();
    body
}

/// `base` with one more member, named `name`, at the top or in `inside`.
fn with_name(base: &Value, inside: Option<&str>, name: &str) -> Value {
    let mut body = base.clone();
    let target: &mut Map<String, Value> = match inside {
        Some(p) => body[p].as_object_mut().unwrap(),
        None => body.as_object_mut().unwrap(),
    };
    target.insert(name.to_owned(), json!(1));
    body
}

/// A JSON body of a route: every top-level field is tried, and every
/// member of the object in `nested`, and an unknown member at either place.
struct Route {
    what: &'static str,
    method: Method,
    path: String,
    base: Value,
    nested: Option<&'static str>,
}

impl Route {
    /// The paths of the fields, and the objects an unknown member may go in.
    fn fields(&self) -> (Vec<Vec<&str>>, Vec<Option<&'static str>>) {
        let mut paths: Vec<Vec<&str>> = Vec::new();
        let mut objects = vec![None];
        for k in self.base.as_object().unwrap().keys() {
            paths.push(vec![k.as_str()]);
        }
        if let Some(n) = self.nested {
            for k in self.base[n].as_object().unwrap().keys() {
                paths.push(vec![n, k.as_str()]);
            }
            objects.push(Some(n));
        }
        (paths, objects)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_key_in_any_field_of_any_body_is_never_repeated() {
    // The secrets: a PKCS#8 PEM the server never made, and a JWK with d.
    let rsa = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let pem = rsa.to_pkcs8_pem(pkcs8::LineEnding::LF).unwrap().to_string();
    let b64 = |fill: u8| URL_SAFE_NO_PAD.encode([fill; 32].map(|b| b ^ rand::random::<u8>()));
    let (x, y, d) = (b64(1), b64(2), b64(3));
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "d": d});
    let jwk_text = jwk.to_string();
    let secrets = runs(&[&pem, &d, &jwk_text, &serde_json::to_string(&pem).unwrap()]);
    let values = [
        ("the PEM", json!(pem)),
        ("the JWK", jwk.clone()),
        ("the JWK as text", json!(jwk_text)),
    ];
    let names = [("the PEM", pem.as_str()), ("the JWK", jwk_text.as_str())];

    let dir = tempfile::tempdir().unwrap();
    let mut server = BinServer::start(dir.path(), &[], "debug", true);
    let mut log = server.child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        log.read_to_end(&mut text).unwrap();
        text
    });
    server.wait_ready().await;
    let base = server.base();
    let auth = bearer(ADMIN);
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let call = |method: Method, path: String, body: Value| {
        let url = format!("{base}{path}");
        async move { send(method, &url, &headers, Bytes::from(body.to_string())).await }
    };
    let created = call(
        Method::POST,
        "/v1/organisations/acme/keys".into(),
        json!({"name": "target", "algorithm": "EdDSA"}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let public_jwk = {
        let jwks = send(
            Method::GET,
            &format!("{base}/v1/organisations/acme/jwks.json"),
            &[],
            Bytes::new(),
        )
        .await;
        jwks.json()["keys"][0].clone()
    };
    let public_pem = created.json()["publicKey"].clone();

    // Every JSON body.
    let keys = "/v1/organisations/acme/keys".to_owned();
    let route = |what, method, path: String, base, nested| Route {
        what,
        method,
        path,
        base,
        nested,
    };
    let routes = [
        route(
            "create",
            Method::POST,
            keys.clone(),
            json!({"name": "n", "algorithm": "RS256", "bits": 2048, "expiresAt": "2099-01-01T00:00:00Z"}),
            None,
        ),
        route(
            "upload (PEM)",
            Method::POST,
            keys.clone(),
            json!({"name": "u", "publicKey": public_pem, "algorithm": "EdDSA", "expiresAt": "2099-01-01T00:00:00Z"}),
            None,
        ),
        route(
            "upload (JWK)",
            Method::POST,
            keys.clone(),
            json!({"name": "u", "jwk": public_jwk}),
            Some("jwk"),
        ),
        route(
            "patch",
            Method::PATCH,
            format!("/v1/organisations/acme/keys/{id}"),
            json!({"state": "active", "name": "n"}),
            None,
        ),
        route(
            "rotate",
            Method::POST,
            format!("/v1/organisations/acme/keys/{id}/rotate"),
            json!({"graceSeconds": 60}),
            None,
        ),
        route(
            "verify",
            Method::POST,
            "/v1/verify".into(),
            json!({"token": "a.b.c", "audience": "signet", "issuer": "x"}),
            None,
        ),
    ];
    let mut sent = 0;
    let mut answers = Vec::new();
    for r in &routes {
        let (paths, objects) = r.fields();
        let mut hostile: Vec<(String, Value)> = Vec::new();
        for path in &paths {
            for (form, value) in &values {
                let case = format!("{}: {} = {form}", r.what, path.join("."));
                hostile.push((case, with(&r.base, path, value)));
            }
        }
        for inside in &objects {
            for (form, name) in names {
                let place = inside.unwrap_or("the body");
                let case = format!("{}: {form} as a member name in {place}", r.what);
                hostile.push((case, with_name(&r.base, *inside, name)));
            }
        }
        for (case, body) in hostile {
            let r = call(r.method.clone(), r.path.clone(), body).await;
            sent += 1;
            let text = r.text();
            if let Some(run) = leak(&r.body, &secrets) {
                panic!("{case}: the answer ({}) repeats {run:?}: {text}", r.status);
            }
            answers.push((case, r.status.as_u16(), text));
        }
    }
    // Most are refused; none may leave anything behind.
    let refused = answers.iter().filter(|(_, s, _)| *s == 400).count();
    for (case, status, text) in &answers {
        if *status == 400 {
            let body: Value = serde_json::from_str(text).unwrap();
            assert_eq!(body["code"], "invalid_request", "{case}: {text}");
        }
    }
    server.terminate();
    let log = tokio::task::spawn_blocking(move || {
        server.child.wait().unwrap();
        reader.join().unwrap()
    })
    .await
    .unwrap();
    assert!(!log.is_empty(), "the log was captured");
    if let Some(run) = leak(&log, &secrets) {
        panic!("the log repeats {run:?}");
    }
    for (path, bytes) in all_bytes(dir.path()) {
        assert!(leak(&bytes, &secrets).is_none(), "{path} holds the secret");
    }
    println!("{sent} hostile bodies, {refused} refused with 400, nothing repeated");
    for (case, status, text) in answers {
        println!("{status} {case}: {text}");
    }
}
