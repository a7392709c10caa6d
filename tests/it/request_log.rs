//! Request log lines are written off the request path, yet none is lost:
//! a clean shutdown writes every queued line, the last request's included.

use std::io::Read;

use hyper::StatusCode;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn every_request_line_is_written_before_a_clean_exit() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = BinServer::start(dir.path(), &["--log-json"], "info", true);
    let mut stderr = server.child.stderr.take().unwrap();
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
    server.terminate();
    let (status, log) = tokio::task::spawn_blocking(move || {
        let mut log = String::new();
        stderr.read_to_string(&mut log).unwrap();
        (server.child.wait().unwrap(), log)
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}");
    let logged: std::collections::HashSet<String> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every line is JSON"))
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
