//! Key lifecycle through the real server: disable and enable (as strong as
//! a delete, raced by concurrent verifiers), rename, expiry at a horizon of
//! seconds and across a restart, rotation with and without grace, the
//! lifetimes of the configuration, and one audit event per change.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};

use crate::support::{bearer, claims, key_of, now, spawn_app, spawn_with, Resp, TestApp, ADMIN};

impl TestApp {
    /// `PATCH` a key as the operator, with `content_type`.
    pub async fn patch_key_as(
        &self,
        org: &str,
        id: &str,
        body: &Value,
        content_type: &str,
    ) -> Resp {
        self.request(
            Method::PATCH,
            &format!("/v1/organisations/{org}/keys/{id}"),
            &[
                ("authorization", &bearer(ADMIN)),
                ("content-type", content_type),
            ],
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    pub async fn patch_key(&self, org: &str, id: &str, body: Value) -> Resp {
        self.patch_key_as(org, id, &body, "application/json").await
    }

    /// `POST …/rotate` as the operator; `None` sends no body.
    pub async fn rotate_key(
        &self,
        org: &str,
        id: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let auth = bearer(ADMIN);
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        let body = match body {
            Some(b) => {
                all.push(("content-type", "application/json"));
                serde_json::to_vec(&b).unwrap()
            }
            None => Vec::new(),
        };
        self.request(
            Method::POST,
            &format!("/v1/organisations/{org}/keys/{id}/rotate"),
            &all,
            body,
        )
        .await
    }

    /// The organisation's keys (authenticated list), by id.
    pub async fn listed(&self, org: &str, id: &str) -> Value {
        let list = self.list_keys(org).await.json();
        list["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} is not listed: {list}"))
    }

    /// The audit actions of `org`, oldest first.
    pub async fn audit_actions(&self, org: &str) -> Vec<(String, Option<String>)> {
        let audit = format!("/v1/organisations/{org}/audit");
        let r = self.request_as(Method::GET, &audit, ADMIN).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let mut events: Vec<(String, Option<String>)> = r.json()["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_owned(),
                    e["keyId"].as_str().map(str::to_owned),
                )
            })
            .collect();
        events.reverse();
        events
    }

    /// Whether `id` is public: in both JWK Sets and at `GET /v1/keys/{id}`.
    /// Panics if the three disagree.
    pub async fn is_public(&self, org: &str, id: &str) -> bool {
        let get = self.get(&format!("/v1/keys/{id}")).await.status == 200;
        let all = self.jwks_kids().await.contains(&id.to_owned());
        let of_org = self
            .get(&format!("/v1/organisations/{org}/jwks.json"))
            .await
            .json()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == id);
        assert_eq!(
            (get, all),
            (of_org, of_org),
            "GET, global set and org set disagree on {id}"
        );
        get
    }
}

impl TestApp {
    /// How many keys `org` holds, in every state.
    pub async fn key_count(&self, org: &str) -> usize {
        let list = self.list_keys(org).await.json();
        list["keys"].as_array().unwrap().len()
    }
}

