//! Binary encoding of a batch of records (one WebSocket binary frame).
//!
//! Record values are usually JSON already; putting them in a JSON envelope
//! would escape every quote a second time. This length-prefixed layout copies
//! them as they are. All integers are big-endian:
//!
//! ```text
//! magic      4 bytes  "CAB1"
//! job_id     u16 length + UTF-8
//! batch_seq  u64
//! topic      u16 length + UTF-8
//! count      u32
//! count x record:
//!   partition  i32
//!   offset     i64
//!   timestamp  i64      milliseconds since the epoch, -1 when unknown
//!   key        i32 length (-1 = null) + bytes
//!   value      i32 length (-1 = null) + bytes
//!   headers    u16 count, each: u16 length + UTF-8 name, i32 length (-1 = null) + bytes
//! ```
//!
//! The decoder checks every length against the bytes left, so a truncated or
//! hostile frame is an error, never a panic or an over-allocation.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// First bytes of every batch frame; also the format's version.
pub const MAGIC: &[u8; 4] = b"CAB1";

/// One Kafka record as relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// A decoded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub job_id: String,
    pub batch_seq: u64,
    pub topic: String,
    pub records: Vec<Record>,
}

/// Builds a batch frame record by record, copying each record once, straight
/// from the consumer's buffer into the frame.
pub struct BatchWriter {
    buf: BytesMut,
    count_at: usize,
    count: u32,
}

impl BatchWriter {
    pub fn new(job_id: &str, batch_seq: u64, topic: &str, capacity: usize) -> Self {
        Self::with_buffer(
            BytesMut::with_capacity(capacity.max(64)),
            job_id,
            batch_seq,
            topic,
        )
    }

    /// Like [`BatchWriter::new`], in a buffer whose memory is reused (its
    /// contents are cleared).
    pub fn with_buffer(mut buf: BytesMut, job_id: &str, batch_seq: u64, topic: &str) -> Self {
        buf.clear();
        buf.put_slice(MAGIC);
        put_str16(&mut buf, job_id);
        buf.put_u64(batch_seq);
        put_str16(&mut buf, topic);
        let count_at = buf.len();
        buf.put_u32(0);
        BatchWriter {
            buf,
            count_at,
            count: 0,
        }
    }

    /// Append one record. Header names longer than 64 KiB are cut (Kafka
    /// header names are short in practice).
    pub fn push<'a>(
        &mut self,
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) {
        let buf = &mut self.buf;
        buf.put_i32(partition);
        buf.put_i64(offset);
        buf.put_i64(timestamp.unwrap_or(-1));
        put_bytes32(buf, key);
        put_bytes32(buf, value);
        let count_at = buf.len();
        buf.put_u16(0);
        let mut n: u16 = 0;
        for (name, val) in headers {
            if n == u16::MAX {
                break;
            }
            put_str16(buf, name);
            put_bytes32(buf, val);
            n += 1;
        }
        buf[count_at..count_at + 2].copy_from_slice(&n.to_be_bytes());
        self.count += 1;
    }

    /// Records pushed so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size of the frame so far, in bytes.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// The finished frame.
    pub fn finish(mut self) -> Bytes {
        let c = self.count.to_be_bytes();
        self.buf[self.count_at..self.count_at + 4].copy_from_slice(&c);
        self.buf.freeze()
    }
}

fn put_str16(buf: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    let len = bytes.len().min(u16::MAX as usize);
    // Cut on a char boundary so the decoder always sees valid UTF-8.
    let len = (0..=len)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    buf.put_u16(len as u16);
    buf.put_slice(&bytes[..len]);
}

fn put_bytes32(buf: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        None => buf.put_i32(-1),
        Some(b) => {
            buf.put_i32(b.len() as i32);
            buf.put_slice(b);
        }
    }
}

