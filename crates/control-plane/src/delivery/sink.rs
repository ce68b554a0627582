//! Sinks: where the control plane hands a job's records, and what "accepted"
//! means for each. A batch is acked to the agent only after its sink accepted
//! it; a sink error means no ack, and the batch is retried, never skipped.

use super::definition::FieldError;
use super::jsonl::{FileEnd, JsonlSink};
use super::kafka::{KafkaSink, KafkaSinkConfig, Publisher};
use super::lanes::Accepted;
use super::record::OutBatch;
use super::webhook::{WebhookConfig, WebhookSink};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Where a job's records go. JSON, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SinkConfig {
    /// Append one JSON line per record to a local file.
    Jsonl(JsonlConfig),
    /// POST each batch's records (by partition, or one by one) to an HTTPS
    /// endpoint.
    Webhook(WebhookConfig),
    /// Publish the records into a stream connection, through an agent of
    /// its group.
    Kafka(KafkaSinkConfig),
    /// Accept and drop everything (benchmarks, dry runs).
    Discard,
}

/// `{"kind":"jsonl","path":"/abs/file.jsonl","fsync":true}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// Absolute path; the file is created with mode 0600 if missing.
    pub path: PathBuf,
    /// `fsync` the file after each batch, so an acked batch survives a power
    /// loss. Off trades that guarantee for speed.
    #[serde(default = "yes")]
    pub fsync: bool,
}

fn yes() -> bool {
    true
}

impl SinkConfig {
    pub(crate) fn validate(&self, errors: &mut Vec<FieldError>) {
        match self {
            SinkConfig::Jsonl(c) => {
                if !c.path.is_absolute() {
                    errors.push(FieldError::new(
                        "sink.path",
                        Some(c.path.display().to_string()),
                        "is a relative path",
                        "give an absolute path, e.g. /var/lib/connectivity-agent/out/users.jsonl",
                    ));
                }
                if c.path.file_name().is_none() {
                    errors.push(FieldError::new(
                        "sink.path",
                        Some(c.path.display().to_string()),
                        "names no file",
                        "end the path with a file name",
                    ));
                }
            }
            SinkConfig::Webhook(c) => c.validate(errors),
            SinkConfig::Kafka(c) => c.validate(errors),
            SinkConfig::Discard => {}
        }
    }

    /// A copy fit to show people: webhook header values and URL query masked.
    pub fn redacted(&self) -> SinkConfig {
        match self {
            SinkConfig::Webhook(c) => SinkConfig::Webhook(c.redacted()),
            other => other.clone(),
        }
    }

    /// Put back secrets that a console round trip replaced by the mask.
    pub(crate) fn unmask_from(&mut self, previous: &SinkConfig) {
        if let (SinkConfig::Webhook(c), SinkConfig::Webhook(p)) = (self, previous) {
            c.unmask_from(p);
        }
    }
}

/// Why a sink did not accept a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("webhook {url} unreachable: {message}")]
    Transport {
        url: String,
        message: String,
        timeout: bool,
    },
    #[error("webhook {url} answered HTTP {status}{}", body_suffix(.body))]
    Status {
        url: String,
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    #[error(
        "webhook {url} answered a redirect (HTTP {status}) to {location}; set the sink URL to the final address"
    )]
    Redirect {
        url: String,
        status: u16,
        location: String,
    },
    #[error("sink cannot be built: {0}")]
    Config(String),
    /// A kafka sink's publish failed (the message names the record or the
    /// fix).
    #[error("kafka sink (stream connection {connection:?}): {message}")]
    Publish {
        connection: String,
        message: String,
        retryable: bool,
    },
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

impl SinkError {
    /// `true` when trying again soon may succeed (timeouts, 5xx, 408, 429,
    /// I/O hiccups). A permanent error needs someone to fix the sink or the
    /// job; the batch is still retried, slowly, and never skipped.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Io { source, .. } => !matches!(
                source.kind(),
                io::ErrorKind::PermissionDenied
                    | io::ErrorKind::NotFound
                    | io::ErrorKind::IsADirectory
                    | io::ErrorKind::ReadOnlyFilesystem
            ),
            SinkError::Transport { .. } => true,
            SinkError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            SinkError::Redirect { .. } | SinkError::Config(_) => false,
            SinkError::Publish { retryable, .. } => *retryable,
        }
    }

    /// The delay a server asked for (`Retry-After`), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SinkError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A sink built from its config, ready to take batches.
#[derive(Debug)]
pub enum Sink {
    Jsonl(JsonlSink),
    /// Boxed: a webhook holds its client, URL and headers; one per job.
    Webhook(Box<WebhookSink>),
    Kafka(KafkaSink),
    Discard,
}

