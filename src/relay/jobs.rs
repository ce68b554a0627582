//! The agent's poll jobs by id: what a session calls when the control plane
//! assigns, revokes or acks, and when the session itself comes and goes.
//!
//! A revoked or replaced job drains in the background; until it is done it
//! still receives acks (batch numbers are unique per process, so an ack
//! reaches exactly the job that sent the batch) and session changes.

use crate::allowlist::AllowList;
use crate::relay::job::{self, JobHandle, Shared};
use crate::relay::{Outbound, RelaySettings};
use connectivity_protocol::job::{JobSpec, JobState};
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The agent's jobs. Methods take `&self` (a session's reader and its
/// shutdown use them at once) and never block.
pub struct Jobs {
    allow: AllowList,
    settings: RelaySettings,
    cancel: CancellationToken,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    active: HashMap<String, JobHandle>,
    retiring: Vec<Retiring>,
    /// Jobs of a graceful stop ([`Jobs::drain_all`]): out of `active` and
    /// `retiring`, but still waiting for acks, which must reach them.
    draining: Vec<Weak<Shared>>,
    /// The current session's channel, for jobs assigned from now on.
    out: Option<mpsc::Sender<Outbound>>,
}

/// A job that was revoked or replaced and is draining.
struct Retiring {
    shared: Weak<Shared>,
    done: JoinHandle<()>,
}

impl Jobs {
    /// `cancel` is the agent's root token: cancelling it stops every job.
    pub fn new(allow: AllowList, settings: RelaySettings, cancel: CancellationToken) -> Self {
        Jobs {
            allow,
            settings,
            cancel,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.retiring.retain(|r| !r.done.is_finished());
        inner
    }

    /// Start a job, or replace it if its spec changed (the old one drains
    /// first in the background). The same spec again changes nothing.
    pub fn assign(&self, spec: JobSpec) {
        let mut inner = self.lock();
        if inner
            .active
            .get(&spec.id)
            .is_some_and(|h| h.spec() == &spec)
        {
            return;
        }
        if let Some(old) = inner.active.remove(&spec.id) {
            tracing::info!(job = %spec.id, "job spec changed; replacing the job");
            self.retire(&mut inner, old);
        }
        let h = job::spawn_with(
            spec,
            &self.allow,
            self.settings.clone(),
            inner.out.clone(),
            self.cancel.clone(),
        );
        inner.active.insert(h.id().to_owned(), h);
    }

    fn retire(&self, inner: &mut Inner, h: JobHandle) {
        let shared = Arc::downgrade(h.shared());
        let done = tokio::spawn(h.drain(self.settings.revoke_deadline));
        inner.retiring.push(Retiring { shared, done });
    }

    /// Stop a job: drain, commit, leave the group (in the background).
    /// False if there is no such job.
    pub fn revoke(&self, job_id: &str) -> bool {
        let mut inner = self.lock();
        match inner.active.remove(job_id) {
            Some(h) => {
                self.retire(&mut inner, h);
                true
            }
            None => false,
        }
    }

    /// The control plane acked a batch of `job_id`.
    pub fn ack(&self, job_id: &str, batch_seq: u64) {
        let inner = self.lock();
        if let Some(h) = inner.active.get(job_id) {
            h.ack(batch_seq);
        }
        let retiring = inner.retiring.iter().map(|r| &r.shared);
        for shared in retiring.chain(&inner.draining) {
            if let Some(s) = shared.upgrade().filter(|s| s.job_id == job_id) {
                s.ack(batch_seq);
            }
        }
    }

    /// A session is up: every job sends through `out`, unacked batches first.
    pub fn session_restored(&self, out: mpsc::Sender<Outbound>) {
        let mut inner = self.lock();
        inner.out = Some(out.clone());
        for h in inner.active.values() {
            h.session_restored(out.clone());
        }
        for s in inner.retiring.iter().filter_map(|r| r.shared.upgrade()) {
            s.session_restored(out.clone());
        }
    }

    /// The session is gone: jobs stop fetching and leave their groups after
    /// the grace period.
    pub fn session_lost(&self) {
        let mut inner = self.lock();
        inner.out = None;
        for h in inner.active.values() {
            h.session_lost();
        }
        for s in inner.retiring.iter().filter_map(|r| r.shared.upgrade()) {
            s.session_lost();
        }
    }

    pub fn pause(&self, job_id: &str) -> bool {
        self.lock()
            .active
            .get(job_id)
            .map(JobHandle::pause)
            .is_some()
    }

    pub fn resume(&self, job_id: &str) -> bool {
        self.lock()
            .active
            .get(job_id)
            .map(JobHandle::resume)
            .is_some()
    }

    /// Ids of the active jobs, sorted.
    pub fn job_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().active.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Latest state of every active job, by id.
    pub fn states(&self) -> Vec<JobState> {
        let inner = self.lock();
        let mut v: Vec<JobState> = inner.active.values().map(JobHandle::state).collect();
        v.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        v
    }

    /// Graceful stop of everything: active jobs drain (stop fetching, wait
    /// for acks, commit, leave), retiring ones finish; all within `deadline`.
    pub fn drain_all(&self, deadline: Duration) -> BoxFuture<'static, ()> {
        let mut inner = self.lock();
        let active: Vec<JobHandle> = inner.active.drain().map(|(_, h)| h).collect();
        let retiring: Vec<Retiring> = inner.retiring.drain(..).collect();
        // A drain waits for the acks of what is in flight: they must still
        // find their job, or every graceful stop with batches in flight ran
        // into its deadline and left acked records uncommitted.
        inner.draining = active
            .iter()
            .map(|h| Arc::downgrade(h.shared()))
            .chain(retiring.iter().map(|r| r.shared.clone()))
            .collect();
        let retiring: Vec<JoinHandle<()>> = retiring.into_iter().map(|r| r.done).collect();
        drop(inner);
        Box::pin(async move {
            let drains = active.into_iter().map(|h| h.drain(deadline));
            let rest = async {
                let _ = tokio::time::timeout(
                    deadline + Duration::from_secs(12),
                    futures_util::future::join_all(retiring),
                )
                .await;
            };
            futures_util::future::join(futures_util::future::join_all(drains), rest).await;
        })
    }
}
