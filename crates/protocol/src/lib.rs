//! The wire protocol between an agent and the control plane.
//!
//! Every message that crosses the WebSocket is defined here, once, and both
//! binaries use this module. Control messages are JSON text frames, tagged by
//! `type`; batches of records are binary frames (see [`batch`]) so that record
//! values, which are usually JSON already, are not escaped a second time.
//!
//! The session starts with [`AgentMessage::Hello`]; the control plane answers
//! [`ControlMessage::Welcome`] or [`ControlMessage::Rejected`]. After that both
//! sides send heartbeats and either side may send a [`Goodbye`](AgentMessage::Goodbye).
//! `docs/PROTOCOL.md` describes the flow for people adopting the protocol.
#![forbid(unsafe_code)]

pub mod batch;
pub mod command;
pub mod connection_test;
pub mod job;
pub mod secret;
pub mod stream;
pub mod truststore;
pub mod validate;

use serde::{Deserialize, Serialize};

pub use batch::{Batch, Record};
pub use command::{Command, CommandResult};
pub use job::{JobSpec, JobState, PartitionState};
pub use stream::{PublishRequest, PublishResult, ReadRequest, ReadResult};

/// The protocol version this build speaks. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// The path of the agent WebSocket endpoint on the control plane.
pub const AGENT_PATH: &str = "/agent/v1";

/// Largest WebSocket message either side accepts. A batch is limited by its
/// job's `max_bytes`, which the control plane caps below this.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Largest text (JSON) control message either side accepts.
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 1024 * 1024;

/// Facts about the machine an agent runs on, shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    pub os: String,
    pub arch: String,
}

impl HostFacts {
    /// The facts of the machine this process runs on.
    pub fn current() -> Self {
        HostFacts {
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
        }
    }
}

/// The first message of a session, sent by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub protocol_version: u32,
    /// The agent's package version.
    pub agent_version: String,
    /// Stable identity of this agent installation (kept in its state directory),
    /// so that a reconnecting agent is recognised as the same agent.
    pub agent_id: String,
    /// Human name of the agent (defaults to the host name).
    pub agent_name: String,
    /// The agent group it wants to join.
    pub group: String,
    pub host: HostFacts,
    /// The proxy the agent connects through, if any (`host:port`, no credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Messages beyond version 1 the agent answers, e.g.
    /// [`stream::CAPABILITY_PUBLISH`]. Absent in older agents: the control
    /// plane then sends them none of these messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
}

/// Why the control plane refused a hello. Every reason is permanent: the agent
/// stops retrying and exits, because retrying cannot fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The agent's protocol version is not supported.
    VersionRefused,
    /// The group named in the hello does not exist.
    UnknownGroup,
    /// The credentials are valid but not allowed to join that group.
    Forbidden,
}

/// Messages the agent sends (JSON text frames).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// Opens the session.
    Hello(Hello),
    /// Sent every heartbeat interval; silence past the deadline means the
    /// agent is gone.
    Heartbeat { seq: u64 },
    /// The state of one job on this agent, sent on every change and
    /// periodically while it runs.
    JobState(JobState),
    /// The answer to a [`ControlMessage::Command`].
    CommandResult(CommandResult),
    /// The answer to a [`ControlMessage::Publish`].
    PublishResult(PublishResult),
    /// The answer to a [`ControlMessage::Read`].
    ReadResult(ReadResult),
    /// The agent is stopping: it fetches nothing new and finishes its
    /// in-flight batches within `deadline_ms`, then says goodbye.
    Draining { deadline_ms: u64 },
    /// The peer sent something this side cannot accept. The session goes on
    /// unless the error makes that impossible.
    ProtocolError { message: String },
    /// The agent closes the session on purpose (shutdown, restart).
    Goodbye { reason: String },
}

