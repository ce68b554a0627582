//! Delivery on the control plane: what happens to a batch between the agent's
//! WebSocket and the ack.
//!
//! The server hands every decoded [`Batch`](connectivity_protocol::Batch) to
//! [`Delivery::deliver`]; it drops records the job's sink already has
//! ([`dedup`]), applies the job's [`ValueFormat`] ([`record`]), hands the rest
//! to the sink ([`sink`], [`jsonl`], [`webhook`], [`kafka`]) until it accepts them, returns
//! the [`Ack`] to send and saves the new watermarks behind it ([`store`]). Jobs live in the
//! same SQLite store ([`definition`] says what a job is). docs/DELIVERY.md is
//! the operator's view of all this.

pub mod dedup;
pub mod definition;
pub mod json_document;
pub mod jsonl;
pub mod kafka;
pub mod lanes;
pub mod pipeline;
pub mod record;
mod saver;
pub mod sink;
pub mod store;
pub mod webhook;

pub use definition::{FieldError, JobDefinition, ValidationError};
pub use jsonl::FileEnd;
pub use kafka::{KafkaSinkConfig, Partitioning, Publisher};
pub use pipeline::{
    Ack, AdminError, Delivery, DeliveryError, DeliveryOptions, JobStats, Queued, SinkErrorReport,
    SinkState,
};
pub use record::{OutBatch, Payload, ValueFormat};
pub use sink::{JsonlConfig, Sink, SinkConfig, SinkError};
pub use store::{Store, StoreError, StoredJob, Upserted};
pub use webhook::{WebhookConfig, WebhookMode};
