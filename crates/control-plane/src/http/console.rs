//! The console API (`/api/v1/...`): JSON views of the control plane's own
//! status (version, certificate expiry), groups and agents for
//! operators and their tools, and the job routes of
//! [`console_jobs`](crate::console_jobs). Every route needs `Authorization:
//! Bearer <console token>`, or the web console's session cookie (with its
//! CSRF token on changes, [`console_web`](super::console_web)).
//!
//! Responses are objects, never bare arrays (`{"agents": [...]}`), so fields
//! such as paging, jobs or metrics can be added without breaking clients.

use super::api_error::ApiError;
use crate::registry::{AgentRecord, GroupCounts};
use crate::state::Shared;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;

const CHALLENGE: &str = "Bearer realm=\"console\"";

/// The console routes, behind the console-token check.
pub(crate) fn router(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/groups", get(groups))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/agents/{id}", get(agent))
        .merge(super::console_jobs::routes())
        .merge(super::console_streams::routes())
        .merge(super::console_commands::routes())
        .merge(super::console_events::routes())
        .route("/api/v1/{*rest}", any(unknown))
        .route_layer(middleware::from_fn_with_state(
            shared,
            require_console_token,
        ))
        .layer(middleware::from_fn(super::console_web::security_headers))
}

/// The name of the console token a request was authorised with (the "who"
/// of the audit log).
#[derive(Debug, Clone)]
pub(crate) struct ConsoleUser(pub String);

pub(crate) async fn require_console_token(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    // The web console's session cookie, when there is no bearer token.
    if let Some(outcome) = super::console_web::session_user(&shared, &req) {
        return match outcome {
            Ok(user) => {
                req.extensions_mut().insert(user);
                next.run(req).await
            }
            Err(e) => e.into_response(),
        };
    }
    match shared.auth.console(req.headers(), remote.ip()).await {
        Ok(token) => {
            tracing::debug!(%token, method = %req.method(), path = %req.uri().path(), "console request");
            req.extensions_mut().insert(ConsoleUser(token));
            next.run(req).await
        }
        Err(err) => {
            tracing::info!(%remote, %err, path = %req.uri().path(), "console request refused");
            ApiError::from_auth(&err, CHALLENGE).into_response()
        }
    }
}

/// `GET /api/v1/status`: the control plane itself.
#[derive(Serialize)]
struct Status {
    version: &'static str,
    /// The server certificate and how long it has left.
    tls: crate::certificate::CertificateView,
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<Status> {
    let tls = &shared.config.tls;
    Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        tls: crate::certificate::CertificateView::new(
            &tls.cert_file,
            &tls.certificate,
            connectivity_common::tls::cert::now_secs(),
        ),
    })
}

/// One group in `GET /api/v1/groups`.
#[derive(Debug, Serialize)]
struct GroupView {
    id: String,
    agents: GroupCounts,
}

#[derive(Serialize)]
struct GroupList {
    groups: Vec<GroupView>,
}

async fn groups(State(shared): State<Arc<Shared>>) -> Json<GroupList> {
    let groups = shared
        .config
        .groups
        .iter()
        .map(|g| GroupView {
            id: g.id.clone(),
            agents: shared.registry.counts(&g.id),
        })
        .collect();
    Json(GroupList { groups })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsQuery {
    group: Option<String>,
}

#[derive(Serialize)]
struct AgentList {
    agents: Vec<AgentRecord>,
    /// Credentials whose logins are being refused (any group).
    auth_failures: Vec<crate::status::AuthFailure>,
}

async fn agents(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<AgentsQuery>, QueryRejection>,
) -> Result<Json<AgentList>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            e.status(),
            format!("{}; the only parameter is ?group=<id>", e.body_text()),
        )
    })?;
    if let Some(g) = &q.group
        && shared.config.group(g).is_none()
    {
        return Err(ApiError::not_found(format!(
            "agent group {g:?} does not exist"
        )));
    }
    Ok(Json(AgentList {
        agents: shared.registry.list(q.group.as_deref()),
        auth_failures: shared.registry.auth_failures(),
    }))
}

async fn agent(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<AgentRecord>, ApiError> {
    shared.registry.get(&id).map(Json).ok_or_else(|| {
        ApiError::not_found(format!("agent {id:?} is not known to this control plane"))
    })
}

async fn unknown(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no console route {} {}; see docs/CONTROL_PLANE.md",
        req.method(),
        req.uri().path()
    ))
}
