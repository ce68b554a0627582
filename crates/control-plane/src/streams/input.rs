//! Records as a console API caller gives them, to the bytes Kafka gets.
//!
//! The encoding is the record format's (docs/DELIVERY.md) read backwards: a
//! key or value without an `_encoding` is JSON and written as its exact JSON
//! text (numbers keep every digit); `"string"` writes the string's UTF-8;
//! `"base64"` writes the decoded bytes; `null` is a null key or value. So a
//! record read with the record format can be published again unchanged.

use super::StreamError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use connectivity_protocol::Record;
use connectivity_protocol::batch::BatchWriter;
use connectivity_protocol::stream::{
    IDEMPOTENCY_HEADER, MAX_PUBLISH_FRAME_BYTES, MAX_RECORD_BYTES,
};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Most records in one publish request.
pub const MAX_RECORDS: usize = 10_000;

/// One record of a publish request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRecord {
    #[serde(default)]
    pub key: Option<Box<RawValue>>,
    #[serde(default)]
    pub key_encoding: Option<Encoding>,
    #[serde(default)]
    pub value: Option<Box<RawValue>>,
    #[serde(default)]
    pub value_encoding: Option<Encoding>,
    #[serde(default)]
    pub headers: Vec<InputHeader>,
    /// The partition; absent: the producer's partitioner picks one by key.
    #[serde(default)]
    pub partition: Option<i32>,
    /// Milliseconds since the epoch; absent: the producer's clock.
    #[serde(default)]
    pub timestamp: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputHeader {
    pub name: String,
    /// A string (UTF-8), base64 with `value_encoding`, or null.
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub value_encoding: Option<Encoding>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    String,
    Base64,
}

/// The body of `POST /api/v1/streams/{name}/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    pub records: Vec<InputRecord>,
}

/// A record's bytes: its index and what is wrong, with the fix.
fn bytes_of(
    index: usize,
    field: &str,
    raw: &Option<Box<RawValue>>,
    enc: Option<Encoding>,
) -> Result<Option<Vec<u8>>, String> {
    let Some(raw) = raw.as_ref().filter(|r| r.get() != "null") else {
        return Ok(None);
    };
    let text = || -> Result<String, String> {
        serde_json::from_str::<String>(raw.get()).map_err(|_| {
            format!(
                "record {index}: {field} must be a JSON string when {field}_encoding is given; \
                 give a string, or drop {field}_encoding to publish the JSON as it is"
            )
        })
    };
    match enc {
        None => Ok(Some(raw.get().as_bytes().to_vec())),
        Some(Encoding::String) => Ok(Some(text()?.into_bytes())),
        Some(Encoding::Base64) => B64.decode(text()?).map(Some).map_err(|e| {
            format!("record {index}: {field} is not valid base64 ({e}); give standard base64 with padding")
        }),
    }
}

fn header_bytes(index: usize, h: &InputHeader) -> Result<Option<Vec<u8>>, String> {
    match (&h.value, h.value_encoding) {
        (None, _) => Ok(None),
        (Some(v), Some(Encoding::Base64)) => B64.decode(v).map(Some).map_err(|e| {
            format!(
                "record {index}: header {:?} is not valid base64 ({e}); give standard base64, or drop value_encoding",
                h.name
            )
        }),
        (Some(v), _) => Ok(Some(v.clone().into_bytes())),
    }
}

/// The request's records as a batch frame; the first bad record is named.
pub fn to_frame(
    request_id: &str,
    topic: &str,
    records: &[InputRecord],
) -> Result<BatchWriter, String> {
    if records.is_empty() {
        return Err("records is empty; give at least one record".into());
    }
    if records.len() > MAX_RECORDS {
        return Err(format!(
            "{} records in one request; the limit is {MAX_RECORDS}: split the request",
            records.len()
        ));
    }
    let mut w = BatchWriter::new(request_id, 0, topic, 64 * 1024);
    for (i, r) in records.iter().enumerate() {
        let key = bytes_of(i, "key", &r.key, r.key_encoding)?;
        let value = bytes_of(i, "value", &r.value, r.value_encoding)?;
        let mut headers = Vec::with_capacity(r.headers.len());
        for h in &r.headers {
            headers.push((h.name.as_str(), header_bytes(i, h)?));
        }
        let size = key.as_ref().map_or(0, Vec::len)
            + value.as_ref().map_or(0, Vec::len)
            + headers
                .iter()
                .map(|(n, v)| n.len() + v.as_ref().map_or(0, Vec::len))
                .sum::<usize>();
        if size > MAX_RECORD_BYTES {
            return Err(format!(
                "record {i} is {size} bytes (key, value and headers); the limit is {MAX_RECORD_BYTES} \
                 (OCI Streaming: 1 MB per record): make it smaller, or store the payload elsewhere and publish a reference"
            ));
        }
        if r.partition.is_some_and(|p| p < 0) {
            return Err(format!(
                "record {i}: partition {} is negative; give a partition number (0, 1, ...) or leave it out",
                r.partition.unwrap_or_default()
            ));
        }
        w.push(
            r.partition.unwrap_or(-1),
            i as i64,
            r.timestamp,
            key.as_deref(),
            value.as_deref(),
            headers.iter().map(|(n, v)| (*n, v.as_deref())),
        );
    }
    Ok(w)
}

