//! The agent side of poll jobs: consume a private stream, relay batches to
//! the control plane over the session, commit offsets only for what the
//! control plane acked.
//!
//! The session talks to jobs through channels only: batches and job states
//! come out of one bounded [`Outbound`] channel per session (a slow
//! WebSocket slows the jobs, it never grows memory); acks, session changes
//! and pause/drain go in through [`JobHandle`] / [`Jobs`] methods that never
//! block.
//!
//! - [`watermark`]: which offset may be stored once acks arrive (pure).
//! - [`job`]: the handle of one job; its task is in `runner` (life cycle)
//!   and `pump` (the consumer loop), its consumer's callbacks in `consumer`.
//! - [`jobs`]: the agent's jobs by id (assign, revoke, ack routing).

mod consumer;
pub mod job;
pub mod jobs;
mod pump;
mod runner;
pub mod watermark;

use bytes::Bytes;
use connectivity_protocol::job::JobState;
use std::time::Duration;

pub use job::{JobHandle, spawn};
pub use jobs::Jobs;

/// What jobs hand to the session to send.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A batch frame (`protocol::batch`), to send as one binary message.
    Batch {
        job_id: String,
        batch_seq: u64,
        frame: Bytes,
    },
    /// A job's state, to send as `AgentMessage::JobState`.
    State(JobState),
}

/// Timings of the relay, the same for every job of an agent.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// How long a job keeps its partitions while the session is away before
    /// it commits and leaves the consumer group (so another agent takes over).
    pub session_grace: Duration,
    /// How often a running job reports its state.
    pub state_interval: Duration,
    /// Retry backoff of a failed job: first delay and cap.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Longest wait for the topic's metadata before a job starts consuming.
    pub preflight_timeout: Duration,
    /// How long a revoked or replaced job may take to drain.
    pub revoke_deadline: Duration,
    /// How often acked offsets are committed (librdkafka auto-commit); they
    /// are also committed on revoke and when a consumer closes. OCI Streaming
    /// allows 10 commits/s per consumer group.
    pub commit_interval: Duration,
    /// Bytes of batch frames a job holds in memory at most: being sealed,
    /// waiting for the window, or queued for the socket and not yet written.
    /// Frames written to the socket are not kept (unacked records are read
    /// again from Kafka after a reconnect), so bytes in flight on the wire
    /// (`window_bytes`) cost no agent memory beyond this.
    pub held_bytes: usize,
}

/// Default of [`RelaySettings::held_bytes`]: 16 MiB, enough to keep the
/// socket busy while batches are built (docs/PERFORMANCE.md, where the agent
/// running one job at full speed stays under 64 MiB with it).
pub const HELD_BYTES: usize = 16 * 1024 * 1024;

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            session_grace: Duration::from_secs(15),
            state_interval: Duration::from_secs(2),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(60),
            preflight_timeout: Duration::from_secs(15),
            revoke_deadline: Duration::from_secs(30),
            commit_interval: Duration::from_millis(u64::from(
                crate::kafka::client::COMMIT_INTERVAL_MS,
            )),
            held_bytes: HELD_BYTES,
        }
    }
}
