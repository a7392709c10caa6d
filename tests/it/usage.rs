//! Key usage (`usage` on the organisation's key list, `ifUnusedFor` on
//! revocations, the aggregate metric) and the two routes the console
//! reads: `GET /v1/organisations` and `…/audit/verify`.

use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};
use signet::config::Backend;

use crate::backends::{current, run_on, Database};
use crate::pg;
use crate::support::*;

on_both_backends!(
    accepted_verifications_are_counted_per_key_and_refusals_are_not,
    if_unused_for_refuses_a_revocation_of_a_key_in_use,
    organisations_and_audit_verify_answer_by_role,
    usage_survives_a_restart_and_is_counted_once,
);

/// The `usage` of key `id` on the organisation's list, as the operator.
async fn usage_of(app: &TestApp, org: &str, id: &str) -> Value {
    let list = app.list_keys(org).await;
    assert_eq!(list.status.as_u16(), 200, "{}", list.text());
    let keys = list.json()["keys"].as_array().unwrap().clone();
    keys.into_iter()
        .find(|k| k["id"] == id)
        .unwrap_or_else(|| panic!("key {id} is not listed"))["usage"]
        .clone()
}

async fn verify_status(app: &TestApp, token: &str) -> Value {
    app.verify(token).await
}

async fn auth(app: &TestApp, token: &str) -> u16 {
    app.request_as(Method::GET, "/v1/auth", token)
        .await
        .status
        .as_u16()
}

async fn patch(app: &TestApp, path: &str, body: Value) -> Resp {
    app.request(
        Method::PATCH,
        path,
        &[
            ("authorization", &bearer(ADMIN)),
            ("content-type", "application/json"),
        ],
        serde_json::to_vec(&body).unwrap(),
    )
    .await
}

async fn accepted_verifications_are_counted_per_key_and_refusals_are_not() {
    let app = spawn_app().await;
    let used = app.create_key("acme", json!({"name": "used"})).await;
    let idle = app.create_key("acme", json!({"name": "idle"})).await;
    let (kid, signer) = key_of(&used);
    let idle_id = idle["id"].as_str().unwrap();
    let fresh = usage_of(&app, "acme", &kid).await;
    assert_eq!(
        fresh,
        json!({"lastVerifiedAt": null, "verifiedLastHour": 0, "verifiedLastDay": 0})
    );
    let token = signer.org_token(&kid, claims("acme", "OWNER"));
    // Accepted: 3 on /v1/verify (the repeats are token-cache hits), 2 on
    // /v1/auth, 1 organisation token on the management API.
    for _ in 0..3 {
        assert_eq!(verify_status(&app, &token).await["valid"], true);
    }
    for _ in 0..2 {
        assert_eq!(auth(&app, &token).await, 200);
    }
    let own = app
        .request_as(Method::GET, "/v1/organisations/acme/keys", &token)
        .await;
    assert_eq!(own.status.as_u16(), 200);
    // Refused: another organisation's claim, an expired token, a bad
    // signature, on each route. None of these is use.
    let wrong_org = claims("globex", "OWNER");
    let mut expired = claims("acme", "OWNER");
    expired["exp"] = json!(now() - 3600);
    let refused = [
        signer.org_token(&kid, wrong_org),
        signer.org_token(&kid, expired),
        format!("{}x", &token[..token.len() - 1]),
    ];
    for bad in &refused {
        assert_eq!(verify_status(&app, bad).await["valid"], false);
        assert_eq!(auth(&app, bad).await, 401);
        let r = app
            .request_as(Method::GET, "/v1/organisations/acme/keys", bad)
            .await;
        assert_eq!(r.status.as_u16(), 401);
    }
    eventually(
        "the six verifications are counted",
        Duration::from_secs(10),
        || async { usage_of(&app, "acme", &kid).await["verifiedLastHour"] == 6 },
    )
    .await;
    let seen = usage_of(&app, "acme", &kid).await;
    assert_eq!(seen["verifiedLastDay"], 6, "{seen}");
    let at = seen["lastVerifiedAt"].as_str().expect("an RFC 3339 time");
    let at = chrono::DateTime::parse_from_rfc3339(at).expect("RFC 3339");
    assert!((at.timestamp() - now() as i64).abs() < 60, "{seen}");
    // No more than that, a while later: nothing was counted twice.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(usage_of(&app, "acme", &kid).await["verifiedLastHour"], 6);
    assert_eq!(
        usage_of(&app, "acme", idle_id).await["lastVerifiedAt"],
        Value::Null
    );
    // /metrics: the total, never a key id.
    let metrics = app.get("/metrics").await.text();
    let total: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("signet_verifications_accepted_total ")?
                .parse()
                .ok()
        })
        .expect("signet_verifications_accepted_total in /metrics");
    assert!(total >= 6.0, "{total}");
    assert!(!metrics.contains(&kid), "a key id in /metrics");
}

