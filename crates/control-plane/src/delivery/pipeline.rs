//! The delivery pipeline the control plane's server calls for every batch:
//! dedup, value format, sink with retries, watermarks, then the ack.
//!
//! Each job has one worker task fed by a bounded queue. The worker takes the
//! job's batches one at a time, in arrival order, so a sink sees a job's
//! batches in the order they came in and never two at once; different jobs
//! deliver concurrently. A batch is retried until its sink accepts it (a
//! permanent error is retried slowly and reported, never skipped), so
//! [`Delivery::deliver`] returns only once the batch may be acked, or when the
//! job stops or the control plane shuts down (then: no ack; the agent resends).
//! The ack does not wait for the watermarks to be saved: the job's saver
//! (`saver.rs`) writes them behind it, several batches in one transaction
//! when the store is slower than the sink.
//!
//! Cancel-safe: if the caller stops waiting (its agent disconnected), the
//! worker still finishes the batch and advances the watermarks, so the copy
//! the agent resends later is dropped as a duplicate.

use super::dedup::Watermarks;
use super::definition::{JobDefinition, ValidationError};
use super::jsonl::{self, FileEnd};
use super::lanes::Accepted;
use super::record::OutBatch;
use super::saver::{SaveState, Saver};
use super::sink::{Sink, SinkConfig, SinkError};
use super::store::{Store, StoreError, StoredJob, Upserted, changes_stream};
use connectivity_common::backoff::Backoff;
use connectivity_protocol::{Batch, ControlMessage, Record};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, warn};

/// Tunables of the pipeline.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// TLS for webhooks (system roots plus any extra CA; see `connectivity_common::tls`).
    pub tls: Arc<rustls::ClientConfig>,
    /// Batches queued per job before `deliver` waits (back-pressure).
    pub queue_per_job: usize,
    /// First delay after a retryable sink error; doubles up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Delay between attempts after a permanent sink error (e.g. HTTP 400).
    pub permanent_retry_interval: Duration,
    /// What kafka sinks publish through; `None` (tests of other sinks):
    /// their every delivery fails, saying so.
    pub publisher: Option<super::kafka::Publisher>,
}

impl DeliveryOptions {
    /// Defaults: queue of 32, retries from 200 ms doubling to 30 s, permanent
    /// errors retried every 60 s.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        DeliveryOptions {
            tls,
            queue_per_job: 32,
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_secs(30),
            permanent_retry_interval: Duration::from_secs(60),
            publisher: None,
        }
    }
}

/// A batch the sink accepted (or that held only duplicates): send
/// [`Ack::to_message`] to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ack {
    pub job_id: String,
    pub batch_seq: u64,
    /// Records handed to the sink.
    pub delivered: usize,
    /// Records dropped as already delivered.
    pub duplicates: usize,
}

impl Ack {
    pub fn to_message(&self) -> ControlMessage {
        ControlMessage::Ack {
            job_id: self.job_id.clone(),
            batch_seq: self.batch_seq,
        }
    }
}

/// A batch in its job's queue ([`Delivery::enqueue`]).
#[derive(Debug)]
pub struct Queued {
    job_id: String,
    batch_seq: u64,
    answer: oneshot::Receiver<Result<Ack, DeliveryError>>,
    worker_stopped: CancellationToken,
    shutdown: CancellationToken,
}

impl Queued {
    /// Wait until the batch may be acked, or is known not to be delivered.
    /// Dropping this instead changes nothing for the batch: the worker
    /// delivers it and advances the watermarks all the same.
    pub async fn outcome(self) -> Result<Ack, DeliveryError> {
        let Queued {
            job_id,
            batch_seq,
            mut answer,
            worker_stopped,
            shutdown,
        } = self;
        let stopped = || stop_reason(&shutdown, job_id.clone(), batch_seq);
        // tokio's `send` reserves a slot, then pushes: a batch pushed while
        // the worker closed and drained its queue stays in the channel,
        // which the job's handle keeps alive, and is never answered. So stop
        // waiting once the worker is gone (an answer it gave comes first).
        tokio::select! {
            biased;
            answered = &mut answer => answered.unwrap_or_else(|_| Err(stopped())),
            _ = worker_stopped.cancelled() => answer.try_recv().unwrap_or_else(|_| Err(stopped())),
        }
    }
}

