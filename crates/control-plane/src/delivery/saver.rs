//! Saving a job's watermarks off the ack path.
//!
//! A batch is acked as soon as its sink accepted it; its watermarks are
//! saved afterwards, by a future of the job's own. While one write runs, the
//! watermarks of later batches are merged into one pending set (a partition's
//! newest offset wins), and the next write takes all of them in one
//! transaction: a slow store costs fewer, larger writes, never a queue.
//!
//! Why acking first keeps the guarantees: the store's watermarks only serve
//! to drop records an agent sends again. A record acked but not yet saved
//! when the control plane dies is either committed by the agent (it is never
//! sent again) or sent again and then dropped by the JSONL sink's recovery
//! (its line is past the file end the store recorded) or delivered once more
//! to a webhook, the duplicate docs/DELIVERY.md already lists for a crash
//! between the sink and the watermark commit. Nothing is lost: the sink has
//! every acked record.

use super::jsonl::FileEnd;
use super::store::Store;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;
use tracing::{Instrument, warn};

/// Watermarks not yet in the store, with where the JSONL file ended after
/// the records they cover (saved in the same transaction).
#[derive(Debug, Default)]
pub(crate) struct Pending {
    marks: BTreeMap<i32, i64>,
    end: Option<FileEnd>,
}

impl Pending {
    /// Add newer watermarks: they win over what is pending.
    fn add(&mut self, moved: impl IntoIterator<Item = (i32, i64)>, end: Option<FileEnd>) {
        self.marks.extend(moved);
        self.end = end.or(self.end);
    }

    /// Put back what a failed write took, under anything newer.
    fn restore(&mut self, failed: Pending) {
        for (p, o) in failed.marks {
            self.marks.entry(p).or_insert(o);
        }
        self.end = self.end.or(failed.end);
    }
}

/// What the job's worker, its saver task and `reset_watermarks` share.
#[derive(Debug, Default)]
pub(crate) struct SaveState {
    pending: Mutex<Pending>,
    /// Held during a write: `reset_watermarks` takes it, so that no write
    /// of watermarks from before the reset lands after it.
    writing: tokio::sync::Mutex<()>,
    /// Failed writes since the start.
    pub(crate) errors: std::sync::atomic::AtomicU64,
}

impl SaveState {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forget unsaved watermarks, with no write in progress; the caller
    /// clears the store while it holds the returned guard.
    pub(crate) async fn forget(&self) -> tokio::sync::MutexGuard<'_, ()> {
        let guard = self.writing.lock().await;
        *self.pending() = Pending::default();
        guard
    }

    /// Write what is pending, if anything, in one transaction.
    async fn flush(&self, store: &Store, job_id: &str) {
        let _writing = self.writing.lock().await;
        let taken = std::mem::take(&mut *self.pending());
        if taken.marks.is_empty() && taken.end.is_none() {
            return;
        }
        let marks: Vec<(i32, i64)> = taken.marks.iter().map(|(p, o)| (*p, *o)).collect();
        if let Err(err) = store.set_watermarks(job_id, marks, taken.end).await {
            self.errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!(%err, "cannot save watermarks; a restart now may deliver duplicates");
            self.pending().restore(taken);
        }
    }
}

/// The worker's end of the saver: add watermarks. Dropping it lets the
/// saving future write what is left and end.
pub(crate) struct Saver {
    state: Arc<SaveState>,
    /// Capacity 1: a wake-up already queued covers any number of batches.
    wake: mpsc::Sender<()>,
}

impl Saver {
    /// The saver of `job_id` and the future that writes for it. The job's
    /// task polls that future beside its worker (`tokio::join!`), not as a
    /// task of its own: the job's task ends only once the last watermarks
    /// are written, and a wake-up of the saver never waits for a runtime
    /// thread that something else keeps busy.
    pub(crate) fn new(
        store: Store,
        job_id: String,
        state: Arc<SaveState>,
    ) -> (Saver, impl Future<Output = ()> + Send + 'static) {
        let (wake, mut woken) = mpsc::channel::<()>(1);
        let task_state = state.clone();
        let span = tracing::info_span!("watermarks", job = %job_id);
        let saving = async move {
            while woken.recv().await.is_some() {
                task_state.flush(&store, &job_id).await;
            }
            // The worker is gone: a shutdown never cuts the last write short.
            task_state.flush(&store, &job_id).await;
        }
        .instrument(span);
        (Saver { state, wake }, saving)
    }

    /// Queue the watermarks a batch moved (and the file end after it).
    pub(crate) fn add(&self, moved: Vec<(i32, i64)>, end: Option<FileEnd>) {
        if moved.is_empty() && end.is_none() {
            return;
        }
        self.state.pending().add(moved, end);
        // Full: a wake-up is queued already and will take these too.
        let _ = self.wake.try_send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_marks_win_and_a_failed_write_goes_back_under_them() {
        let mut p = Pending::default();
        p.add([(0, 5), (1, 3)], None);
        p.add([(0, 9)], Some(FileEnd::MISSING));
        assert_eq!(p.marks, BTreeMap::from([(0, 9), (1, 3)]));
        let failed = std::mem::take(&mut p);
        p.add([(1, 4)], None);
        p.restore(failed);
        assert_eq!(p.marks, BTreeMap::from([(0, 9), (1, 4)]));
        assert_eq!(p.end, Some(FileEnd::MISSING));
    }

    #[tokio::test]
    async fn finish_writes_everything_added() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();
        let def: crate::delivery::JobDefinition = serde_json::from_value(serde_json::json!({
            "spec": {"id": "j", "bootstrap_servers": "h:9092", "topic": "t", "consumer_group": "g",
                     "security": {"protocol": "PLAINTEXT"}},
            "group": "grp", "sink": {"kind": "discard"}
        }))
        .unwrap();
        store.insert_job(def, None).await.unwrap();
        let (saver, saving) = Saver::new(store.clone(), "j".into(), Arc::default());
        let saving = tokio::spawn(saving);
        for offset in 1..=100 {
            saver.add(vec![(0, offset), (offset as i32 % 3, offset)], None);
        }
        drop(saver);
        saving.await.unwrap();
        assert_eq!(
            store.watermarks("j").await.unwrap(),
            BTreeMap::from([(0, 100), (1, 100), (2, 98)])
        );
    }
}
