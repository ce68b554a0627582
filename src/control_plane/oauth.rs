//! OAuth2 token endpoint (`POST /oauth2/v1/token`, client credentials grant,
//! RFC 6749 section 4.4) and the store of the tokens it issues.
//!
//! A token is 32 random bytes, handed out once and kept only as its SHA-256
//! with the client it belongs to and its expiry. The store is bounded: expired
//! tokens are swept when it fills, and when it is full of live tokens new
//! requests are refused (503) rather than evicting a token an agent relies on.

use super::auth::{self, AuthError};
use super::server::Shared;
use crate::secret::Secret;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Serialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Path of the token endpoint.
pub const TOKEN_PATH: &str = "/oauth2/v1/token";
/// Live tokens kept at most.
pub const MAX_TOKENS: usize = 100_000;
/// Largest request body the endpoint reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

struct Issued {
    client_id: String,
    expires_at: Instant,
}

/// Why no token could be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the token store holds {0} live tokens, its limit; try again later")]
    Full(usize),
    #[error("the system random number generator failed")]
    Random,
}

/// Issued bearer tokens, by SHA-256.
pub struct TokenStore {
    ttl: Duration,
    capacity: usize,
    tokens: Mutex<HashMap<[u8; 32], Issued>>,
}

impl TokenStore {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        TokenStore {
            ttl,
            capacity,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issue a new token for `client_id`.
    pub fn issue(&self, client_id: &str) -> Result<Secret, IssueError> {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| IssueError::Random)?;
        let token = Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
        let now = Instant::now();
        let mut tokens = self.lock();
        if tokens.len() >= self.capacity {
            tokens.retain(|_, t| t.expires_at > now);
            if tokens.len() >= self.capacity {
                return Err(IssueError::Full(tokens.len()));
            }
        }
        tokens.insert(
            auth::sha256(token.expose().as_bytes()),
            Issued {
                client_id: client_id.to_owned(),
                expires_at: now + self.ttl,
            },
        );
        Ok(token)
    }

    /// The client a live token belongs to. Expired tokens are dropped here.
    pub fn lookup(&self, token: &str) -> Option<String> {
        let key = auth::sha256(token.as_bytes());
        let mut tokens = self.lock();
        match tokens.get(&key) {
            Some(t) if t.expires_at > Instant::now() => Some(t.client_id.clone()),
            Some(_) => {
                tokens.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Tokens held, live or not yet swept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Issued>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    scope: String,
}

/// An RFC 6749 section 5.2 error response.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
    /// Ask for HTTP Basic (when the client tried it, per the RFC).
    challenge: bool,
    /// `Retry-After` in seconds, for a throttled client (429).
    retry_after: Option<u64>,
}

impl OAuthError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status,
            code,
            description: description.into(),
            challenge: false,
            retry_after: None,
        }
    }
    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "error_description": self.description });
        let mut resp = (self.status, axum::Json(body)).into_response();
        no_store(resp.headers_mut());
        if self.challenge {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"control-plane\""),
            );
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// `POST /oauth2/v1/token`.
pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match issue(&shared, &headers, &body, remote.ip()).await {
        Ok(r) => {
            let mut resp = axum::Json(r).into_response();
            no_store(resp.headers_mut());
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn issue(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    source: IpAddr,
) -> Result<TokenResponse, OAuthError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let mut form: HashMap<String, String> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if form.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(OAuthError::invalid_request(format!(
                "parameter {k:?} is given more than once"
            )));
        }
    }
    match form.get("grant_type").map(String::as_str) {
        None => {
            return Err(OAuthError::invalid_request(
                "missing grant_type; send grant_type=client_credentials",
            ));
        }
        Some("client_credentials") => {}
        Some(other) => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!(
                    "grant type {:?} is not supported; use client_credentials",
                    other.chars().take(64).collect::<String>()
                ),
            ));
        }
    }

    let (client_id, secret, by_basic) = client_credentials(headers, &mut form)?;
    if let Err(e) = shared.auth.client(&client_id, secret, source).await {
        tracing::info!(%source, client_id = %client_id.chars().take(128).collect::<String>(), %e, "token request with bad client credentials");
        if let Some(secs) = e.retry_after() {
            let mut err = OAuthError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_client",
                e.to_string(),
            );
            err.retry_after = Some(secs);
            return Err(err);
        }
        let mut err = OAuthError::new(StatusCode::UNAUTHORIZED, "invalid_client", e.to_string());
        err.challenge = by_basic;
        return Err(err);
    }
    let Some(client) = shared.config.oauth_client(&client_id) else {
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            AuthError::BadClient.to_string(),
        ));
    };

    let scope = match form.get("scope") {
        None => client.scopes.join(" "),
        Some(requested) => {
            for s in requested.split(' ').filter(|s| !s.is_empty()) {
                if !client.scopes.iter().any(|allowed| allowed == s) {
                    return Err(OAuthError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_scope",
                        format!(
                            "scope {:?} is not allowed for client {client_id:?}",
                            s.chars().take(128).collect::<String>()
                        ),
                    ));
                }
            }
            requested
                .split(' ')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        }
    };

    let token = shared.tokens.issue(&client_id).map_err(|e| {
        tracing::warn!(%e, "cannot issue token");
        OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            e.to_string(),
        )
    })?;
    tracing::info!(client_id = %client_id, ttl_secs = shared.tokens.ttl().as_secs(), "issued access token");
    Ok(TokenResponse {
        access_token: token.expose().to_owned(),
        token_type: "Bearer",
        expires_in: shared.tokens.ttl().as_secs(),
        scope,
    })
}

