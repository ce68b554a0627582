//! The reference control plane: the cloud side agents connect to.
//!
//! One HTTPS port serves the agent WebSocket (`/agent/v1`), the OAuth2 token
//! endpoint (`/oauth2/v1/token`), the console API (`/api/v1/...`) and
//! `/healthz`. The binary (`src/bin/control-plane.rs`) only parses arguments,
//! loads the [`ControlPlaneConfig`] and calls [`run`]; tests call
//! [`ControlPlane::start`] to get the address, the [`Registry`] and the
//! [`JobService`].
//!
//! Two layers, and data flows one way between them:
//!
//! - [`http`](crate::http) (private): the port, routing, the agent WebSocket
//!   upgrade, the OAuth2 token endpoint and the console API. It reads the
//!   core through [`state::Shared`](crate::state).
//! - the core: [`session`] (one agent's WebSocket session), [`registry`]
//!   (known agents and their job states), [`status`] (the agent states the
//!   console shows), [`jobs`] (job definitions and their assignment to
//!   agents), [`job_input`] (job definitions as people write them),
//!   [`commands`] (commands to agents and their answers), [`sink`] and
//!   [`delivery`] (where batches go, watermarks, acks), [`auth`]
//!   (credentials and hashes), [`tokens`] (issued OAuth2 tokens),
//!   [`login_limit`] (failed logins per source and name), [`audit`] (who did
//!   what), [`metrics`] (`/metrics`).
//!
//! Beside them: [`config`] (TOML to validated config), [`certificate`] (its
//! own TLS certificate: checks, expiry, why clients refuse it) and [`init`]
//! (`control-plane init`: a first config, its CA and certificates from
//! [`pki`]). The web console (`/console/`, `docs/CONSOLE.md`) is a page of
//! the HTTP layer on the console API; its logins are [`console_sessions`].
//! `docs/ARCHITECTURE.md` draws the whole picture.
#![forbid(unsafe_code)]
// ConfigError carries file, line, key, value and fix on purpose; it only
// travels the start-up path, where its size costs nothing.
#![allow(clippy::result_large_err)]

pub mod audit;
pub mod auth;
pub mod certificate;
pub mod commands;
pub mod config;
pub mod console_sessions;
pub mod delivery;
mod hashes;
mod http;
pub mod init;
pub mod job_input;
pub mod jobs;
pub mod login_limit;
pub mod metrics;
pub mod pki;
pub mod registry;
pub mod session;
pub mod sink;
mod state;
pub mod status;
pub mod streams;
pub mod tokens;

pub use config::{ConfigError, ControlPlaneConfig};
pub use jobs::{JobChangeError, JobService, JobView};
pub use registry::{AgentJobState, AgentRecord, AgentState, Registry};
pub use sink::{BatchOrigin, BatchSink, NoSink, SinkError, Submitted};

use crate::delivery::{Delivery, DeliveryOptions, Store};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serve on `listener` until `shutdown` is cancelled, then stop gracefully.
/// Jobs and their watermarks live in `config.state_dir`.
pub async fn run(
    config: ControlPlaneConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    ControlPlane::start(config, listener, shutdown)
        .await?
        .stopped()
        .await
}

/// What a test or a benchmark may change about [`ControlPlane::start_with`].
#[derive(Clone, Default)]
pub struct StartOptions {
    /// Batches go here instead of to the jobs' sinks (the jobs are still
    /// defined, assigned and shown as usual).
    pub sink: Option<Arc<dyn BatchSink>>,
    /// Delivery tunables; default: [`DeliveryOptions::new`] with the
    /// system's CAs and `webhook_ca_file` for webhooks.
    pub delivery: Option<DeliveryOptions>,
}

