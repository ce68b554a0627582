//! Who is calling: agent credentials (HTTP Basic, or a bearer token from the
//! token endpoint), OAuth client secrets and console tokens, checked against
//! the argon2 hashes in the config.
//!
//! Argon2 is slow on purpose, so checks run on the blocking pool behind a
//! small semaphore: a flood of bad passwords queues up instead of eating every
//! core. Console tokens have a permit of their own, so operators are not
//! queued behind a storm of agent logins (every agent reconnecting at once
//! after a restart). Console tokens are checked on every API call, so a verified token is
//! remembered by its SHA-256 (tokens are long random strings, for which a fast
//! hash is enough) in a small bounded cache. Past a number of failures per
//! source address or per name, logins are refused with
//! [`AuthError::Throttled`] before any hashing ([`super::login_limit`]).

use super::config::ControlPlaneConfig;
use super::hashes::sha256;
use super::login_limit::LoginLimiter;
use super::tokens::TokenStore;
use axum::http::{HeaderMap, header};
use base64::Engine;
use connectivity_protocol::secret::Secret;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;

pub use super::hashes::{PasswordHash, hash_password};

/// Argon2 checks of agent and OAuth client credentials allowed at once (the
/// machine has few cores).
const MAX_CONCURRENT_VERIFICATIONS: usize = 2;
/// Argon2 checks of console tokens allowed at once, besides those.
const MAX_CONCURRENT_CONSOLE_VERIFICATIONS: usize = 1;
/// Console tokens remembered after a successful check.
const CONSOLE_CACHE_CAPACITY: usize = 256;
/// Who authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A `[[users]]` entry, by HTTP Basic.
    User(String),
    /// An `[[oauth_clients]]` entry, by a bearer token it obtained.
    Client(String),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::User(n) => write!(f, "user {n:?}"),
            Principal::Client(c) => write!(f, "oauth client {c:?}"),
        }
    }
}

impl Principal {
    /// The agent groups these credentials may join.
    pub fn groups<'c>(&self, config: &'c ControlPlaneConfig) -> &'c [String] {
        match self {
            Principal::User(n) => config.user(n).map(|u| u.groups.as_slice()).unwrap_or(&[]),
            Principal::Client(c) => config
                .oauth_client(c)
                .map(|c| c.groups.as_slice())
                .unwrap_or(&[]),
        }
    }
}

/// Why a request was not authenticated. Every variant is an HTTP 401 but
/// [`AuthError::Throttled`] (429); the message is safe to show (it never
/// says which part was wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header; send {0}")]
    Missing(&'static str),
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    #[error("unsupported authorization scheme {0:?}; send {1}")]
    UnsupportedScheme(String, &'static str),
    #[error("invalid user name or password")]
    BadPassword,
    #[error("invalid or expired bearer token; request a new one from the token endpoint")]
    BadToken,
    #[error("invalid console token")]
    BadConsoleToken,
    #[error("invalid client id or secret")]
    BadClient,
    /// Too many failures from this source or for this name: HTTP 429 with
    /// `Retry-After` (seconds).
    #[error("too many failed logins from this address or for this name; try again in {0} s")]
    Throttled(u64),
}

impl AuthError {
    /// Seconds to send in `Retry-After`, for [`AuthError::Throttled`].
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            AuthError::Throttled(secs) => Some(*secs),
            _ => None,
        }
    }
}

/// The credentials in an `Authorization` header.
#[derive(Debug)]
pub enum Presented {
    Basic { user: String, password: Secret },
    Bearer(Secret),
}

/// Read the `Authorization` header. `expected` names what to send, for messages.
pub fn presented(headers: &HeaderMap, expected: &'static str) -> Result<Presented, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing(expected))?;
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("not visible ASCII"))?;
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(AuthError::Malformed("empty bearer token"));
        }
        return Ok(Presented::Bearer(Secret::new(rest)));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let (user, password) = decode_basic(rest)?;
        return Ok(Presented::Basic { user, password });
    }
    Err(AuthError::UnsupportedScheme(
        scheme.chars().take(32).collect(),
        expected,
    ))
}

/// Decode the payload of a Basic header into user and password.
pub fn decode_basic(b64: &str) -> Result<(String, Secret), AuthError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| AuthError::Malformed("Basic credentials are not valid base64"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| AuthError::Malformed("Basic credentials are not UTF-8"))?;
    let secret = Secret::new(text);
    let (user, password) = secret.expose().split_once(':').ok_or(AuthError::Malformed(
        "Basic credentials have no ':' between user and password",
    ))?;
    Ok((user.to_owned(), Secret::new(password)))
}

/// Checks credentials against the config and the issued tokens.
pub struct Authenticator {
    config: Arc<ControlPlaneConfig>,
    tokens: Arc<TokenStore>,
    permits: Semaphore,
    console_permits: Semaphore,
    console_cache: Mutex<HashMap<[u8; 32], String>>,
    limiter: LoginLimiter,
}

