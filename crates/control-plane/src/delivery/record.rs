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
use connectivity_protocol::Record;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::json_document;

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

/// A key or value, classified for encoding. Borrows the record's bytes:
/// encoding a record allocates nothing of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// A valid JSON document, embedded as is. Line breaks (which valid JSON
    /// can only hold as whitespace between tokens) are written as spaces so
    /// that a record always fits on one JSONL line.
    Json {
        doc: &'a [u8],
        /// Whether `doc` has a line break to rewrite.
        line_break: bool,
    },
    /// Valid UTF-8 that is not JSON.
    Text(&'a str),
    /// Anything else, written as base64.
    Binary(&'a [u8]),
}

impl<'a> Payload<'a> {
    /// Classify raw bytes. Only the JSON check reads them; nothing is copied.
    pub fn classify(bytes: &'a [u8]) -> Payload<'a> {
        if let Some(d) = json_document::find(bytes) {
            // The document without the whitespace around it.
            return Payload::Json {
                doc: &bytes[d.start..d.end],
                line_break: d.line_break,
            };
        }
        match simdutf8::basic::from_utf8(bytes) {
            Ok(text) => Payload::Text(text),
            Err(_) => Payload::Binary(bytes),
        }
    }

    /// The `*_encoding` field written beside this payload; `None` for JSON.
    pub fn encoding(&self) -> Option<&'static str> {
        match self {
            Payload::Json { .. } => None,
            Payload::Text(_) => Some("string"),
            Payload::Binary(_) => Some("base64"),
        }
    }
}

/// If `value` is a Kafka Connect envelope, its `payload` (borrowed from it).
pub fn connect_payload(value: &[u8]) -> Option<&[u8]> {
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
    let start = env.payload.get().as_ptr() as usize - value.as_ptr() as usize;
    Some(&value[start..start + env.payload.get().len()])
}

/// The records of one batch that a sink must take, all from one topic,
/// borrowed from the batch: they are encoded straight into the bytes a sink
/// writes or sends, with no copy per record in between.
#[derive(Debug, Clone, Copy)]
pub struct OutBatch<'a> {
    pub job_id: &'a str,
    pub topic: &'a str,
    pub records: &'a [Record],
    pub format: ValueFormat,
}

impl<'a> OutBatch<'a> {
    pub fn new(
        job_id: &'a str,
        topic: &'a str,
        records: &'a [Record],
        format: ValueFormat,
    ) -> OutBatch<'a> {
        OutBatch {
            job_id,
            topic,
            records,
            format,
        }
    }

    /// Every record as one JSON line (each ends with `\n`).
    pub fn to_jsonl(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.estimated_len());
        self.jsonl_into(0, &mut out, usize::MAX);
        out
    }

    /// Append the records from index `from` on as JSON lines to `out`, until
    /// it holds at least `limit` bytes or the records end; returns the index
    /// of the first record left.
    pub fn jsonl_into(&self, from: usize, out: &mut Vec<u8>, limit: usize) -> usize {
        let mut next = from;
        while let Some(r) = self.records.get(next)
            && out.len() < limit
        {
            write_record(out, self.topic, r, self.format);
            out.push(b'\n');
            next += 1;
        }
        next
    }

    /// The webhook body of every record: `{"job_id":...,"topic":...,"records":[...]}`.
    pub fn to_webhook_body(&self) -> Vec<u8> {
        self.webhook_body(self.records.iter())
    }

    /// The webhook body of some of the batch's records.
    pub fn webhook_body<'r>(&self, records: impl Iterator<Item = &'r Record> + Clone) -> Vec<u8> {
        let len: usize = records.clone().map(|r| record_len(self.topic, r)).sum();
        let mut out = Vec::with_capacity(len + 64);
        out.extend_from_slice(b"{\"job_id\":");
        push_str(&mut out, self.job_id);
        out.extend_from_slice(b",\"topic\":");
        push_str(&mut out, self.topic);
        out.extend_from_slice(b",\"records\":[");
        for (i, r) in records.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_record(&mut out, self.topic, r, self.format);
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// One record alone, as a JSON object: the body of a per-record webhook.
    pub fn record_body(&self, r: &Record) -> Vec<u8> {
        let mut out = Vec::with_capacity(record_len(self.topic, r));
        write_record(&mut out, self.topic, r, self.format);
        out
    }

    fn estimated_len(&self) -> usize {
        self.records.iter().map(|r| record_len(self.topic, r)).sum()
    }
}

