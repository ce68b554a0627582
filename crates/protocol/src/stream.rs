//! Publish and read on demand: the control plane asks one agent of a group
//! to write records into a private stream, or to read records from it
//! without a consumer group, and the agent answers with what happened.
//!
//! Records cross the wire inside a batch frame ([`crate::batch`], base64 in
//! the JSON message), so a record's bytes are encoded one way only, whatever
//! the direction. An agent announces that it understands these messages with
//! [`CAPABILITY_PUBLISH`] and [`CAPABILITY_READ`] in its hello; the control
//! plane sends them to no other agent, so an older agent is never left
//! holding a message it cannot answer (docs/PROTOCOL.md, "Versioning").

use crate::batch::{self, Batch, BatchWriter};
use crate::job::{ErrorClass, JobError, JobSpec, Security};
use crate::validate::SpecError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// In a hello's `capabilities`: the agent answers `publish`.
pub const CAPABILITY_PUBLISH: &str = "publish";
/// In a hello's `capabilities`: the agent answers `read`.
pub const CAPABILITY_READ: &str = "read";

/// The header every published record carries: `<idempotency key>/<index>`.
/// It lets an agent find the records of an earlier attempt whose answer was
/// lost, so a retry does not write them twice (docs/CONTROL_PLANE.md).
pub const IDEMPOTENCY_HEADER: &str = "connectivity-idempotency";

/// OCI Streaming's limit on one record (key, value and headers), the limit
/// this build designs for.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Largest frame a read result carries. Base64 makes it a third larger, and
/// the message must stay under [`crate::MAX_CONTROL_MESSAGE_BYTES`].
pub const MAX_READ_BYTES: u32 = 512 * 1024;

/// Largest frame a publish request carries: with base64 and the message
/// around it, under [`crate::MAX_PUBLISH_MESSAGE_BYTES`].
pub const MAX_PUBLISH_FRAME_BYTES: usize = 3 * 1024 * 1024 - 64 * 1024;

/// A stream connection: where the stream is and how to log in. The same
/// fields, and the same checks, as a poll job's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamConnection {
    pub bootstrap_servers: String,
    pub topic: String,
    #[serde(default)]
    pub security: Security,
}

impl StreamConnection {
    /// The checks a poll job's connection gets ([`crate::validate::check`]):
    /// endpoint and topic names, security settings, the truststore opens.
    pub fn check(&self) -> Result<(), SpecError> {
        crate::validate::check(&self.as_job_spec("stream-connection"))
    }

    /// A job spec with this connection, for code written for jobs (client
    /// settings, error messages). It is never run as a poll job.
    pub fn as_job_spec(&self, id: &str) -> JobSpec {
        use crate::job::defaults;
        JobSpec {
            id: id.to_owned(),
            bootstrap_servers: self.bootstrap_servers.clone(),
            topic: self.topic.clone(),
            partitions: Default::default(),
            consumer_group: "none".into(),
            start: Default::default(),
            max_records: defaults::max_records(),
            max_bytes: defaults::max_bytes(),
            max_wait_ms: defaults::max_wait_ms(),
            window: defaults::window(),
            window_bytes: defaults::window_bytes(),
            session_timeout_ms: defaults::session_timeout_ms(),
            compression: Default::default(),
            security: self.security.clone(),
        }
    }
}

/// Write records into a stream. The records are a batch frame: partition -1
/// lets the producer's partitioner choose; offsets are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishRequest {
    /// Chosen by the control plane; the result repeats it.
    pub request_id: String,
    pub connection: StreamConnection,
    /// The caller's idempotency key, written into [`IDEMPOTENCY_HEADER`].
    pub idempotency_key: String,
    /// Base64 of the batch frame holding the records.
    pub frame: String,
    /// Set when an earlier attempt with this key may have written some of
    /// the records (its answer never came): the agent first looks for them
    /// in records written since this time (ms since the epoch) and writes
    /// only those it does not find.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover_since_ms: Option<i64>,
    /// The agent answers within this time, with an error if it must.
    pub timeout_ms: u64,
}

/// Whether the producer wrote with Kafka's idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Idempotence {
    /// `enable.idempotence=true`: librdkafka's retries write no duplicates.
    Enabled,
    /// The broker refused INIT_PRODUCER_ID (OCI Streaming): written with
    /// `acks=all` and no producer retries (`docs/CONTROL_PLANE.md`).
    Unsupported,
}

/// What became of one record of a publish request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordOutcome {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// Found in the stream, written by an earlier attempt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
}

/// The agent's answer to a [`PublishRequest`], sent once the broker
/// acknowledged every record (`acks=all`) or refused it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishResult {
    pub request_id: String,
    /// One per record, in the request's order; empty when `error` is set.
    #[serde(default)]
    pub records: Vec<RecordOutcome>,
    /// The request failed as a whole (allow-list, bad settings, agent busy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotence: Option<Idempotence>,
}

