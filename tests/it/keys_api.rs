//! The key lifecycle over HTTP: create, fetch, list, delete, quota, JWKS.

use hyper::{Method, StatusCode};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};

use crate::support::*;

on_both_backends!(create_returns_the_private_key_once_and_keeps_the_public_key);
async fn create_returns_the_private_key_once_and_keeps_the_public_key() {
    let app = spawn_app().await;
    let r = app
        .create_key_raw("acme", &json!({"name": "signer"}), ADMIN)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let set = r.json();
    let id = set["id"].as_str().unwrap();
    assert_eq!(id.len(), 26);
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/keys/{id}").as_str())
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(set["organisationId"], "acme");
    assert_eq!(set["name"], "signer");
    assert_eq!(set["algorithm"], "RS256");
    assert_eq!(set["bits"], 2048);
    assert!(set["createdAt"].as_str().unwrap().ends_with('Z'));
    let public_pem = set["publicKey"].as_str().unwrap();
    let private_pem = set["privateKey"].as_str().unwrap();
    assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    assert!(private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let private = RsaPrivateKey::from_pkcs8_pem(private_pem).unwrap();
    let public = RsaPublicKey::from_public_key_pem(public_pem).unwrap();
    assert_eq!(
        private.to_public_key(),
        public,
        "the two halves belong together"
    );
    assert_eq!(public.size() * 8, 2048);

    let got = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(got.status, StatusCode::OK);
    let mut expected = set.clone();
    expected.as_object_mut().unwrap().remove("privateKey");
    assert_eq!(
        got.json(),
        expected,
        "GET answers the PublicKey: the set without its private key"
    );

    let pem = app
        .get_with(
            &format!("/v1/keys/{id}"),
            &[("accept", "application/x-pem-file")],
        )
        .await;
    assert_eq!(pem.status, StatusCode::OK);
    assert_eq!(pem.header("content-type"), Some("application/x-pem-file"));
    assert_eq!(pem.text(), public_pem);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_answers_a_pem_file_when_asked() {
    let app = spawn_app().await;
    let r = app.create_key_pem("acme", &json!({"name": "pem"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("content-type"), Some("application/x-pem-file"));
    let location = r.header("location").unwrap().to_owned();
    let id = location.strip_prefix("/v1/keys/").unwrap();
    assert_eq!(
        r.header("content-disposition"),
        Some(format!("attachment; filename=\"{id}.pem\"").as_str())
    );
    let private = RsaPrivateKey::from_pkcs8_pem(&r.text()).expect("body is a PKCS#8 PEM");
    let stored = app.get(&location).await.json();
    let public = RsaPublicKey::from_public_key_pem(stored["publicKey"].as_str().unwrap()).unwrap();
    assert_eq!(private.to_public_key(), public);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_algorithm_and_size_is_issued_as_asked() {
    let app = spawn_app().await;
    let cases = [
        ("RS256", 2048),
        ("RS384", 2048),
        ("RS512", 3072),
        ("PS256", 2048),
        ("PS384", 2048),
        ("PS512", 4096),
    ];
    for (alg, bits) in cases {
        let set = app
            .create_key(
                &format!("org-{alg}"),
                json!({"name": alg, "algorithm": alg, "bits": bits}),
            )
            .await;
        assert_eq!(set["algorithm"], alg);
        assert_eq!(set["bits"], bits);
        let public = RsaPublicKey::from_public_key_pem(set["publicKey"].as_str().unwrap()).unwrap();
        assert_eq!(public.size() * 8, bits as usize, "{alg}");
        // A token signed with the returned key verifies under the kid.
        let (id, signer) = key_of(&set);
        let token = signer.sign(
            &json!({"alg": alg, "kid": id}),
            &json!({"exp": now() + 60}),
            alg,
        );
        let v = app.verify(&token).await;
        assert_eq!(v["valid"], true, "{alg}: {v}");
    }
}

on_both_backends!(list_is_oldest_first_and_delete_removes_everywhere);
async fn list_is_oldest_first_and_delete_removes_everywhere() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for name in ["one", "two", "three"] {
        ids.push(
            app.create_key("acme", json!({"name": name})).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    app.create_key("other", json!({"name": "elsewhere"})).await;
    let list = app.list_keys("acme").await;
    assert_eq!(list.status, StatusCode::OK);
    let listed: Vec<String> = list.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids);
    assert!(list.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k.get("privateKey").is_none()));

    let r = app.delete_key("acme", &ids[1], ADMIN).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());
    app.get(&format!("/v1/keys/{}", ids[1]))
        .await
        .assert_error(404, "not_found");
    app.delete_key("acme", &ids[1], ADMIN)
        .await
        .assert_error(404, "not_found");
    // A key of another organisation is not found through this one.
    app.delete_key("other", &ids[0], ADMIN)
        .await
        .assert_error(404, "not_found");
    let list = app.list_keys("acme").await.json();
    assert_eq!(list["keys"].as_array().unwrap().len(), 2);
    let kids = app.jwks_kids().await;
    assert_eq!(kids.len(), 3);
    assert!(!kids.contains(&ids[1]));
}

on_both_backends!(quota_is_atomic_under_concurrency);
async fn quota_is_atomic_under_concurrency() {
    let app = std::sync::Arc::new(spawn_app().await);
    let creates = (0..20).map(|i| {
        let app = app.clone();
        tokio::spawn(async move {
            app.create_key_raw("busy", &json!({"name": format!("k{i}")}), ADMIN)
                .await
        })
    });
    let mut created = 0;
    for r in futures_join(creates).await {
        match r.status.as_u16() {
            201 => created += 1,
            400 => {
                r.assert_error(400, "quota_exceeded");
                assert_eq!(
                    r.json()["message"],
                    "Maximum number of organisation keys (5) has been reached. Delete existing keys before creating new ones."
                );
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert_eq!(created, 5);
    let list = app.list_keys("busy").await.json();
    assert_eq!(list["keys"].as_array().unwrap().len(), 5);
    // Deleting one frees one slot, exactly.
    let id = list["keys"][0]["id"].as_str().unwrap();
    assert_eq!(
        app.delete_key("busy", id, ADMIN).await.status,
        StatusCode::NO_CONTENT
    );
    app.create_key("busy", json!({"name": "again"})).await;
    app.create_key_raw("busy", &json!({"name": "over"}), ADMIN)
        .await
        .assert_error(400, "quota_exceeded");
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.unwrap());
    }
    out
}

on_both_backends!(quota_follows_the_configured_maximum);
async fn quota_follows_the_configured_maximum() {
    let app = spawn_with(|c| c.keys.max_per_org = 2).await;
    app.create_key("small", json!({"name": "a"})).await;
    app.create_key("small", json!({"name": "b"})).await;
    let r = app
        .create_key_raw("small", &json!({"name": "c"}), ADMIN)
        .await;
    r.assert_error(400, "quota_exceeded");
    assert!(r.json()["message"].as_str().unwrap().contains("(2)"));
}

#[tokio::test(flavor = "multi_thread")]
async fn compatibility_route_answers_pkcs1() {
    let app = spawn_app().await;
    let r = app
        .request_as(Method::POST, "/organization/legacy/key", ADMIN)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let pem = r.text();
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "{pem}");
    let private = RsaPrivateKey::from_pkcs1_pem(&pem).unwrap();
    let list = app.list_keys("legacy").await.json();
    assert_eq!(list["keys"][0]["name"], "Organization key");
    let public =
        RsaPublicKey::from_public_key_pem(list["keys"][0]["publicKey"].as_str().unwrap()).unwrap();
    assert_eq!(private.to_public_key(), public);
    // Its errors have their own shape.
    let r = app
        .request(Method::POST, "/organization/legacy/key", &[], "")
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["success"], false);
    assert!(r.json()["message"].as_str().is_some());
    let r = app
        .request_as(Method::POST, "/organization/bad%20org/key", ADMIN)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["success"], false);
    let r = app.get("/organization/legacy/key").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(
        r.json(),
        json!({"success": false, "message": "this route answers only POST"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_documents_are_exact_and_cacheable() {
    let app = spawn_app().await;
    let empty = app.get("/.well-known/jwks.json").await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.json(), json!({"keys": []}));
    let a = app
        .create_key("acme", json!({"name": "a", "algorithm": "PS384"}))
        .await;
    let b = app.create_key("beta", json!({"name": "b"})).await;

    let all = app.get("/.well-known/jwks.json").await;
    assert_eq!(all.header("content-type"), Some("application/json"));
    assert_eq!(all.header("cache-control"), Some("public, max-age=60"));
    let etag = all.header("etag").unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "a strong ETag: {etag}"
    );
    assert_ne!(etag, empty.header("etag").unwrap());
    let keys = all.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2);
    for (jwk, set) in keys.iter().zip([&a, &b]) {
        let public = RsaPublicKey::from_public_key_pem(set["publicKey"].as_str().unwrap()).unwrap();
        let b64 = |v: &Value| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(v.as_str().unwrap())
                .expect("unpadded base64url")
        };
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], set["algorithm"]);
        assert_eq!(jwk["kid"], set["id"]);
        assert_eq!(b64(&jwk["n"]), public.n().to_bytes_be());
        assert_eq!(b64(&jwk["e"]), public.e().to_bytes_be());
        assert_eq!(
            jwk.as_object().unwrap().len(),
            6,
            "nothing else, and nothing private: {jwk}"
        );
    }

    let cached = app
        .get_with("/.well-known/jwks.json", &[("if-none-match", &etag)])
        .await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    assert!(cached.body.is_empty());
    assert_eq!(cached.header("etag"), Some(etag.as_str()));
    let listed = format!("\"nope\", {etag}");
    let cached = app
        .get_with("/.well-known/jwks.json", &[("if-none-match", &listed)])
        .await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    let stale = app
        .get_with("/.well-known/jwks.json", &[("if-none-match", "\"stale\"")])
        .await;
    assert_eq!(stale.status, StatusCode::OK);
    let with_query = app
        .get(&format!(
            "/.well-known/jwks.json?kid={}",
            a["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        with_query.body, all.body,
        "unknown query parameters are ignored"
    );

    let acme = app.get("/v1/organisations/acme/jwks.json").await;
    assert_eq!(acme.json()["keys"].as_array().unwrap().len(), 1);
    assert_eq!(acme.json()["keys"][0]["kid"], a["id"]);
    assert_ne!(acme.header("etag"), Some(etag.as_str()));
    let nobody = app.get("/v1/organisations/nobody/jwks.json").await;
    assert_eq!(nobody.json(), json!({"keys": []}));
    app.get("/v1/organisations/bad!org/jwks.json")
        .await
        .assert_error(400, "invalid_request");

    // A deletion changes the document and its validator.
    app.delete_key("acme", a["id"].as_str().unwrap(), ADMIN)
        .await;
    let after = app
        .get_with("/.well-known/jwks.json", &[("if-none-match", &etag)])
        .await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.json()["keys"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_metrics_and_openapi_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.json(), json!({"status": "ok"}));
    assert_eq!(app.get("/readyz").await.json(), json!({"status": "ready"}));
    app.create_key("acme", json!({"name": "m"})).await;
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.text();
    assert!(text.contains("signet_keys 1"), "{text}");
    assert!(
        text.contains(
            "signet_http_requests_total{route=\"/v1/organisations/{org}/keys\",status=\"201\"} 1"
        ),
        "{text}"
    );
    let doc = app.get("/openapi.yaml").await;
    assert_eq!(doc.header("content-type"), Some("application/yaml"));
    assert!(doc.text().starts_with("openapi: 3.1"));
    // Request ids are echoed, or minted.
    let r = app
        .get_with("/healthz", &[("x-request-id", "abc-123")])
        .await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    // A minted id is the process's prefix, a dash and a number no other
    // request of the process gets (each thread counts up in blocks of its
    // own, so not in request order).
    let minted = |r: &str| {
        let (prefix, n) = r.split_once('-').expect("prefix-number");
        (prefix.to_owned(), n.parse::<u64>().expect("a number"))
    };
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(minted(
            app.get("/healthz").await.header("x-request-id").unwrap(),
        ));
    }
    assert!(ids
        .iter()
        .all(|(prefix, _)| prefix.len() == 8 && *prefix == ids[0].0));
    let numbers: std::collections::HashSet<u64> = ids.iter().map(|(_, n)| *n).collect();
    assert_eq!(numbers.len(), ids.len(), "a minted id came twice: {ids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_private_key_material_reaches_the_data_dir() {
    let app = spawn_app().await;
    let privates = create_secret_keys(&app).await;
    let pkcs1 = app
        .request_as(Method::POST, "/organization/acme/key", ADMIN)
        .await
        .text();
    let dir = app.stop().await;
    let files = all_bytes(dir.path());
    assert!(
        files.keys().any(|f| f.ends_with("/db")),
        "the database is there: {:?}",
        files.keys()
    );
    let pems: Vec<&str> = privates
        .iter()
        .map(String::as_str)
        .chain([pkcs1.as_str()])
        .collect();
    let needles = secret_needles(&pems);
    for (file, bytes) in &files {
        for (what, needle) in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{what} found in {file}"
            );
        }
    }
    // Records are sealed, so look inside them too: open the store with its
    // seal key and scan what it decrypts.
    let store = signet::store::sled::SledStore::open(
        dir.path(),
        signet::seal::Sealer::load_or_create(dir.path(), None).unwrap(),
    )
    .unwrap();
    let records = store.all_keys().unwrap();
    assert_eq!(records.len(), 3, "the scan sees every stored record");
    let opened = serde_json::to_vec(&records).unwrap();
    for (what, needle) in &needles {
        assert!(
            !opened.windows(needle.len()).any(|w| w == needle.as_slice()),
            "{what} found in a sealed record"
        );
    }
    // The raw scan does see the database: every key id is in it.
    for r in &records {
        let id = r.id.to_bytes();
        assert!(
            files.values().any(|b| b.windows(16).any(|w| w == id)),
            "key id {} not found by the scan",
            r.id
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn key_generation_does_not_stall_other_requests() {
    let app = std::sync::Arc::new(spawn_app().await);
    // Two 4096-bit generations take seconds of CPU; with two cores they
    // would starve the async workers if they ran there.
    let creates: Vec<_> = (0..2)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                app.create_key_raw(
                    &format!("slow{i}"),
                    &json!({"name": "big", "bits": 4096}),
                    ADMIN,
                )
                .await
            })
        })
        .collect();
    let mut answered_while_generating = 0;
    for _ in 0..20 {
        let r = app.get("/.well-known/jwks.json").await;
        assert_eq!(r.status, StatusCode::OK);
        if creates.iter().any(|c| !c.is_finished()) {
            answered_while_generating += 1;
        }
    }
    assert!(
        answered_while_generating >= 10,
        "only {answered_while_generating} of 20 reads finished before the creates"
    );
    for c in creates {
        assert_eq!(c.await.unwrap().status, StatusCode::CREATED);
    }
}
