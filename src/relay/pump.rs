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
use crate::relay::job::next_seq;
use crate::relay::runner::{Exit, InFlight, Runner};
use connectivity_protocol::batch::BatchWriter;
use connectivity_protocol::job::JobError;
use connectivity_protocol::job::{ErrorClass, JobPhase};
use futures_util::{FutureExt, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
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

impl Runner {
    /// The main loop of a running consumer.
    pub(crate) async fn pump(
        &mut self,
        consumer: &Arc<StreamConsumer<RelayContext>>,
        core: &Arc<Mutex<Core>>,
        errors: &ErrorLog,
    ) -> Exit {
        let window = self.spec.window as usize;
        // Bytes in flight (sent and unacked, plus sealed and waiting) at most,
        // whatever the window: a job's rate is at most this per round trip.
        let window_bytes = usize::try_from(self.spec.window_bytes).unwrap_or(usize::MAX);
        // Bytes of frames in memory (sealed, or sent and not yet written)
        // at most: what a slow socket can make the agent hold.
        let held_cap = self.settings.held_bytes;
        let eager = window.min(EAGER);
        let max_records = self.spec.max_records as usize;
        let max_wait = Duration::from_millis(self.spec.max_wait_ms);
        let mut control = self.shared.control.subscribe();
        let (mut session, mut session_gen, mut paused, mut draining) = {
            let c = control.borrow_and_update();
            (c.session.clone(), c.session_gen, c.paused, c.draining)
        };
        let mut lost_since: Option<Instant> = session.is_none().then(Instant::now);
        let mut fetching = true;
        // A full window leaves records in librdkafka's (bounded) queue rather
        // than pausing the partitions: a pause drops what was prefetched, and
        // after a resume the fetcher idles up to `fetch.queue.backoff.ms`.
        // Only a window full for LONG_STALL pauses (and serves rebalances).
        let mut full_since: Option<Instant> = None;
        let mut records = consumer.stream();
        let mut chunk: Vec<BorrowedMessage<'_>> = Vec::with_capacity(CHUNK);
        let mut tick = tokio::time::interval(self.settings.state_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            // Decide what may happen in this round.
            let (
                sealed,
                sealed_bytes,
                build_deadline,
                has_building,
                rebalanced,
                building_records,
                unacked_bytes,
                held_sent,
            ) = {
                let mut c = lock(core);
                if draining {
                    c.seal();
                }
                let (unacked_bytes, held_sent) = release_written(&mut self.unacked, &mut c);
                let deadline = c
                    .building
                    .as_ref()
                    .filter(|b| !b.writer.is_empty())
                    .map(|b| b.opened + max_wait);
                let bytes: usize = c.sealed.iter().map(|s| s.frame.len()).sum();
                let building_records = c.building.as_ref().map_or(0, |b| b.writer.len() as usize);
                (
                    c.sealed.len(),
                    bytes,
                    deadline,
                    c.building.is_some(),
                    std::mem::take(&mut c.rebalanced),
                    building_records,
                    unacked_bytes,
                    held_sent,
                )
            };
            if rebalanced {
                self.report(Some(core), false);
            }
            let in_flight = self.unacked.len() + sealed;
            let in_flight_bytes = sealed_bytes + unacked_bytes;
            // Bytes of records that may still be taken: within the window,
            // and within what the agent may hold in memory.
            let held = sealed_bytes + held_sent;
            let byte_room = window_bytes
                .saturating_sub(in_flight_bytes)
                .min(held_cap.saturating_sub(held));
            // Held memory is what stops the job and the writer has some of it.
            let held_check =
                (held >= held_cap && held_sent > 0).then(|| Instant::now() + HELD_POLL);
            let window_full = session.is_some()
                && !paused
                && !draining
                && (in_flight >= window || byte_room == 0);
            let want_fetch = session.is_some() && !paused && !draining && !window_full;
            if window_full {
                full_since.get_or_insert_with(Instant::now);
            } else {
                full_since = None;
            }
            let long_stall = full_since.is_some_and(|t| t.elapsed() >= LONG_STALL);
            let librdkafka_fetch = want_fetch || (window_full && !long_stall);
            if librdkafka_fetch != fetching {
                fetching = librdkafka_fetch;
                self.set_fetching(consumer, core, librdkafka_fetch);
            }
            let take_records = !window_full || long_stall;
            let stall_check = full_since.filter(|_| !long_stall).map(|t| t + LONG_STALL);
            if draining && sealed == 0 && !has_building && self.unacked.is_empty() {
                return Exit::Stop;
            }
            let can_send = session.is_some() && sealed > 0 && self.unacked.len() < window;
            let grace_end = lost_since.map(|t| t + self.settings.session_grace);
            let phase = if self.error.is_some() {
                JobPhase::Failed
            } else if draining {
                JobPhase::Draining
            } else if paused {
                JobPhase::Paused
            } else {
                JobPhase::Running
            };
            if phase != self.phase {
                self.set(phase, self.error.clone(), Some(core));
            }

            // Cloned only when there is something to send (not per record).
            let tx = if can_send { session.clone() } else { None };
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Exit::Stop,
                r = control.changed() => {
                    if r.is_err() {
                        return Exit::Stop;
                    }
                    let c = control.borrow_and_update().clone();
                    paused = c.paused;
                    draining = c.draining;
                    if c.session.is_some() && c.session_gen != session_gen {
                        session_gen = c.session_gen;
                        lost_since = None;
                        session = c.session;
                        // Acks that came before the session went still
                        // count; everything else is read again from Kafka.
                        self.process_acks(consumer, core);
                        match self.rewind(consumer, core).await {
                            Ok(from) => info!(read_again_from = ?from, "session restored"),
                            Err(e) => return Exit::Failed(e),
                        }
                        self.last_sent = None;
                        self.report(Some(core), false);
                    } else if c.session.is_none() && session.is_some() {
                        info!(grace = ?self.settings.session_grace, "session lost; fetching stopped");
                        session = None;
                        lost_since = Some(Instant::now());
                    }
                }
                _ = self.shared.wake.notified() => {
                    self.process_acks(consumer, core);
                    let mut c = lock(core);
                    if self.unacked.len() + c.sealed.len() < eager && c.building.as_ref().is_some_and(|b| !b.writer.is_empty()) {
                        c.seal();
                    }
                }
                permit = reserve(tx.as_ref()), if can_send => match permit {
                    Some(permit) => self.send_one(permit, core),
                    None => {
                        // The session's receiver is gone: same as a lost session.
                        session = None;
                        lost_since = Some(Instant::now());
                    }
                },
                _ = sleep_until_opt(grace_end) => return Exit::SessionGone,
                _ = sleep_until_opt(build_deadline) => lock(core).seal(),
                _ = sleep_until_opt(stall_check) => {}
                _ = sleep_until_opt(held_check) => {}
                // Before `recv`: a busy stream must not starve the reports.
                _ = tick.tick() => {
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
                Some(msg) = records.next(), if take_records => {
                    // Take what librdkafka already holds in one go (one
                    // `select!` round per record costs more than the record),
                    // in chunks appended under one lock. The lock is not held
                    // while polling: a poll may run the rebalance callback,
                    // which takes it too.
                    let mut next = Some(msg);
                    let mut taken = 0;
                    let mut in_flight = in_flight;
                    let mut taken_bytes = 0;
                    let mut dry = false;
                    let mut failed = None;
                    let mut building_records = building_records;
                    'drain: loop {
                        // Records that still fit in the window: a chunk never
                        // seals batches beyond it.
                        let room = window.saturating_sub(in_flight) * max_records - building_records.min(max_records);
                        while let Some(msg) = next.take() {
                            match msg {
                                Ok(m) => {
                                    taken_bytes += m.payload_len() + m.key_len();
                                    chunk.push(m);
                                }
                                Err(e) => {
                                    failed = Some(e);
                                    break;
                                }
                            }
                            taken += 1;
                            if chunk.len() >= CHUNK.min(room) || taken >= DRAIN_MAX || taken_bytes >= byte_room {
                                break;
                            }
                            next = records.next().now_or_never().flatten();
                            dry = next.is_none();
                        }
                        if !chunk.is_empty() {
                            let mut c = lock(core);
                            for m in chunk.drain(..) {
                                in_flight += self.on_message(&m, &mut c);
                            }
                            building_records = c.building.as_ref().map_or(0, |b| b.writer.len() as usize);
                            drop(c);
                            if self.error.as_ref().is_some_and(|e| transient(e.class)) {
                                self.error = None;
                            }
                        }
                        if let Some(e) = failed.take() {
                            if let Some(exit) = self.on_error(e, errors, core) {
                                return exit;
                            }
                            break 'drain;
                        }
                        if dry || taken >= DRAIN_MAX || in_flight >= window || taken_bytes >= byte_room {
                            break 'drain;
                        }
                        next = records.next().now_or_never().flatten();
                        dry = next.is_none();
                        if dry {
                            break 'drain;
                        }
                    }
                    // Nothing more is waiting and few batches are in flight:
                    // send now rather than after `max_wait_ms`. Otherwise the
                    // batch grows until an ack frees a slot (see below).
                    if dry && in_flight < eager && !paused {
                        lock(core).seal();
                    }
                }
            }
        }
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