async fn if_unused_for_refuses_a_revocation_of_a_key_in_use() {
    let app = spawn_app().await;
    let used = app.create_key("acme", json!({"name": "used"})).await;
    let idle = app.create_key("acme", json!({"name": "idle"})).await;
    let other = app.create_key("acme", json!({"name": "other"})).await;
    let (kid, signer) = key_of(&used);
    let token = signer.org_token(&kid, claims("acme", "OWNER"));
    assert_eq!(verify_status(&app, &token).await["valid"], true);
    let path = format!("/v1/organisations/acme/keys/{kid}");

    // Each window, on both revocations: the status and error code.
    let refused = [
        // Bad windows: nothing changed.
        ("soon", 400, "invalid_request"),
        ("", 400, "invalid_request"),
        ("-1h", 400, "invalid_request"),
        ("1x", 400, "invalid_request"),
        ("%00", 400, "invalid_request"),
        ("0", 400, "invalid_request"),
        ("0s", 400, "invalid_request"),
        ("30", 400, "invalid_request"),
        ("1hour", 400, "invalid_request"),
        ("%2B1h", 400, "invalid_request"),
        ("1d1d", 400, "invalid_request"),
        ("%201h", 400, "invalid_request"),
        ("1h&ifUnusedFor=1h", 400, "invalid_request"),
        // Misspelt or unknown parameters are refused, not dropped.
        ("1h&ifunusedfor=1h", 400, "invalid_request"),
        ("1h&bogus=1", 400, "invalid_request"),
        // Used within the window.
        ("1h", 409, "in_use"),
        ("30m", 409, "in_use"),
        ("1h30m", 409, "in_use"),
    ];
    for (window, status, code) in refused {
        let url = format!("{path}?ifUnusedFor={window}");
        let delete = app.request_as(Method::DELETE, &url, ADMIN).await;
        let disable = patch(&app, &url, json!({"state": "disabled"})).await;
        for (how, r) in [("DELETE", delete), ("disable", disable)] {
            assert_eq!(r.status.as_u16(), status, "{how} {window:?}: {}", r.text());
            r.assert_error(status, code);
        }
    }
    // The window is read only once the caller may revoke the key: no
    // credential is 401 and another organisation's token 403, whatever
    // the window says.
    let globex = app.create_key("globex", json!({"name": "g"})).await;
    let (globex_kid, globex_signer) = key_of(&globex);
    let outsider = globex_signer.org_token(&globex_kid, claims("globex", "OWNER"));
    for window in ["soon", "1h"] {
        let url = format!("{path}?ifUnusedFor={window}");
        for method in [Method::DELETE, Method::PATCH] {
            app.request(method.clone(), &url, &[], Vec::new())
                .await
                .assert_error(401, "unauthorized");
            app.request_as(method, &url, &outsider)
                .await
                .assert_error(403, "forbidden");
        }
    }
    // A revocation without the window's right name, or a rotation or
    // create with any query, is refused: the key in use stays.
    for query in ["ifunusedfor=1h", "if_unused_for=1h", "bogus=1"] {
        app.request_as(Method::DELETE, &format!("{path}?{query}"), ADMIN)
            .await
            .assert_error(400, "invalid_request");
    }
    let rotate = format!("{path}/rotate?ifUnusedFor=1h");
    let grace = serde_json::to_vec(&json!({"graceSeconds": 0})).unwrap();
    let create = serde_json::to_vec(&json!({"name": "x"})).unwrap();
    let admin = bearer(ADMIN);
    let headers = [
        ("authorization", admin.as_str()),
        ("content-type", "application/json"),
    ];
    // Each body is good without the query.
    for (url, body) in [
        (rotate.as_str(), grace),
        ("/v1/organisations/acme/keys?name=x", create),
    ] {
        let r = app.request(Method::POST, url, &headers, body).await;
        r.assert_error(400, "invalid_request");
        assert!(r.text().contains("query parameter"), "{}", r.text());
    }
    let keys = app.list_keys("acme").await.json();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 3, "{keys}");
    assert_eq!(verify_status(&app, &token).await["valid"], true);
    // A rename is no revocation: the window does not apply.
    let r = patch(
        &app,
        &format!("{path}?ifUnusedFor=7d"),
        json!({"name": "renamed"}),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());

    // Unused keys: the revocation goes ahead.
    let idle_id = idle["id"].as_str().unwrap();
    let r = patch(
        &app,
        &format!("/v1/organisations/acme/keys/{idle_id}?ifUnusedFor=7d"),
        json!({"state": "disabled"}),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(r.json()["state"], "disabled");
    let other_id = other["id"].as_str().unwrap();
    let delete_other = format!("/v1/organisations/acme/keys/{other_id}?ifUnusedFor=1h");
    let r = app.request_as(Method::DELETE, &delete_other, ADMIN).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text());
    // An unknown key is 404 whatever the window.
    app.request_as(Method::DELETE, &delete_other, ADMIN)
        .await
        .assert_error(404, "not_found");
    // Without the parameter, a key in use is deleted as before.
    assert_eq!(app.delete_key("acme", &kid, ADMIN).await.status, 204);
    assert_eq!(verify_status(&app, &token).await["valid"], false);
}

