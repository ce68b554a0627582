//! The control plane's job store: job definitions and delivered watermarks in
//! one SQLite file in its state directory.
//!
//! The file is created with mode 0600 (SQLite gives its `-wal` and `-shm`
//! files the same mode) and holds job secrets in clear: whoever can read it
//! can read the SASL passwords and webhook tokens, exactly like whoever can
//! read the control plane's memory. docs/DELIVERY.md states this threat model.
//!
//! rusqlite blocks, so one dedicated thread owns the connection and runs calls
//! sent over a bounded channel; the API is async and callers queue behind it.
//! WAL mode with `synchronous=NORMAL`: a commit survives a process crash; a
//! power loss may forget the last commits (never corrupts the file). For
//! watermarks that means a possible duplicate, never a loss.

use super::definition::JobDefinition;
use super::jsonl::FileEnd;
use super::record::ValueFormat;
use super::sink::SinkConfig;
use connectivity_protocol::JobSpec;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// File name of the store inside the state directory.
pub const STORE_FILE: &str = "delivery.sqlite3";

/// 2 added `sink_files`. A version-1 file gains it when opened; a control
/// plane older than 2 refuses the file (it would leave `sink_files` stale).
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    grp           TEXT NOT NULL,
    spec          TEXT NOT NULL,   -- JobSpec JSON, secrets in clear
    sink          TEXT NOT NULL,   -- SinkConfig JSON, secrets in clear
    value_format  TEXT NOT NULL,
    paused        INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_group ON jobs(grp);
CREATE TABLE IF NOT EXISTS watermarks (
    job_id        TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    partition     INTEGER NOT NULL,
    next_offset   INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (job_id, partition)
) WITHOUT ROWID;
-- Where a JSONL job's file ended after the last write these watermarks
-- cover (docs/DELIVERY.md); dev and ino are u64 bit patterns.
CREATE TABLE IF NOT EXISTS sink_files (
    job_id        TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    dev           INTEGER NOT NULL,
    ino           INTEGER NOT NULL,
    len           INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("job store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "job store {path} has schema version {found}, newer than this build's {SCHEMA_VERSION}; run a newer control plane"
    )]
    NewerSchema { path: String, found: i64 },
    #[error(
        "job store: job {job_id:?} has an unreadable {column}: {message}; fix or delete the job"
    )]
    Corrupt {
        job_id: String,
        column: &'static str,
        message: String,
    },
    #[error("job {job_id:?} already exists")]
    AlreadyExists { job_id: String },
    #[error("job store thread has stopped")]
    Closed,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredJob {
    pub definition: JobDefinition,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// What [`Store::upsert_job`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Upserted {
    pub job: StoredJob,
    /// The job did not exist before.
    pub created: bool,
    /// The topic or bootstrap servers changed, so the old watermarks no
    /// longer describe this job's records and were deleted.
    pub watermarks_cleared: bool,
}

type Call = Box<dyn FnOnce(&mut Connection) + Send>;

/// Handle to the job store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    calls: mpsc::Sender<Call>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether `new` reads another stream than `old` (topic or servers), whose
/// offsets mean nothing for the old one: its watermarks are then cleared.
pub fn changes_stream(old: &JobDefinition, new: &JobDefinition) -> bool {
    old.spec.topic != new.spec.topic || old.spec.bootstrap_servers != new.spec.bootstrap_servers
}

impl Store {
    /// Open (or create) the store in `state_dir`, as [`STORE_FILE`].
    pub async fn open_in(state_dir: &Path) -> Result<Store, StoreError> {
        Store::open(state_dir.join(STORE_FILE)).await
    }

