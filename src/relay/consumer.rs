//! The state one Kafka consumer of a job shares with librdkafka's callbacks,
//! and the consumer context that serves those callbacks.
//!
//! librdkafka runs rebalance, commit and statistics callbacks inside the
//! consumer's poll, i.e. inside the job's own `recv()` (or, when the consumer
//! is closed, on the thread that drops it). The state they touch is in
//! [`Core`] behind a mutex; the job never holds that lock across a call into
//! librdkafka, so a callback can always take it.
//!
//! On revoke, the acked watermarks of the revoked partitions are committed
//! synchronously before the partitions go, and the partitions are forgotten
//! everywhere (ack tracker, batches being built or waiting to be sent), so a
//! late ack can never move the watermark of a later assignment.

use crate::kafka::context::{on_error, on_log};
use crate::kafka::errors::ErrorLog;
use crate::relay::watermark::Watermarks;
use bytes::{Bytes, BytesMut};
use connectivity_protocol::batch::{BatchWriter, Compressor, MAGIC_COMPRESSED};
use connectivity_protocol::job::PartitionState;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// How long a callback waits for the group coordinator (committed offsets,
/// commit on revoke).
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Progress of one partition, as reported in [`PartitionState`]; -1 = not known yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartStats {
    pub fetched: i64,
    pub relayed: i64,
    pub acked: i64,
    pub committed: i64,
    pub high: Option<i64>,
    /// Offset of the first record taken into a batch since the partition
    /// was assigned: where to read again when nothing was acked yet.
    pub start: Option<i64>,
}

impl Default for PartStats {
    fn default() -> Self {
        PartStats {
            fetched: -1,
            relayed: -1,
            acked: -1,
            committed: -1,
            high: None,
            start: None,
        }
    }
}

/// A batch being filled.
pub struct Building {
    pub seq: u64,
    pub writer: BatchWriter,
    /// Partitions in the batch with their highest offset, in first-seen order.
    pub parts: Vec<(i32, i64)>,
    pub opened: Instant,
}

/// A finished batch waiting for the window (or the session) to send it.
pub struct Sealed {
    pub seq: u64,
    /// The frame as it goes on the wire (compressed when the job compresses).
    pub frame: Bytes,
    /// The frame's size before compression.
    pub raw_len: usize,
    pub records: u32,
    pub parts: Vec<(i32, i64)>,
}

/// State shared between a job's loop and its consumer's callbacks.
#[derive(Default)]
pub struct Core {
    pub tracker: Watermarks,
    pub parts: BTreeMap<i32, PartStats>,
    pub assigned: BTreeSet<i32>,
    pub building: Option<Building>,
    pub sealed: VecDeque<Sealed>,
    /// Whether fetching should be paused; newly assigned partitions start paused then.
    pub paused: bool,
    /// The assignment changed since the job last reported its state.
    pub rebalanced: bool,
    /// Some broker connection was up at the last statistics report.
    pub broker_up: Option<bool>,
    /// Buffers of acked batches, reused for new ones (at most [`SPARE`]):
    /// a fresh buffer per batch cost page faults and copies as it grew,
    /// measured at a sixth of the agent's CPU with 10 KiB records.
    spare: Vec<BytesMut>,
    /// The job's compression of sealed frames, when it compresses.
    pub compressor: Option<Compressor>,
}

/// Buffers kept for reuse per job, at most.
const SPARE: usize = 4;

impl Core {
    /// Drop a partition from everything: watermark, stats, unsent batches.
    pub fn forget(&mut self, p: i32) {
        self.tracker.forget(p);
        self.parts.remove(&p);
        self.assigned.remove(&p);
        if let Some(b) = &mut self.building {
            b.parts.retain(|(q, _)| *q != p);
        }
        for s in &mut self.sealed {
            s.parts.retain(|(q, _)| *q != p);
        }
        self.rebalanced = true;
    }

    /// Keep the buffer of an acked frame for the next batch, if nothing
    /// else holds it any more.
    pub fn recycle(&mut self, frame: Bytes) {
        // A compressed frame is cut to its size: too small to build in.
        if frame.starts_with(MAGIC_COMPRESSED) {
            return;
        }
        if let Ok(buf) = frame.try_into_mut() {
            self.keep(buf);
        }
    }

