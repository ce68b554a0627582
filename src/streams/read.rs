//! Reads on demand: a partition from an offset, a list of offsets and
//! ranges, the latest records of each partition, or from a timestamp.
//!
//! The consumer assigns partitions and seeks; it commits nothing and joins
//! no group (its `group.id` only satisfies librdkafka's `assign`), so a read never moves a poll job's offsets
//! and costs the stream no group membership. librdkafka blocks, so a read
//! runs on a blocking thread, bounded by the request's deadline.

use crate::allowlist::AllowList;
use crate::kafka::client::connection_config;
use crate::kafka::context::CaptureContext;
use crate::kafka::errors::{self, Target};
use connectivity_protocol::batch::BatchWriter;
use connectivity_protocol::job::{ErrorClass, JobError};
use connectivity_protocol::stream::{
    self, MAX_READ_BYTES, OffsetRange, PartitionRange, ReadRequest, ReadResult, ReadSelection,
    StreamConnection,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Longest a read may take, whatever the request says.
const MAX_DEADLINE: Duration = Duration::from_secs(60);

/// A consumer that reads by assignment only.
pub type Reader = BaseConsumer<CaptureContext>;

/// Run a read request to its answer.
pub async fn read(req: ReadRequest, allow: AllowList) -> ReadResult {
    let id = req.request_id.clone();
    tokio::task::spawn_blocking(move || read_blocking(&req, &allow))
        .await
        .unwrap_or_else(|e| {
            super::failed_read(
                id,
                stream::error(ErrorClass::Other, format!("read failed: {e}")),
            )
        })
}

fn read_blocking(req: &ReadRequest, allow: &AllowList) -> ReadResult {
    let deadline = Instant::now() + Duration::from_millis(req.timeout_ms).min(MAX_DEADLINE);
    let target = target_of(&req.connection);
    match run(req, &target, allow, deadline) {
        Ok(r) => r,
        Err(e) => super::failed_read(req.request_id.clone(), e),
    }
}

fn run(
    req: &ReadRequest,
    target: &Target,
    allow: &AllowList,
    deadline: Instant,
) -> Result<ReadResult, JobError> {
    let reader = reader(&req.connection, "read")?;
    let topic = &req.connection.topic;
    let marks = watermarks(
        &reader,
        topic,
        partitions_of(&req.selection),
        target,
        allow,
        deadline,
    )?;
    let plan = plan(&reader, &req.selection, &marks, topic, deadline, target)?;
    let max_bytes = req.max_bytes.clamp(1, MAX_READ_BYTES) as usize;
    let mut writer = BatchWriter::new(&req.request_id, 0, topic, 64 * 1024);
    let mut truncated = false;
    let wanted = |p: i32, o: i64| match &req.selection {
        ReadSelection::Offsets { ranges, .. } => {
            let _ = p;
            ranges.iter().any(|r| (r.first..=r.last).contains(&o))
        }
        _ => true,
    };
    scan(&reader, topic, &plan, deadline, target, |m| {
        if !wanted(m.partition(), m.offset()) {
            return true;
        }
        let size = m.payload_len() + m.key().map_or(0, <[u8]>::len);
        if writer.len() >= req.max_records || writer.encoded_len() + size > max_bytes {
            truncated = true;
            return false;
        }
        push(&mut writer, m);
        true
    })?;
    Ok(ReadResult {
        request_id: req.request_id.clone(),
        frame: Some(stream::frame_to_base64(writer)),
        partitions: marks.into_values().collect(),
        truncated,
        error: None,
    })
}

/// The partitions a selection names; `None` for all of them.
fn partitions_of(s: &ReadSelection) -> Option<i32> {
    match s {
        ReadSelection::Offset { partition, .. } | ReadSelection::Offsets { partition, .. } => {
            Some(*partition)
        }
        ReadSelection::Timestamp { partition, .. } => *partition,
        ReadSelection::Latest { .. } => None,
    }
}

/// Where to start and stop (exclusive) in each partition read.
pub type Plan = Vec<(i32, i64, i64)>;

pub fn plan(
    reader: &Reader,
    s: &ReadSelection,
    marks: &BTreeMap<i32, PartitionRange>,
    topic: &str,
    deadline: Instant,
    target: &Target,
) -> Result<Plan, JobError> {
    let mut plan = Vec::new();
    match s {
        ReadSelection::Offset { partition, offset } => {
            let m = marks[partition];
            in_range(
                topic,
                &m,
                &[OffsetRange {
                    first: *offset,
                    last: *offset,
                }],
                true,
            )?;
            plan.push((*partition, *offset, m.high));
        }
        ReadSelection::Offsets { partition, ranges } => {
            let m = marks[partition];
            in_range(topic, &m, ranges, false)?;
            let first = ranges.iter().map(|r| r.first).min().unwrap_or(m.high);
            let last = ranges.iter().map(|r| r.last).max().unwrap_or(m.high);
            plan.push((*partition, first, last + 1));
        }
        ReadSelection::Latest { count } => {
            for m in marks.values() {
                plan.push((m.partition, (m.high - i64::from(*count)).max(m.low), m.high));
            }
        }
        ReadSelection::Timestamp { timestamp_ms, .. } => {
            let mut tpl = TopicPartitionList::new();
            for p in marks.keys() {
                let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*timestamp_ms));
            }
            let found = reader
                .offsets_for_times(tpl, remaining(deadline))
                .map_err(|e| why(&e, reader, target))?;
            for e in found.elements() {
                if let (Offset::Offset(o), Some(m)) = (e.offset(), marks.get(&e.partition())) {
                    plan.push((e.partition(), o, m.high));
                }
            }
        }
    }
    Ok(plan)
}

