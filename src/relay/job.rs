//! One poll job as the agent holds it: the [`JobHandle`] a session talks to,
//! and the state it shares with the job's task (`runner.rs`, `pump.rs`).
//!
//! Everything goes through non-blocking calls: acks land in a small inbox
//! (only batches in flight are accepted, each once, so it is bounded by the
//! window whatever a peer sends), session changes, pause and drain in a
//! `watch` channel, and the latest [`JobState`] is kept for [`JobHandle::state`].

use crate::allowlist::AllowList;
use crate::relay::runner::Runner;
use crate::relay::{Outbound, RelaySettings};
use connectivity_protocol::job::{JobPhase, JobSpec, JobState};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, warn};

/// How long closing a consumer (final commit, leaving the group) may take
/// before the job moves on and lets it finish in the background.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the session and the job share: acks in, state out, control.
pub(crate) struct Shared {
    pub job_id: String,
    pub spec: JobSpec,
    inbox: Mutex<Inbox>,
    pub(crate) wake: Notify,
    pub(crate) control: watch::Sender<Control>,
    pub(crate) state: Mutex<JobState>,
}

/// Acks waiting for the job. Only batches that are in flight are accepted,
/// each once, so the inbox is bounded by the window whatever a peer sends.
#[derive(Default)]
struct Inbox {
    in_flight: BTreeSet<u64>,
    acked: Vec<u64>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Control {
    pub session: Option<mpsc::Sender<Outbound>>,
    /// Bumped on every restored session, so the job notices a new one
    /// even if it never saw the loss.
    pub session_gen: u64,
    pub paused: bool,
    pub draining: bool,
}

impl Shared {
    fn new(spec: &JobSpec, out: Option<mpsc::Sender<Outbound>>) -> Arc<Shared> {
        let (control, _) = watch::channel(Control {
            session: out,
            session_gen: 1,
            ..Default::default()
        });
        Arc::new(Shared {
            job_id: spec.id.clone(),
            spec: spec.clone(),
            inbox: Mutex::default(),
            wake: Notify::new(),
            control,
            state: Mutex::new(JobState {
                job_id: spec.id.clone(),
                phase: JobPhase::Starting,
                error: None,
                partitions: Vec::new(),
                records_relayed: 0,
                bytes_relayed: 0,
                bytes_uncompressed: 0,
                batches_acked: 0,
            }),
        })
    }

    pub(crate) fn ack(&self, seq: u64) {
        let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        if inbox.in_flight.remove(&seq) {
            inbox.acked.push(seq);
            drop(inbox);
            self.wake.notify_one();
        }
    }

    pub(crate) fn expect_ack(&self, seq: u64) {
        self.inbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .in_flight
            .insert(seq);
    }

    pub(crate) fn take_acks(&self) -> Vec<u64> {
        std::mem::take(&mut self.inbox.lock().unwrap_or_else(|p| p.into_inner()).acked)
    }

    pub(crate) fn clear_inbox(&self) {
        *self.inbox.lock().unwrap_or_else(|p| p.into_inner()) = Inbox::default();
    }

    pub(crate) fn session_lost(&self) {
        self.control.send_modify(|c| c.session = None);
    }

    pub(crate) fn session_restored(&self, out: mpsc::Sender<Outbound>) {
        self.control.send_modify(|c| {
            c.session = Some(out);
            c.session_gen += 1;
        });
    }