/// Sleeps, 100 ms at a time, until the second `at` has begun.
pub async fn until(at: u64) {
    while now() < at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The verdict code of `token`, or "valid".
pub async fn verdict(app: &TestApp, token: &str) -> String {
    let v = app.verify(token).await;
    match v["valid"] == true {
        true => "valid".into(),
        false => v["error"]["code"].as_str().unwrap().to_owned(),
    }
}

/// The `max-age` of a JWK Set answer.
fn max_age(r: &Resp) -> u64 {
    let cc = r.header("cache-control").unwrap();
    cc.strip_prefix("public, max-age=")
        .unwrap()
        .parse()
        .unwrap()
}

/// An RFC 3339 time `secs` from now, on a whole second.
fn in_secs(secs: u64) -> (u64, String) {
    let at = now() + secs;
    (at, signet::keys::rfc3339(at * 1000))
}

on_both_backends!(disable_is_as_strong_as_a_delete_and_enable_republishes);
async fn disable_is_as_strong_as_a_delete_and_enable_republishes() {
    let app = spawn_app().await;
    let created = app
        .create_key("acme", json!({"name": "k", "algorithm": "ES256"}))
        .await;
    assert_eq!(
        (created["state"].as_str(), created["origin"].as_str()),
        (Some("active"), Some("generated"))
    );
    assert!(created["expiresAt"].is_null());
    let (id, signer) = key_of(&created);
    let token = signer.org_token(&id, claims("acme", "OWNER"));
    assert_eq!(verdict(&app, &token).await, "valid");

    let r = app
        .patch_key("acme", &id, json!({"state": "disabled"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "disabled");
    assert_eq!(verdict(&app, &token).await, "key_disabled");
    assert!(!app.is_public("acme", &id).await);
    assert_eq!(app.listed("acme", &id).await["state"], "disabled");
    // Its organisation tokens no longer authenticate.
    let r = app
        .request_as(Method::GET, "/v1/organisations/acme/keys", &token)
        .await;
    r.assert_error(401, "unauthorized");
    let auth = app.request_as(Method::GET, "/v1/auth", &token).await;
    assert_eq!(auth.status, 401);

    let r = app.patch_key("acme", &id, json!({"state": "active"})).await;
    assert_eq!(r.json()["state"], "active");
    assert_eq!(verdict(&app, &token).await, "valid");
    assert!(app.is_public("acme", &id).await);

    // A disabled key survives a restart disabled.
    app.patch_key("acme", &id, json!({"state": "disabled"}))
        .await;
    let dir = app.stop().await;
    let app = spawn_with(|c| c.storage.data_dir = dir.path().to_owned()).await;
    assert_eq!(verdict(&app, &token).await, "key_disabled");
    assert!(!app.is_public("acme", &id).await);
    // And can be deleted like any key.
    assert_eq!(app.delete_key("acme", &id, ADMIN).await.status, 204);
    assert_eq!(verdict(&app, &token).await, "unknown_key");
    drop(dir);
}

on_both_backends!(no_token_of_a_disabled_key_verifies_after_the_patch_answered);
async fn no_token_of_a_disabled_key_verifies_after_the_patch_answered() {
    const ROUNDS: usize = 100;
    const VERIFIERS: usize = 4;
    let app = Arc::new(spawn_app().await);
    let created = app
        .create_key("acme", json!({"name": "raced", "algorithm": "EdDSA"}))
        .await;
    let (id, signer) = key_of(&created);
    let token = Arc::new(signer.org_token(&id, claims("acme", "OWNER")));
    let (mut accepted_before, mut checked_after) = (0, 0);
    for round in 0..ROUNDS {
        let r = app.patch_key("acme", &id, json!({"state": "active"})).await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        let answered = Arc::new(AtomicBool::new(false));
        let before = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..VERIFIERS)
            .map(|_| {
                let (app, token, answered, before) =
                    (app.clone(), token.clone(), answered.clone(), before.clone());
                tokio::spawn(async move {
                    let (mut after, mut violations) = (0, 0);
                    while after < 3 {
                        // Read the flag before sending: a request sent after
                        // the PATCH answered must be refused.
                        let sent_after = answered.load(Ordering::SeqCst);
                        let valid = verdict(&app, &token).await == "valid";
                        match (sent_after, valid) {
                            (true, true) => violations += 1,
                            (false, true) => {
                                before.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                        after += usize::from(sent_after);
                    }
                    (after, violations)
                })
            })
            .collect();
        tokio::task::yield_now().await;
        let r = app
            .patch_key("acme", &id, json!({"state": "disabled"}))
            .await;
        answered.store(true, Ordering::SeqCst);
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        for task in tasks {
            let (after, violations) = task.await.unwrap();
            assert_eq!(
                violations, 0,
                "round {round}: a token verified after the disable answered"
            );
            checked_after += after;
        }
        accepted_before += before.load(Ordering::Relaxed);
    }
    assert_eq!(checked_after, ROUNDS * VERIFIERS * 3);
    // The verifiers really raced the change: some verified before it.
    assert!(accepted_before > 0, "no verification ran before a disable");
    println!(
        "disable race: {ROUNDS} rounds, {accepted_before} accepted before the answer, \
         {checked_after} refused after it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_expires_at_its_second_everywhere() {
    const HORIZON: u64 = 2;
    let app = spawn_app().await;
    let (at, expires_at) = in_secs(HORIZON + 1);
    let created = app
        .create_key(
            "acme",
            json!({"name": "short", "algorithm": "ES256", "expiresAt": expires_at}),
        )
        .await;
    assert_eq!(created["expiresAt"], expires_at.as_str());
    let (id, signer) = key_of(&created);
    let token = signer.org_token(&id, claims("acme", "OWNER"));
    assert_eq!(verdict(&app, &token).await, "valid");
    // No cache may keep the key past its expiry.
    for path in ["/.well-known/jwks.json", "/v1/organisations/acme/jwks.json"] {
        let age = max_age(&app.get(path).await);
        assert!(
            age <= at - now() && age + 2 >= at - now(),
            "{path}: max-age {age}"
        );
    }
    assert_eq!(
        max_age(&app.get("/v1/organisations/other/jwks.json").await),
        60
    );

    // Sleep in steps no longer than the horizon until the second passes.
    until(at).await;
    assert_eq!(verdict(&app, &token).await, "key_expired");
    assert_eq!(app.get(&format!("/v1/keys/{id}")).await.status, 404);
    assert_eq!(app.listed("acme", &id).await["state"], "expired");
    // The timer withdraws it from the JWK Sets within moments.
    let mut waited = Duration::ZERO;
    while app.jwks_kids().await.contains(&id) {
        assert!(
            waited < Duration::from_secs(HORIZON),
            "still published {waited:?} after expiry"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    assert!(!app.is_public("acme", &id).await);
    app.patch_key("acme", &id, json!({"state": "active"}))
        .await
        .assert_error(409, "conflict");
    // Expired keys stay until deleted, and count towards the quota.
    assert_eq!(app.key_count("acme").await, 1);
}

on_both_backends!(a_key_that_expired_while_signet_was_stopped_is_expired_at_start);
async fn a_key_that_expired_while_signet_was_stopped_is_expired_at_start() {
    let app = spawn_app().await;
    let (at, expires_at) = in_secs(2);
    let created = app
        .create_key(
            "acme",
            json!({"name": "k", "algorithm": "EdDSA", "expiresAt": expires_at}),
        )
        .await;
    let (id, signer) = key_of(&created);
    let dir = app.stop().await;
    until(at).await;
    let app = spawn_with(|c| c.storage.data_dir = dir.path().to_owned()).await;
    assert!(!app.is_public("acme", &id).await);
    let token = signer.org_token(&id, claims("acme", "OWNER"));
    assert_eq!(verdict(&app, &token).await, "key_expired");
    assert_eq!(app.listed("acme", &id).await["state"], "expired");
}

on_both_backends!(rotation_with_grace_zero_retires_the_old_key_before_it_answers);
async fn rotation_with_grace_zero_retires_the_old_key_before_it_answers() {
    let app = spawn_app().await;
    let old = app
        .create_key("acme", json!({"name": "signer", "algorithm": "PS256"}))
        .await;
    let (old_id, old_signer) = key_of(&old);
    let old_token = old_signer.sign(
        &json!({"alg": "PS256", "kid": old_id}),
        &claims("acme", "OWNER"),
        "PS256",
    );
    assert_eq!(verdict(&app, &old_token).await, "valid");

    let r = app
        .rotate_key("acme", &old_id, Some(json!({"graceSeconds": 0})), &[])
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let new = r.json();
    let new_id = new["id"].as_str().unwrap();
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/keys/{new_id}").as_str())
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    for field in ["name", "algorithm", "bits", "organisationId"] {
        assert_eq!(new[field], old[field], "{field}");
    }
    assert_eq!(
        (new["state"].as_str(), new["origin"].as_str()),
        (Some("active"), Some("generated"))
    );
    assert_eq!(verdict(&app, &old_token).await, "key_expired");
    assert!(!app.is_public("acme", &old_id).await);
    assert!(app.is_public("acme", new_id).await);
    let (_, new_signer) = key_of(&new);
    let new_token = new_signer.sign(
        &json!({"alg": "PS256", "kid": new_id}),
        &claims("acme", "OWNER"),
        "PS256",
    );
    assert_eq!(verdict(&app, &new_token).await, "valid");
    let listed = app.listed("acme", &old_id).await;
    assert_eq!(listed["state"], "expired");
    let rotated: Vec<_> = app
        .audit_actions("acme")
        .await
        .into_iter()
        .filter(|(a, _)| a == "key.rotated")
        .collect();
    assert_eq!(
        rotated,
        vec![("key.rotated".to_owned(), Some(old_id.clone()))]
    );
}

on_both_backends!(rotation_with_grace_keeps_both_keys_until_the_old_one_retires);
async fn rotation_with_grace_keeps_both_keys_until_the_old_one_retires() {
    const GRACE: u64 = 2;
    let app = spawn_with(|c| c.keys.max_per_org = 3).await;
    let old = app
        .create_key("acme", json!({"name": "signer", "algorithm": "ES384"}))
        .await;
    let (old_id, old_signer) = key_of(&old);
    let old_token = old_signer.org_token(&old_id, claims("acme", "OWNER"));
    let started = now();
    let r = app
        .rotate_key(
            "acme",
            &old_id,
            Some(json!({"graceSeconds": GRACE})),
            &[("accept", "application/x-pem-file")],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-pem-file"));
    assert!(r.text().starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let location = r.header("location").unwrap().to_owned();
    let new_id = location.strip_prefix("/v1/keys/").unwrap().to_owned();
    assert!(r
        .header("content-disposition")
        .unwrap()
        .contains(&format!("{new_id}.pem")));

    assert_eq!(verdict(&app, &old_token).await, "valid");
    assert!(app.is_public("acme", &old_id).await && app.is_public("acme", &new_id).await);
    let listed = app.listed("acme", &old_id).await;
    let retire = signet::keys::parse_time(listed["expiresAt"].as_str().unwrap()).unwrap();
    assert!(
        (started + GRACE..=now() + GRACE).contains(&retire),
        "{listed}"
    );
    assert!(max_age(&app.get("/v1/organisations/acme/jwks.json").await) <= GRACE);
    until(retire).await;
    assert_eq!(verdict(&app, &old_token).await, "key_expired");
    assert!(app.is_public("acme", &new_id).await);

    // A rotation never lengthens a key's life, and needs a free slot.
    let (_, soon) = in_secs(600);
    let short = app
        .create_key(
            "acme",
            json!({"name": "short", "algorithm": "EdDSA", "expiresAt": soon}),
        )
        .await;
    let short_id = short["id"].as_str().unwrap();
    app.rotate_key("acme", short_id, None, &[])
        .await
        .assert_error(400, "quota_exceeded");
    app.delete_key("acme", &old_id, ADMIN).await;
    let r = app.rotate_key("acme", short_id, None, &[]).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        app.listed("acme", short_id).await["expiresAt"],
        soon.as_str()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lifetimes_of_the_configuration_cap_and_default_expiry() {
    let day = Duration::from_secs(86_400);
    let app = spawn_with(|c| {
        c.keys.max_lifetime = Some(day * 90);
        c.keys.default_lifetime = Some(day);
    })
    .await;
    let created = app
        .create_key("acme", json!({"name": "d", "algorithm": "ES256"}))
        .await;
    let expires = signet::keys::parse_time(created["expiresAt"].as_str().unwrap()).unwrap();
    assert!(
        (now() + 86_400 - 5..=now() + 86_400).contains(&expires),
        "{created}"
    );
    let (_, too_late) = in_secs(91 * 86_400);
    let body = json!({"name": "x", "algorithm": "ES256", "expiresAt": too_late});
    let r = app.create_key_raw("acme", &body, ADMIN).await;
    r.assert_error(400, "invalid_request");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("keys.max_lifetime (90d)"),
        "{}",
        r.text()
    );
    for bad in [json!("2001-01-01T00:00:00Z"), json!("tomorrow"), json!(5)] {
        let r = app
            .create_key_raw("acme", &json!({"name": "x", "expiresAt": bad}), ADMIN)
            .await;
        r.assert_error(400, "invalid_request");
    }
    let (_, fine) = in_secs(80 * 86_400);
    let body = json!({"name": "x", "algorithm": "EdDSA", "expiresAt": fine});
    let r = app.create_key_raw("acme", &body, ADMIN).await;
    assert_eq!(r.json()["expiresAt"], fine.as_str());
    // Refusals stored nothing.
    assert_eq!(app.key_count("acme").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_and_rotate_input_is_checked() {
    let app = spawn_app().await;
    let created = app
        .create_key("acme", json!({"name": "k", "algorithm": "EdDSA"}))
        .await;
    let id = created["id"].as_str().unwrap();
    let other = app
        .create_key("other", json!({"name": "o", "algorithm": "EdDSA"}))
        .await;
    let other_id = other["id"].as_str().unwrap();
    let refused = [
        ("empty", json!({})),
        ("expired is not settable", json!({"state": "expired"})),
        (
            "unknown field",
            json!({"state": "active", "expiresAt": null}),
        ),
        ("bad name", json!({"name": ""})),
        ("null state", json!({"state": null})),
        ("not an object", json!(["disabled"])),
    ];
    for (name, body) in &refused {
        let r = app.patch_key_as("acme", id, body, "application/json").await;
        assert_eq!(r.status.as_u16(), 400, "{name}: {}", r.text());
        r.assert_error(400, "invalid_request");
    }
    let text = json!({"state": "disabled"});
    app.patch_key_as("acme", id, &text, "text/plain")
        .await
        .assert_error(415, "unsupported_media_type");
    let merge = json!({"name": "renamed"});
    let r = app
        .patch_key_as("acme", id, &merge, "application/merge-patch+json")
        .await;
    assert_eq!(r.status.as_u16(), 200, "merge patch: {}", r.text());
    assert_eq!(app.listed("acme", id).await["name"], "renamed");
    assert_eq!(app.listed("acme", id).await["state"], "active");
    // Another organisation's key, an unknown key, a bad id.
    let unknown = "01JDBJ3Z4N8Q7XJ6V9W2F5K0AB";
    let paths = [
        (other_id, 404, "not_found"),
        (unknown, 404, "not_found"),
        ("nope", 400, "invalid_id"),
    ];
    for (key, status, code) in paths {
        app.patch_key("acme", key, json!({"state": "disabled"}))
            .await
            .assert_error(status, code);
        app.rotate_key("acme", key, None, &[])
            .await
            .assert_error(status, code);
    }
    for body in [
        json!({"graceSeconds": -1}),
        json!({"graceSeconds": "1"}),
        json!({"grace": 1}),
    ] {
        app.rotate_key("acme", id, Some(body), &[])
            .await
            .assert_error(400, "invalid_request");
    }
    let key = format!("/v1/organisations/acme/keys/{id}");
    let r = app
        .request_as(Method::GET, &format!("{key}/rotate"), ADMIN)
        .await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = app.request_as(Method::PUT, &key, ADMIN).await;
    assert_eq!(r.header("allow"), Some("DELETE, PATCH"));
    // A member may not manage.
    let (member_id, member) = key_of(
        &app.create_key("acme", json!({"name": "m", "algorithm": "EdDSA"}))
            .await,
    );
    let token = member.org_token(&member_id, claims("acme", "MEMBER"));
    let r = app
        .request(
            Method::PATCH,
            &key,
            &[
                ("authorization", &bearer(&token)),
                ("content-type", "application/json"),
            ],
            r#"{"state":"disabled"}"#,
        )
        .await;
    r.assert_error(403, "forbidden");
    assert_eq!(app.listed("acme", id).await["state"], "active");
    assert_eq!(app.listed("other", other_id).await["state"], "active");
}

on_both_backends!(every_change_is_one_audit_event);
async fn every_change_is_one_audit_event() {
    let app = spawn_app().await;
    let created = app
        .create_key("acme", json!({"name": "k", "algorithm": "EdDSA"}))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    app.patch_key("acme", &id, json!({"state": "disabled", "name": "k2"}))
        .await;
    app.patch_key("acme", &id, json!({"state": "disabled", "name": "k2"}))
        .await;
    app.patch_key("acme", &id, json!({"state": "active"})).await;
    let r = app
        .rotate_key("acme", &id, Some(json!({"graceSeconds": 60})), &[])
        .await;
    let new_id = r.json()["id"].as_str().unwrap().to_owned();
    app.delete_key("acme", &id, ADMIN).await;
    let some = |s: &str| Some(s.to_owned());
    let expected = vec![
        ("key.created".to_owned(), some(&id)),
        ("key.disabled".to_owned(), some(&id)),
        ("key.renamed".to_owned(), some(&id)),
        ("key.enabled".to_owned(), some(&id)),
        ("key.rotated".to_owned(), some(&id)),
        ("key.deleted".to_owned(), some(&id)),
    ];
    assert_eq!(app.audit_actions("acme").await, expected);
    assert_eq!(app.listed("acme", &new_id).await["name"], "k2");
}

on_both_backends!(the_cli_disables_enables_uploads_and_rotates_offline);
async fn the_cli_disables_enables_uploads_and_rotates_offline() {
    use crate::cli::{assert_exit, stderr, Offline};
    let dir = tempfile::tempdir().unwrap();
    let keys = Offline::new(crate::backends::storage_args(&dir.path().join("data")));
    let pem = dir.path().join("k.pem");
    let created = keys.json("create --org acme --name k --algorithm EdDSA", &[]);
    let id = created["id"].as_str().unwrap();
    let state = |line: &str| keys.json(line, &[id])["state"].clone();
    assert_eq!(state("disable --org acme"), "disabled");
    assert_eq!(state("enable --org acme"), "active");
    // Uploading the same public key again is refused (exit 1), and a
    // private key never is accepted, nor repeated.
    let public = dir.path().join("k.pub");
    std::fs::write(&public, created["publicKey"].as_str().unwrap()).unwrap();
    let public = public.to_str().unwrap();
    let again = keys.run("upload --org acme --name u --public-key", &[public]);
    assert_exit(&again, 1, "already key");
    let private = dir.path().join("private.pem");
    std::fs::write(&private, created["privateKey"].as_str().unwrap()).unwrap();
    let refused = keys.run(
        "upload --org other --name u --public-key",
        &[private.to_str().unwrap()],
    );
    assert_eq!(refused.status.code(), Some(1));
    let body = created["privateKey"]
        .as_str()
        .unwrap()
        .lines()
        .nth(1)
        .unwrap();
    assert!(
        !stderr(&refused).contains(body)
            && !String::from_utf8_lossy(&refused.stdout).contains(body)
    );
    let uploaded = keys.json("upload --org other --name u --public-key", &[public]);
    assert_eq!(uploaded["origin"], "uploaded");
    // Rotation at once: the successor's private key goes to --out.
    let rotate = format!("rotate --org acme {id} --grace-seconds 0 --out");
    let rotated = keys.json(&rotate, &[pem.to_str().unwrap()]);
    assert_eq!(rotated["state"], "active");
    assert!(std::fs::read_to_string(&pem)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_exit(
        &keys.run("enable --org acme", &[id]),
        1,
        "cannot be enabled",
    );
    let listed = keys.json("list --org acme", &[]);
    let states: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["expired", "active"]);
}