/// `DELETE` of acme's key `id` with `?ifUnusedFor=1h`, as the operator.
async fn delete_if_unused_for_an_hour(app: &TestApp, id: &str) -> Resp {
    let path = format!("/v1/organisations/acme/keys/{id}?ifUnusedFor=1h");
    app.request_as(Method::DELETE, &path, ADMIN).await
}

/// The server stopped (cleanly) and started again on the same data.
async fn restart(app: TestApp, data: &std::path::Path) -> TestApp {
    drop(app.stop().await);
    spawn_with(|c| c.storage.data_dir = data.to_owned()).await
}

async fn usage_survives_a_restart_and_is_counted_once() {
    let first = spawn_app().await;
    let data = first.dir.path().to_owned();
    let used = first.create_key("acme", json!({"name": "used"})).await;
    let idle = first.create_key("acme", json!({"name": "idle"})).await;
    let (kid, signer) = key_of(&used);
    let token = signer.org_token(&kid, claims("acme", "OWNER"));
    assert_eq!(verify_status(&first, &token).await["valid"], true);
    // Stopped at once: only the flush at shutdown can have kept it. The
    // data dir is the first server's: kept until the end.
    let kept = first.stop().await;
    let app = spawn_with(|c| c.storage.data_dir = data.clone()).await;
    let usage = usage_of(&app, "acme", &kid).await;
    assert_eq!(usage["verifiedLastHour"], 1, "{usage}");
    assert_eq!(usage["verifiedLastDay"], 1, "{usage}");
    assert!(usage["lastVerifiedAt"].is_string(), "{usage}");
    let idle_id = idle["id"].as_str().unwrap();
    assert_eq!(
        usage_of(&app, "acme", idle_id).await["lastVerifiedAt"],
        Value::Null
    );

    // Restored counts are not written again: one more use, one more count.
    assert_eq!(verify_status(&app, &token).await["valid"], true);
    let app = restart(app, &data).await;
    let usage = usage_of(&app, "acme", &kid).await;
    assert_eq!(usage["verifiedLastHour"], 2, "{usage}");

    // The key used before the restart is in use; the idle one is not.
    delete_if_unused_for_an_hour(&app, &kid)
        .await
        .assert_error(409, "in_use");
    let r = delete_if_unused_for_an_hour(&app, idle_id).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text());
    drop(app.stop().await);
    drop(kept);
}

