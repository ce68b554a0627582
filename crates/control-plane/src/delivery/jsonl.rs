//! The `jsonl` sink: one JSON line per record, appended to a local file, and
//! the recovery that keeps a control-plane crash from writing a batch twice.
//!
//! After every batch the store records, with the watermarks and in the same
//! transaction, where the file ended ([`FileEnd`]: device, inode, length).
//! A control plane killed after the write but before that commit leaves
//! lines past the recorded end; at the next start [`recover_watermarks`]
//! reads them and raises the job's watermarks past their offsets, so the
//! batch the agent resends is dropped as a duplicate. Only lines past the
//! recorded end count: the file also holds lines from before a
//! `reset_watermarks`, a topic change or an earlier job on the same path,
//! and the store records the file's end at each of those too.

use super::record::{LINE_POSITION_MAX, OutBatch, line_position};
use super::sink::{JsonlConfig, SinkError};
use super::store::Store;
use std::collections::BTreeMap;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::num::NonZeroU64;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// Where a sink file ended after a write the store knows of. The default
/// is [`FileEnd::MISSING`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileEnd {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
}

impl FileEnd {
    /// No file at the path. No file has inode 0, so a file found there later
    /// is read whole: all of it was written afterwards.
    pub const MISSING: FileEnd = FileEnd {
        dev: 0,
        ino: 0,
        len: 0,
    };

    fn at(meta: &Metadata, len: u64) -> FileEnd {
        FileEnd {
            dev: meta.dev(),
            ino: meta.ino(),
            len,
        }
    }

    fn is(&self, meta: &Metadata) -> bool {
        (self.dev, self.ino) == (meta.dev(), meta.ino())
    }

    /// Where the file at `path` ends now ([`FileEnd::MISSING`] if none).
    pub fn of(path: &Path) -> io::Result<FileEnd> {
        match std::fs::metadata(path) {
            Ok(meta) => Ok(FileEnd::at(&meta, meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FileEnd::MISSING),
            Err(e) => Err(e),
        }
    }
}

/// Appends JSON lines to a file.
#[derive(Debug)]
pub struct JsonlSink {
    path: PathBuf,
    fsync: bool,
}

/// Bytes of lines handed to the file writer at a time. A delivery used to be
/// encoded whole first (19 MB for a group of 1 KiB records) and then
/// written: every page of that buffer was faulted in fresh, and by the time
/// `write()` copied it into the page cache it had left the CPU's caches.
/// Pieces this size (a piece ends after the record that reaches it) are
/// written while the next is encoded; at most three buffers exist (being
/// written, queued, being encoded) and they are reused.
const PIECE_BYTES: usize = 256 * 1024;

/// What the encoder hands the file writer.
enum Piece {
    Lines(Vec<u8>),
    /// The delivery's last line was handed over: sync and report.
    End,
}

impl JsonlSink {
    pub fn new(config: &JsonlConfig) -> JsonlSink {
        JsonlSink {
            path: config.path.clone(),
            fsync: config.fsync,
        }
    }

    /// Append the batch; returns where the file ends after it.
    pub async fn deliver(&self, batch: &OutBatch<'_>) -> Result<FileEnd, SinkError> {
        let (pieces, received) = tokio::sync::mpsc::channel(1);
        // Unbounded, but it only ever holds buffers that exist anyway: three.
        let (spares, mut spare) = tokio::sync::mpsc::unbounded_channel();
        let (path, fsync) = (self.path.clone(), self.fsync);
        // File I/O blocks: it runs on the blocking pool while this task
        // encodes the next piece. If this task stops half way, the writer
        // cuts the file back to where the delivery began.
        let writer = tokio::task::spawn_blocking(move || {
            append(&path, received, spares, fsync).map_err(|source| SinkError::Io {
                path: path.display().to_string(),
                source,
            })
        });
        encode(batch, &pieces, &mut spare).await;
        drop(pieces);
        writer
            .await
            .map_err(|e| SinkError::Config(format!("file writer task failed: {e}")))?
    }
}

/// Encode the batch piece by piece into the writer's queue, reusing the
/// buffers it sends back. Stops early if the writer failed (it says why).
async fn encode(
    batch: &OutBatch<'_>,
    pieces: &tokio::sync::mpsc::Sender<Piece>,
    spare: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut next = 0;
    loop {
        let mut buf = spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(PIECE_BYTES + PIECE_BYTES / 4));
        buf.clear();
        next = batch.jsonl_into(next, &mut buf, PIECE_BYTES);
        if pieces.send(Piece::Lines(buf)).await.is_err() {
            return;
        }
        if next == batch.records.len() {
            let _ = pieces.send(Piece::End).await;
            return;
        }
    }
}

