//! Who may do what: the full access matrix, and the audit log it leaves.

use hyper::Method;
use serde_json::{json, Value};

use crate::support::*;

const MISSING_ID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

#[tokio::test(flavor = "multi_thread")]
async fn access_matrix() {
    let app = spawn_with(|c| c.keys.max_per_org = 50).await;
    let (acme_kid, acme) = key_of(&app.create_key("acme", json!({"name": "acme signer"})).await);
    let (beta_kid, beta) = key_of(&app.create_key("beta", json!({"name": "beta signer"})).await);
    let (gone_kid, gone) = key_of(&app.create_key("acme", json!({"name": "to delete"})).await);
    let deleted_token = gone.org_token(&gone_kid, claims("acme", "OWNER"));
    assert_eq!(
        app.delete_key("acme", &gone_kid, ADMIN)
            .await
            .status
            .as_u16(),
        204
    );

    let mut expired = claims("acme", "OWNER");
    expired["exp"] = json!(now() - 3600);
    let mut wrong_aud = claims("acme", "OWNER");
    wrong_aud["aud"] = json!("someone-else");
    let mut no_role = claims("acme", "OWNER");
    no_role.as_object_mut().unwrap().remove("role");
    let principals: Vec<(&str, Option<String>)> = vec![
        ("operator", Some(ADMIN.to_owned())),
        (
            "owner",
            Some(acme.org_token(&acme_kid, claims("acme", "OWNER"))),
        ),
        (
            "administrator",
            Some(acme.org_token(&acme_kid, claims("acme", "ADMINISTRATOR"))),
        ),
        (
            "member",
            Some(acme.org_token(&acme_kid, claims("acme", "MEMBER"))),
        ),
        (
            "other org's owner",
            Some(beta.org_token(&beta_kid, claims("beta", "OWNER"))),
        ),
        (
            "forged org claim",
            Some(beta.org_token(&beta_kid, claims("acme", "OWNER"))),
        ),
        (
            "another org's key under our kid",
            Some(beta.org_token(&acme_kid, claims("acme", "OWNER"))),
        ),
        ("expired", Some(acme.org_token(&acme_kid, expired))),
        ("deleted key", Some(deleted_token)),
        ("wrong audience", Some(acme.org_token(&acme_kid, wrong_aud))),
        ("no role claim", Some(acme.org_token(&acme_kid, no_role))),
        ("garbage", Some("garbage".to_owned())),
        ("no credential", None),
    ];
    //                      create list delete audit
    let expected: [[u16; 4]; 13] = [
        [201, 200, 404, 200], // operator
        [201, 200, 404, 200], // owner
        [201, 200, 404, 200], // administrator
        [403, 200, 403, 403], // member
        [403, 403, 403, 403], // other org's owner
        [401, 401, 401, 401], // forged org claim
        [401, 401, 401, 401], // another org's key under our kid
        [401, 401, 401, 401], // expired
        [401, 401, 401, 401], // deleted key
        [401, 401, 401, 401], // wrong audience
        [401, 401, 401, 401], // no role claim
        [401, 401, 401, 401], // garbage
        [401, 401, 401, 401], // no credential
    ];
    let mut failures = Vec::new();
    for ((who, credential), row) in principals.iter().zip(expected) {
        let auth = credential.as_ref().map(|c| format!("Bearer {c}"));
        let mut headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let list = app
            .request(Method::GET, "/v1/organisations/acme/keys", &headers, "")
            .await;
        let delete = app
            .request(
                Method::DELETE,
                &format!("/v1/organisations/acme/keys/{MISSING_ID}"),
                &headers,
                "",
            )
            .await;
        let audit = app
            .request(Method::GET, "/v1/organisations/acme/audit", &headers, "")
            .await;
        headers.push(("content-type", "application/json"));
        let create = app
            .request(
                Method::POST,
                "/v1/organisations/acme/keys",
                &headers,
                r#"{"name":"m"}"#,
            )
            .await;
        for (op, r, want) in [
            ("create", &create, row[0]),
            ("list", &list, row[1]),
            ("delete", &delete, row[2]),
            ("audit", &audit, row[3]),
        ] {
            let got = r.status.as_u16();
            if got != want {
                failures.push(format!(
                    "{who} × {op}: expected {want}, got {got}: {}",
                    r.text()
                ));
            }
            match got {
                401 => {
                    let challenge = r.header("www-authenticate").unwrap_or("");
                    let expect_error = credential.is_some();
                    if !challenge.starts_with("Bearer")
                        || challenge.contains("invalid_token") != expect_error
                    {
                        failures.push(format!("{who} × {op}: WWW-Authenticate {challenge:?}"));
                    }
                }
                403 if row[1] == 403
                    && r.json()["message"]
                        != "you can only manage keys for your own organisation" =>
                {
                    failures.push(format!("{who} × {op}: 403 message {}", r.text()));
                }
                _ => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

async fn audit(app: &TestApp, org: &str, query: &str) -> Vec<Value> {
    let r = app
        .request_as(
            Method::GET,
            &format!("/v1/organisations/{org}/audit{query}"),
            ADMIN,
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    r.json()["events"].as_array().unwrap().clone()
}

on_both_backends!(audit_log_records_changes_refusals_and_pages_exactly);
async fn audit_log_records_changes_refusals_and_pages_exactly() {
    let app = spawn_with(|c| c.keys.max_per_org = 2).await;
    let a = app.create_key("acme", json!({"name": "a"})).await;
    let (kid, signer) = key_of(&a);
    app.create_key("acme", json!({"name": "b"})).await;
    app.create_key_raw("acme", &json!({"name": "c"}), ADMIN)
        .await
        .assert_error(400, "quota_exceeded");
    app.create_key_raw("acme", &json!({"name": "d"}), "wrong-token")
        .await
        .assert_error(401, "unauthorized");
    let member = signer.org_token(&kid, claims("acme", "MEMBER"));
    app.delete_key("acme", &kid, &member)
        .await
        .assert_error(403, "forbidden");
    assert_eq!(
        app.delete_key(
            "acme",
            &kid,
            &signer.org_token(&kid, claims("acme", "OWNER"))
        )
        .await
        .status
        .as_u16(),
        204
    );

    let events = audit(&app, "acme", "").await;
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "key.deleted",
            "access.denied",
            "quota.exceeded",
            "key.created",
            "key.created"
        ],
        "newest first; the 401 is counted, not audited"
    );
    let deleted = &events[0];
    assert_eq!(deleted["keyId"], kid.as_str());
    assert_eq!(
        deleted["actor"],
        json!({"kind": "token", "sub": "OWNER@acme", "keyId": kid})
    );
    assert_eq!(deleted["clientAddress"], "127.0.0.1");
    assert_eq!(deleted["organisationId"], "acme");
    assert_eq!(
        events[1]["actor"],
        json!({"kind": "token", "sub": "MEMBER@acme", "keyId": kid})
    );
    assert_eq!(
        events[1]["outcome"],
        "managing keys needs the OWNER or ADMINISTRATOR role"
    );
    assert_eq!(events[4]["actor"], json!({"kind": "operator"}));
    assert!(events.iter().all(
        |e| e["id"].as_str().unwrap().len() == 26 && e["time"].as_str().unwrap().ends_with('Z')
    ));
    assert!(
        audit(&app, "beta", "").await.is_empty(),
        "organisations see only their own events"
    );

    // Paging by `before` walks the same events, none skipped or repeated.
    let mut paged = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = audit(&app, "acme", &query).await;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        query = format!(
            "?limit=2&before={}",
            page.last().unwrap()["id"].as_str().unwrap()
        );
        paged.extend(page);
    }
    assert_eq!(paged, events);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_audit_event_breaks_the_chain() {
    let app = spawn_app().await;
    for i in 0..3 {
        app.create_key("acme", json!({"name": format!("k{i}")}))
            .await;
    }
    let dir = app.stop().await;
    let bin = env!("CARGO_BIN_EXE_signet");
    let check = || {
        std::process::Command::new(bin)
            .args(["audit", "verify", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let intact = check();
    assert_eq!(
        intact.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&intact.stderr)
    );
    assert!(String::from_utf8_lossy(&intact.stdout).contains("3 events"));
    {
        let sealer = signet::seal::Sealer::load_or_create(dir.path(), None).unwrap();
        let store = signet::store::sled::SledStore::open(dir.path(), sealer).unwrap();
        let tree = store.raw_audit_tree();
        let (k, v) = tree.iter().nth(1).unwrap().unwrap();
        let mut edited = v.to_vec();
        // An edit that still parses: only the chain can tell.
        let field = b"\"outcome\":\"created\"";
        let at = edited
            .windows(field.len())
            .position(|w| w == field)
            .unwrap();
        edited[at + 11] = b'C';
        tree.insert(k, edited).unwrap();
        store.sync().unwrap();
    }
    let broken = check();
    assert_eq!(broken.status.code(), Some(1));
    let report = String::from_utf8_lossy(&broken.stdout);
    assert!(
        report.contains("organisation acme") && report.contains("event #2"),
        "{report}"
    );
}
