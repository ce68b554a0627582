//! Records as a console API caller gives them, to the bytes Kafka gets.
//!
//! The encoding is the record format's (docs/DELIVERY.md) read backwards: a
//! key or value without an `_encoding` is JSON and written as its exact JSON
//! text (numbers keep every digit); `"string"` writes the string's UTF-8;
//! `"base64"` writes the decoded bytes; `null` is a null key or value. So a
//! record read with the record format can be published again unchanged.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use connectivity_protocol::batch::BatchWriter;
use connectivity_protocol::stream::MAX_RECORD_BYTES;
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
}