    fn keep(&mut self, buf: BytesMut) {
        if self.spare.len() < SPARE {
            self.spare.push(buf);
        }
    }

    /// A buffer for a new batch: a recycled one, or a new one of `capacity`.
    pub fn buffer(&mut self, capacity: usize) -> BytesMut {
        self.spare
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(capacity))
    }

    /// Give the recycled buffers back (nothing is in flight).
    pub fn release_spare(&mut self) {
        self.spare = Vec::new();
    }

    /// Before the records that are not acked are read again from Kafka (a
    /// new session): drop the batch being built and those waiting, forget
    /// those in flight (their frames are the caller's), and return, for each
    /// assigned partition read past everything acked, the offset to read
    /// from again: its watermark, or the first offset read since it was
    /// assigned when nothing was acked yet.
    pub fn rewind(&mut self) -> Vec<(i32, i64)> {
        if let Some(b) = self.building.take() {
            self.keep(b.writer.finish_mut());
        }
        for s in std::mem::take(&mut self.sealed) {
            self.recycle(s.frame);
        }
        self.tracker.abandon_in_flight();
        let mut from = Vec::new();
        for (p, s) in &mut self.parts {
            if !self.assigned.contains(p) {
                continue;
            }
            let Some(at) = self.tracker.watermark(*p).or(s.start) else {
                continue;
            };
            if s.fetched > at {
                from.push((*p, at));
                s.fetched = at;
                s.relayed = s.relayed.min(at);
            }
        }
        from
    }

    /// Seal the batch being built, if it holds anything.
    pub fn seal(&mut self) {
        if let Some(b) = self.building.take() {
            if b.writer.is_empty() {
                return;
            }
            let records = b.writer.len();
            let raw = b.writer.finish_mut();
            let raw_len = raw.len();
            let frame = match self.compressor.as_mut().and_then(|c| c.compress(&raw)) {
                Some(compressed) => {
                    // The uncompressed frame's buffer serves the next batch.
                    self.keep(raw);
                    compressed
                }
                None => raw.freeze(),
            };
            self.sealed.push_back(Sealed {
                seq: b.seq,
                frame,
                raw_len,
                records,
                parts: b.parts,
            });
        }
    }

    /// The watermarks worth committing: acked beyond what is committed.
    pub fn to_commit(&self, topic: &str) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (p, w) in self.tracker.watermarks() {
            if self.assigned.contains(&p) && self.parts.get(&p).is_none_or(|s| w > s.committed) {
                // The topic name came from the job spec and was accepted by
                // librdkafka at subscribe time, so adding it cannot fail.
                let _ = tpl.add_partition_offset(topic, p, Offset::Offset(w));
            }
        }
        tpl
    }

    /// Record offsets known to be committed.
    pub fn note_committed(&mut self, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            if let (Offset::Offset(o), Some(s)) = (e.offset(), self.parts.get_mut(&e.partition())) {
                s.committed = s.committed.max(o);
            }
        }
    }

    pub fn partition_states(&self) -> Vec<PartitionState> {
        self.parts
            .iter()
            .map(|(p, s)| PartitionState {
                partition: *p,
                fetched: s.fetched,
                relayed: s.relayed,
                // Before the first ack here, everything below the committed
                // offset counts as acked (by an earlier owner).
                acked: if s.acked >= 0 { s.acked } else { s.committed },
                committed: s.committed,
                high_watermark: s.high,
            })
            .collect()
    }
}

/// Lock the core, surviving a poisoned lock (a panic elsewhere must not
/// take the job's bookkeeping down with it).
pub fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

/// The job consumer's context: failures to the error log, rebalances and
/// commits into the [`Core`].
pub struct RelayContext {
    pub core: Arc<Mutex<Core>>,
    pub errors: ErrorLog,
    pub job: String,
    pub topic: String,
    /// Start offsets for partitions the group has no committed offset for.
    pub start_offsets: BTreeMap<i32, i64>,
}

