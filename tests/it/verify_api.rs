//! Verification over HTTP (`/v1/verify`, `/v1/auth`), and the cache's
//! promises: hot verifications read nothing, deletions bite at once,
//! unknown kids cannot flood it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use hyper::{Method, StatusCode};
use serde_json::json;
use signet::keys::{Algorithm, KeyId};
use signet::verify::{Expect, KeyMaterial, KeySource, KeySourceError, Policy, Verifier};

use crate::support::*;

on_both_backends!(verify_answers_the_result_shape);
async fn verify_answers_the_result_shape() {
    let app = spawn_app().await;
    let set = app.create_key("acme", json!({"name": "v"})).await;
    let (kid, signer) = key_of(&set);
    let token = signer.org_token(&kid, claims("acme", "OWNER"));
    let v = app.verify(&token).await;
    assert_eq!(v["valid"], true);
    assert_eq!(v["keyId"], kid.as_str());
    assert_eq!(v["organisationId"], "acme");
    assert_eq!(v["header"]["kid"], kid.as_str());
    assert_eq!(v["claims"]["sub"], "OWNER@acme");

    let r = app
        .request(
            Method::POST,
            "/v1/verify",
            &[("content-type", "application/json")],
            serde_json::to_vec(&json!({"token": token, "audience": "elsewhere"})).unwrap(),
        )
        .await
        .json();
    assert_eq!(r["valid"], false);
    assert_eq!(r["error"]["code"], "wrong_audience");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("elsewhere"));
    assert!(
        r.get("claims").is_none(),
        "an invalid token's claims are not echoed as if trusted"
    );

    let none = format!(
        "{}.",
        signing_input(
            &json!({"alg": "none", "kid": kid}),
            &claims("acme", "OWNER")
        )
    );
    assert_eq!(
        app.verify(&none).await["error"]["code"],
        "unsupported_algorithm"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_endpoint_answers_a_reverse_proxy() {
    let app = spawn_app().await;
    let set = app.create_key("acme", json!({"name": "proxy"})).await;
    let (kid, signer) = key_of(&set);
    let token = signer.org_token(
        &kid,
        json!({"sub": "svc-7", "exp": now() + 60, "aud": "api"}),
    );
    let ok = app.request_as(Method::GET, "/v1/auth", &token).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.header("x-signet-org"), Some("acme"));
    assert_eq!(ok.header("x-signet-sub"), Some("svc-7"));
    assert_eq!(ok.header("x-signet-key-id"), Some(kid.as_str()));
    let aud_ok = app
        .request_as(Method::GET, "/v1/auth?audience=api", &token)
        .await;
    assert_eq!(aud_ok.status, StatusCode::OK);
    let aud_bad = app
        .request_as(Method::GET, "/v1/auth?audience=other", &token)
        .await;
    aud_bad.assert_error(401, "unauthorized");
    // A proxy or service behind may read another header than the first:
    // a request with two is refused, whichever comes first.
    let valid = bearer(&token);
    for pair in [
        [valid.as_str(), "Bearer garbage"],
        ["Bearer garbage", valid.as_str()],
    ] {
        let r = app
            .request(
                Method::GET,
                "/v1/auth",
                &[("authorization", pair[0]), ("authorization", pair[1])],
                "",
            )
            .await;
        r.assert_error(401, "unauthorized");
    }
    let missing = app.get("/v1/auth").await;
    missing.assert_error(401, "unauthorized");
    assert!(missing
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer"));
    let forged = format!(
        "Bearer {}",
        key_of(&app.create_key("beta", json!({"name": "x"})).await)
            .1
            .org_token(&kid, json!({"exp": now() + 60}))
    );
    let r = app
        .request(Method::GET, "/v1/auth", &[("authorization", &forged)], "")
        .await;
    r.assert_error(401, "unauthorized");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    assert!(r.header("x-signet-org").is_none());
}

on_both_backends!(a_deleted_keys_tokens_fail_at_once_even_under_concurrent_verification);
async fn a_deleted_keys_tokens_fail_at_once_even_under_concurrent_verification() {
    let app = Arc::new(spawn_with(|c| c.keys.max_per_org = 3).await);
    let current: Arc<std::sync::Mutex<Option<(u64, String)>>> = Arc::default();
    let deleted_round = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(AtomicUsize::new(0));
    let checks = Arc::new(AtomicUsize::new(0));
    let verifiers: Vec<_> = (0..3)
        .map(|_| {
            let (app, current, deleted_round, stop, violations, checks) = (
                app.clone(),
                current.clone(),
                deleted_round.clone(),
                stop.clone(),
                violations.clone(),
                checks.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let Some((round, token)) = current.lock().unwrap().clone() else {
                        tokio::task::yield_now().await;
                        continue;
                    };
                    let deleted_before_asking = deleted_round.load(Ordering::SeqCst) >= round;
                    let v = app.verify(&token).await;
                    checks.fetch_add(1, Ordering::SeqCst);
                    if deleted_before_asking && v["valid"] == true {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    // Leave the cores to key generation between checks.
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
    for round in 1..=100u64 {
        let set = app
            .create_key("churn", json!({"name": format!("r{round}")}))
            .await;
        let (kid, signer) = key_of(&set);
        let token = signer.org_token(&kid, claims("churn", "OWNER"));
        *current.lock().unwrap() = Some((round, token.clone()));
        assert_eq!(
            app.verify(&token).await["valid"],
            true,
            "round {round}: fresh key verifies"
        );
        assert_eq!(
            app.verify(&token).await["valid"],
            true,
            "round {round}: cached key verifies"
        );
        assert_eq!(
            app.delete_key("churn", &kid, ADMIN).await.status,
            StatusCode::NO_CONTENT
        );
        deleted_round.store(round, Ordering::SeqCst);
        let after = app.verify(&token).await;
        assert_eq!(
            after["valid"], false,
            "round {round}: deleted key's token still verified"
        );
        assert_eq!(after["error"]["code"], "unknown_key");
    }
    stop.store(true, Ordering::SeqCst);
    for v in verifiers {
        v.await.unwrap();
    }
    assert!(
        checks.load(Ordering::SeqCst) > 100,
        "the concurrent verifiers really ran"
    );
    assert_eq!(
        violations.load(Ordering::SeqCst),
        0,
        "a token verified after its key's DELETE answered"
    );
}

/// A key source that counts its reads.
struct Counting {
    key: (KeyId, Vec<u8>),
    lookups: AtomicUsize,
}

impl KeySource for Counting {
    fn lookup(&self, id: KeyId) -> Result<Option<KeyMaterial>, KeySourceError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        Ok((id == self.key.0).then(|| KeyMaterial {
            org: None,
            algorithm: Algorithm::RS256,
            spki_der: self.key.1.clone(),
        }))
    }
    fn contains(&self, id: KeyId) -> Result<bool, KeySourceError> {
        Ok(id == self.key.0)
    }
}

#[test]
fn hot_keys_are_read_once_and_unknown_kids_cannot_evict_them() {
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
    let pem = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys/a.pem"))
        .unwrap();
    let spki = rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
        .unwrap()
        .to_public_key()
        .to_public_key_der()
        .unwrap()
        .into_vec();
    let kid = KeyId::new(ulid::Ulid::new());
    let source = Arc::new(Counting {
        key: (kid, spki),
        lookups: AtomicUsize::new(0),
    });
    let policy = Policy {
        cache_capacity: 2,
        ..Policy::default()
    };
    let verifier = Verifier::new(source.clone(), policy);
    let token = Signer::from_pem(&pem).org_token(&kid.to_string(), json!({"exp": now() + 60}));
    for _ in 0..100 {
        verifier.verify(&token, Expect::default()).unwrap();
    }
    assert_eq!(
        source.lookups.load(Ordering::SeqCst),
        1,
        "a hot verification reads no storage"
    );
    let signer = Signer::from_pem(&pem);
    for _ in 0..1000 {
        let unknown = KeyId::new(ulid::Ulid::new());
        let t = signer.org_token(&unknown.to_string(), json!({"exp": now() + 60}));
        assert_eq!(
            verifier.verify(&t, Expect::default()).unwrap_err().code(),
            "unknown_key"
        );
    }
    assert_eq!(
        source.lookups.load(Ordering::SeqCst),
        1001,
        "one lookup per unknown kid, no more"
    );
    let bogus = signer.org_token("not-a-ulid-at-all", json!({"exp": now() + 60}));
    assert_eq!(
        verifier
            .verify(&bogus, Expect::default())
            .unwrap_err()
            .code(),
        "unknown_key"
    );
    assert_eq!(
        source.lookups.load(Ordering::SeqCst),
        1001,
        "a kid that is not a ULID reads nothing"
    );
    verifier.verify(&token, Expect::default()).unwrap();
    assert_eq!(
        source.lookups.load(Ordering::SeqCst),
        1001,
        "the flood did not evict the hot key"
    );
    assert_eq!(verifier.stats().hits.get(), 100);
}