/// On sled, the store keeps a day of counts of live keys: a flush that
/// prunes drops older minutes and deleted keys' rows, and what is read
/// back at start is the same.
#[tokio::test(flavor = "multi_thread")]
async fn on_sled_stored_usage_is_pruned_to_a_day_of_live_keys() {
    use signet::keys::KeyId;
    use signet::store::sled::SledStore;
    use signet::usage::UsageDelta;
    const MINUTE: u64 = 60_000;
    const DAY: u64 = 24 * 60 * MINUTE;

    let app = spawn_app().await;
    let live = app.create_key("acme", json!({"name": "live"})).await;
    let gone = app.create_key("acme", json!({"name": "gone"})).await;
    let gone_id = gone["id"].as_str().unwrap();
    assert_eq!(app.delete_key("acme", gone_id, ADMIN).await.status, 204);
    let dir = app.stop().await;
    let store = SledStore::open(
        dir.path(),
        signet::seal::Sealer::load_or_create(dir.path(), None).unwrap(),
    )
    .unwrap();
    let live = KeyId::parse(live["id"].as_str().unwrap()).unwrap();
    let gone = KeyId::parse(gone_id).unwrap();
    let now = signet::keys::now_ms();
    let minute = now - now % MINUTE;
    let delta = |key_id, minute, count| UsageDelta {
        key_id,
        minute,
        count,
        last_verified_ms: minute + 1,
    };
    let old = minute - DAY - MINUTE;
    store
        .flush_usage(
            &[
                delta(live, minute, 2),
                delta(live, old, 5),
                delta(gone, minute, 1),
            ],
            now,
            false,
        )
        .unwrap();
    // Added to what is there.
    store
        .flush_usage(&[delta(live, minute, 1)], now, false)
        .unwrap();
    // Two keys' last uses and three minutes.
    assert_eq!(store.usage_rows(), 5);
    let expected = [
        UsageDelta {
            key_id: live,
            minute,
            count: 0,
            last_verified_ms: minute + 1,
        },
        UsageDelta {
            key_id: live,
            minute,
            count: 3,
            last_verified_ms: minute,
        },
    ];
    assert_eq!(store.load_usage(now).unwrap(), expected);
    store.flush_usage(&[], now, true).unwrap();
    // The live key's last use and recent minute only.
    assert_eq!(store.usage_rows(), 2);
    assert_eq!(store.load_usage(now).unwrap(), expected);
}