/// Messages the control plane sends (JSON text frames).
// `AssignJob` is larger than the rest; messages are short-lived, boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// The hello was accepted; the session is established.
    Welcome {
        /// Identifies this session in logs on both sides.
        session_id: String,
        /// How often each side sends a heartbeat.
        heartbeat_interval_ms: u64,
        /// After this long without any message, a side declares its peer dead.
        heartbeat_timeout_ms: u64,
        /// Highest protocol version the control plane speaks.
        protocol_version: u32,
    },
    /// The hello was refused; the control plane closes the socket after this.
    Rejected {
        reason: RejectReason,
        message: String,
    },
    /// Sent every heartbeat interval.
    Heartbeat { seq: u64 },
    /// Start (or replace) a poll job on this agent.
    AssignJob(JobSpec),
    /// Stop a poll job: drain in-flight batches, commit, leave the group.
    RevokeJob { job_id: String },
    /// The control plane handed the batch to the job's sink. Only now may the
    /// agent count its records as delivered.
    Ack { job_id: String, batch_seq: u64 },
    /// An operator's command; the agent answers with a `command_result`.
    Command {
        command_id: String,
        command: Command,
    },
    /// Write records into a stream; only to an agent whose hello listed
    /// [`stream::CAPABILITY_PUBLISH`]. Answered with a `publish_result`.
    Publish(PublishRequest),
    /// Read records without a consumer group; only to an agent whose hello
    /// listed [`stream::CAPABILITY_READ`]. Answered with a `read_result`.
    Read(ReadRequest),
    /// The peer sent something this side cannot accept.
    ProtocolError { message: String },
    /// The control plane closes the session on purpose.
    Goodbye { reason: String },
}

/// Why a text frame could not be read as a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Decode a JSON control message, enforcing [`MAX_CONTROL_MESSAGE_BYTES`].
pub fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, DecodeError> {
    if text.len() > MAX_CONTROL_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge {
            size: text.len(),
            limit: MAX_CONTROL_MESSAGE_BYTES,
        });
    }
    serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Largest control message an agent with [`stream::CAPABILITY_PUBLISH`]
/// accepts: a `publish` carries up to [`stream::MAX_PUBLISH_FRAME_BYTES`]
/// of records as base64, so that one 1 MB record (OCI Streaming's limit)
/// fits. Every other message stays under [`MAX_CONTROL_MESSAGE_BYTES`].
pub const MAX_PUBLISH_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Decode a control message as an agent that publishes does: the larger
/// limit applies to `publish` alone.
pub fn decode_control(text: &str) -> Result<ControlMessage, DecodeError> {
    if text.len() <= MAX_CONTROL_MESSAGE_BYTES {
        return decode(text);
    }
    let too_large = DecodeError::TooLarge {
        size: text.len(),
        limit: MAX_CONTROL_MESSAGE_BYTES,
    };
    if text.len() > MAX_PUBLISH_MESSAGE_BYTES || !text.starts_with("{\"type\":\"publish\"") {
        return Err(too_large);
    }
    serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Encode a control message as JSON text.
pub fn encode<T: Serialize>(msg: &T) -> String {
    // Serializing these plain enums cannot fail: no maps with non-string keys.
    serde_json::to_string(msg)
        .unwrap_or_else(|e| format!("{{\"type\":\"protocol_error\",\"message\":\"encode: {e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_with_type_tag() {
        let hello = AgentMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            agent_id: "id-1".into(),
            agent_name: "a1".into(),
            group: "g".into(),
            host: HostFacts::current(),
            proxy: None,
            capabilities: vec![],
        });
        let text = encode(&hello);
        assert!(text.starts_with("{\"type\":\"hello\""), "{text}");
        assert_eq!(decode::<AgentMessage>(&text).unwrap(), hello);
    }

    #[test]
    fn unknown_type_is_a_malformed_error_naming_the_variant() {
        let err = decode::<ControlMessage>(r#"{"type":"launch_missiles"}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown variant `launch_missiles`"),
            "{err}"
        );
    }

    #[test]
    fn only_a_publish_may_exceed_the_control_message_limit() {
        let pad = "x".repeat(MAX_CONTROL_MESSAGE_BYTES);
        let big_error = encode(&ControlMessage::ProtocolError {
            message: pad.clone(),
        });
        assert!(matches!(
            decode_control(&big_error),
            Err(DecodeError::TooLarge { .. })
        ));
        let publish = ControlMessage::Publish(PublishRequest {
            request_id: "r".into(),
            connection: stream::StreamConnection {
                bootstrap_servers: "h:9092".into(),
                topic: "t".into(),
                security: Default::default(),
            },
            idempotency_key: "k".into(),
            frame: pad,
            recover_since_ms: None,
            timeout_ms: 1000,
        });
        assert_eq!(decode_control(&encode(&publish)).unwrap(), publish);
    }

    #[test]
    fn oversized_text_is_refused_before_parsing() {
        let text = "x".repeat(MAX_CONTROL_MESSAGE_BYTES + 1);
        let err = decode::<ControlMessage>(&text).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }));
    }
}
