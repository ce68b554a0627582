//! Operators' commands, executed on the agent: test a stream connection from
//! inside the private network, pause/resume/drain a job, restart, change the
//! log level, and build a diagnostics bundle with every secret removed.

use super::jobs::JobHost;
use crate::config::{AgentConfig, Credentials};
use connectivity_protocol::connection_test::ConnectionParams;
use connectivity_protocol::{Command, CommandResult};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest a connection test may take, whatever the request says.
const MAX_TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What commands need to reach: the agent's config, its jobs, its stop token.
pub struct CommandContext {
    pub config: AgentConfig,
    pub agent_id: String,
    /// Cancelled to restart: the agent drains and exits with `EX_RESTART`.
    pub shutdown: CancellationToken,
    pub restart_requested: AtomicBool,
    pub started: std::time::Instant,
    pub session: std::sync::Mutex<serde_json::Value>,
    /// Publish and read on demand (its producers outlive sessions).
    pub streams: crate::streams::Streams,
}

impl CommandContext {
    pub fn new(config: AgentConfig, agent_id: String, shutdown: CancellationToken) -> Arc<Self> {
        let streams = crate::streams::Streams::new(config.allowed_endpoints.clone());
        Arc::new(CommandContext {
            streams,
            config,
            agent_id,
            shutdown,
            restart_requested: AtomicBool::new(false),
            started: std::time::Instant::now(),
            session: std::sync::Mutex::new(json!({})),
        })
    }

    /// Whether a `restart` command stopped the agent.
    pub fn restart_requested(&self) -> bool {
        self.restart_requested.load(Ordering::SeqCst)
    }

    /// Record facts about the current session, for diagnostics.
    pub fn set_session(&self, facts: serde_json::Value) {
        if let Ok(mut s) = self.session.lock() {
            *s = facts;
        }
    }
}

/// Execute one command.
pub async fn execute(
    ctx: &CommandContext,
    jobs: &dyn JobHost,
    command_id: String,
    command: Command,
) -> CommandResult {
    let (ok, message, data) = match command {
        Command::TestConnection { params, timeout_ms } => {
            test_connection(ctx, &params, timeout_ms).await
        }
        Command::PauseJob { job_id } => job_toggled(jobs.pause(&job_id), &job_id, "paused"),
        Command::ResumeJob { job_id } => job_toggled(jobs.resume(&job_id), &job_id, "resumed"),
        Command::DrainJob { job_id } => drain_job(jobs, &job_id),
        Command::Restart => restart(ctx),
        Command::SetLogLevel { level } => set_log_level(&level),
        Command::Diagnostics => (
            true,
            "diagnostics bundle".into(),
            Some(diagnostics(ctx, jobs)),
        ),
    };
    CommandResult {
        command_id,
        ok,
        message,
        data,
    }
}

/// What a command did: whether it worked, a message, and data if any.
type Outcome = (bool, String, Option<serde_json::Value>);

/// The connection test, within the command's timeout (capped).
async fn test_connection(
    ctx: &CommandContext,
    params: &ConnectionParams,
    timeout_ms: u64,
) -> Outcome {
    let deadline = Duration::from_millis(timeout_ms).min(MAX_TEST_TIMEOUT);
    let report =
        crate::kafka::probe::test_connection(params, &ctx.config.allowed_endpoints, deadline).await;
    let message = report.summary();
    (report.ok, message, serde_json::to_value(&report).ok())
}

/// A job paused or resumed (`ok` false when it does not run here).
fn job_toggled(ok: bool, job_id: &str, done: &str) -> Outcome {
    let message = if ok {
        format!("job {job_id} {done}")
    } else {
        format!("job {job_id} does not run on this agent")
    };
    (ok, message, None)
}

/// Drain a job: it finishes its in-flight batches, commits and stops.
fn drain_job(jobs: &dyn JobHost, job_id: &str) -> Outcome {
    let known = jobs.job_ids().iter().any(|id| id == job_id);
    if !known {
        return (
            false,
            format!("job {job_id} does not run on this agent"),
            None,
        );
    }
    jobs.revoke(job_id);
    let message = format!(
        "job {job_id} draining: in-flight batches finish, offsets are committed, then it stops"
    );
    (true, message, None)
}

/// Stop the agent so that its supervisor starts it again.
fn restart(ctx: &CommandContext) -> Outcome {
    ctx.restart_requested.store(true, Ordering::SeqCst);
    ctx.shutdown.cancel();
    let message = format!(
        "restarting: draining, then exiting with code {} for the supervisor to start it again",
        connectivity_protocol::command::EX_RESTART
    );
    (true, message, None)
}

/// Change the log level at run time.
fn set_log_level(level: &str) -> Outcome {
    match crate::logging::set_level(level) {
        Ok(()) => {
            tracing::info!(%level, "log level changed by the control plane");
            (true, format!("log level is now {level}"), None)
        }
        Err(e) => (false, e, None),
    }
}

/// Everything useful for support, with every secret left out.
pub fn diagnostics(ctx: &CommandContext, jobs: &dyn JobHost) -> serde_json::Value {
    let c = &ctx.config;
    let credentials = match &c.credentials {
        Credentials::Basic { user, .. } => {
            json!({"style": "basic", "user": user, "password": connectivity_protocol::secret::MASK})
        }
        Credentials::OAuth {
            token_url,
            client_id,
            scope,
            ..
        } => json!({
            "style": "oauth2_client_credentials", "token_url": token_url.as_str(), "client_id": client_id,
            "client_secret": connectivity_protocol::secret::MASK, "scope": scope,
        }),
    };
    let proxy = c.proxy.as_ref().map(|p| json!({
        "address": p.address(), "protocol": format!("{:?}", p.protocol).to_lowercase(),
        "user": p.auth.as_ref().map(|(u, _)| u.clone()), "password": p.auth.as_ref().map(|_| connectivity_protocol::secret::MASK),
        "non_proxy_hosts": p.non_proxy_hosts, "source": p.source,
    }));
    // Job states hold no secrets (JobState carries ids, phases, offsets, errors).
    let states = serde_json::to_value(jobs.states()).unwrap_or_default();
    json!({
        "agent": {
            "id": ctx.agent_id, "name": c.agent_name, "group": c.group, "version": env!("CARGO_PKG_VERSION"),
            "protocol_version": connectivity_protocol::PROTOCOL_VERSION,
            "uptime_secs": ctx.started.elapsed().as_secs(),
            "host": connectivity_protocol::HostFacts::current(),
        },
        "config": {
            "profile": c.profile_path.display().to_string(), "control_plane": c.control_plane.as_str(),
            "credentials": credentials, "proxy": proxy, "ca_file": c.ca_file.as_ref().map(|p| p.display().to_string()),
            "state_dir": c.state_dir.display().to_string(), "log_level": c.log_level,
            "allowed_endpoints": c.allowed_endpoints.to_string(), "drain_timeout_secs": c.drain_timeout.as_secs(),
            "session_grace_secs": c.session_grace.as_secs(),
            "metrics_address": c.metrics_address.map(|a| a.to_string()),
            "memory_trim_secs": c.memory_trim.map_or(0, |d| d.as_secs()),
        },
        "connection": ctx.session.lock().map(|s| s.clone()).unwrap_or_default(),
        "jobs": states,
        "recent_log": crate::logging::recent_lines(),
    })
}
