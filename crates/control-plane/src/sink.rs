//! Where decoded batches go: the hook between agent sessions and whatever
//! consumes the records (an integration, a file, a queue).
//!
//! A session hands each decoded batch to the [`BatchSink`] and acknowledges
//! it to the agent (`ControlMessage::Ack`) only when the sink returns `Ok`:
//! the agent counts records as delivered, and commits their offsets, on that
//! ack alone. So a sink must return `Ok` only once the batch is safely handed
//! over, and an error means "not delivered, do not ack".
//!
//! The session hands batches over with [`BatchSink::submit`], in the order
//! they arrived, and goes on reading frames while earlier batches are being
//! delivered or wait for the sink to take them (a full queue), up to a
//! bound of its own; past it the session reads nothing more, and
//! back-pressure reaches the agent through its in-flight window. Heartbeats
//! go on.

use crate::delivery::Delivery;
use connectivity_protocol::Batch;
use futures_util::future::BoxFuture;

/// Which session a batch arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOrigin {
    pub agent_id: String,
    pub group: String,
    pub session_id: String,
}

/// Why a sink did not take a batch. The batch is not acknowledged, so the
/// agent keeps it in flight (and redelivers it on its next session).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// No sink is set up for this job.
    #[error("no sink is configured for job {job_id:?}")]
    NoRoute { job_id: String },
    /// The sink did not take the batch; the message says why.
    #[error("{0}")]
    Failed(String),
}

/// The outcome of a batch already handed over ([`BatchSink::submit`]).
pub type Submitted = BoxFuture<'static, Result<(), SinkError>>;

/// Receives every decoded batch. Implementations are shared by all sessions.
pub trait BatchSink: Send + Sync + 'static {
    /// Take responsibility for `batch`. Resolve `Ok` only when it is safe to
    /// tell the agent the records are delivered.
    fn deliver<'a>(
        &'a self,
        origin: &'a BatchOrigin,
        batch: Batch,
    ) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Take `batch` behind the batches submitted before it, and resolve once
    /// it has its place, with its outcome (as [`deliver`](Self::deliver)'s)
    /// to await. A session submits an agent's batches in the order they
    /// arrived and keeps several in flight. The default delivers the batch
    /// in full first: one batch at a time, in order.
    // Yielding a future is the point: the second step, awaited later.
    #[allow(clippy::async_yields_async)]
    fn submit<'a>(&'a self, origin: &'a BatchOrigin, batch: Batch) -> BoxFuture<'a, Submitted> {
        Box::pin(async move {
            let outcome = self.deliver(origin, batch).await;
            Box::pin(std::future::ready(outcome)) as Submitted
        })
    }
}

/// The default until jobs have sinks: refuses every batch, so nothing is
/// acknowledged that was not delivered.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSink;

impl BatchSink for NoSink {
    fn deliver<'a>(
        &'a self,
        _origin: &'a BatchOrigin,
        batch: Batch,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            Err(SinkError::NoRoute {
                job_id: batch.job_id,
            })
        })
    }
}

/// The control plane's own sink: each job's [`Delivery`] (dedup, value
/// format, the job's sink with retries, watermarks). `Ok` means the job's
/// sink accepted the batch, or that it held only records already delivered.
impl BatchSink for Delivery {
    fn deliver<'a>(
        &'a self,
        _origin: &'a BatchOrigin,
        batch: Batch,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            match Delivery::deliver(self, batch).await {
                Ok(_ack) => Ok(()),
                Err(e) => Err(SinkError::Failed(e.to_string())),
            }
        })
    }

    /// The batch goes into its job's queue; the session reads on while the
    /// job's worker delivers it (with the batches queued beside it).
    #[allow(clippy::async_yields_async)]
    fn submit<'a>(&'a self, _origin: &'a BatchOrigin, batch: Batch) -> BoxFuture<'a, Submitted> {
        Box::pin(async move {
            match self.enqueue(batch).await {
                Ok(queued) => Box::pin(async move {
                    queued
                        .outcome()
                        .await
                        .map(|_ack| ())
                        .map_err(|e| SinkError::Failed(e.to_string()))
                }) as Submitted,
                Err(e) => Box::pin(std::future::ready(Err(SinkError::Failed(e.to_string())))),
            }
        })
    }
}