/// About how long a record's JSON is: enough that the buffer rarely grows.
fn record_len(topic: &str, r: &Record) -> usize {
    let size = |p: &Option<bytes::Bytes>| p.as_ref().map_or(4, |b| b.len() * 4 / 3 + 8);
    let headers: usize = r
        .headers
        .iter()
        .map(|(n, v)| n.len() + v.as_ref().map_or(4, |v| v.len() * 4 / 3) + 40)
        .sum();
    120 + topic.len() + size(&r.key) + size(&r.value) + headers
}

/// Write one record as a JSON object (no trailing newline), its value in
/// `format`.
pub fn write_record(out: &mut Vec<u8>, topic: &str, r: &Record, format: ValueFormat) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"{\"topic\":");
    push_str(out, topic);
    out.extend_from_slice(b",\"partition\":");
    out.extend_from_slice(num.format(r.partition).as_bytes());
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(num.format(r.offset).as_bytes());
    out.extend_from_slice(b",\"timestamp\":");
    match r.timestamp {
        Some(ts) => out.extend_from_slice(num.format(ts).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    let key = r.key.as_deref().map(Payload::classify);
    write_payload(out, "key", key);
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
                out.extend_from_slice(b",\"value_encoding\":\"base64\",\"value\":");
                push_base64(out, v);
            }
        }
        out.push(b'}');
    }
    out.push(b']');
    let value = r.value.as_deref().map(|v| match format {
        ValueFormat::Raw => Payload::classify(v),
        ValueFormat::ConnectPayload => Payload::classify(connect_payload(v).unwrap_or(v)),
    });
    write_payload(out, "value", value);
    out.push(b'}');
}

fn write_payload(out: &mut Vec<u8>, field: &str, p: Option<Payload<'_>>) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(field.as_bytes());
    if let Some(enc) = p.as_ref().and_then(Payload::encoding) {
        out.extend_from_slice(b"_encoding\":\"");
        out.extend_from_slice(enc.as_bytes());
        out.extend_from_slice(b"\",\"");
        out.extend_from_slice(field.as_bytes());
    }
    out.extend_from_slice(b"\":");
    match p {
        None => out.extend_from_slice(b"null"),
        Some(Payload::Json { doc, line_break }) => push_single_line(out, doc, line_break),
        Some(Payload::Text(t)) => push_str(out, t),
        Some(Payload::Binary(b)) => push_base64(out, b),
    }
}

/// Copy a JSON document as it is, its line breaks (whitespace between
/// tokens: valid JSON has no raw line break inside a string) as spaces.
fn push_single_line(out: &mut Vec<u8>, doc: &[u8], line_break: bool) {
    let start = out.len();
    out.extend_from_slice(doc);
    // The JSON check saw whether there is any: documents almost never hold
    // one, and rewriting every byte was 7.7% of the control plane's samples
    // in the JSONL drain (perf, 1 KiB records).
    if line_break {
        for b in &mut out[start..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
    }
}

/// Append `bytes` as a quoted base64 string, encoded in place.
fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    let start = out.len();
    let len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    out.resize(start + len, 0);
    // The slice has exactly the encoded length: encoding cannot fail.
    let written = BASE64_STANDARD
        .encode_slice(bytes, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
    out.push(b'"');
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
    // Topic and header names rarely need escaping (Kafka's topic names never
    // do): copied straight, they skip serde_json's escaper, 1% of the
    // control plane's samples in the JSONL drain.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Serializing a &str into a Vec cannot fail: no I/O, no non-string keys.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

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
        let records = [rec(value)];
        let batch = OutBatch::new("j", "t", &records, format);
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
        let records = [rec(Some(b"1")), rec(Some(b"2"))];
        let batch = OutBatch::new("j", "t", &records, ValueFormat::Raw);
        let v: serde_json::Value = serde_json::from_slice(&batch.to_webhook_body()).unwrap();
        assert_eq!(v["job_id"], "j");
        assert_eq!(v["topic"], "t");
        assert_eq!(v["records"][1]["value"], 2);
    }
}
