//! The kafka sink: a job's records published into a stream connection
//! through an agent of the connection's group (docs/DELIVERY.md, "kafka").
//!
//! The publish is the console API's ([`crate::streams`]): one connected
//! agent of the group (any of them, not necessarily the job's own) writes
//! with `acks=all` and answers with each record's partition and offset. A
//! batch is cut into requests by source partition and by the publish
//! limits; each request's idempotency key names the job, the source topic,
//! the partition, the offsets and (by hash) the records, so a retry of the
//! same batch replays the stored answer, or makes the agent look for the
//! records an attempt without an answer wrote, instead of writing twice.
//! Up to `max_parallel` requests of a job are in flight, never two of the
//! same source partition, so its records keep their order.

use super::definition::FieldError;
use super::lanes::{self, Accepted, Part};
use super::record::{OutBatch, ValueFormat, connect_payload};
use super::sink::SinkError;
use crate::commands::CommandHub;
use crate::streams::{self, PublishAnswer, StreamError, StreamService};
use connectivity_protocol::Record;
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Most requests of one job in flight: an agent runs 8 at once
/// ([`streams::hub::MAX_IN_FLIGHT_PER_AGENT`]), beyond which the hub
/// answers "busy" and the batch is retried.
pub const MAX_PARALLEL: u32 = 8;

/// `{"kind":"kafka","connection":"orders-copy","partitioning":"key","max_parallel":4}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// The stream connection to write into (`PUT /api/v1/streams/<name>`):
    /// its endpoint, topic, credentials and agent group.
    pub connection: String,
    #[serde(default)]
    pub partitioning: Partitioning,
    /// Requests in flight at once, each for another source partition.
    #[serde(default = "default_parallel")]
    pub max_parallel: u32,
}

fn default_parallel() -> u32 {
    4
}

/// Which partition of the target topic a record goes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioning {
    /// The producer's default partitioner: by key (records without a key
    /// are spread), so records with equal keys stay in one partition.
    #[default]
    Key,
    /// The record's partition number in the source topic (the target
    /// needs at least as many partitions).
    Source,
}

impl KafkaSinkConfig {
    pub(crate) fn validate(&self, errors: &mut Vec<FieldError>) {
        let name = &self.connection;
        let ok = (1..=128).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok {
            errors.push(FieldError::new(
                "sink.connection",
                Some(name.clone()),
                "is not a stream connection name",
                "give the name of a stream connection (GET /api/v1/streams lists them; 1-128 of A-Z a-z 0-9 . _ -)",
            ));
        }
        if !(1..=MAX_PARALLEL).contains(&self.max_parallel) {
            errors.push(FieldError::new(
                "sink.max_parallel",
                Some(self.max_parallel.to_string()),
                "is out of range",
                format!("give 1 to {MAX_PARALLEL}"),
            ));
        }
    }
}

/// What a kafka sink publishes through: the stream connections and the
/// agents' command queues.
#[derive(Clone)]
pub struct Publisher {
    pub streams: Arc<StreamService>,
    pub commands: Arc<CommandHub>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Publisher")
    }
}

/// A kafka sink ready to take batches.
pub struct KafkaSink {
    config: KafkaSinkConfig,
    publisher: Option<Publisher>,
}