/// Why a batch was not delivered. None of these may be acked; the agent
/// resends the records once its job is assigned again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("batch {batch_seq} is for unknown job {job_id:?} (deleted or never created)")]
    UnknownJob { job_id: String, batch_seq: u64 },
    #[error(
        "batch {batch_seq} of job {job_id:?} is from topic {got:?} but the job consumes {expected:?}; the agent runs an outdated job definition"
    )]
    WrongTopic {
        job_id: String,
        batch_seq: u64,
        expected: String,
        got: String,
    },
    #[error("batch {batch_seq} of job {job_id:?} holds a record with a negative {field}")]
    InvalidBatch {
        job_id: String,
        batch_seq: u64,
        field: &'static str,
    },
    #[error("job {job_id:?} was deleted or replaced before batch {batch_seq} was delivered")]
    JobStopped { job_id: String, batch_seq: u64 },
    #[error("shutting down before batch {batch_seq} of job {job_id:?} was delivered")]
    ShuttingDown { job_id: String, batch_seq: u64 },
}

/// Why a job could not be created, changed or loaded.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("job {job_id:?} already exists")]
    AlreadyExists { job_id: String },
    #[error("no job {job_id:?}")]
    NotFound { job_id: String },
    #[error("sink.path {path:?} is already used by job {other:?}; give each job its own file")]
    SinkPathInUse { path: String, other: String },
    #[error("job {job_id:?}: {source}")]
    Sink { job_id: String, source: SinkError },
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("shutting down")]
    ShuttingDown,
}

/// Health of a job's sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    #[default]
    Ok,
    /// The last attempt failed with a retryable error; retrying with backoff.
    Retrying,
    /// The last attempt failed permanently (e.g. HTTP 400); retrying slowly
    /// until someone fixes the sink or the job. Nothing is skipped.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkErrorReport {
    pub message: String,
    pub retryable: bool,
    pub at_ms: i64,
}

/// Counters of one job since the control plane started, for the console.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobStats {
    pub sink_state: SinkState,
    pub records_delivered: u64,
    pub batches_acked: u64,
    pub duplicates_dropped: u64,
    /// Failed sink attempts.
    pub sink_errors: u64,
    pub last_sink_error: Option<SinkErrorReport>,
    pub last_delivered_at_ms: Option<i64>,
    /// Failed watermark writes (each may cause duplicates after a crash).
    pub watermark_write_errors: u64,
    /// Batches waiting in the job's queue.
    pub queued_batches: usize,
    /// Next offset expected, by partition.
    pub watermarks: BTreeMap<i32, i64>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The job's current definition and its built sink.
struct ActiveJob {
    stored: StoredJob,
    sink: Arc<Sink>,
}

struct JobShared {
    stats: Mutex<JobStats>,
    watermarks: Mutex<Watermarks>,
    saves: Arc<SaveState>,
}

struct Work {
    batch: Batch,
    reply: oneshot::Sender<Result<Ack, DeliveryError>>,
}

