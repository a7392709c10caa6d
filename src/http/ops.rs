//! The operations routes: liveness, readiness, metrics and the OpenAPI
//! document.

use hyper::StatusCode;

use super::body::Body;
use super::call::{Call, Outcome};
use super::reply::{self, ApiError};

pub async fn healthz(_: Call<'_>) -> Outcome {
    Ok(reply::json(
        StatusCode::OK,
        &serde_json::json!({"status": "ok"}),
    ))
}

pub async fn readyz(call: Call<'_>) -> Outcome {
    if call.state.signet.is_ready().await {
        Ok(reply::json(
            StatusCode::OK,
            &serde_json::json!({"status": "ready"}),
        ))
    } else {
        Err(ApiError::unavailable(
            "not ready: the storage is not usable, or this instance cannot vouch that it has seen every key change",
        ))
    }
}

pub async fn metrics(call: Call<'_>) -> Outcome {
    call.state.signet.observe();
    Ok(reply::with_type(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        call.state.signet.metrics.render().into(),
    ))
}

pub async fn openapi(_: Call<'_>) -> Outcome {
    Ok(reply::with_type(
        StatusCode::OK,
        "application/yaml",
        Body::from(&include_bytes!("../../openapi.yaml")[..]),
    ))
}