impl Authenticator {
    pub fn new(config: Arc<ControlPlaneConfig>, tokens: Arc<TokenStore>) -> Self {
        Authenticator {
            config,
            tokens,
            permits: Semaphore::new(MAX_CONCURRENT_VERIFICATIONS),
            console_permits: Semaphore::new(MAX_CONCURRENT_CONSOLE_VERIFICATIONS),
            console_cache: Mutex::new(HashMap::new()),
            limiter: LoginLimiter::default(),
        }
    }

    /// Refuse at once when `source` or `name` failed too often lately.
    fn throttle(&self, source: IpAddr, name: Option<&str>) -> Result<(), AuthError> {
        self.limiter
            .check(source, name, Instant::now())
            .map_err(|wait| AuthError::Throttled(wait.as_secs().max(1)))
    }

    /// Count a failure, then return `err`.
    fn failed(&self, source: IpAddr, name: Option<&str>, err: AuthError) -> AuthError {
        self.limiter.failed(source, name, Instant::now());
        err
    }

    /// Authenticate an agent opening a WebSocket from `source`.
    pub async fn agent(&self, headers: &HeaderMap, source: IpAddr) -> Result<Principal, AuthError> {
        const EXPECTED: &str = "HTTP Basic credentials or a bearer token from /oauth2/v1/token";
        match presented(headers, EXPECTED)? {
            Presented::Basic { user, password } => {
                let known = self.config.user(&user);
                let name = known.map(|u| u.name.as_str());
                self.throttle(source, name)?;
                if self
                    .verify(
                        &self.permits,
                        known.map(|u| u.password_hash.clone()),
                        password,
                    )
                    .await
                {
                    Ok(Principal::User(user))
                } else {
                    Err(self.failed(source, name, AuthError::BadPassword))
                }
            }
            Presented::Bearer(token) => {
                self.throttle(source, None)?;
                self.tokens
                    .lookup(token.expose())
                    .map(Principal::Client)
                    .ok_or_else(|| self.failed(source, None, AuthError::BadToken))
            }
        }
    }

    /// Authenticate an OAuth client by id and secret, from `source`.
    pub async fn client(
        &self,
        client_id: &str,
        secret: Secret,
        source: IpAddr,
    ) -> Result<(), AuthError> {
        let known = self.config.oauth_client(client_id);
        let name = known.map(|c| c.client_id.as_str());
        self.throttle(source, name)?;
        if self
            .verify(&self.permits, known.map(|c| c.secret_hash.clone()), secret)
            .await
        {
            Ok(())
        } else {
            Err(self.failed(source, name, AuthError::BadClient))
        }
    }

    /// Authenticate a console API call from `source`; returns the token's
    /// name. Failures count under the name "console" (there is no user name).
    pub async fn console(&self, headers: &HeaderMap, source: IpAddr) -> Result<String, AuthError> {
        const EXPECTED: &str = "\"Authorization: Bearer <console token>\"";
        const NAME: Option<&str> = Some("console");
        let token = match presented(headers, EXPECTED)? {
            Presented::Bearer(t) => t,
            Presented::Basic { .. } => {
                return Err(AuthError::UnsupportedScheme("Basic".into(), EXPECTED));
            }
        };
        let key = sha256(token.expose().as_bytes());
        if let Some(name) = self.cache().get(&key) {
            return Ok(name.clone());
        }
        self.throttle(source, NAME)?;
        for t in &self.config.console_tokens {
            let hash = Some(t.token_hash.clone());
            if self
                .verify(&self.console_permits, hash, token.clone())
                .await
            {
                let mut cache = self.cache();
                if cache.len() >= CONSOLE_CACHE_CAPACITY {
                    cache.clear();
                }
                cache.insert(key, t.name.clone());
                return Ok(t.name.clone());
            }
        }
        Err(self.failed(source, NAME, AuthError::BadConsoleToken))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], String>> {
        // A poisoned cache only means a panic elsewhere; its data is still valid.
        self.console_cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Argon2 check on the blocking pool, at most as many at a time as
    /// `permits` allows. An unknown name (`hash == None`) fails without hashing.
    async fn verify(
        &self,
        permits: &Semaphore,
        hash: Option<PasswordHash>,
        secret: Secret,
    ) -> bool {
        let Some(hash) = hash else { return false };
        let Ok(_permit) = permits.acquire().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || hash.verify(secret.expose().as_bytes()))
            .await
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn basic_and_bearer_headers_are_read() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("agent:pa:ss");
        match presented(&headers(&format!("Basic {b64}")), "x").unwrap() {
            Presented::Basic { user, password } => {
                assert_eq!((user.as_str(), password.expose()), ("agent", "pa:ss"))
            }
            p => panic!("{p:?}"),
        }
        assert!(
            matches!(presented(&headers("bearer abc"), "x").unwrap(), Presented::Bearer(t) if t.expose() == "abc")
        );
        assert_eq!(
            presented(&HeaderMap::new(), "creds")
                .unwrap_err()
                .to_string(),
            "missing Authorization header; send creds"
        );
        assert_eq!(
            presented(&headers("Digest x"), "creds")
                .unwrap_err()
                .to_string(),
            "unsupported authorization scheme \"Digest\"; send creds"
        );
        assert_eq!(
            presented(&headers("Basic !!"), "x").unwrap_err(),
            AuthError::Malformed("Basic credentials are not valid base64")
        );
    }
}