/// Bytes of a frame besides its records: magic, job id, sequence, topic
/// (at most 249 bytes) and count, rounded up.
const FRAME_OVERHEAD: usize = 512;

/// Bytes a record takes in a batch frame, as `BatchWriter::push` writes it
/// (a test holds the two together).
pub fn frame_len(r: &Record) -> usize {
    let bytes = |b: &Option<bytes::Bytes>| 4 + b.as_ref().map_or(0, |b| b.len());
    let headers: usize = r
        .headers
        .iter()
        .map(|(n, v)| 2 + n.len().min(u16::MAX as usize) + bytes(v))
        .sum();
    4 + 8 + 8 + bytes(&r.key) + bytes(&r.value) + 2 + headers
}

/// Cut `records` into runs that each fit one publish request: at most
/// [`MAX_RECORDS`] records in a frame of at most `MAX_PUBLISH_FRAME_BYTES`.
/// A record too large for any request is a run of its own, which
/// [`records_frame`] then refuses with its size and the limit.
pub fn requests(records: &[Record]) -> Vec<&[Record]> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, FRAME_OVERHEAD);
    for (i, r) in records.iter().enumerate() {
        let len = frame_len(r);
        let full = i - start == MAX_RECORDS || bytes + len > MAX_PUBLISH_FRAME_BYTES;
        if i > start && full {
            runs.push(&records[start..i]);
            (start, bytes) = (i, FRAME_OVERHEAD);
        }
        bytes += len;
    }
    if start < records.len() {
        runs.push(&records[start..]);
    }
    runs
}

