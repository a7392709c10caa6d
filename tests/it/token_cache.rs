//! The verified-token cache: a repeated token skips the signature check,
//! but never outlives its key, its `exp`, or the request's audience.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper::{Method, StatusCode};
use serde_json::json;
use signet::keys::{Algorithm, KeyId};
use signet::verify::{Expect, KeyMaterial, KeySource, KeySourceError, Policy, Verifier};

use crate::support::*;

/// `signet_verify_token_cache_{hits,misses}_total` from `/metrics`.
async fn token_cache_counts(app: &TestApp) -> (u64, u64) {
    let text = app.get("/metrics").await.text();
    let count = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    (
        count("signet_verify_token_cache_hits_total"),
        count("signet_verify_token_cache_misses_total"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_token_is_served_from_the_cache_and_counted() {
    let app = spawn_app().await;
    let set = app.create_key("acme", json!({"name": "hot"})).await;
    let (kid, signer) = key_of(&set);
    let token = signer.org_token(&kid, claims("acme", "OWNER"));
    let (hits0, misses0) = token_cache_counts(&app).await;
    for _ in 0..5 {
        let r = app.request_as(Method::GET, "/v1/auth", &token).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.header("x-signet-org"), Some("acme"));
    }
    let (hits, misses) = token_cache_counts(&app).await;
    assert_eq!((hits - hits0, misses - misses0), (4, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_token_is_held_to_each_requests_audience_and_issuer() {
    let app = spawn_app().await;
    let set = app.create_key("acme", json!({"name": "aud"})).await;
    let (kid, signer) = key_of(&set);
    let token = signer.org_token(
        &kid,
        json!({"sub": "svc", "aud": "api", "iss": "idp", "exp": now() + 600}),
    );
    let ask = |query: &'static str| app.request_as(Method::GET, query, &token);
    assert_eq!(ask("/v1/auth?audience=api").await.status, StatusCode::OK);
    let (hits0, _) = token_cache_counts(&app).await;
    // Data-driven: each row asks about the cached token again.
    for (path, status) in [
        ("/v1/auth?audience=api", StatusCode::OK),
        ("/v1/auth?audience=other", StatusCode::UNAUTHORIZED),
        ("/v1/auth?audience=api", StatusCode::OK),
    ] {
        assert_eq!(ask(path).await.status, status, "{path}");
    }
    for (body, valid, code) in [
        (json!({"token": token, "audience": "api"}), true, None),
        (
            json!({"token": token, "audience": "other"}),
            false,
            Some("wrong_audience"),
        ),
        (
            json!({"token": token, "issuer": "someone"}),
            false,
            Some("wrong_issuer"),
        ),
        (json!({"token": token, "issuer": "idp"}), true, None),
    ] {
        let r = app
            .request(
                Method::POST,
                "/v1/verify",
                &[("content-type", "application/json")],
                serde_json::to_vec(&body).unwrap(),
            )
            .await
            .json();
        assert_eq!(r["valid"], valid, "{body}");
        if let Some(code) = code {
            assert_eq!(r["error"]["code"], code, "{body}");
        }
    }
    let (hits, _) = token_cache_counts(&app).await;
    assert_eq!(hits - hits0, 7, "every ask after the first was a cache hit");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_token_that_expires_is_refused_at_once() {
    let app = spawn_with(|c| c.verify.leeway_secs = 0).await;
    let set = app.create_key("acme", json!({"name": "short"})).await;
    let (kid, signer) = key_of(&set);
    let exp = now() + 2;
    let token = signer.org_token(
        &kid,
        json!({"org": "acme", "role": "OWNER", "sub": "s", "aud": "signet", "exp": exp}),
    );
    assert_eq!(app.verify(&token).await["valid"], true);
    assert_eq!(app.verify(&token).await["valid"], true, "a hit");
    while now() < exp {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (hits0, _) = token_cache_counts(&app).await;
    let v = app.verify(&token).await;
    assert_eq!(v["valid"], false, "{v}");
    assert_eq!(v["error"]["code"], "expired");
    let r = app.request_as(Method::GET, "/v1/auth", &token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let (hits, _) = token_cache_counts(&app).await;
    assert!(hits > hits0, "the refusals came from the cache's re-check");
}

/// What the hammering clients and the deleting test share.
#[derive(Default)]
struct Race {
    /// The round and its token being asked about.
    current: Mutex<Option<(u64, String)>>,
    /// The last round whose DELETE has answered.
    deleted_round: AtomicU64,
    stop: AtomicBool,
    asks: AtomicUsize,
    /// Acceptances of asks that began after their key's DELETE answered.
    late_acceptances: AtomicUsize,
}

impl Race {
    async fn hammer(&self, app: &TestApp) {
        while !self.stop.load(Ordering::SeqCst) {
            let Some((round, token)) = self.current.lock().unwrap().clone() else {
                tokio::task::yield_now().await;
                continue;
            };
            let deleted_before_asking = self.deleted_round.load(Ordering::SeqCst) >= round;
            let r = app.request_as(Method::GET, "/v1/auth", &token).await;
            self.asks.fetch_add(1, Ordering::SeqCst);
            if deleted_before_asking && r.status == StatusCode::OK {
                self.late_acceptances.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// Several rounds: a key's token is cached and hammered over `/v1/auth`
/// by concurrent clients while the key is deleted; no ask that started
/// after the DELETE answered may be accepted.
#[tokio::test(flavor = "multi_thread")]
async fn no_cached_token_is_accepted_after_its_key_is_deleted() {
    let app = Arc::new(spawn_app().await);
    let race = Arc::new(Race::default());
    let hammers: Vec<_> = (0..6)
        .map(|_| {
            let (app, race) = (app.clone(), race.clone());
            tokio::spawn(async move { race.hammer(&app).await })
        })
        .collect();
    let (hits0, _) = token_cache_counts(&app).await;
    for round in 1..=8u64 {
        let set = app
            .create_key("churn", json!({"name": format!("r{round}")}))
            .await;
        let (kid, signer) = key_of(&set);
        let token = signer.org_token(&kid, claims("churn", "OWNER"));
        *race.current.lock().unwrap() = Some((round, token.clone()));
        // Let the hammers hit the cached verdict for a while.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let deleted = app.delete_key("churn", &kid, ADMIN).await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
        race.deleted_round.store(round, Ordering::SeqCst);
        let after = app.request_as(Method::GET, "/v1/auth", &token).await;
        assert_eq!(after.status, StatusCode::UNAUTHORIZED, "round {round}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    race.stop.store(true, Ordering::SeqCst);
    for h in hammers {
        h.await.unwrap();
    }
    let (hits, _) = token_cache_counts(&app).await;
    assert!(
        hits - hits0 > 100,
        "the hammers were served from the token cache ({} hits)",
        hits - hits0
    );
    assert!(race.asks.load(Ordering::SeqCst) > 100);
    assert_eq!(
        race.late_acceptances.load(Ordering::SeqCst),
        0,
        "a cached token was accepted after its key's DELETE answered"
    );
}

/// A key source whose keys can be removed, as a delete or a revocation
/// seen from another instance removes them.
struct Removable(Mutex<HashMap<KeyId, Vec<u8>>>);

impl KeySource for Removable {
    fn lookup(&self, id: KeyId) -> Result<Option<KeyMaterial>, KeySourceError> {
        Ok(self.0.lock().unwrap().get(&id).map(|spki| KeyMaterial {
            org: None,
            algorithm: Algorithm::RS256,
            spki_der: spki.clone(),
        }))
    }
    fn contains(&self, id: KeyId) -> Result<bool, KeySourceError> {
        Ok(self.0.lock().unwrap().contains_key(&id))
    }
}

/// The same promise on the verifier itself, with threads verifying as fast
/// as they can: once `forget` returns, no cached verdict of the key counts.
#[test]
fn forgetting_a_key_ends_its_cached_verdicts_under_concurrent_verification() {
    let source = Arc::new(Removable(Mutex::default()));
    let policy = Policy {
        token_cache_entries: 1_000,
        token_cache_bytes: 1 << 20,
        ..Policy::default()
    };
    let verifier = Arc::new(Verifier::new(source.clone(), policy));
    let pem = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys/a.pem"))
        .unwrap();
    let signer = Signer::from_pem(&pem);
    for round in 0..5 {
        let kid = KeyId::new(ulid::Ulid::new());
        source.0.lock().unwrap().insert(kid, signer.spki_der());
        let token = signer.org_token(&kid.to_string(), json!({"exp": now() + 60}));
        verifier.verify(&token, Expect::default()).unwrap();
        let hits_before = verifier.stats().token_hits.get();
        let forgotten = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (verifier, token, forgotten, violations) = (
                    verifier.clone(),
                    token.clone(),
                    forgotten.clone(),
                    violations.clone(),
                );
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let after = forgotten.load(Ordering::SeqCst);
                        let ok = verifier.verify(&token, Expect::default()).is_ok();
                        if after && ok {
                            violations.fetch_add(1, Ordering::SeqCst);
                        }
                        if after {
                            break;
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(20));
        source.0.lock().unwrap().remove(&kid);
        verifier.forget(kid);
        forgotten.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        assert!(
            verifier.stats().token_hits.get() > hits_before,
            "round {round}: the token was served from the cache"
        );
        assert_eq!(violations.load(Ordering::SeqCst), 0, "round {round}");
        assert!(verifier.verify(&token, Expect::default()).is_err());
    }
}
