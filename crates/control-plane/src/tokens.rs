//! Bearer tokens issued by the OAuth2 token endpoint.
//!
//! A token is 32 random bytes, handed out once and kept only as its SHA-256
//! with the client it belongs to and its expiry. The store is bounded:
//! expired tokens are swept when it fills, and when it is full of live
//! tokens it refuses to issue more rather than evict one an agent relies on.

use crate::hashes;
use base64::Engine;
use connectivity_protocol::secret::Secret;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Live tokens kept at most.
pub const MAX_TOKENS: usize = 100_000;
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
            hashes::sha256(token.expose().as_bytes()),
            Issued {
                client_id: client_id.to_owned(),
                expires_at: now + self.ttl,
            },
        );
        Ok(token)
    }

    /// The client a live token belongs to. Expired tokens are dropped here.
    pub fn lookup(&self, token: &str) -> Option<String> {
        let key = hashes::sha256(token.as_bytes());
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
        assert!(keys.contains(&hashes::sha256(a.expose().as_bytes())));
    }
}
