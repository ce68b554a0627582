//! The state every session and handler shares: configuration, the agent
//! registry, job service, sink, command hub, audit log, metrics, and the
//! tokens that stop it. `ControlPlane::start` builds it once; the HTTP layer
//! ([`crate::http`]) and the agent sessions ([`crate::session`]) read it.

use crate::auth::Authenticator;
use crate::config::ControlPlaneConfig;
use crate::jobs::JobService;
use crate::registry::Registry;
use crate::sink::BatchSink;
use crate::tokens::TokenStore;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// State shared by every handler and session.
pub(crate) struct Shared {
    pub config: Arc<ControlPlaneConfig>,
    pub registry: Arc<Registry>,
    pub tokens: Arc<TokenStore>,
    pub auth: Authenticator,
    /// Job definitions and assignment.
    pub jobs: Arc<JobService>,
    /// Where batches go: the jobs' delivery, or a test's sink.
    pub sink: Arc<dyn BatchSink>,
    /// The root token: cancelled to start the graceful stop.
    pub shutdown: CancellationToken,
    /// Cancelled when the graceful stop's deadline has passed.
    pub hard_stop: CancellationToken,
    /// Connections and sessions, awaited on shutdown.
    pub tasks: TaskTracker,
    /// Console commands on their way to agents.
    pub commands: Arc<crate::commands::CommandHub>,
    /// Stream connections, publishes and reads through agents.
    pub streams: Arc<crate::streams::StreamService>,
    /// Who did what through the console.
    pub audit: Arc<crate::audit::AuditLog>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Rate limit of the log lines about clients refusing our certificate.
    pub refusals: crate::certificate::RefusalLog,
    /// Browser sessions of the web console.
    pub console_sessions: crate::console_sessions::ConsoleSessions,
}
