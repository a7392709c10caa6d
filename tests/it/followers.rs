//! The change feed (`GET /v1/events`) and followers (`serve --upstream`):
//! event order and ids, resume and reset, heartbeats, the subscriber cap
//! and send deadline; a follower serving from memory, refusing writes with
//! 421, failing closed, and holding a revoking answer until it has applied
//! it (also under SIGSTOP, a silently dropped path and upstream restarts).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use signet::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::lifecycle::{until, verdict};
use crate::support::*;

pub(crate) const FOLLOWER_TOKEN: &str = "a-follower-token-0123456789";

/// One event read from a stream.
#[derive(Debug, Clone)]
struct Ev {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// A subscriber of a feed.
struct Sse {
    body: Incoming,
    buf: String,
}

impl Sse {
    async fn open(url: &str, last: Option<&str>) -> Result<Sse, Resp> {
        Sse::open_as(url, last, None).await
    }

    /// [`Sse::open`] with `token` as the bearer credential.
    async fn open_as(url: &str, last: Option<&str>, token: Option<&str>) -> Result<Sse, Resp> {
        let mut req = Request::builder().method(Method::GET).uri(url);
        if let Some(last) = last {
            req = req.header("last-event-id", last);
        }
        if let Some(token) = token {
            req = req.header("authorization", bearer(token));
        }
        let req = req.body(Full::new(Bytes::new())).unwrap();
        let res = Client::builder(TokioExecutor::new())
            .build_http::<Full<Bytes>>()
            .request(req)
            .await
            .unwrap();
        if res.status() != 200 {
            let status = res.status();
            let headers = res.headers().clone();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            return Err(Resp {
                status,
                headers,
                body,
            });
        }
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Ok(Sse {
            body: res.into_body(),
            buf: String::new(),
        })
    }

    /// A subscriber; panics unless 200.
    async fn subscribe(url: &str, last: Option<&str>) -> Sse {
        Sse::subscribe_as(url, last, None).await
    }

    /// [`Sse::subscribe`] with `token` as the bearer credential.
    async fn subscribe_as(url: &str, last: Option<&str>, token: Option<&str>) -> Sse {
        match Sse::open_as(url, last, token).await {
            Ok(sse) => sse,
            Err(r) => panic!("GET {url}: {} {}", r.status, r.text()),
        }
    }

    /// The next event of any kind, within 5 s.
    async fn any(&mut self) -> Ev {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Ev {
                    id: None,
                    event: String::new(),
                    data: Value::Null,
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = v.into();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        ev.data = serde_json::from_str(v).unwrap();
                    }
                }
                return ev;
            }
            let frame = tokio::time::timeout(Duration::from_secs(5), self.body.frame())
                .await
                .expect("an event within 5 s")
                .expect("the stream goes on")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The next event that is not a heartbeat.
    async fn next(&mut self) -> Ev {
        loop {
            let ev = self.any().await;
            if ev.event != "fresh" {
                return ev;
            }
        }
    }
}

async fn patch(app: &TestApp, org: &str, id: &str, body: Value) -> Resp {
    app.request(
        Method::PATCH,
        &format!("/v1/organisations/{org}/keys/{id}"),
        &[
            ("authorization", &bearer(ADMIN)),
            ("content-type", "application/json"),
        ],
        serde_json::to_vec(&body).unwrap(),
    )
    .await
}