/// Records as they came from a stream as a publish frame: key, value,
/// headers and timestamp kept, offsets replaced by their index (the agent
/// ignores them), partitions kept with `keep_partitions`, else -1 (the
/// producer's partitioner picks one by key). A record's own
/// [`IDEMPOTENCY_HEADER`] (it was published through an agent before) is
/// left out: the agent writes this request's.
pub fn records_frame(
    topic: &str,
    records: &[Record],
    keep_partitions: bool,
) -> Result<BatchWriter, StreamError> {
    if records.len() > MAX_RECORDS {
        return Err(StreamError::TooLarge(format!(
            "{} records in one request; the limit is {MAX_RECORDS}: split the request",
            records.len()
        )));
    }
    let mut w = BatchWriter::new("publish", 0, topic, 64 * 1024);
    for (i, r) in records.iter().enumerate() {
        // Counted as for a console publish: key, value and headers.
        let len = |b: &Option<bytes::Bytes>| b.as_ref().map_or(0, |b| b.len());
        let size = len(&r.key)
            + len(&r.value)
            + r.headers
                .iter()
                .map(|(n, v)| n.len() + len(v))
                .sum::<usize>();
        if size > MAX_RECORD_BYTES {
            return Err(StreamError::TooLarge(format!(
                "the record at partition {} offset {} is {size} bytes (key, value and headers); the limit is \
                 {MAX_RECORD_BYTES} (OCI Streaming: 1 MB per record): make it smaller at its source, or store \
                 the payload elsewhere and forward a reference",
                r.partition, r.offset
            )));
        }
        let headers = r
            .headers
            .iter()
            .filter(|(n, _)| n != IDEMPOTENCY_HEADER)
            .map(|(n, v)| (n.as_str(), v.as_deref()));
        w.push(
            if keep_partitions { r.partition } else { -1 },
            i as i64,
            r.timestamp,
            r.key.as_deref(),
            r.value.as_deref(),
            headers,
        );
    }
    if w.encoded_len() > MAX_PUBLISH_FRAME_BYTES {
        return Err(StreamError::TooLarge(format!(
            "the records take {} bytes; one request carries at most {MAX_PUBLISH_FRAME_BYTES}: split the request",
            w.encoded_len()
        )));
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn err(recs: &[InputRecord]) -> String {
        to_frame("r", "t", recs).map(|_| ()).unwrap_err()
    }

    fn parse(json: &str) -> Vec<InputRecord> {
        serde_json::from_str::<PublishBody>(json).unwrap().records
    }

    #[test]
    fn keys_and_values_follow_the_record_format_backwards() {
        let recs = parse(
            r#"{"records":[{"key":1,"value":{"a":12345678901234567890},"headers":[{"name":"h","value":"x"}]},
                {"value":"hello","value_encoding":"string"},{"value":"AAE=","value_encoding":"base64","key":null}]}"#,
        );
        let frame = to_frame("r", "t", &recs).unwrap().finish();
        let batch = connectivity_protocol::batch::decode(frame).unwrap();
        let r = &batch.records;
        assert_eq!(r[0].key, Some(Bytes::from_static(b"1")));
        assert_eq!(
            r[0].value,
            Some(Bytes::from_static(br#"{"a":12345678901234567890}"#))
        );
        assert_eq!(r[0].partition, -1);
        assert_eq!(r[1].value, Some(Bytes::from_static(b"hello")));
        assert_eq!(r[2].value, Some(Bytes::from_static(&[0, 1])));
        assert_eq!(r[2].key, None);
    }

    #[test]
    fn bad_records_are_named_by_index_with_the_fix() {
        let big = "x".repeat(MAX_RECORD_BYTES + 1);
        let recs = parse(&format!(
            r#"{{"records":[{{"value":1}},{{"value":"{big}","value_encoding":"string"}}]}}"#
        ));
        assert_eq!(
            err(&recs),
            format!(
                "record 1 is {} bytes (key, value and headers); the limit is 1048576 (OCI Streaming: 1 MB per record): make it smaller, or store the payload elsewhere and publish a reference",
                MAX_RECORD_BYTES + 1
            )
        );
        let recs = parse(r#"{"records":[{"value":"%%","value_encoding":"base64"}]}"#);
        assert!(err(&recs).starts_with("record 0: value is not valid base64"));
        let recs = parse(r#"{"records":[{"value":5,"value_encoding":"string"}]}"#);
        assert_eq!(
            err(&recs),
            "record 0: value must be a JSON string when value_encoding is given; give a string, or drop value_encoding to publish the JSON as it is"
        );
        assert_eq!(err(&[]), "records is empty; give at least one record");
    }

    fn record(value_len: usize) -> Record {
        Record {
            partition: 2,
            offset: 7,
            timestamp: Some(1),
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from(vec![b'v'; value_len])),
            headers: vec![
                ("h".into(), Some(Bytes::from_static(b"x"))),
                ("n".into(), None),
            ],
        }
    }

    #[test]
    fn frame_len_is_what_the_writer_writes() {
        let r = record(10);
        let mut w = BatchWriter::new("publish", 0, "t", 64);
        let before = w.encoded_len();
        w.push(
            r.partition,
            r.offset,
            r.timestamp,
            r.key.as_deref(),
            r.value.as_deref(),
            r.headers.iter().map(|(n, v)| (n.as_str(), v.as_deref())),
        );
        assert_eq!(w.encoded_len() - before, frame_len(&r));
    }

    #[test]
    fn records_are_cut_into_requests_within_the_limits() {
        let small: Vec<Record> = (0..MAX_RECORDS + 5).map(|_| record(1)).collect();
        let runs = requests(&small);
        assert_eq!(
            runs.iter().map(|r| r.len()).collect::<Vec<_>>(),
            [MAX_RECORDS, 5]
        );
        // 900 KB each: three fit in a frame of just under 3 MiB, not four.
        let big: Vec<Record> = (0..7).map(|_| record(900_000)).collect();
        let runs = requests(&big);
        assert_eq!(runs.iter().map(|r| r.len()).collect::<Vec<_>>(), [3, 3, 1]);
        for run in runs {
            let frame = records_frame("t", run, true).unwrap();
            assert!(frame.encoded_len() <= MAX_PUBLISH_FRAME_BYTES);
        }
        assert!(requests(&[]).is_empty());
    }

    #[test]
    fn a_forwarded_record_keeps_its_fields_but_not_an_old_idempotency_header() {
        let mut r = record(3);
        r.headers.push((
            IDEMPOTENCY_HEADER.into(),
            Some(Bytes::from_static(b"old/0")),
        ));
        let frame = records_frame("t", &[r.clone()], true).unwrap().finish();
        let got = &connectivity_protocol::batch::decode(frame).unwrap().records[0];
        assert_eq!((got.partition, got.offset, got.timestamp), (2, 0, Some(1)));
        let by_key = records_frame("t", &[r], false).unwrap().finish();
        let by_key = connectivity_protocol::batch::decode(by_key).unwrap();
        assert_eq!(by_key.records[0].partition, -1);
        assert_eq!(got.key, Some(Bytes::from_static(b"k")));
        let names: Vec<&str> = got.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["h", "n"]);
        let err = records_frame("t", &[record(MAX_RECORD_BYTES)], true)
            .map(|_| ())
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the record at partition 2 offset 7 is 1048580 bytes"),
            "{err}"
        );
    }
}