/// Append the pieces received, then sync. The file is opened for every
/// delivery so that a log rotation (move or delete) is followed. On a failed
/// write, or pieces that stop before [`Piece::End`], the file is cut back to
/// its previous length, so a retry never leaves a torn line. The returned end
/// comes from the `fstat` that gives that length: no extra syscall.
fn append(
    path: &Path,
    mut pieces: tokio::sync::mpsc::Receiver<Piece>,
    spares: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    fsync: bool,
) -> io::Result<FileEnd> {
    let (mut file, existed) = open_append(path)?;
    let meta = file.metadata()?;
    let start = meta.len();
    let mut len = 0u64;
    let mut write_all = || -> io::Result<()> {
        loop {
            match pieces.blocking_recv() {
                Some(Piece::Lines(buf)) => {
                    file.write_all(&buf)?;
                    len += buf.len() as u64;
                    // The encoder may have stopped; then the buffer just goes.
                    let _ = spares.send(buf);
                }
                Some(Piece::End) => break,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "the delivery stopped before its last line",
                    ));
                }
            }
        }
        if fsync { file.sync_data() } else { Ok(()) }
    };
    if let Err(err) = write_all() {
        let _ = file.set_len(start);
        return Err(err);
    }
    if fsync {
        // The lines are on disk, so their pages are clean: free them now.
        // Kept, they join a page cache that is full anyway (as on any server
        // after a while), and every later write waits for the kernel to
        // reclaim pages before it can copy: in the relay -> JSONL benchmark
        // a 19 MB write took 70 ms with them kept and 10 ms with them freed.
        // A reader tailing the file reads it from disk instead.
        // Advice only: an error changes nothing for the batch.
        let _ = rustix::fs::fadvise(
            &file,
            start,
            NonZeroU64::new(len),
            rustix::fs::Advice::DontNeed,
        );
    }
    if fsync && !existed {
        // A new file's directory entry must reach the disk too.
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
    }
    Ok(FileEnd::at(&meta, start + len))
}

/// Open `path` for appending, creating it (0600) if missing; whether it
/// existed. Opened without `create` first: one syscall when the file is
/// there (the usual case), and a new file is known to be new.
fn open_append(path: &Path) -> io::Result<(File, bool)> {
    match OpenOptions::new().append(true).open(path) {
        Ok(file) => Ok((file, true)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)?;
            Ok((file, false))
        }
        Err(e) => Err(e),
    }
}

/// What [`recover`] found past the recorded end.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Partitions whose watermark was behind the file, with the new value.
    pub raised: BTreeMap<i32, i64>,
    /// Complete lines read past the recorded end (of any topic).
    pub lines: u64,
    /// Bytes of a torn last line that were cut off.
    pub cut: u64,
    /// Where the file ends now.
    pub end: FileEnd,
}

