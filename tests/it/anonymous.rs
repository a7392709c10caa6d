//! Anonymous clients cannot write to the disk: requests without a valid
//! credential are counted in `/metrics`, not audited; a valid credential
//! without the right is audited, with bounded fields.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::support::*;

const REFUSALS: usize = 100_000;
const CONNECTIONS: usize = 8;

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let meta = e.unwrap();
            let path = meta.path();
            if path.is_dir() {
                dir_bytes(&path)
            } else {
                meta.metadata().unwrap().len()
            }
        })
        .sum()
}

/// `signet audit verify` on a stopped server's data dir: its stdout, after
/// asserting exit 0.
fn audit_verify(dir: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(["audit", "verify", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn connect(addr: std::net::SocketAddr) -> SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// The `signet_unauthenticated_refusals_total` samples, by reason.
async fn refusal_counts(app: &TestApp) -> HashMap<String, u64> {
    let metrics = app.get("/metrics").await.text();
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("signet_unauthenticated_refusals_total{reason=\""))
        .map(|l| {
            let (reason, value) = l.split_once("\"} ").unwrap();
            (reason.to_owned(), value.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_thousand_anonymous_refusals_leave_the_disk_and_the_audit_chain_alone() {
    let app = spawn_app().await;
    let (kid, _) = key_of(&app.create_key("acme", json!({"name": "a"})).await);
    let before = dir_bytes(app.dir.path());

    // Four kinds of bad credential, each with as much attacker text as the
    // header allows to matter: none, the wrong scheme, junk, and a token
    // naming a real key with a forged signature.
    let junk = "x".repeat(2048);
    let forged = format!(
        "{}.{}",
        signing_input(
            &json!({"alg": "RS256", "kid": kid}),
            &json!({"org": "acme", "role": "OWNER", "sub": "y".repeat(1024), "aud": "signet", "exp": now() + 600}),
        ),
        URL_SAFE_NO_PAD.encode([7u8; 256])
    );
    let credentials: [(Option<String>, &str); 4] = [
        (None, "missing"),
        (Some(format!("Basic {junk}")), "not_bearer"),
        (Some(bearer(&junk)), "malformed"),
        (Some(bearer(&forged)), "bad_signature"),
    ];
    let routes = [
        (Method::GET, "/v1/organisations/acme/keys".to_owned()),
        (Method::POST, "/v1/organisations/acme/keys".to_owned()),
        (Method::DELETE, format!("/v1/organisations/acme/keys/{kid}")),
        (Method::GET, "/v1/organisations/acme/audit".to_owned()),
        (Method::POST, "/organization/acme/key".to_owned()),
    ];
    let credentials = std::sync::Arc::new(credentials.map(|(c, _)| c));
    let routes = std::sync::Arc::new(routes);

    let started = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|task| {
            let (credentials, routes, addr) = (credentials.clone(), routes.clone(), app.addr);
            tokio::spawn(async move {
                let mut sender = connect(addr).await;
                let mut statuses = HashMap::<u16, usize>::new();
                for i in (task..REFUSALS).step_by(CONNECTIONS) {
                    let (method, path) = &routes[i % routes.len()];
                    let mut req = Request::builder().method(method).uri(path);
                    if let Some(c) = &credentials[i % credentials.len()] {
                        req = req.header("authorization", c);
                    }
                    let res = sender
                        .send_request(req.body(Empty::new()).unwrap())
                        .await
                        .expect("the server keeps the connection open");
                    *statuses.entry(res.status().as_u16()).or_default() += 1;
                    res.into_body().collect().await.unwrap();
                }
                statuses
            })
        })
        .collect();
    let mut statuses = HashMap::<u16, usize>::new();
    for t in tasks {
        for (status, n) in t.await.unwrap() {
            *statuses.entry(status).or_default() += n;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(statuses, HashMap::from([(401, REFUSALS)]));
    eprintln!(
        "{REFUSALS} anonymous refusals over {CONNECTIONS} keep-alive connections in {:.2?} ({:.0}/s)",
        elapsed,
        REFUSALS as f64 / elapsed.as_secs_f64()
    );

    let per_kind = (REFUSALS / 4) as u64;
    let expected: HashMap<String, u64> = ["missing", "not_bearer", "malformed", "bad_signature"]
        .into_iter()
        .map(|r| (r.to_owned(), per_kind))
        .collect();
    assert_eq!(refusal_counts(&app).await, expected);

    let events = app
        .request_as(Method::GET, "/v1/organisations/acme/audit", ADMIN)
        .await
        .json();
    let actions: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["action"])
        .collect();
    assert_eq!(actions, [&json!("key.created")], "no refusal was audited");

    let dir = app.stop().await;
    let after = dir_bytes(dir.path());
    let growth = after.saturating_sub(before);
    eprintln!("data dir: {before} bytes before, {after} after ({growth} grown)");
    assert!(growth < 1 << 20, "the data dir grew by {growth} bytes");
    let report = audit_verify(dir.path());
    assert!(report.contains("1 events"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_credential_without_the_right_is_audited_with_bounded_fields() {
    let app = spawn_app().await;
    let (acme_kid, acme) = key_of(&app.create_key("acme", json!({"name": "a"})).await);
    let (globex_kid, _) = key_of(&app.create_key("globex", json!({"name": "g"})).await);
    // A long `sub`, mixed one- and multi-byte, from a valid token of acme.
    let sub = "ü€".repeat(1500);
    let mut c = claims("acme", "OWNER");
    c["sub"] = json!(sub);
    let token = acme.org_token(&acme_kid, c);

    app.delete_key("globex", &globex_kid, &token)
        .await
        .assert_error(403, "forbidden");

    let audit = |org: &'static str| {
        let app = &app;
        async move {
            app.request_as(
                Method::GET,
                &format!("/v1/organisations/{org}/audit"),
                ADMIN,
            )
            .await
            .json()["events"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let events = audit("globex").await;
    assert_eq!(events.len(), 2, "{events:?}");
    let denied = &events[0];
    let mut fields: Vec<&str> = denied
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "action",
            "actor",
            "clientAddress",
            "id",
            "organisationId",
            "outcome",
            "prevHash",
            "time"
        ]
    );
    assert_eq!(denied["action"], "access.denied");
    assert_eq!(denied["organisationId"], "globex");
    assert_eq!(
        denied["outcome"],
        "you can only manage keys for your own organisation"
    );
    assert_eq!(denied["clientAddress"], "127.0.0.1");
    assert_eq!(denied["actor"]["kind"], "token");
    assert_eq!(denied["actor"]["keyId"], acme_kid.as_str());
    let stored_sub = denied["actor"]["sub"].as_str().unwrap();
    assert!(
        stored_sub.len() <= signet::audit::MAX_TEXT_BYTES,
        "{}",
        stored_sub.len()
    );
    assert!(sub.starts_with(stored_sub.strip_suffix('…').unwrap()));
    assert!(serde_json::to_vec(denied).unwrap().len() < 1024, "{denied}");
    assert_eq!(
        audit("acme").await.len(),
        1,
        "the refusal is recorded where it was refused"
    );

    let report = audit_verify(app.stop().await.path());
    assert!(report.contains("3 events"), "{report}");
}
