//! The agent process as a whole: its poll jobs plus the session loop.

use super::{AgentError, Stopped};
use crate::config::AgentConfig;
use crate::relay::{Jobs, RelaySettings};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Run the agent with real poll jobs until `shutdown` or a permanent error.
pub async fn run_agent(
    config: AgentConfig,
    shutdown: CancellationToken,
) -> Result<Stopped, AgentError> {
    let settings = RelaySettings {
        session_grace: config.session_grace,
        ..RelaySettings::default()
    };
    // Jobs get their own token: they must outlive the session's shutdown
    // signal long enough to drain, and are stopped when this function returns.
    let jobs_cancel = CancellationToken::new();
    let jobs = Jobs::new(
        config.allowed_endpoints.clone(),
        settings,
        jobs_cancel.clone(),
    );
    // Every task and token below is stopped when this function returns, the
    // early error return included.
    let _stop_jobs = jobs_cancel.drop_guard();
    let _watchdog = AbortOnDropHandle::new(tokio::spawn(feed_watchdog()));
    let _trim = config.memory_trim.map(|every| {
        AbortOnDropHandle::new(tokio::spawn(
            connectivity_common::memory::trim_periodically(every),
        ))
    });
    let metrics_stop = CancellationToken::new();
    let _stop_metrics = metrics_stop.clone().drop_guard();
    if let Some(addr) = config.metrics_address {
        match crate::metrics::serve(addr, metrics_stop.clone()).await {
            Ok(local) => {
                tracing::info!(address = %local, "metrics and health served on /metrics and /healthz")
            }
            Err(e) => {
                return Err(AgentError::Setup(format!(
                    "cannot serve metrics on {addr} (agent_METRICS_ADDRESS): {e}"
                )));
            }
        }
    }
    super::run(config, &jobs, shutdown).await
}

/// Ping systemd's watchdog while the main loop makes progress. Every network
/// step of the loop has a timeout of at most 10 s, so a loop silent for a
/// minute is stuck, and systemd should restart it.
async fn feed_watchdog() {
    let Some(interval) = crate::service::watchdog_interval() else {
        return;
    };
    loop {
        if super::since_progress() < std::time::Duration::from_secs(60) {
            crate::service::watchdog_ping();
        }
        tokio::time::sleep(interval).await;
    }
}
