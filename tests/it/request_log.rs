//! Request log lines are written off the request path, yet none is lost:
//! a clean shutdown writes every queued line, the last request's included.

use std::io::Read;

use hyper::StatusCode;

use crate::support::*;

/// Terminates `server` (exit 0 asserted) and reads its whole log, as text
/// and as lines of JSON.
async fn stopped(
    server: BinServer,
    mut stderr: std::process::ChildStderr,
) -> (String, Vec<serde_json::Value>) {
    server.terminate();
    let (status, log) = tokio::task::spawn_blocking(move || {
        let mut server = server;
        let mut log = String::new();
        stderr.read_to_string(&mut log).unwrap();
        (server.child.wait().unwrap(), log)
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}");
    let lines = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    (log, lines)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_line_is_written_before_a_clean_exit() {
    let dir = tempfile::tempdir().unwrap();
    // Anonymous requests are logged at `debug` (below).
    let mut server = BinServer::start(dir.path(), &["--log-json"], "info,signet::http=debug", true);
    let stderr = server.child.stderr.take().unwrap();
    server.wait_ready().await;
    let url = format!("{}/.well-known/jwks.json", server.base());
    // Nobody reads the log until the end: the pipe fills after a few
    // hundred lines, and the rest must queue without holding up requests.
    const REQUESTS: usize = 1500;
    for n in 0..REQUESTS {
        let id = format!("log-check-{n}");
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            send(
                hyper::Method::GET,
                &url,
                &[("x-request-id", &id)],
                bytes::Bytes::new(),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("request {n} waited on the log writer"));
        assert_eq!(r.status, StatusCode::OK);
    }
    // Terminate with lines still queued, then start reading.
    let (log, lines) = stopped(server, stderr).await;
    let logged: std::collections::HashSet<String> = lines
        .iter()
        .filter_map(|l| l["fields"]["request_id"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<usize> = (0..REQUESTS)
        .filter(|n| !logged.contains(&format!("log-check-{n}")))
        .collect();
    assert!(missing.is_empty(), "request lines lost: {missing:?}");
    assert!(
        log.lines().last().unwrap().contains("bye"),
        "the shutdown's own last line is written too"
    );
}

/// At `info`, only a request with a valid credential is one line each: an
/// anonymous client (the JWK Sets, verification, refusals, unknown paths)
/// never costs a write per request. Its 401s are counted and sampled.
#[tokio::test(flavor = "multi_thread")]
async fn at_info_only_requests_with_a_valid_credential_are_logged_each() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = BinServer::start(dir.path(), &["--log-json"], "info", true);
    let stderr = server.child.stderr.take().unwrap();
    server.wait_ready().await;
    let base = server.base();
    let get = |path: &str, headers: Vec<(&'static str, String)>, id: String| {
        let url = format!("{base}{path}");
        async move {
            let mut headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            headers.push(("x-request-id", &id));
            send(hyper::Method::GET, &url, &headers, bytes::Bytes::new()).await
        }
    };
    const ANONYMOUS: usize = 50;
    for n in 0..ANONYMOUS {
        let (path, expect) = match n % 5 {
            0 => ("/.well-known/jwks.json", 200),
            1 => ("/v1/organisations/acme/keys", 401),
            2 => ("/nowhere", 404),
            3 => ("/v1/auth", 401),
            _ => ("/v1/organisations/acme/jwks.json", 200),
        };
        let bad = vec![("authorization", "Bearer not-a-credential".to_owned())];
        let headers = if n % 10 == 1 { bad } else { Vec::new() };
        let r = get(path, headers, format!("anonymous-{n}")).await;
        assert_eq!(r.status.as_u16(), expect, "{path}");
    }
    let admin = vec![("authorization", format!("Bearer {ADMIN}"))];
    let r = get("/v1/organisations/acme/keys", admin, "credited".into()).await;
    assert_eq!(r.status, StatusCode::OK);
    let (log, lines) = stopped(server, stderr).await;
    let lines: Vec<(String, String)> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "request")
        .map(|l| {
            let field = |name: &str| l["fields"][name].as_str().unwrap().to_owned();
            (field("request_id"), field("path"))
        })
        .collect();
    let expected = [(
        "credited".to_owned(),
        "/v1/organisations/acme/keys".to_owned(),
    )];
    assert_eq!(lines, expected, "{log}");
    // The 401s: one sampled warning, not one line each.
    let sampled = log
        .matches("refused a request without a valid credential")
        .count();
    assert_eq!(sampled, 1, "{log}");
}
