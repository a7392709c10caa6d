//! Changes to one key take effect in the order they committed (docs/api.md,
//! "Order"), on both backends: racing lifecycle requests never leave the
//! list saying one thing and the verifier, `GET /v1/keys/{id}` and the JWK
//! Set another. Each race runs [`ROUNDS`] times on a fresh key.

use std::sync::Arc;

use serde_json::json;

use crate::lifecycle::verdict;
use crate::support::{key_of, now, spawn_with, Resp, Signer, TestApp, ADMIN};

/// Rounds per race; the races this guards against showed within about 10.
const ROUNDS: usize = 200;

/// One request of a race.
#[derive(Clone, Copy, Debug)]
enum Step {
    Disable,
    Enable,
    Rename,
    RotateNow,
    Rotate,
    Delete,
}

impl Step {
    async fn send(self, app: Arc<TestApp>, id: String, round: usize) -> Resp {
        match self {
            Step::Disable => {
                app.patch_key("acme", &id, json!({"state": "disabled"}))
                    .await
            }
            Step::Enable => app.patch_key("acme", &id, json!({"state": "active"})).await,
            Step::Rename => {
                let name = format!("renamed-{round}-{}", ulid::Ulid::new());
                app.patch_key("acme", &id, json!({ "name": name })).await
            }
            Step::RotateNow => {
                let body = Some(json!({"graceSeconds": 0}));
                app.rotate_key("acme", &id, body, &[]).await
            }
            Step::Rotate => app.rotate_key("acme", &id, None, &[]).await,
            Step::Delete => app.delete_key("acme", &id, ADMIN).await,
        }
    }
}

/// What must hold of the raced key once every request has answered.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// Listed with this state, and verifying exactly when it is active.
    Listed(&'static str),
    /// Listed as whatever state the race left, the verifier agreeing.
    Agrees,
    /// Gone: every answer (204 or 404) already meant its tokens fail.
    Gone,
}

/// The races of the issue that found the hole, and one more.
const RACES: &[(&str, &[Step], Then)] = &[
    (
        "a disable raced by two renames",
        &[Step::Disable, Step::Rename, Step::Rename],
        Then::Listed("disabled"),
    ),
    (
        "a rotation to zero raced by a rotation and a rename",
        &[Step::RotateNow, Step::Rotate, Step::Rename],
        Then::Listed("expired"),
    ),
    (
        "a disable raced by an enable",
        &[Step::Disable, Step::Enable],
        Then::Agrees,
    ),
    (
        "two deletes raced, each answer checked at once",
        &[Step::Delete, Step::Delete],
        Then::Gone,
    ),
];

on_both_backends!(racing_changes_take_effect_in_commit_order);
async fn racing_changes_take_effect_in_commit_order() {
    let app = Arc::new(spawn_with(|c| c.keys.max_per_org = 10_000).await);
    for (race, steps, then) in RACES {
        for round in 0..ROUNDS {
            let created = app
                .create_key("acme", json!({"name": "k", "algorithm": "EdDSA"}))
                .await;
            let (id, signer) = key_of(&created);
            let token = token(&signer, &id);
            assert_eq!(
                verdict(&app, &token).await,
                "valid",
                "{race}, round {round}"
            );
            let tasks: Vec<_> = steps
                .iter()
                .map(|step| {
                    let (app, id, token) = (app.clone(), id.clone(), token.clone());
                    let step = *step;
                    tokio::spawn(async move {
                        let answer = step.send(app.clone(), id, round).await;
                        // A revoking answer is in force when it is sent.
                        let after = verdict(&app, &token).await;
                        (step, answer.status.as_u16(), after)
                    })
                })
                .collect();
            let mut answers = Vec::new();
            for task in tasks {
                answers.push(task.await.unwrap());
            }
            let context = format!("{race}, round {round}: {answers:?}");
            for (step, status, after) in &answers {
                assert!(
                    matches!(status, 200 | 201 | 204 | 404),
                    "{context}: {step:?} answered {status}"
                );
                if matches!(step, Step::Delete) {
                    assert_eq!(after, "unknown_key", "{context}");
                }
            }
            check(&app, &id, &token, *then, &context).await;
        }
    }
}

/// The raced key as the list, the verifier, `GET /v1/keys/{id}` and the
/// JWK Set each show it: they must agree, and match `then`.
async fn check(app: &TestApp, id: &str, token: &str, then: Then, context: &str) {
    let verdict = verdict(app, token).await;
    let get = app.get(&format!("/v1/keys/{id}")).await.status.as_u16();
    let in_jwks = app.jwks_kids().await.iter().any(|kid| kid == id);
    let listed = app.list_keys("acme").await.json();
    let state = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .map(|k| k["state"].as_str().unwrap().to_owned());
    let expected = match (then, state.as_deref()) {
        (Then::Gone, None) => "unknown_key",
        (Then::Listed(want), Some(got)) if want == got => verdict_of(got),
        (Then::Agrees, Some(got)) => verdict_of(got),
        (_, got) => panic!("{context}: the key is listed as {got:?}, wanted {then:?}"),
    };
    assert_eq!(verdict, expected, "{context}: listed {state:?}");
    let active = expected == "valid";
    assert_eq!(get == 200, active, "{context}: GET /v1/keys/{{id}} {get}");
    assert_eq!(in_jwks, active, "{context}: in the JWK Set: {in_jwks}");
}

/// The verdict a token of a key listed in `state` must get.
fn verdict_of(state: &str) -> &'static str {
    match state {
        "active" => "valid",
        "disabled" => "key_disabled",
        "expired" => "key_expired",
        other => panic!("unknown state {other}"),
    }
}

fn token(signer: &Signer, kid: &str) -> String {
    signer.sign(
        &json!({"alg": "EdDSA", "kid": kid}),
        &json!({"sub": "racer", "exp": now() + 600}),
        "EdDSA",
    )
}
