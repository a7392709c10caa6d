//! Partitions answer; they don't hang: instances talk to a
//! private PostgreSQL through a fault-injecting proxy (`faultproxy`) that
//! silently drops packets, stalls a writer inside its transaction, or cuts
//! an instance off just after its COMMIT. Every bound asserted is a
//! generous multiple of the configured timeout, not a performance figure;
//! the figures themselves are printed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use signet::config::{Config, Secret};

use crate::backends::Database;
use crate::faultproxy::{FaultProxy, Mode};
use crate::pg;
use crate::support::*;

/// A fresh database on the shared private PostgreSQL, and its port.
fn database(dir: &std::path::Path) -> Option<(&'static pg::Cluster, Database)> {
    let cluster = pg::shared()?;
    Some((cluster, Database::on(cluster, dir)))
}

/// An instance on `database`, through `proxy` if any, with `adjust`.
async fn instance(
    database: &Database,
    cluster: &pg::Cluster,
    proxy: Option<&FaultProxy>,
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    spawn_with(|c| {
        database.configure(c);
        if let Some(proxy) = proxy {
            let url = proxy.url(&database.url, cluster.port);
            c.storage.url = Some(Secret::new(url));
        }
        adjust(c);
    })
    .await
}

/// The answer to `request`, or a panic if none comes within 30 s (a hang).
async fn answered<F: std::future::Future<Output = Resp>>(request: F) -> (Resp, Duration) {
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .expect("an answer, not a hang");
    (r, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silently_dropped_path_answers_writes_within_the_statement_timeout_and_fences() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cluster, database)) = database(dir.path()) else {
        return;
    };
    let proxy = FaultProxy::start(cluster.port).await;
    let timeout = Duration::from_millis(1000);
    let max_staleness = Duration::from_millis(1000);
    let app = instance(&database, cluster, Some(&proxy), |c| {
        c.cluster.statement_timeout_ms = timeout.as_millis() as u64;
        c.cluster.lock_timeout_ms = 1000;
        c.cluster.max_staleness_ms = max_staleness.as_millis() as u64;
    })
    .await;
    let created = app.create_key("acme", json!({"name": "k"})).await;
    let (kid, signer) = key_of(&created);
    let token = signer.org_token(&kid, claims("acme", "OWNER"));
    assert_eq!(app.verify(&token).await["valid"], true);

    proxy.set(Mode::Drop);
    let dropped = Instant::now();
    // When verification is first refused, watched from the drop on.
    let fenced = {
        let (url, token) = (app.url("/v1/verify"), token.clone());
        tokio::spawn(async move {
            let body = serde_json::to_vec(&json!({ "token": token })).unwrap();
            loop {
                let r = send(
                    hyper::Method::POST,
                    &url,
                    &[("content-type", "application/json")],
                    body.clone().into(),
                )
                .await;
                if r.status.as_u16() == 503 {
                    return dropped.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let (r, took) = answered(app.create_key_raw("acme", &json!({"name": "n"}), ADMIN)).await;
    r.assert_error(503, "unavailable");
    let message = r.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("database"), "{message}");
    assert!(!message.contains("disk full"), "{message}");
    eprintln!("silent drop: a create answered 503 in {took:?}");
    assert!(took <= timeout * 3, "create took {took:?}");
    let (r, took) = answered(app.delete_key("acme", &kid, ADMIN)).await;
    r.assert_error(503, "unavailable");
    eprintln!("silent drop: a delete answered 503 in {took:?}");
    assert!(took <= timeout * 3, "delete took {took:?}");

    let fenced = tokio::time::timeout(max_staleness * 5, fenced)
        .await
        .expect("verification is refused")
        .unwrap();
    eprintln!("silent drop: fenced {fenced:?} after the drop began");
    // Its last confirmation was at most a re-read interval before.
    assert!(fenced <= max_staleness * 2, "{fenced:?}");
    verify_raw(&app, &token)
        .await
        .assert_error(503, "unavailable");
    let (r, _) = answered(app.get("/readyz")).await;
    r.assert_error(503, "unavailable");
    // Computed when scraped: the age grows; the lag does not drop to 0.
    let first = app.get("/metrics").await.text();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = app.get("/metrics").await.text();
    let (age1, age2) = (
        metric(&first, "signet_cluster_fresh_age_seconds"),
        metric(&second, "signet_cluster_fresh_age_seconds"),
    );
    assert!(age1 >= max_staleness.as_secs_f64(), "{age1}");
    assert!(age2 >= age1 + 0.4, "{age1} then {age2}");
    assert!(metric(&second, "signet_cluster_lag_seconds") > 0.0);
    // JWK Sets from memory all the while.
    assert_eq!(app.jwks_kids().await, vec![kid.clone()]);

    proxy.set(Mode::Pass);
    eventually(
        "verification resumes once healed",
        Duration::from_secs(20),
        || async {
            let r = verify_raw(&app, &token).await;
            r.status.as_u16() == 200 && r.json()["valid"] == true
        },
    )
    .await;
    let healed = app.get("/metrics").await.text();
    assert!(metric(&healed, "signet_cluster_fresh_age_seconds") < 1.0);
    assert_eq!(metric(&healed, "signet_cluster_lag_seconds"), 0.0);
    app.create_key("acme", json!({"name": "after"})).await;
    app.stop().await;
}

/// The sessions of `database` idle inside a transaction.
fn idle_in_transaction(cluster: &pg::Cluster, database: &Database) -> u32 {
    let name = database.url.rsplit('/').next().unwrap();
    cluster
        .sql(
            &cluster.url("postgres"),
            &format!(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = '{name}' AND state = 'idle in transaction'"
            ),
        )
        .parse()
        .unwrap()
}

/// Stalls `stuck`'s next COMMIT in the proxy and sends it a create of a
/// key named `name` in `org`; returns once its session sits idle inside
/// the transaction (holding the organisation's and the counter's locks),
/// with the task that answers it.
async fn stall_a_writer(
    proxy: &FaultProxy,
    stuck: TestApp,
    org: &'static str,
    name: &'static str,
    cluster: &pg::Cluster,
    database: &Database,
) -> tokio::task::JoinHandle<(TestApp, Resp)> {
    proxy.set(Mode::StallBeforeCommit);
    let writer = tokio::spawn(async move {
        let r = stuck
            .create_key_raw(org, &json!({ "name": name }), ADMIN)
            .await;
        (stuck, r)
    });
    eventually(
        "a session idle in its transaction",
        Duration::from_secs(10),
        || async { idle_in_transaction(cluster, database) == 1 },
    )
    .await;
    writer
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_stuck_in_its_transaction_holds_up_other_writers_at_most_lock_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cluster, database)) = database(dir.path()) else {
        return;
    };
    let proxy = FaultProxy::start(cluster.port).await;
    let lock_timeout = Duration::from_millis(2000);
    let settings = |c: &mut Config| {
        c.cluster.lock_timeout_ms = lock_timeout.as_millis() as u64;
        c.cluster.statement_timeout_ms = 5000;
    };
    let stuck = instance(&database, cluster, Some(&proxy), settings).await;
    let other = instance(&database, cluster, None, settings).await;
    stuck.create_key("acme", json!({"name": "first"})).await;

    // The stuck writer holds the change counter's row lock, its COMMIT
    // held by the network.
    let writer = stall_a_writer(&proxy, stuck, "acme", "stuck", cluster, &database).await;
    let (r, took) = answered(other.create_key_raw("other", &json!({"name": "n"}), ADMIN)).await;
    eprintln!(
        "a writer stuck mid-transaction held up another instance's create for {took:?} (lock_timeout {lock_timeout:?})"
    );
    assert_eq!(r.status.as_u16(), 201, "{}", r.text());
    assert!(took <= lock_timeout * 2, "{took:?}");
    // The stuck one answers too, 503 within its statement timeout, and
    // its change was not made.
    let (stuck, r) = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the stuck writer answers")
        .unwrap();
    r.assert_error(503, "unavailable");
    proxy.set(Mode::Pass);
    let names: Vec<String> = stuck.list_keys("acme").await.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["first".to_owned()]);
    stuck.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_abandoned_by_their_clients_do_not_stop_a_healthy_instance_verifying() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cluster, database)) = database(dir.path()) else {
        return;
    };
    let proxy = FaultProxy::start(cluster.port).await;
    // Long locks: the stuck writer outlasts the test's clients.
    let settings = |c: &mut Config| {
        c.cluster.lock_timeout_ms = 20_000;
        c.cluster.statement_timeout_ms = 20_000;
        c.cluster.max_staleness_ms = 1000;
    };
    let stuck = instance(&database, cluster, Some(&proxy), settings).await;
    let healthy = instance(&database, cluster, None, settings).await;
    let created = healthy.create_key("acme", json!({"name": "live"})).await;
    let (kid, signer) = key_of(&created);
    let token = signer.org_token(&kid, claims("acme", "OWNER"));
    assert_eq!(healthy.verify(&token).await["valid"], true);

    let writer = stall_a_writer(&proxy, stuck, "stuck", "s", cluster, &database).await;
    // More creates than the pool holds, each waiting on the stuck lock,
    // each given up by its client after 100 ms; verifications meanwhile.
    let healthy = Arc::new(healthy);
    let started = Instant::now();
    let verdicts = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let checker = {
        let (app, token, verdicts, stop) = (
            healthy.clone(),
            token.clone(),
            verdicts.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let r = verify_raw(&app, &token).await;
                verdicts.lock().unwrap().push(r.status.as_u16());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    while started.elapsed() < Duration::from_secs(3) {
        let mut clients = Vec::new();
        for i in 0..24 {
            let app = healthy.clone();
            clients.push(tokio::spawn(async move {
                let body = json!({"name": format!("abandoned{i}")});
                let _ = tokio::time::timeout(
                    Duration::from_millis(100),
                    app.create_key_raw(&format!("org{i}"), &body, ADMIN),
                )
                .await;
            }));
        }
        for client in clients {
            client.await.unwrap();
        }
    }
    stop.store(true, Ordering::SeqCst);
    checker.await.unwrap();
    let verdicts = verdicts.lock().unwrap().clone();
    assert!(verdicts.len() >= 10, "{verdicts:?}");
    assert!(
        verdicts.iter().all(|s| *s == 200),
        "the healthy instance refused to verify: {verdicts:?}"
    );
    assert_eq!(healthy.verify(&token).await["valid"], true);
    proxy.set(Mode::Pass);
    let (stuck, _) = writer.await.unwrap();
    // Its pool was not left full of abandoned queries.
    healthy.create_key("acme", json!({"name": "after"})).await;
    stuck.stop().await;
    Arc::into_inner(healthy).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_answering_404_waits_for_the_deletion_like_its_204() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cluster, database)) = database(dir.path()) else {
        return;
    };
    let proxy = FaultProxy::start(cluster.port).await;
    let max_staleness = Duration::from_millis(1000);
    let settings = |c: &mut Config| {
        c.cluster.max_staleness_ms = max_staleness.as_millis() as u64;
        c.cluster.statement_timeout_ms = 1000;
    };
    let a = instance(&database, cluster, None, settings).await;
    let b = Arc::new(instance(&database, cluster, Some(&proxy), settings).await);
    let created = a.create_key("acme", json!({"name": "k"})).await;
    let (kid, signer) = key_of(&created);
    let token = signer.org_token(&kid, claims("acme", "OWNER"));
    eventually("B verifies A's key", Duration::from_secs(10), || async {
        verify_raw(&b, &token).await.json()["valid"] == true
    })
    .await;

    // Every verification B answers: when it was sent, and whether valid.
    let answers = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let (b, token, answers, stop) = (b.clone(), token.clone(), answers.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let r = verify_raw(&b, &token).await;
                let valid = r.status.as_u16() == 200 && r.json()["valid"] == true;
                answers.lock().unwrap().push((sent, valid));
            }
        })
    };

    // B is cut off just after its COMMIT; its client gives up and retries
    // through A.
    proxy.set(Mode::StallAfterCommit);
    let b_delete = {
        let (b, kid) = (b.clone(), kid.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_millis(300),
                b.delete_key("acme", &kid, ADMIN),
            )
            .await;
        })
    };
    eventually(
        "B's COMMIT went through",
        Duration::from_secs(10),
        || async { proxy.mode() == Mode::Drop },
    )
    .await;
    let name = database.url.rsplit('/').next().unwrap();
    eventually(
        "the tombstone is there",
        Duration::from_secs(10),
        || async { cluster.sql(&cluster.url(name), "SELECT count(*) FROM tombstones") == "1" },
    )
    .await;
    let retried = Instant::now();
    let (r, took) = answered(a.delete_key("acme", &kid, ADMIN)).await;
    let answered_at = Instant::now();
    assert_eq!(r.status.as_u16(), 404, "{}", r.text());
    eprintln!("a 404 DELETE waited {took:?} for an instance cut off after its COMMIT");
    // Keep asking B for a while after the 404.
    tokio::time::sleep(max_staleness).await;
    stop.store(true, Ordering::SeqCst);
    hammer.await.unwrap();
    b_delete.await.unwrap();
    let answers = answers.lock().unwrap().clone();
    let after: Vec<_> = answers
        .iter()
        .filter(|(sent, _)| *sent > answered_at)
        .collect();
    assert!(!after.is_empty(), "B answered nothing after A's 404");
    assert!(
        after.iter().all(|(_, valid)| !valid),
        "B accepted the token {} times after A's 404",
        after.iter().filter(|(_, valid)| *valid).count()
    );
    // The wait was for B: it had not applied the deletion, so A waited
    // until B could no longer vouch (bounded by max_staleness + margin
    // from the retry).
    assert!(
        answers
            .iter()
            .any(|(sent, valid)| *valid && *sent > retried - Duration::from_millis(400)),
        "B was still vouching when A was asked: the wait had something to wait for"
    );
    assert!(took <= max_staleness * 3, "{took:?}");

    proxy.set(Mode::Pass);
    eventually(
        "B is back and has applied the delete",
        Duration::from_secs(20),
        || async {
            let r = verify_raw(&b, &token).await;
            r.status.as_u16() == 200 && r.json()["valid"] == false
        },
    )
    .await;
    a.stop().await;
    Arc::into_inner(b).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_path_still_serves_and_a_cut_one_answers_and_fences_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cluster, database)) = database(dir.path()) else {
        return;
    };
    let proxy = FaultProxy::start(cluster.port).await;
    let app = instance(&database, cluster, Some(&proxy), |c| {
        c.cluster.statement_timeout_ms = 2000;
        // Far longer than the test: only the lost listener fences it.
        c.cluster.max_staleness_ms = 600_000;
    })
    .await;
    let created = app.create_key("acme", json!({"name": "k"})).await;
    let (kid, signer) = key_of(&created);
    let token = signer.org_token(&kid, claims("acme", "OWNER"));

    // 20 ms each way per chunk: slower, but everything answers.
    proxy.set(Mode::Delay(Duration::from_millis(20)));
    let (r, took) = answered(app.create_key_raw("acme", &json!({"name": "slow"}), ADMIN)).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text());
    eprintln!("delay 20 ms per chunk: a create took {took:?}");
    assert_eq!(app.verify(&token).await["valid"], true);

    proxy.set(Mode::Cut);
    let (r, took) = answered(app.create_key_raw("acme", &json!({"name": "cut"}), ADMIN)).await;
    r.assert_error(503, "unavailable");
    eprintln!("cut: a create answered 503 in {took:?}");
    eventually(
        "the lost listener fences it",
        Duration::from_secs(10),
        || async { verify_raw(&app, &token).await.status.as_u16() == 503 },
    )
    .await;
    proxy.set(Mode::Pass);
    eventually("verification resumes", Duration::from_secs(20), || async {
        let r = verify_raw(&app, &token).await;
        r.status.as_u16() == 200 && r.json()["valid"] == true
    })
    .await;
    app.create_key("acme", json!({"name": "after"})).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_id_that_cannot_be_looked_up_is_unavailable_never_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cluster, database)) = database(dir.path()) else {
        return;
    };
    let proxy = FaultProxy::start(cluster.port).await;
    let timeout = Duration::from_millis(1000);
    let settings = |c: &mut Config| {
        c.cluster.statement_timeout_ms = timeout.as_millis() as u64;
        // Far longer than the test: staleness never fences `a` here, so
        // its 503s can only come from the failed look-up.
        c.cluster.max_staleness_ms = 600_000;
    };
    let a = instance(&database, cluster, Some(&proxy), settings).await;
    let b = instance(&database, cluster, None, settings).await;

    proxy.set(Mode::Drop);
    // Created through `b` while `a` cannot reach the database: `a` must
    // look the id up, and cannot.
    let created = b.create_key("acme", json!({"name": "through b"})).await;
    let (kid, signer) = key_of(&created);
    let token = signer.org_token(&kid, claims("acme", "OWNER"));
    let unchecked = |r: &Resp| {
        r.assert_error(503, "unavailable");
        let message = r.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains("could not be looked up"), "{message}");
        assert!(message.contains(&kid), "{message}");
    };
    let (r, took) = answered(verify_raw(&a, &token)).await;
    unchecked(&r);
    eprintln!("silent drop: an unknown key id answered 503 in {took:?}");
    assert!(took <= timeout * 3, "{took:?}");
    let (r, _) = answered(a.request_as(hyper::Method::GET, "/v1/auth", &token)).await;
    unchecked(&r);
    // An organisation token on the management API: no verdict either.
    let (r, _) =
        answered(a.request_as(hyper::Method::GET, "/v1/organisations/acme/keys", &token)).await;
    unchecked(&r);

    proxy.set(Mode::Pass);
    eventually(
        "the key verifies once healed",
        Duration::from_secs(20),
        || async {
            let r = verify_raw(&a, &token).await;
            r.status.as_u16() == 200 && r.json()["valid"] == true
        },
    )
    .await;
    a.stop().await;
    b.stop().await;
}
