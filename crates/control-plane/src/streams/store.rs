//! Stream connections and publish idempotency keys, in their own SQLite file
//! in the state directory (mode 0600, like the job store: it holds the
//! connections' secrets in clear).
//!
//! A key's row is written *before* its request goes to an agent, with the
//! time of that first attempt and no answer; the answer is filled in once
//! every record is acknowledged. So a row without an answer means "some of
//! these records may be in the stream": a retry then asks the agent to look
//! for them first. Rows expire after [`KEY_TTL_MS`], and beyond [`MAX_KEYS`]
//! the oldest go (checked every thousand new keys, so at most a thousand
//! more are ever kept).

use connectivity_protocol::stream::StreamConnection;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// File name inside the state directory.
pub const STORE_FILE: &str = "streams.sqlite3";
/// How long a publish answer is kept for retries: a day.
pub const KEY_TTL_MS: i64 = 24 * 3600 * 1000;
/// Most keys kept at once.
pub const MAX_KEYS: i64 = 100_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stream_connections (
    name          TEXT PRIMARY KEY,
    definition    TEXT NOT NULL,   -- ConnectionDef JSON, secrets in clear
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS publish_keys (
    connection    TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    answer        TEXT,            -- NULL while the outcome is unknown
    PRIMARY KEY (connection, key)
);
CREATE INDEX IF NOT EXISTS publish_keys_by_age ON publish_keys(started_at_ms);
";

/// A stream connection as the console stores it: the stream and the agent
/// group that reaches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionDef {
    pub group: String,
    #[serde(flatten)]
    pub connection: StreamConnection,
}

/// What is known about an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub request_hash: String,
    pub started_at_ms: i64,
    /// The answer's JSON once every record was acknowledged.
    pub answer: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("stream store {path}: {message}")]
pub struct StoreError {
    path: String,
    message: String,
}

/// The store; calls run on tokio's blocking threads, one at a time.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: String,
}

impl Store {
    pub fn open_in(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(STORE_FILE);
        let shown = path.display().to_string();
        let err = |m: String| StoreError {
            path: shown.clone(),
            message: m,
        };
        // Created private before SQLite opens it.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| err(e.to_string()))?;
        let conn = Connection::open(&path).map_err(|e| err(e.to_string()))?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .and_then(|()| conn.execute_batch(SCHEMA))
            .map_err(|e| err(e.to_string()))?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: shown,
        })
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let c = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&c)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|message| StoreError { path, message })
    }

    pub async fn connections(&self) -> Result<Vec<(String, ConnectionDef)>, StoreError> {
        let rows = self
            .call(|c| {
                let mut st = c.prepare("SELECT name, definition FROM stream_connections")?;
                let rows =
                    st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        let mut out = Vec::new();
        for (name, json) in rows {
            match serde_json::from_str(&json) {
                Ok(def) => out.push((name, def)),
                Err(e) => {
                    tracing::warn!(connection = %name, %e, "unreadable stream connection skipped")
                }
            }
        }
        Ok(out)
    }

    pub async fn put_connection(&self, name: &str, def: &ConnectionDef) -> Result<(), StoreError> {
        let (name, json) = (
            name.to_owned(),
            serde_json::to_string(def).unwrap_or_default(),
        );
        self.call(move |c| {
            c.execute(
                "INSERT INTO stream_connections(name, definition, updated_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET definition = ?2, updated_at_ms = ?3",
                params![name, json, now_ms()],
            )
            .map(drop)
        })
        .await
    }

    pub async fn delete_connection(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.call(move |c| {
            c.execute(
                "DELETE FROM publish_keys WHERE connection = ?1",
                params![name],
            )?;
            c.execute(
                "DELETE FROM stream_connections WHERE name = ?1",
                params![name],
            )
            .map(drop)
        })
        .await
    }

    /// The key's row, or a new one saying the first attempt starts now.
    pub async fn begin(
        &self,
        connection: &str,
        key: &str,
        request_hash: &str,
    ) -> Result<(KeyRow, bool), StoreError> {
        let (connection, key, hash) = (
            connection.to_owned(),
            key.to_owned(),
            request_hash.to_owned(),
        );
        self.call(move |c| {
            let now = now_ms();
            // Expired keys go first (the index finds them without a scan).
            c.execute(
                "DELETE FROM publish_keys WHERE started_at_ms < ?1",
                params![now - KEY_TTL_MS],
            )?;
            let found = c
                .query_row(
                    "SELECT request_hash, started_at_ms, answer FROM publish_keys WHERE connection = ?1 AND key = ?2",
                    params![connection, key],
                    |r| {
                        Ok(KeyRow {
                            request_hash: r.get(0)?,
                            started_at_ms: r.get(1)?,
                            answer: r.get(2)?,
                        })
                    },
                )
                .optional()?;
            if let Some(row) = found {
                return Ok((row, false));
            }
            c.execute(
                "INSERT INTO publish_keys(connection, key, request_hash, started_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![connection, key, hash, now],
            )?;
            // Trimming walks the index past MAX_KEYS rows: once every
            // thousand keys, not on every publish.
            if c.last_insert_rowid() % 1000 == 0 {
                c.execute(
                    "DELETE FROM publish_keys WHERE rowid IN
                     (SELECT rowid FROM publish_keys ORDER BY started_at_ms DESC LIMIT -1 OFFSET ?1)",
                    params![MAX_KEYS],
                )?;
            }
            Ok((
                KeyRow {
                    request_hash: hash,
                    started_at_ms: now,
                    answer: None,
                },
                true,
            ))
        })
        .await
    }

    /// Every record was acknowledged: a retry gets this answer.
    pub async fn finish(
        &self,
        connection: &str,
        key: &str,
        answer: String,
    ) -> Result<(), StoreError> {
        let (connection, key) = (connection.to_owned(), key.to_owned());
        self.call(move |c| {
            c.execute(
                "UPDATE publish_keys SET answer = ?3 WHERE connection = ?1 AND key = ?2",
                params![connection, key, answer],
            )
            .map(drop)
        })
        .await
    }

    /// Nothing was written (the request was refused as a whole): forget the
    /// key, so a retry does not scan the stream for nothing.
    pub async fn forget(&self, connection: &str, key: &str) -> Result<(), StoreError> {
        let (connection, key) = (connection.to_owned(), key.to_owned());
        self.call(move |c| {
            c.execute(
                "DELETE FROM publish_keys WHERE connection = ?1 AND key = ?2 AND answer IS NULL",
                params![connection, key],
            )
            .map(drop)
        })
        .await
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_starts_once_then_returns_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        let (row, new) = store.begin("c", "k1", "h").await.unwrap();
        assert!(new && row.answer.is_none());
        let (again, new) = store.begin("c", "k1", "h").await.unwrap();
        assert!(!new);
        assert_eq!(again.started_at_ms, row.started_at_ms);
        store.finish("c", "k1", "{\"ok\":1}".into()).await.unwrap();
        let (done, _) = store.begin("c", "k1", "h").await.unwrap();
        assert_eq!(done.answer.as_deref(), Some("{\"ok\":1}"));
        store.forget("c", "k1").await.unwrap();
        assert!(
            !store.begin("c", "k1", "h").await.unwrap().1,
            "answered keys are kept"
        );
    }
}