impl ClientContext for RelayContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, line: &str) {
        on_log(&self.errors, &self.job, level, fac, line);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        on_error(&self.errors, &self.job, &error, reason);
    }

    /// High watermarks, committed offsets and broker states, parsed from
    /// the statistics JSON (only the few fields needed, so new librdkafka
    /// fields cannot break it).
    fn stats_raw(&self, json: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<Stats>(json) else {
            return;
        };
        let mut core = lock(&self.core);
        if let Some(t) = stats.topics.get(&self.topic) {
            for (p, ps) in &t.partitions {
                let Ok(p) = p.parse::<i32>() else { continue };
                if let Some(s) = core.parts.get_mut(&p) {
                    if ps.hi_offset >= 0 {
                        s.high = Some(ps.hi_offset);
                    }
                    if ps.committed_offset >= 0 {
                        s.committed = ps.committed_offset;
                    }
                }
            }
        }
        // Bootstrap entries have node id -1; only real brokers count.
        let real: Vec<&BrokerStats> = stats.brokers.values().filter(|b| b.nodeid >= 0).collect();
        if !real.is_empty() {
            core.broker_up = Some(real.iter().any(|b| b.state == "UP"));
        }
    }
}

#[derive(Deserialize)]
struct Stats {
    #[serde(default)]
    topics: HashMap<String, TopicStats>,
    #[serde(default)]
    brokers: HashMap<String, BrokerStats>,
}

#[derive(Deserialize)]
struct TopicStats {
    #[serde(default)]
    partitions: HashMap<String, PartitionStats>,
}

#[derive(Deserialize)]
struct PartitionStats {
    #[serde(default = "minus_one")]
    hi_offset: i64,
    #[serde(default = "minus_one")]
    committed_offset: i64,
}

#[derive(Deserialize)]
struct BrokerStats {
    #[serde(default)]
    state: String,
    #[serde(default = "minus_one_i32")]
    nodeid: i32,
}

fn minus_one() -> i64 {
    -1
}
fn minus_one_i32() -> i32 {
    -1
}

impl ConsumerContext for RelayContext {
    /// librdkafka's default rebalance, plus: explicit start offsets before
    /// an assignment, commit-and-forget before a revocation, and pausing of
    /// new partitions while the job is not fetching.
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(base.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.apply_start_offsets(base, tpl);
                let r = if cooperative {
                    base.incremental_assign(tpl)
                } else {
                    base.assign(tpl)
                };
                self.check("assign", r);
                let parts: Vec<i32> = tpl
                    .elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                tracing::info!(job = %self.job, partitions = ?parts, "partitions assigned");
                let paused = {
                    let mut core = lock(&self.core);
                    for p in &parts {
                        core.assigned.insert(*p);
                        core.parts.entry(*p).or_default();
                    }
                    core.rebalanced = true;
                    core.paused
                };
                if paused {
                    self.check("pause", base.pause(tpl));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.commit_and_forget(base, tpl);
                let r = if cooperative {
                    base.incremental_unassign(tpl)
                } else {
                    base.unassign()
                };
                self.check("unassign", r);
            }
            other => {
                let code: rdkafka::types::RDKafkaErrorCode = other.into();
                tracing::warn!(job = %self.job, error = %code, "rebalance failed");
                self.errors
                    .record(Some(code), &format!("rebalance failed: {code}"));
                self.commit_and_forget(base, tpl);
                let r = if cooperative {
                    base.incremental_unassign(tpl)
                } else {
                    base.unassign()
                };
                self.check("unassign", r);
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => lock(&self.core).note_committed(offsets),
            // "No offset to commit" is the normal case of an idle interval.
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(job = %self.job, error = %e, "offset commit failed; the next one retries")
            }
        }
    }
}

impl RelayContext {
    fn check(&self, what: &str, r: KafkaResult<()>) {
        if let Err(e) = r {
            tracing::warn!(job = %self.job, error = %e, "{what} failed during rebalance");
        }
    }

