//! An agent's state as the console shows it, with the reason, computed when
//! it is read (so "gone" needs no timer): from the session facts the
//! registry keeps, the agent's last refused hello and the refused logins of
//! its credentials.
//!
//! | state | when |
//! | --- | --- |
//! | `connected` | a session, and a message within 2 heartbeat intervals |
//! | `draining` | a session, and the agent announced a graceful stop |
//! | `gone` | nothing heard for more than 2 heartbeat intervals (session or not), or a goodbye more than [`RECONNECT_GRACE`] ago |
//! | `reconnecting` | no session, and either the connection dropped less than 2 heartbeat intervals ago, or the agent said goodbye less than [`RECONNECT_GRACE`] ago (a restart) |
//! | `auth_failing` | no session, and its credentials were refused since it was last connected |
//! | `version_refused` | no session, and its last hello was refused for its protocol version |
//! | `refused` | no session, and its last hello was refused (unknown group, not allowed to join it) |

use connectivity_common::timefmt;
use connectivity_protocol::RejectReason;
use serde::Serialize;
use std::time::{Duration, SystemTime};

/// How long an agent that said goodbye is expected back (a restart: drain,
/// exit, the supervisor's restart delay, a new session).
pub const RECONNECT_GRACE: Duration = Duration::from_secs(60);
/// Heartbeat intervals of silence after which an agent is gone.
pub const GONE_AFTER_INTERVALS: u32 = 2;

/// The console's states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Connected,
    Draining,
    Reconnecting,
    AuthFailing,
    VersionRefused,
    Refused,
    Gone,
}

impl Health {
    pub const ALL: [Health; 7] = [
        Health::Connected,
        Health::Draining,
        Health::Reconnecting,
        Health::AuthFailing,
        Health::VersionRefused,
        Health::Refused,
        Health::Gone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Connected => "connected",
            Health::Draining => "draining",
            Health::Reconnecting => "reconnecting",
            Health::AuthFailing => "auth_failing",
            Health::VersionRefused => "version_refused",
            Health::Refused => "refused",
            Health::Gone => "gone",
        }
    }
}

/// State, reason, and since when the reason holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentStatus {
    pub state: Health,
    pub reason: String,
    #[serde(serialize_with = "timefmt::serialize")]
    pub since: SystemTime,
}

/// A hello the control plane refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub reason: RejectReason,
    pub message: String,
    #[serde(serialize_with = "timefmt::serialize")]
    pub at: SystemTime,
    pub remote_addr: String,
}

/// Refused logins of one principal since its last successful one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthFailure {
    /// `user "name"`, or `bearer token` when the token names no client.
    pub principal: String,
    pub count: u64,
    #[serde(serialize_with = "timefmt::serialize")]
    pub first_at: SystemTime,
    #[serde(serialize_with = "timefmt::serialize")]
    pub last_at: SystemTime,
    pub last_remote_addr: String,
    pub last_error: String,
}

/// What the registry knows about an agent, for [`status`].
pub struct Facts<'a> {
    pub connected: bool,
    pub last_seen: SystemTime,
    pub disconnected_at: Option<SystemTime>,
    pub disconnect_reason: Option<&'a str>,
    pub said_goodbye: bool,
    /// When the agent announced a graceful stop, and its drain deadline.
    pub draining: Option<(SystemTime, u64)>,
    pub refusal: Option<&'a Refusal>,
    pub auth_failure: Option<&'a AuthFailure>,
    /// Whether the agent ever had a session (an agent known only from a
    /// refused hello has not).
    pub had_session: bool,
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// The state of an agent at `now`, for heartbeats every `interval`.
pub fn status(f: &Facts, now: SystemTime, interval: Duration) -> AgentStatus {
    let silent = now.duration_since(f.last_seen).unwrap_or_default();
    if f.connected {
        return connected(f, silent, interval);
    }
    // A refusal or failed login older than the last session is history.
    let since_end = f.disconnected_at.unwrap_or(f.last_seen);
    let newer = |t: SystemTime| !f.had_session || t >= since_end;
    if let Some(r) = f.refusal.filter(|r| newer(r.at)) {
        return refused(r);
    }
    if let Some(a) = f.auth_failure.filter(|a| newer(a.last_at)) {
        return auth_failing(a);
    }
    disconnected(f, now, silent, interval)
}

/// An agent with a session: connected, draining, or silent too long.
fn connected(f: &Facts, silent: Duration, interval: Duration) -> AgentStatus {
    let gone_after = interval * GONE_AFTER_INTERVALS;
    let last = timefmt::rfc3339(f.last_seen);
    if silent > gone_after {
        return AgentStatus {
            state: Health::Gone,
            reason: format!(
                "nothing received for {} ms (more than {GONE_AFTER_INTERVALS} heartbeat intervals of {} ms) since {last}; the session is closed at the heartbeat timeout",
                ms(silent),
                ms(interval)
            ),
            since: f.last_seen,
        };
    }
    if let Some((at, deadline_ms)) = f.draining {
        return AgentStatus {
            state: Health::Draining,
            reason: format!(
                "the agent is stopping gracefully: in-flight batches finish and offsets are committed within {deadline_ms} ms"
            ),
            since: at,
        };
    }
    AgentStatus {
        state: Health::Connected,
        reason: format!("session open; last message at {last}"),
        since: f.last_seen,
    }
}