impl Sink {
    /// Build a sink. `http` is the shared client for webhooks; `publisher`
    /// what kafka sinks publish through (without it, their deliveries fail).
    pub fn new(
        config: &SinkConfig,
        http: &reqwest::Client,
        publisher: Option<&Publisher>,
    ) -> Result<Sink, SinkError> {
        Ok(match config {
            SinkConfig::Jsonl(c) => Sink::Jsonl(JsonlSink::new(c)),
            SinkConfig::Webhook(c) => Sink::Webhook(Box::new(WebhookSink::new(c, http.clone())?)),
            SinkConfig::Kafka(c) => Sink::Kafka(KafkaSink::new(c, publisher.cloned())),
            SinkConfig::Discard => Sink::Discard,
        })
    }

    /// Whether the batches queued behind one are best handed over with it
    /// as one: a JSONL file takes a group in one write and one `fsync`. A
    /// webhook takes each batch as it came (a receiver may limit a
    /// request's size); so does a kafka sink (its idempotency keys name a
    /// batch's records).
    pub fn writes_groups(&self) -> bool {
        matches!(self, Sink::Jsonl(_))
    }

    /// Whether the sink uses the records of a batch (all but discard).
    pub fn reads_records(&self) -> bool {
        !matches!(self, Sink::Discard)
    }

    /// Hand over a batch. `Ok` means the sink accepted every record in it;
    /// a JSONL sink also says where its file ends now, for the store. A sink
    /// that takes a batch in several requests (webhook, kafka) notes in `accepted`
    /// those it took, so that a retry of the same batch skips them.
    pub async fn deliver(
        &self,
        batch: &OutBatch<'_>,
        accepted: &mut Accepted,
    ) -> Result<Option<FileEnd>, SinkError> {
        match self {
            Sink::Jsonl(s) => s.deliver(batch).await.map(Some),
            Sink::Webhook(s) => s.deliver(batch, accepted).await.map(|()| None),
            Sink::Kafka(s) => s.deliver(batch, accepted).await.map(|()| None),
            Sink::Discard => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_config_is_tagged_by_kind_and_rejects_unknown_keys() {
        let c: SinkConfig =
            serde_json::from_str(r#"{"kind":"jsonl","path":"/tmp/x.jsonl"}"#).unwrap();
        assert_eq!(
            c,
            SinkConfig::Jsonl(JsonlConfig {
                path: "/tmp/x.jsonl".into(),
                fsync: true
            })
        );
        let c: SinkConfig = serde_json::from_str(r#"{"kind":"discard"}"#).unwrap();
        assert_eq!(c, SinkConfig::Discard);
        let err =
            serde_json::from_str::<SinkConfig>(r#"{"kind":"jsonl","path":"/x","fsynk":false}"#)
                .unwrap_err();
        assert!(err.to_string().contains("unknown field `fsynk`"), "{err}");
        let c: SinkConfig =
            serde_json::from_str(r#"{"kind":"kafka","connection":"copy"}"#).unwrap();
        assert_eq!(
            c,
            SinkConfig::Kafka(KafkaSinkConfig {
                connection: "copy".into(),
                partitioning: super::super::kafka::Partitioning::Key,
                max_parallel: 4
            })
        );
        assert_eq!(c.redacted(), c, "a kafka sink holds no secret");
        let err = serde_json::from_str::<SinkConfig>(r#"{"kind":"kafka"}"#).unwrap_err();
        assert!(
            err.to_string().contains("missing field `connection`"),
            "{err}"
        );
        let err = serde_json::from_str::<SinkConfig>(
            r#"{"kind":"kafka","connection":"c","partitioning":"random"}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `random`"),
            "{err}"
        );
        let err = serde_json::from_str::<SinkConfig>(r#"{"kind":"s3"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant `s3`"), "{err}");
        assert_eq!(
            serde_json::to_string(&SinkConfig::Discard).unwrap(),
            r#"{"kind":"discard"}"#
        );
    }

    #[test]
    fn retryable_classification() {
        let status = |status| SinkError::Status {
            url: "u".into(),
            status,
            body: String::new(),
            retry_after: None,
        };
        assert!(status(503).is_retryable());
        assert!(status(408).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(404).is_retryable());
        let io = |kind| SinkError::Io {
            path: "p".into(),
            source: io::Error::from(kind),
        };
        assert!(!io(io::ErrorKind::PermissionDenied).is_retryable());
        assert!(io(io::ErrorKind::StorageFull).is_retryable());
    }
}
