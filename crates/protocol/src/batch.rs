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
//! A job with `compression` other than `none` sends such a frame wrapped:
//!
//! ```text
//! magic      4 bytes  "CAZ1"
//! codec      u8       1 = LZ4 block, 2 = Zstandard frame
//! raw_len    u32      length of the "CAB1" frame inside
//! body       the compressed "CAB1" frame
//! ```
//!
//! The decoder checks every length against the bytes left, so a truncated or
//! hostile frame is an error, never a panic or an over-allocation; a
//! compressed frame may not claim more than [`MAX_FRAME_BYTES`] inside, and
//! must hold exactly what it claims.

use crate::MAX_FRAME_BYTES;
use crate::job::Compression;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::cell::RefCell;

/// First bytes of every batch frame; also the format's version.
pub const MAGIC: &[u8; 4] = b"CAB1";

/// First bytes of a compressed batch frame.
pub const MAGIC_COMPRESSED: &[u8; 4] = b"CAZ1";

/// Bytes before the body of a compressed frame: magic, codec, raw length.
const COMPRESSED_HEAD: usize = 4 + 1 + 4;

const CODEC_LZ4: u8 = 1;
const CODEC_ZSTD: u8 = 2;

/// Zstandard level: the fastest of the standard levels, already well ahead
/// of LZ4 in bytes saved on JSON-like records.
const ZSTD_LEVEL: i32 = 1;

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
    pub fn finish(self) -> Bytes {
        self.finish_mut().freeze()
    }

    /// The finished frame, still writable (to compress it and reuse the buffer).
    pub fn finish_mut(mut self) -> BytesMut {
        let c = self.count.to_be_bytes();
        self.buf[self.count_at..self.count_at + 4].copy_from_slice(&c);
        self.buf
    }
}

/// Compresses finished frames for one job, keeping its codec's state
/// between batches.
pub struct Compressor {
    codec: Compression,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    /// Where frames are compressed before they are copied out at their size.
    scratch: Vec<u8>,
}

impl Compressor {
    pub fn new(codec: Compression) -> std::io::Result<Self> {
        let zstd = match codec {
            Compression::Zstd => Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
            _ => None,
        };
        Ok(Compressor {
            codec,
            zstd,
            scratch: Vec::new(),
        })
    }

    /// `frame` compressed, in a buffer of exactly its size (what a frame
    /// holds while in flight is what it weighs), or `None` when compressing
    /// would not make it smaller (values already compressed or encrypted):
    /// then send `frame` itself.
    pub fn compress(&mut self, frame: &[u8]) -> Option<Bytes> {
        let raw_len = u32::try_from(frame.len()).ok()?;
        let (codec, bound) = match self.codec {
            Compression::None => return None,
            Compression::Lz4 => (
                CODEC_LZ4,
                lz4_flex::block::get_maximum_output_size(frame.len()),
            ),
            Compression::Zstd => (CODEC_ZSTD, zstd::zstd_safe::compress_bound(frame.len())),
        };
        // The scratch buffer only grows, so it is zeroed once, not per batch.
        if self.scratch.len() < COMPRESSED_HEAD + bound {
            self.scratch.resize(COMPRESSED_HEAD + bound, 0);
        }
        let body = &mut self.scratch[COMPRESSED_HEAD..COMPRESSED_HEAD + bound];
        let n = match &mut self.zstd {
            Some(z) => z.compress_to_buffer(frame, body).ok()?,
            None => lz4_flex::block::compress_into(frame, body).ok()?,
        };
        if COMPRESSED_HEAD + n >= frame.len() {
            return None;
        }
        let mut out = BytesMut::with_capacity(COMPRESSED_HEAD + n);
        out.put_slice(MAGIC_COMPRESSED);
        out.put_u8(codec);
        out.put_u32(raw_len);
        out.put_slice(&self.scratch[COMPRESSED_HEAD..COMPRESSED_HEAD + n]);
        Some(out.freeze())
    }
}

