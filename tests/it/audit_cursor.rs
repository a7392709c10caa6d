//! An audit cursor is an event id, and a bad one says so: it is not
//! mistaken for a key id.

use hyper::Method;

use crate::support::*;

#[tokio::test]
async fn a_bad_audit_cursor_names_the_audit_cursor() {
    let app = spawn_app().await;
    for cursor in [
        "zzz",
        "",
        "01ARZ3NDEKTSV4RRFFQ69G5FA",
        "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
    ] {
        let path = format!("/v1/organisations/acme/audit?before={cursor}");
        let resp = app.request_as(Method::GET, &path, ADMIN).await;
        resp.assert_error(400, "invalid_id");
        let message = resp.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains("audit cursor") && !message.contains("key id"),
            "{cursor:?}: {message}"
        );
    }
    let ok = app
        .request_as(
            Method::GET,
            "/v1/organisations/acme/audit?before=01ARZ3NDEKTSV4RRFFQ69G5FAV",
            ADMIN,
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    app.stop().await;
}
