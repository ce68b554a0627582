//! The task of one poll job: its life from the allow-list check to the last
//! commit. The consuming itself is in [`pump`](super::pump).
//!
//! The job runs as one task around a `StreamConsumer` (acks, session
//! changes, timers and records are served by one `select!` loop, with no
//! thread per job). Its life:
//!
//! ```text
//! allow-list check --refused--> failed(not_allowed) until revoked
//!       |
//! consumer config ---invalid--> failed(config) until revoked
//!       v
//! wait for a session <-------------------------------------------+
//!       |                                                        |
//! preflight: topic metadata --failed--> failed(class), backoff --+
//!       |                                                        |
//! subscribe (all) / assign (list)                                |
//!       |                                                        |
//! pump --session away past the grace: commit, leave the group ---+
//!      --tls/sasl/authorization/topic error: commit, close, backoff
//!      --drained or cancelled: commit, close --> stopped
//! ```
//!
//! Back-pressure: at most `window` batches (and `window_bytes`) are sent and
//! unacked, and at most `held_bytes` of frames wait in memory; beyond that
//! the job stops taking records (see [`pump`](super::pump)). A frame is
//! freed once written to the socket; on a restored session the job seeks
//! each partition back to its watermark and reads the unacked records again
//! from Kafka. When the session stays away longer than the grace period the
//! job commits, leaves the group (so the partitions move to another agent)
//! and rejoins from the committed offsets once a session is back.

use crate::allowlist::AllowList;
use crate::kafka::client;
use crate::kafka::errors::{self, ErrorLog, Target};
use crate::kafka::metadata;
use crate::relay::consumer::{self, Core, RelayContext, lock};
use crate::relay::job::{CLOSE_TIMEOUT, Shared};
use crate::relay::pump::sleep_until_opt;
use crate::relay::{Outbound, RelaySettings};
use bytes::Bytes;
use connectivity_common::backoff::Backoff;
use connectivity_protocol::batch::Compressor;
use connectivity_protocol::job::{
    Compression, ErrorClass, JobError, JobPhase, JobSpec, JobState, Partitions, StartPosition,
};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Why one consumer's life ended.
pub(crate) enum Exit {
    /// Cancelled, or drained: the job is over.
    Stop,
    /// The session stayed away past the grace period.
    SessionGone,
    /// Retry after a backoff.
    Failed(JobError),
}

/// A batch sent and not yet acked.
pub(crate) struct InFlight {
    pub(crate) seq: u64,
    /// The frame until the session's writer has written it: then only this
    /// copy is left, and its buffer is reused or freed. The records are not
    /// kept for resending; after a reconnect they are read again from Kafka.
    pub(crate) frame: Option<Bytes>,
    /// Bytes of the frame as sent.
    pub(crate) len: usize,
}

pub(crate) struct Runner {
    pub(crate) spec: JobSpec,
    pub(crate) allow: AllowList,
    pub(crate) settings: RelaySettings,
    pub(crate) shared: Arc<Shared>,
    pub(crate) cancel: CancellationToken,
    pub(crate) target: Target,
    /// Passwords and keys of the spec: masked in any message we build.
    pub(crate) secrets: Vec<String>,
    /// Sent, unacked batches in send order (at most `window`).
    pub(crate) unacked: VecDeque<InFlight>,
    pub(crate) records_relayed: u64,
    pub(crate) bytes_relayed: u64,
    pub(crate) bytes_uncompressed: u64,
    pub(crate) batches_acked: u64,
    pub(crate) phase: JobPhase,
    pub(crate) error: Option<JobError>,
    pub(crate) last_sent: Option<JobState>,
}

fn secrets_of(spec: &JobSpec) -> Vec<String> {
    let s = &spec.security;
    let mut v: Vec<String> = Vec::new();
    v.extend(s.sasl.iter().map(|x| x.password.expose().to_owned()));
    v.extend(
        s.truststore
            .iter()
            .filter_map(|t| t.password.as_ref())
            .map(|p| p.expose().to_owned()),
    );
    v.extend(s.client_key_pem.iter().map(|k| k.expose().to_owned()));
    v
}

impl Runner {
    pub(crate) fn new(
        spec: JobSpec,
        allow: AllowList,
        settings: RelaySettings,
        shared: Arc<Shared>,
        cancel: CancellationToken,
    ) -> Runner {
        Runner {
            secrets: secrets_of(&spec),
            target: Target::of(&spec),
            spec,
            allow,
            settings,
            shared,
            cancel,
            unacked: VecDeque::new(),
            records_relayed: 0,
            bytes_relayed: 0,
            bytes_uncompressed: 0,
            batches_acked: 0,
            phase: JobPhase::Starting,
            error: None,
            last_sent: None,
        }
    }

