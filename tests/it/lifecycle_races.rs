//! The lifecycle's changes raced, on both backends. Each is one
//! transaction under its organisation's lock, so concurrent uploads of one
//! public key store it once, concurrent rotations never pass the quota,
//! and concurrent identical changes record one event.

use std::future::Future;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::support::{spawn_app, spawn_with, Resp, TestApp, ADMIN};

/// How many copies of one request run at once.
const RACERS: usize = 8;

/// Sends `RACERS` copies of `request` at once; their statuses, sorted.
async fn race<F, Fut>(app: &Arc<TestApp>, request: F) -> Vec<u16>
where
    F: Fn(Arc<TestApp>) -> Fut,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let tasks: Vec<_> = (0..RACERS)
        .map(|_| tokio::spawn(request(app.clone())))
        .collect();
    let mut statuses = Vec::with_capacity(RACERS);
    for task in tasks {
        statuses.push(task.await.unwrap().status.as_u16());
    }
    statuses.sort_unstable();
    statuses
}

/// `count` answers of `first`, then `second` for the rest.
fn answers(first: u16, count: usize, second: u16) -> Vec<u16> {
    let mut all = vec![first; count];
    all.resize(RACERS, second);
    all.sort_unstable();
    all
}

/// How many events of `org` have `action`.
async fn events(app: &TestApp, org: &str, action: &str) -> usize {
    let actions = app.audit_actions(org).await;
    actions.iter().filter(|(a, _)| a == action).count()
}

async fn key_count(app: &TestApp, org: &str) -> usize {
    let listed: Value = app.list_keys(org).await.json();
    listed["keys"].as_array().unwrap().len()
}

on_both_backends!(concurrent_uploads_of_one_public_key_store_it_once);
async fn concurrent_uploads_of_one_public_key_store_it_once() {
    let app = Arc::new(spawn_app().await);
    let donor = app
        .create_key("donor", json!({"name": "d", "algorithm": "EdDSA"}))
        .await;
    let body = json!({"name": "u", "publicKey": donor["publicKey"]});
    let statuses = race(&app, |app| {
        let body = body.clone();
        async move { app.create_key_raw("acme", &body, ADMIN).await }
    })
    .await;
    assert_eq!(statuses, answers(201, 1, 409));
    assert_eq!(key_count(&app, "acme").await, 1);
    assert_eq!(events(&app, "acme", "key.uploaded").await, 1);
}

on_both_backends!(concurrent_rotations_never_pass_the_quota);
async fn concurrent_rotations_never_pass_the_quota() {
    const QUOTA: usize = 4;
    let app = Arc::new(spawn_with(|c| c.keys.max_per_org = QUOTA as u32).await);
    let old = app
        .create_key("acme", json!({"name": "k", "algorithm": "EdDSA"}))
        .await;
    let id = old["id"].as_str().unwrap().to_owned();
    let statuses = race(&app, |app| {
        let id = id.clone();
        async move { app.rotate_key("acme", &id, None, &[]).await }
    })
    .await;
    // Each successor takes one free slot; the rest find none.
    assert_eq!(statuses, answers(201, QUOTA - 1, 400));
    assert_eq!(key_count(&app, "acme").await, QUOTA);
    assert_eq!(events(&app, "acme", "key.rotated").await, QUOTA - 1);
}

on_both_backends!(concurrent_identical_changes_record_one_event);
async fn concurrent_identical_changes_record_one_event() {
    let app = Arc::new(spawn_app().await);
    let key = app
        .create_key("acme", json!({"name": "k", "algorithm": "EdDSA"}))
        .await;
    let id = key["id"].as_str().unwrap().to_owned();
    for (patch, action) in [
        (json!({"state": "disabled"}), "key.disabled"),
        (json!({"name": "renamed"}), "key.renamed"),
        (json!({"state": "active"}), "key.enabled"),
    ] {
        let statuses = race(&app, |app| {
            let (id, patch) = (id.clone(), patch.clone());
            async move { app.patch_key("acme", &id, patch).await }
        })
        .await;
        assert_eq!(statuses, vec![200; RACERS], "{patch}");
        assert_eq!(events(&app, "acme", action).await, 1, "{patch}");
    }
    let listed = app.listed("acme", &id).await;
    assert_eq!(
        (listed["state"].as_str(), listed["name"].as_str()),
        (Some("active"), Some("renamed"))
    );
}
