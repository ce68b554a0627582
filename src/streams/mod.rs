//! Publish and read on demand: the control plane's `publish` and `read`
//! messages, run against private streams from inside the network.
//!
//! The allow-list applies exactly as to a poll job: an endpoint the operator
//! did not allow is never contacted. Producers are kept per connection
//! ([`publish::Producers`]), since a new one costs a TLS handshake and a SASL
//! login, which a request at a time could not afford; readers are short-lived
//! consumers without a group (`read.rs`).

pub mod publish;
pub mod read;

use crate::allowlist::AllowList;
use crate::kafka::errors::Target;
use connectivity_protocol::job::{ErrorClass, JobError};
use connectivity_protocol::stream::{self, CAPABILITY_PUBLISH, CAPABILITY_READ, StreamConnection};
use connectivity_protocol::{AgentMessage, ControlMessage, PublishResult, ReadResult};
use rdkafka::metadata::Metadata;

/// What this agent announces in its hello.
pub const CAPABILITIES: &[&str] = &[CAPABILITY_PUBLISH, CAPABILITY_READ];

/// Publish and read requests running at once on one agent (and waiting, in
/// the session's queue); more are answered "agent busy" at once, so the control plane can pick another agent or ask
/// the caller to retry, instead of a queue growing here.
pub const MAX_IN_FLIGHT: usize = 8;

/// The agent's publish and read service.
pub struct Streams {
    allow: AllowList,
    producers: publish::Producers,
}

impl Streams {
    pub fn new(allow: AllowList) -> Self {
        Streams {
            allow,
            producers: publish::Producers::default(),
        }
    }

    /// Run one `publish` or `read` message; `None` for any other message.
    pub async fn handle(&self, msg: ControlMessage) -> Option<AgentMessage> {
        match msg {
            ControlMessage::Publish(req) => {
                let id = req.request_id.clone();
                let secrets = secrets(&req.connection);
                let mut result = match self.allowed(&req.connection).await {
                    Err(e) => failed_publish(id, e),
                    Ok(()) => self.producers.publish(req, &self.allow).await,
                };
                let errors = result.records.iter_mut().filter_map(|r| r.error.as_mut());
                errors
                    .chain(result.error.as_mut())
                    .for_each(|e| redact(e, &secrets));
                Some(AgentMessage::PublishResult(result))
            }
            ControlMessage::Read(req) => {
                let id = req.request_id.clone();
                let secrets = secrets(&req.connection);
                let mut result = match self.allowed(&req.connection).await {
                    Err(e) => failed_read(id, e),
                    Ok(()) => read::read(req, self.allow.clone()).await,
                };
                if let Some(e) = result.error.as_mut() {
                    redact(e, &secrets);
                }
                Some(AgentMessage::ReadResult(result))
            }
            _ => None,
        }
    }

    /// The allow-list check a poll job gets, then the job's own checks.
    async fn allowed(&self, c: &StreamConnection) -> Result<(), JobError> {
        let (allow, bootstrap) = (self.allow.clone(), c.bootstrap_servers.clone());
        // The check may resolve names (CIDR rules): off the async threads.
        tokio::task::spawn_blocking(move || allow.check_bootstrap(&bootstrap))
            .await
            .unwrap_or_else(|e| Err(format!("allow-list check failed: {e}")))
            .map_err(|m| stream::error(ErrorClass::NotAllowed, m))?;
        c.check()
            .map_err(|e| stream::error(ErrorClass::Config, e.to_string()))
    }
}

/// The check of the brokers a cluster advertises, as a poll job gets it
/// ([`AllowList::check_advertised`]), on the metadata a producer or reader
/// fetched from the bootstrap servers alone, before it goes on to them.
fn check_brokers(allow: &AllowList, target: &Target, md: &Metadata) -> Result<(), JobError> {
    let advertised: Vec<String> = md
        .brokers()
        .iter()
        .map(|b| format!("{}:{}", b.host(), b.port()))
        .collect();
    allow
        .check_advertised(&target.bootstrap, &advertised)
        .map_err(|m| stream::error(ErrorClass::NotAllowed, m))
}

/// The connection's secrets, to mask in whatever librdkafka put in an
/// error's text (the last line of defence, as for poll jobs).
fn secrets(c: &StreamConnection) -> Vec<String> {
    let sec = &c.security;
    let mut out = Vec::new();
    if let Some(s) = &sec.sasl {
        out.push(s.password.expose().to_owned());
    }
    if let Some(t) = &sec.truststore {
        out.extend(t.password.as_ref().map(|p| p.expose().to_owned()));
    }
    out.extend(sec.client_key_pem.as_ref().map(|k| k.expose().to_owned()));
    out
}

fn redact(e: &mut JobError, secrets: &[String]) {
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    e.message = crate::kafka::errors::redact(&e.message, &refs);
}

/// Fault injection for `tests/streams_e2e.rs`: with
/// `CONNECTIVITY_AGENT_TEST_CRASH_AFTER_PUBLISH` set, the agent exits after
/// the broker acknowledged a publish and before it answers, the crash a
/// retried publish must survive without writing twice.
pub fn crash_after_publish(answer: &AgentMessage) {
    let acked = matches!(answer, AgentMessage::PublishResult(r) if r.error.is_none());
    if acked && std::env::var_os("CONNECTIVITY_AGENT_TEST_CRASH_AFTER_PUBLISH").is_some() {
        tracing::error!("exiting before answering a publish (test fault injection)");
        std::process::exit(86);
    }
}

/// The answer to a request this agent cannot take now.
pub fn busy(msg: &ControlMessage) -> Option<AgentMessage> {
    let e = || {
        stream::error(
            ErrorClass::Busy,
            format!(
                "agent busy: {MAX_IN_FLIGHT} publish and read requests already running; try again"
            ),
        )
    };
    match msg {
        ControlMessage::Publish(r) => Some(AgentMessage::PublishResult(failed_publish(
            r.request_id.clone(),
            e(),
        ))),
        ControlMessage::Read(r) => Some(AgentMessage::ReadResult(failed_read(
            r.request_id.clone(),
            e(),
        ))),
        _ => None,
    }
}

pub fn failed_publish(request_id: String, error: JobError) -> PublishResult {
    PublishResult {
        request_id,
        records: vec![],
        error: Some(error),
        idempotence: None,
    }
}

pub fn failed_read(request_id: String, error: JobError) -> ReadResult {
    ReadResult {
        request_id,
        frame: None,
        partitions: vec![],
        truncated: false,
        error: Some(error),
    }
}
