//! The HTTP layer: every route of the one HTTPS port ([`router`]), the
//! accept loop with TLS and the graceful stop ([`serve`]), the agent
//! WebSocket upgrade ([`agent_ws`]), the OAuth2 token endpoint ([`oauth`]),
//! and the console API ([`console`], [`console_jobs`], [`console_commands`],
//! [`console_events`]) with its error shape ([`api_error`]), and the web
//! console's page and logins ([`console_web`]).
//!
//! It calls into the core (registry, sessions, jobs, delivery) through
//! [`Shared`]; nothing in the core refers back to this module.

mod agent_ws;
mod api_error;
mod console;
mod console_commands;
mod console_events;
mod console_jobs;
mod console_streams;
mod console_web;
mod oauth;
mod read_ahead;
mod serve;

pub(crate) use serve::serve;

use crate::state::Shared;
use api_error::ApiError;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use connectivity_protocol::AGENT_PATH;
use std::sync::Arc;

/// Every route of the port.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(AGENT_PATH, get(agent_ws::upgrade))
        .route(
            oauth::TOKEN_PATH,
            post(oauth::token).layer(DefaultBodyLimit::max(oauth::MAX_BODY_BYTES)),
        )
        .merge(console::router(shared.clone()))
        .merge(console_commands::metrics_router(shared.clone()))
        .merge(console_web::router(shared.clone()))
        .fallback(|| async { ApiError::not_found("no such endpoint; see docs/CONTROL_PLANE.md") })
        .with_state(shared)
}
