//! The `Authorization` header the agent presents to the control plane:
//! HTTP Basic from `oic_USER`/`oic_PASSWORD`, or a bearer token obtained with
//! OAuth2 client credentials from `oic_IDCS_URL`.
//!
//! Tokens are only needed when a session opens, so instead of a timer the
//! cache fetches a fresh one whenever the cached token would expire within a
//! margin. A token endpoint that refuses the client (`invalid_client`, HTTP
//! 401) is a permanent error; anything else is retried like any other
//! connection failure.

use crate::config::{AgentConfig, Credentials, ProxyConfig};
use base64::Engine;
use connectivity_protocol::secret::Secret;
use std::time::{Duration, Instant};
use url::Url;

/// Why no credentials could be produced.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    pub message: String,
    pub permanent: bool,
}

struct CachedToken {
    value: Secret,
    expires_at: Instant,
}

/// Produces the `Authorization` header value for each connection.
pub struct Authenticator {
    credentials: Credentials,
    http: Option<reqwest::Client>,
    token: Option<CachedToken>,
}

/// Refresh a token when less than this share of its lifetime is left.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

impl Authenticator {
    pub fn new(config: &AgentConfig) -> Result<Self, AuthError> {
        let http = match &config.credentials {
            Credentials::Basic { .. } => None,
            Credentials::OAuth { token_url, .. } => Some(token_client(config, token_url)?),
        };
        Ok(Authenticator {
            credentials: config.credentials.clone(),
            http,
            token: None,
        })
    }

    /// The header value, fetching or refreshing a token when needed.
    pub async fn authorization(&mut self) -> Result<String, AuthError> {
        match &self.credentials {
            Credentials::Basic { user, password } => {
                let raw = format!("{user}:{}", password.expose());
                Ok(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
            }
            Credentials::OAuth {
                token_url,
                client_id,
                client_secret,
                scope,
            } => {
                let fresh = self
                    .token
                    .as_ref()
                    .is_some_and(|t| t.expires_at > Instant::now() + REFRESH_MARGIN);
                if !fresh {
                    let http = self.http.as_ref().ok_or_else(|| AuthError {
                        message: "no HTTP client for the token endpoint".into(),
                        permanent: true,
                    })?;
                    let token =
                        fetch_token(http, token_url, client_id, client_secret, scope.as_deref())
                            .await?;
                    self.token = Some(token);
                }
                let token = self
                    .token
                    .as_ref()
                    .map(|t| t.value.expose())
                    .unwrap_or_default();
                Ok(format!("Bearer {token}"))
            }
        }
    }

    /// Forget the cached token (after the control plane refused it).
    pub fn invalidate(&mut self) {
        self.token = None;
    }

    /// Whether these are OAuth credentials (a refused token may be retried once).
    pub fn is_oauth(&self) -> bool {
        matches!(self.credentials, Credentials::OAuth { .. })
    }
}

fn token_client(config: &AgentConfig, token_url: &Url) -> Result<reqwest::Client, AuthError> {
    let setup = |e: String| AuthError {
        message: format!("cannot set up the OAuth token client: {e}"),
        permanent: true,
    };
    let tls = connectivity_common::tls::client_config(config.ca_file.as_deref())
        .map_err(|e| setup(e.to_string()))?;
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .no_proxy();
    if let Some(proxy) = config
        .proxy
        .as_ref()
        .filter(|p| p.applies_to(token_url.host_str().unwrap_or_default()))
    {
        builder = builder.proxy(reqwest_proxy(proxy).map_err(|e| setup(e.to_string()))?);
    }
    builder.build().map_err(|e| setup(e.to_string()))
}

fn reqwest_proxy(p: &ProxyConfig) -> reqwest::Result<reqwest::Proxy> {
    let scheme = match p.protocol {
        crate::config::ProxyProtocol::Http => "http",
        crate::config::ProxyProtocol::Https => "https",
    };
    let mut proxy = reqwest::Proxy::all(format!("{scheme}://{}", p.address()))?;
    if let Some((user, password)) = &p.auth {
        proxy = proxy.basic_auth(user, password.expose());
    }
    Ok(proxy)
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: Secret,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(serde::Deserialize)]
struct TokenErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

async fn fetch_token(
    http: &reqwest::Client,
    url: &Url,
    client_id: &str,
    client_secret: &Secret,
    scope: Option<&str>,
) -> Result<CachedToken, AuthError> {
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    let started = Instant::now();
    let resp = http
        .post(url.clone())
        .basic_auth(client_id, Some(client_secret.expose()))
        .form(&form)
        .send()
        .await
        .map_err(|e| AuthError {
            message: format!("token endpoint {url} unreachable: {}", error_chain(&e)),
            permanent: false,
        })?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| AuthError {
        message: format!("token endpoint {url}: reading the answer failed: {e}"),
        permanent: false,
    })?;
    if status.is_success() {
        let token: TokenResponse = serde_json::from_slice(&body).map_err(|e| AuthError {
            message: format!("token endpoint {url} answered without a usable access_token: {e}"),
            permanent: false,
        })?;
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(300));
        return Ok(CachedToken {
            value: token.access_token,
            expires_at: started + lifetime,
        });
    }
    let err: Option<TokenErrorResponse> = serde_json::from_slice(&body).ok();
    let what = err
        .as_ref()
        .map(|e| match &e.error_description {
            Some(d) => format!("{} ({d})", e.error),
            None => e.error.clone(),
        })
        .unwrap_or_else(|| format!("HTTP {status}"));
    let refused = matches!(
        err.as_ref().map(|e| e.error.as_str()),
        Some("invalid_client" | "unauthorized_client" | "invalid_scope")
    ) || status.as_u16() == 401;
    Err(AuthError {
        message: if refused {
            format!(
                "token endpoint {url} refused the client: {what}; check oic_CLIENT_ID, oic_CLIENT_SECRET and oic_SCOPE"
            )
        } else {
            format!("token endpoint {url} failed: {what}")
        },
        permanent: refused,
    })
}

/// An error with its causes, for one log line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
