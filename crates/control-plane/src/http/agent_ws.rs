//! `GET /agent/v1`: authenticate the agent, then upgrade to a WebSocket and
//! hand it to a [`session`](crate::session).
//!
//! Credentials are checked before the upgrade, so bad credentials are a plain
//! HTTP 401 with a JSON body, which the agent treats as a permanent error.
//! Group membership is checked later, in the hello, because only the hello
//! names the group.

use super::api_error::ApiError;
use crate::auth;
use crate::session;
use crate::state::Shared;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use connectivity_protocol::{AGENT_PATH, MAX_FRAME_BYTES};
use std::net::SocketAddr;

/// Bytes the WebSocket reads from TLS at a time. tungstenite zeroes this much
/// before every read, and TLS hands over at most a record or two (16 KiB
/// each): at its default (128 KiB) the zeroing was 3.6% of the control
/// plane's CPU in the JSONL drain.
const READ_BUFFER_BYTES: usize = 32 * 1024;
use std::sync::Arc;

/// The `WWW-Authenticate` challenge of the agent endpoint.
const CHALLENGE: &str = "Basic realm=\"control-plane\", Bearer";

pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let principal = match shared.auth.agent(&headers, remote.ip()).await {
        Ok(p) => {
            shared.registry.auth_succeeded(&p.to_string());
            p
        }
        Err(err) => return auth_failed(&shared, &headers, remote, &err),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            let message = format!(
                "{AGENT_PATH} takes a WebSocket upgrade: {}",
                rejection.body_text()
            );
            return ApiError::new(rejection.status(), message).into_response();
        }
    };
    if shared.shutdown.is_cancelled() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the control plane is shutting down; retry shortly",
        )
        .into_response();
    }
    // Taken before the response goes out, so shutdown waits for the session.
    let tracked = shared.tasks.token();
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_failed_upgrade(move |err| tracing::info!(%remote, %err, "websocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            session::run(socket, shared, principal, remote).await;
            drop(tracked);
        })
}

/// Count and remember a failed agent login, and answer it.
fn auth_failed(
    shared: &Shared,
    headers: &HeaderMap,
    remote: SocketAddr,
    err: &auth::AuthError,
) -> Response {
    // A throttled attempt is logged at debug only: the limiter lets a few
    // failures per source through to info, so a flood of wrong passwords
    // cannot flood the log.
    if err.retry_after().is_some() {
        tracing::debug!(%remote, %err, "agent authentication throttled");
    } else {
        tracing::info!(%remote, %err, "agent authentication failed");
    }
    // Remembered per principal so the console can say "auth failing".
    let who = match auth::presented(headers, "") {
        Ok(auth::Presented::Basic { user, .. }) => Some(auth::Principal::User(user).to_string()),
        Ok(auth::Presented::Bearer(_)) => Some("bearer token".to_owned()),
        Err(_) => None,
    };
    if let Some(who) = who {
        shared.registry.auth_failed(who, remote, &err.to_string());
    }
    shared.metrics.auth_failed();
    ApiError::from_auth(err, CHALLENGE).into_response()
}
