//! How often a login may fail: per source address and per configured name.
//!
//! Every wrong password costs an argon2 check, so a flood of them would keep
//! real agents waiting behind the verification semaphore. Past the limit a
//! source (or a name) gets HTTP 429 with `Retry-After` *before* any hashing,
//! until its window of [`WINDOW`] ends. Counts live in fixed windows: simple,
//! and a legitimate agent that shares an address with a flood recovers a
//! minute after the flood stops. IPv6 sources count by their /64, which one
//! host can fill with addresses. Memory is bounded: names are only those in
//! the config, and at most [`MAX_SOURCES`] addresses are remembered.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Length of one counting window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Failed logins one source address may make per window.
pub const PER_SOURCE: u32 = 20;
/// Failed logins per window for one configured user, OAuth client or the
/// console, from all sources together.
pub const PER_NAME: u32 = 50;
/// Source addresses remembered at once.
pub const MAX_SOURCES: usize = 10_000;

/// Failures of one key in its current window.
#[derive(Debug, Clone, Copy)]
struct Count {
    since: Instant,
    failures: u32,
}

impl Count {
    fn live(&self, now: Instant) -> bool {
        now < self.since + WINDOW
    }
}

/// Failure counts by key, at most `capacity` keys.
#[derive(Debug)]
struct Failures<K> {
    map: HashMap<K, Count>,
    limit: u32,
    capacity: usize,
}

impl<K: Hash + Eq + Clone> Failures<K> {
    fn new(limit: u32, capacity: usize) -> Self {
        Failures {
            map: HashMap::new(),
            limit,
            capacity,
        }
    }

    /// How long `key` must still wait, if it is over the limit.
    fn blocked(&self, key: &K, now: Instant) -> Option<Duration> {
        let c = self.map.get(key)?;
        (c.failures >= self.limit && c.live(now)).then(|| c.since + WINDOW - now)
    }

    fn failed(&mut self, key: K, now: Instant) {
        if !self.map.contains_key(&key) && self.map.len() >= self.capacity {
            self.make_room(now);
        }
        let c = self.map.entry(key).or_insert(Count {
            since: now,
            failures: 0,
        });
        if !c.live(now) {
            *c = Count {
                since: now,
                failures: 0,
            };
        }
        c.failures = c.failures.saturating_add(1);
    }

    /// Drop ended windows; when every window is live, the oldest.
    fn make_room(&mut self, now: Instant) {
        self.map.retain(|_, c| c.live(now));
        if self.map.len() >= self.capacity
            && let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, c)| c.since)
                .map(|(k, _)| k.clone())
        {
            self.map.remove(&oldest);
        }
    }
}

/// The key a source counts under: IPv4 as it is (IPv4-mapped IPv6 too),
/// IPv6 by its /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// Failed logins per source and per name; see the module docs.
#[derive(Debug)]
pub struct LoginLimiter {
    sources: Mutex<Failures<IpAddr>>,
    names: Mutex<Failures<String>>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new(PER_SOURCE, PER_NAME, MAX_SOURCES)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the counts are still valid.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LoginLimiter {
    pub fn new(per_source: u32, per_name: u32, max_sources: usize) -> Self {
        LoginLimiter {
            sources: Mutex::new(Failures::new(per_source, max_sources)),
            // Names come from the config, so they are bounded already.
            names: Mutex::new(Failures::new(per_name, usize::MAX)),
        }
    }

    /// `Err(wait)` when `source`, or the configured `name`, failed too often
    /// in its current window.
    pub fn check(&self, source: IpAddr, name: Option<&str>, now: Instant) -> Result<(), Duration> {
        let by_source = lock(&self.sources).blocked(&source_key(source), now);
        let by_name = name.and_then(|n| lock(&self.names).blocked(&n.to_owned(), now));
        match by_source.max(by_name) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Count a failed login. `name` only when the config defines it.
    pub fn failed(&self, source: IpAddr, name: Option<&str>, now: Instant) {
        lock(&self.sources).failed(source_key(source), now);
        if let Some(n) = name {
            lock(&self.names).failed(n.to_owned(), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_is_blocked_at_its_limit_until_its_window_ends() {
        let limiter = LoginLimiter::new(3, 100, 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(ip("10.0.0.1"), None, t0), Ok(()));
            limiter.failed(ip("10.0.0.1"), None, t0);
        }
        let t1 = t0 + Duration::from_secs(45);
        assert_eq!(
            limiter.check(ip("10.0.0.1"), None, t1),
            Err(Duration::from_secs(15))
        );
        assert_eq!(
            limiter.check(ip("10.0.0.2"), None, t1),
            Ok(()),
            "other sources are not"
        );
        assert_eq!(limiter.check(ip("10.0.0.1"), None, t0 + WINDOW), Ok(()));
        limiter.failed(ip("10.0.0.1"), None, t0 + WINDOW);
        assert_eq!(
            limiter.check(ip("10.0.0.1"), None, t0 + WINDOW),
            Ok(()),
            "a new window"
        );
    }

    #[test]
    fn a_name_is_blocked_across_sources() {
        let limiter = LoginLimiter::new(100, 2, 10);
        let now = Instant::now();
        limiter.failed(ip("10.0.0.1"), Some("agent"), now);
        limiter.failed(ip("10.0.0.2"), Some("agent"), now);
        assert_eq!(
            limiter.check(ip("10.0.0.3"), Some("agent"), now),
            Err(WINDOW)
        );
        assert_eq!(limiter.check(ip("10.0.0.3"), Some("other"), now), Ok(()));
        assert_eq!(limiter.check(ip("10.0.0.3"), None, now), Ok(()));
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let limiter = LoginLimiter::new(2, 100, 10);
        let now = Instant::now();
        limiter.failed(ip("2001:db8::1"), None, now);
        limiter.failed(ip("2001:db8::ffff:2"), None, now);
        assert!(limiter.check(ip("2001:db8::3"), None, now).is_err());
        assert_eq!(limiter.check(ip("2001:db8:0:1::1"), None, now), Ok(()));
        limiter.failed(ip("::ffff:10.0.0.9"), None, now);
        limiter.failed(ip("10.0.0.9"), None, now);
        assert!(limiter.check(ip("10.0.0.9"), None, now).is_err());
    }

    #[test]
    fn memory_is_bounded_and_ended_windows_go_first() {
        let limiter = LoginLimiter::new(1, 100, 3);
        let t0 = Instant::now();
        limiter.failed(ip("10.0.0.1"), None, t0);
        let t1 = t0 + Duration::from_secs(30);
        limiter.failed(ip("10.0.0.2"), None, t1);
        limiter.failed(ip("10.0.0.3"), None, t1);
        // Full and every window live: the oldest (10.0.0.1) makes room.
        limiter.failed(ip("10.0.0.4"), None, t1);
        assert_eq!(lock(&limiter.sources).map.len(), 3);
        assert_eq!(limiter.check(ip("10.0.0.1"), None, t1), Ok(()));
        assert!(limiter.check(ip("10.0.0.2"), None, t1).is_err());
        // Later, ended windows are dropped before any live one.
        let t2 = t1 + WINDOW;
        limiter.failed(ip("10.0.0.5"), None, t2);
        assert_eq!(lock(&limiter.sources).map.len(), 1);
    }
}