async fn rotate(app: &TestApp, org: &str, id: &str, grace: u64) -> Value {
    let r = app
        .request(
            Method::POST,
            &format!("/v1/organisations/{org}/keys/{id}/rotate"),
            &[
                ("authorization", &bearer(ADMIN)),
                ("content-type", "application/json"),
            ],
            serde_json::to_vec(&json!({ "graceSeconds": grace })).unwrap(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

fn kid(created: &Value) -> String {
    created["id"].as_str().unwrap().to_owned()
}

async fn feed_order_and_ids() {
    let app = spawn_app().await;
    let a = app
        .create_key("acme", json!({"name": "a", "algorithm": "ES256"}))
        .await;
    let mut all = Sse::subscribe(&app.url("/v1/events"), None).await;
    let mut other = Sse::subscribe(&app.url("/v1/organisations/other/events"), None).await;
    let reset = all.next().await;
    assert_eq!(reset.event, "reset");
    let version = reset.data["version"].as_u64().unwrap();
    assert_eq!(reset.id, Some(version));
    let keys = reset.data["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], kid(&a));
    assert_eq!(keys[0]["org"], "acme");
    assert_eq!(keys[0]["jwk"]["kid"], kid(&a));
    let public = app.get(&format!("/v1/keys/{}", kid(&a))).await.json();
    assert_eq!(keys[0]["key"], public);
    let other_reset = other.next().await;
    assert_eq!(other_reset.data["keys"], json!([]));

    let b = app
        .create_key("acme", json!({"name": "b", "algorithm": "EdDSA"}))
        .await;
    assert_eq!(
        patch(&app, "acme", &kid(&a), json!({"state": "disabled"}))
            .await
            .status,
        200
    );
    // A change to an unpublished key is no event.
    assert_eq!(
        patch(&app, "acme", &kid(&a), json!({"name": "quiet"}))
            .await
            .status,
        200
    );
    assert_eq!(
        patch(&app, "acme", &kid(&a), json!({"state": "active"}))
            .await
            .status,
        200
    );
    let successor = rotate(&app, "acme", &kid(&b), 0).await;
    assert_eq!(
        patch(&app, "acme", &kid(&a), json!({"state": "disabled"}))
            .await
            .status,
        200
    );
    // Deleting a disabled key is no event either.
    assert_eq!(app.delete_key("acme", &kid(&a), ADMIN).await.status, 204);
    assert_eq!(
        app.delete_key("acme", &kid(&successor), ADMIN).await.status,
        204
    );
    let c = app
        .create_key("other", json!({"name": "c", "algorithm": "ES256"}))
        .await;

    let expected = [
        ("published", kid(&b), None),
        ("withdrawn", kid(&a), Some("disabled")),
        ("published", kid(&a), None),
        // The rotation, in either order.
        ("published", kid(&successor), None),
        ("withdrawn", kid(&b), Some("expired")),
        ("withdrawn", kid(&a), Some("disabled")),
        ("withdrawn", kid(&successor), Some("deleted")),
        ("published", kid(&c), None),
    ];
    let mut last = version;
    let mut ids = Vec::new();
    let mut rotation = Vec::new();
    for (i, (event, key, reason)) in expected.into_iter().enumerate() {
        let ev = match i {
            3 => {
                rotation = vec![all.next().await, all.next().await];
                rotation.sort_by_key(|e| e.event != "published");
                rotation[0].clone()
            }
            4 => rotation[1].clone(),
            _ => all.next().await,
        };
        assert_eq!(
            (ev.event.as_str(), ev.data["kid"].as_str()),
            (event, Some(key.as_str())),
            "{ev:?}"
        );
        if let Some(reason) = reason {
            assert_eq!(ev.data["reason"], reason, "{ev:?}");
        } else {
            assert_eq!(ev.data["key"]["id"], key.as_str());
            assert_eq!(ev.data["jwk"]["kid"], key.as_str());
        }
        ids.push(ev.id.unwrap());
    }
    ids[3..5].sort_unstable();
    for &id in &ids {
        assert!(id > last, "ids increase strictly: {id} after {last}");
        last = id;
    }
    // The rotation: two events with consecutive ids.
    assert_eq!(ids[4], ids[3] + 1);
    // The other organisation's stream sees only its own key, with the
    // server's id.
    let ev = other.next().await;
    assert_eq!((ev.event.as_str(), ev.id), ("published", Some(ids[7])));

    // Resume after a gap: exactly the events after the id.
    let mut resumed = Sse::subscribe(&app.url("/v1/events"), Some(&ids[2].to_string())).await;
    for want in &ids[3..] {
        assert_eq!(resumed.next().await.id, Some(*want));
    }
    // Garbage (an id not written as the server writes it, too), the
    // future, and an id of no run of this server: a reset.
    for last in [
        "garbage",
        &format!("+{}", ids[2]),
        &format!("0{}", ids[2]),
        &(last + 1000).to_string(),
        &(version - 100_000_000).to_string(),
    ] {
        let mut s = Sse::subscribe(&app.url("/v1/events"), Some(last)).await;
        let ev = s.next().await;
        assert_eq!(ev.event, "reset", "Last-Event-ID {last}");
        assert_eq!(ev.data["version"], json!(ids[7]));
        assert_eq!(ev.data["keys"].as_array().unwrap().len(), 1);
    }
}

on_both_backends!(feed_order_and_ids);

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_say_how_fresh_the_server_is() {
    let app = spawn_with(|c| c.events.heartbeat_ms = 100).await;
    let mut s = Sse::subscribe(&app.url("/v1/events"), None).await;
    let reset = s.any().await;
    let started = Instant::now();
    for _ in 0..3 {
        let ev = s.any().await;
        assert_eq!(ev.event, "fresh");
        assert_eq!(ev.id, None);
        assert_eq!(ev.data["version"], reset.data["version"]);
        let at = ev.data["freshAsOf"].as_str().unwrap();
        // RFC 3339 with milliseconds.
        assert!(at.ends_with('Z') && at.len() == 24, "{at}");
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribers_beyond_the_cap_get_503() {
    let app = spawn_with(|c| c.events.max_subscribers = 2).await;
    let first = Sse::subscribe(&app.url("/v1/events"), None).await;
    let _second = Sse::subscribe(&app.url("/v1/organisations/acme/events"), None).await;
    let Err(third) = Sse::open(&app.url("/v1/events"), None).await else {
        panic!("a third subscriber is refused");
    };
    third.assert_error(503, "unavailable");
    // A place frees when a stream ends.
    drop(first);
    let mut reopened = None;
    for _ in 0..100 {
        if let Ok(s) = Sse::open(&app.url("/v1/events"), None).await {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened.is_some(), "the place of a closed stream is freed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_stops_reading_is_dropped() {
    let app = spawn_with(|c| {
        c.events.send_timeout_ms = 300;
        c.keys.max_per_org = 100;
    })
    .await;
    // A raw client with a small receive buffer that never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(app.addr).await.unwrap();
    stuck
        .write_all(b"GET /v1/events HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let created = app.create_key("acme", json!({"name": "k"})).await;
    let id = kid(&created);
    let subscribers = |text: &str| metric(text, "signet_feed_subscribers");
    assert_eq!(subscribers(&app.get("/metrics").await.text()), 1.0);
    // Renames publish the key again and again: ~1.5 KB each.
    let started = Instant::now();
    let mut renames = 0;
    while subscribers(&app.get("/metrics").await.text()) > 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still subscribed after {renames} renames"
        );
        let r = patch(
            &app,
            "acme",
            &id,
            json!({"name": format!("name {renames}")}),
        )
        .await;
        assert_eq!(r.status, 200);
        renames += 1;
    }
    // Its connection is closed too: reading now ends (after what the
    // buffers held) instead of waiting.
    let mut sink = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stuck.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "the stuck subscriber's connection was closed"
    );
    // And the server still serves everyone else.
    let mut s = Sse::subscribe(&app.url("/v1/events"), None).await;
    assert_eq!(s.next().await.event, "reset");
}

/// A raw subscriber of `GET /v1/events`, once its `reset` has arrived.
async fn raw_subscriber(app: &TestApp) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(b"GET /v1/events HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("event: reset") {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended before its reset");
        seen.extend_from_slice(&buf[..n]);
    }
    tcp
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_subscriber_has_no_task_of_its_own() {
    // The server runs on this runtime; raw sockets add no client tasks.
    let app = spawn_with(|c| c.events.heartbeat_ms = 50).await;
    let _first = raw_subscriber(&app).await;
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    let mut subscribers = Vec::new();
    for _ in 0..40 {
        subscribers.push(raw_subscriber(&app).await);
    }
    // Heartbeats go on meanwhile: streams are woken, not spawned.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let added = tasks().saturating_sub(before);
    assert!(
        added <= subscribers.len() + 2,
        "{added} tasks for {} subscribers: more than their connections",
        subscribers.len()
    );
    // Every stream still gets its heartbeats.
    for tcp in &mut subscribers {
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("event: fresh") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "a stream ended");
            seen.extend_from_slice(&buf[..n]);
        }
    }
}

/// A follower of `upstream` (in this process), with `adjust` applied.
async fn follower_of(upstream: &TestApp, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let base = upstream.url("");
    spawn_with(move |c| {
        c.upstream = Some(signet::config::Upstream {
            url: base,
            token: Some(signet::config::Secret::new(FOLLOWER_TOKEN.into())),
            ..Default::default()
        });
        c.cluster.max_staleness_ms = 500;
        adjust(c);
    })
    .await
}

async fn upstream_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn_with(|c| {
        c.followers.token = Some(signet::config::Secret::new(FOLLOWER_TOKEN.into()));
        c.cluster.max_staleness_ms = 500;
        adjust(c);
    })
    .await
}

/// Polls until `check` holds, at most `limit`.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn auth_status(base: &str, token: &str) -> u16 {
    let url = format!("{base}/v1/auth");
    match try_send(
        Method::GET,
        &url,
        &[("authorization", &bearer(token))],
        Bytes::new(),
    )
    .await
    {
        Ok(r) => r.status.as_u16(),
        Err(_) => 0,
    }
}

/// An OWNER token of `created`, a new key of acme: the key's id and the token.
fn owner_token(created: &Value) -> (String, String) {
    let (id, signer) = key_of(created);
    let token = signer.org_token(&id, claims("acme", "OWNER"));
    (id, token)
}

/// A new ES256 key of acme created on `app`, and an OWNER token it signs.
async fn new_key(app: &TestApp) -> (String, String) {
    let created = app
        .create_key("acme", json!({"name": "k", "algorithm": "ES256"}))
        .await;
    owner_token(&created)
}

/// Waits until `/v1/auth` at `base` accepts `token`.
async fn until_verified(what: &str, base: &str, token: &str) {
    eventually(what, Duration::from_secs(10), || async {
        auth_status(base, token).await == 200
    })
    .await;
}

async fn a_follower_serves_from_memory_and_refuses_the_rest() {
    let upstream = upstream_with(|_| {}).await;
    let (id, token) = new_key(&upstream).await;
    let follower = follower_of(&upstream, |_| {}).await;
    eventually(
        "the follower has the key",
        Duration::from_secs(10),
        || async { follower.jwks_kids().await == vec![id.clone()] },
    )
    .await;
    assert_eq!(
        follower.get("/v1/organisations/acme/jwks.json").await.body,
        upstream.get("/v1/organisations/acme/jwks.json").await.body
    );
    assert_eq!(
        follower.get(&format!("/v1/keys/{id}")).await.json(),
        upstream.get(&format!("/v1/keys/{id}")).await.json()
    );
    assert_eq!(follower.verify(&token).await["valid"], true);
    assert_eq!(auth_status(&follower.url(""), &token).await, 200);
    assert_eq!(follower.get("/readyz").await.status, 200);
    assert_eq!(follower.get("/healthz").await.status, 200);
    let metrics = follower.get("/metrics").await.text();
    assert!(
        metrics.contains("signet_cluster_fresh_age_seconds"),
        "{metrics}"
    );
    // Everything else: 421 before authentication, naming the upstream.
    let refused = [
        (Method::POST, "/v1/organisations/acme/keys".to_owned()),
        (Method::GET, "/v1/organisations/acme/keys".to_owned()),
        (Method::DELETE, format!("/v1/organisations/acme/keys/{id}")),
        (Method::PATCH, format!("/v1/organisations/acme/keys/{id}")),
        (
            Method::POST,
            format!("/v1/organisations/acme/keys/{id}/rotate"),
        ),
        (Method::GET, "/v1/organisations/acme/audit".to_owned()),
        (Method::GET, "/v1/events".to_owned()),
        (Method::GET, "/v1/organisations/acme/events".to_owned()),
        (Method::POST, "/v1/followers/ack".to_owned()),
        (Method::GET, "/v1/cluster".to_owned()),
    ];
    for (method, path) in refused {
        let r = follower
            .request(method.clone(), &path, &[], Bytes::new())
            .await;
        r.assert_error(421, "read_only");
        assert_eq!(r.json()["cause"], upstream.url(""), "{method} {path}");
    }
    let compat = follower
        .request(Method::POST, "/organization/acme/key", &[], Bytes::new())
        .await;
    assert_eq!(compat.status, 421);
    assert_eq!(compat.json()["success"], false);
    assert_eq!(compat.json()["code"], "read_only");
    assert_eq!(compat.json()["cause"], upstream.url(""));
    // The console too, with its security headers.
    let console = follower.get("/console").await;
    console.assert_error(421, "read_only");
    assert!(console.header("content-security-policy").is_some());
    // The follower's verifications count in the key's usage upstream.
    eventually(
        "the upstream sums the follower's usage",
        Duration::from_secs(10),
        || async {
            let keys = upstream.list_keys("acme").await.json();
            keys["keys"][0]["usage"]["verifiedLastHour"].as_u64() >= Some(2)
        },
    )
    .await;
    // The upstream counts it.
    let metrics = upstream.get("/metrics").await.text();
    assert!(
        metrics.contains("signet_followers{state=\"live\"} 1"),
        "{metrics}"
    );
    // A key deleted upstream is gone on the follower when the DELETE answers.
    assert_eq!(upstream.delete_key("acme", &id, ADMIN).await.status, 204);
    assert_eq!(auth_status(&follower.url(""), &token).await, 401);
    assert!(follower.jwks_kids().await.is_empty());
}

on_both_backends!(a_follower_serves_from_memory_and_refuses_the_rest);

/// The withheld keys a `reset` lists: (kid, reason, expiresAt), by kid.
fn withheld_in(reset: &Ev) -> Vec<(String, String, Option<String>)> {
    assert_eq!(reset.event, "reset");
    let mut held: Vec<_> = reset.data["withheld"]
        .as_array()
        .expect("a reset lists the withheld keys")
        .iter()
        .map(|h| {
            assert_eq!(h["org"], "acme", "{h}");
            let field = |name: &str| h[name].as_str().unwrap().to_owned();
            let expires_at = h["expiresAt"].as_str().map(str::to_owned);
            (field("kid"), field("reason"), expires_at)
        })
        .collect();
    held.sort();
    held
}

/// A follower that starts after keys were withdrawn upstream answers
/// their tokens as the upstream does (`key_disabled`, `key_expired`, and
/// `unknown_key` for a deleted key only): the `reset` it starts from lists
/// the withheld keys.
async fn a_follower_started_after_a_withdrawal_answers_as_its_upstream() {
    let upstream = upstream_with(|_| {}).await;
    let disable = |id: String| {
        let upstream = &upstream;
        async move {
            let r = patch(upstream, "acme", &id, json!({"state": "disabled"})).await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
    };
    let (disabled, disabled_token) = new_key(&upstream).await;
    disable(disabled.clone()).await;
    // Retired by a rotation with grace 0: expired.
    let (retired, retired_token) = new_key(&upstream).await;
    let (_, successor_token) = owner_token(&rotate(&upstream, "acme", &retired, 0).await);
    // Disabled now, expired in a few seconds: `key_expired` from then on.
    let at = now() + 4;
    let expires_at = signet::keys::rfc3339(at * 1000);
    let body = json!({"name": "brief", "algorithm": "ES256", "expiresAt": expires_at});
    let (brief, brief_token) = owner_token(&upstream.create_key("acme", body).await);
    disable(brief.clone()).await;
    let (deleted, deleted_token) = new_key(&upstream).await;
    assert_eq!(
        upstream.delete_key("acme", &deleted, ADMIN).await.status,
        204
    );

    // A follower's reset lists them, an organisation's only its own.
    let mut expected = vec![
        (disabled, "disabled".to_owned(), None),
        (retired, "expired".to_owned(), None),
        (brief, "disabled".to_owned(), Some(expires_at)),
    ];
    expected.sort();
    let token = Some(FOLLOWER_TOKEN);
    for path in ["/v1/events", "/v1/organisations/acme/events"] {
        let url = upstream.url(&format!("{path}?withheld=true"));
        let mut sse = Sse::subscribe_as(&url, None, token).await;
        assert_eq!(withheld_in(&sse.next().await), expected, "{path}");
        // Anyone else's has only the published keys, as the feed's
        // contract says; asking for more needs the follower token.
        let mut public = Sse::subscribe(&upstream.url(path), None).await;
        let reset = public.next().await;
        assert_eq!(reset.data.get("withheld"), None, "{path}: {}", reset.data);
        for other in [None, Some(ADMIN), Some("not-the-follower-token-0123456789")] {
            let Err(r) = Sse::open_as(&url, None, other).await else {
                panic!("{path}: withheld keys shown without the follower token");
            };
            r.assert_error(401, "unauthorized");
        }
    }
    let other = upstream.url("/v1/organisations/other/events?withheld=true");
    let mut other = Sse::subscribe_as(&other, None, token).await;
    assert_eq!(other.next().await.data["withheld"], json!([]));

    let follower = follower_of(&upstream, |_| {}).await;
    let base = follower.url("");
    until_verified("the follower has the successor", &base, &successor_token).await;
    let verdicts = [
        (&disabled_token, "key_disabled"),
        (&retired_token, "key_expired"),
        (&brief_token, "key_disabled"),
        (&deleted_token, "unknown_key"),
    ];
    for (token, code) in verdicts {
        for app in [&upstream, &follower] {
            assert_eq!(verdict(app, token).await, code, "{}", app.url(""));
        }
    }
    // Each one's timer expires the disabled key at its second.
    until(at).await;
    for app in [&upstream, &follower] {
        eventually(
            "the disabled key expires",
            Duration::from_secs(5),
            || async { verdict(app, &brief_token).await == "key_expired" },
        )
        .await;
    }
}

on_both_backends!(a_follower_started_after_a_withdrawal_answers_as_its_upstream);

/// Changes to a key that is already withheld upstream (deleted, or
/// retired while disabled) reach a running follower, which then refuses
/// its tokens with the upstream's code: as `event: held`, on streams that
/// ask for it (`?withheld=true`) only. An anonymous subscriber's stream
/// has no event for them, as the feed's contract says.
async fn a_follower_follows_changes_to_keys_already_withheld() {
    let upstream = upstream_with(|_| {}).await;
    let follower = follower_of(&upstream, |_| {}).await;
    let mut plain = Sse::subscribe(&upstream.url("/v1/events"), None).await;
    let token = Some(FOLLOWER_TOKEN);
    let asking_url = upstream.url("/v1/events?withheld=true");
    let mut asking = Sse::subscribe_as(&asking_url, None, token).await;
    let scoped_url = upstream.url("/v1/organisations/acme/events?withheld=true");
    let mut scoped = Sse::subscribe_as(&scoped_url, None, token).await;
    for sse in [&mut plain, &mut asking, &mut scoped] {
        assert_eq!(sse.next().await.event, "reset");
    }
    let disable = |id: String| {
        let upstream = &upstream;
        async move {
            let r = patch(upstream, "acme", &id, json!({"state": "disabled"})).await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
    };
    let delete = |id: String| {
        let upstream = &upstream;
        async move { assert_eq!(upstream.delete_key("acme", &id, ADMIN).await.status, 204) }
    };
    // Disabled, then deleted.
    let (gone, gone_token) = new_key(&upstream).await;
    disable(gone.clone()).await;
    delete(gone.clone()).await;
    // Retired by a rotation with grace 0, then deleted.
    let (retired, retired_token) = new_key(&upstream).await;
    rotate(&upstream, "acme", &retired, 0).await;
    delete(retired.clone()).await;
    // Disabled, then retired by a rotation with a grace of 3 s: a new
    // expiry, then the expiry itself.
    let (slow, slow_token) = new_key(&upstream).await;
    disable(slow.clone()).await;
    rotate(&upstream, "acme", &slow, 3).await;
    // Disabled, then retired by a rotation with grace 0.
    let (held, held_token) = new_key(&upstream).await;
    disable(held.clone()).await;
    let (last, last_token) = owner_token(&rotate(&upstream, "acme", &held, 0).await);

    let base = follower.url("");
    until_verified("the follower has the last successor", &base, &last_token).await;
    for (token, code) in [
        (&gone_token, "unknown_key"),
        (&retired_token, "unknown_key"),
        (&held_token, "key_expired"),
    ] {
        assert_eq!(verdict(&upstream, token).await, code);
        assert_eq!(verdict(&follower, token).await, code);
    }

    // Each stream through the last rotation (its successor's `published`)
    // and, where asked for, through the five `held` events (the last one
    // when the disabled key's grace ends): the same events, but for the
    // `held` ones the asking streams have in addition.
    let (mut plain_seen, mut asking_seen, mut scoped_seen) = (Vec::new(), Vec::new(), Vec::new());
    for (sse, seen, holds) in [
        (&mut plain, &mut plain_seen, 0),
        (&mut asking, &mut asking_seen, 5),
        (&mut scoped, &mut scoped_seen, 5),
    ] {
        let done = |seen: &Vec<(String, String, String, bool)>| {
            seen.iter()
                .any(|(e, kid, _, _)| e == "published" && *kid == last)
                && seen.iter().filter(|(e, _, _, _)| e == "held").count() == holds
        };
        while !done(seen) {
            let ev = sse.next().await;
            let kid = ev.data["kid"].as_str().unwrap().to_owned();
            let reason = ev.data["reason"].as_str().unwrap_or_default().to_owned();
            let until = ev.event == "held" && ev.data["expiresAt"].is_string();
            seen.push((ev.event, kid, reason, until));
        }
    }
    assert_eq!(scoped_seen, asking_seen, "one organisation: the same");
    let (held_events, others): (Vec<_>, Vec<_>) = asking_seen
        .into_iter()
        .partition(|(e, _, _, _)| e == "held");
    assert_eq!(others, plain_seen);
    let expected = [
        (&gone, "deleted", false),
        (&retired, "deleted", false),
        (&slow, "disabled", true),
        (&held, "expired", false),
        (&slow, "expired", false),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(kid, reason, until)| {
            (
                "held".to_owned(),
                kid.to_string(),
                reason.to_string(),
                *until,
            )
        })
        .collect();
    assert_eq!(held_events, expected);
    for app in [&upstream, &follower] {
        assert_eq!(verdict(app, &slow_token).await, "key_expired");
    }
}

on_both_backends!(a_follower_follows_changes_to_keys_already_withheld);

/// Hammers `base`'s `/v1/auth` with `token` until told to stop; the
/// instants at which each acceptance was *sent*.
fn hammer(
    base: String,
    token: String,
    stop: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<Instant>> {
    tokio::spawn(async move {
        let mut accepted = Vec::new();
        while stop.load(Ordering::SeqCst) == 0 {
            let sent = Instant::now();
            if auth_status(&base, &token).await == 200 {
                accepted.push(sent);
            }
        }
        accepted
    })
}

/// Stops `hammers` and asserts none of them had a token accepted that was
/// sent after `answered` (the revoking answer).
async fn none_accepted_after(
    hammers: Vec<tokio::task::JoinHandle<Vec<Instant>>>,
    stop: &AtomicUsize,
    answered: Instant,
    what: &str,
) {
    stop.store(1, Ordering::SeqCst);
    for h in hammers {
        let late = h
            .await
            .unwrap()
            .into_iter()
            .filter(|&at| at > answered)
            .count();
        assert_eq!(late, 0, "{what}: {late} acceptances after the answer");
    }
}

async fn a_delete_answers_only_after_the_follower_refuses() {
    let upstream = upstream_with(|_| {}).await;
    let follower = follower_of(&upstream, |_| {}).await;
    let second = follower_of(&upstream, |_| {}).await;
    for round in 0..5 {
        let (id, token) = new_key(&upstream).await;
        for f in [&follower, &second] {
            until_verified("the follower verifies the new key", &f.url(""), &token).await;
        }
        let stop = Arc::new(AtomicUsize::new(0));
        let hammers: Vec<_> = (0..3)
            .flat_map(|_| [follower.url(""), second.url(""), upstream.url("")])
            .map(|base| hammer(base, token.clone(), stop.clone()))
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = if round % 2 == 0 {
            upstream.delete_key("acme", &id, ADMIN).await
        } else {
            patch(&upstream, "acme", &id, json!({"state": "disabled"})).await
        };
        assert!(r.status.is_success(), "{}", r.text());
        let answered = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        none_accepted_after(hammers, &stop, answered, &format!("round {round}")).await;
        if round % 2 == 1 {
            assert_eq!(upstream.delete_key("acme", &id, ADMIN).await.status, 204);
        }
    }
    let metrics = upstream.get("/metrics").await.text();
    assert!(
        metrics.contains("signet_followers{state=\"registered\"} 2"),
        "{metrics}"
    );
}

on_both_backends!(a_delete_answers_only_after_the_follower_refuses);

/// `signet serve --upstream` as a process.
/// How a follower process ended, and its stderr: it is terminated if it
/// has not exited by itself within 20 s.
pub(crate) async fn exit_of(mut follower: BinServer) -> (std::process::ExitStatus, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = follower.child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            follower.terminate();
            break follower.child.wait().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    let mut pipe = follower.child.stderr.take().unwrap();
    std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
    (status, stderr)
}

fn follower_process(upstream: &str, token: Option<&str>, dir: &std::path::Path) -> BinServer {
    follower_process_with(upstream, token, dir, "", "warn")
}

/// [`follower_process`], with `config` added to its `config.toml` and
/// logging at `log`.
pub(crate) fn follower_process_with(
    upstream: &str,
    token: Option<&str>,
    dir: &std::path::Path,
    config: &str,
    log: &str,
) -> BinServer {
    use std::process::Stdio;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_signet"));
    cmd.args(["serve", "--upstream", upstream])
        .current_dir(dir)
        .env_remove("SIGNET_UPSTREAM_TOKEN")
        .env("SIGNET_LISTEN", &addr)
        .env("SIGNET_LOG", log)
        .env("SIGNET_DATA_DIR", dir.join("never-created"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    std::fs::write(
        dir.join("config.toml"),
        format!("[cluster]\nmax_staleness_ms = 500\n{config}"),
    )
    .unwrap();
    if let Some(token) = token {
        cmd.env("SIGNET_UPSTREAM_TOKEN", token);
    }
    BinServer {
        child: cmd.spawn().unwrap(),
        addr,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_whose_token_is_refused_exits_2_naming_its_source() {
    let upstream = upstream_with(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = "a-wrong-follower-token-9876543210";
    for token in [Some(wrong), None] {
        let f = follower_process(&upstream.url(""), token, dir.path());
        let out = tokio::task::spawn_blocking(move || f.child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("SIGNET_UPSTREAM_TOKEN"), "{stderr}");
        assert!(
            !stderr.contains(wrong),
            "the token is never printed: {stderr}"
        );
    }
    assert!(
        !dir.path().join("never-created").exists(),
        "a follower has no data dir"
    );
}

/// A follower started while its upstream is away keeps trying; when the
/// upstream comes and refuses its token, it exits 2 as it would have at
/// start, naming the token's source and never the token.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_refused_once_its_upstream_comes_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let wrong = "a-wrong-follower-token-9876543210";
    let follower = follower_process(&format!("http://{addr}"), Some(wrong), dir.path());
    // Still running, and serving nothing it cannot vouch for.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let ready = format!("http://{}/readyz", follower.addr);
    let r = try_send(Method::GET, &ready, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 503, "{}", r.text());
    let data = tempfile::tempdir().unwrap();
    let mut upstream = upstream_process(data.path(), &addr);
    let (status, stderr) = exit_of(follower).await;
    upstream.terminate();
    let _ = upstream.child.wait();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("SIGNET_UPSTREAM_TOKEN"), "{stderr}");
    assert!(
        !stderr.contains(wrong),
        "the token is never printed: {stderr}"
    );
}

/// An upstream away for a while costs its follower one warning when the
/// retries (every 100 ms) start failing, at most one more per ten seconds,
/// and one line when it is back; not a line per retry.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_logs_an_outage_of_its_upstream_once_not_per_retry() {
    let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let addr = free_addr();
    let mut upstream = upstream_process(data.path(), &addr);
    upstream.wait_ready().await;
    let follower = follower_process_with(
        &format!("http://{addr}"),
        Some(FOLLOWER_TOKEN),
        dir.path(),
        "",
        "info",
    );
    let ready = format!("http://{}/readyz", follower.addr);
    let readiness = || async {
        try_send(Method::GET, &ready, &[], Bytes::new())
            .await
            .map_or(0, |r| r.status.as_u16())
    };
    eventually("the follower is ready", Duration::from_secs(10), || async {
        readiness().await == 200
    })
    .await;
    let away = Instant::now();
    upstream.terminate();
    let _ = upstream.child.wait();
    eventually(
        "the follower stops vouching",
        Duration::from_secs(5),
        || async { readiness().await == 503 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut upstream = upstream_process(data.path(), &addr);
    upstream.wait_ready().await;
    eventually(
        "the follower vouches again",
        Duration::from_secs(15),
        || async { readiness().await == 200 },
    )
    .await;
    let outage = away.elapsed();
    follower.terminate();
    let (status, log) = exit_of(follower).await;
    upstream.terminate();
    let _ = upstream.child.wait();
    assert!(status.success(), "{log}");
    // One outage each for its reports and for its change feed.
    let warned = log.lines().filter(|l| l.contains("(retrying;")).count();
    let allowed = 2 * (1 + (outage.as_secs() / 10) as usize);
    assert!(
        (2..=allowed).contains(&warned),
        "{warned} warnings in an outage of {outage:?}:\n{log}"
    );
    for back in [
        "reached the source this process follows again",
        "reading the upstream's change feed again",
    ] {
        assert!(log.contains(back), "{back}:\n{log}");
    }
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_follower_refuses_once_continued() {
    let upstream = upstream_with(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let mut f = follower_process(&upstream.url(""), Some(FOLLOWER_TOKEN), dir.path());
    f.wait_ready().await;
    let base = f.base();
    for round in 0..2 {
        let (id, token) = new_key(&upstream).await;
        until_verified("the follower verifies the key", &base, &token).await;
        signal(&f.child, "-STOP");
        let started = Instant::now();
        assert_eq!(upstream.delete_key("acme", &id, ADMIN).await.status, 204);
        let waited = started.elapsed();
        // It waited for the stopped follower, but no longer than
        // max_staleness (500 ms) plus a margin of at most 1 s.
        assert!(
            waited >= Duration::from_millis(400),
            "round {round}: {waited:?}"
        );
        assert!(
            waited <= Duration::from_millis(2500),
            "round {round}: {waited:?}"
        );
        let answered = Instant::now();
        signal(&f.child, "-CONT");
        let stop = Arc::new(AtomicUsize::new(0));
        let hammers: Vec<_> = (0..4)
            .map(|_| hammer(base.clone(), token.clone(), stop.clone()))
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        none_accepted_after(hammers, &stop, answered, &format!("round {round}")).await;
        assert_eq!(
            auth_status(&base, &token).await,
            401,
            "caught up: the key is gone"
        );
    }
    let _ = f.child.kill();
    let _ = f.child.wait();
}

/// A TCP proxy that can start dropping everything silently (no RST, no
/// FIN), as a broken network path does.
struct Blackhole {
    addr: std::net::SocketAddr,
    dropping: Arc<AtomicUsize>,
}

impl Blackhole {
    async fn to(target: std::net::SocketAddr) -> Blackhole {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dropping = Arc::new(AtomicUsize::new(0));
        let flag = dropping.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, flag.clone()));
                tokio::spawn(pipe(sr, cw, flag.clone()));
            }
        });
        Blackhole { addr, dropping }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    dropping: Arc<AtomicUsize>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if dropping.load(Ordering::SeqCst) == 1 {
            // Swallowed, and the connection held open forever.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

async fn a_follower_cut_off_silently_refuses_after_the_answer() {
    let upstream = upstream_with(|_| {}).await;
    let hole = Blackhole::to(upstream.addr).await;
    let base = format!("http://{}", hole.addr);
    let follower = spawn_with(move |c| {
        c.upstream = Some(signet::config::Upstream {
            url: base,
            token: Some(signet::config::Secret::new(FOLLOWER_TOKEN.into())),
            ..Default::default()
        });
        c.cluster.max_staleness_ms = 500;
    })
    .await;
    let (id, token) = new_key(&upstream).await;
    until_verified("the follower verifies the key", &follower.url(""), &token).await;
    hole.dropping.store(1, Ordering::SeqCst);
    let stop = Arc::new(AtomicUsize::new(0));
    let hammers: Vec<_> = (0..4)
        .map(|_| hammer(follower.url(""), token.clone(), stop.clone()))
        .collect();
    let started = Instant::now();
    assert_eq!(upstream.delete_key("acme", &id, ADMIN).await.status, 204);
    let answered = Instant::now();
    assert!(answered - started <= Duration::from_millis(2500));
    tokio::time::sleep(Duration::from_millis(500)).await;
    none_accepted_after(hammers, &stop, answered, "the stopped follower").await;
    // Fenced: 503, and not ready.
    let r = follower
        .request(
            Method::POST,
            "/v1/verify",
            &[("content-type", "application/json")],
            serde_json::to_vec(&json!({ "token": token })).unwrap(),
        )
        .await;
    r.assert_error(503, "unavailable");
    assert_eq!(follower.get("/readyz").await.status, 503);
    // The JWK Sets are still served from memory.
    assert_eq!(follower.get("/.well-known/jwks.json").await.status, 200);
    // The path heals: the follower catches up and verifies again.
    hole.dropping.store(0, Ordering::SeqCst);
    eventually(
        "the follower is ready again",
        Duration::from_secs(15),
        || async { follower.get("/readyz").await.status == 200 },
    )
    .await;
    assert_eq!(auth_status(&follower.url(""), &token).await, 401);
}

on_both_backends!(a_follower_cut_off_silently_refuses_after_the_answer);

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_fences_while_its_upstream_restarts_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut upstream = upstream_process(dir.path(), &addr);
    upstream.wait_ready().await;
    let base = upstream.base();
    let created = create_on(&base, "acme").await;
    let (id, token) = owner_token(&created);
    let up = base.clone();
    let follower = spawn_with(move |c| {
        c.upstream = Some(signet::config::Upstream {
            url: up,
            token: Some(signet::config::Secret::new(FOLLOWER_TOKEN.into())),
            ..Default::default()
        });
        c.cluster.max_staleness_ms = 500;
    })
    .await;
    until_verified("the follower verifies", &follower.url(""), &token).await;
    upstream.terminate();
    let _ = upstream.child.wait();
    eventually("the follower fences", Duration::from_secs(5), || async {
        auth_status(&follower.url(""), &token).await == 503
    })
    .await;
    let mut upstream = upstream_process(dir.path(), &addr);
    upstream.wait_ready().await;
    eventually(
        "the follower verifies again",
        Duration::from_secs(15),
        || async { auth_status(&follower.url(""), &token).await == 200 },
    )
    .await;
    // And follows the new run: a delete reaches it before the answer.
    let r = send(
        Method::DELETE,
        &format!("{base}/v1/organisations/acme/keys/{id}"),
        &[("authorization", &bearer(ADMIN))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(auth_status(&follower.url(""), &token).await, 401);
    upstream.terminate();
    let _ = upstream.child.wait();
}

/// `signet serve` on sled in `dir`, accepting followers, on `addr`.
fn upstream_process(dir: &std::path::Path, addr: &str) -> BinServer {
    use std::process::Stdio;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_signet"))
        .arg("serve")
        .env("SIGNET_DATA_DIR", dir)
        .env("SIGNET_LISTEN", addr)
        .env("SIGNET_ADMIN_TOKEN", ADMIN)
        .env("SIGNET_FOLLOWER_TOKEN", FOLLOWER_TOKEN)
        .env("SIGNET_LOG", "warn")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    BinServer {
        child,
        addr: addr.to_owned(),
    }
}

async fn create_on(base: &str, org: &str) -> Value {
    let r = send(
        Method::POST,
        &format!("{base}/v1/organisations/{org}/keys"),
        &[
            ("authorization", &bearer(ADMIN)),
            ("content-type", "application/json"),
        ],
        Bytes::from(json!({"name": "k", "algorithm": "ES256"}).to_string()),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_of_one_instance_holds_a_delete_answered_by_another() {
    let Some((_cluster, _dir, database)) = crate::backends::private_database() else {
        return;
    };
    let database = &database;
    let instance = || {
        spawn_with(move |c| {
            database.configure(c);
            c.followers.token = Some(signet::config::Secret::new(FOLLOWER_TOKEN.into()));
            c.cluster.max_staleness_ms = 500;
        })
    };
    let (a, b) = (instance().await, instance().await);
    let follower = follower_of(&b, |_| {}).await;
    for round in 0..4 {
        let (id, token) = new_key(&a).await;
        until_verified(
            "the follower of B verifies A's key",
            &follower.url(""),
            &token,
        )
        .await;
        let stop = Arc::new(AtomicUsize::new(0));
        let hammers: Vec<_> = (0..3)
            .flat_map(|_| [follower.url(""), b.url("")])
            .map(|base| hammer(base, token.clone(), stop.clone()))
            .collect();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(a.delete_key("acme", &id, ADMIN).await.status, 204);
        let answered = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        none_accepted_after(
            hammers,
            &stop,
            answered,
            &format!("round {round} (A's answer)"),
        )
        .await;
    }
}

/// A key created through instance B verifies at once on a follower of
/// instance A, even while A has not heard of it yet: A polls the database
/// only every second here, and the follower's catch-up makes A read it
/// before answering. On two busy cores a catch-up may miss its 250 ms, so
/// a round may take a second try (after the follower's memory of the id
/// as unknown); without the catch-up nearly every round would.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_of_one_instance_verifies_a_key_created_through_another() {
    let Some((_cluster, _dir, database)) = crate::backends::private_database() else {
        return;
    };
    let database = &database;
    let instance = |notify| {
        spawn_with(move |c| {
            database.configure(c);
            c.followers.token = Some(signet::config::Secret::new(FOLLOWER_TOKEN.into()));
            c.cluster.max_staleness_ms = 8000;
            c.cluster.notify = notify;
        })
    };
    use signet::config::Notify;
    let (a, b) = (instance(Notify::Poll).await, instance(Notify::Listen).await);
    let follower = follower_of(&a, |c| c.cluster.max_staleness_ms = 8000).await;
    let base = follower.url("");
    let accepted = |round: usize, token: String| {
        let (follower, base) = (&follower, &base);
        async move {
            match round % 2 {
                0 => verdict(follower, &token).await == "valid",
                _ => auth_status(base, &token).await == 200,
            }
        }
    };
    const ROUNDS: usize = 10;
    let mut second_tries = 0;
    for round in 0..ROUNDS {
        let (id, token) = new_key(&b).await;
        if !accepted(round, token.clone()).await {
            second_tries += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(accepted(round, token).await, "round {round}, second try");
        }
        assert_eq!(b.delete_key("acme", &id, ADMIN).await.status, 204);
    }
    eprintln!("{second_tries} of {ROUNDS} rounds took a second try");
    assert!(
        second_tries <= 3,
        "{second_tries} of {ROUNDS} rounds took a second try"
    );
}

#[test]
fn the_example_keeps_a_jwk_set_cache_in_step() {
    // Run in its own runtime: the example is a separate process.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        if std::process::Command::new("python3")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("python3 is not installed: the example is not checked");
            return;
        }
        let app = spawn_app().await;
        let created = app
            .create_key("acme", json!({"name": "k", "algorithm": "ES256"}))
            .await;
        let id = kid(&created);
        let out = example_once(&app, &id, false).await;
        assert!(out.contains(&format!("cached {id}")), "{out}");
        subscribed(&app, 0).await;
        // Deleted while the example follows: it drops the key.
        let url = app.url("");
        let watcher = tokio::task::spawn_blocking({
            let id = id.clone();
            move || run_example(&url, &id, true)
        });
        // Once it follows (python starts slowly on a loaded host).
        subscribed(&app, 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(app.delete_key("acme", &id, ADMIN).await.status, 204);
        let out = watcher.await.unwrap();
        assert!(out.contains(&format!("dropped {id}")), "{out}");
    });
}

/// Waits until the server counts `n` feed subscribers.
async fn subscribed(app: &TestApp, n: usize) {
    let line = format!("signet_feed_subscribers {n}\n");
    let started = Instant::now();
    while !app.get("/metrics").await.text().contains(&line) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not {n} subscribers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn example_once(app: &TestApp, id: &str, until_gone: bool) -> String {
    let url = app.url("");
    let id = id.to_owned();
    tokio::task::spawn_blocking(move || run_example(&url, &id, until_gone))
        .await
        .unwrap()
}

/// `python3 examples/jwks_follow.py --once URL` (until the reset) or
/// `--until-gone KID URL`.
fn run_example(url: &str, id: &str, until_gone: bool) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/jwks_follow.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script);
    if until_gone {
        cmd.args(["--until-gone", id]);
    } else {
        cmd.arg("--once");
    }
    let out = cmd
        .arg(url)
        .env("JWKS_FOLLOW_TIMEOUT", "20")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The acknowledgements `upstream` has answered.
async fn acks_answered(upstream: &TestApp) -> u64 {
    let metrics = upstream.get("/metrics").await.text();
    let line = "signet_http_requests_total{route=\"/v1/followers/ack\",status=\"200\"} ";
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// A key created upstream verifies on a follower as soon as the create
/// has answered: a key id the follower does not know waits until the
/// follower has caught up with its upstream. Made-up key ids are answered
/// `unknown_key`, and cost the upstream a bounded number of
/// acknowledgements, not one each.
async fn a_follower_verifies_a_key_created_a_moment_ago() {
    // Room for a flood on two busy cores: the follower must stay fresh.
    let roomy = |c: &mut Config| c.cluster.max_staleness_ms = 2000;
    let upstream = upstream_with(roomy).await;
    let follower = follower_of(&upstream, roomy).await;
    let base = follower.url("");
    for round in 0..40 {
        let (id, token) = new_key(&upstream).await;
        match round % 2 {
            0 => assert_eq!(verdict(&follower, &token).await, "valid", "round {round}"),
            _ => assert_eq!(auth_status(&base, &token).await, 200, "round {round}"),
        }
        assert_eq!(upstream.delete_key("acme", &id, ADMIN).await.status, 204);
    }

    // A flood of made-up key ids, 100 at a time.
    const FLOOD: usize = 1000;
    let (id, signer) = key_of(
        &upstream
            .create_key("acme", json!({"name": "k", "algorithm": "ES256"}))
            .await,
    );
    let signer = Arc::new(signer);
    let before = acks_answered(&upstream).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (follower, signer) = (base.clone(), signer.clone());
            tokio::spawn(async move {
                for _ in 0..FLOOD / 100 {
                    let kid = ulid::Ulid::new().to_string();
                    let token = signer.org_token(&kid, claims("acme", "OWNER"));
                    let body = serde_json::to_vec(&json!({ "token": token })).unwrap();
                    let r = send(
                        Method::POST,
                        &format!("{follower}/v1/verify"),
                        &[("content-type", "application/json")],
                        body.into(),
                    )
                    .await;
                    assert_eq!(r.json()["error"]["code"], "unknown_key", "{}", r.text());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let acks = acks_answered(&upstream).await - before;
    eprintln!(
        "{FLOOD} made-up key ids in {:?}: {acks} acknowledgements",
        started.elapsed()
    );
    assert!(acks < FLOOD as u64 / 5, "{acks} acknowledgements");
    // The key the tokens were signed with still verifies.
    let token = signer.org_token(&id, claims("acme", "OWNER"));
    assert_eq!(verdict(&follower, &token).await, "valid");
}

on_both_backends!(a_follower_verifies_a_key_created_a_moment_ago);