fn refused(r: &Refusal) -> AgentStatus {
    let state = if r.reason == RejectReason::VersionRefused {
        Health::VersionRefused
    } else {
        Health::Refused
    };
    AgentStatus {
        state,
        reason: format!("hello refused from {}: {}", r.remote_addr, r.message),
        since: r.at,
    }
}

fn auth_failing(a: &AuthFailure) -> AgentStatus {
    AgentStatus {
        state: Health::AuthFailing,
        reason: format!(
            "{} refused {} time(s) since {}, last from {}: {}",
            a.principal,
            a.count,
            timefmt::rfc3339(a.first_at),
            a.last_remote_addr,
            a.last_error
        ),
        since: a.first_at,
    }
}

/// An agent without a session and nothing refused: reconnecting or gone,
/// by how it left and how long ago.
fn disconnected(f: &Facts, now: SystemTime, silent: Duration, interval: Duration) -> AgentStatus {
    let since_end = f.disconnected_at.unwrap_or(f.last_seen);
    let why = f.disconnect_reason.unwrap_or("disconnected");
    let ended = timefmt::rfc3339(since_end);
    if f.said_goodbye {
        let away = now.duration_since(since_end).unwrap_or_default();
        if away <= RECONNECT_GRACE {
            return AgentStatus {
                state: Health::Reconnecting,
                reason: format!(
                    "{why} at {ended}; expected back within {} s (a restart)",
                    RECONNECT_GRACE.as_secs()
                ),
                since: since_end,
            };
        }
        return AgentStatus {
            state: Health::Gone,
            reason: format!(
                "{why} at {ended} and not back within {} s",
                RECONNECT_GRACE.as_secs()
            ),
            since: since_end,
        };
    }
    let last = timefmt::rfc3339(f.last_seen);
    if silent <= interval * GONE_AFTER_INTERVALS {
        return AgentStatus {
            state: Health::Reconnecting,
            reason: format!("{why} at {ended}; last message at {last}"),
            since: since_end,
        };
    }
    AgentStatus {
        state: Health::Gone,
        reason: format!(
            "{why} at {ended}; nothing received for {} ms since {last}",
            ms(silent)
        ),
        since: f.last_seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_secs(1);

    fn facts(connected: bool, t0: SystemTime) -> Facts<'static> {
        Facts {
            connected,
            last_seen: t0,
            disconnected_at: (!connected).then_some(t0),
            disconnect_reason: (!connected).then_some("connection lost: reset"),
            said_goodbye: false,
            draining: None,
            refusal: None,
            auth_failure: None,
            had_session: true,
        }
    }

    #[test]
    fn a_silent_agent_is_gone_after_two_intervals_with_or_without_its_session() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let connected = facts(true, t0);
        assert_eq!(status(&connected, t0 + 2 * HB, HB).state, Health::Connected);
        let s = status(&connected, t0 + 2 * HB + Duration::from_millis(1), HB);
        assert_eq!(s.state, Health::Gone);
        assert!(
            s.reason.starts_with(
                "nothing received for 2001 ms (more than 2 heartbeat intervals of 1000 ms)"
            ),
            "{}",
            s.reason
        );
        let dropped = facts(false, t0);
        assert_eq!(status(&dropped, t0 + HB, HB).state, Health::Reconnecting);
        assert_eq!(status(&dropped, t0 + 3 * HB, HB).state, Health::Gone);
    }

    #[test]
    fn goodbye_draining_and_refusals_have_their_own_states() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut f = facts(true, t0);
        f.draining = Some((t0, 10_000));
        assert_eq!(status(&f, t0, HB).state, Health::Draining);
        let mut f = facts(false, t0);
        f.said_goodbye = true;
        assert_eq!(
            status(&f, t0 + Duration::from_secs(30), HB).state,
            Health::Reconnecting
        );
        assert_eq!(
            status(&f, t0 + Duration::from_secs(61), HB).state,
            Health::Gone
        );
        let refusal = Refusal {
            reason: RejectReason::VersionRefused,
            message: "protocol version 9".into(),
            at: t0 + HB,
            remote_addr: "1.2.3.4:5".into(),
        };
        f.refusal = Some(&refusal);
        let s = status(&f, t0 + 2 * HB, HB);
        assert_eq!(
            (s.state, s.reason.as_str()),
            (
                Health::VersionRefused,
                "hello refused from 1.2.3.4:5: protocol version 9"
            )
        );
        let old = Refusal {
            at: t0 - HB,
            ..refusal.clone()
        };
        f.refusal = Some(&old);
        let fail = AuthFailure {
            principal: "user \"agent\"".into(),
            count: 3,
            first_at: t0 + HB,
            last_at: t0 + 2 * HB,
            last_remote_addr: "1.2.3.4:5".into(),
            last_error: "invalid user name or password".into(),
        };
        f.auth_failure = Some(&fail);
        let s = status(&f, t0 + 2 * HB, HB);
        assert_eq!(
            s.state,
            Health::AuthFailing,
            "an older refusal does not hide newer auth failures"
        );
        assert!(s.reason.contains("refused 3 time(s)"), "{}", s.reason);
    }
}
