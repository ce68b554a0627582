//! Embedding the control plane in another tokio/axum program, with a sink
//! of its own (docs/CONTROL_PLANE.md "Embedding").
//!
//! An integration service keeps its own HTTP API (here one route on a
//! second port that says how many records arrived) and runs the control
//! plane beside it on the same runtime, under the same shutdown token. Its
//! sink receives every batch agents relay; returning `Ok` acknowledges the
//! batch to the agent, which only then commits the offsets.
//!
//! ```sh
//! control-plane init ./cp --host localhost     # config, certificates, an agent profile
//! cargo run -p connectivity-control-plane --example embed -- ./cp/control-plane.toml
//! connectivity-agent run --config ./cp/agent/InstallerProfile.cfg
//! curl http://127.0.0.1:8080/records
//! ```

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use connectivity_control_plane::{
    BatchOrigin, BatchSink, ControlPlane, ControlPlaneConfig, SinkError, StartOptions,
};
use connectivity_protocol::Batch;
use futures_util::future::BoxFuture;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The service's own sink: counts records. A real one would hand them to
/// its pipeline and return only once they are safely stored.
#[derive(Default)]
struct CountingSink {
    records: AtomicU64,
}

impl BatchSink for CountingSink {
    fn deliver<'a>(
        &'a self,
        origin: &'a BatchOrigin,
        batch: Batch,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let n = batch.records.len() as u64;
            self.records.fetch_add(n, Ordering::Relaxed);
            tracing::info!(agent = %origin.agent_id, job = %batch.job_id, records = n, "batch received");
            Ok(())
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().init();
    connectivity_common::tls::install_default_provider();
    let path = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("control-plane.toml"));
    let config = ControlPlaneConfig::load(&path)?;
    let shutdown = CancellationToken::new();
    let sink = Arc::new(CountingSink::default());

    // The control plane on its own HTTPS port, batches to our sink.
    let listener = TcpListener::bind(config.listen).await?;
    let options = StartOptions {
        sink: Some(sink.clone()),
        ..StartOptions::default()
    };
    let control_plane =
        ControlPlane::start_with(config, listener, shutdown.clone(), options).await?;
    tracing::info!(addr = %control_plane.local_addr(), "control plane started");

    // The service's own API beside it.
    let api = Router::new()
        .route("/records", get(records))
        .with_state(sink);
    let api_listener = TcpListener::bind("127.0.0.1:8080").await?;
    let stop = shutdown.clone();
    let api_server = axum::serve(api_listener, api)
        .with_graceful_shutdown(async move { stop.cancelled().await });

    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        }
    });
    api_server.await?;
    control_plane.stopped().await
}

async fn records(State(sink): State<Arc<CountingSink>>) -> String {
    format!("{}\n", sink.records.load(Ordering::Relaxed))
}