/// Offsets outside a partition's watermarks are an error that says what
/// the partition holds. `allow_high`: reading from the high watermark is
/// fine (it returns nothing yet), reading it as a record is not.
fn in_range(
    topic: &str,
    m: &PartitionRange,
    ranges: &[OffsetRange],
    allow_high: bool,
) -> Result<(), JobError> {
    let top = if allow_high { m.high } else { m.high - 1 };
    let Some(bad) = ranges.iter().find(|r| r.first < m.low || r.last > top) else {
        return Ok(());
    };
    let what = if bad.first == bad.last {
        format!("offset {}", bad.first)
    } else {
        format!("offsets {}-{}", bad.first, bad.last)
    };
    let holds = if m.high > m.low {
        format!("offsets {}-{}", m.low, m.high - 1)
    } else {
        "no records".to_owned()
    };
    Err(stream::error(
        ErrorClass::OutOfRange,
        format!(
            "{what} of partition {} of topic {topic:?} is out of range: the partition holds {holds} \
             (low watermark {}, high watermark {}); read offsets from {} to {}",
            m.partition,
            m.low,
            m.high,
            m.low,
            (m.high - 1).max(m.low)
        ),
    ))
}

/// A consumer for the connection: no group, no commits, end-of-partition
/// events so a read knows when it has everything.
pub fn reader(c: &StreamConnection, label: &str) -> Result<Reader, JobError> {
    let mut config: ClientConfig = connection_config(&c.bootstrap_servers, &c.security)
        .map_err(|e| stream::error(ErrorClass::Config, e.to_string()))?;
    // librdkafka will not assign partitions without a group id. The group
    // is never joined (no subscribe) and nothing is committed to it, so one
    // name serves every read.
    config
        .set("group.id", "connectivity-agent-read")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("allow.auto.create.topics", "false")
        .set("fetch.wait.max.ms", "100");
    let ctx = CaptureContext {
        errors: Default::default(),
        label: label.to_owned(),
    };
    config
        .create_with_context(ctx)
        .map_err(|e| stream::error(ErrorClass::Config, e.to_string()))
}

/// The watermarks of the partitions of `topic` (or of `only`), checking the
/// advertised brokers are allowed (before any is contacted) and the topic
/// and the partition exist.
pub fn watermarks(
    reader: &Reader,
    topic: &str,
    only: Option<i32>,
    target: &Target,
    allow: &AllowList,
    deadline: Instant,
) -> Result<BTreeMap<i32, PartitionRange>, JobError> {
    let explain = |e: Option<&KafkaError>| match e {
        Some(e) => why(e, reader, target),
        None => errors::classify(None, &reader.context().errors.snapshot(), target),
    };
    let md = reader
        .fetch_metadata(Some(topic), remaining(deadline))
        .map_err(|e| explain(Some(&e)))?;
    super::check_brokers(allow, target, &md)?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| explain(None))?;
    if let Some(err) = t.error() {
        let code = rdkafka::types::RDKafkaErrorCode::from(err);
        return Err(errors::classify_one(Some(code), "", target));
    }
    let mut out = BTreeMap::new();
    for p in t.partitions().iter().map(|p| p.id()) {
        if only.is_some_and(|o| o != p) {
            continue;
        }
        let (low, high) = reader
            .fetch_watermarks(topic, p, remaining(deadline))
            .map_err(|e| explain(Some(&e)))?;
        out.insert(
            p,
            PartitionRange {
                partition: p,
                low,
                high,
            },
        );
    }
    if let Some(p) = only.filter(|_| out.is_empty()) {
        return Err(stream::error(
            ErrorClass::OutOfRange,
            format!(
                "topic {topic:?} has no partition {p}; it has partitions 0-{}",
                t.partitions().len().saturating_sub(1)
            ),
        ));
    }
    Ok(out)
}

