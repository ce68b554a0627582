//! Operators' commands, executed on the agent: test a stream connection from
//! inside the private network, pause/resume/drain a job, restart, change the
//! log level, and build a diagnostics bundle with every secret removed.

use super::jobs::JobHost;
use crate::config::{AgentConfig, Credentials};
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
}

impl CommandContext {
    pub fn new(config: AgentConfig, agent_id: String, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(CommandContext {
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
    let done = |ok: bool, message: String, data: Option<serde_json::Value>| CommandResult {
        command_id: command_id.clone(),
        ok,
        message,
        data,
    };
    match command {
        Command::TestConnection { params, timeout_ms } => {
            let deadline = Duration::from_millis(timeout_ms).min(MAX_TEST_TIMEOUT);
            let report = crate::kafka::probe::test_connection(
                &params,
                &ctx.config.allowed_endpoints,
                deadline,
            )
            .await;
            let message = report.summary();
            done(report.ok, message, serde_json::to_value(&report).ok())
        }
        Command::PauseJob { job_id } => {
            let ok = jobs.pause(&job_id);
            done(
                ok,
                if ok {
                    format!("job {job_id} paused")
                } else {
                    format!("job {job_id} does not run on this agent")
                },
                None,
            )
        }
        Command::ResumeJob { job_id } => {
            let ok = jobs.resume(&job_id);
            done(
                ok,
                if ok {
                    format!("job {job_id} resumed")
                } else {
                    format!("job {job_id} does not run on this agent")
                },
                None,
            )
        }
        Command::DrainJob { job_id } => {
            let known = jobs.job_ids().contains(&job_id);
            if known {
                jobs.revoke(&job_id);
            }
            done(
                known,
                if known {
                    format!(
                        "job {job_id} draining: in-flight batches finish, offsets are committed, then it stops"
                    )
                } else {
                    format!("job {job_id} does not run on this agent")
                },
                None,
            )
        }
        Command::Restart => {
            ctx.restart_requested.store(true, Ordering::SeqCst);
            ctx.shutdown.cancel();
            done(
                true,
                format!(
                    "restarting: draining, then exiting with code {} for the supervisor to start it again",
                    connectivity_protocol::command::EX_RESTART
                ),
                None,
            )
        }
        Command::SetLogLevel { level } => match crate::logging::set_level(&level) {
            Ok(()) => {
                tracing::info!(%level, "log level changed by the control plane");
                done(true, format!("log level is now {level}"), None)
            }
            Err(e) => done(false, e, None),
        },
        Command::Diagnostics => done(
            true,
            "diagnostics bundle".into(),
            Some(diagnostics(ctx, jobs)),
        ),
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
