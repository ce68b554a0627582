//! Stream connections, and publishing into them and reading from them
//! through an agent of their group (docs/CONTROL_PLANE.md, "Streams").
//!
//! A publish is answered only once the broker acknowledged every record
//! (`acks=all`). It carries an idempotency key: the first attempt is
//! recorded before it leaves ([`store`]), its answer once it is complete; a
//! retry of a complete request gets the first answer, and a retry of one
//! whose outcome is unknown (agent gone, timeout) makes the agent look for
//! the records already written before it writes the rest.

pub mod hub;
pub mod input;
pub mod store;

use connectivity_protocol::job::{ErrorClass, JobError};
use connectivity_protocol::secret::{MASK, Secret};
use connectivity_protocol::stream::{self, PartitionRange, RecordOutcome};
use hub::{RequestError, StreamHub};
pub use publish::{Prepared, check_key};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
pub use store::ConnectionDef;

/// How long an agent has to answer a publish or a read.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a publish or read failed, for the console API to turn into a status.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The caller's input is wrong (the message names what and the fix).
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("no stream connection {0:?}; create it with PUT /api/v1/streams/{0}")]
    NoConnection(String),
    /// Another request with the same key runs now.
    #[error("a publish with idempotency key {0:?} is in progress; wait for its answer, then retry")]
    KeyInProgress(String),
    #[error(
        "idempotency key {0:?} was used for a different request; give each distinct request its own key"
    )]
    KeyReused(String),
    #[error("{0}")]
    Agent(#[from] RequestError),
    /// The agent answered with an error for the request as a whole.
    #[error("{}", .0.message)]
    Stream(JobError),
    #[error("{0}")]
    Store(#[from] store::StoreError),
}

impl StreamError {
    /// `true` when the same request may succeed later without anyone
    /// changing anything: no agent now, an agent lost or slow, a broker
    /// down. The rest needs a fix (a connection, a topic, a grant, a
    /// smaller record).
    pub fn is_retryable(&self) -> bool {
        match self {
            StreamError::BadInput(_)
            | StreamError::TooLarge(_)
            | StreamError::NoConnection(_)
            | StreamError::KeyReused(_) => false,
            StreamError::KeyInProgress(_) | StreamError::Store(_) => true,
            StreamError::Agent(e) => !matches!(e, RequestError::TooOld { .. }),
            StreamError::Stream(e) => class_is_retryable(e.class),
        }
    }
}

/// Whether a failure of this class may heal by itself (the network, a
/// busy agent, a broker restarting).
pub fn class_is_retryable(class: ErrorClass) -> bool {
    matches!(
        class,
        ErrorClass::Dns | ErrorClass::Tcp | ErrorClass::Busy | ErrorClass::Other | ErrorClass::Sink
    )
}

/// A publish's answer, as the console API shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PublishAnswer {
    pub connection: String,
    /// The agent that wrote the records.
    pub agent: String,
    pub topic: String,
    /// One per record, in order.
    pub records: Vec<RecordOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotence: Option<stream::Idempotence>,
    /// The answer was stored by an earlier request with the same key.
    #[serde(default)]
    pub replayed: bool,
    /// The first record error, naming its index, when any record failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The first failed record's class (for the HTTP status).
    #[serde(skip)]
    pub first_error: Option<ErrorClass>,
}

/// A read's answer: the records in the record format, as JSON text.
#[derive(Debug)]
pub struct ReadAnswer {
    pub topic: String,
    /// A JSON array of records (docs/DELIVERY.md, "Record format").
    pub records_json: String,
    pub count: usize,
    pub partitions: Vec<PartitionRange>,
    pub truncated: bool,
}

/// Stream connections, their requests and their idempotency keys.
pub struct StreamService {
    pub hub: Arc<StreamHub>,
    store: store::Store,
    connections: Mutex<BTreeMap<String, ConnectionDef>>,
    /// (connection, key) of publishes running now.
    running: Mutex<HashSet<(String, String)>>,
}

