//! The console's stream routes (`/api/v1/streams...`): stream connections,
//! publishing into them and reading from them through an agent of their
//! group (docs/CONTROL_PLANE.md, "Streams"). Secrets are shown masked.
//!
//! Statuses a client can act on: 4xx for what the caller must change (the
//! body names the record and the fix), 503 with `Retry-After` when no agent
//! can take the request now, 502 when the stream endpoint failed.

use super::api_error::ApiError;
use crate::state::Shared;
use crate::streams::hub::RequestError;
use crate::streams::read::ReadQuery;
use crate::streams::{ConnectionDef, StreamError};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use connectivity_protocol::job::ErrorClass;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A publish body: up to the frame limit of records, as JSON (a third
/// larger for base64 values) and a little more.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/streams", get(list))
        .route("/api/v1/streams/{name}", get(one).put(put).delete(delete))
        .route("/api/v1/streams/{name}/publish", post(publish))
        .route("/api/v1/streams/{name}/records", get(read))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

async fn list(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let streams: Vec<_> = shared
        .streams
        .connection_names()
        .into_iter()
        .map(|(name, group, topic)| json!({"name": name, "group": group, "topic": topic}))
        .collect();
    Json(json!({ "streams": streams }))
}

async fn one(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Json<ConnectionDef>, ApiError> {
    shared
        .streams
        .connection_redacted(&name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(StreamError::NoConnection(name).to_string()))
}

async fn put(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let def: ConnectionDef = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the body is not a stream connection: {e}; give group, bootstrap_servers, topic and security as for a poll job"
            ),
        )
    })?;
    let group_exists = shared.config.group(&def.group).is_some();
    shared
        .streams
        .put_connection(&name, def, group_exists)
        .await
        .map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    match shared
        .streams
        .delete_connection(&name)
        .await
        .map_err(api_error)?
    {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::not_found(
            StreamError::NoConnection(name).to_string(),
        )),
    }
}

async fn publish(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "no Idempotency-Key header; give one (a new UUID per distinct request, the same on its retries)",
        )
        .into_response();
    };
    let answer = match shared
        .streams
        .publish(&shared.commands, &name, key, &body)
        .await
    {
        Ok(a) => a,
        Err(e) => return api_error(e).into_response(),
    };
    let status = answer.first_error.map_or(StatusCode::OK, class_status);
    let mut resp = (status, Json(&answer)).into_response();
    if let Some(secs) = answer.first_error.and_then(retry_after) {
        resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
    }
    resp
}

async fn read(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    let q = match ReadQuery::from_params(&params) {
        Ok(q) => q,
        Err(m) => return ApiError::new(StatusCode::BAD_REQUEST, m).into_response(),
    };
    match shared.streams.read(&shared.commands, &name, q).await {
        Err(e) => api_error(e).into_response(),
        Ok(a) => {
            // The records are the record format's JSON text, kept as it is
            // (numbers keep every digit).
            let body = format!(
                "{{\"topic\":{},\"count\":{},\"truncated\":{},\"partitions\":{},\"records\":{}}}",
                serde_json::Value::from(a.topic),
                a.count,
                a.truncated,
                serde_json::to_string(&a.partitions).unwrap_or_else(|_| "[]".into()),
                a.records_json
            );
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

/// The status of a failure the stream (or the agent) reported.
fn class_status(class: ErrorClass) -> StatusCode {
    match class {
        ErrorClass::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorClass::TopicMissing => StatusCode::NOT_FOUND,
        ErrorClass::Authorization | ErrorClass::NotAllowed => StatusCode::FORBIDDEN,
        ErrorClass::OutOfRange => StatusCode::RANGE_NOT_SATISFIABLE,
        // The connection's settings: the caller must change them.
        ErrorClass::Config | ErrorClass::Sasl | ErrorClass::Tls => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorClass::Busy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorClass::Dns | ErrorClass::Tcp | ErrorClass::Sink | ErrorClass::Other => {
            StatusCode::BAD_GATEWAY
        }
    }
}

fn retry_after(class: ErrorClass) -> Option<u64> {
    match class {
        ErrorClass::Busy => Some(1),
        ErrorClass::Dns | ErrorClass::Tcp | ErrorClass::Other => Some(5),
        _ => None,
    }
}

fn api_error(e: StreamError) -> ApiError {
    let message = e.to_string();
    let (status, retry) = match &e {
        StreamError::BadInput(_) => (StatusCode::UNPROCESSABLE_ENTITY, None),
        StreamError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, None),
        StreamError::NoConnection(_) => (StatusCode::NOT_FOUND, None),
        StreamError::KeyInProgress(_) | StreamError::KeyReused(_) => (StatusCode::CONFLICT, None),
        StreamError::Agent(RequestError::NoAgent(_) | RequestError::Busy(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, Some(1))
        }
        StreamError::Agent(RequestError::TooOld { .. }) => (StatusCode::NOT_IMPLEMENTED, None),
        StreamError::Agent(RequestError::AgentLost) => (StatusCode::SERVICE_UNAVAILABLE, Some(1)),
        StreamError::Agent(RequestError::Timeout(_)) => (StatusCode::GATEWAY_TIMEOUT, None),
        StreamError::Stream(je) => (class_status(je.class), retry_after(je.class)),
        StreamError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, None),
    };
    ApiError {
        retry_after: retry,
        ..ApiError::new(status, message)
    }
}
