//! OAuth2 token endpoint (`POST /oauth2/v1/token`, client credentials grant,
//! RFC 6749 section 4.4). The tokens it issues are kept by
//! [`crate::tokens::TokenStore`]; when that store is full of live tokens,
//! requests are refused (503) rather than evicting a token an agent relies on.

use crate::auth::{self, AuthError};
use crate::config::OAuthClient;
use crate::state::Shared;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use connectivity_protocol::secret::Secret;
use serde::Serialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Path of the token endpoint.
pub const TOKEN_PATH: &str = "/oauth2/v1/token";
/// Largest request body the endpoint reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

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
    let mut form = read_form(headers, body)?;
    check_grant_type(&form)?;
    let (client_id, secret, by_basic) = client_credentials(headers, &mut form)?;
    let client = authenticate(shared, &client_id, secret, by_basic, source).await?;
    let scope = granted_scope(client, form.get("scope"))?;
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

/// The form-urlencoded body, each parameter at most once (RFC 6749 section 3.2).
fn read_form(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
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
    Ok(form)
}

fn check_grant_type(form: &HashMap<String, String>) -> Result<(), OAuthError> {
    match form.get("grant_type").map(String::as_str) {
        None => Err(OAuthError::invalid_request(
            "missing grant_type; send grant_type=client_credentials",
        )),
        Some("client_credentials") => Ok(()),
        Some(other) => Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!(
                "grant type {:?} is not supported; use client_credentials",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}

/// The client, if its secret is right; a throttled client is told when to
/// retry, and one that tried HTTP Basic is asked for it again.
async fn authenticate<'s>(
    shared: &'s Shared,
    client_id: &str,
    secret: Secret,
    by_basic: bool,
    source: IpAddr,
) -> Result<&'s OAuthClient, OAuthError> {
    if let Err(e) = shared.auth.client(client_id, secret, source).await {
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
    shared.config.oauth_client(client_id).ok_or_else(|| {
        OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            AuthError::BadClient.to_string(),
        )
    })
}

/// The scopes asked for if the client may have them all; all of its scopes
/// when it asks for none in particular.
fn granted_scope(client: &OAuthClient, requested: Option<&String>) -> Result<String, OAuthError> {
    let Some(requested) = requested else {
        return Ok(client.scopes.join(" "));
    };
    let asked: Vec<&str> = requested.split(' ').filter(|s| !s.is_empty()).collect();
    if let Some(s) = asked
        .iter()
        .find(|s| !client.scopes.iter().any(|allowed| allowed == *s))
    {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            format!(
                "scope {:?} is not allowed for client {:?}",
                s.chars().take(128).collect::<String>(),
                client.client_id
            ),
        ));
    }
    Ok(asked.join(" "))
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

    #[test]
    fn basic_parts_are_form_decoded() {
        assert_eq!(form_decode("my%20client+id"), "my client id");
    }
}
