//! Which agent runs a publish or read request, and the requests waiting for
//! their answers.
//!
//! Each welcomed session registers here with its group and the capabilities
//! of its hello. A request goes to the capable agent of the group with the
//! fewest requests in flight, at most [`MAX_IN_FLIGHT_PER_AGENT`] each (the
//! agent's own limit): beyond that the caller hears "busy" at once, so
//! nothing queues up. The message reaches the session through the command
//! hub's bounded queue; the answer comes back here by request id.

use crate::commands::{CommandHub, SendError};
use connectivity_protocol::{ControlMessage, PublishResult, ReadResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;

/// Requests in flight on one agent; equal to the agent's own bound
/// (`connectivity_agent::streams::MAX_IN_FLIGHT`).
pub const MAX_IN_FLIGHT_PER_AGENT: usize = 8;
/// Requests waiting for answers, over all agents.
pub const MAX_PENDING: usize = 1024;

/// An agent's answer.
#[derive(Debug)]
pub enum Answer {
    Publish(PublishResult),
    Read(ReadResult),
}

impl Answer {
    fn request_id(&self) -> &str {
        match self {
            Answer::Publish(r) => &r.request_id,
            Answer::Read(r) => &r.request_id,
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error(
        "no agent of group {0:?} is connected; start one (systemctl start connectivity-agent on a host of the group) or retry later"
    )]
    NoAgent(String),
    #[error(
        "agent too old: the connected agents of group {group:?} ({agents}) do not support {capability}; upgrade them to a version that does"
    )]
    TooOld {
        group: String,
        capability: &'static str,
        agents: String,
    },
    #[error(
        "every agent of group {0:?} is running as many publish and read requests as it may; retry shortly"
    )]
    Busy(String),
    #[error(
        "the agent went away before answering; retry with the same idempotency key (records it wrote are found, not written again)"
    )]
    AgentLost,
    #[error(
        "the agent did not answer within {} s; retry with the same idempotency key (records it wrote are found, not written again)",
        .0.as_secs()
    )]
    Timeout(Duration),
}

struct Link {
    session_id: String,
    group: String,
    name: String,
    version: String,
    capabilities: Vec<String>,
    in_flight: usize,
}

struct Pending {
    agent_id: String,
    session_id: String,
    tx: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Inner {
    links: HashMap<String, Link>,
    pending: HashMap<String, Pending>,
}

/// The sessions able to run requests, and the requests in flight.
#[derive(Default)]
pub struct StreamHub {
    inner: Mutex<Inner>,
    turn: std::sync::atomic::AtomicUsize,
}

/// What a session tells the hub about itself.
pub struct AgentFacts<'a> {
    pub agent_id: &'a str,
    pub session_id: &'a str,
    pub group: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    pub capabilities: &'a [String],
}

impl StreamHub {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A session was welcomed.
    pub fn attach(&self, a: AgentFacts<'_>) {
        self.lock().links.insert(
            a.agent_id.to_owned(),
            Link {
                session_id: a.session_id.to_owned(),
                group: a.group.to_owned(),
                name: a.name.to_owned(),
                version: a.version.to_owned(),
                capabilities: a.capabilities.to_vec(),
                in_flight: 0,
            },
        );
    }

    /// A session ended: its requests will never be answered (their
    /// waiters see [`RequestError::AgentLost`]).
    pub fn detach(&self, agent_id: &str, session_id: &str) {
        let mut inner = self.lock();
        if inner
            .links
            .get(agent_id)
            .is_some_and(|l| l.session_id == session_id)
        {
            inner.links.remove(agent_id);
        }
        inner
            .pending
            .retain(|_, p| !(p.agent_id == agent_id && p.session_id == session_id));
    }

    /// An answer from `agent_id`'s session; false when nobody waits for it.
    pub fn complete(&self, agent_id: &str, session_id: &str, answer: Answer) -> bool {
        let mut inner = self.lock();
        let id = answer.request_id().to_owned();
        let ours = inner
            .pending
            .get(&id)
            .is_some_and(|p| p.agent_id == agent_id && p.session_id == session_id);
        match ours.then(|| inner.pending.remove(&id)).flatten() {
            Some(p) => p.tx.send(answer).is_ok(),
            None => false,
        }
    }

