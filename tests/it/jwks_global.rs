//! `jwks.global`: without the JWK Set of every key, `/.well-known/jwks.json`
//! answers 404 naming the per-organisation route, which keeps working; and
//! `GET /v1/keys/{id}` answers from memory, through a database outage too.

use hyper::StatusCode;
use serde_json::json;

use crate::backends::private_database;
use crate::support::*;

on_both_backends!(without_the_global_set_the_well_known_route_names_the_per_org_one);

async fn without_the_global_set_the_well_known_route_names_the_per_org_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "[jwks]\nglobal = false\n").unwrap();
    let loaded = signet::config::Config::load_with_env(Some(&file), |_| None).unwrap();
    assert!(!loaded.jwks.global, "read from the file");
    assert!(
        signet::config::Config::default().jwks.global,
        "on by default"
    );

    let app = spawn_with(|c| c.jwks = loaded.jwks).await;
    let created = app
        .create_key("acme", json!({"name": "a", "algorithm": "EdDSA"}))
        .await;
    let kid = created["id"].as_str().unwrap();

    let global = app.get("/.well-known/jwks.json").await;
    global.assert_error(404, "not_found");
    let message = global.json()["message"].as_str().unwrap().to_owned();
    for needle in ["/v1/organisations/{org}/jwks.json", "jwks.global = false"] {
        assert!(message.contains(needle), "{needle} in {message}");
    }

    let of_org = app.get("/v1/organisations/acme/jwks.json").await;
    assert_eq!(of_org.status, StatusCode::OK);
    assert_eq!(of_org.json()["keys"][0]["kid"], kid);
    assert!(of_org.header("etag").is_some());
    let key = app.get(&format!("/v1/keys/{kid}")).await;
    assert_eq!(key.status, StatusCode::OK);
    assert_eq!(key.json()["publicKey"], created["publicKey"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_published_key_is_served_through_a_database_outage() {
    let Some((cluster, _dir, database)) = private_database() else {
        return;
    };
    let app = spawn_with(|c| database.configure(c)).await;
    let created = app
        .create_key("acme", json!({"name": "k", "algorithm": "ES256"}))
        .await;
    let (kept, gone) = (
        created["id"].as_str().unwrap(),
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
    );

    cluster.stop_server();
    let key = app.get(&format!("/v1/keys/{kept}")).await;
    assert_eq!(key.status, StatusCode::OK, "{}", key.text());
    let mut public = created.clone();
    public.as_object_mut().unwrap().remove("privateKey");
    assert_eq!(key.json(), public);
    // An id this instance does not hold needs the database, which is away.
    app.get(&format!("/v1/keys/{gone}"))
        .await
        .assert_error(503, "unavailable");

    cluster.start_server();
    app.get(&format!("/v1/keys/{gone}"))
        .await
        .assert_error(404, "not_found");
    app.stop().await;
    cluster.destroy();
}