async fn organisations_and_audit_verify_answer_by_role() {
    let app = spawn_app().await;
    let acme = app.create_key("acme", json!({"name": "a"})).await;
    app.create_key("acme", json!({"name": "b"})).await;
    let globex = app.create_key("globex", json!({"name": "g"})).await;
    let (acme_kid, acme_signer) = key_of(&acme);
    let (globex_kid, globex_signer) = key_of(&globex);
    let acme_owner = acme_signer.org_token(&acme_kid, claims("acme", "OWNER"));
    let acme_member = acme_signer.org_token(&acme_kid, claims("acme", "MEMBER"));
    let globex_owner = globex_signer.org_token(&globex_kid, claims("globex", "OWNER"));

    let orgs = app
        .request_as(Method::GET, "/v1/organisations", ADMIN)
        .await;
    assert_eq!(orgs.status.as_u16(), 200, "{}", orgs.text());
    assert_eq!(
        orgs.json(),
        json!({"organisations": [{"id": "acme", "keys": 2}, {"id": "globex", "keys": 1}]})
    );
    for (token, expected) in [
        (&acme_owner, json!([{"id": "acme", "keys": 2}])),
        (&acme_member, json!([{"id": "acme", "keys": 2}])),
        (&globex_owner, json!([{"id": "globex", "keys": 1}])),
    ] {
        let r = app
            .request_as(Method::GET, "/v1/organisations", token)
            .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.text());
        assert_eq!(r.json()["organisations"], expected);
    }
    let r = app.get("/v1/organisations").await;
    r.assert_error(401, "unauthorized");
    assert!(r.header("www-authenticate").is_some());
    app.request_as(Method::GET, "/v1/organisations", "not-a-token")
        .await
        .assert_error(401, "unauthorized");
    let r = app
        .request(Method::POST, "/v1/organisations", &[], "")
        .await;
    r.assert_error(405, "method_not_allowed");

    let verify = "/v1/organisations/acme/audit/verify";
    for credential in [ADMIN, acme_owner.as_str()] {
        let r = app.request_as(Method::GET, verify, credential).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.text());
        let body = r.json();
        assert_eq!(body["valid"], true, "{body}");
        assert_eq!(body["brokenAt"], Value::Null, "{body}");
        assert!(body["events"].as_u64().unwrap() >= 2, "{body}");
    }
    app.request_as(Method::GET, verify, &acme_member)
        .await
        .assert_error(403, "forbidden");
    let r = app.request_as(Method::GET, verify, &globex_owner).await;
    r.assert_error(403, "forbidden");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("your own organisation"));
    app.get(verify).await.assert_error(401, "unauthorized");
    app.request_as(Method::GET, "/v1/organisations/a%20b/audit/verify", ADMIN)
        .await
        .assert_error(400, "invalid_request");
    // An organisation without events has an empty, valid chain.
    let empty = app
        .request_as(Method::GET, "/v1/organisations/nobody/audit/verify", ADMIN)
        .await
        .json();
    assert_eq!(empty, json!({"valid": true, "events": 0, "brokenAt": null}));

    // An edit that still parses: only the chain can tell (PostgreSQL,
    // where the test can reach the stored events while the server runs).
    if current() == Backend::Postgres {
        pg::shared().unwrap().sql(
            &Database::of(app.dir.path()).url,
            r#"UPDATE audit SET event = convert_to(replace(convert_from(event, 'UTF8'),
                 '"outcome":"created"', '"outcome":"Created"'), 'UTF8')
               WHERE id = (SELECT id FROM audit WHERE org = 'acme' ORDER BY id OFFSET 1 LIMIT 1)"#,
        );
        let body = app.request_as(Method::GET, verify, ADMIN).await.json();
        assert_eq!(body["valid"], false, "{body}");
        // The edited second event no longer hashes to what the third one
        // chains to: the first two are all that check.
        assert_eq!(body["events"], 2, "{body}");
        assert_eq!(body["brokenAt"]["index"], 2, "{body}");
        assert!(
            body["brokenAt"]["eventId"].as_str().unwrap().len() == 26,
            "{body}"
        );
        // Another organisation's chain is its own.
        let globex = app
            .request_as(Method::GET, "/v1/organisations/globex/audit/verify", ADMIN)
            .await
            .json();
        assert_eq!(globex["valid"], true, "{globex}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgresql_two_instances_usage_is_summed() {
    run_on(Backend::Postgres, async {
        let (_dir, [a, b]) = spawn_sharing().await;
        let created = a.create_key("acme", json!({"name": "shared"})).await;
        let (kid, signer) = key_of(&created);
        let token = signer.org_token(&kid, claims("acme", "OWNER"));
        for _ in 0..2 {
            assert_eq!(a.verify(&token).await["valid"], true);
        }
        for _ in 0..3 {
            assert_eq!(b.verify(&token).await["valid"], true);
        }
        for app in [&a, &b] {
            eventually(
                "both instances' counts are summed",
                Duration::from_secs(30),
                || async { usage_of(app, "acme", &kid).await["verifiedLastHour"] == 5 },
            )
            .await;
        }
        let usage = usage_of(&a, "acme", &kid).await;
        assert_eq!(usage["verifiedLastDay"], 5, "{usage}");
        assert!(usage["lastVerifiedAt"].is_string(), "{usage}");
        // One instance's refusal goes by the other's use.
        delete_if_unused_for_an_hour(&a, &kid)
            .await
            .assert_error(409, "in_use");
    })
    .await
}
