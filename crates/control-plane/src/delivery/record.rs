//! Records as sinks receive them: how keys and values are encoded in JSON, and
//! the Kafka Connect unwrapping selected by a job's [`ValueFormat`].
//!
//! One JSON object per record, the same for every sink (JSONL line, element of
//! a webhook's `records` array), fields in this order:
//!
//! ```text
//! {"topic":"users","partition":0,"offset":41,"timestamp":1700000000000,
//!  "key":...,"headers":[{"name":"h","value":"v"}],"value":...}
//! ```
//!
//! A key or value that is a valid JSON document is embedded as JSON, not
//! escaped into a string and not base64-encoded. Otherwise it is a string
//! (valid UTF-8) with `"value_encoding":"string"`, or base64 with
//! `"value_encoding":"base64"` (`key_encoding` likewise). So the original bytes
//! can always be told apart: `hello` and `"hello"` do not look the same.

use base64::prelude::{BASE64_STANDARD, Engine};
use bytes::Bytes;
use connectivity_protocol::Record;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::io::Write as _;

/// How a job's record values are handed to its sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueFormat {
    /// Values as they are in Kafka.
    #[default]
    Raw,
    /// Kafka Connect `JsonConverter` with `schemas.enable=true`: a value that
    /// is a JSON object with exactly the keys `schema` and `payload` is
    /// replaced by its `payload`. Any other value passes through unchanged.
    ConnectPayload,
}

/// A key or value, classified once for encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A valid JSON document, embedded as is. Line breaks (which valid JSON
    /// can only hold as whitespace between tokens) are turned into spaces so
    /// that a record always fits on one JSONL line.
    Json(Bytes),
    /// Valid UTF-8 that is not JSON.
    Text(Bytes),
    /// Anything else, written as base64.
    Binary(Bytes),
}

impl Payload {
    /// Classify raw bytes. No copy unless the JSON holds line breaks.
    pub fn classify(bytes: Bytes) -> Payload {
        if let Ok(raw) = serde_json::from_slice::<&RawValue>(&bytes) {
            let doc = bytes.slice_ref(raw.get().as_bytes());
            return Payload::Json(single_line(doc));
        }
        if std::str::from_utf8(&bytes).is_ok() {
            Payload::Text(bytes)
        } else {
            Payload::Binary(bytes)
        }
    }

    /// The `*_encoding` field written beside this payload; `None` for JSON.
    pub fn encoding(&self) -> Option<&'static str> {
        match self {
            Payload::Json(_) => None,
            Payload::Text(_) => Some("string"),
            Payload::Binary(_) => Some("base64"),
        }
    }
}

fn single_line(doc: Bytes) -> Bytes {
    if !doc.iter().any(|&b| b == b'\n' || b == b'\r') {
        return doc;
    }
    let v: Vec<u8> = doc
        .iter()
        .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
        .collect();
    Bytes::from(v)
}

/// If `value` is a Kafka Connect envelope, its `payload` (sharing memory).
pub fn connect_payload(value: &Bytes) -> Option<Bytes> {
    // Exactly the two keys Connect writes: an application object that merely
    // has `schema` and `payload` among other fields is left alone.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Envelope<'a> {
        #[allow(dead_code)]
        schema: IgnoredAny,
        #[serde(borrow)]
        payload: &'a RawValue,
    }
    let env: Envelope<'_> = serde_json::from_slice(value).ok()?;
    Some(value.slice_ref(env.payload.get().as_bytes()))
}

/// One record ready for a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch, when Kafka knows it.
    pub timestamp: Option<i64>,
    pub key: Option<Payload>,
    /// Header values: UTF-8 text as a string, anything else base64.
    pub headers: Vec<(String, Option<Bytes>)>,
    pub value: Option<Payload>,
}

impl OutRecord {
    pub fn new(r: &Record, format: ValueFormat) -> OutRecord {
        let value = r.value.as_ref().map(|v| {
            let v = match format {
                ValueFormat::Raw => v.clone(),
                ValueFormat::ConnectPayload => connect_payload(v).unwrap_or_else(|| v.clone()),
            };
            Payload::classify(v)
        });
        OutRecord {
            partition: r.partition,
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key.clone().map(Payload::classify),
            headers: r.headers.clone(),
            value,
        }
    }
}

/// The records of one batch that a sink must take, all from one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutBatch {
    pub job_id: String,
    pub topic: String,
    pub records: Vec<OutRecord>,
}

impl OutBatch {
    /// A batch without records, for a sink that does not look at them.
    pub fn bare(job_id: &str, topic: &str) -> OutBatch {
        OutBatch {
            job_id: job_id.to_owned(),
            topic: topic.to_owned(),
            records: Vec::new(),
        }
    }

    pub fn new(job_id: &str, topic: &str, records: &[Record], format: ValueFormat) -> OutBatch {
        OutBatch {
            job_id: job_id.to_owned(),
            topic: topic.to_owned(),
            records: records.iter().map(|r| OutRecord::new(r, format)).collect(),
        }
    }