/// A running control plane.
pub struct ControlPlane {
    local_addr: SocketAddr,
    registry: Arc<Registry>,
    jobs: Arc<JobService>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl ControlPlane {
    /// Open the job store in `config.state_dir` (created, mode 0700, if
    /// missing), load the config's `[[jobs]]` into it, and serve on
    /// `listener` (already bound, so it accepts at once). Batches go to the
    /// jobs' sinks. A config job that clashes with a stored job fails with a
    /// [`ConfigError`] inside the `anyhow::Error`.
    pub async fn start(
        config: ControlPlaneConfig,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        Self::start_with(config, listener, shutdown, StartOptions::default()).await
    }

    /// [`start`](Self::start) with a custom sink or delivery options.
    pub async fn start_with(
        config: ControlPlaneConfig,
        listener: TcpListener,
        shutdown: CancellationToken,
        options: StartOptions,
    ) -> anyhow::Result<Self> {
        let local_addr = listener
            .local_addr()
            .context("listener has no local address")?;
        for w in &config.warnings {
            tracing::warn!(config = %config.path.display(), "{w}");
        }
        let config = Arc::new(config);
        // Before the delivery: kafka sinks publish through them.
        let (streams, commands) = open_streams(&config.state_dir).await?;
        let mut delivery_options = options
            .delivery
            .unwrap_or_else(|| DeliveryOptions::new(config.webhook_tls.clone()));
        delivery_options.publisher = Some(delivery::Publisher {
            streams: streams.clone(),
            commands: commands.clone(),
        });
        let delivery = open_delivery(&config.state_dir, delivery_options).await?;
        let registry = Arc::new(Registry::with_heartbeat_interval(
            config.max_agents,
            config.heartbeat_interval,
        ));
        let audit = audit::AuditLog::open(&config.state_dir).with_context(|| {
            format!(
                "cannot open the audit log in {}",
                config.state_dir.display()
            )
        })?;
        let jobs =
            Arc::new(JobService::open(config.clone(), delivery.clone(), registry.clone()).await?);
        let tokens = Arc::new(tokens::TokenStore::new(
            config.token_ttl,
            tokens::MAX_TOKENS,
        ));
        let shared = Arc::new(state::Shared {
            auth: auth::Authenticator::new(config.clone(), tokens.clone()),
            config,
            registry: registry.clone(),
            tokens,
            jobs: jobs.clone(),
            sink: options.sink.unwrap_or_else(|| Arc::new(delivery)),
            shutdown,
            hard_stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            commands,
            streams,
            audit: Arc::new(audit),
            metrics: Arc::new(metrics::Metrics::new()),
            refusals: certificate::RefusalLog::default(),
            console_sessions: console_sessions::ConsoleSessions::default(),
        });
        shared
            .metrics
            .set_certificate_expiry(shared.config.tls.certificate.not_after);
        tracing::info!(%local_addr, groups = shared.config.groups.len(), jobs = jobs.delivery().jobs().len(), "control plane listening");
        let task = tokio::spawn(http::serve(listener, shared));
        Ok(ControlPlane {
            local_addr,
            registry,
            jobs,
            task,
        })
    }

    /// The address it listens on (useful when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The agent registry, for inspection.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The jobs: definitions, assignment, delivery ([`JobService::delivery`]).
    pub fn jobs(&self) -> Arc<JobService> {
        self.jobs.clone()
    }

    /// Wait until the server has stopped (after its shutdown token is cancelled).
    pub async fn stopped(self) -> anyhow::Result<()> {
        self.task.await.context("control plane task panicked")?
    }
}

/// The stream connections (in the state directory, created if missing) and
/// the command hub their requests reach agents through.
async fn open_streams(
    state_dir: &Path,
) -> anyhow::Result<(Arc<streams::StreamService>, Arc<commands::CommandHub>)> {
    create_state_dir(state_dir)?;
    let streams = streams::StreamService::open(state_dir)
        .await
        .with_context(|| format!("cannot open the stream store in {}", state_dir.display()))?;
    Ok((Arc::new(streams), Arc::default()))
}

/// The state directory (private: the store holds job secrets) and the
/// delivery pipeline on its store.
async fn open_delivery(state_dir: &Path, options: DeliveryOptions) -> anyhow::Result<Delivery> {
    create_state_dir(state_dir)?;
    let store = Store::open_in(state_dir)
        .await
        .with_context(|| format!("cannot open the job store in {}", state_dir.display()))?;
    Delivery::open(store, options)
        .await
        .context("cannot load the jobs from the job store")
}

/// The state directory, mode 0700: its stores hold secrets.
fn create_state_dir(state_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .with_context(|| {
            format!(
                "cannot create the state directory {} (state_dir)",
                state_dir.display()
            )
        })
}
