//! The audit log: who did what through the console, when, and how it went.
//!
//! Append-only JSON lines in `<state_dir>/audit.jsonl` (mode 0600), one
//! [`AuditEntry`] per console action that changes something or asks an
//! agent for something. The newest [`MAX_KEPT`] entries are also kept in
//! memory (read back from the file at start) for `GET /api/v1/audit`.
//! Parameters are recorded with every secret masked by the caller; this
//! module never sees a secret.

use connectivity_common::timefmt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

/// Entries kept in memory for the console.
pub const MAX_KEPT: usize = 1000;
/// File name in the state directory.
pub const FILE_NAME: &str = "audit.jsonl";

/// One console action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// RFC 3339 UTC.
    pub at: String,
    /// The console token's name.
    pub who: String,
    /// `METHOD /route/with/{placeholders}`.
    pub action: String,
    /// What it acted on: `agent:<id>`, `group:<id>`, `job:<id>`.
    pub target: String,
    /// The request's parameters, secrets masked.
    pub params: Value,
    pub ok: bool,
    /// The outcome for people (the agent's answer or the error).
    pub message: String,
}

/// The last [`MAX_KEPT`] entries of the file's text; lines that do not
/// parse are skipped: one damaged line must not keep the control plane from
/// starting.
fn newest_entries(text: &str) -> VecDeque<AuditEntry> {
    let mut recent = VecDeque::new();
    for e in text
        .lines()
        .filter_map(|l| serde_json::from_str::<AuditEntry>(l).ok())
    {
        if recent.len() == MAX_KEPT {
            recent.pop_front();
        }
        recent.push_back(e);
    }
    recent
}

/// The log. Writes are small and synchronous (one `write` per entry, under
/// the lock, so lines never interleave).
pub struct AuditLog {
    path: PathBuf,
    recent: Mutex<VecDeque<AuditEntry>>,
}

impl AuditLog {
    /// Open (or create, mode 0600) `<state_dir>/audit.jsonl` and read its
    /// newest entries back.
    pub fn open(state_dir: &Path) -> std::io::Result<AuditLog> {
        let path = state_dir.join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let recent = newest_entries(&text);
        open_append(&path)?;
        Ok(AuditLog {
            path,
            recent: Mutex::new(recent),
        })
    }

    /// Record an action. A failed write is logged, not fatal: the action has
    /// already happened.
    pub fn record(
        &self,
        who: &str,
        action: &str,
        target: &str,
        params: Value,
        ok: bool,
        message: &str,
    ) {
        let entry = AuditEntry {
            at: timefmt::rfc3339(SystemTime::now()),
            who: who.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            params,
            ok,
            message: message.to_owned(),
        };
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let mut line = serde_json::to_string(&entry).unwrap_or_default();
        line.push('\n');
        if let Err(err) = open_append(&self.path).and_then(|mut f| f.write_all(line.as_bytes())) {
            tracing::error!(%err, path = %self.path.display(), "cannot write the audit log");
        }
        tracing::info!(who, action, target, ok, "audit");
        if recent.len() == MAX_KEPT {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    /// The newest `limit` entries, newest first.
    pub fn newest(&self, limit: usize) -> Vec<AuditEntry> {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn entries_are_appended_private_and_read_back_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        log.record(
            "ops",
            "POST /api/v1/agents/{id}/restart",
            "agent:a1",
            serde_json::json!({}),
            true,
            "restarting",
        );
        log.record(
            "ops",
            "PUT /api/v1/agents/{id}/log-level",
            "agent:a1",
            serde_json::json!({"level": "debug"}),
            false,
            "no",
        );
        let mode = std::fs::metadata(log.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = AuditLog::open(dir.path()).unwrap();
        let newest = again.newest(10);
        assert_eq!(newest.len(), 2);
        assert_eq!(newest[0].action, "PUT /api/v1/agents/{id}/log-level");
        assert_eq!(again.newest(1).len(), 1);
    }
}
