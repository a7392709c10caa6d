//! The key routes: create (and its compatibility form), list, delete, get.

use hyper::header::{self, HeaderValue};
use hyper::StatusCode;
use zeroize::Zeroizing;

use super::bodies::{CreateBody, Creation};
use super::body::Body;
use super::call::{accepts_pem, header_value, Call, Outcome};
use super::reply::{self, ApiError, ErrorCode, Reply, JSON, PEM};
use crate::auth::{Need, Principal};
use crate::keys::{GeneratedKey, KeyId, KeyName, KeySpec, KeyView, OrgId, PublicKeyRecord};
use crate::service::NewKey;
use crate::usage::{KeyUsage, UnusedFor};

/// A key on the organisation's list: the `PublicKey` and its usage.
#[derive(serde::Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    key: KeyView<'a>,
    usage: UsageView,
}

/// `usage` of a listed key (docs/api.md, "Key usage").
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageView {
    last_verified_at: Option<String>,
    verified_last_hour: u64,
    verified_last_day: u64,
}

impl From<KeyUsage> for UsageView {
    fn from(u: KeyUsage) -> UsageView {
        UsageView {
            last_verified_at: u.last_verified_ms.map(crate::keys::rfc3339),
            verified_last_hour: u.last_hour,
            verified_last_day: u.last_day,
        }
    }
}

/// The `ifUnusedFor` query parameter of a revocation, if given; the only
/// parameter a revocation takes.
pub fn if_unused_for(call: &Call<'_>) -> Result<Option<UnusedFor>, ApiError> {
    let query = call.strict_query(&["ifUnusedFor"])?;
    let window = query.first().map(|(_, v)| UnusedFor::parse(v)).transpose();
    window.map_err(|e| ApiError::invalid_request(e.to_string()))
}

/// 409 `in_use` if key `id` verified a token within `window`.
pub async fn refuse_if_used(
    state: &super::ServerState,
    org: &OrgId,
    id: KeyId,
    window: Option<UnusedFor>,
) -> Result<(), ApiError> {
    let Some(window) = window.map(UnusedFor::duration) else {
        return Ok(());
    };
    if state.signet.used_within(org, id, window).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::InUse,
            format!(
                "key {id} verified a token within the last {}; it was left as it is (retry later, or leave out ifUnusedFor)",
                humantime::format_duration(window)
            ),
        ));
    }
    Ok(())
}

/// A private key as PEM: its buffer is zeroized when the body is dropped.
fn pem_reply(status: StatusCode, pem: &str) -> Reply {
    reply::with_type(
        status,
        PEM,
        Body::secret(Zeroizing::new(pem.as_bytes().to_vec())),
    )
}

