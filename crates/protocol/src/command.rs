//! Remote management: commands the control plane sends an agent on behalf of
//! an operator, and the agent's answers. Every command carries an id chosen
//! by the control plane; the answer repeats it.

use serde::{Deserialize, Serialize};

pub use super::connection_test::{ConnectionParams, TestReport};

/// What an operator asks an agent to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command {
    /// Test a stream endpoint from inside the private network, step by step,
    /// without creating a job.
    TestConnection {
        params: ConnectionParams,
        /// Deadline for the whole test.
        timeout_ms: u64,
    },
    /// Stop fetching for a job; in-flight batches still complete.
    PauseJob { job_id: String },
    /// Fetch again after a pause.
    ResumeJob { job_id: String },
    /// Finish in-flight batches, commit, and stop the job on this agent.
    DrainJob { job_id: String },
    /// Drain, close the session and exit with code 75 so the supervisor
    /// (systemd `Restart=on-failure`) starts the agent again.
    Restart,
    /// Change the log level at run time (error, warn, info, debug, trace).
    SetLogLevel { level: String },
    /// Version, redacted config, recent log lines, job states, connection facts.
    Diagnostics,
}

impl Command {
    /// The `kind` tag, for logs and the audit log.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::TestConnection { .. } => "test_connection",
            Command::PauseJob { .. } => "pause_job",
            Command::ResumeJob { .. } => "resume_job",
            Command::DrainJob { .. } => "drain_job",
            Command::Restart => "restart",
            Command::SetLogLevel { .. } => "set_log_level",
            Command::Diagnostics => "diagnostics",
        }
    }
}

/// The agent's answer to a [`Command`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub command_id: String,
    pub ok: bool,
    /// What happened, for people.
    pub message: String,
    /// Structured result: a test report, a diagnostics bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// Exit code of an agent restarting on request (sysexits.h EX_TEMPFAIL):
/// non-zero, so `Restart=on-failure` brings it back.
pub const EX_RESTART: i32 = 75;