    /// Open (or create) the store file at `path`.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let path = path.into();
        let (calls, mut rx) = mpsc::channel::<Call>(64);
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("delivery-store".into())
            .spawn(move || {
                let mut conn = match open_connection(&thread_path) {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        conn
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                // Checkpoints (the only fsyncs in WAL mode with
                // synchronous=NORMAL) run beside the writer, so that a
                // commit, and the ack waiting for it, never pays for one.
                // Without the checkpointer, commits keep checkpointing.
                let checkpoints = checkpointer(&thread_path);
                if checkpoints.is_some()
                    && let Err(err) = conn.pragma_update(None, "wal_autocheckpoint", 0) {
                        tracing::warn!(%err, "cannot move WAL checkpoints off the writer; commits checkpoint themselves");
                    }
                // Ends when every Store handle is dropped.
                while let Some(call) = rx.blocking_recv() {
                    call(&mut conn);
                }
                // Stops the checkpointer with the writer.
                drop(checkpoints);
            })
            .map_err(|source| StoreError::Io { path: path.display().to_string(), source })?;
        ready_rx.await.map_err(|_| StoreError::Closed)??;
        Ok(Store { calls, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on the store thread.
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        let call: Call = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        self.calls
            .send(call)
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Add a new job; fails if the id is taken. `file_end`: where its JSONL
    /// file ends now, so that older lines never count as delivered.
    pub async fn insert_job(
        &self,
        def: JobDefinition,
        file_end: Option<FileEnd>,
    ) -> Result<StoredJob, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            if read_job(&tx, &def.spec.id)?.is_some() {
                return Err(StoreError::AlreadyExists {
                    job_id: def.spec.id.clone(),
                });
            }
            let job = write_job(&tx, def, None)?;
            write_file_end(&tx, &job.definition.spec.id, file_end)?;
            tx.commit()?;
            Ok(job)
        })
        .await
    }

