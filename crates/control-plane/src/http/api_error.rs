//! The JSON error body every non-OAuth endpoint answers with:
//! `{"error": "<what went wrong and what to do>"}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An HTTP error with a message meant for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// `WWW-Authenticate` challenge for 401s.
    pub challenge: Option<&'static str>,
    /// `Retry-After` in seconds (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            challenge: None,
            retry_after: None,
        }
    }

    pub fn unauthorized(message: impl Into<String>, challenge: &'static str) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            challenge: Some(challenge),
            retry_after: None,
        }
    }

    /// The answer to a failed login: 401 with `challenge`, or 429 with
    /// `Retry-After` when the login was throttled.
    pub fn from_auth(err: &crate::auth::AuthError, challenge: &'static str) -> Self {
        match err.retry_after() {
            Some(secs) => ApiError {
                retry_after: Some(secs),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, err.to_string())
            },
            None => Self::unauthorized(err.to_string(), challenge),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(c) = self.challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