    /// The job's life: check and configure once, then consume while a
    /// session is there, with backoff between failures.
    pub(crate) async fn run(mut self) {
        info!(bootstrap = %self.spec.bootstrap_servers, group = %self.spec.consumer_group, "job started");
        let mut config = match self.initial_config().await {
            Ok(c) => c,
            Err(err) => return self.fail_permanently(err).await,
        };
        debug!(config = %client::describe(&config), "consumer configuration");
        let mut backoff = Backoff::new(self.settings.retry_base, self.settings.retry_cap);
        let mut trust_completed =
            !connectivity_protocol::validate::uses_tls(self.spec.security.protocol)
                || self.spec.security.truststore.is_none();
        loop {
            if !self.wait_for_session().await {
                break;
            }
            let exit = match self
                .complete_trust_once(&mut config, &mut trust_completed)
                .await
            {
                Err(err) => Exit::Failed(err),
                Ok(()) => self.consume(&config, &mut backoff).await,
            };
            match exit {
                Exit::Stop => break,
                // The cluster advertises a broker outside the allow-list:
                // only the operator can change that.
                Exit::Failed(err) if err.class == ErrorClass::NotAllowed => {
                    return self.fail_permanently(err).await;
                }
                Exit::SessionGone => {
                    info!("session away past the grace period; left the consumer group");
                }
                Exit::Failed(err) => {
                    if !self.back_off(err, &mut backoff).await {
                        break;
                    }
                }
            }
        }
        self.finish();
    }

    /// A truststore holding the broker's own certificate (the seed's
    /// s_client + keytool recipe) is completed to its CA once, replacing
    /// `config`; see kafka::leaf_trust. Failures are retried like any other.
    async fn complete_trust_once(
        &self,
        config: &mut ClientConfig,
        done: &mut bool,
    ) -> Result<(), JobError> {
        if *done {
            return Ok(());
        }
        if let Some(completed) = self.complete_leaf_trust().await? {
            *config = completed;
        }
        *done = true;
        Ok(())
    }

    /// The allow-list check and the consumer config: failures here are
    /// permanent (the spec must change).
    async fn initial_config(&self) -> Result<ClientConfig, JobError> {
        let allow = self.allow.clone();
        let bootstrap = self.spec.bootstrap_servers.clone();
        // The check may resolve names (CIDR rules): off the async threads.
        let allowed = tokio::task::spawn_blocking(move || allow.check_bootstrap(&bootstrap))
            .await
            .unwrap_or_else(|e| Err(format!("allow-list check failed: {e}")));
        if let Err(message) = allowed {
            return Err(JobError {
                class: ErrorClass::NotAllowed,
                message,
            });
        }
        let mut config = client::consumer_config(&self.spec).map_err(|e| JobError {
            class: ErrorClass::Config,
            message: self.redact(&e.to_string()),
        })?;
        config.set(
            "auto.commit.interval.ms",
            self.settings.commit_interval.as_millis().max(1).to_string(),
        );
        Ok(config)
    }

    /// Report a failure and wait out the backoff; false when the job is to
    /// stop meanwhile.
    async fn back_off(&mut self, err: JobError, backoff: &mut Backoff) -> bool {
        let delay = backoff.next_delay();
        warn!(class = ?err.class, error = %err.message, retry_in = ?delay, "job failed");
        self.set(JobPhase::Failed, Some(err), None);
        self.idle(Some(Instant::now() + delay)).await
    }

    /// The job is over: report it stopped, with the last error if it failed.
    fn finish(&mut self) {
        let last_error = if self.phase == JobPhase::Failed {
            self.error.clone()
        } else {
            None
        };
        self.set(JobPhase::Stopped, last_error, None);
        info!(
            records = self.records_relayed,
            batches_acked = self.batches_acked,
            "job stopped"
        );
    }

    /// When the truststore holds leaf certificates, the consumer config with
    /// the truststore completed to the issuing CA; `None` when not needed.
    async fn complete_leaf_trust(&self) -> Result<Option<rdkafka::ClientConfig>, JobError> {
        let Some(ts) = self.spec.security.truststore.as_ref() else {
            return Ok(None);
        };
        let completed = crate::kafka::leaf_trust::complete(
            ts,
            &self.spec.bootstrap_servers,
            self.settings.preflight_timeout,
        )
        .await
        .map_err(|message| JobError {
            class: ErrorClass::Tls,
            message: self.redact(&message),
        })?;
        let Some(completed) = completed else {
            return Ok(None);
        };
        info!("truststore holds the broker's own certificate; trusting the CA that issued it");
        let mut spec = self.spec.clone();
        spec.security.truststore = Some(completed);
        let mut config = client::consumer_config(&spec).map_err(|e| JobError {
            class: ErrorClass::Config,
            message: self.redact(&e.to_string()),
        })?;
        config.set(
            "auto.commit.interval.ms",
            self.settings.commit_interval.as_millis().max(1).to_string(),
        );
        Ok(Some(config))
    }

