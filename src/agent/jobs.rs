//! What a session needs from the poll jobs: somewhere to route job messages
//! and acks, and a way to tell them the session came or went.

use connectivity_protocol::JobSpec;
use futures_util::future::BoxFuture;
use std::time::Duration;
use tokio::sync::mpsc;

pub use crate::relay::Outbound;

/// The agent's jobs as seen by a session. Methods take `&self` because the
/// session's reader (acks) and its drain (shutdown) use them at once.
pub trait JobHost: Send + Sync {
    /// Start or replace a job.
    fn assign(&self, spec: JobSpec);
    /// Stop a job: drain, commit, leave the consumer group.
    fn revoke(&self, job_id: &str);
    /// The control plane acked a batch.
    fn ack(&self, job_id: &str, batch_seq: u64);
    /// A session is up: send through `out`, resending unacked batches first.
    fn session_restored(&self, out: mpsc::Sender<Outbound>);
    /// The session is gone: stop fetching; leave the groups after the grace.
    fn session_lost(&self);
    /// Stop fetching, wait (at most `deadline`) for in-flight batches to be
    /// acked, commit, stop.
    fn drain(&self, deadline: Duration) -> BoxFuture<'static, ()>;
    /// Ids of running jobs.
    fn job_ids(&self) -> Vec<String>;
    /// Stop fetching for a job (in-flight batches still complete); false
    /// when the job does not run here.
    fn pause(&self, _job_id: &str) -> bool {
        false
    }
    /// Fetch again after a pause.
    fn resume(&self, _job_id: &str) -> bool {
        false
    }
    /// Latest state of every job.
    fn states(&self) -> Vec<connectivity_protocol::JobState> {
        Vec::new()
    }
}

impl JobHost for crate::relay::Jobs {
    fn assign(&self, spec: JobSpec) {
        crate::relay::Jobs::assign(self, spec)
    }
    fn revoke(&self, job_id: &str) {
        crate::relay::Jobs::revoke(self, job_id);
    }
    fn ack(&self, job_id: &str, batch_seq: u64) {
        crate::relay::Jobs::ack(self, job_id, batch_seq)
    }
    fn session_restored(&self, out: mpsc::Sender<Outbound>) {
        crate::relay::Jobs::session_restored(self, out)
    }
    fn session_lost(&self) {
        crate::relay::Jobs::session_lost(self)
    }
    fn drain(&self, deadline: Duration) -> BoxFuture<'static, ()> {
        self.drain_all(deadline)
    }
    fn job_ids(&self) -> Vec<String> {
        crate::relay::Jobs::job_ids(self)
    }
    fn pause(&self, job_id: &str) -> bool {
        crate::relay::Jobs::pause(self, job_id)
    }
    fn resume(&self, job_id: &str) -> bool {
        crate::relay::Jobs::resume(self, job_id)
    }
    fn states(&self) -> Vec<connectivity_protocol::JobState> {
        crate::relay::Jobs::states(self)
    }
}