    /// Create or replace a job. Watermarks are kept unless the topic or the
    /// bootstrap servers changed. `file_end` (where the job's JSONL file
    /// ends now) is recorded when the job is new, its watermarks are
    /// cleared or its file changes, so that older lines never count.
    pub async fn upsert_job(
        &self,
        def: JobDefinition,
        file_end: Option<FileEnd>,
    ) -> Result<Upserted, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let old = read_job(&tx, &def.spec.id)?;
            let watermarks_cleared = old
                .as_ref()
                .is_some_and(|o| changes_stream(&o.definition, &def));
            if watermarks_cleared {
                tx.execute(
                    "DELETE FROM watermarks WHERE job_id = ?1",
                    params![def.spec.id],
                )?;
            }
            let created = old.is_none();
            let new_file = match (&def.sink, old.as_ref().map(|o| &o.definition.sink)) {
                (SinkConfig::Jsonl(new), Some(SinkConfig::Jsonl(old))) => new.path != old.path,
                _ => true,
            };
            let job = write_job(&tx, def, old.map(|o| o.created_at_ms))?;
            if created || watermarks_cleared || new_file {
                write_file_end(&tx, &job.definition.spec.id, file_end)?;
            }
            tx.commit()?;
            Ok(Upserted {
                job,
                created,
                watermarks_cleared,
            })
        })
        .await
    }

    pub async fn get_job(&self, id: &str) -> Result<Option<StoredJob>, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| read_job(conn, &id)).await
    }

    /// Every job, ordered by id.
    pub async fn list_jobs(&self) -> Result<Vec<StoredJob>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn.prepare("SELECT id, grp, spec, sink, value_format, paused, created_at_ms, updated_at_ms FROM jobs ORDER BY id")?;
            let rows = stmt.query_map([], row_fields)?.collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(decode_job).collect()
        })
        .await
    }

    /// Delete a job and its watermarks. `false` if there was no such job.
    pub async fn delete_job(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM watermarks WHERE job_id = ?1", params![id])?;
            let n = tx.execute("DELETE FROM jobs WHERE id = ?1", params![id])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    /// Set the paused flag. `false` if there was no such job.
    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            let n = conn.execute(
                "UPDATE jobs SET paused = ?2, updated_at_ms = ?3 WHERE id = ?1",
                params![id, paused, now_ms()],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// Store watermarks (`partition`, next offset) of a job in one
    /// transaction, with where its JSONL file ends after the records they
    /// cover. Ignored if the job no longer exists.
    pub async fn set_watermarks(
        &self,
        job_id: &str,
        marks: Vec<(i32, i64)>,
        file_end: Option<FileEnd>,
    ) -> Result<(), StoreError> {
        if marks.is_empty() && file_end.is_none() {
            return Ok(());
        }
        let job_id = job_id.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO watermarks (job_id, partition, next_offset, updated_at_ms)
                     SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ?1)
                     ON CONFLICT (job_id, partition) DO UPDATE SET next_offset = excluded.next_offset, updated_at_ms = excluded.updated_at_ms",
                )?;
                let now = now_ms();
                for (partition, next) in marks {
                    stmt.execute(params![job_id, partition, next, now])?;
                }
            }
            if file_end.is_some() {
                write_file_end(&tx, &job_id, file_end)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Watermarks of a job, by partition (empty if none or no such job).
    pub async fn watermarks(&self, job_id: &str) -> Result<BTreeMap<i32, i64>, StoreError> {
        let job_id = job_id.to_owned();
        self.call(move |conn| {
            let mut stmt =
                conn.prepare("SELECT partition, next_offset FROM watermarks WHERE job_id = ?1")?;
            let rows = stmt.query_map(params![job_id], |r| {
                Ok((r.get::<_, i32>(0)?, r.get::<_, i64>(1)?))
            })?;
            Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
        })
        .await
    }

    /// Forget a job's watermarks, so records are delivered again (replay),
    /// and record where its JSONL file ends now: the lines before were
    /// delivered before the reset and must not count again.
    pub async fn clear_watermarks(
        &self,
        job_id: &str,
        file_end: Option<FileEnd>,
    ) -> Result<(), StoreError> {
        let job_id = job_id.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM watermarks WHERE job_id = ?1", params![job_id])?;
            write_file_end(&tx, &job_id, file_end)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Where the job's JSONL file ended after the last write the store
    /// knows of; `None` if never recorded (a store from before version 2, a
    /// file that could not be examined, or another kind of sink).
    pub async fn sink_file_end(&self, job_id: &str) -> Result<Option<FileEnd>, StoreError> {
        let job_id = job_id.to_owned();
        self.call(move |conn| {
            let end = conn
                .query_row(
                    "SELECT dev, ino, len FROM sink_files WHERE job_id = ?1",
                    params![job_id],
                    file_end,
                )
                .optional()?;
            Ok(end)
        })
        .await
    }
}

/// A `sink_files` row (SQLite stores the numbers as signed).
fn file_end(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileEnd> {
    Ok(FileEnd {
        dev: r.get::<_, i64>(0)? as u64,
        ino: r.get::<_, i64>(1)? as u64,
        len: r.get::<_, i64>(2)? as u64,
    })
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let shown = path.display().to_string();
    let io = |source| StoreError::Io {
        path: shown.clone(),
        source,
    };
    // Create the file ourselves with 0600 before SQLite does (it would use
    // the umask); tighten an existing file too.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    let mode = file.metadata().map_err(io)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %shown, mode = format!("{:o}", mode & 0o777), "job store was readable by others; setting mode 0600");
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    drop(file);
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: shown,
            found: version,
        });
    }
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(conn)
}

/// How often the checkpointer moves the WAL into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A thread with its own connection that checkpoints the WAL every
/// [`CHECKPOINT_EVERY`] (PASSIVE: it never blocks the writer). It stops when
/// the returned sender is dropped, with the store thread. `None` (and a
/// warning) if it cannot start: the writer then keeps checkpointing itself.
fn checkpointer(path: &Path) -> Option<std::sync::mpsc::Sender<()>> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let conn = Connection::open(path).and_then(|c| {
        c.busy_timeout(std::time::Duration::from_secs(5))
            .map(|()| c)
    });
    let started = conn.map_err(|e| e.to_string()).and_then(|conn| {
        std::thread::Builder::new()
            .name("delivery-store-checkpoint".into())
            .spawn(move || checkpoint_until_stopped(&conn, &stopped))
            .map_err(|e| e.to_string())
    });
    match started {
        Ok(_) => Some(stop),
        Err(err) => {
            tracing::warn!(%err, "cannot start the WAL checkpointer");
            None
        }
    }
}

