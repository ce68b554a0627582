//! The loop of a running consumer: records into batches, batches out within
//! the window, acks into stored offsets, session changes, pause and drain.
//!
//! One `select!` serves everything, in this order of priority: cancellation,
//! control (session, pause, drain), acks, sending, the session grace, the
//! batch timer, state reports, and last the consumer itself, from which every
//! record already fetched is taken in one round. The consumer is polled even
//! while fetching is paused (session away, paused by the operator): pausing is
//! done per partition, so heartbeats and rebalances are still served and
//! `max.poll.interval.ms` is never exceeded. A full window is the exception:
//! records then stay in librdkafka's bounded queue (the fetcher stops by
//! itself), and only after [`LONG_STALL`] are the partitions paused and the
//! consumer polled again (docs/JOBS.md, "Batches and the window").
//!
//! A sent frame is kept only until the session's writer has written it; its
//! buffer then serves a new batch or is freed, so bytes in flight on a long
//! round trip cost no agent memory. On a restored session everything not
//! acked (in flight, waiting or being built) is dropped, each partition is
//! sought back to its watermark, and the records are read again from Kafka;
//! the control plane drops the ones it had already delivered.

use crate::kafka::errors::{self, ErrorLog};
use crate::relay::Outbound;
use crate::relay::consumer::{Building, Core, RelayContext, lock};
use crate::relay::job::{Control, next_seq};
use crate::relay::runner::{Exit, InFlight, Runner};
use connectivity_protocol::batch::BatchWriter;
use connectivity_protocol::job::JobError;
use connectivity_protocol::job::{ErrorClass, JobPhase};
use futures_util::{FutureExt, StreamExt};
use rdkafka::consumer::{Consumer, MessageStream, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Encoded size of a record in a batch frame (see `protocol::batch`).
fn encoded_size(
    msg: &BorrowedMessage<'_>,
    headers: Option<&rdkafka::message::BorrowedHeaders>,
) -> usize {
    let mut n = 4 + 8 + 8 + 4 + 4 + 2 + msg.key_len() + msg.payload_len();
    if let Some(h) = headers {
        for hdr in h.iter() {
            n += 2 + hdr.key.len() + 4 + hdr.value.map_or(0, <[u8]>::len);
        }
    }
    n
}

/// Failures a running consumer rides out (librdkafka reconnects by itself).
fn transient(class: ErrorClass) -> bool {
    matches!(class, ErrorClass::Tcp | ErrorClass::Dns)
}

async fn reserve(tx: Option<&mpsc::Sender<Outbound>>) -> Option<mpsc::Permit<'_, Outbound>> {
    match tx {
        Some(tx) => tx.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

/// How long a full window may hold records in librdkafka's queue before
/// the partitions are paused instead.
const LONG_STALL: Duration = Duration::from_secs(10);

/// Batches in flight below which a partial batch is sent as soon as no
/// record is waiting (Nagle's rule, with a few batches instead of one):
/// a record at a low rate goes out at once, and at a high rate records
/// gather while acks are due instead of becoming one tiny batch each, which
/// the control plane would pay for per batch.
const EAGER: usize = 4;

/// Records taken from librdkafka per `select!` round at most, so that acks
/// and sends are served in between.
const DRAIN_MAX: usize = 1024;

/// Records appended to batches under one lock of the job's core.
const CHUNK: usize = 128;

/// How often a job whose held frames are all queued for the socket looks
/// whether the writer is done with some (nothing else would wake it).
const HELD_POLL: Duration = Duration::from_millis(2);

/// Longest wait for librdkafka to move the partitions back to their
/// watermarks on a restored session.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// Free (or keep for reuse) the frames the session's writer is done with.
/// Returns the bytes of every batch in flight, and of those whose frame the
/// writer still holds (queued, being written).
fn release_written(unacked: &mut VecDeque<InFlight>, c: &mut Core) -> (usize, usize) {
    let (mut sent, mut held) = (0, 0);
    for u in unacked.iter_mut() {
        sent += u.len;
        match u.frame.take() {
            Some(f) if f.is_unique() => c.recycle(f),
            Some(f) => {
                held += u.len;
                u.frame = Some(f);
            }
            None => {}
        }
    }
    (sent, held)
}

pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Nothing more is waiting and few batches are in flight: send now rather
/// than after `max_wait_ms`. Otherwise the batch grows until an ack frees a
/// slot (see `on_wake`).
fn seal_if_quiet(core: &Mutex<Core>, taken: &Taken, limits: &Limits, paused: bool) {
    if taken.dry && taken.in_flight < limits.eager && !paused {
        lock(core).seal();
    }
}

/// Limits of one consumer's pump, fixed for its life.
struct Limits {
    /// Batches in flight (sent and unacked, plus sealed and waiting) at most.
    window: usize,
    /// Bytes in flight (sent and unacked, plus sealed and waiting) at most,
    /// whatever the window: a job's rate is at most this per round trip.
    window_bytes: usize,
    /// Bytes of frames in memory (sealed, or sent and not yet written)
    /// at most: what a slow socket can make the agent hold.
    held_cap: usize,
    /// Batches in flight below which a partial batch goes out at once.
    eager: usize,
    max_records: usize,
    max_wait: Duration,
}

impl Limits {
    fn of(runner: &Runner) -> Limits {
        let window = runner.spec.window as usize;
        Limits {
            window,
            window_bytes: usize::try_from(runner.spec.window_bytes).unwrap_or(usize::MAX),
            held_cap: runner.settings.held_bytes,
            eager: window.min(EAGER),
            max_records: runner.spec.max_records as usize,
            max_wait: Duration::from_millis(runner.spec.max_wait_ms),
        }
    }
}

/// What the pump knows of the session and the control between rounds.
struct Flow {
    session: Option<mpsc::Sender<Outbound>>,
    session_gen: u64,
    paused: bool,
    draining: bool,
    /// When the session went; the grace period runs from here.
    lost_since: Option<Instant>,
    /// Whether librdkafka's fetcher runs (the partitions are not paused).
    fetching: bool,
    /// A full window leaves records in librdkafka's (bounded) queue rather
    /// than pausing the partitions: a pause drops what was prefetched, and
    /// after a resume the fetcher idles up to `fetch.queue.backoff.ms`.
    /// Only a window full for LONG_STALL pauses (and serves rebalances).
    full_since: Option<Instant>,
}

impl Flow {
    fn new(c: &Control) -> Flow {
        Flow {
            session: c.session.clone(),
            session_gen: c.session_gen,
            paused: c.paused,
            draining: c.draining,
            lost_since: c.session.is_none().then(Instant::now),
            fetching: true,
            full_since: None,
        }
    }

    /// A session to send to, and the job neither paused nor draining.
    fn live(&self) -> bool {
        self.session.is_some() && !self.paused && !self.draining
    }

    fn lose_session(&mut self) {
        self.session = None;
        self.lost_since = Some(Instant::now());
    }
}

/// The job's batches at the start of a round, read under one lock.
struct Snapshot {
    sealed: usize,
    sealed_bytes: usize,
    build_deadline: Option<Instant>,
    has_building: bool,
    rebalanced: bool,
    building_records: usize,
    unacked_bytes: usize,
    held_sent: usize,
}

/// What may happen in one round of the `select!`.
struct Round {
    in_flight: usize,
    /// Bytes of records that may still be taken.
    byte_room: usize,
    building_records: usize,
    build_deadline: Option<Instant>,
    held_check: Option<Instant>,
    stall_check: Option<Instant>,
    grace_end: Option<Instant>,
    can_send: bool,
    take_records: bool,
}

/// The consumer's stream and the chunk of records taken from it.
struct Intake<'a> {
    records: MessageStream<'a, RelayContext>,
    chunk: Vec<BorrowedMessage<'a>>,
}

/// What one round took from librdkafka.
struct Taken {
    count: usize,
    bytes: usize,
    in_flight: usize,
    /// Nothing more was waiting in librdkafka's queue.
    dry: bool,
}

impl<'a> Intake<'a> {
    /// Move records into the chunk, starting with `next`, until the chunk
    /// is full, a limit is reached or nothing more is waiting. Returns the
    /// consumer error that stopped it, if one did.
    fn fill(
        &mut self,
        next: &mut Option<KafkaResult<BorrowedMessage<'a>>>,
        taken: &mut Taken,
        room: usize,
        byte_room: usize,
    ) -> Option<KafkaError> {
        while let Some(msg) = next.take() {
            match msg {
                Ok(m) => {
                    taken.bytes += m.payload_len() + m.key_len();
                    self.chunk.push(m);
                }
                Err(e) => return Some(e),
            }
            taken.count += 1;
            if self.chunk.len() >= CHUNK.min(room)
                || taken.count >= DRAIN_MAX
                || taken.bytes >= byte_room
            {
                break;
            }
            *next = self.poll_now();
            taken.dry = next.is_none();
        }
        None
    }

    /// The next record if librdkafka already holds one.
    fn poll_now(&mut self) -> Option<KafkaResult<BorrowedMessage<'a>>> {
        self.records.next().now_or_never().flatten()
    }
}