/// Read the lines of `path` written after `recorded`: the rest of the same
/// file, or all of a file that replaced it (rotated away, then written).
/// Lines of `topic` whose offset is at or above `watermarks` raise them. A
/// torn last line (a kill in the middle of a write, of a batch that was
/// therefore never acked) is cut off and the cut synced. `None` when there
/// is nothing past the recorded end, including a file cut shorter than
/// recorded (copytruncate): what is left in it cannot be told new from old.
pub fn recover(
    path: &Path,
    recorded: FileEnd,
    topic: &str,
    watermarks: &BTreeMap<i32, i64>,
) -> io::Result<Option<Recovered>> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let from = if recorded.is(&meta) { recorded.len } else { 0 };
    if meta.len() <= from {
        return Ok(None);
    }
    let mut found = Recovered::default();
    let complete = scan_lines(&file, from, |line| {
        found.lines += 1;
        if let Some((t, partition, offset)) = line_position(line)
            && t == topic
        {
            let next = offset.saturating_add(1);
            if watermarks.get(&partition).is_none_or(|w| *w < next) {
                let raised = found.raised.entry(partition).or_insert(next);
                *raised = (*raised).max(next);
            }
        }
    })?;
    if complete < meta.len() {
        file.set_len(complete)?;
        file.sync_data()?;
        found.cut = meta.len() - complete;
    }
    found.end = FileEnd::at(&meta, complete);
    Ok(Some(found))
}

/// Call `line` with the start (at most [`LINE_POSITION_MAX`] bytes) of each
/// complete line from `from` on, streaming: memory stays bounded whatever
/// the lines' length. Returns the offset just past the last newline.
fn scan_lines(mut file: &File, from: u64, mut line: impl FnMut(&[u8])) -> io::Result<u64> {
    file.seek(SeekFrom::Start(from))?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut head = Vec::with_capacity(LINE_POSITION_MAX);
    let (mut pos, mut complete) = (from, from);
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(complete);
        }
        let (taken, newline) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = LINE_POSITION_MAX - head.len();
        head.extend_from_slice(&buf[..taken.min(room)]);
        reader.consume(taken);
        pos += taken as u64;
        if newline {
            line(&head);
            head.clear();
            complete = pos;
        }
    }
}