/// The checkpointer thread's loop: until `stopped` says so or its sender
/// is dropped.
fn checkpoint_until_stopped(conn: &Connection, stopped: &std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        stopped.recv_timeout(CHECKPOINT_EVERY)
    {
        if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(%err, "WAL checkpoint failed; retried in a second");
        }
    }
}

type RowFields = (String, String, String, String, String, bool, i64, i64);

fn row_fields(r: &rusqlite::Row<'_>) -> rusqlite::Result<RowFields> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn decode_job(
    (id, group, spec, sink, value_format, paused, created_at_ms, updated_at_ms): RowFields,
) -> Result<StoredJob, StoreError> {
    let corrupt = |column, e: serde_json::Error| StoreError::Corrupt {
        job_id: id.clone(),
        column,
        message: e.to_string(),
    };
    let spec: JobSpec = serde_json::from_str(&spec).map_err(|e| corrupt("spec", e))?;
    let sink: SinkConfig = serde_json::from_str(&sink).map_err(|e| corrupt("sink", e))?;
    let value_format: ValueFormat = serde_json::from_value(serde_json::Value::String(value_format))
        .map_err(|e| corrupt("value_format", e))?;
    Ok(StoredJob {
        definition: JobDefinition {
            spec,
            group,
            sink,
            value_format,
            paused,
        },
        created_at_ms,
        updated_at_ms,
    })
}

fn read_job(conn: &Connection, id: &str) -> Result<Option<StoredJob>, StoreError> {
    let row = conn
        .query_row(
            "SELECT id, grp, spec, sink, value_format, paused, created_at_ms, updated_at_ms FROM jobs WHERE id = ?1",
            params![id],
            row_fields,
        )
        .optional()?;
    row.map(decode_job).transpose()
}

/// Record `end` as the job's file end; `None` forgets it (no recovery until
/// the next write records one). A job that no longer exists is skipped.
fn write_file_end(conn: &Connection, job_id: &str, end: Option<FileEnd>) -> rusqlite::Result<()> {
    match end {
        Some(e) => conn
            .prepare_cached(
                "INSERT INTO sink_files (job_id, dev, ino, len, updated_at_ms)
                 SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ?1)
                 ON CONFLICT (job_id) DO UPDATE SET dev = excluded.dev, ino = excluded.ino,
                     len = excluded.len, updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![
                job_id,
                e.dev as i64,
                e.ino as i64,
                e.len as i64,
                now_ms()
            ])?,
        None => conn.execute("DELETE FROM sink_files WHERE job_id = ?1", params![job_id])?,
    };
    Ok(())
}