/// Points at the new key and keeps the private key out of every cache.
fn created(mut reply: Reply, record: &PublicKeyRecord) -> Outcome {
    let h = reply.headers_mut();
    h.insert(
        header::LOCATION,
        header_value(format!("/v1/keys/{}", record.id)),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(reply)
}

/// Creates a key pair, or stores an uploaded public key (docs/api.md,
/// "Key lifecycle").
pub async fn create(call: Call<'_>) -> Outcome {
    let pem = accepts_pem(call.headers());
    let (org, caller) = call.manage().await?;
    call.strict_query(&[])?;
    let state = call.state;
    let body: CreateBody = call.read_json().await?;
    match body.parse()? {
        (Creation::Generate(new), expires_at) => {
            let created = state.signet.create_expiring(org, new, expires_at, &caller);
            let (record, key) = created.await?;
            issued(&record, &key, pem)
        }
        (Creation::Upload(name, upload), expires_at) => {
            let uploaded = state.signet.upload(org, name, upload, expires_at, &caller);
            let record = uploaded.await?;
            created(
                reply::json(StatusCode::CREATED, &KeyView::new(&record)),
                &record,
            )
        }
    }
}

/// 201 with a new key pair: the `SigningKeySet`, or with `pem` the private
/// key PEM alone as an attachment.
pub fn issued(record: &PublicKeyRecord, key: &GeneratedKey, pem: bool) -> Outcome {
    let reply = if pem {
        let mut r = pem_reply(StatusCode::CREATED, &key.pkcs8_pem());
        let disposition = format!("attachment; filename=\"{}.pem\"", record.id);
        r.headers_mut()
            .insert(header::CONTENT_DISPOSITION, header_value(disposition));
        r
    } else {
        let private = key.pkcs8_pem();
        let mut view = KeyView::new(record);
        view.private_key = Some(private.as_str());
        // Reserve up front so the buffer never reallocates, leaving no
        // unzeroized copy of the private key behind.
        let mut buf = Zeroizing::new(Vec::with_capacity(2 * private.len() + 4096));
        serde_json::to_writer(&mut *buf, &view).expect("a key view always serialises");
        reply::with_type(StatusCode::CREATED, JSON, Body::secret(buf))
    };
    created(reply, record)
}

/// The compatibility route: a default RSA key, its private key as PKCS#1 PEM.
pub async fn create_compat(call: Call<'_>) -> Outcome {
    let (org, caller) = call.manage().await?;
    let new = NewKey {
        name: KeyName::parse("Organization key").expect("a valid literal name"),
        spec: KeySpec::default(),
    };
    let (record, key) = call.state.signet.create(org, new, &caller).await?;
    let pem = key
        .pkcs1_pem()
        .expect("the compatibility route makes RSA keys");
    created(pem_reply(StatusCode::OK, &pem), &record)
}

pub async fn list(call: Call<'_>) -> Outcome {
    let org = call.org()?;
    call.authorize(&org, Need::Member).await?;
    let records = call.state.signet.list(&org).await?;
    let usage = call.state.signet.usage_of(&records).await?;
    let keys: Vec<Listed> = records
        .iter()
        .zip(usage)
        .map(|(r, u)| Listed {
            key: KeyView::new(r),
            usage: u.into(),
        })
        .collect();
    Ok(reply::json(
        StatusCode::OK,
        &serde_json::json!({ "keys": keys }),
    ))
}

pub async fn delete(call: Call<'_>) -> Outcome {
    let org = call.org()?;
    let id = call.key_id()?;
    let principal = call.authorize(&org, Need::Manage).await?;
    let window = if_unused_for(&call)?;
    refuse_if_used(call.state, &org, id, window).await?;
    call.state
        .signet
        .delete(org, id, &call.caller(principal.actor()))
        .await?;
    Ok(reply::empty(StatusCode::NO_CONTENT))
}

/// `GET /v1/organisations`: every organisation with keys for the
/// operator, its own for an organisation token.
pub async fn organisations(call: Call<'_>) -> Outcome {
    let state = call.state;
    let principal = call.authenticate().await?;
    let organisations: Vec<serde_json::Value> = match principal {
        Principal::Operator => state
            .signet
            .organisations()
            .await?
            .into_iter()
            .map(|(id, keys)| serde_json::json!({ "id": id, "keys": keys }))
            .collect(),
        Principal::Org { org, .. } => {
            let keys = state.signet.list(&org).await?.len();
            vec![serde_json::json!({ "id": org, "keys": keys })]
        }
    };
    Ok(reply::json(
        StatusCode::OK,
        &serde_json::json!({ "organisations": organisations }),
    ))
}

pub async fn get(call: Call<'_>) -> Outcome {
    let record = call.state.signet.get(call.key_id()?).await?;
    if accepts_pem(call.headers()) {
        return Ok(reply::with_type(
            StatusCode::OK,
            PEM,
            record.public_key_pem().into(),
        ));
    }
    Ok(reply::json(StatusCode::OK, &KeyView::new(&record)))
}

#[cfg(feature = "test-hooks")]
pub fn fuzz_body(body: &[u8]) {
    super::bodies::fuzz_body(body);
}
