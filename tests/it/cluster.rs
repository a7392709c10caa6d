//! Several instances on one PostgreSQL: changes made through one reach the
//! others; an instance that cannot confirm it is current stops verifying.

use std::time::{Duration, Instant};

use serde_json::json;
use signet::config::{Backend, StaleVerification};

use crate::backends::{private_database, run_on};
use crate::lifecycle::{until, verdict};
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn changes_made_through_one_instance_reach_the_other() {
    run_on(Backend::Postgres, async {
        let (_dir, [a, b]) = spawn_sharing().await;
        let created = a.create_key("acme", json!({"name": "shared"})).await;
        let (kid, signer) = key_of(&created);
        let token = signer.org_token(&kid, claims("acme", "OWNER"));
        let limit = Duration::from_secs(10);
        eventually("B publishes A's key", limit, || async {
            b.jwks_kids().await.contains(&kid)
        })
        .await;
        assert_eq!(b.verify(&token).await["valid"], true);
        assert_eq!(b.delete_key("acme", &kid, ADMIN).await.status.as_u16(), 204);
        eventually("A forgets the key B deleted", limit, || async {
            a.verify(&token).await["valid"] == false
        })
        .await;
        assert!(a.jwks_kids().await.is_empty());
        assert_eq!(a.verify(&token).await["error"]["code"], "unknown_key");
        // What /metrics shows of it.
        let b_metrics = b.get("/metrics").await.text();
        assert_eq!(
            metric(&b_metrics, "signet_cluster_revocation_wait_seconds_count"),
            1.0
        );
        eventually("both instances count each other", limit, || async {
            metric(
                &a.get("/metrics").await.text(),
                "signet_cluster_live_instances",
            ) == 2.0
        })
        .await;
        let a_metrics = a.get("/metrics").await.text();
        assert!(metric(&a_metrics, "signet_cluster_applied_version") >= 2.0);
        assert!(metric(&a_metrics, "signet_cluster_fresh_age_seconds") < 60.0);
    })
    .await
}