/// An inclusive range of offsets (`10-11`; `6` is `6-6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRange {
    pub first: i64,
    pub last: i64,
}

/// Which records a read returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum ReadSelection {
    /// One partition from `offset` on.
    Offset { partition: i32, offset: i64 },
    /// These offsets of one partition, in order.
    Offsets {
        partition: i32,
        ranges: Vec<OffsetRange>,
    },
    /// The last `count` records of each partition.
    Latest { count: u32 },
    /// Each partition (or one) from the first record at or after the time.
    Timestamp {
        timestamp_ms: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partition: Option<i32>,
    },
}

/// Read records without a consumer group and without committing anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadRequest {
    pub request_id: String,
    pub connection: StreamConnection,
    pub selection: ReadSelection,
    /// At most this many records in all.
    pub max_records: u32,
    /// At most this many bytes of frame (capped at [`MAX_READ_BYTES`]).
    pub max_bytes: u32,
    pub timeout_ms: u64,
}

/// A partition's low and high watermarks: its first offset and the offset
/// the next record will get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRange {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

/// The agent's answer to a [`ReadRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadResult {
    pub request_id: String,
    /// Base64 of a batch frame with the records read; absent on error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<String>,
    /// The watermarks of the partitions read.
    #[serde(default)]
    pub partitions: Vec<PartitionRange>,
    /// More records matched than `max_records` or `max_bytes` allowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
}

/// A batch frame as base64, for [`PublishRequest::frame`] and [`ReadResult::frame`].
pub fn frame_to_base64(writer: BatchWriter) -> String {
    B64.encode(writer.finish())
}

/// The batch inside a base64 frame.
pub fn frame_from_base64(text: &str) -> Result<Batch, String> {
    let raw = B64
        .decode(text)
        .map_err(|e| format!("frame is not base64: {e}"))?;
    batch::decode(Bytes::from(raw)).map_err(|e| format!("frame: {e}"))
}

/// Parse a list of offsets and ranges such as `6,10-11,16`. Ranges are
/// inclusive, in any order, and may not be empty or reversed.
pub fn parse_offsets(text: &str) -> Result<Vec<OffsetRange>, String> {
    let fix = "give offsets and inclusive ranges separated by commas, e.g. 6,10-11,16";
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim) {
        let number = |s: &str| {
            s.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| format!("offsets {text:?}: {item:?} is not an offset; {fix}"))
        };
        let range = match item.split_once('-') {
            Some((a, b)) => OffsetRange {
                first: number(a)?,
                last: number(b)?,
            },
            None => {
                let n = number(item)?;
                OffsetRange { first: n, last: n }
            }
        };
        if range.last < range.first {
            return Err(format!(
                "offsets {text:?}: range {item:?} ends before it starts; {fix}"
            ));
        }
        out.push(range);
    }
    Ok(out)
}

/// An error of a class, for answers built outside the Kafka client.
pub fn error(class: ErrorClass, message: impl Into<String>) -> JobError {
    JobError {
        class,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_ranges_parse_and_bad_ones_are_named() {
        let r = parse_offsets("6,10-11,16").unwrap();
        let pairs: Vec<_> = r.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(pairs, vec![(6, 6), (10, 11), (16, 16)]);
        assert_eq!(
            parse_offsets("6,x").unwrap_err(),
            "offsets \"6,x\": \"x\" is not an offset; give offsets and inclusive ranges separated by commas, e.g. 6,10-11,16"
        );
        assert_eq!(
            parse_offsets("11-10").unwrap_err(),
            "offsets \"11-10\": range \"11-10\" ends before it starts; give offsets and inclusive ranges separated by commas, e.g. 6,10-11,16"
        );
        assert!(parse_offsets("").is_err());
        assert!(parse_offsets("-3").is_err());
    }

    #[test]
    fn frames_survive_base64() {
        let mut w = BatchWriter::new("req-1", 0, "t", 4);
        w.push(-1, 0, None, Some(b"k"), Some(b"v"), std::iter::empty());
        let batch = frame_from_base64(&frame_to_base64(w)).unwrap();
        assert_eq!(batch.records.len(), 1);
        assert_eq!(batch.records[0].partition, -1);
        assert!(frame_from_base64("***").unwrap_err().contains("not base64"));
    }

    #[test]
    fn a_stream_connection_gets_the_poll_jobs_checks() {
        let c = StreamConnection {
            bootstrap_servers: "h:9092".into(),
            topic: "bad topic".into(),
            security: Security::default(),
        };
        let err = c.check().unwrap_err().to_string();
        assert!(err.starts_with("job field topic is \"bad topic\""), "{err}");
    }
}
