//! The web console: its security headers and switch, `no-store` on every
//! response holding a private key, and the page itself driven end to end
//! in headless Chromium (tests/browser/console_test.py, Selenium).

use std::path::Path;
use std::process::Command;

use hyper::Method;
use serde_json::json;

use crate::support::*;

const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'";

fn assert_console_headers(r: &Resp, what: &str) {
    assert_eq!(r.header("content-security-policy"), Some(CSP), "{what}");
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{what}"
    );
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
}

#[tokio::test]
async fn every_console_response_carries_the_security_headers() {
    let app = spawn_app().await;
    let page = app.get("/console").await;
    assert_eq!(page.status.as_u16(), 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert_console_headers(&page, "/console");
    let html = page.text();
    assert!(
        html.contains(r#"<label for="token">Token</label>"#),
        "{html}"
    );
    // No inline script or style, nothing from another origin.
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "{html}"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    for (path, media) in [
        ("/console/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/api.js", "text/javascript"),
        ("/console/view.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status.as_u16(), 200, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with(media),
            "{path}"
        );
        assert_console_headers(&r, path);
        let text = r.text();
        assert!(!text.contains("localStorage.setItem"), "{path}");
        assert!(!text.contains("document.cookie ="), "{path}");
        assert!(!text.contains("https://"), "{path}: no other origin");
    }
    for path in [
        "/console/nope.js",
        "/console/..%2Fconfig.toml",
        "/console/%2e%2e/x",
        "/console/a/b",
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status.as_u16(), 404, "{path}");
        assert_console_headers(&r, path);
    }
    let r = app.request(Method::POST, "/console", &[], "").await;
    r.assert_error(405, "method_not_allowed");
    assert_console_headers(&r, "POST /console");
}

#[tokio::test]
async fn a_disabled_console_answers_404_everywhere_under_it() {
    let app = spawn_with(|c| c.console.enabled = false).await;
    for path in [
        "/console",
        "/console/",
        "/console/console.js",
        "/console/console.css",
        "/console/a/b",
    ] {
        for method in [Method::GET, Method::POST, Method::DELETE] {
            let r = app.request(method.clone(), path, &[], "").await;
            assert_eq!(r.status.as_u16(), 404, "{method} {path}");
            assert_console_headers(&r, &format!("{method} {path}"));
        }
    }
    // The API is unaffected.
    assert_eq!(app.get("/healthz").await.status.as_u16(), 200);
}

#[tokio::test]
async fn every_response_holding_a_private_key_is_no_store() {
    let app = spawn_app().await;
    let json_create = app
        .create_key_raw("acme", &json!({"name": "a", "algorithm": "ES256"}), ADMIN)
        .await;
    assert_eq!(json_create.header("cache-control"), Some("no-store"));
    let id = json_create.json()["id"].as_str().unwrap().to_owned();
    let pem_create = app
        .create_key_pem("acme", &json!({"name": "b", "algorithm": "EdDSA"}))
        .await;
    assert_eq!(pem_create.status.as_u16(), 201);
    assert_eq!(pem_create.header("cache-control"), Some("no-store"));
    let rotate = format!("/v1/organisations/acme/keys/{id}/rotate");
    let rotated = app.request_as(Method::POST, &rotate, ADMIN).await;
    assert_eq!(rotated.status.as_u16(), 201, "{}", rotated.text());
    assert!(rotated.text().contains("PRIVATE KEY"));
    assert_eq!(rotated.header("cache-control"), Some("no-store"));
    let compat = app
        .request_as(Method::POST, "/organization/globex/key", ADMIN)
        .await;
    assert_eq!(compat.status.as_u16(), 200);
    assert!(compat.text().contains("BEGIN RSA PRIVATE KEY"));
    assert_eq!(compat.header("cache-control"), Some("no-store"));
}

/// What the browser test needs; a clear failure (never a skip) without it.
fn browser_tools() -> (String, String, String) {
    let find = |env: &str, candidates: &[&str]| -> Option<String> {
        std::env::var(env)
            .ok()
            .into_iter()
            .chain(candidates.iter().map(|c| c.to_string()))
            .find(|p| Path::new(p).exists())
    };
    let chromium = find(
        "CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    );
    let driver = find("CHROMEDRIVER", &["/usr/bin/chromedriver"]);
    // Debian's python3-selenium is for Debian's python3.
    let python = find("SIGNET_TEST_PYTHON", &["/usr/bin/python3"]);
    let (Some(chromium), Some(driver), Some(python)) = (chromium, driver, python) else {
        panic!(
            "the console's browser test needs Chromium, its driver and Selenium: \
             apt-get install -y chromium chromium-driver python3-selenium \
             (or set CHROMIUM, CHROMEDRIVER, SIGNET_TEST_PYTHON)"
        );
    };
    let selenium = Command::new(&python)
        .args(["-c", "import selenium"])
        .output()
        .expect("python runs");
    assert!(
        selenium.status.success(),
        "{python} has no selenium module: apt-get install -y python3-selenium"
    );
    (chromium, driver, python)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_works_end_to_end_in_headless_chromium() {
    let (chromium, driver, python) = browser_tools();
    let app = spawn_with(|c| c.keys.max_per_org = 4).await;
    let victim = app
        .create_key("acme", json!({"name": "victim", "algorithm": "ES256"}))
        .await;
    let (victim_id, victim_signer) = key_of(&victim);
    let victim_token = victim_signer.org_token(&victim_id, claims("acme", "OWNER"));
    let globex = app
        .create_key(
            "globex",
            json!({"name": "globex key", "algorithm": "EdDSA"}),
        )
        .await;
    let (globex_id, globex_signer) = key_of(&globex);
    let org_token = globex_signer.org_token(&globex_id, claims("globex", "OWNER"));
    // The RSA key the console uploads to acme: an RSA public key names no
    // scheme, so the console must send one.
    app.create_key(
        "globex",
        json!({"name": "globex rsa", "algorithm": "RS256"}),
    )
    .await;
    let downloads = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/console_test.py");
    let mut args = vec![
        script.display().to_string(),
        app.url(""),
        ADMIN.to_owned(),
        org_token,
        victim_id.clone(),
        victim_token,
        downloads.path().display().to_string(),
    ];
    // SIGNET_CONSOLE_SCREENSHOTS=docs/console refreshes docs/console/*.png.
    if let Ok(dir) = std::env::var("SIGNET_CONSOLE_SCREENSHOTS") {
        args.push(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(dir)
                .display()
                .to_string(),
        );
    }
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(&args)
            .env("CHROMIUM", chromium)
            .env("CHROMEDRIVER", driver)
            .output()
            .expect("the browser test starts")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    let result: serde_json::Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|r| serde_json::from_str(r).unwrap())
        .unwrap_or_else(|| panic!("no RESULT line:\n{stdout}"));
    // Each downloaded private key's public half is the published key.
    for which in ["created", "successor"] {
        let id = result[which].as_str().unwrap();
        let pem = std::fs::read_to_string(downloads.path().join(format!("{id}.pem"))).unwrap();
        let signer = Signer::from_pem(&pem);
        let published = app
            .get_with(
                &format!("/v1/keys/{id}"),
                &[("accept", "application/x-pem-file")],
            )
            .await;
        assert_eq!(published.status.as_u16(), 200, "{which}");
        let (_, der) = pkcs8::der::pem::decode_vec(published.text().as_bytes()).unwrap();
        assert_eq!(signer.spki_der(), der, "{which}: the download matches {id}");
    }
    // The pre-made key the browser disabled and enabled again verifies.
    let listed = app.list_keys("acme").await.json();
    let victim_now = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == victim_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(victim_now["state"], "active", "{victim_now}");
}
