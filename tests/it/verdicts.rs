//! Verdicts that hold on every route: a token naming another organisation
//! is `wrong_organisation` on `/v1/verify`, 401 on `/v1/auth` and on the
//! management API; time claims are bounded the same way everywhere.

use std::time::Duration;

use hyper::Method;
use serde_json::json;

use crate::support::*;

/// `GET /v1/auth` with `token` as its bearer credential.
async fn auth(app: &TestApp, token: &str) -> Resp {
    app.request_as(Method::GET, "/v1/auth", token).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_naming_another_organisation_is_refused_on_every_route() {
    let app = spawn_app().await;
    let (kid, signer) = key_of(&app.create_key("acme", json!({"name": "a"})).await);
    app.create_key("globex", json!({"name": "g"})).await;

    let own = signer.org_token(&kid, claims("acme", "OWNER"));
    let r = auth(&app, &own).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(r.header("x-signet-org"), Some("acme"));

    // Signed by acme's key, claiming to speak for globex.
    let forged = signer.org_token(&kid, claims("globex", "OWNER"));
    let v = app.verify(&forged).await;
    assert_eq!(v["valid"], false, "{v}");
    assert_eq!(v["error"]["code"], "wrong_organisation", "{v}");
    assert!(v.get("claims").is_none(), "{v}");

    let r = auth(&app, &forged).await;
    r.assert_error(401, "unauthorized");
    assert!(r.header("x-signet-org").is_none());
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("wrong_organisation"));

    for org in ["globex", "acme"] {
        app.request_as(
            Method::GET,
            &format!("/v1/organisations/{org}/keys"),
            &forged,
        )
        .await
        .assert_error(401, "unauthorized");
    }

    // Without an org claim a token still verifies (it is not an
    // organisation token, so the management API refuses it).
    let plain = signer.org_token(&kid, json!({"sub": "svc", "exp": now() + 60}));
    assert_eq!(app.verify(&plain).await["valid"], true);
    let r = auth(&app, &plain).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(r.header("x-signet-org"), Some("acme"));
}

#[tokio::test(flavor = "multi_thread")]
async fn time_claims_are_bounded_on_every_route() {
    let app = spawn_with(|c| c.verify.max_token_lifetime = Some(Duration::from_secs(3600))).await;
    let (kid, signer) = key_of(&app.create_key("acme", json!({"name": "a"})).await);
    let token = |extra: serde_json::Value| {
        let mut c = claims("acme", "OWNER");
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        signer.org_token(&kid, c)
    };
    let cases = [
        (
            "an hour-long token",
            json!({"iat": now(), "exp": now() + 3600}),
            None,
        ),
        (
            "iat two minutes ahead",
            json!({"iat": now() + 120}),
            Some("not_yet_valid"),
        ),
        ("exp 1e300", json!({"exp": 1e300}), Some("expired")),
        (
            "a day-long token",
            json!({"iat": now(), "exp": now() + 86_400}),
            Some("expired"),
        ),
        (
            "no iat, a day left",
            json!({"exp": now() + 86_400}),
            Some("expired"),
        ),
    ];
    for (name, extra, refusal) in cases {
        let t = token(extra);
        let v = app.verify(&t).await;
        let list = app
            .request_as(Method::GET, "/v1/organisations/acme/keys", &t)
            .await;
        match refusal {
            None => {
                assert_eq!(v["valid"], true, "{name}: {v}");
                assert_eq!(auth(&app, &t).await.status.as_u16(), 200, "{name}");
                assert_eq!(list.status.as_u16(), 200, "{name}: {}", list.text());
            }
            Some(code) => {
                assert_eq!(v["error"]["code"], code, "{name}: {v}");
                auth(&app, &t).await.assert_error(401, "unauthorized");
                list.assert_error(401, "unauthorized");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn extreme_numeric_dates_get_a_verdict_that_keeps_the_bounds() {
    const CAP: f64 = 3600.0;
    const LEEWAY: f64 = 30.0;
    let app = spawn_with(|c| c.verify.max_token_lifetime = Some(Duration::from_secs(3600))).await;
    let (kid, signer) = key_of(&app.create_key("acme", json!({"name": "a"})).await);
    let t = now() as f64;
    let dates = [
        -f64::MAX,
        -1e300,
        -1.0,
        0.0,
        0.5,
        t - 10.0,
        t + 10.0,
        t + 3599.5,
        t + 1e9,
        1e20,
        1e300,
        f64::MAX,
    ];
    let mut accepted = 0;
    for exp in dates {
        for iat in std::iter::once(None).chain(dates.map(Some)) {
            for nbf in [None, Some(-1e300), Some(t), Some(1e300)] {
                let mut claims = json!({ "exp": exp });
                if let Some(iat) = iat {
                    claims["iat"] = json!(iat);
                }
                if let Some(nbf) = nbf {
                    claims["nbf"] = json!(nbf);
                }
                let case = format!("{claims}");
                let v = app.verify(&signer.org_token(&kid, claims)).await;
                if v["valid"] == true {
                    accepted += 1;
                    // Seconds of slack for the clock moving during the test.
                    assert!(exp + LEEWAY > t, "{case}");
                    assert!(iat.is_none_or(|iat| iat - LEEWAY <= t + 5.0), "{case}");
                    assert!(nbf.is_none_or(|nbf| nbf - LEEWAY <= t + 5.0), "{case}");
                    assert!(exp - iat.unwrap_or(t) <= CAP + 5.0, "{case}");
                } else {
                    let code = v["error"]["code"].as_str().unwrap();
                    assert!(["expired", "not_yet_valid"].contains(&code), "{case}: {v}");
                }
            }
        }
    }
    assert!(accepted > 0, "some combinations are valid");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lifetime_cap_needs_exp_even_when_exp_is_optional() {
    for (cap, expected) in [(None, json!(true)), (Some(3600), json!(false))] {
        let app = spawn_with(|c| {
            c.verify.require_exp = false;
            c.verify.max_token_lifetime = cap.map(Duration::from_secs);
        })
        .await;
        let (kid, signer) = key_of(&app.create_key("acme", json!({"name": "a"})).await);
        let no_exp = signer.org_token(&kid, json!({"sub": "svc", "iat": now()}));
        let v = app.verify(&no_exp).await;
        assert_eq!(v["valid"], expected, "cap {cap:?}: {v}");
        if cap.is_some() {
            assert_eq!(v["error"]["code"], "missing_claim", "{v}");
        }
    }
}
