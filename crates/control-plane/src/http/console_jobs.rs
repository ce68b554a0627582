//! The console's job routes (`/api/v1/jobs...`): create, replace, delete,
//! pause and resume poll jobs, and see their delivery counters and what each
//! agent reports. Definitions are shown with every secret masked; a masked
//! secret sent back in a `PUT` keeps the stored value.

use super::console::ConsoleUser;
use crate::jobs::{JobChangeError, JobView};
use crate::state::Shared;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;

/// Largest job definition accepted (a truststore is the bulk of it; the
/// spec must fit in a 1 MiB control message anyway).
const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/jobs", get(list).post(create))
        .route("/api/v1/jobs/{id}", get(one).put(replace).delete(delete))
        .route("/api/v1/jobs/{id}/pause", post(pause))
        .route("/api/v1/jobs/{id}/resume", post(resume))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

#[derive(Serialize)]
struct JobList {
    jobs: Vec<JobView>,
}

async fn list(State(shared): State<Arc<Shared>>) -> Json<JobList> {
    Json(JobList {
        jobs: shared.jobs.views(),
    })
}

async fn one(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.jobs.view(&id) {
        Some(v) => Json(v).into_response(),
        None => error_response(JobChangeError::NotFound(id)),
    }
}

/// Record a job change in the audit log: the definition's group and
/// paused flag (never its secrets), and the outcome.
fn audit(
    shared: &Shared,
    who: &ConsoleUser,
    action: &str,
    id: &str,
    params: serde_json::Value,
    outcome: &Result<(), String>,
) {
    let (ok, message) = match outcome {
        Ok(()) => (true, "done".to_owned()),
        Err(e) => (false, e.clone()),
    };
    shared
        .audit
        .record(&who.0, action, &format!("job:{id}"), params, ok, &message);
}

fn summary(def: &crate::delivery::JobDefinition) -> serde_json::Value {
    json!({"group": def.group, "topic": def.spec.topic, "paused": def.paused})
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<ConsoleUser>,
    body: Bytes,
) -> Response {
    const ACTION: &str = "POST /api/v1/jobs";
    let def = match parse(&body) {
        Ok(d) => d,
        Err(e) => {
            audit(&shared, &who, ACTION, "", json!({}), &Err(e.to_string()));
            return error_response(e);
        }
    };
    let (id, params) = (def.spec.id.clone(), summary(&def));
    let result = shared.jobs.create(def).await;
    audit(
        &shared,
        &who,
        ACTION,
        &id,
        params,
        &result.as_ref().map(|_| ()).map_err(ToString::to_string),
    );
    match result {
        Ok(view) => {
            let location = format!("/api/v1/jobs/{}", view.id);
            (
                StatusCode::CREATED,
                [(header::LOCATION, location)],
                Json(view),
            )
                .into_response()
        }
        Err(e) => error_response(e),
    }
}

async fn replace(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<ConsoleUser>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    const ACTION: &str = "PUT /api/v1/jobs/{id}";
    let def = match parse(&body) {
        Ok(d) => d,
        Err(e) => {
            audit(&shared, &who, ACTION, &id, json!({}), &Err(e.to_string()));
            return error_response(e);
        }
    };
    let params = summary(&def);
    let result = shared.jobs.replace(&id, def).await;
    audit(
        &shared,
        &who,
        ACTION,
        &id,
        params,
        &result.as_ref().map(|_| ()).map_err(ToString::to_string),
    );
    match result {
        Ok(view) => Json(view).into_response(),
        Err(e) => error_response(e),
    }
}

async fn delete(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<ConsoleUser>,
    Path(id): Path<String>,
) -> Response {
    let result = shared.jobs.delete(&id).await;
    audit(
        &shared,
        &who,
        "DELETE /api/v1/jobs/{id}",
        &id,
        json!({}),
        &result.as_ref().map(|_| ()).map_err(ToString::to_string),
    );
    match result {
        Ok(()) => {
            shared.metrics.forget_job(&id);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => error_response(e),
    }
}

async fn pause(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<ConsoleUser>,
    Path(id): Path<String>,
) -> Response {
    set_paused(&shared, &who, id, true).await
}

async fn resume(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<ConsoleUser>,
    Path(id): Path<String>,
) -> Response {
    set_paused(&shared, &who, id, false).await
}

async fn set_paused(shared: &Shared, who: &ConsoleUser, id: String, paused: bool) -> Response {
    let result = shared.jobs.set_paused(&id, paused).await;
    let action = if paused {
        "POST /api/v1/jobs/{id}/pause"
    } else {
        "POST /api/v1/jobs/{id}/resume"
    };
    audit(
        shared,
        who,
        action,
        &id,
        json!({}),
        &result.as_ref().map(|_| ()).map_err(ToString::to_string),
    );
    match result {
        Ok(view) => Json(view).into_response(),
        Err(e) => error_response(e),
    }
}

fn parse(body: &[u8]) -> Result<crate::delivery::JobDefinition, JobChangeError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        JobChangeError::Invalid(vec![crate::delivery::FieldError::new(
            "body",
            None,
            format!("is not JSON ({e})"),
            "send a job definition as JSON (docs/CONTROL_PLANE.md has examples)",
        )])
    })?;
    crate::job_input::from_json(value)
        .map_err(|errors| JobChangeError::Invalid(errors.into_iter().map(body_field).collect()))
}

/// A problem with the whole document is a problem with the body.
fn body_field(mut e: crate::delivery::FieldError) -> crate::delivery::FieldError {
    if e.field.is_empty() {
        e.field = "body".into();
    }
    e
}

/// `{"error": "...", "fields": [{field, value, problem, fix}, ...]}`; `fields`
/// only when the problem is in the definition.
fn error_response(e: JobChangeError) -> Response {
    let message = e.to_string();
    let (status, fields) = match e {
        JobChangeError::Invalid(fields) => (StatusCode::BAD_REQUEST, Some(fields)),
        JobChangeError::Conflict(field) => (StatusCode::CONFLICT, Some(vec![field])),
        JobChangeError::AlreadyExists(_) => (StatusCode::CONFLICT, None),
        JobChangeError::NotFound(_) => (StatusCode::NOT_FOUND, None),
        JobChangeError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, None),
        JobChangeError::Internal(_) => {
            tracing::error!(error = %message, "job change failed");
            (StatusCode::INTERNAL_SERVER_ERROR, None)
        }
    };
    let body = match fields {
        Some(f) => json!({"error": message, "fields": f}),
        None => json!({"error": message}),
    };
    (status, Json(body)).into_response()
}