    /// Every record as one JSON line (each ends with `\n`).
    pub fn to_jsonl(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.estimated_len());
        for r in &self.records {
            write_record(&mut out, &self.topic, r);
            out.push(b'\n');
        }
        out
    }

    /// The webhook body: `{"job_id":...,"topic":...,"records":[...]}`.
    pub fn to_webhook_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.estimated_len() + 64);
        out.extend_from_slice(b"{\"job_id\":");
        push_str(&mut out, &self.job_id);
        out.extend_from_slice(b",\"topic\":");
        push_str(&mut out, &self.topic);
        out.extend_from_slice(b",\"records\":[");
        for (i, r) in self.records.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_record(&mut out, &self.topic, r);
        }
        out.extend_from_slice(b"]}");
        out
    }

    fn estimated_len(&self) -> usize {
        let size = |p: &Option<Payload>| match p {
            Some(Payload::Json(b) | Payload::Text(b)) => b.len() + 8,
            Some(Payload::Binary(b)) => b.len() * 4 / 3 + 8,
            None => 4,
        };
        self.records
            .iter()
            .map(|r| 120 + self.topic.len() + size(&r.key) + size(&r.value))
            .sum()
    }
}

/// Write one record as a JSON object (no trailing newline).
pub fn write_record(out: &mut Vec<u8>, topic: &str, r: &OutRecord) {
    out.extend_from_slice(b"{\"topic\":");
    push_str(out, topic);
    // Writing into a Vec cannot fail; no String per field.
    let _ = write!(
        out,
        ",\"partition\":{},\"offset\":{},\"timestamp\":",
        r.partition, r.offset
    );
    match r.timestamp {
        Some(ts) => {
            let _ = write!(out, "{ts}");
        }
        None => out.extend_from_slice(b"null"),
    }
    write_payload(out, "key", r.key.as_ref());
    out.extend_from_slice(b",\"headers\":[");
    for (i, (name, value)) in r.headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        push_str(out, name);
        match value.as_ref().map(|v| (v, std::str::from_utf8(v))) {
            None => out.extend_from_slice(b",\"value\":null"),
            Some((_, Ok(text))) => {
                out.extend_from_slice(b",\"value\":");
                push_str(out, text);
            }
            Some((v, Err(_))) => {
                out.extend_from_slice(b",\"value_encoding\":\"base64\",\"value\":\"");
                out.extend_from_slice(BASE64_STANDARD.encode(v).as_bytes());
                out.push(b'"');
            }
        }
        out.push(b'}');
    }
    out.push(b']');
    write_payload(out, "value", r.value.as_ref());
    out.push(b'}');
}

fn write_payload(out: &mut Vec<u8>, field: &str, p: Option<&Payload>) {
    if let Some(enc) = p.and_then(Payload::encoding) {
        let _ = write!(out, ",\"{field}_encoding\":\"{enc}\"");
    }
    let _ = write!(out, ",\"{field}\":");
    match p {
        None => out.extend_from_slice(b"null"),
        Some(Payload::Json(b)) => out.extend_from_slice(b),
        // Text was checked to be UTF-8 when classified (lossy is a no-op).
        Some(Payload::Text(b)) => push_str(out, &String::from_utf8_lossy(b)),
        Some(Payload::Binary(b)) => {
            out.push(b'"');
            out.extend_from_slice(BASE64_STANDARD.encode(b).as_bytes());
            out.push(b'"');
        }
    }
}

/// A line's topic, partition and offset lie within its first this many
/// bytes: Kafka topic names have at most 249 characters, none escaped.
pub const LINE_POSITION_MAX: usize = 1024;

/// Topic, partition and offset of a line that [`write_record`] wrote, read
/// from its start (the first [`LINE_POSITION_MAX`] bytes are enough); `None`
/// for anything else.
pub fn line_position(line: &[u8]) -> Option<(String, i32, i64)> {
    let rest = line.strip_prefix(b"{\"topic\":")?;
    let mut strings = serde_json::Deserializer::from_slice(rest).into_iter::<String>();
    let topic = strings.next()?.ok()?;
    let rest = rest[strings.byte_offset()..].strip_prefix(b",\"partition\":")?;
    let (partition, rest) = leading_number(rest)?;
    let (offset, rest) = leading_number(rest.strip_prefix(b",\"offset\":")?)?;
    if rest.first() != Some(&b',') {
        return None;
    }
    Some((topic, i32::try_from(partition).ok()?, offset))
}

/// A non-negative integer at the start of `s`, and what follows it.
fn leading_number(s: &[u8]) -> Option<(i64, &[u8])> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    let n = std::str::from_utf8(&s[..digits]).ok()?.parse().ok()?;
    Some((n, &s[digits..]))
}