thread_local! {
    /// One Zstandard decompression context per thread, reused across frames.
    static ZSTD_DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// The "CAB1" frame inside a compressed frame, or `frame` itself when it is
/// not compressed.
pub fn decompress(frame: Bytes) -> Result<Bytes, BatchError> {
    if frame.len() < 4 || &frame[..4] != MAGIC_COMPRESSED {
        return Ok(frame);
    }
    if frame.len() < COMPRESSED_HEAD {
        return Err(BatchError::Truncated("compressed frame header"));
    }
    let codec = frame[4];
    let raw_len = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) as usize;
    if raw_len > MAX_FRAME_BYTES {
        return Err(BatchError::TooLarge(raw_len));
    }
    let body = &frame[COMPRESSED_HEAD..];
    let out = match codec {
        CODEC_LZ4 => lz4_decompress(body, raw_len)?,
        CODEC_ZSTD => zstd_decompress(body, raw_len)?,
        other => return Err(BatchError::UnknownCodec(other)),
    };
    if out.len() != raw_len {
        return Err(BatchError::LengthMismatch {
            claimed: raw_len,
            actual: out.len(),
        });
    }
    Ok(Bytes::from(out))
}

fn lz4_decompress(body: &[u8], raw_len: usize) -> Result<Vec<u8>, BatchError> {
    let mut out = vec![0u8; raw_len];
    let n = lz4_flex::block::decompress_into(body, &mut out)
        .map_err(|e| BatchError::Corrupt("lz4", e.to_string()))?;
    out.truncate(n);
    Ok(out)
}

/// With this thread's decompression context, created on first use.
fn zstd_decompress(body: &[u8], raw_len: usize) -> Result<Vec<u8>, BatchError> {
    let corrupt = |e: std::io::Error| BatchError::Corrupt("zstd", e.to_string());
    let mut out = Vec::with_capacity(raw_len);
    ZSTD_DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new().map_err(corrupt)?);
        }
        let Some(d) = cell.as_mut() else {
            return Err(BatchError::Corrupt("zstd", "no context".into()));
        };
        d.decompress_to_buffer(body, &mut out).map_err(corrupt)
    })?;
    Ok(out)
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
    #[error(
        "compressed batch frame uses codec {0}; this control plane knows 1 (lz4) and 2 (zstd) \
         (upgrade the control plane, or set the job's compression to \"none\")"
    )]
    UnknownCodec(u8),
    #[error(
        "compressed batch frame claims {0} bytes inside, over the {max} byte frame limit",
        max = MAX_FRAME_BYTES
    )]
    TooLarge(usize),
    #[error("compressed batch frame is corrupt ({0}): {1}")]
    Corrupt(&'static str, String),
    #[error("compressed batch frame claims {claimed} bytes inside but holds {actual}")]
    LengthMismatch { claimed: usize, actual: usize },
}