    pub(crate) fn redact(&self, text: &str) -> String {
        errors::redact(
            text,
            &self.secrets.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    }

    /// A failure retrying cannot fix: report it and wait to be revoked.
    async fn fail_permanently(mut self, err: JobError) {
        warn!(class = ?err.class, error = %err.message, "job cannot run");
        self.set(JobPhase::Failed, Some(err.clone()), None);
        self.idle(None).await;
        self.set(JobPhase::Stopped, Some(err), None);
    }

    /// Wait until `until` (or forever), keeping the state reported; false
    /// when the job is to stop (cancelled or draining).
    async fn idle(&mut self, until: Option<Instant>) -> bool {
        let mut control = self.shared.control.subscribe();
        let mut tick = tokio::time::interval(self.settings.state_interval);
        loop {
            if control.borrow_and_update().draining {
                return false;
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                r = control.changed() => if r.is_err() { return false },
                _ = tick.tick() => self.report(None, true),
                _ = sleep_until_opt(until) => return true,
            }
        }
    }

    /// Wait for a session; false when the job is to stop.
    async fn wait_for_session(&mut self) -> bool {
        let mut control = self.shared.control.subscribe();
        loop {
            {
                let c = control.borrow_and_update();
                if c.draining {
                    return false;
                }
                if c.session.is_some() {
                    return true;
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                r = control.changed() => if r.is_err() { return false },
            }
        }
    }

    /// Record the phase and error and report them if they changed.
    pub(crate) fn set(
        &mut self,
        phase: JobPhase,
        error: Option<JobError>,
        core: Option<&Mutex<Core>>,
    ) {
        if phase != self.phase || error != self.error {
            self.phase = phase;
            self.error = error;
            self.report(core, false);
        }
    }

    /// Publish the state; send it to the session when it changed or when
    /// `periodic`. A full session channel drops a state message (the next
    /// report carries everything), never a batch.
    pub(crate) fn report(&mut self, core: Option<&Mutex<Core>>, periodic: bool) {
        let partitions = core.map(|c| lock(c).partition_states()).unwrap_or_default();
        let state = JobState {
            job_id: self.spec.id.clone(),
            phase: self.phase,
            error: self.error.clone(),
            partitions,
            records_relayed: self.records_relayed,
            bytes_relayed: self.bytes_relayed,
            bytes_uncompressed: self.bytes_uncompressed,
            batches_acked: self.batches_acked,
        };
        *self.shared.state.lock().unwrap_or_else(|p| p.into_inner()) = state.clone();
        if !periodic && self.last_sent.as_ref() == Some(&state) {
            return;
        }
        let session = self.shared.control.borrow().session.clone();
        if let Some(tx) = session
            && tx.try_send(Outbound::State(state.clone())).is_ok()
        {
            self.last_sent = Some(state);
        }
    }

    /// One consumer's life: create, check, subscribe, pump, commit, close.
    async fn consume(&mut self, config: &ClientConfig, backoff: &mut Backoff) -> Exit {
        self.set(JobPhase::Starting, self.error.clone(), None);
        let compressor = match self.spec.compression {
            Compression::None => None,
            codec => match Compressor::new(codec) {
                Ok(c) => Some(c),
                Err(e) => {
                    return Exit::Failed(JobError {
                        class: ErrorClass::Config,
                        message: format!("cannot set up {} compression: {e}", codec.as_str()),
                    });
                }
            },
        };
        let mut core = Core::default();
        core.compressor = compressor;
        let core = Arc::new(Mutex::new(core));
        let start_offsets = match &self.spec.start {
            StartPosition::Offsets(m) => m.clone(),
            _ => BTreeMap::new(),
        };
        let ctx = RelayContext {
            core: core.clone(),
            errors: ErrorLog::default(),
            job: self.spec.id.clone(),
            topic: self.spec.topic.clone(),
            start_offsets,
        };
        let partitions = match self.preflight(config, &ctx).await {
            Err(_) if self.cancel.is_cancelled() => return Exit::Stop,
            Err(e) => return Exit::Failed(e),
            Ok(partitions) => partitions,
        };
        let errors = ctx.errors.clone();
        let consumer = match self.create_consumer(config, ctx) {
            Ok(c) => c,
            Err(e) => return Exit::Failed(e),
        };
        let exit = match self.start(&consumer, partitions).await {
            Err(e) => Exit::Failed(e),
            Ok(()) => {
                // The stream answered and we are in: a later failure
                // starts its backoff from the bottom again.
                backoff.reset();
                self.set(JobPhase::Running, None, Some(&core));
                self.pump(&consumer, &core, &errors).await
            }
        };
        self.close(consumer, &core).await;
        exit
    }

    fn create_consumer(
        &self,
        config: &ClientConfig,
        ctx: RelayContext,
    ) -> Result<Arc<StreamConsumer<RelayContext>>, JobError> {
        config
            .create_with_context(ctx)
            .map(Arc::new)
            .map_err(|e| JobError {
                class: ErrorClass::Config,
                message: self.redact(&format!("cannot create the Kafka consumer: {e}")),
            })
    }

    /// Fetch the topic's metadata before joining: a wrong password, an
    /// untrusted certificate or a missing topic shows up here, fast and
    /// classified; and check the brokers the cluster advertises against the
    /// allow-list. A client without `group.id` asks, because a group
    /// consumer connects to the group coordinator (an advertised broker) as
    /// soon as it exists. Returns the partition count.
    async fn preflight(
        &mut self,
        config: &ClientConfig,
        ctx: &RelayContext,
    ) -> Result<usize, JobError> {
        let mut config = config.clone();
        config.remove("group.id");
        // A core of its own: its statistics must not touch the job's.
        let probe_ctx = RelayContext {
            core: Arc::new(Mutex::new(Core::default())),
            errors: ErrorLog::default(),
            job: ctx.job.clone(),
            topic: ctx.topic.clone(),
            start_offsets: BTreeMap::new(),
        };
        let errors = probe_ctx.errors.clone();
        let probe = self.create_consumer(&config, probe_ctx)?;
        let (partitions, advertised) = self.topic_metadata(&probe, &errors).await?;
        self.check_advertised(advertised).await?;
        Ok(partitions)
    }

    /// The advertised brokers must be allowed too: librdkafka reads from
    /// them, not from the bootstrap servers.
    async fn check_advertised(&self, advertised: Vec<String>) -> Result<(), JobError> {
        let (allow, bootstrap) = (self.allow.clone(), self.spec.bootstrap_servers.clone());
        tokio::task::spawn_blocking(move || allow.check_advertised(&bootstrap, &advertised))
            .await
            .unwrap_or_else(|e| Err(format!("allow-list check failed: {e}")))
            .map_err(|message| JobError {
                class: ErrorClass::NotAllowed,
                message,
            })
    }

    /// The topic's partition count and the advertised brokers, or the
    /// classified reason there are none.
    async fn topic_metadata(
        &mut self,
        consumer: &Arc<StreamConsumer<RelayContext>>,
        errors: &ErrorLog,
    ) -> Result<(usize, Vec<String>), JobError> {
        let c = consumer.clone();
        let topic = self.spec.topic.clone();
        let timeout = self.settings.preflight_timeout;
        // Dropped on every return: an abandoned request stops within a second.
        let stop = metadata::StopOnDrop::default();
        let stop_flag = stop.0.clone();
        let mut meta = tokio::task::spawn_blocking(move || {
            metadata::fetch(&*c, Some(&topic), timeout, &stop_flag).map(|s| (s.topic, s.advertised))
        });
        let result = loop {
            tokio::select! {
                r = &mut meta => break r,
                _ = self.cancel.cancelled() => return Err(JobError { class: ErrorClass::Other, message: "cancelled".into() }),
                // Serves librdkafka's error events while the request waits;
                // a definite cause ends the wait early.
                r = consumer.recv() => {
                    if r.is_err()
                        && let Some(je) = errors::definite(&errors.snapshot(), &self.target)
                    {
                        return Err(self.redacted(je));
                    }
                }
            }
        };
        let seen = errors.take();
        match result {
            Err(e) => Err(JobError {
                class: ErrorClass::Other,
                message: format!("metadata request failed: {e}"),
            }),
            Ok(Err(e)) => Err(self.redacted(errors::classify(Some(&e), &seen, &self.target))),
            Ok(Ok((None, _))) => Err(self.redacted(errors::classify_one(
                Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition),
                "",
                &self.target,
            ))),
            Ok(Ok((Some((Some(code), _)), _))) => {
                Err(self.redacted(errors::classify_one(Some(code), "", &self.target)))
            }
            Ok(Ok((Some((None, n)), advertised))) => Ok((n, advertised)),
        }
    }

    pub(crate) fn redacted(&self, mut e: JobError) -> JobError {
        e.message = self.redact(&e.message);
        e
    }

    /// Subscribe (all partitions, shared by the group) or assign (a list).
    async fn start(
        &mut self,
        consumer: &Arc<StreamConsumer<RelayContext>>,
        partitions: usize,
    ) -> Result<(), JobError> {
        match &self.spec.partitions {
            Partitions::All => consumer
                .subscribe(&[self.spec.topic.as_str()])
                .map_err(|e| self.redacted(errors::classify(Some(&e), &[], &self.target))),
            Partitions::List(list) => self.assign(consumer, list, partitions).await,
        }
    }

    /// Assign the listed partitions, from the group's committed offsets (or
    /// the job's start offsets where it has none).
    async fn assign(
        &self,
        consumer: &Arc<StreamConsumer<RelayContext>>,
        list: &[i32],
        partitions: usize,
    ) -> Result<(), JobError> {
        let topic = &self.spec.topic;
        if let Some(bad) = list.iter().find(|p| **p as usize >= partitions) {
            return Err(JobError {
                class: ErrorClass::Config,
                message: format!(
                    "partition {bad} does not exist: topic {topic:?} has {partitions} partitions (0..={}); fix the job's partitions",
                    partitions.saturating_sub(1)
                ),
            });
        }
        let mut tpl = TopicPartitionList::new();
        for p in list {
            let _ = tpl.add_partition_offset(topic, *p, Offset::Stored);
        }
        if let StartPosition::Offsets(starts) = &self.spec.start {
            self.apply_start_offsets(consumer, &mut tpl, starts).await?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| self.redacted(errors::classify(Some(&e), &[], &self.target)))?;
        let mut core = lock(&consumer.context().core);
        for p in list {
            core.assigned.insert(*p);
            core.parts.entry(*p).or_default();
        }
        Ok(())
    }

    /// Explicit offsets only where the group has none committed.
    async fn apply_start_offsets(
        &self,
        consumer: &Arc<StreamConsumer<RelayContext>>,
        tpl: &mut TopicPartitionList,
        starts: &BTreeMap<i32, i64>,
    ) -> Result<(), JobError> {
        let topic = &self.spec.topic;
        let c = consumer.clone();
        let probe = tpl.clone();
        let committed = tokio::task::spawn_blocking(move || {
            c.committed_offsets(probe, Duration::from_secs(10))
        })
        .await
        .map_err(|e| JobError {
            class: ErrorClass::Other,
            message: e.to_string(),
        })?
        .map_err(|e| self.redacted(errors::classify(Some(&e), &[], &self.target)))?;
        for e in committed.elements_for_topic(topic) {
            if let (Some(o), Offset::Invalid) = (starts.get(&e.partition()), e.offset()) {
                let _ = tpl.set_partition_offset(topic, e.partition(), Offset::Offset(*o));
            }
        }
        Ok(())
    }

    /// Commit what is acked, leave the group, forget this consumer's batches.
    pub(crate) async fn close(
        &mut self,
        consumer: Arc<StreamConsumer<RelayContext>>,
        core: &Arc<Mutex<Core>>,
    ) {
        let commit = lock(core).to_commit(&self.spec.topic);
        let c = consumer;
        let job = self.spec.id.clone();
        let core2 = core.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        // Commit and close block on the coordinator: on a blocking thread,
        // with a deadline, so a dead broker cannot hold the job.
        tokio::task::spawn_blocking(move || {
            if commit.count() > 0 {
                match c.commit(&commit, CommitMode::Sync) {
                    Ok(()) => {
                        info!(job = %job, offsets = ?consumer::offsets(&commit), "committed");
                        // So the revoke during close does not commit it again.
                        lock(&core2).note_committed(&commit);
                    }
                    Err(e) => {
                        warn!(job = %job, error = %e, "final commit failed; unacked records will be read again")
                    }
                }
            }
            drop(c);
            let _ = done_tx.send(());
        });
        if tokio::time::timeout(CLOSE_TIMEOUT, done_rx).await.is_err() {
            warn!(timeout = ?CLOSE_TIMEOUT, "closing the consumer takes long; continuing without waiting");
        }
        let mut c = lock(core);
        c.tracker.reset();
        c.building = None;
        c.sealed.clear();
        drop(c);
        self.unacked.clear();
        self.shared.clear_inbox();
        self.report(Some(core), false);
    }
}