/// Read each planned partition from its start to its end (exclusive),
/// handing every record to `visit` until it returns false. An error when
/// the deadline passes first: a partial read is not passed off as whole.
pub fn scan(
    reader: &Reader,
    topic: &str,
    plan: &Plan,
    deadline: Instant,
    target: &Target,
    mut visit: impl FnMut(&BorrowedMessage<'_>) -> bool,
) -> Result<(), JobError> {
    let mut open: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for &(p, start, end) in plan.iter().filter(|(_, s, e)| s < e) {
        open.insert(p, end);
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(start));
    }
    if open.is_empty() {
        return Ok(());
    }
    reader.assign(&tpl).map_err(|e| why(&e, reader, target))?;
    while !open.is_empty() {
        if Instant::now() >= deadline {
            return Err(stream::error(
                ErrorClass::Tcp,
                format!(
                    "the read did not finish in time; partitions {:?} of topic {topic:?} were still being read \
                     from {}; give a longer timeout or read fewer records",
                    open.keys().collect::<Vec<_>>(),
                    target.bootstrap
                ),
            ));
        }
        match reader.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(why(&e, reader, target)),
            Some(Ok(m)) => {
                let Some(&end) = open.get(&m.partition()) else {
                    continue;
                };
                if m.offset() >= end {
                    open.remove(&m.partition());
                    continue;
                }
                if !visit(&m) {
                    return Ok(());
                }
                if m.offset() + 1 >= end {
                    open.remove(&m.partition());
                }
            }
        }
    }
    Ok(())
}

/// A client failure with its cause: the classified reports, or when they
/// say nothing specific, librdkafka's own words.
pub fn why(e: &KafkaError, reader: &Reader, target: &Target) -> JobError {
    let mut err = errors::classify(Some(e), &reader.context().errors.snapshot(), target);
    if err.class == ErrorClass::Other {
        err.message = format!("{}: {e}", err.message);
    }
    err
}

/// Append one record to the frame.
fn push(writer: &mut BatchWriter, m: &BorrowedMessage<'_>) {
    let headers: Vec<(&str, Option<&[u8]>)> = m
        .headers()
        .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
        .unwrap_or_default();
    writer.push(
        m.partition(),
        m.offset(),
        m.timestamp().to_millis(),
        m.key(),
        m.payload(),
        headers,
    );
}

pub fn target_of(c: &StreamConnection) -> Target {
    Target::of(&c.as_job_spec("stream"))
}

pub fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_names_the_watermarks_and_what_to_read() {
        let m = PartitionRange {
            partition: 1,
            low: 5,
            high: 20,
        };
        let r = |first, last| OffsetRange { first, last };
        assert!(in_range("t", &m, &[r(5, 19)], false).is_ok());
        assert!(
            in_range("t", &m, &[r(20, 20)], true).is_ok(),
            "the high watermark is where reading waits"
        );
        let e = in_range("t", &m, &[r(6, 6), r(3, 4)], false).unwrap_err();
        assert_eq!(e.class, ErrorClass::OutOfRange);
        assert_eq!(
            e.message,
            "offsets 3-4 of partition 1 of topic \"t\" is out of range: the partition holds offsets 5-19 \
             (low watermark 5, high watermark 20); read offsets from 5 to 19"
        );
        let empty = PartitionRange {
            partition: 0,
            low: 7,
            high: 7,
        };
        let e = in_range("t", &empty, &[r(7, 7)], false).unwrap_err();
        assert!(
            e.message.contains("the partition holds no records"),
            "{}",
            e.message
        );
    }
}