fn write_job(
    conn: &Connection,
    def: JobDefinition,
    created_at_ms: Option<i64>,
) -> Result<StoredJob, StoreError> {
    let encode = |column, r: Result<String, serde_json::Error>| {
        r.map_err(|e| StoreError::Corrupt {
            job_id: def.spec.id.clone(),
            column,
            message: e.to_string(),
        })
    };
    let spec = encode("spec", serde_json::to_string(&def.spec))?;
    let sink = encode("sink", serde_json::to_string(&def.sink))?;
    let value_format = match def.value_format {
        ValueFormat::Raw => "raw",
        ValueFormat::ConnectPayload => "connect_payload",
    };
    let now = now_ms();
    let created = created_at_ms.unwrap_or(now);
    conn.execute(
        "INSERT INTO jobs (id, grp, spec, sink, value_format, paused, created_at_ms, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (id) DO UPDATE SET grp = excluded.grp, spec = excluded.spec, sink = excluded.sink,
             value_format = excluded.value_format, paused = excluded.paused, updated_at_ms = excluded.updated_at_ms",
        params![def.spec.id, def.group, spec, sink, value_format, def.paused, created, now],
    )?;
    Ok(StoredJob {
        definition: def,
        created_at_ms: created,
        updated_at_ms: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, topic: &str) -> JobDefinition {
        serde_json::from_value(serde_json::json!({
            "spec": {"id": id, "bootstrap_servers": "h:9092", "topic": topic, "consumer_group": "g",
                     "security": {"protocol": "SASL_SSL", "sasl": {"username": "u", "password": "pw"}}},
            "group": "grp", "sink": {"kind": "discard"}
        }))
        .unwrap()
    }

    /// The checkpointer moves the WAL into the database file by itself (the
    /// writer does not, with `wal_autocheckpoint` off), and stops when its
    /// sender is dropped.
    #[test]
    fn checkpointer_moves_the_wal_and_stops_with_its_sender() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let writer = open_connection(&path).unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        let write = |from: i64| {
            writer
                .execute_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS filler (n INTEGER, pad BLOB);
                     WITH RECURSIVE c(n) AS (SELECT {from} UNION ALL SELECT n + 1 FROM c WHERE n < {from} + 499)
                     INSERT INTO filler SELECT n, zeroblob(1000) FROM c;"
                ))
                .unwrap();
        };
        let db_len = || std::fs::metadata(&path).unwrap().len();
        let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !ok() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        };

        write(0);
        let before = db_len();
        // Half a MB sits in the WAL; nothing moves it yet.
        std::thread::sleep(CHECKPOINT_EVERY + std::time::Duration::from_millis(300));
        assert_eq!(
            db_len(),
            before,
            "nothing but the checkpointer should checkpoint"
        );

        let stop = checkpointer(&path).expect("checkpointer starts");
        wait_for(
            "the checkpointer moves the WAL into the database file",
            &|| db_len() >= before + 500 * 1000,
        );

        drop(stop);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let after = db_len();
        write(1000);
        std::thread::sleep(2 * CHECKPOINT_EVERY + std::time::Duration::from_millis(300));
        assert_eq!(db_len(), after, "a stopped checkpointer checkpointed");
    }

    #[tokio::test]
    async fn jobs_and_watermarks_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();
        store.insert_job(job("a", "t"), None).await.unwrap();
        assert!(matches!(
            store.insert_job(job("a", "t"), None).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        store
            .set_watermarks("a", vec![(0, 10), (1, 3)], None)
            .await
            .unwrap();
        store
            .set_watermarks("a", vec![(0, 12)], None)
            .await
            .unwrap();
        store
            .set_watermarks("ghost", vec![(0, 1)], None)
            .await
            .unwrap();
        assert_eq!(
            store.watermarks("a").await.unwrap(),
            BTreeMap::from([(0, 12), (1, 3)])
        );
        assert!(store.watermarks("ghost").await.unwrap().is_empty());

        // Same topic: watermarks kept. New topic: cleared.
        let up = store.upsert_job(job("a", "t"), None).await.unwrap();
        assert!(!up.created && !up.watermarks_cleared);
        let up = store.upsert_job(job("a", "t2"), None).await.unwrap();
        assert!(up.watermarks_cleared);
        assert!(store.watermarks("a").await.unwrap().is_empty());

        assert!(store.set_paused("a", true).await.unwrap());
        let got = store.get_job("a").await.unwrap().unwrap();
        assert!(got.definition.paused);
        assert_eq!(
            got.definition.spec.security.sasl.unwrap().password.expose(),
            "pw"
        );

        store.set_watermarks("a", vec![(0, 5)], None).await.unwrap();
        assert!(store.delete_job("a").await.unwrap());
        assert!(!store.delete_job("a").await.unwrap());
        assert!(store.watermarks("a").await.unwrap().is_empty());
        assert!(store.list_jobs().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn store_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = Store::open(&path).await.unwrap();
        store.insert_job(job("a", "t"), None).await.unwrap();
        for f in ["s.db", "s.db-wal"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }

    #[tokio::test]
    async fn missing_directory_is_named() {
        let err = Store::open("/nonexistent-dir-for-test/s.db")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("job store /nonexistent-dir-for-test/s.db: "),
            "{err}"
        );
    }
}
