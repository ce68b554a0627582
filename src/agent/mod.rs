//! The agent: keep one outbound session to the control plane alive, forever,
//! and run the poll jobs it assigns.
//!
//! Transient failures are retried with capped, jittered backoff that resets
//! only after a session was established. Refused credentials, a refused
//! protocol version and an unknown group are permanent: [`run`] returns
//! [`AgentError::Refused`] and the process exits non-zero (78) so the
//! supervisor shows the reason instead of restarting into the same wall.

pub mod auth;
pub mod certificate;
pub mod check;
pub mod commands;
pub mod connect;
pub mod identity;
pub mod jobs;
pub mod runner;
pub mod session;

use crate::config::AgentConfig;
use connect::Connector;
use connectivity_common::backoff::Backoff;
use connectivity_protocol::{Hello, HostFacts, PROTOCOL_VERSION};
use jobs::JobHost;
use session::{SessionEnd, SessionError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

/// When the agent's main loop last made progress (ms since the epoch); the
/// systemd watchdog is only fed while this is recent.
static PROGRESS_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Record that the main loop is alive.
pub fn mark_progress() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    PROGRESS_MS.store(now, std::sync::atomic::Ordering::Relaxed);
}

/// How long ago the main loop last made progress.
pub fn since_progress() -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Duration::from_millis(
        now.saturating_sub(PROGRESS_MS.load(std::sync::atomic::Ordering::Relaxed)),
    )
}

/// Exit code for a permanent refusal (sysexits.h EX_CONFIG).
pub const EX_CONFIG: i32 = 78;

/// Why the agent stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The control plane (or the proxy, or the token endpoint) refused us in
    /// a way that retrying cannot fix.
    #[error("{0}")]
    Refused(String),
    /// Local setup failed (state directory, TLS files).
    #[error("{0}")]
    Setup(String),
}

/// How the agent stopped when it stopped on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM/SIGINT (or the caller's token).
    Shutdown,
    /// An operator asked for a restart; exit with `EX_RESTART`.
    RestartRequested,
}

/// Run the agent until `shutdown` is cancelled or a permanent error occurs.
pub async fn run(
    config: AgentConfig,
    jobs: &dyn JobHost,
    shutdown: CancellationToken,
) -> Result<Stopped, AgentError> {
    let agent_id = identity::load_or_create(&config.state_dir).map_err(AgentError::Setup)?;
    let ctx = commands::CommandContext::new(config.clone(), agent_id.clone(), shutdown.clone());
    let outcome = run_loop(&config, &agent_id, jobs, &ctx, &shutdown).await?;
    Ok(if ctx.restart_requested() {
        Stopped::RestartRequested
    } else {
        outcome
    })
}

/// Keep a session up until shutdown or a permanent refusal: connect,
/// serve the session, back off, again.
async fn run_loop(
    config: &AgentConfig,
    agent_id: &str,
    jobs: &dyn JobHost,
    ctx: &commands::CommandContext,
    shutdown: &CancellationToken,
) -> Result<Stopped, AgentError> {
    let mut sup = Supervisor::new(config, agent_id, jobs, ctx, shutdown)?;
    loop {
        mark_progress();
        if shutdown.is_cancelled() {
            break;
        }
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = sup.attempt() => r,
        };
        let next = match outcome {
            Err((permanent, message)) => sup.attempt_failed(permanent, message),
            Ok((ws, est)) => sup.serve(ws, est).await,
        };
        match next {
            Next::Again => {}
            Next::Done(result) => return result,
            Next::Wait(delay) => {
                if wait(delay, shutdown).await {
                    break;
                }
            }
        }
    }
    // Stopped while not connected: no acks can arrive, so commit what is
    // acked and stop at once.
    crate::service::notify_stopping();
    jobs.drain(Duration::ZERO).await;
    Ok(Stopped::Shutdown)
}

/// What the main loop does after a connection attempt or a session.
enum Next {
    /// Try again at once.
    Again,
    /// Try again after this delay.
    Wait(Duration),
    /// Stop with this outcome.
    Done(Result<Stopped, AgentError>),
}

/// The main loop's means and its memory between attempts.
struct Supervisor<'a> {
    config: &'a AgentConfig,
    jobs: &'a dyn JobHost,
    ctx: &'a commands::CommandContext,
    shutdown: &'a CancellationToken,
    connector: Connector,
    auth: auth::Authenticator,
    hello: Hello,
    backoff: Backoff,
    announced_ready: bool,
    /// A refused bearer token was already replaced once since the last
    /// session.
    oauth_retry_used: bool,
    reconnects: u64,
}