impl StreamService {
    pub async fn open(state_dir: &std::path::Path) -> Result<StreamService, store::StoreError> {
        let store = store::Store::open_in(state_dir)?;
        let connections = store.connections().await?.into_iter().collect();
        Ok(StreamService {
            hub: Arc::default(),
            store,
            connections: Mutex::new(connections),
            running: Mutex::default(),
        })
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ConnectionDef>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection, secrets masked (for people).
    pub fn connection_redacted(&self, name: &str) -> Option<ConnectionDef> {
        self.lock_connections().get(name).map(redacted)
    }

    /// Every connection's name and group.
    pub fn connection_names(&self) -> Vec<(String, String, String)> {
        self.lock_connections()
            .iter()
            .map(|(n, d)| (n.clone(), d.group.clone(), d.connection.topic.clone()))
            .collect()
    }

    /// Create or replace a connection. Secrets given as the mask keep their
    /// stored value (a console round trip).
    pub async fn put_connection(
        &self,
        name: &str,
        mut def: ConnectionDef,
        group_exists: bool,
    ) -> Result<(), StreamError> {
        check_name(name)?;
        if !group_exists {
            return Err(StreamError::BadInput(format!(
                "group {:?} is not an agent group of this control plane; give one of the groups in its config",
                def.group
            )));
        }
        if let Some(old) = self.lock_connections().get(name) {
            unmask(&mut def, old);
        }
        if secrets(&mut def.clone()).iter().any(|s| s.expose() == MASK) {
            return Err(StreamError::BadInput(format!(
                "a secret of the new connection {name:?} is the mask {MASK:?}; give the real value"
            )));
        }
        def.connection
            .check()
            .map_err(|e| StreamError::BadInput(e.to_string().replacen("job field", "field", 1)))?;
        self.store.put_connection(name, &def).await?;
        self.lock_connections().insert(name.to_owned(), def);
        Ok(())
    }

    pub async fn delete_connection(&self, name: &str) -> Result<bool, StreamError> {
        if !self.lock_connections().contains_key(name) {
            return Ok(false);
        }
        self.store.delete_connection(name).await?;
        self.lock_connections().remove(name);
        Ok(true)
    }

    /// Whether connection `name` exists.
    pub fn has_connection(&self, name: &str) -> bool {
        self.lock_connections().contains_key(name)
    }

    fn connection(&self, name: &str) -> Result<ConnectionDef, StreamError> {
        self.lock_connections()
            .get(name)
            .cloned()
            .ok_or_else(|| StreamError::NoConnection(name.to_owned()))
    }
}

mod publish;
pub mod read;

/// Connection names: like job ids.
fn check_name(name: &str) -> Result<(), StreamError> {
    let ok = (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StreamError::BadInput(format!(
            "stream connection name {name:?} is not valid; give 1-128 of A-Z a-z 0-9 . _ -"
        )))
    }
}

fn secrets(def: &mut ConnectionDef) -> Vec<&mut Secret> {
    let sec = &mut def.connection.security;
    let mut out = Vec::new();
    if let Some(s) = sec.sasl.as_mut() {
        out.push(&mut s.password);
    }
    if let Some(t) = sec.truststore.as_mut() {
        out.push(&mut t.data);
        if let Some(p) = t.password.as_mut() {
            out.push(p);
        }
    }
    if let Some(k) = sec.client_key_pem.as_mut() {
        out.push(k);
    }
    out
}

/// A copy fit to show: every secret masked.
pub fn redacted(def: &ConnectionDef) -> ConnectionDef {
    let mut copy = def.clone();
    for s in secrets(&mut copy) {
        *s = Secret::new(MASK);
    }
    copy
}

/// Put back stored secrets where the new definition shows the mask, field
/// by field (the lists are in the same order for the same fields).
fn unmask(def: &mut ConnectionDef, old: &ConnectionDef) {
    let mut old = old.clone();
    let old_secrets: Vec<Secret> = secrets(&mut old).into_iter().map(|s| s.clone()).collect();
    for (i, s) in secrets(def).into_iter().enumerate() {
        if s.expose() == MASK
            && let Some(o) = old_secrets.get(i)
        {
            *s = o.clone();
        }
    }
}