/// Append `s` as a JSON string literal.
fn push_str(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail: no I/O, no non-string keys.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(value: Option<&'static [u8]>) -> Record {
        Record {
            partition: 1,
            offset: 7,
            timestamp: Some(5),
            key: Some(Bytes::from_static(b"k")),
            value: value.map(Bytes::from_static),
            headers: vec![
                ("h".into(), Some(Bytes::from_static(b"v"))),
                ("bin".into(), Some(Bytes::from_static(&[0xff]))),
                ("n".into(), None),
            ],
        }
    }

    fn line(value: Option<&'static [u8]>, format: ValueFormat) -> String {
        let batch = OutBatch::new("j", "t", &[rec(value)], format);
        let text = String::from_utf8(batch.to_jsonl()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        text.trim_end_matches('\n').to_owned()
    }

    #[test]
    fn line_position_reads_what_write_record_wrote() {
        let full = line(Some(b"{\"a\":1}"), ValueFormat::Raw);
        assert_eq!(line_position(full.as_bytes()), Some(("t".into(), 1, 7)));
        // The start of a line is enough.
        assert_eq!(
            line_position(&full.as_bytes()[..40]),
            Some(("t".into(), 1, 7))
        );
        for bad in [
            &b"{\"topic\":\"t\",\"partition\":1,\"offset\":7"[..],
            b"{\"topic\":\"t\",\"partition\":-1,\"offset\":7,",
            b"{\"topic\":\"t\",\"partition\":4294967296,\"offset\":7,",
            b"{\"partition\":1,\"offset\":7,\"topic\":\"t\"}",
            b"{\"topic\":\"t",
            b"not json",
        ] {
            assert_eq!(line_position(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn json_value_is_embedded_without_escaping() {
        assert_eq!(
            line(Some(br#"{"ID":1,"name":"a\"b"}"#), ValueFormat::Raw),
            concat!(
                r#"{"topic":"t","partition":1,"offset":7,"timestamp":5,"key_encoding":"string","key":"k","#,
                r#""headers":[{"name":"h","value":"v"},{"name":"bin","value_encoding":"base64","value":"/w=="},{"name":"n","value":null}],"#,
                r#""value":{"ID":1,"name":"a\"b"}}"#,
            )
        );
    }

    #[test]
    fn text_binary_and_null_values_are_marked() {
        assert!(
            line(Some(b"hello"), ValueFormat::Raw)
                .ends_with(r#""value_encoding":"string","value":"hello"}"#)
        );
        assert!(
            line(Some(&[0, 159, 146, 150]), ValueFormat::Raw)
                .ends_with(r#""value_encoding":"base64","value":"AJ+Slg=="}"#)
        );
        assert!(line(None, ValueFormat::Raw).ends_with(r#""value":null}"#));
        // A JSON string stays a JSON string, distinct from bare text.
        assert!(line(Some(br#""hello""#), ValueFormat::Raw).ends_with(r#""value":"hello"}"#));
    }

    #[test]
    fn pretty_printed_json_stays_on_one_line_and_every_line_parses() {
        let l = line(Some(b"{\r\n  \"a\": [1,\n 2]\n}\n"), ValueFormat::Raw);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["value"], serde_json::json!({"a": [1, 2]}));
    }

    #[test]
    fn big_numbers_keep_their_digits() {
        let l = line(Some(b"123456789012345678901234567890"), ValueFormat::Raw);
        assert!(
            l.ends_with("\"value\":123456789012345678901234567890}"),
            "{l}"
        );
    }

    #[test]
    fn connect_envelope_is_unwrapped_only_when_asked_and_only_when_exact() {
        let env: &'static [u8] =
            br#"{"schema":{"type":"struct","fields":[]},"payload":{"ID":1,"USERNAME":"jdoe"}}"#;
        assert!(
            line(Some(env), ValueFormat::ConnectPayload)
                .ends_with(r#""value":{"ID":1,"USERNAME":"jdoe"}}"#)
        );
        assert!(line(Some(env), ValueFormat::Raw).contains(r#""value":{"schema":"#));
        let extra: &'static [u8] = br#"{"schema":1,"payload":2,"other":3}"#;
        assert!(
            line(Some(extra), ValueFormat::ConnectPayload)
                .ends_with(r#""value":{"schema":1,"payload":2,"other":3}}"#)
        );
        assert!(
            line(Some(b"not json"), ValueFormat::ConnectPayload)
                .ends_with(r#""value":"not json"}"#)
        );
    }

    #[test]
    fn webhook_body_wraps_records() {
        let batch = OutBatch::new(
            "j",
            "t",
            &[rec(Some(b"1")), rec(Some(b"2"))],
            ValueFormat::Raw,
        );
        let v: serde_json::Value = serde_json::from_slice(&batch.to_webhook_body()).unwrap();
        assert_eq!(v["job_id"], "j");
        assert_eq!(v["topic"], "t");
        assert_eq!(v["records"][1]["value"], 2);
    }
}