    /// Partitions with an explicit start offset in the job start there,
    /// unless the group already committed an offset for them.
    fn apply_start_offsets(&self, base: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        if self.start_offsets.is_empty() {
            return;
        }
        let committed = match base.committed_offsets(tpl.clone(), CALLBACK_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(job = %self.job, error = %e, "cannot read committed offsets; explicit start offsets not applied");
                return;
            }
        };
        for e in committed.elements_for_topic(&self.topic) {
            if let (Some(start), Offset::Invalid) =
                (self.start_offsets.get(&e.partition()), e.offset())
            {
                let _ =
                    tpl.set_partition_offset(&self.topic, e.partition(), Offset::Offset(*start));
            }
        }
    }

    fn commit_and_forget(&self, base: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let revoked: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        // A lost assignment belongs to someone else already: committing
        // would overwrite the new owner's progress.
        let lost = base.assignment_lost();
        let commit = {
            let core = lock(&self.core);
            let mut commit = TopicPartitionList::new();
            if !lost {
                for e in core.to_commit(&self.topic).elements() {
                    if revoked.contains(&e.partition()) {
                        let _ = commit.add_partition_offset(&self.topic, e.partition(), e.offset());
                    }
                }
            }
            commit
        };
        if commit.count() > 0 {
            match base.commit(&commit, CommitMode::Sync) {
                Ok(()) => {
                    tracing::info!(job = %self.job, offsets = ?offsets(&commit), "committed on revoke")
                }
                Err(e) => {
                    tracing::warn!(job = %self.job, error = %e, "commit on revoke failed; those records will be read again")
                }
            }
        }
        let mut core = lock(&self.core);
        for p in &revoked {
            core.forget(*p);
        }
        tracing::info!(job = %self.job, partitions = ?revoked, lost, "partitions revoked");
    }
}

/// `partition => offset` pairs of a list, for logs.
pub fn offsets(tpl: &TopicPartitionList) -> Vec<(i32, i64)> {
    tpl.elements()
        .iter()
        .filter_map(|e| e.offset().to_raw().map(|o| (e.partition(), o)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn building(seq: u64, parts: Vec<(i32, i64)>) -> Building {
        let mut writer = BatchWriter::new("j", seq, "t", 64);
        for (p, o) in &parts {
            writer.push(*p, *o, None, None, Some(b"v"), []);
        }
        Building {
            seq,
            writer,
            parts,
            opened: Instant::now(),
        }
    }

    #[test]
    fn forget_strips_the_partition_from_unsent_batches() {
        let mut core = Core::default();
        core.assigned.extend([0, 1]);
        core.building = Some(building(1, vec![(0, 5), (1, 7)]));
        core.seal();
        core.building = Some(building(2, vec![(0, 6)]));
        core.forget(0);
        assert_eq!(core.sealed[0].parts, vec![(1, 7)]);
        assert_eq!(core.sealed[0].records, 2);
        assert!(core.building.as_ref().unwrap().parts.is_empty());
        assert!(!core.assigned.contains(&0));
        assert!(core.rebalanced);
    }

    #[test]
    fn to_commit_lists_only_watermarks_beyond_the_committed_offset() {
        let mut core = Core::default();
        core.assigned.extend([0, 1, 2]);
        for p in 0..3 {
            core.parts.entry(p).or_default();
        }
        core.tracker.sent(1, [(0, 9), (1, 9), (2, 9)]);
        core.tracker.ack(1);
        core.parts.get_mut(&1).unwrap().committed = 10;
        core.assigned.remove(&2);
        assert_eq!(offsets(&core.to_commit("t")), vec![(0, 10)]);
    }

    #[test]
    fn statistics_fill_in_high_watermarks_and_broker_state() {
        let core = Arc::new(Mutex::new(Core::default()));
        lock(&core).parts.entry(0).or_default();
        let ctx = RelayContext {
            core: core.clone(),
            errors: ErrorLog::default(),
            job: "j".into(),
            topic: "t".into(),
            start_offsets: BTreeMap::new(),
        };
        ctx.stats_raw(br#"{"brokers":{"b:1/bootstrap":{"state":"DOWN","nodeid":-1},"b:1/1":{"state":"UP","nodeid":1}},
            "topics":{"t":{"partitions":{"0":{"hi_offset":42,"committed_offset":40},"-1":{"hi_offset":-1},"9":{"hi_offset":3}}}}}"#);
        let c = lock(&core);
        assert_eq!(c.parts[&0].high, Some(42));
        assert_eq!(c.parts[&0].committed, 40);
        assert!(!c.parts.contains_key(&9));
        assert_eq!(c.broker_up, Some(true));
        drop(c);
        ctx.stats_raw(b"not json");
    }
}