impl TestApp {
    async fn list_keys_as(&self, org: &str, credential: &str) -> Resp {
        let path = format!("/v1/organisations/{org}/keys");
        self.request_as(hyper::Method::GET, &path, credential).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_cut_off_from_the_database_stops_verifying_until_it_is_back() {
    let Some((cluster, _dir, database)) = private_database() else {
        return;
    };
    let database = &database;
    let spawn = |mode| {
        spawn_with(move |c| {
            database.configure(c);
            c.cluster.max_staleness_ms = 300;
            c.cluster.stale_verification = mode;
        })
    };
    let (refusing, serving) = (
        spawn(StaleVerification::Refuse).await,
        spawn(StaleVerification::Serve).await,
    );
    let created = refusing.create_key("acme", json!({"name": "k"})).await;
    let (kid, signer) = key_of(&created);
    let token = signer.org_token(&kid, claims("acme", "OWNER"));
    let limit = Duration::from_secs(10);
    eventually("the other instance has the key", limit, || async {
        serving.verify(&token).await["valid"] == true
    })
    .await;

    cluster.stop_server();
    eventually("verification is refused once stale", limit, || async {
        verify_raw(&refusing, &token).await.status.as_u16() == 503
    })
    .await;
    verify_raw(&refusing, &token)
        .await
        .assert_error(503, "unavailable");
    assert_eq!(refusing.get("/readyz").await.status.as_u16(), 503);
    assert_eq!(
        refusing.jwks_kids().await,
        vec![kid.clone()],
        "JWK Sets from memory"
    );
    assert_eq!(
        serving.verify(&token).await["valid"],
        true,
        "serve keeps verifying"
    );

    cluster.start_server();
    eventually("verification resumes once current again", limit, || async {
        let r = verify_raw(&refusing, &token).await;
        r.status.as_u16() == 200 && r.json()["valid"] == true
    })
    .await;
    assert_eq!(refusing.get("/readyz").await.status.as_u16(), 200);
    refusing.stop().await;
    serving.stop().await;
    cluster.destroy();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_is_in_force_on_every_instance_when_it_answers() {
    run_on(Backend::Postgres, async {
        let (_dir, [a, b, c]) = spawn_sharing().await;
        for round in 0..20 {
            let created = a
                .create_key("acme", json!({"name": format!("r{round}")}))
                .await;
            let (kid, signer) = key_of(&created);
            let token = signer.org_token(&kid, claims("acme", "OWNER"));
            eventually("C has the new key", Duration::from_secs(10), || async {
                c.verify(&token).await["valid"] == true
            })
            .await;
            assert_eq!(b.delete_key("acme", &kid, ADMIN).await.status.as_u16(), 204);
            // No waiting: in force everywhere once the DELETE answered.
            for app in [&a, &c] {
                let r = verify_raw(app, &token).await;
                assert!(
                    r.status.as_u16() == 503 || r.json()["valid"] == false,
                    "round {round}: {}",
                    r.text()
                );
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_instance_delays_a_delete_by_at_most_max_staleness_and_never_accepts_it() {
    run_on(Backend::Postgres, async {
        // Both at the default max_staleness (2 s): a shared setting.
        let (dir, [a]) = spawn_sharing().await;
        let mut stopped = BinServer::start(dir.path(), &[], "warn", false);
        stopped.wait_ready().await;
        let url = format!("{}/v1/verify", stopped.base());
        let created = a.create_key("acme", json!({"name": "k"})).await;
        let (kid, signer) = key_of(&created);
        let token = signer.org_token(&kid, claims("acme", "OWNER"));
        let verify_on_c = || {
            let body = serde_json::to_vec(&json!({ "token": token })).unwrap();
            send(
                hyper::Method::POST,
                &url,
                &[("content-type", "application/json")],
                body.into(),
            )
        };
        eventually(
            "the process has the key",
            Duration::from_secs(10),
            || async {
                let r = verify_on_c().await;
                r.status.as_u16() == 200 && r.json()["valid"] == true
            },
        )
        .await;
        let pid = stopped.child.id().to_string();
        let signal = |sig: &str| {
            assert!(std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success())
        };
        signal("-STOP");
        let started = Instant::now();
        assert_eq!(a.delete_key("acme", &kid, ADMIN).await.status.as_u16(), 204);
        let took = started.elapsed();
        signal("-CONT");
        // A waits for the stopped process at most max_staleness plus a
        // margin (bounded generously here).
        assert!(took < Duration::from_secs(6), "the delete took {took:?}");
        for _ in 0..50 {
            let r = verify_on_c().await;
            assert!(
                r.status.as_u16() == 503 || r.json()["valid"] == false,
                "the stopped process accepted a deleted key: {}",
                r.text()
            );
        }
        stopped.child.kill().unwrap();
        stopped.child.wait().unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_created_elsewhere_verifies_at_once() {
    run_on(Backend::Postgres, async {
        let (_dir, [a, b]) = spawn_sharing().await;
        for round in 0..20 {
            let org = format!("fresh{round}");
            let created = a.create_key(&org, json!({"name": "new"})).await;
            let (kid, signer) = key_of(&created);
            let token = signer.org_token(&kid, claims(&org, "OWNER"));
            // As an organisation token, then as a token to verify.
            let listed = b.list_keys_as(&org, &token).await;
            assert_eq!(
                listed.status.as_u16(),
                200,
                "round {round}: {}",
                listed.text()
            );
            let verdict = b.verify(&token).await;
            assert_eq!(verdict["valid"], true, "round {round}: {verdict}");
        }
        // A made-up key id is unknown, and stays so under a flood.
        let (_, signer) = key_of(&a.create_key("acme", json!({"name": "x"})).await);
        for _ in 0..200 {
            let made_up = signet::keys::KeyId::new(ulid::Ulid::new()).to_string();
            let verdict = b
                .verify(&signer.org_token(&made_up, claims("acme", "OWNER")))
                .await;
            assert_eq!(verdict["error"]["code"], "unknown_key");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disable_or_immediate_rotation_is_in_force_on_every_instance_when_it_answers() {
    run_on(Backend::Postgres, async {
        let (_dir, [a, b, c]) = spawn_sharing().await;
        let limit = Duration::from_secs(10);
        for round in 0..5 {
            let created = a
                .create_key("acme", json!({"name": format!("r{round}")}))
                .await;
            let (kid, signer) = key_of(&created);
            let token = signer.org_token(&kid, claims("acme", "OWNER"));
            eventually("C has the new key", limit, || async {
                verdict(&c, &token).await == "valid"
            })
            .await;

            // A disable through B: refused on A and C once it answers.
            let r = b
                .patch_key("acme", &kid, json!({"state": "disabled"}))
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            for app in [&a, &c] {
                assert_eq!(verdict(app, &token).await, "key_disabled", "round {round}");
                assert!(!app.is_public("acme", &kid).await);
            }

            // An enable and a rename through C reach A.
            let body = json!({"state": "active", "name": format!("renamed{round}")});
            assert_eq!(c.patch_key("acme", &kid, body).await.status, 200);
            eventually("A republishes the enabled key", limit, || async {
                verdict(&a, &token).await == "valid"
            })
            .await;
            assert!(a.is_public("acme", &kid).await);
            let shown = a.get(&format!("/v1/keys/{kid}")).await.json();
            assert_eq!(shown["name"], format!("renamed{round}"), "{shown}");

            // A rotation through A with grace 0: the old key is refused on
            // B and C once it answers; its successor verifies there.
            let r = a
                .rotate_key("acme", &kid, Some(json!({"graceSeconds": 0})), &[])
                .await;
            assert_eq!(r.status, 201, "{}", r.text());
            for app in [&b, &c] {
                assert_eq!(verdict(app, &token).await, "key_expired", "round {round}");
            }
            let (next, next_signer) = key_of(&r.json());
            let next_token = next_signer.org_token(&next, claims("acme", "OWNER"));
            assert_eq!(verdict(&c, &next_token).await, "valid");
            assert_eq!(b.delete_key("acme", &next, ADMIN).await.status, 204);
            assert_eq!(a.delete_key("acme", &kid, ADMIN).await.status, 204);
        }

        // A rotation with grace shortens the old key's life everywhere.
        let created = a.create_key("acme", json!({"name": "graceful"})).await;
        let (kid, signer) = key_of(&created);
        let token = signer.org_token(&kid, claims("acme", "OWNER"));
        eventually("C has the key", limit, || async {
            verdict(&c, &token).await == "valid"
        })
        .await;
        let r = b
            .rotate_key("acme", &kid, Some(json!({"graceSeconds": 2})), &[])
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let retire = a.listed("acme", &kid).await["expiresAt"].clone();
        let retire = signet::keys::parse_time(retire.as_str().unwrap()).unwrap();
        assert_eq!(verdict(&c, &token).await, "valid", "until it retires");
        until(retire).await;
        for app in [&a, &c] {
            assert_eq!(verdict(app, &token).await, "key_expired");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_stops_listening_stops_vouching_at_once() {
    let Some((cluster, _dir, database)) = private_database() else {
        return;
    };
    // Far longer than the test: only the lost listener can stop it.
    let app = spawn_with(|c| {
        database.configure(c);
        c.cluster.max_staleness_ms = 600_000;
    })
    .await;
    let created = app.create_key("acme", json!({"name": "k"})).await;
    let (kid, signer) = key_of(&created);
    let token = signer.org_token(&kid, claims("acme", "OWNER"));
    assert_eq!(app.verify(&token).await["valid"], true);

    // The pooled connections stay up; the listening one is cut, and no
    // new connection (so no new LISTEN) is let in.
    let name = database.url.rsplit('/').next().unwrap().to_owned();
    let admin = cluster.url("postgres");
    cluster.sql(
        &admin,
        &format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"),
    );
    cluster.sql(
        &admin,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = '{name}' AND query LIKE '%pg_notify(''signet_keys'', ''probe %'"
        ),
    );
    let limit = Duration::from_secs(10);
    eventually(
        "verification is refused without a listener",
        limit,
        || async { verify_raw(&app, &token).await.status.as_u16() == 503 },
    )
    .await;
    verify_raw(&app, &token)
        .await
        .assert_error(503, "unavailable");
    assert_eq!(app.get("/readyz").await.status.as_u16(), 503);
    assert_eq!(app.jwks_kids().await, vec![kid.clone()]);

    cluster.sql(
        &admin,
        &format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"),
    );
    eventually(
        "verification resumes once listening again",
        limit,
        || async {
            let r = verify_raw(&app, &token).await;
            r.status.as_u16() == 200 && r.json()["valid"] == true
        },
    )
    .await;
    app.stop().await;
    cluster.destroy();
}

/// `GET /v1/cluster` as the operator; panics unless 200.
async fn cluster_view(app: &TestApp) -> serde_json::Value {
    let r = app
        .request_as(hyper::Method::GET, "/v1/cluster", ADMIN)
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    r.json()
}

/// Registers follower `id` with `app`, as `POST /v1/followers/ack` does.
async fn ack_as_follower(app: &TestApp, id: &str, applied: u64) {
    let body = serde_json::to_vec(&json!({ "follower": id, "applied": applied })).unwrap();
    let auth = bearer(CLUSTER_FOLLOWER_TOKEN);
    let r = app
        .request(
            hyper::Method::POST,
            "/v1/followers/ack",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
}

const CLUSTER_FOLLOWER_TOKEN: &str = "a-cluster-follower-token-0123456789";
const FOLLOWER_ID: &str = "01JEBXXQKFBF5KZNWJ47TAN9ZT";

#[tokio::test(flavor = "multi_thread")]
async fn a_lone_instance_lists_itself_and_its_followers() {
    let app = spawn_with(|c| {
        c.followers.token = Some(signet::config::Secret::new(CLUSTER_FOLLOWER_TOKEN.into()));
    })
    .await;
    app.get("/v1/cluster")
        .await
        .assert_error(401, "unauthorized");
    app.request_as(hyper::Method::GET, "/v1/cluster", "not-a-token")
        .await
        .assert_error(401, "unauthorized");
    let view = cluster_view(&app).await;
    let me = view["self"].as_str().expect("self").to_owned();
    assert_eq!(view["freshAgeMs"], 0, "sled follows nothing: {view}");
    assert_eq!(
        view["instances"],
        json!([{"id": me, "appliedVersion": 0, "lastHeartbeatAgoMs": 0, "live": true}])
    );
    assert_eq!(view["followers"], json!([]));
    // An organisation token of any role reads it too.
    let created = app.create_key("acme", json!({"name": "k"})).await;
    let (kid, signer) = key_of(&created);
    let member = signer.org_token(&kid, claims("acme", "MEMBER"));
    let r = app
        .request_as(hyper::Method::GET, "/v1/cluster", &member)
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(r.json()["self"], me.as_str());
    // A follower that acknowledged is listed, live.
    ack_as_follower(&app, FOLLOWER_ID, 1).await;
    let followers = cluster_view(&app).await["followers"].clone();
    assert_eq!(followers.as_array().map(Vec::len), Some(1), "{followers}");
    assert_eq!(followers[0]["id"], FOLLOWER_ID);
    assert_eq!(followers[0]["appliedEvent"], 1);
    assert_eq!(followers[0]["live"], true);
    assert!(followers[0]["lastHeardAgoMs"].is_u64());
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_on_one_database_list_each_other_live() {
    let Some((cluster, _dir, database)) = private_database() else {
        return;
    };
    let database = &database;
    let spawn = || {
        spawn_with(move |c| {
            database.configure(c);
            c.followers.token = Some(signet::config::Secret::new(CLUSTER_FOLLOWER_TOKEN.into()));
        })
    };
    let (a, b) = (spawn().await, spawn().await);
    ack_as_follower(&a, FOLLOWER_ID, 0).await;
    let (a_id, b_id) = (
        cluster_view(&a).await["self"].clone(),
        cluster_view(&b).await["self"].clone(),
    );
    assert_ne!(a_id, b_id);
    let limit = Duration::from_secs(10);
    for (app, name) in [(&a, "A"), (&b, "B")] {
        eventually(&format!("{name} lists both, live"), limit, || async {
            let view = cluster_view(app).await;
            let listed: Vec<(serde_json::Value, serde_json::Value)> = view["instances"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| (i["id"].clone(), i["live"].clone()))
                .collect();
            listed.len() == 2
                && [&a_id, &b_id]
                    .iter()
                    .all(|id| listed.contains(&((*id).clone(), json!(true))))
        })
        .await;
        let view = cluster_view(app).await;
        assert!(view["freshAgeMs"].is_u64(), "{view}");
        assert!(view["instances"][0]["appliedVersion"].is_u64(), "{view}");
    }
    // Followers are each instance's own.
    assert_eq!(cluster_view(&a).await["followers"][0]["id"], FOLLOWER_ID);
    assert_eq!(cluster_view(&b).await["followers"], json!([]));
    a.stop().await;
    b.stop().await;
    cluster.destroy();
}