impl fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    pub(crate) fn new(config: &KafkaSinkConfig, publisher: Option<Publisher>) -> KafkaSink {
        KafkaSink {
            config: config.clone(),
            publisher,
        }
    }

    /// Publish the batch's requests not yet in `accepted`, at most
    /// `max_parallel` at once, one source partition's in order. Every
    /// request the broker acknowledged whole is added to `accepted`, also
    /// when another failed; `Ok` when all of them are.
    pub(crate) async fn deliver(
        &self,
        batch: &OutBatch<'_>,
        accepted: &mut Accepted,
    ) -> Result<(), SinkError> {
        let Some(publisher) = &self.publisher else {
            return Err(self.error(
                "this control plane has no stream service to publish through".into(),
                false,
            ));
        };
        let lanes = self.lanes(batch);
        let seen: &Accepted = accepted;
        let parallel = self.config.max_parallel.clamp(1, MAX_PARALLEL) as usize;
        let outcomes = lanes::run(&lanes, parallel, |lane| {
            self.send_lane(publisher, batch, lane, seen)
        })
        .await;
        lanes::settle(outcomes, accepted)
    }

    /// The batch's records by source partition, each partition's in batch
    /// order, the job's value format applied. Keys, values and header
    /// values are shared with the batch (`Bytes`), not copied.
    fn lanes(&self, batch: &OutBatch<'_>) -> Vec<Vec<Record>> {
        let mut lanes: Vec<Vec<Record>> = Vec::new();
        let mut index: HashMap<i32, usize> = HashMap::new();
        for r in batch.records {
            let i = *index.entry(r.partition).or_insert_with(|| {
                lanes.push(Vec::new());
                lanes.len() - 1
            });
            let mut out = r.clone();
            if batch.format == ValueFormat::ConnectPayload
                && let Some(v) = &r.value
                && let Some(payload) = connect_payload(v)
            {
                out.value = Some(v.slice_ref(payload));
            }
            lanes[i].push(out);
        }
        lanes
    }

    /// One source partition's records, request by request, stopping at the
    /// first the broker did not take whole.
    async fn send_lane(
        &self,
        publisher: &Publisher,
        batch: &OutBatch<'_>,
        lane: &[Record],
        accepted: &Accepted,
    ) -> (Vec<Part>, Option<SinkError>) {
        let mut done = Vec::new();
        for run in streams::input::requests(lane) {
            let part = part_of(run);
            if accepted.contains(&part) {
                continue;
            }
            if let Err(err) = self.publish(publisher, batch, run, part).await {
                return (done, Some(err));
            }
            done.push(part);
        }
        (done, None)
    }

    async fn publish(
        &self,
        publisher: &Publisher,
        batch: &OutBatch<'_>,
        run: &[Record],
        part: Part,
    ) -> Result<(), SinkError> {
        let name = &self.config.connection;
        let keep_partitions = self.config.partitioning == Partitioning::Source;
        let prepared = publisher
            .streams
            .prepare_records(name, run, keep_partitions)
            .map_err(|e| self.stream_error(e))?;
        let key = idempotency_key(batch, part, prepared.hash());
        let answer = publisher
            .streams
            .publish_prepared(&publisher.commands, name, &key, prepared)
            .await
            .map_err(|e| self.stream_error(e))?;
        self.check_answer(&answer, run)
    }

    /// `Ok` when the broker acknowledged every record; else the first
    /// failure, named by its source partition and offset.
    fn check_answer(&self, answer: &PublishAnswer, run: &[Record]) -> Result<(), SinkError> {
        let failed = answer
            .records
            .iter()
            .zip(run)
            .find_map(|(o, r)| o.error.as_ref().map(|e| (r, e)));
        match failed {
            None => Ok(()),
            Some((r, e)) => Err(self.error(
                format!(
                    "record at partition {} offset {}: {}",
                    r.partition, r.offset, e.message
                ),
                streams::class_is_retryable(e.class),
            )),
        }
    }

    fn stream_error(&self, e: StreamError) -> SinkError {
        let retryable = e.is_retryable();
        self.error(e.to_string(), retryable)
    }

    fn error(&self, message: String, retryable: bool) -> SinkError {
        SinkError::Publish {
            connection: self.config.connection.clone(),
            message,
            retryable,
        }
    }
}

fn part_of(records: &[Record]) -> Part {
    let partition = records.first().map_or(0, |r| r.partition);
    let first = records.iter().map(|r| r.offset).min().unwrap_or(0);
    let last = records.iter().map(|r| r.offset).max().unwrap_or(0);
    (partition, first, last)
}