impl<'a> Supervisor<'a> {
    fn new(
        config: &'a AgentConfig,
        agent_id: &str,
        jobs: &'a dyn JobHost,
        ctx: &'a commands::CommandContext,
        shutdown: &'a CancellationToken,
    ) -> Result<Supervisor<'a>, AgentError> {
        let connector = Connector::new(config).map_err(|e| AgentError::Setup(e.to_string()))?;
        let auth = auth::Authenticator::new(config).map_err(|e| AgentError::Setup(e.message))?;
        let hello = hello(config, &connector, agent_id.to_owned());
        info!(
            agent_id = %agent_id,
            name = %config.agent_name,
            group = %config.group,
            control_plane = %config.control_plane,
            proxy = connector.proxy_address().as_deref().unwrap_or("none"),
            "agent starting"
        );
        Ok(Supervisor {
            config,
            jobs,
            ctx,
            shutdown,
            connector,
            auth,
            hello,
            backoff: Backoff::default(),
            announced_ready: false,
            oauth_retry_used: false,
            reconnects: 0,
        })
    }

    /// Authorize, connect and say hello; on failure whether it is
    /// permanent, and why.
    async fn attempt(
        &mut self,
    ) -> Result<(connect::Channel, session::Established), (bool, String)> {
        let authorization = self
            .auth
            .authorization()
            .await
            .map_err(|e| (e.permanent, e.message))?;
        let mut ws = self
            .connector
            .connect(&authorization)
            .await
            .map_err(|e| (e.permanent, e.to_string()))?;
        let est = session::handshake(&mut ws, self.hello.clone())
            .await
            .map_err(|e| (e.is_permanent(), e.to_string()))?;
        Ok((ws, est))
    }

    /// A failed attempt: retry with a new token, give up, or back off.
    fn attempt_failed(&mut self, permanent: bool, message: String) -> Next {
        // A refused bearer token may just have been revoked: fetch a
        // new one once before calling it permanent.
        if permanent
            && self.auth.is_oauth()
            && message.starts_with("auth: the control plane refused")
            && !self.oauth_retry_used
        {
            self.oauth_retry_used = true;
            self.auth.invalidate();
            warn!(%message, "token refused; fetching a new one");
            return Next::Again;
        }
        if permanent {
            error!(%message, "control plane refused the agent; not retrying");
            return Next::Done(Err(AgentError::Refused(message)));
        }
        let delay = self.backoff.next_delay();
        warn!(error = %message, retry_in = ?delay, attempt = self.backoff.attempts(), "control plane unreachable");
        Next::Wait(delay)
    }

    /// Serve an established session until it ends, then decide what next.
    async fn serve(&mut self, ws: connect::Channel, est: session::Established) -> Next {
        self.established(&est);
        let span = info_span!("session", id = %est.session_id);
        crate::metrics::set_session_connected(true);
        let result = session::run(
            ws,
            &est,
            self.jobs,
            self.ctx,
            self.shutdown,
            self.config.drain_timeout,
        )
        .instrument(span)
        .await;
        crate::metrics::set_session_connected(false);
        if !matches!(result, Ok(SessionEnd::Shutdown)) {
            crate::metrics::count_reconnect();
        }
        self.reconnects += 1;
        self.session_ended(result)
    }

    /// A session is up: reset the backoff, tell systemd, record it for the
    /// status command.
    fn established(&mut self, est: &session::Established) {
        self.backoff.reset();
        self.oauth_retry_used = false;
        info!(session = %est.session_id, heartbeat = ?est.heartbeat_interval, "session established");
        if !self.announced_ready {
            self.announced_ready = true;
            crate::service::notify_ready();
        }
        crate::service::notify_status(&format!("connected to {}", self.config.control_plane));
        self.ctx.set_session(serde_json::json!({
            "state": "connected",
            "session_id": est.session_id,
            "control_plane": self.config.control_plane.as_str(),
            "proxy": self.connector.proxy_address(),
            "heartbeat_interval_ms": est.heartbeat_interval.as_millis() as u64,
            "connected_at_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "reconnects": self.reconnects,
        }));
    }

    /// A session ended: stop (shutdown, refused) or reconnect after a delay.
    fn session_ended(&mut self, result: Result<SessionEnd, SessionError>) -> Next {
        match result {
            Ok(SessionEnd::Shutdown) => return Next::Done(Ok(Stopped::Shutdown)),
            Ok(SessionEnd::ClosedByPeer(reason)) => {
                self.jobs.session_lost();
                warn!(%reason, "control plane closed the session");
            }
            Err(e @ SessionError::Rejected { .. }) => {
                error!(error = %e, "control plane refused the agent; not retrying");
                return Next::Done(Err(AgentError::Refused(e.to_string())));
            }
            Err(e) => {
                self.jobs.session_lost();
                warn!(error = %e, "session lost");
            }
        }
        crate::service::notify_status("reconnecting");
        let delay = self.backoff.next_delay();
        info!(retry_in = ?delay, "reconnecting");
        Next::Wait(delay)
    }
}

/// Sleep for `delay`, pinging the watchdog; `true` when shutdown came first.
async fn wait(delay: Duration, shutdown: &CancellationToken) -> bool {
    let until = tokio::time::Instant::now() + delay;
    loop {
        mark_progress();
        let slice = tokio::time::Instant::now() + Duration::from_secs(5);
        tokio::select! {
            _ = shutdown.cancelled() => return true,
            _ = tokio::time::sleep_until(until.min(slice)) => {
                if tokio::time::Instant::now() >= until {
                    return false;
                }
            }
        }
    }
}

/// The hello this agent introduces itself with (its session and `check`).
fn hello(config: &AgentConfig, connector: &Connector, agent_id: String) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        agent_id,
        agent_name: config.agent_name.clone(),
        group: config.group.clone(),
        host: HostFacts::current(),
        proxy: connector.proxy_address(),
        capabilities: crate::streams::CAPABILITIES
            .iter()
            .map(|c| (*c).to_owned())
            .collect(),
    }
}