    /// The capable agent of `group` with the fewest requests in flight.
    fn pick(
        inner: &Inner,
        group: &str,
        capability: &'static str,
        turn: usize,
    ) -> Result<String, RequestError> {
        let in_group: Vec<(&String, &Link)> = inner
            .links
            .iter()
            .filter(|(_, l)| l.group == group)
            .collect();
        if in_group.is_empty() {
            return Err(RequestError::NoAgent(group.to_owned()));
        }
        let capable: Vec<&(&String, &Link)> = in_group
            .iter()
            .filter(|(_, l)| l.capabilities.iter().any(|c| c == capability))
            .collect();
        if capable.is_empty() {
            let agents = in_group
                .iter()
                .map(|(_, l)| format!("{} {}", l.name, l.version))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(RequestError::TooOld {
                group: group.to_owned(),
                capability,
                agents,
            });
        }
        let least = capable
            .iter()
            .map(|(_, l)| l.in_flight)
            .min()
            .filter(|n| *n < MAX_IN_FLIGHT_PER_AGENT)
            .ok_or_else(|| RequestError::Busy(group.to_owned()))?;
        let mut idle: Vec<&String> = capable
            .iter()
            .filter(|(_, l)| l.in_flight == least)
            .map(|(id, _)| *id)
            .collect();
        idle.sort();
        // Turn by turn among the least busy, so sequential requests use
        // every agent too.
        Ok(idle[turn % idle.len()].clone())
    }

    /// Send a request built for its id to an agent of `group` that has
    /// `capability`, and wait at most `timeout` for the answer.
    pub async fn request(
        self: &Arc<Self>,
        commands: &CommandHub,
        group: &str,
        capability: &'static str,
        build: impl FnOnce(String) -> ControlMessage,
        timeout: Duration,
    ) -> Result<(String, Answer), RequestError> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let (rx, agent_id) = {
            let mut inner = self.lock();
            if inner.pending.len() >= MAX_PENDING {
                return Err(RequestError::Busy(group.to_owned()));
            }
            let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let agent_id = Self::pick(&inner, group, capability, turn)?;
            let (tx, rx) = oneshot::channel();
            let Some(link) = inner.links.get_mut(&agent_id) else {
                return Err(RequestError::NoAgent(group.to_owned()));
            };
            link.in_flight += 1;
            let session_id = link.session_id.clone();
            inner.pending.insert(
                request_id.clone(),
                Pending {
                    agent_id: agent_id.clone(),
                    session_id,
                    tx,
                },
            );
            (rx, agent_id)
        };
        let _guard = InFlight {
            hub: self.clone(),
            agent_id: agent_id.clone(),
            request_id: request_id.clone(),
        };
        match commands.forward(&agent_id, build(request_id)) {
            Ok(()) => {}
            Err(SendError::Busy) => return Err(RequestError::Busy(group.to_owned())),
            Err(SendError::NotConnected(_)) => return Err(RequestError::AgentLost),
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok((agent_id, answer)),
            Ok(Err(_)) => Err(RequestError::AgentLost),
            Err(_) => Err(RequestError::Timeout(timeout)),
        }
    }

    /// Requests in flight, over all agents.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

/// Frees the agent's slot and the pending entry however the wait ends.
struct InFlight {
    hub: Arc<StreamHub>,
    agent_id: String,
    request_id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        inner.pending.remove(&self.request_id);
        if let Some(l) = inner.links.get_mut(&self.agent_id) {
            l.in_flight = l.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(id: &'a str, caps: &'a [String]) -> AgentFacts<'a> {
        AgentFacts {
            agent_id: id,
            session_id: "s",
            group: "g",
            name: id,
            version: "0.0.9",
            capabilities: caps,
        }
    }

    #[test]
    fn an_agent_without_the_capability_is_too_old_and_no_agent_is_503_material() {
        let hub = StreamHub::default();
        let inner = hub.lock();
        assert_eq!(
            StreamHub::pick(&inner, "g", "publish", 0),
            Err(RequestError::NoAgent("g".into()))
        );
        drop(inner);
        hub.attach(facts("a1", &[]));
        let err = StreamHub::pick(&hub.lock(), "g", "publish", 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "agent too old: the connected agents of group \"g\" (a1 0.0.9) do not support publish; upgrade them to a version that does"
        );
    }

    #[test]
    fn requests_spread_over_agents_and_stop_at_the_bound() {
        let hub = StreamHub::default();
        let caps = vec!["publish".to_owned()];
        hub.attach(facts("a1", &caps));
        hub.attach(facts("a2", &caps));
        let mut picked = Vec::new();
        for _ in 0..2 * MAX_IN_FLIGHT_PER_AGENT {
            let mut inner = hub.lock();
            let id = StreamHub::pick(&inner, "g", "publish", 0).unwrap();
            inner.links.get_mut(&id).unwrap().in_flight += 1;
            picked.push(id);
        }
        assert_eq!(
            picked.iter().filter(|i| *i == "a1").count(),
            MAX_IN_FLIGHT_PER_AGENT
        );
        assert_eq!(
            StreamHub::pick(&hub.lock(), "g", "publish", 0),
            Err(RequestError::Busy("g".into()))
        );
    }
}
