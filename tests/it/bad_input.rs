//! Hostile and malformed requests: each gets its documented status and code,
//! changes nothing, and the server keeps answering.

use hyper::Method;
use serde_json::json;

use crate::support::*;

struct Case {
    what: &'static str,
    method: Method,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

const AUTH: (&str, &str) = ("authorization", "Bearer test-operator-token-0123456789");
const JSON: (&str, &str) = ("content-type", "application/json");

fn case(
    what: &'static str,
    method: Method,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &[u8],
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        method,
        path,
        headers,
        body: body.to_vec(),
        status,
        code,
    }
}

fn cases() -> Vec<Case> {
    use Method as M;
    const KEYS: &str = "/v1/organisations/acme/keys";
    const AJ: &[(&str, &str)] = &[AUTH, JSON];
    vec![
        case("malformed JSON", M::POST, KEYS, AJ, b"{\"name\":", 400, "invalid_request"),
        case("not JSON at all", M::POST, KEYS, AJ, b"name=x", 400, "invalid_request"),
        case("empty body", M::POST, KEYS, AJ, b"", 400, "invalid_request"),
        case("JSON array", M::POST, KEYS, AJ, b"[]", 400, "invalid_request"),
        case("name missing", M::POST, KEYS, AJ, b"{}", 400, "invalid_request"),
        case("name wrong type", M::POST, KEYS, AJ, br#"{"name":42}"#, 400, "invalid_request"),
        case("name null", M::POST, KEYS, AJ, br#"{"name":null}"#, 400, "invalid_request"),
        case("name empty", M::POST, KEYS, AJ, br#"{"name":""}"#, 400, "invalid_request"),
        case("name with control char", M::POST, KEYS, AJ, br#"{"name":"a\u0000b"}"#, 400, "invalid_request"),
        case("name too long", M::POST, KEYS, AJ, format!(r#"{{"name":"{}"}}"#, "x".repeat(129)).leak().as_bytes(), 400, "invalid_request"),
        case("bits wrong type", M::POST, KEYS, AJ, br#"{"name":"a","bits":"2048"}"#, 400, "invalid_request"),
        case("bits unsupported", M::POST, KEYS, AJ, br#"{"name":"a","bits":1024}"#, 400, "invalid_request"),
        case("bits negative", M::POST, KEYS, AJ, br#"{"name":"a","bits":-2048}"#, 400, "invalid_request"),
        case("algorithm unsupported", M::POST, KEYS, AJ, br#"{"name":"a","algorithm":"HS256"}"#, 400, "invalid_request"),
        case("algorithm none", M::POST, KEYS, AJ, br#"{"name":"a","algorithm":"none"}"#, 400, "invalid_request"),
        case("unknown field", M::POST, KEYS, AJ, br#"{"name":"a","exponent":3}"#, 400, "invalid_request"),
        case("duplicate-looking deep JSON", M::POST, KEYS, AJ, "[".repeat(10_000).leak().as_bytes(), 400, "invalid_request"),
        case("invalid UTF-8", M::POST, KEYS, AJ, b"{\"name\":\"\xff\xfe\"}", 400, "invalid_request"),
        case("bad org id", M::POST, "/v1/organisations/a%20b/keys", AJ, br#"{"name":"a"}"#, 400, "invalid_request"),
        case("org id too long", M::GET, "/v1/organisations/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx/keys", &[AUTH], b"", 400, "invalid_request"),
        case("invalid ULID", M::GET, "/v1/keys/not-a-ulid", &[], b"", 400, "invalid_id"),
        case("ULID out of range", M::GET, "/v1/keys/8ZZZZZZZZZZZZZZZZZZZZZZZZZ", &[], b"", 400, "invalid_id"),
        case("invalid ULID on delete", M::DELETE, "/v1/organisations/acme/keys/123", &[AUTH], b"", 400, "invalid_id"),
        case("invalid before cursor", M::GET, "/v1/organisations/acme/audit?before=zzz", &[AUTH], b"", 400, "invalid_id"),
        case("audit limit too big", M::GET, "/v1/organisations/acme/audit?limit=1001", &[AUTH], b"", 400, "invalid_request"),
        case("audit limit not a number", M::GET, "/v1/organisations/acme/audit?limit=ten", &[AUTH], b"", 400, "invalid_request"),
        case("unknown key", M::GET, "/v1/keys/01ARZ3NDEKTSV4RRFFQ69G5FAV", &[], b"", 404, "not_found"),
        case("unknown key on delete", M::DELETE, "/v1/organisations/acme/keys/01ARZ3NDEKTSV4RRFFQ69G5FAV", &[AUTH], b"", 404, "not_found"),
        case("unknown route", M::GET, "/v2/anything", &[], b"", 404, "not_found"),
        case("wrong method on keys", M::PUT, KEYS, AJ, br#"{"name":"a"}"#, 405, "method_not_allowed"),
        case("wrong method on a key", M::GET, "/v1/organisations/acme/keys/01ARZ3NDEKTSV4RRFFQ69G5FAV", &[AUTH], b"", 405, "method_not_allowed"),
        case("wrong method on jwks", M::POST, "/.well-known/jwks.json", &[], b"", 405, "method_not_allowed"),
        case("wrong method on verify", M::GET, "/v1/verify", &[], b"", 405, "method_not_allowed"),
        case("oversize body", M::POST, KEYS, AJ, format!(r#"{{"name":"a","pad":"{}"}}"#, "x".repeat(70_000)).leak().as_bytes(), 413, "payload_too_large"),
        case("oversize verify body", M::POST, "/v1/verify", &[JSON], vec![b' '; 65 * 1024].leak(), 413, "payload_too_large"),
        case("text/plain body", M::POST, KEYS, &[AUTH, ("content-type", "text/plain")], br#"{"name":"a"}"#, 415, "unsupported_media_type"),
        case("no content type", M::POST, KEYS, &[AUTH], br#"{"name":"a"}"#, 415, "unsupported_media_type"),
        case("form content type", M::POST, "/v1/verify", &[("content-type", "application/x-www-form-urlencoded")], b"token=x", 415, "unsupported_media_type"),
        case("verify unknown field", M::POST, "/v1/verify", &[JSON], br#"{"token":"a.b.c","kid":"x"}"#, 400, "invalid_request"),
        case("verify token wrong type", M::POST, "/v1/verify", &[JSON], br#"{"token":1}"#, 400, "invalid_request"),
        case("missing bearer", M::POST, KEYS, &[JSON], br#"{"name":"a"}"#, 401, "unauthorized"),
        case("wrong operator token", M::POST, KEYS, &[("authorization", "Bearer test-operator-token-0123456780"), JSON], br#"{"name":"a"}"#, 401, "unauthorized"),
        case("basic auth", M::GET, KEYS, &[("authorization", "Basic dXNlcjpwYXNz")], b"", 401, "unauthorized"),
        case("two Authorization headers, the first valid", M::GET, KEYS, &[AUTH, ("authorization", "Bearer garbage")], b"", 401, "unauthorized"),
        case("bearer garbage JWT", M::GET, KEYS, &[("authorization", "Bearer a.b.c")], b"", 401, "unauthorized"),
        case("bearer empty", M::DELETE, "/v1/organisations/acme/keys/01ARZ3NDEKTSV4RRFFQ69G5FAV", &[("authorization", "Bearer ")], b"", 401, "unauthorized"),
        case("audit without bearer", M::GET, "/v1/organisations/acme/audit", &[], b"", 401, "unauthorized"),
    ]
}

on_both_backends!(every_bad_request_gets_its_error_and_changes_nothing);
async fn every_bad_request_gets_its_error_and_changes_nothing() {
    let app = spawn_app().await;
    let existing = app.create_key("acme", json!({"name": "keep"})).await;
    let snapshot = || async {
        let jwks = app.get("/.well-known/jwks.json").await;
        let list = app.list_keys("acme").await;
        (jwks.header("etag").unwrap().to_owned(), list.json())
    };
    let before = snapshot().await;
    for c in cases() {
        let r = app
            .request(c.method.clone(), c.path, c.headers, c.body.clone())
            .await;
        assert_eq!(
            r.status.as_u16(),
            c.status,
            "{}: {}",
            c.what,
            String::from_utf8_lossy(&r.body)
        );
        let body = r.json();
        assert_eq!(body["code"], c.code, "{}: {body}", c.what);
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            c.what
        );
        if c.status == 405 {
            assert!(
                r.header("allow").is_some_and(|a| !a.is_empty()),
                "{}: 405 names Allow",
                c.what
            );
        }
        if c.status == 401 {
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|a| a.starts_with("Bearer")),
                "{}",
                c.what
            );
        }
        let health = app.get("/healthz").await;
        assert_eq!(
            health.status.as_u16(),
            200,
            "server still answers after {}",
            c.what
        );
    }
    assert_eq!(snapshot().await, before, "no bad request changed any state");
    assert_eq!(
        app.get(&format!("/v1/keys/{}", existing["id"].as_str().unwrap()))
            .await
            .status
            .as_u16(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_garbage_on_the_socket_does_not_hurt_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let garbage: &[&[u8]] = &[
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{",
        b"GET /\xff\xfe HTTP/1.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    ];
    for g in garbage {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        s.write_all(g).await.unwrap();
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut sink)).await;
        assert_eq!(
            app.get("/healthz").await.status.as_u16(),
            200,
            "after {:?}",
            String::from_utf8_lossy(g)
        );
    }
}