    pub(crate) fn state(&self) -> JobState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A running job, as the agent holds it. Dropping it stops the job (commit
/// of what is acked, then close); [`JobHandle::drain`] stops it gracefully.
pub struct JobHandle {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    _stop_on_drop: DropGuard,
    task: JoinHandle<()>,
}

/// Start a job. It consumes only while it has a session (`out`), and stops
/// when `cancel` (or a parent of it) is cancelled.
pub fn spawn(
    spec: JobSpec,
    allow: &AllowList,
    settings: RelaySettings,
    out: mpsc::Sender<Outbound>,
    cancel: CancellationToken,
) -> JobHandle {
    spawn_with(spec, allow, settings, Some(out), cancel)
}

/// [`spawn`], possibly without a session yet (`None`): the job then waits.
pub(crate) fn spawn_with(
    spec: JobSpec,
    allow: &AllowList,
    settings: RelaySettings,
    out: Option<mpsc::Sender<Outbound>>,
    cancel: CancellationToken,
) -> JobHandle {
    let cancel = cancel.child_token();
    let shared = Shared::new(&spec, out);
    let span = tracing::info_span!("job", job = %spec.id, topic = %spec.topic);
    let runner = Runner::new(
        spec,
        allow.clone(),
        settings,
        shared.clone(),
        cancel.clone(),
    );
    let task = tokio::spawn(runner.run().instrument(span));
    JobHandle {
        shared,
        _stop_on_drop: cancel.clone().drop_guard(),
        cancel,
        task,
    }
}

impl JobHandle {
    pub fn id(&self) -> &str {
        &self.shared.job_id
    }

    pub fn spec(&self) -> &JobSpec {
        &self.shared.spec
    }

    /// The control plane acked `batch_seq`. Unknown or repeated acks are ignored.
    pub fn ack(&self, batch_seq: u64) {
        self.shared.ack(batch_seq);
    }

    /// The session is gone: stop fetching at once; after the grace period,
    /// commit and leave the consumer group.
    pub fn session_lost(&self) {
        self.shared.session_lost();
    }

    /// A session is up: unacked batches are resent first, in order.
    pub fn session_restored(&self, out: mpsc::Sender<Outbound>) {
        self.shared.session_restored(out);
    }

    /// Stop fetching (batches in flight are still delivered and acked).
    pub fn pause(&self) {
        self.shared.control.send_modify(|c| c.paused = true);
    }

    pub fn resume(&self) {
        self.shared.control.send_modify(|c| c.paused = false);
    }

    /// The job's latest state.
    pub fn state(&self) -> JobState {
        self.shared.state()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stop gracefully: stop fetching, send what is buffered, wait for the
    /// acks of everything in flight, commit, leave the group. After
    /// `deadline` the job is cancelled (it still commits what is acked).
    pub async fn drain(self, deadline: Duration) {
        let JobHandle {
            shared,
            cancel,
            _stop_on_drop,
            mut task,
        } = self;
        shared.control.send_modify(|c| c.draining = true);
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            warn!(job = %shared.job_id, ?deadline, "drain deadline passed; stopping with unacked batches");
            cancel.cancel();
            let _ = tokio::time::timeout(CLOSE_TIMEOUT + Duration::from_secs(1), task).await;
        }
    }
}

/// Batch sequence numbers are unique in the process and increasing per job,
/// and start from the clock so a replaced job never reuses the number of an
/// earlier incarnation whose ack may still arrive.
pub(crate) fn next_seq() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    NEXT.fetch_max(now, Ordering::Relaxed);
    NEXT.fetch_add(1, Ordering::Relaxed) + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use connectivity_protocol::job::ErrorClass;

    #[test]
    fn sequence_numbers_are_unique_increasing_and_clock_based() {
        let a = next_seq();
        let b = next_seq();
        assert!(b > a);
        assert!(a > 1_600_000_000_000_000, "{a}");
    }

    fn spec(bootstrap: &str) -> JobSpec {
        serde_json::from_str(&format!(
            r#"{{"id":"j","bootstrap_servers":"{bootstrap}","topic":"t","consumer_group":"g","security":{{"protocol":"PLAINTEXT"}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn inbox_accepts_only_batches_in_flight_once() {
        let s = Shared::new(&spec("h:9092"), None);
        s.expect_ack(5);
        s.ack(5);
        s.ack(5);
        s.ack(6);
        assert_eq!(s.take_acks(), vec![5]);
        assert!(s.take_acks().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn not_allowed_job_fails_with_the_allow_list_key_and_stops_on_drain() {
        let (tx, mut rx) = mpsc::channel(8);
        let h = spawn(
            spec("kafka.internal:9092"),
            &AllowList::parse("other:9092").unwrap(),
            RelaySettings::default(),
            tx,
            CancellationToken::new(),
        );
        let state = loop {
            match rx.recv().await {
                Some(Outbound::State(s)) if s.phase == JobPhase::Failed => break s,
                Some(_) => continue,
                None => panic!("channel closed"),
            }
        };
        let e = state.error.unwrap();
        assert_eq!(e.class, ErrorClass::NotAllowed);
        assert!(
            e.message.contains("agent_ALLOWED_ENDPOINTS"),
            "{}",
            e.message
        );
        h.drain(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn bad_truststore_is_a_config_failure_without_the_password() {
        let spec: JobSpec = serde_json::from_str(
            r#"{"id":"j","bootstrap_servers":"127.0.0.1:9","topic":"t","consumer_group":"g",
                "security":{"protocol":"SASL_SSL","sasl":{"username":"u","password":"pw-123"},
                            "truststore":{"format":"jks","data":"AAAA","password":"store-pw"}}}"#,
        )
        .unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let h = spawn(
            spec,
            &AllowList::parse("127.0.0.1:*").unwrap(),
            RelaySettings::default(),
            tx,
            CancellationToken::new(),
        );
        let state = loop {
            if let Some(Outbound::State(s)) = rx.recv().await
                && s.phase == JobPhase::Failed
            {
                break s;
            }
        };
        let e = state.error.unwrap();
        assert_eq!(e.class, ErrorClass::Config);
        assert_eq!(
            e.message,
            "truststore is not a JKS keystore (it does not start with the JKS magic bytes FEEDFEED)"
        );
        assert_eq!(h.state().phase, JobPhase::Failed);
        h.drain(Duration::from_secs(1)).await;
    }
}