/// Decode a batch frame, compressed or not. Byte fields share the (inner)
/// frame's memory (no copies).
pub fn decode(frame: Bytes) -> Result<Batch, BatchError> {
    let mut b = decompress(frame)?;
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

    /// A batch of JSON-like records that repeat their field names, as real
    /// ones do.
    fn compressible() -> Bytes {
        let mut w = BatchWriter::new("job-z", 3, "events", 4096);
        for i in 0..200i64 {
            let v = format!(
                r#"{{"order_id":{i},"status":"shipped","customer":"c-{}"}}"#,
                i % 7
            );
            w.push(
                i as i32 % 3,
                i,
                Some(1_700_000_000_000 + i),
                Some(b"k"),
                Some(v.as_bytes()),
                [("h", None)],
            );
        }
        w.finish()
    }

    fn compressed(codec: Compression, frame: &[u8]) -> Option<Bytes> {
        Compressor::new(codec).unwrap().compress(frame)
    }

    #[test]
    fn compressed_frames_decode_to_the_same_batch() {
        let raw = compressible();
        let want = decode(raw.clone()).unwrap();
        for codec in [Compression::Lz4, Compression::Zstd] {
            let mut c = Compressor::new(codec).unwrap();
            let z = c.compress(&raw).expect("JSON-like records compress");
            assert_eq!(&z[..4], MAGIC_COMPRESSED);
            // The compressor's state carries over to the next frame, and the
            // frame is cut to its size: in flight it weighs what it sends.
            let again = c.compress(&raw).unwrap();
            assert_eq!(again, z, "{codec:?}");
            assert_eq!(again.try_into_mut().unwrap().capacity(), z.len());
            assert!(
                z.len() * 2 < raw.len(),
                "{codec:?}: {} of {} bytes",
                z.len(),
                raw.len()
            );
            assert_eq!(decode(z).unwrap(), want, "{codec:?}");
        }
        assert_eq!(compressed(Compression::None, &raw), None);
    }

    #[test]
    fn a_frame_that_would_not_shrink_is_sent_as_it_is() {
        // Bytes that look random (as encrypted or compressed values do).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut w = BatchWriter::new("job-n", 1, "t", 8192);
        w.push(0, 0, None, None, Some(&noise), []);
        let raw = w.finish();
        for codec in [Compression::Lz4, Compression::Zstd] {
            assert_eq!(compressed(codec, &raw), None, "{codec:?}");
        }
    }

    #[test]
    fn hostile_compressed_frames_are_named_errors() {
        let raw = compressible();
        let z = compressed(Compression::Lz4, &raw).unwrap();
        let with_head = |codec: u8, len: u32, body: &[u8]| {
            let mut f = BytesMut::from(&MAGIC_COMPRESSED[..]);
            f.put_u8(codec);
            f.put_u32(len);
            f.put_slice(body);
            f.freeze()
        };
        let body = &z[COMPRESSED_HEAD..];
        // A decompression bomb is refused before any memory is reserved.
        assert_eq!(
            decode(with_head(CODEC_LZ4, u32::MAX, body)),
            Err(BatchError::TooLarge(u32::MAX as usize))
        );
        assert_eq!(
            decode(with_head(9, raw.len() as u32, body)),
            Err(BatchError::UnknownCodec(9))
        );
        assert!(
            decode(with_head(9, 1, b""))
                .unwrap_err()
                .to_string()
                .contains("compression to \"none\"")
        );
        // Claims more than it holds, or less.
        assert_eq!(
            decode(with_head(CODEC_LZ4, raw.len() as u32 + 1, body)),
            Err(BatchError::LengthMismatch {
                claimed: raw.len() + 1,
                actual: raw.len()
            })
        );
        assert!(matches!(
            decode(with_head(CODEC_LZ4, raw.len() as u32 - 1, body)),
            Err(BatchError::Corrupt("lz4", _))
        ));
        let zz = compressed(Compression::Zstd, &raw).unwrap();
        assert!(matches!(
            decode(with_head(
                CODEC_ZSTD,
                raw.len() as u32 - 1,
                &zz[COMPRESSED_HEAD..]
            )),
            Err(BatchError::Corrupt("zstd", _))
        ));
        // What the agent is told, word for word.
        let said = |f: Bytes| decode(f).unwrap_err().to_string();
        assert_eq!(
            said(with_head(CODEC_LZ4, u32::MAX, body)),
            "compressed batch frame claims 4294967295 bytes inside, over the 16777216 byte frame limit"
        );
        assert_eq!(
            said(with_head(9, 1, b"")),
            "compressed batch frame uses codec 9; this control plane knows 1 (lz4) and 2 (zstd) \
             (upgrade the control plane, or set the job's compression to \"none\")"
        );
        assert_eq!(
            said(with_head(CODEC_LZ4, raw.len() as u32 + 1, body)),
            format!(
                "compressed batch frame claims {} bytes inside but holds {}",
                raw.len() + 1,
                raw.len()
            )
        );
        assert!(
            said(with_head(CODEC_ZSTD, 10, b"not zstd"))
                .starts_with("compressed batch frame is corrupt (zstd): "),
        );
        assert_eq!(
            said(Bytes::from_static(b"CAZ1\x01")),
            "batch frame is truncated: compressed frame header"
        );
        // A compressed frame inside a compressed frame is not a batch.
        let nested = with_head(CODEC_LZ4, z.len() as u32, &lz4_flex::block::compress(&z));
        assert_eq!(decode(nested), Err(BatchError::BadMagic));
        // Every cut and every flipped byte is an error or the right batch, never a panic.
        let want = decode(raw.clone()).unwrap();
        for f in [z, zz] {
            for cut in 0..f.len() {
                assert!(
                    decode(f.slice(..cut)).is_err(),
                    "prefix of {cut} bytes decoded"
                );
            }
            for at in COMPRESSED_HEAD..f.len() {
                let mut bad = f.to_vec();
                bad[at] ^= 0x5A;
                if let Ok(b) = decode(Bytes::from(bad)) {
                    assert_eq!(b.records.len(), want.records.len());
                }
            }
        }
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