struct JobHandle {
    queue: mpsc::Sender<Work>,
    config: watch::Sender<Arc<ActiveJob>>,
    shared: Arc<JobShared>,
    cancel: CancellationToken,
    /// Cancelled once the worker has stopped taking batches (its queue is
    /// closed, drained and dropped).
    stopped: CancellationToken,
    worker: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    store: Store,
    http: reqwest::Client,
    options: DeliveryOptions,
    jobs: RwLock<HashMap<String, Arc<JobHandle>>>,
    /// Serializes job changes so the store and the running workers agree.
    admin: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Handle to the delivery pipeline; cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

impl Delivery {
    /// Load every job from `store` and start its worker.
    pub async fn open(store: Store, options: DeliveryOptions) -> Result<Delivery, AdminError> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((*options.tls).clone())
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("connectivity-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AdminError::HttpClient(e.to_string()))?;
        let delivery = Delivery {
            inner: Arc::new(Inner {
                store,
                http,
                options,
                jobs: RwLock::new(HashMap::new()),
                admin: tokio::sync::Mutex::new(()),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        for stored in delivery.inner.store.list_jobs().await? {
            let id = stored.definition.spec.id.clone();
            let sink = Sink::new(
                &stored.definition.sink,
                &delivery.inner.http,
                delivery.publisher(),
            )
            .map_err(|source| AdminError::Sink {
                job_id: id.clone(),
                source,
            })?;
            let mut marks = delivery.inner.store.watermarks(&id).await?;
            if let SinkConfig::Jsonl(c) = &stored.definition.sink {
                let topic = &stored.definition.spec.topic;
                jsonl::recover_watermarks(&delivery.inner.store, &id, c, topic, &mut marks).await;
            }
            delivery.start_worker(
                ActiveJob {
                    stored,
                    sink: Arc::new(sink),
                },
                marks,
            );
        }
        Ok(delivery)
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// What kafka sinks publish through, if anything.
    pub fn publisher(&self) -> Option<&super::kafka::Publisher> {
        self.inner.options.publisher.as_ref()
    }

    fn handle(&self, job_id: &str) -> Option<Arc<JobHandle>> {
        self.inner
            .jobs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(job_id)
            .cloned()
    }

    fn stopped(&self, job_id: String, batch_seq: u64) -> DeliveryError {
        stop_reason(&self.inner.shutdown, job_id, batch_seq)
    }

    /// Deliver one batch; returns when it may be acked. Call it for a job's
    /// batches in the order they arrived (one task per agent session does).
    pub async fn deliver(&self, batch: Batch) -> Result<Ack, DeliveryError> {
        self.enqueue(batch).await?.outcome().await
    }

    /// Put a batch in its job's queue, behind the batches enqueued before
    /// it; returns once it is there (waits while the queue is full), with
    /// its outcome to await. A session enqueues an agent's batches in the
    /// order they arrived and goes on reading while they are delivered, so
    /// the batches queued behind a JSONL write share the next one.
    pub async fn enqueue(&self, batch: Batch) -> Result<Queued, DeliveryError> {
        let (job_id, batch_seq) = (batch.job_id.clone(), batch.batch_seq);
        for (field, bad) in [
            ("partition", batch.records.iter().any(|r| r.partition < 0)),
            ("offset", batch.records.iter().any(|r| r.offset < 0)),
        ] {
            if bad {
                return Err(DeliveryError::InvalidBatch {
                    job_id,
                    batch_seq,
                    field,
                });
            }
        }
        if self.inner.shutdown.is_cancelled() {
            return Err(DeliveryError::ShuttingDown { job_id, batch_seq });
        }
        let handle = self
            .handle(&job_id)
            .ok_or_else(|| DeliveryError::UnknownJob {
                job_id: job_id.clone(),
                batch_seq,
            })?;
        let (reply, answer) = oneshot::channel();
        if handle.queue.send(Work { batch, reply }).await.is_err() {
            return Err(self.stopped(job_id, batch_seq));
        }
        Ok(Queued {
            job_id,
            batch_seq,
            answer,
            worker_stopped: handle.stopped.clone(),
            shutdown: self.inner.shutdown.clone(),
        })
    }

    /// Create a job; fails if the id is taken.
    pub async fn create_job(&self, def: JobDefinition) -> Result<Upserted, AdminError> {
        self.put(def, true).await
    }

    /// Create or replace a job. Secrets still showing the mask are taken
    /// from the stored definition. A new sink or value format applies from
    /// the next attempt, including a batch being retried; a new topic or
    /// bootstrap servers restarts the job's worker with empty watermarks.
    pub async fn put_job(&self, def: JobDefinition) -> Result<Upserted, AdminError> {
        self.put(def, false).await
    }

    async fn put(&self, mut def: JobDefinition, must_be_new: bool) -> Result<Upserted, AdminError> {
        let _admin = self.inner.admin.lock().await;
        if self.inner.shutdown.is_cancelled() {
            return Err(AdminError::ShuttingDown);
        }
        let existing = self.handle(def.id());
        if let Some(h) = &existing {
            if must_be_new {
                return Err(AdminError::AlreadyExists {
                    job_id: def.spec.id,
                });
            }
            def.unmask_from(&h.config.borrow().stored.definition);
        }
        def.validate()?;
        self.check_path_unique(&def)?;
        let sink = Sink::new(&def.sink, &self.inner.http, self.publisher()).map_err(|source| {
            AdminError::Sink {
                job_id: def.spec.id.clone(),
                source,
            }
        })?;
        // The old worker stops before the store forgets its watermarks: a
        // batch it finished afterwards would write the old stream's offsets
        // back, and the next start would drop the new stream's records below
        // them as duplicates.
        let old_stream = existing
            .as_ref()
            .filter(|h| changes_stream(&h.config.borrow().stored.definition, &def));
        if let Some(h) = old_stream {
            stop_worker(h).await;
        }
        let up = match self.store_job(def, must_be_new).await {
            Ok(up) => up,
            Err(err) => {
                if let Some(h) = old_stream {
                    self.restart_worker(h);
                }
                return Err(err);
            }
        };
        let active = ActiveJob {
            stored: up.job.clone(),
            sink: Arc::new(sink),
        };
        match existing {
            Some(h) if !up.watermarks_cleared => {
                info!(job = %up.job.definition.spec.id, "job definition replaced");
                h.config.send_replace(Arc::new(active));
            }
            Some(h) => {
                info!(job = %up.job.definition.spec.id, "job topic or servers changed; watermarks cleared");
                stop_worker(&h).await;
                self.start_worker(active, BTreeMap::new());
            }
            None => {
                let marks = self
                    .inner
                    .store
                    .watermarks(&up.job.definition.spec.id)
                    .await?;
                self.start_worker(active, marks);
            }
        }
        Ok(up)
    }

    async fn store_job(
        &self,
        def: JobDefinition,
        must_be_new: bool,
    ) -> Result<Upserted, AdminError> {
        let file_end = file_end_now(&def.sink);
        if !must_be_new {
            return Ok(self.inner.store.upsert_job(def, file_end).await?);
        }
        let job = self
            .inner
            .store
            .insert_job(def, file_end)
            .await
            .map_err(|e| match e {
                StoreError::AlreadyExists { job_id } => AdminError::AlreadyExists { job_id },
                e => e.into(),
            })?;
        Ok(Upserted {
            job,
            created: true,
            watermarks_cleared: false,
        })
    }

    /// Start a stopped worker again as it was, when its replacement could not
    /// be stored.
    fn restart_worker(&self, handle: &JobHandle) {
        let active = {
            let config = handle.config.borrow();
            ActiveJob {
                stored: config.stored.clone(),
                sink: config.sink.clone(),
            }
        };
        let marks = lock(&handle.shared.watermarks).as_map().clone();
        self.start_worker(active, marks);
    }

    fn check_path_unique(&self, def: &JobDefinition) -> Result<(), AdminError> {
        let SinkConfig::Jsonl(mine) = &def.sink else {
            return Ok(());
        };
        let jobs = self
            .inner
            .jobs
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for (id, h) in jobs.iter() {
            if id != def.id()
                && let SinkConfig::Jsonl(theirs) = &h.config.borrow().stored.definition.sink
                && theirs.path == mine.path
            {
                return Err(AdminError::SinkPathInUse {
                    path: mine.path.display().to_string(),
                    other: id.clone(),
                });
            }
        }
        Ok(())
    }

    /// Delete a job and its watermarks. Its worker finishes the attempt in
    /// progress first, so nothing reaches the sink after this returns.
    pub async fn delete_job(&self, job_id: &str) -> Result<(), AdminError> {
        let _admin = self.inner.admin.lock().await;
        let handle = self
            .inner
            .jobs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(job_id);
        let Some(handle) = handle else {
            return Err(AdminError::NotFound {
                job_id: job_id.to_owned(),
            });
        };
        stop_worker(&handle).await;
        self.inner.store.delete_job(job_id).await?;
        info!(job = %job_id, "job deleted");
        Ok(())
    }

    /// Set the paused flag (the server stops assigning a paused job; batches
    /// in flight are still delivered).
    pub async fn set_paused(&self, job_id: &str, paused: bool) -> Result<(), AdminError> {
        let _admin = self.inner.admin.lock().await;
        let handle = self.handle(job_id).ok_or_else(|| AdminError::NotFound {
            job_id: job_id.to_owned(),
        })?;
        self.inner.store.set_paused(job_id, paused).await?;
        // Not a sink change: do not wake a worker waiting to retry.
        handle.config.send_if_modified(|active| {
            let mut stored = active.stored.clone();
            stored.definition.paused = paused;
            stored.updated_at_ms = now_ms();
            *active = Arc::new(ActiveJob {
                stored,
                sink: active.sink.clone(),
            });
            false
        });
        Ok(())
    }

    /// Forget a job's watermarks so that records are delivered again (after
    /// an operator rewinds the consumer group, or the topic was recreated).
    /// Pause the job first: a batch being delivered meanwhile sets its
    /// partitions' watermarks again.
    pub async fn reset_watermarks(&self, job_id: &str) -> Result<(), AdminError> {
        let _admin = self.inner.admin.lock().await;
        let handle = self.handle(job_id).ok_or_else(|| AdminError::NotFound {
            job_id: job_id.to_owned(),
        })?;
        // No save of watermarks from before the reset may land after it.
        let _no_saves = handle.shared.saves.forget().await;
        *lock(&handle.shared.watermarks) = Watermarks::default();
        let file_end = file_end_now(&handle.config.borrow().stored.definition.sink);
        self.inner.store.clear_watermarks(job_id, file_end).await?;
        info!(job = %job_id, "watermarks reset");
        Ok(())
    }

    /// The job's stored definition (with secrets: redact before showing).
    pub fn job(&self, job_id: &str) -> Option<StoredJob> {
        self.handle(job_id)
            .map(|h| h.config.borrow().stored.clone())
    }

    /// Every job, ordered by id.
    pub fn jobs(&self) -> Vec<StoredJob> {
        let jobs = self
            .inner
            .jobs
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<StoredJob> = jobs
            .values()
            .map(|h| h.config.borrow().stored.clone())
            .collect();
        all.sort_by(|a, b| a.definition.spec.id.cmp(&b.definition.spec.id));
        all
    }

    /// Counters and watermarks of a job.
    pub fn stats(&self, job_id: &str) -> Option<JobStats> {
        let h = self.handle(job_id)?;
        let mut stats = lock(&h.shared.stats).clone();
        stats.watermarks = lock(&h.shared.watermarks).as_map().clone();
        stats.watermark_write_errors = h.shared.saves.errors.load(Ordering::Relaxed);
        stats.queued_batches = h.queue.max_capacity() - h.queue.capacity();
        Some(stats)
    }

    /// Stop: refuse new batches, let each worker finish the attempt in
    /// progress, answer queued batches with `ShuttingDown`, and wait.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn start_worker(&self, active: ActiveJob, marks: BTreeMap<i32, i64>) {
        let job_id = active.stored.definition.spec.id.clone();
        let (queue, rx) = mpsc::channel(self.inner.options.queue_per_job.max(1));
        let (config, config_rx) = watch::channel(Arc::new(active));
        let shared = Arc::new(JobShared {
            stats: Mutex::new(JobStats::default()),
            watermarks: Mutex::new(Watermarks::new(marks)),
            saves: Arc::default(),
        });
        let cancel = self.inner.shutdown.child_token();
        let (saver, saving) = Saver::new(
            self.inner.store.clone(),
            job_id.clone(),
            shared.saves.clone(),
        );
        let worker = Worker {
            job_id: job_id.clone(),
            options: self.inner.options.clone(),
            config: config_rx,
            shared: shared.clone(),
            cancel: cancel.clone(),
            shutdown: self.inner.shutdown.clone(),
            saver,
        };
        let span = tracing::info_span!("job", job = %job_id);
        // The job's task ends when the worker has stopped and then its last
        // watermarks are written (the worker's end drops the saver).
        let stopped = CancellationToken::new();
        let worker_stopped = stopped.clone();
        let job = async move {
            let working = async move {
                worker.run(rx).await;
                worker_stopped.cancel();
            };
            tokio::join!(working, saving);
        };
        let join = self.inner.tasks.spawn(job.instrument(span));
        let handle = Arc::new(JobHandle {
            queue,
            config,
            shared,
            cancel,
            stopped,
            worker: Mutex::new(Some(join)),
        });
        self.inner
            .jobs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(job_id, handle);
    }
}

/// Where a JSONL sink's file ends now, for the store to record when the
/// lines before stop counting as this job's deliveries. `None` for other
/// sinks, or when the file cannot be examined (then nothing is recovered
/// until a write records an end).
fn file_end_now(sink: &SinkConfig) -> Option<FileEnd> {
    let SinkConfig::Jsonl(c) = sink else {
        return None;
    };
    // One stat on an admin call: not worth a trip to the blocking pool.
    FileEnd::of(&c.path)
        .inspect_err(|err| warn!(%err, path = %c.path.display(), "cannot examine the sink file; its lines will not be recovered after a crash until the next write"))
        .ok()
}

async fn stop_worker(handle: &JobHandle) {
    handle.cancel.cancel();
    let join = lock(&handle.worker).take();
    if let Some(join) = join {
        let _ = join.await;
    }
}

/// Most batches a JSONL job writes (and `fsync`s) at once: while one write
/// runs, the batches arriving meanwhile queue (up to `queue_per_job`), and
/// the next write takes them all.
const GROUP_MAX_BATCHES: usize = 32;
/// Most bytes of keys and values in such a group: bounds the buffer the
/// group is encoded into.
const GROUP_MAX_BYTES: usize = 16 << 20;

fn batch_bytes(b: &Batch) -> usize {
    b.records
        .iter()
        .map(|r| r.value.as_ref().map_or(0, |v| v.len()) + r.key.as_ref().map_or(0, |k| k.len()))
        .sum()
}

fn stop_reason(shutdown: &CancellationToken, job_id: String, batch_seq: u64) -> DeliveryError {
    if shutdown.is_cancelled() {
        DeliveryError::ShuttingDown { job_id, batch_seq }
    } else {
        DeliveryError::JobStopped { job_id, batch_seq }
    }
}

struct Worker {
    job_id: String,
    options: DeliveryOptions,
    config: watch::Receiver<Arc<ActiveJob>>,
    shared: Arc<JobShared>,
    cancel: CancellationToken,
    shutdown: CancellationToken,
    /// Saves the watermarks behind the acks.
    saver: Saver,
}

impl Worker {
    /// Deliver the queue's batches until the job stops, then answer what is
    /// left in it. Its end drops the saver: the job's task then writes the
    /// last watermarks, and a job's replacement or deletion (which waits
    /// for that task) starts only after its last save.
    async fn run(mut self, mut queue: mpsc::Receiver<Work>) {
        loop {
            let work = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                work = queue.recv() => match work {
                    Some(work) => work,
                    None => break,
                },
            };
            let group = self.group(work, &mut queue);
            let (batches, replies): (Vec<Batch>, Vec<_>) =
                group.into_iter().map(|w| (w.batch, w.reply)).unzip();
            let results = self.process(batches).await;
            for (result, reply) in results.into_iter().zip(replies) {
                if let Err(err) = &result {
                    warn!(%err, "batch not delivered");
                }
                // The caller may have gone (agent disconnected): nothing to
                // do, the watermarks already cover the batch.
                let _ = reply.send(result);
            }
        }
        queue.close();
        while let Ok(work) = queue.try_recv() {
            let _ = work.reply.send(Err(stop_reason(
                &self.shutdown,
                work.batch.job_id,
                work.batch.batch_seq,
            )));
        }
    }

    /// `first` and, for a sink that writes a group of batches as cheaply as
    /// one (JSONL: one write and one `fsync`), the batches queued behind it,
    /// up to [`GROUP_MAX_BATCHES`] and [`GROUP_MAX_BYTES`].
    fn group(&self, first: Work, queue: &mut mpsc::Receiver<Work>) -> Vec<Work> {
        let mut group = vec![first];
        if !self.config.borrow().sink.writes_groups() {
            return group;
        }
        let mut bytes = batch_bytes(&group[0].batch);
        while group.len() < GROUP_MAX_BATCHES && bytes < GROUP_MAX_BYTES {
            let Ok(work) = queue.try_recv() else { break };
            bytes += batch_bytes(&work.batch);
            group.push(work);
        }
        group
    }

    /// Deliver a group of batches, in order, as one sink delivery: each is
    /// filtered against the watermarks as they will be after the ones
    /// before it, and all are acked once the sink accepted the lot.
    async fn process(&mut self, batches: Vec<Batch>) -> Vec<Result<Ack, DeliveryError>> {
        let expected = self.config.borrow().stored.definition.spec.topic.clone();
        let mut after = lock(&self.shared.watermarks).clone();
        let mut records = Vec::new();
        let mut results = Vec::with_capacity(batches.len());
        for b in batches {
            if b.topic != expected {
                results.push(Err(DeliveryError::WrongTopic {
                    job_id: b.job_id,
                    batch_seq: b.batch_seq,
                    expected: expected.clone(),
                    got: b.topic,
                }));
                continue;
            }
            let filtered = after.filter(b.records);
            after.advance(&filtered.records);
            results.push(Ok(Ack {
                job_id: b.job_id,
                batch_seq: b.batch_seq,
                delivered: filtered.records.len(),
                duplicates: filtered.duplicates,
            }));
            records.extend(filtered.records);
        }
        if !records.is_empty() {
            let first_seq = results.iter().flatten().map(|a| a.batch_seq).next();
            match self
                .deliver_with_retries(&expected, first_seq.unwrap_or(0), &records)
                .await
            {
                Ok(file_end) => {
                    let moved = lock(&self.shared.watermarks).advance(&records);
                    self.saver.add(moved, file_end);
                }
                Err(_) => return self.not_delivered(results),
            }
        }
        self.count(&results);
        results
    }

    /// The job stopped before the group was delivered: none is acked.
    fn not_delivered(
        &self,
        results: Vec<Result<Ack, DeliveryError>>,
    ) -> Vec<Result<Ack, DeliveryError>> {
        results
            .into_iter()
            .map(|r| {
                let ack = r?;
                Err(stop_reason(&self.shutdown, ack.job_id, ack.batch_seq))
            })
            .collect()
    }

    fn count(&self, results: &[Result<Ack, DeliveryError>]) {
        let mut stats = lock(&self.shared.stats);
        for ack in results.iter().flatten() {
            stats.records_delivered += ack.delivered as u64;
            stats.duplicates_dropped += ack.duplicates as u64;
            stats.batches_acked += 1;
            if ack.delivered > 0 {
                stats.last_delivered_at_ms = Some(now_ms());
            }
        }
    }

    async fn deliver_with_retries(
        &mut self,
        topic: &str,
        batch_seq: u64,
        records: &[Record],
    ) -> Result<Option<FileEnd>, DeliveryError> {
        let mut backoff = Backoff::new(self.options.retry_base, self.options.retry_cap);
        let mut accepted = Accepted::new();
        let mut sink: Option<Arc<Sink>> = None;
        loop {
            let active = self.config.borrow_and_update().clone();
            // Parts a previous sink took say nothing about a new one.
            if !sink.as_ref().is_some_and(|s| Arc::ptr_eq(s, &active.sink)) {
                accepted.clear();
                sink = Some(active.sink.clone());
            }
            // Per attempt: a value format changed meanwhile applies.
            let batch = OutBatch::new(
                &self.job_id,
                topic,
                records,
                active.stored.definition.value_format,
            );
            let err = match active.sink.deliver(&batch, &mut accepted).await {
                Ok(file_end) => {
                    lock(&self.shared.stats).sink_state = SinkState::Ok;
                    return Ok(file_end);
                }
                Err(err) => err,
            };
            let retryable = err.is_retryable();
            let delay = if retryable {
                let asked = err
                    .retry_after()
                    .unwrap_or_default()
                    .min(self.options.retry_cap);
                backoff.next_delay().max(asked)
            } else {
                self.options.permanent_retry_interval
            };
            {
                let mut stats = lock(&self.shared.stats);
                stats.sink_errors += 1;
                stats.sink_state = if retryable {
                    SinkState::Retrying
                } else {
                    SinkState::Failed
                };
                stats.last_sink_error = Some(SinkErrorReport {
                    message: err.to_string(),
                    retryable,
                    at_ms: now_ms(),
                });
            }
            warn!(%err, batch_seq, records = records.len(), retryable, retry_in = ?delay, "sink did not accept batch");
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(stop_reason(&self.shutdown, self.job_id.clone(), batch_seq)),
                _ = tokio::time::sleep(delay) => {}
                changed = self.config.changed() => {
                    if changed.is_err() {
                        return Err(stop_reason(&self.shutdown, self.job_id.clone(), batch_seq));
                    }
                    info!(batch_seq, "sink configuration changed; retrying now");
                    backoff.reset();
                }
            }
        }
    }
}