/// Why a binary frame is not a valid batch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch frame does not start with the magic bytes \"CAB1\"")]
    BadMagic,
    #[error("batch frame is truncated: {0}")]
    Truncated(&'static str),
    #[error("batch frame has invalid UTF-8 in {0}")]
    BadUtf8(&'static str),
    #[error("batch frame has {0} trailing bytes after the last record")]
    TrailingBytes(usize),
}

/// Decode a batch frame. Byte fields share the frame's memory (no copies).
pub fn decode(frame: Bytes) -> Result<Batch, BatchError> {
    let mut b = frame;
    if b.len() < 4 || &b[..4] != MAGIC {
        return Err(BatchError::BadMagic);
    }
    b.advance(4);
    let job_id = get_str16(&mut b, "job id")?;
    let batch_seq = get_u64(&mut b, "batch sequence")?;
    let topic = get_str16(&mut b, "topic")?;
    let count = get_u32(&mut b, "record count")?;
    // Each record takes at least 30 bytes, so a lying count cannot make us
    // reserve more than the frame could hold.
    let mut records = Vec::with_capacity((count as usize).min(b.remaining() / 30 + 1));
    for _ in 0..count {
        let partition = get_i32(&mut b, "partition")?;
        let offset = get_i64(&mut b, "offset")?;
        let ts = get_i64(&mut b, "timestamp")?;
        let key = get_bytes32(&mut b, "key")?;
        let value = get_bytes32(&mut b, "value")?;
        let n = get_u16(&mut b, "header count")?;
        let mut headers = Vec::with_capacity((n as usize).min(b.remaining() / 6 + 1));
        for _ in 0..n {
            let name = get_str16(&mut b, "header name")?;
            let val = get_bytes32(&mut b, "header value")?;
            headers.push((name, val));
        }
        records.push(Record {
            partition,
            offset,
            timestamp: (ts >= 0).then_some(ts),
            key,
            value,
            headers,
        });
    }
    if b.has_remaining() {
        return Err(BatchError::TrailingBytes(b.remaining()));
    }
    Ok(Batch {
        job_id,
        batch_seq,
        topic,
        records,
    })
}

fn need(b: &Bytes, n: usize, what: &'static str) -> Result<(), BatchError> {
    if b.remaining() < n {
        Err(BatchError::Truncated(what))
    } else {
        Ok(())
    }
}

fn get_u16(b: &mut Bytes, what: &'static str) -> Result<u16, BatchError> {
    need(b, 2, what)?;
    Ok(b.get_u16())
}
fn get_u32(b: &mut Bytes, what: &'static str) -> Result<u32, BatchError> {
    need(b, 4, what)?;
    Ok(b.get_u32())
}
fn get_i32(b: &mut Bytes, what: &'static str) -> Result<i32, BatchError> {
    need(b, 4, what)?;
    Ok(b.get_i32())
}
fn get_u64(b: &mut Bytes, what: &'static str) -> Result<u64, BatchError> {
    need(b, 8, what)?;
    Ok(b.get_u64())
}
fn get_i64(b: &mut Bytes, what: &'static str) -> Result<i64, BatchError> {
    need(b, 8, what)?;
    Ok(b.get_i64())
}

fn get_str16(b: &mut Bytes, what: &'static str) -> Result<String, BatchError> {
    let len = get_u16(b, what)? as usize;
    need(b, len, what)?;
    let s = b.split_to(len);
    String::from_utf8(s.to_vec()).map_err(|_| BatchError::BadUtf8(what))
}

fn get_bytes32(b: &mut Bytes, what: &'static str) -> Result<Option<Bytes>, BatchError> {
    let len = get_i32(b, what)?;
    if len < 0 {
        return Ok(None);
    }
    let len = len as usize;
    need(b, len, what)?;
    Ok(Some(b.split_to(len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bytes {
        let mut w = BatchWriter::new("job-1", 7, "users", 256);
        w.push(
            0,
            41,
            Some(1_700_000_000_000),
            Some(b"k1"),
            Some(br#"{"ID":1}"#),
            [("h", Some(&b"v"[..]))],
        );
        w.push(2, 5, None, None, None, []);
        assert_eq!(w.len(), 2);
        w.finish()
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let batch = decode(sample()).unwrap();
        assert_eq!(batch.job_id, "job-1");
        assert_eq!(batch.batch_seq, 7);
        assert_eq!(batch.topic, "users");
        assert_eq!(batch.records.len(), 2);
        let r = &batch.records[0];
        assert_eq!(
            (r.partition, r.offset, r.timestamp),
            (0, 41, Some(1_700_000_000_000))
        );
        assert_eq!(r.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(r.value.as_deref(), Some(&br#"{"ID":1}"#[..]));
        assert_eq!(
            r.headers,
            vec![("h".to_string(), Some(Bytes::from_static(b"v")))]
        );
        let r = &batch.records[1];
        assert_eq!(
            (
                r.partition,
                r.offset,
                r.timestamp,
                r.key.clone(),
                r.value.clone()
            ),
            (2, 5, None, None, None)
        );
    }

    #[test]
    fn a_reused_buffer_keeps_its_memory_and_none_of_its_contents() {
        let first = sample();
        let addr = first.as_ptr();
        let clone = first.clone();
        // Not reusable while another handle (a frame being written) holds it.
        let first = first.try_into_mut().unwrap_err();
        drop(clone);
        let buf = first.try_into_mut().expect("the only handle");
        let mut w = BatchWriter::with_buffer(buf, "job-2", 8, "orders");
        w.push(1, 9, None, None, Some(b"x"), []);
        let frame = w.finish();
        assert_eq!(frame.as_ptr(), addr, "the same allocation");
        let batch = decode(frame).unwrap();
        assert_eq!(
            (batch.job_id.as_str(), batch.batch_seq, batch.topic.as_str()),
            ("job-2", 8, "orders")
        );
        assert_eq!(batch.records.len(), 1);
        assert_eq!(batch.records[0].value.as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = sample();
        for cut in 0..full.len() {
            assert!(
                decode(full.slice(..cut)).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
    }

    #[test]
    fn bad_magic_and_trailing_bytes_are_named() {
        assert_eq!(
            decode(Bytes::from_static(b"XXXX")),
            Err(BatchError::BadMagic)
        );
        let mut v = sample().to_vec();
        v.extend_from_slice(b"zz");
        assert_eq!(decode(Bytes::from(v)), Err(BatchError::TrailingBytes(2)));
    }

    #[test]
    fn lying_record_count_does_not_allocate_for_it() {
        let mut w = BatchWriter::new("j", 1, "t", 64).finish().to_vec();
        let n = w.len();
        w[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode(Bytes::from(w)),
            Err(BatchError::Truncated("partition"))
        );
    }
}

/// The measurement behind the choice of this encoding (docs/PROTOCOL.md):
/// `cargo test --release --lib measure_batch_encodings -- --ignored --nocapture`
#[cfg(test)]
mod measure {
    use super::*;
    use base64::Engine;
    use std::time::Instant;

    fn json_value(i: usize, size: usize) -> Vec<u8> {
        let mut v = format!(r#"{{"schema":{{"type":"struct","optional":false}},"payload":{{"ID":{i},"USERNAME":"user{i}","NOTE":""#).into_bytes();
        while v.len() < size - 4 {
            v.extend_from_slice(b"x\\\"y");
        }
        v.extend_from_slice(br#""}}"#);
        v
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct JsonRecord {
        partition: i32,
        offset: i64,
        value: String,
    }

    #[test]
    #[ignore = "a measurement, run by hand"]
    fn measure_batch_encodings() {
        for size in [100usize, 1024, 10 * 1024] {
            let values: Vec<Vec<u8>> = (0..500).map(|i| json_value(i, size)).collect();
            let rounds = 200;
            let t = Instant::now();
            let mut bytes = 0;
            for _ in 0..rounds {
                let mut w = BatchWriter::new("job", 1, "topic", 600 * size);
                for (i, v) in values.iter().enumerate() {
                    w.push(0, i as i64, Some(0), None, Some(v), []);
                }
                let f = w.finish();
                bytes = f.len();
                let b = decode(f).unwrap();
                assert_eq!(b.records.len(), 500);
            }
            let binary = t.elapsed() / rounds;
            let t = Instant::now();
            let mut json_bytes = 0;
            for _ in 0..rounds {
                let recs: Vec<JsonRecord> = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| JsonRecord {
                        partition: 0,
                        offset: i as i64,
                        value: String::from_utf8(v.clone()).unwrap(),
                    })
                    .collect();
                let s = serde_json::to_string(&recs).unwrap();
                json_bytes = s.len();
                let back: Vec<JsonRecord> = serde_json::from_str(&s).unwrap();
                assert_eq!(back.len(), 500);
            }
            let json = t.elapsed() / rounds;
            let t = Instant::now();
            let mut b64_bytes = 0;
            for _ in 0..rounds {
                let recs: Vec<JsonRecord> = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| JsonRecord {
                        partition: 0,
                        offset: i as i64,
                        value: base64::engine::general_purpose::STANDARD.encode(v),
                    })
                    .collect();
                let s = serde_json::to_string(&recs).unwrap();
                b64_bytes = s.len();
                let back: Vec<JsonRecord> = serde_json::from_str(&s).unwrap();
                let n: usize = back
                    .iter()
                    .map(|r| {
                        base64::engine::general_purpose::STANDARD
                            .decode(&r.value)
                            .unwrap()
                            .len()
                    })
                    .sum();
                assert!(n > 0);
            }
            let b64 = t.elapsed() / rounds;
            println!(
                "500 records of {size} B: binary {bytes} B {binary:?} | JSON-escaped {json_bytes} B {json:?} ({:.1}x time) | JSON+base64 {b64_bytes} B {b64:?} ({:.1}x time)",
                json.as_secs_f64() / binary.as_secs_f64(),
                b64.as_secs_f64() / binary.as_secs_f64()
            );
        }
    }
}