/// `sink:<hash>:<partition>:<first>-<last>`: the same for the same records
/// of the same job, whichever attempt sends them. The hash covers the job,
/// the source topic and the request's frame (the records as written), so
/// a key never comes back with other records (a topic recreated, a value
/// format changed), which the stream service would refuse for ever.
pub fn idempotency_key(batch: &OutBatch<'_>, (p, first, last): Part, frame_hash: &str) -> String {
    let mut h = Sha1::new();
    for part in [batch.job_id, batch.topic, frame_hash] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let hex: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sink:{hex}:{p}:{first}-{last}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(partition: i32, offset: i64, value: &'static [u8]) -> Record {
        Record {
            partition,
            offset,
            timestamp: Some(5),
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(value)),
            headers: vec![],
        }
    }

    #[test]
    fn config_defaults_and_checks() {
        let c: KafkaSinkConfig = serde_json::from_str(r#"{"connection":"orders-copy"}"#).unwrap();
        assert_eq!(
            c,
            KafkaSinkConfig {
                connection: "orders-copy".into(),
                partitioning: Partitioning::Key,
                max_parallel: 4
            }
        );
        let bad = KafkaSinkConfig {
            connection: String::new(),
            partitioning: Partitioning::Source,
            max_parallel: 9,
        };
        let mut errors = Vec::new();
        bad.validate(&mut errors);
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "sink.connection = \"\": is not a stream connection name; fix: give the name of a stream connection (GET /api/v1/streams lists them; 1-128 of A-Z a-z 0-9 . _ -)",
                "sink.max_parallel = \"9\": is out of range; fix: give 1 to 8"
            ]
        );
    }

    #[test]
    fn keys_are_stable_and_differ_by_job_records_and_offsets() {
        let recs = [rec(1, 10, b"a"), rec(1, 11, b"b")];
        let batch = OutBatch::new("job", "src", &recs, ValueFormat::Raw);
        let key = idempotency_key(&batch, part_of(&recs), "h1");
        assert!(
            key.starts_with("sink:") && key.ends_with(":1:10-11"),
            "{key}"
        );
        assert!(key.len() <= 128);
        crate::streams::check_key(&key).unwrap();
        assert_eq!(key, idempotency_key(&batch, part_of(&recs), "h1"));
        assert_ne!(key, idempotency_key(&batch, part_of(&recs), "h2"));
        let other = OutBatch::new("job2", "src", &recs, ValueFormat::Raw);
        assert_ne!(key, idempotency_key(&other, part_of(&recs), "h1"));
    }

    #[test]
    fn lanes_keep_each_partition_in_order_and_apply_the_value_format() {
        let recs = [
            rec(0, 1, br#"{"schema":{},"payload":{"a":1}}"#),
            rec(1, 7, b"x"),
            rec(0, 2, b"y"),
        ];
        let sink = KafkaSink::new(
            &serde_json::from_str(r#"{"connection":"c"}"#).unwrap(),
            None,
        );
        let batch = OutBatch::new("job", "src", &recs, ValueFormat::ConnectPayload);
        let lanes = sink.lanes(&batch);
        let offsets: Vec<Vec<i64>> = lanes
            .iter()
            .map(|l| l.iter().map(|r| r.offset).collect())
            .collect();
        assert_eq!(offsets, [vec![1, 2], vec![7]]);
        assert_eq!(lanes[0][0].value.as_deref(), Some(&br#"{"a":1}"#[..]));
    }

    #[tokio::test]
    async fn without_a_stream_service_a_delivery_fails_for_good() {
        let recs = [rec(0, 1, b"x")];
        let sink = KafkaSink::new(
            &serde_json::from_str(r#"{"connection":"c"}"#).unwrap(),
            None,
        );
        let batch = OutBatch::new("job", "src", &recs, ValueFormat::Raw);
        let err = sink
            .deliver(&batch, &mut Accepted::new())
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            "kafka sink (stream connection \"c\"): this control plane has no stream service to publish through"
        );
    }
}