/// At start: raise the watermarks of a JSONL job (`marks`, as loaded) from
/// the lines its file holds past the end the store recorded, and save them
/// with the new end. No recorded end (a store from before this existed): no
/// recovery. An I/O error only costs the duplicate this would have avoided,
/// so it is logged and the job starts with the stored watermarks.
pub(crate) async fn recover_watermarks(
    store: &Store,
    job_id: &str,
    config: &JsonlConfig,
    topic: &str,
    marks: &mut BTreeMap<i32, i64>,
) {
    let recorded = match store.sink_file_end(job_id).await {
        Ok(Some(end)) => end,
        Ok(None) => return,
        Err(err) => {
            warn!(%err, job = %job_id, "cannot read the sink file's recorded end; no watermark recovery");
            return;
        }
    };
    let (path, topic, current) = (config.path.clone(), topic.to_owned(), marks.clone());
    let found =
        tokio::task::spawn_blocking(move || recover(&path, recorded, &topic, &current)).await;
    let found = match found {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return,
        Ok(Err(err)) => {
            warn!(%err, job = %job_id, path = %config.path.display(), "cannot read the sink file; no watermark recovery");
            return;
        }
        Err(err) => {
            warn!(%err, job = %job_id, "sink file recovery task failed");
            return;
        }
    };
    let raised: Vec<(i32, i64)> = found.raised.iter().map(|(p, o)| (*p, *o)).collect();
    if let Err(err) = store.set_watermarks(job_id, raised, Some(found.end)).await {
        warn!(%err, job = %job_id, "cannot save the recovered watermarks; they hold until the next restart");
    }
    marks.extend(&found.raised);
    info!(job = %job_id, partitions = ?found.raised, lines = found.lines, cut_bytes = found.cut, "watermarks recovered from the sink file");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::ValueFormat;
    use connectivity_protocol::Record;

    fn lines(topic: &str, list: &[(i32, i64)]) -> Vec<u8> {
        let records: Vec<Record> = list
            .iter()
            .map(|&(partition, offset)| Record {
                partition,
                offset,
                timestamp: None,
                key: None,
                headers: vec![],
                value: Some(bytes::Bytes::from_static(b"v")),
            })
            .collect();
        OutBatch::new("j", topic, &records, ValueFormat::Raw).to_jsonl()
    }

    /// `append` of one piece of lines.
    fn append_bytes(path: &Path, data: &[u8], fsync: bool) -> io::Result<FileEnd> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.try_send(Piece::Lines(data.to_vec())).unwrap();
        tx.try_send(Piece::End).unwrap();
        append(path, rx, tokio::sync::mpsc::unbounded_channel().0, fsync)
    }

    #[tokio::test]
    async fn a_delivery_larger_than_a_piece_is_written_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let records: Vec<Record> = (0..3000)
            .map(|offset| Record {
                partition: 0,
                offset,
                timestamp: None,
                key: None,
                headers: vec![],
                value: Some(bytes::Bytes::from(vec![b'7'; 200])),
            })
            .collect();
        let batch = OutBatch::new("j", "t", &records, ValueFormat::Raw);
        let expected = batch.to_jsonl();
        assert!(expected.len() > 2 * PIECE_BYTES, "several pieces");
        let sink = JsonlSink::new(&JsonlConfig {
            path: path.clone(),
            fsync: true,
        });
        let end = sink.deliver(&batch).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert_eq!(end.len, expected.len() as u64);
    }

    #[test]
    fn pieces_that_stop_before_the_end_are_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        append_bytes(&path, b"kept\n", true).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.try_send(Piece::Lines(b"half a deliv".to_vec())).unwrap();
        drop(tx);
        let err = append(&path, rx, tokio::sync::mpsc::unbounded_channel().0, true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "kept\n");
    }

    fn raw_append(path: &Path, data: &[u8]) {
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap()
            .write_all(data)
            .unwrap();
    }

    #[test]
    fn append_creates_a_private_file_and_reports_its_end() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let first = append_bytes(&path, b"a\n", true).unwrap();
        let second = append_bytes(&path, b"bc\n", false).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nbc\n");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!((first.ino, first.len), (meta.ino(), 2));
        assert_eq!(second, FileEnd::of(&path).unwrap());
        assert_eq!(second.len, 5);
    }

    #[test]
    fn tail_past_the_recorded_end_raises_behind_watermarks_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let end = append_bytes(&path, &lines("t", &[(0, 0), (0, 1), (1, 5)]), true).unwrap();
        // Written, then killed before the commit: the store still says `end`
        // and watermarks {0: 2, 1: 6}; partition 2 is new.
        raw_append(&path, &lines("t", &[(0, 2), (0, 3), (1, 6), (2, 0)]));
        let marks = BTreeMap::from([(0, 2), (1, 6), (3, 40)]);
        let found = recover(&path, end, "t", &marks).unwrap().unwrap();
        assert_eq!(found.raised, BTreeMap::from([(0, 4), (1, 7), (2, 1)]));
        assert_eq!((found.lines, found.cut), (4, 0));
        assert_eq!(found.end, FileEnd::of(&path).unwrap());

        // Lines already covered by the watermarks raise nothing.
        let covered = BTreeMap::from([(0, 4), (1, 7), (2, 1)]);
        let found = recover(&path, end, "t", &covered).unwrap().unwrap();
        assert_eq!((found.raised.len(), found.lines), (0, 4));
    }

    #[test]
    fn torn_last_line_is_cut_and_complete_ones_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let end = append_bytes(&path, &lines("t", &[(0, 0)]), true).unwrap();
        let batch = lines("t", &[(0, 1), (0, 2)]);
        let torn = &batch[..batch.len() - 7];
        raw_append(&path, torn);
        let found = recover(&path, end, "t", &BTreeMap::from([(0, 1)]))
            .unwrap()
            .unwrap();
        assert_eq!(found.raised, BTreeMap::from([(0, 2)]));
        assert_eq!(found.lines, 1);
        let first_line = batch.iter().position(|&b| b == b'\n').unwrap() + 1;
        assert_eq!(found.cut, (torn.len() - first_line) as u64);
        let kept = std::fs::read(&path).unwrap();
        assert_eq!(kept.len() as u64, found.end.len);
        assert_eq!(&kept[end.len as usize..], &batch[..first_line]);

        // A torn line alone: cut back to the recorded end, nothing raised.
        let fragment = b"{\"topic\":\"t\",\"parti";
        raw_append(&path, fragment);
        let found = recover(&path, found.end, "t", &BTreeMap::new())
            .unwrap()
            .unwrap();
        assert_eq!(
            (found.raised.len(), found.lines, found.cut),
            (0, 0, fragment.len() as u64)
        );
        assert_eq!(std::fs::read(&path).unwrap(), kept);
    }

    #[test]
    fn other_topics_and_foreign_lines_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let end = append_bytes(&path, b"", true).unwrap();
        raw_append(&path, &lines("other", &[(0, 90)]));
        raw_append(&path, b"not json\n{\"topic\":\"t\"}\n");
        raw_append(&path, &lines("t", &[(1, 3)]));
        let found = recover(&path, end, "t", &BTreeMap::new()).unwrap().unwrap();
        assert_eq!(found.raised, BTreeMap::from([(1, 4)]));
        assert_eq!(found.lines, 4);
    }

    #[test]
    fn rotated_file_is_read_whole_and_a_shorter_one_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let end = append_bytes(&path, &lines("t", &[(0, 0), (0, 1)]), true).unwrap();
        std::fs::rename(&path, dir.path().join("out.jsonl.1")).unwrap();
        append_bytes(&path, &lines("t", &[(0, 2)]), true).unwrap();
        let found = recover(&path, end, "t", &BTreeMap::from([(0, 2)]))
            .unwrap()
            .unwrap();
        assert_eq!((found.raised, found.lines), (BTreeMap::from([(0, 3)]), 1));

        // Recorded before any file existed: all of it is new.
        let found = recover(&path, FileEnd::MISSING, "t", &BTreeMap::new())
            .unwrap()
            .unwrap();
        assert_eq!(found.raised, BTreeMap::from([(0, 3)]));

        // Same file, cut shorter than recorded (copytruncate): not read.
        let now = FileEnd::of(&path).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        raw_append(&path, &lines("t", &[(0, 7)]));
        assert_eq!(recover(&path, now, "t", &BTreeMap::new()).unwrap(), None);
        // Nothing past the end, or no file: nothing either.
        let now = FileEnd::of(&path).unwrap();
        assert_eq!(recover(&path, now, "t", &BTreeMap::new()).unwrap(), None);
        let gone = dir.path().join("gone.jsonl");
        assert_eq!(recover(&gone, now, "t", &BTreeMap::new()).unwrap(), None);
    }

    #[test]
    fn long_lines_are_streamed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let end = append_bytes(&path, b"", true).unwrap();
        let mut big = lines("t", &[(0, 1)]);
        // Inside the value string, so the line stays valid JSON.
        let at = big.len() - 3;
        big.splice(at..at, std::iter::repeat_n(b'x', 300_000));
        raw_append(&path, &big);
        raw_append(&path, &lines("t", &[(0, 2)]));
        let found = recover(&path, end, "t", &BTreeMap::new()).unwrap().unwrap();
        assert_eq!((found.raised, found.lines), (BTreeMap::from([(0, 3)]), 2));
    }

    /// The same, through the pipeline: what a restart of the control plane
    /// loads after each kind of history.
    mod at_start {
        use super::*;
        use crate::delivery::{Delivery, DeliveryOptions, JobDefinition};
        use connectivity_protocol::{Batch, Record};

        fn def(topic: &str, out: &Path) -> JobDefinition {
            serde_json::from_value(serde_json::json!({
                "spec": {"id": "j", "bootstrap_servers": "h:9092", "topic": topic, "consumer_group": "g",
                         "security": {"protocol": "PLAINTEXT"}},
                "group": "grp", "sink": {"kind": "jsonl", "path": out}
            }))
            .unwrap()
        }

        fn batch(topic: &str, seq: u64, list: &[(i32, i64)]) -> Batch {
            Batch {
                job_id: "j".into(),
                batch_seq: seq,
                topic: topic.into(),
                records: list
                    .iter()
                    .map(|&(partition, offset)| Record {
                        partition,
                        offset,
                        timestamp: None,
                        key: None,
                        value: Some(bytes::Bytes::from_static(b"1")),
                        headers: vec![],
                    })
                    .collect(),
            }
        }

        /// What the sink writes for `b`, written without the pipeline: a
        /// batch whose watermark commit a kill prevented.
        fn written_but_not_committed(out: &Path, b: &Batch) {
            let lines = OutBatch::new("j", &b.topic, &b.records, ValueFormat::Raw).to_jsonl();
            raw_append(out, &lines);
        }

        async fn open(dir: &Path) -> Delivery {
            let tls = connectivity_common::tls::client_config(None).unwrap();
            Delivery::open(
                Store::open_in(dir).await.unwrap(),
                DeliveryOptions::new(tls),
            )
            .await
            .unwrap()
        }

        async fn restart(d: Delivery, dir: &Path) -> Delivery {
            d.shutdown().await;
            drop(d);
            open(dir).await
        }

        #[tokio::test]
        async fn a_batch_written_before_a_kill_is_not_written_again() {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out.jsonl");
            let d = open(dir.path()).await;
            d.create_job(def("t", &out)).await.unwrap();
            d.deliver(batch("t", 1, &[(0, 0), (0, 1)])).await.unwrap();
            let lost = batch("t", 2, &[(0, 2), (1, 0), (0, 3)]);
            written_but_not_committed(&out, &lost);

            let d = restart(d, dir.path()).await;
            let recovered = BTreeMap::from([(0, 4), (1, 1)]);
            assert_eq!(d.stats("j").unwrap().watermarks, recovered);
            assert_eq!(d.store().watermarks("j").await.unwrap(), recovered);
            let ack = d.deliver(lost).await.unwrap();
            assert_eq!((ack.delivered, ack.duplicates), (0, 3));
            let text = std::fs::read_to_string(&out).unwrap();
            assert_eq!(text.lines().count(), 5);
            d.shutdown().await;
        }

        #[tokio::test]
        async fn lines_from_before_creation_reset_or_topic_change_never_count() {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out.jsonl");
            // An earlier job's lines in the same file.
            written_but_not_committed(&out, &batch("t", 1, &[(0, 50)]));
            let d = open(dir.path()).await;
            d.create_job(def("t", &out)).await.unwrap();
            let d = restart(d, dir.path()).await;
            assert_eq!(d.stats("j").unwrap().watermarks, BTreeMap::new());

            // Delivered, a batch lost to a kill, then a reset for a replay.
            d.deliver(batch("t", 1, &[(0, 0)])).await.unwrap();
            written_but_not_committed(&out, &batch("t", 2, &[(0, 1)]));
            d.reset_watermarks("j").await.unwrap();
            let d = restart(d, dir.path()).await;
            assert_eq!(d.stats("j").unwrap().watermarks, BTreeMap::new());

            // Lines of the old definition, then a new topic.
            written_but_not_committed(&out, &batch("t2", 3, &[(0, 9)]));
            d.put_job(def("t2", &out)).await.unwrap();
            let d = restart(d, dir.path()).await;
            assert_eq!(d.stats("j").unwrap().watermarks, BTreeMap::new());
            d.shutdown().await;
        }

        #[tokio::test]
        async fn no_recorded_end_recovers_nothing() {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out.jsonl");
            let d = open(dir.path()).await;
            d.create_job(def("t", &out)).await.unwrap();
            d.deliver(batch("t", 1, &[(0, 0)])).await.unwrap();
            d.shutdown().await;
            drop(d);
            // As a store from before `sink_files` leaves it.
            rusqlite::Connection::open(dir.path().join(crate::delivery::store::STORE_FILE))
                .unwrap()
                .execute("DELETE FROM sink_files", [])
                .unwrap();
            written_but_not_committed(&out, &batch("t", 2, &[(0, 1)]));
            let d = open(dir.path()).await;
            assert_eq!(d.stats("j").unwrap().watermarks, BTreeMap::from([(0, 1)]));
            d.shutdown().await;
        }
    }
}
