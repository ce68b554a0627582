//! Browser sessions of the web console (`/console/`).
//!
//! A console token typed into the login page becomes a session: a random
//! id the browser holds in an `HttpOnly` cookie, and a CSRF token the page
//! holds in memory and sends back in `X-CSRF-Token` with every request that
//! changes something. Only the SHA-256 of a session id is kept (like the
//! OAuth tokens of [`crate::tokens`]), with the console token's name (the
//! "who" of the audit log) and an absolute expiry. The store is bounded:
//! when it is full, expired sessions go first, then the oldest.

use base64::Engine;
use connectivity_protocol::secret::Secret;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// How long a session lasts from its login (a working day and a half).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most.
pub const MAX_SESSIONS: usize = 1024;

/// What the page learns about its session (never the session id itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The console token's name.
    pub name: String,
    /// The value `X-CSRF-Token` must carry.
    pub csrf: String,
    /// Wall-clock expiry, for the page and the cookie.
    pub expires_at: SystemTime,
}

/// A new session: the id for the cookie and what the page may know.
#[derive(Debug)]
pub struct NewSession {
    pub id: Secret,
    pub info: SessionInfo,
}

struct Entry {
    info: SessionInfo,
    created: Instant,
    expires: Instant,
}

/// The sessions, by SHA-256 of their id.
pub struct ConsoleSessions {
    ttl: Duration,
    capacity: usize,
    sessions: Mutex<HashMap<[u8; 32], Entry>>,
}

impl Default for ConsoleSessions {
    fn default() -> Self {
        Self::new(SESSION_TTL, MAX_SESSIONS)
    }
}

/// 32 random bytes, base64url: for session ids and CSRF tokens.
fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

impl ConsoleSessions {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        ConsoleSessions {
            ttl,
            capacity: capacity.max(1),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Open a session for the console token named `name`. `None` only when
    /// the system's random number generator fails.
    pub fn create(&self, name: &str) -> Option<NewSession> {
        let (id, csrf) = (Secret::new(random_token()?), random_token()?);
        let now = Instant::now();
        let info = SessionInfo {
            name: name.to_owned(),
            csrf,
            expires_at: SystemTime::now() + self.ttl,
        };
        let mut sessions = self.lock();
        if sessions.len() >= self.capacity {
            sessions.retain(|_, e| e.expires > now);
            if sessions.len() >= self.capacity
                && let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, e)| e.created)
                    .map(|(k, _)| *k)
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            crate::hashes::sha256(id.expose().as_bytes()),
            Entry {
                info: info.clone(),
                created: now,
                expires: now + self.ttl,
            },
        );
        Some(NewSession { id, info })
    }

    /// The live session with this id; an expired one is dropped here.
    pub fn get(&self, id: &str) -> Option<SessionInfo> {
        let key = crate::hashes::sha256(id.as_bytes());
        let mut sessions = self.lock();
        match sessions.get(&key) {
            Some(e) if e.expires > Instant::now() => Some(e.info.clone()),
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    /// End a session (logout). Whether it existed.
    pub fn remove(&self, id: &str) -> bool {
        self.lock()
            .remove(&crate::hashes::sha256(id.as_bytes()))
            .is_some()
    }

    /// Sessions held, live or not yet swept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Compare two tokens in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sessions_expire_and_logout_ends_them() {
        let store = ConsoleSessions::new(Duration::from_secs(60), 10);
        let s = store.create("ops").unwrap();
        assert_eq!(s.info.name, "ops");
        assert_eq!(store.get(s.id.expose()), Some(s.info.clone()));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(store.get(s.id.expose()), None);
        assert!(store.is_empty(), "expired session dropped on lookup");
        let s = store.create("ops").unwrap();
        assert!(store.remove(s.id.expose()));
        assert_eq!(store.get(s.id.expose()), None);
        assert!(!store.remove(s.id.expose()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_drops_expired_then_the_oldest() {
        let store = ConsoleSessions::new(Duration::from_secs(60), 2);
        let a = store.create("a").unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let b = store.create("b").unwrap();
        let c = store.create("c").unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(store.get(a.id.expose()), None, "the oldest went");
        assert!(store.get(b.id.expose()).is_some() && store.get(c.id.expose()).is_some());
    }

    #[test]
    fn ids_and_csrf_tokens_are_random_and_only_hashes_are_kept() {
        let store = ConsoleSessions::default();
        let (a, b) = (store.create("x").unwrap(), store.create("x").unwrap());
        assert_eq!(a.id.expose().len(), 43);
        assert_ne!(a.id.expose(), b.id.expose());
        assert_ne!(a.info.csrf, b.info.csrf);
        assert_ne!(a.id.expose(), a.info.csrf);
        assert!(
            store
                .lock()
                .contains_key(&crate::hashes::sha256(a.id.expose().as_bytes()))
        );
        assert!(same_token(&a.info.csrf, &a.info.csrf.clone()));
        assert!(!same_token(&a.info.csrf, &b.info.csrf));
        assert!(!same_token("abc", "abcd"));
    }
}