/// Client id and secret from HTTP Basic (RFC 6749 section 2.3.1: each part
/// form-urlencoded first) or from the form, never both.
fn client_credentials(
    headers: &HeaderMap,
    form: &mut HashMap<String, String>,
) -> Result<(String, Secret, bool), OAuthError> {
    let in_form = form.contains_key("client_secret");
    let bad_client = |msg: String, challenge: bool| OAuthError {
        challenge,
        ..OAuthError::new(StatusCode::UNAUTHORIZED, "invalid_client", msg)
    };
    if headers.contains_key(header::AUTHORIZATION) {
        if in_form {
            return Err(OAuthError::invalid_request(
                "send the client credentials either by HTTP Basic or in the form, not both",
            ));
        }
        let presented = auth::presented(headers, "HTTP Basic client credentials")
            .map_err(|e| bad_client(e.to_string(), true))?;
        let auth::Presented::Basic { user, password } = presented else {
            return Err(bad_client(
                "the token endpoint takes client credentials by HTTP Basic, not a bearer token"
                    .into(),
                true,
            ));
        };
        let client_id = form_decode(&user);
        let secret = Secret::new(form_decode(password.expose()));
        return Ok((client_id, secret, true));
    }
    let client_id = form.remove("client_id");
    let secret = form.remove("client_secret").map(Secret::new);
    match (client_id, secret) {
        (Some(id), Some(secret)) => Ok((id, secret, false)),
        _ => Err(bad_client("missing client credentials; send client_id and client_secret by HTTP Basic or as form fields".into(), false)),
    }
}

fn form_decode(s: &str) -> String {
    // `a=` + s parses s with the form-urlencoded rules (`+` is a space, `%XX`).
    url::form_urlencoded::parse(format!("a={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokens_expire_after_their_ttl() {
        let store = TokenStore::new(Duration::from_secs(60), 10);
        let t = store.issue("c1").unwrap();
        assert_eq!(store.lookup(t.expose()).as_deref(), Some("c1"));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(store.lookup(t.expose()).as_deref(), Some("c1"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(store.lookup(t.expose()), None);
        assert!(store.is_empty(), "expired token was dropped on lookup");
        assert_eq!(store.lookup("never-issued"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn full_store_sweeps_expired_tokens_and_refuses_when_all_are_live() {
        let store = TokenStore::new(Duration::from_secs(10), 2);
        store.issue("a").unwrap();
        store.issue("b").unwrap();
        let err = store.issue("c").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the token store holds 2 live tokens, its limit; try again later"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        let t = store.issue("c").unwrap();
        assert_eq!(store.len(), 1, "expired tokens swept");
        assert_eq!(store.lookup(t.expose()).as_deref(), Some("c"));
    }

    #[test]
    fn tokens_are_long_random_and_stored_hashed() {
        let store = TokenStore::new(Duration::from_secs(10), 10);
        let (a, b) = (store.issue("x").unwrap(), store.issue("x").unwrap());
        assert_eq!(a.expose().len(), 43);
        assert_ne!(a.expose(), b.expose());
        let keys: Vec<_> = store.lock().keys().copied().collect();
        assert!(keys.contains(&auth::sha256(a.expose().as_bytes())));
    }

    #[test]
    fn basic_parts_are_form_decoded() {
        assert_eq!(form_decode("my%20client+id"), "my client id");
    }
}
