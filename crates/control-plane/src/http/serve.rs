//! The one HTTPS port: TLS accept loop, HTTP/1.1 with upgrades, and
//! the two-phase graceful stop (stop accepting, then let sessions say goodbye
//! and close, all under `shutdown_timeout`).

use super::read_ahead::ReadAhead;
use super::router;
use crate::state::Shared;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

/// Open connections (HTTP and WebSocket) at most; more are refused at accept.
pub const MAX_CONNECTIONS: usize = 4096;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connections left at the deadline get to drop.
const HARD_STOP_GRACE: Duration = Duration::from_millis(500);

/// Serve until `shared.shutdown` is cancelled, then stop gracefully.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(shared.config.tls.server_config.clone());
    let mut make_service =
        router(shared.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%remote, limit = MAX_CONNECTIONS, "too many open connections; refusing one");
            continue;
        };
        let service = match make_service.call(remote).await {
            Ok(s) => s,
            Err(never) => match never {},
        };
        let hyper_service =
            hyper::service::service_fn(move |req: Request<Incoming>| service.clone().call(req));
        shared.tasks.spawn(connection(
            tcp,
            remote,
            acceptor.clone(),
            hyper_service,
            shared.clone(),
            permit,
        ));
    }
    drop(listener);
    tracing::info!(
        open = shared.tasks.len(),
        "stopped accepting; closing sessions"
    );
    shared.tasks.close();
    let deadline = tokio::time::Instant::now() + shared.config.shutdown_timeout;
    if tokio::time::timeout_at(deadline, shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = shared.tasks.len(),
            "connections still open at the shutdown deadline; dropping them"
        );
        shared.hard_stop.cancel();
        let _ = tokio::time::timeout(HARD_STOP_GRACE, shared.tasks.wait()).await;
    }
    // Sinks finish the attempt in progress (a batch whose agent is gone
    // still gets its watermarks, so its resend is dropped as a duplicate).
    let delivery_deadline = deadline.max(tokio::time::Instant::now() + HARD_STOP_GRACE);
    if tokio::time::timeout_at(delivery_deadline, shared.jobs.delivery().shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "a sink was still busy at the shutdown deadline; its batch will be resent by the agent"
        );
    }
    tracing::info!("control plane stopped");
    Ok(())
}

/// A failed TLS handshake: when the client refused our certificate (its
/// alert says so), count it and say why and what fixes it, once per source
/// per [`REFUSAL_LOG_INTERVAL`](crate::certificate::REFUSAL_LOG_INTERVAL).
fn handshake_failed(shared: &Shared, remote: SocketAddr, err: &std::io::Error) {
    let leaf = &shared.config.tls.certificate;
    let refusal = match connectivity_common::tls::diagnose::rustls_error(err) {
        Some(rustls::Error::AlertReceived(alert)) => {
            crate::certificate::refusal_cause(*alert, leaf).map(|cause| (*alert, cause))
        }
        _ => None,
    };
    let Some((alert, cause)) = refusal else {
        tracing::debug!(%remote, %err, "tls handshake failed");
        return;
    };
    shared.metrics.certificate_refused(alert);
    if shared.refusals.due(remote.ip(), std::time::Instant::now()) {
        tracing::warn!(%remote, alert = ?alert, %cause, "a client refused the control plane's certificate");
    }
}

/// One TCP connection: TLS handshake, then HTTP/1.1 until it closes, is
/// upgraded to a WebSocket, or the server stops.
async fn connection<S>(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    service: S,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) where
    S: hyper::service::Service<Request<Incoming>, Response = axum::response::Response>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        r = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(ReadAhead::new(tcp))) => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                handshake_failed(&shared, remote, &err);
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "tls handshake timed out");
                return;
            }
        },
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(err) = r {
                tracing::debug!(%remote, %err, "http connection ended with an error");
            }
            return;
        }
        _ = shared.shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    tokio::select! {
        _ = conn => {}
        _ = shared.hard_stop.cancelled() => {}
    }
}