impl Runner {
    /// The main loop of a running consumer: plan the round, then serve
    /// whichever event comes first (see the module's header for the order).
    pub(crate) async fn pump(
        &mut self,
        consumer: &Arc<StreamConsumer<RelayContext>>,
        core: &Arc<Mutex<Core>>,
        errors: &ErrorLog,
    ) -> Exit {
        let limits = Limits::of(self);
        let mut control = self.shared.control.subscribe();
        let mut flow = Flow::new(&control.borrow_and_update());
        let mut intake = Intake {
            records: consumer.stream(),
            chunk: Vec::with_capacity(CHUNK),
        };
        let mut tick = tokio::time::interval(self.settings.state_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let Some(round) = self.plan_round(consumer, core, &limits, &mut flow) else {
                return Exit::Stop;
            };
            // Cloned only when there is something to send (not per record).
            let tx = if round.can_send {
                flow.session.clone()
            } else {
                None
            };
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Exit::Stop,
                r = control.changed() => {
                    if r.is_err() {
                        return Exit::Stop;
                    }
                    let c = control.borrow_and_update().clone();
                    if let Err(e) = self.on_control(c, &mut flow, consumer, core).await {
                        return Exit::Failed(e);
                    }
                }
                _ = self.shared.wake.notified() => self.on_wake(consumer, core, limits.eager),
                permit = reserve(tx.as_ref()), if round.can_send => match permit {
                    Some(permit) => self.send_one(permit, core),
                    // The session's receiver is gone: same as a lost session.
                    None => flow.lose_session(),
                },
                _ = sleep_until_opt(round.grace_end) => return Exit::SessionGone,
                _ = sleep_until_opt(round.build_deadline) => lock(core).seal(),
                _ = sleep_until_opt(round.stall_check) => {}
                _ = sleep_until_opt(round.held_check) => {}
                // Before `recv`: a busy stream must not starve the reports.
                _ = tick.tick() => self.on_tick(core),
                Some(msg) = intake.records.next(), if round.take_records => {
                    match self.take_records(msg, &mut intake, &round, &limits, core, errors) {
                        Ok(taken) => seal_if_quiet(core, &taken, &limits, flow.paused),
                        Err(exit) => return exit,
                    }
                }
            }
        }
    }

    /// Decide what may happen in this round: free written frames, pause or
    /// resume fetching, update the phase. `None` when a drain is complete.
    fn plan_round(
        &mut self,
        consumer: &StreamConsumer<RelayContext>,
        core: &Mutex<Core>,
        limits: &Limits,
        flow: &mut Flow,
    ) -> Option<Round> {
        let snap = self.snapshot(core, flow.draining, limits.max_wait);
        if snap.rebalanced {
            self.report(Some(core), false);
        }
        let in_flight = self.unacked.len() + snap.sealed;
        let in_flight_bytes = snap.sealed_bytes + snap.unacked_bytes;
        // Bytes of records that may still be taken: within the window,
        // and within what the agent may hold in memory.
        let held = snap.sealed_bytes + snap.held_sent;
        let byte_room = limits
            .window_bytes
            .saturating_sub(in_flight_bytes)
            .min(limits.held_cap.saturating_sub(held));
        // Held memory is what stops the job and the writer has some of it.
        let held_check =
            (held >= limits.held_cap && snap.held_sent > 0).then(|| Instant::now() + HELD_POLL);
        let window_full = flow.live() && (in_flight >= limits.window || byte_room == 0);
        let (take_records, stall_check) = self.pace_fetching(consumer, core, flow, window_full);
        if flow.draining && snap.sealed == 0 && !snap.has_building && self.unacked.is_empty() {
            return None;
        }
        self.update_phase(flow, core);
        Some(Round {
            in_flight,
            byte_room,
            building_records: snap.building_records,
            build_deadline: snap.build_deadline,
            held_check,
            stall_check,
            grace_end: flow.lost_since.map(|t| t + self.settings.session_grace),
            can_send: flow.session.is_some()
                && snap.sealed > 0
                && self.unacked.len() < limits.window,
            take_records,
        })
    }

    /// Read the batches' state under one lock, sealing the batch being built
    /// when draining and releasing the frames the writer is done with.
    fn snapshot(&mut self, core: &Mutex<Core>, draining: bool, max_wait: Duration) -> Snapshot {
        let mut c = lock(core);
        if draining {
            c.seal();
        }
        let (unacked_bytes, held_sent) = release_written(&mut self.unacked, &mut c);
        let build_deadline = c
            .building
            .as_ref()
            .filter(|b| !b.writer.is_empty())
            .map(|b| b.opened + max_wait);
        Snapshot {
            sealed: c.sealed.len(),
            sealed_bytes: c.sealed.iter().map(|s| s.frame.len()).sum(),
            build_deadline,
            has_building: c.building.is_some(),
            rebalanced: std::mem::take(&mut c.rebalanced),
            building_records: c.building.as_ref().map_or(0, |b| b.writer.len() as usize),
            unacked_bytes,
            held_sent,
        }
    }

    /// Pause or resume librdkafka's fetcher for a full window (see
    /// [`LONG_STALL`]). Returns whether records may be taken this round and
    /// when a full window becomes a long stall.
    fn pace_fetching(
        &self,
        consumer: &StreamConsumer<RelayContext>,
        core: &Mutex<Core>,
        flow: &mut Flow,
        window_full: bool,
    ) -> (bool, Option<Instant>) {
        let want_fetch = flow.live() && !window_full;
        if window_full {
            flow.full_since.get_or_insert_with(Instant::now);
        } else {
            flow.full_since = None;
        }
        let long_stall = flow.full_since.is_some_and(|t| t.elapsed() >= LONG_STALL);
        let librdkafka_fetch = want_fetch || (window_full && !long_stall);
        if librdkafka_fetch != flow.fetching {
            flow.fetching = librdkafka_fetch;
            self.set_fetching(consumer, core, librdkafka_fetch);
        }
        let take_records = !window_full || long_stall;
        let stall_check = flow
            .full_since
            .filter(|_| !long_stall)
            .map(|t| t + LONG_STALL);
        (take_records, stall_check)
    }

    /// Report a phase change (failed, draining, paused or running).
    fn update_phase(&mut self, flow: &Flow, core: &Mutex<Core>) {
        let phase = if self.error.is_some() {
            JobPhase::Failed
        } else if flow.draining {
            JobPhase::Draining
        } else if flow.paused {
            JobPhase::Paused
        } else {
            JobPhase::Running
        };
        if phase != self.phase {
            self.set(phase, self.error.clone(), Some(core));
        }
    }

    /// A control change: pause, drain, a restored session (rewound to the
    /// watermarks) or a lost one (the grace period starts).
    async fn on_control(
        &mut self,
        c: Control,
        flow: &mut Flow,
        consumer: &Arc<StreamConsumer<RelayContext>>,
        core: &Mutex<Core>,
    ) -> Result<(), JobError> {
        flow.paused = c.paused;
        flow.draining = c.draining;
        if c.session.is_some() && c.session_gen != flow.session_gen {
            flow.session_gen = c.session_gen;
            flow.lost_since = None;
            flow.session = c.session;
            // Acks that came before the session went still
            // count; everything else is read again from Kafka.
            self.process_acks(consumer, core);
            let from = self.rewind(consumer, core).await?;
            info!(read_again_from = ?from, "session restored");
            self.last_sent = None;
            self.report(Some(core), false);
        } else if c.session.is_none() && flow.session.is_some() {
            info!(grace = ?self.settings.session_grace, "session lost; fetching stopped");
            flow.lose_session();
        }
        Ok(())
    }

    /// Acks came: apply them, and with few batches in flight send the
    /// partial batch now rather than after `max_wait_ms` (see [`EAGER`]).
    fn on_wake(
        &mut self,
        consumer: &StreamConsumer<RelayContext>,
        core: &Mutex<Core>,
        eager: usize,
    ) {
        self.process_acks(consumer, core);
        let mut c = lock(core);
        if self.unacked.len() + c.sealed.len() < eager
            && c.building.as_ref().is_some_and(|b| !b.writer.is_empty())
        {
            c.seal();
        }
    }

    /// The state interval: clear a healed connectivity error, free idle
    /// memory and report the state.
    fn on_tick(&mut self, core: &Mutex<Core>) {
        let broker_up = lock(core).broker_up;
        if broker_up == Some(true) && self.error.as_ref().is_some_and(|e| transient(e.class)) {
            info!("brokers reachable again");
            self.error = None;
        }
        {
            let mut c = lock(core);
            c.rebalanced = false;
            if self.unacked.is_empty() && c.sealed.is_empty() && c.building.is_none() {
                // Idle: no memory kept for batches that may not come.
                c.release_spare();
            }
        }
        self.report(Some(core), true);
    }

    /// Take what librdkafka already holds in one go (one `select!` round
    /// per record costs more than the record), in chunks appended under one
    /// lock. The lock is not held while polling: a poll may run the
    /// rebalance callback, which takes it too. `Err` when a consumer error
    /// ends this consumer.
    fn take_records<'a>(
        &mut self,
        first: KafkaResult<BorrowedMessage<'a>>,
        intake: &mut Intake<'a>,
        round: &Round,
        limits: &Limits,
        core: &Mutex<Core>,
        errors: &ErrorLog,
    ) -> Result<Taken, Exit> {
        let mut next = Some(first);
        let mut taken = Taken {
            count: 0,
            bytes: 0,
            in_flight: round.in_flight,
            dry: false,
        };
        let mut building_records = round.building_records;
        loop {
            // Records that still fit in the window: a chunk never
            // seals batches beyond it.
            let room = limits.window.saturating_sub(taken.in_flight) * limits.max_records
                - building_records.min(limits.max_records);
            let failed = intake.fill(&mut next, &mut taken, room, round.byte_room);
            if !intake.chunk.is_empty() {
                building_records = self.append_chunk(&mut intake.chunk, &mut taken.in_flight, core);
            }
            if let Some(e) = failed {
                return match self.on_error(e, errors, core) {
                    Some(exit) => Err(exit),
                    None => Ok(taken),
                };
            }
            if taken.dry
                || taken.count >= DRAIN_MAX
                || taken.in_flight >= limits.window
                || taken.bytes >= round.byte_room
            {
                return Ok(taken);
            }
            next = intake.poll_now();
            taken.dry = next.is_none();
            if taken.dry {
                return Ok(taken);
            }
        }
    }

    /// Append the chunk to the batches under one lock, counting the batches
    /// it sealed into `in_flight`; returns the records of the batch being
    /// built.
    fn append_chunk(
        &mut self,
        chunk: &mut Vec<BorrowedMessage<'_>>,
        in_flight: &mut usize,
        core: &Mutex<Core>,
    ) -> usize {
        let mut c = lock(core);
        for m in chunk.drain(..) {
            *in_flight += self.on_message(&m, &mut c);
        }
        let building_records = c.building.as_ref().map_or(0, |b| b.writer.len() as usize);
        drop(c);
        if self.error.as_ref().is_some_and(|e| transient(e.class)) {
            self.error = None;
        }
        building_records
    }

    /// Pause or resume every assigned partition; new assignments follow
    /// `core.paused` (see the rebalance callback).
    fn set_fetching(
        &self,
        consumer: &StreamConsumer<RelayContext>,
        core: &Mutex<Core>,
        fetch: bool,
    ) {
        lock(core).paused = !fetch;
        let assignment = match consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "cannot read the assignment");
                return;
            }
        };
        if assignment.count() == 0 {
            return;
        }
        let r = if fetch {
            consumer.resume(&assignment)
        } else {
            consumer.pause(&assignment)
        };
        match r {
            Ok(()) => debug!(
                fetch,
                "fetching {}",
                if fetch { "resumed" } else { "paused" }
            ),
            Err(e) => warn!(error = %e, fetch, "pause/resume failed"),
        }
    }

    /// Append a record to the batch being built, straight from librdkafka's
    /// buffer into the frame; returns how many batches this sealed.
    fn on_message(&self, msg: &BorrowedMessage<'_>, c: &mut Core) -> usize {
        let (p, o) = (msg.partition(), msg.offset());
        let max_records = self.spec.max_records;
        let max_bytes = self.spec.max_bytes as usize;
        // librdkafka parses the headers on every call, so ask once.
        let headers = msg.headers();
        let size = encoded_size(msg, headers);
        if !c.assigned.contains(&p) {
            // Left over from a revoked partition: its new owner reads it.
            return 0;
        }
        if c.parts.get(&p).is_some_and(|s| o < s.fetched) {
            // Already taken into a batch: a partition's records go out once
            // and in offset order, which the watermarks rely on.
            return 0;
        }
        let mut sealed = 0;
        if c.building
            .as_ref()
            .is_some_and(|b| !b.writer.is_empty() && b.writer.encoded_len() + size > max_bytes)
        {
            c.seal();
            sealed += 1;
        }
        if c.building.is_none() {
            let seq = next_seq();
            // A new buffer is small to start and grows as records come: a
            // full-size one per batch cost an mmap and page faults for every
            // small batch, and its memory while unacked.
            let buf = c.buffer(max_bytes.min(16 * 1024));
            c.building = Some(Building {
                seq,
                writer: BatchWriter::with_buffer(buf, &self.spec.id, seq, &self.spec.topic),
                parts: Vec::new(),
                opened: Instant::now(),
            });
        }
        let Some(b) = c.building.as_mut() else {
            return sealed;
        };
        b.writer.push(
            p,
            o,
            msg.timestamp().to_millis(),
            msg.key(),
            msg.payload(),
            headers
                .iter()
                .flat_map(|h| h.iter())
                .map(|h| (h.key, h.value)),
        );
        match b.parts.iter_mut().find(|(q, _)| *q == p) {
            Some(e) => e.1 = e.1.max(o),
            None => b.parts.push((p, o)),
        }
        let full = b.writer.len() >= max_records || b.writer.encoded_len() >= max_bytes;
        if let Some(s) = c.parts.get_mut(&p) {
            s.fetched = s.fetched.max(o + 1);
            s.start.get_or_insert(o);
        }
        if full {
            c.seal();
            sealed += 1;
        }
        sealed
    }

    /// A consumer error: fatal or blocking ones end this consumer (retried
    /// with backoff); connectivity ones are reported while librdkafka
    /// reconnects on its own.
    fn on_error(&mut self, e: KafkaError, errors: &ErrorLog, core: &Mutex<Core>) -> Option<Exit> {
        let seen = errors.take();
        let je = self.redacted(errors::classify(Some(&e), &seen, &self.target));
        if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
            return Some(Exit::Failed(je));
        }
        match je.class {
            ErrorClass::Sasl
            | ErrorClass::Tls
            | ErrorClass::Authorization
            | ErrorClass::TopicMissing
            | ErrorClass::Config => Some(Exit::Failed(je)),
            // A name that resolved a moment ago, a broker restarting: librdkafka
            // reconnects by itself, and the preflight of a new consumer would
            // meet the same trouble.
            ErrorClass::Tcp | ErrorClass::Dns => {
                if self.error.is_none() {
                    warn!(error = %je.message, "stream unreachable; librdkafka keeps reconnecting");
                }
                lock(core).broker_up = None;
                self.set(JobPhase::Failed, Some(je), Some(core));
                None
            }
            _ => {
                warn!(error = %je.message, "consumer error");
                None
            }
        }
    }

    /// Send the oldest sealed batch.
    fn send_one(&mut self, permit: mpsc::Permit<'_, Outbound>, core: &Mutex<Core>) {
        let mut c = lock(core);
        let Some(sealed) = c.sealed.pop_front() else {
            return;
        };
        c.tracker.sent(sealed.seq, sealed.parts.iter().copied());
        for (p, o) in &sealed.parts {
            if let Some(s) = c.parts.get_mut(p) {
                s.relayed = s.relayed.max(o + 1);
            }
        }
        drop(c);
        // Registered before the send, so an ack cannot beat it.
        self.shared.expect_ack(sealed.seq);
        self.records_relayed += u64::from(sealed.records);
        self.bytes_relayed += sealed.frame.len() as u64;
        self.bytes_uncompressed += sealed.raw_len as u64;
        self.unacked.push_back(InFlight {
            seq: sealed.seq,
            frame: Some(sealed.frame.clone()),
            len: sealed.frame.len(),
        });
        permit.send(Outbound::Batch {
            job_id: self.spec.id.clone(),
            batch_seq: sealed.seq,
            frame: sealed.frame,
        });
    }

    /// A new session: drop every batch not acked and seek each partition
    /// back to its watermark, so its records are read again from Kafka and
    /// sent in new batches. Returns where each partition reads again. If
    /// librdkafka cannot seek, the consumer must restart from the committed
    /// offsets (the error says so): going on would skip records.
    async fn rewind(
        &mut self,
        consumer: &Arc<StreamConsumer<RelayContext>>,
        core: &Mutex<Core>,
    ) -> Result<Vec<(i32, i64)>, JobError> {
        let from = {
            let mut c = lock(core);
            let from = c.rewind();
            // The totals (records, bytes relayed) keep what was sent: the
            // records read again count again, as they cross the link again.
            let mut abandoned = Vec::with_capacity(self.unacked.len());
            for u in self.unacked.drain(..) {
                abandoned.push(u.seq);
                if let Some(frame) = u.frame {
                    c.recycle(frame);
                }
            }
            crate::metrics::batches_abandoned(&self.spec.id, &abandoned);
            from
        };
        self.shared.clear_inbox();
        if from.is_empty() {
            return Ok(from);
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &from {
            let _ = tpl.add_partition_offset(&self.spec.topic, *p, Offset::Offset(*o));
        }
        // With a timeout, librdkafka confirms each seek and guarantees that
        // no record fetched before it reaches the job; it blocks meanwhile.
        let c = consumer.clone();
        let sought =
            tokio::task::spawn_blocking(move || c.seek_partitions(tpl, SEEK_TIMEOUT)).await;
        let mut failed = String::new();
        match sought {
            Err(e) => failed = e.to_string(),
            Ok(Err(e)) => failed = e.to_string(),
            Ok(Ok(tpl)) => {
                for e in tpl.elements() {
                    if let Err(err) = e.error() {
                        let _ = write!(failed, "partition {}: {err}; ", e.partition());
                    }
                }
            }
        }
        if failed.is_empty() {
            return Ok(from);
        }
        Err(JobError {
            class: ErrorClass::Other,
            message: format!(
                "could not seek back to the unacked records ({}); the consumer restarts from the committed offsets",
                failed.trim_end_matches("; ")
            ),
        })
    }

    /// Apply acks: move watermarks and store the new offsets (committed by
    /// librdkafka's auto-commit within a second).
    fn process_acks(&mut self, consumer: &StreamConsumer<RelayContext>, core: &Mutex<Core>) {
        let acks = self.shared.take_acks();
        if acks.is_empty() {
            return;
        }
        let mut moved: BTreeMap<i32, i64> = BTreeMap::new();
        {
            let mut c = lock(core);
            for seq in acks {
                if let Some(i) = self.unacked.iter().position(|u| u.seq == seq) {
                    if let Some(frame) = self.unacked.remove(i).and_then(|u| u.frame) {
                        c.recycle(frame);
                    }
                    self.batches_acked += 1;
                }
                for (p, w) in c.tracker.ack(seq) {
                    moved.insert(p, w);
                }
            }
            for (p, w) in &moved {
                if let Some(s) = c.parts.get_mut(p) {
                    s.acked = *w;
                }
            }
        }
        if moved.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, w) in &moved {
            let _ = tpl.add_partition_offset(&self.spec.topic, *p, Offset::Offset(*w));
        }
        // `store_offsets` stores the offsets as given: the watermark is
        // already the next offset to read (last acked + 1).
        if let Err(e) = consumer.store_offsets(&tpl) {
            warn!(error = %e, offsets = ?moved, "storing offsets failed");
        }
    }
}
