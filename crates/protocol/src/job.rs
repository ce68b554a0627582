//! Poll jobs as they cross the wire: what to consume and how, and the state an
//! agent reports back.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One poll job: consume `topic` from `bootstrap_servers` as member of
/// `consumer_group` and relay batches to the control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Unique job name, chosen by the operator.
    pub id: String,
    /// `host:port[,host:port...]` of the stream endpoint.
    pub bootstrap_servers: String,
    pub topic: String,
    #[serde(default)]
    pub partitions: Partitions,
    pub consumer_group: String,
    /// Where to start when the consumer group has no committed offset.
    #[serde(default)]
    pub start: StartPosition,
    #[serde(default = "defaults::max_records")]
    pub max_records: u32,
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes: u32,
    /// Longest time a partial batch waits before it is sent.
    #[serde(default = "defaults::max_wait_ms")]
    pub max_wait_ms: u64,
    /// Batches in flight (sent, not yet acked) before the agent stops fetching.
    #[serde(default = "defaults::window")]
    pub window: u32,
    /// Bytes of batch frames in flight (sent and unacked, or sealed and
    /// waiting) before the agent stops fetching, whatever `window` says: a
    /// job relays at most this much per round trip. Frames are not kept once
    /// written (the agent's memory is capped separately, see
    /// `RelaySettings::held_bytes`).
    #[serde(default = "defaults::window_bytes")]
    pub window_bytes: u64,
    /// Kafka consumer session timeout: how fast partitions of a dead agent move.
    #[serde(default = "defaults::session_timeout_ms")]
    pub session_timeout_ms: u32,
    /// How batch frames are compressed on the way to the control plane.
    #[serde(default)]
    pub compression: Compression,
    #[serde(default)]
    pub security: Security,
}

/// Compression of batch frames (see `protocol::batch`). Records are
/// compressed a whole batch at a time, which finds the repetition between
/// records (field names, common values) that one record alone lacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Frames as they are: the cheapest in CPU, the right choice on a fast
    /// link or for values that are already compressed or encrypted.
    #[default]
    None,
    /// LZ4 (block format): fast, about half the bytes for JSON-like text.
    Lz4,
    /// Zstandard at level 1: fewer bytes than LZ4 for more CPU, for slow
    /// or metered links.
    Zstd,
}

impl Compression {
    /// The name used in job specs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Defaults for job fields, documented in docs/JOBS.md.
pub mod defaults {
    pub fn max_records() -> u32 {
        2000
    }
    pub fn max_bytes() -> u32 {
        1024 * 1024
    }
    pub fn max_wait_ms() -> u64 {
        100
    }
    /// 128 batches: 256,000 records of 100 B (2000 to a batch) per round
    /// trip, 5 million records/s over 50 ms (docs/PERFORMANCE.md).
    pub fn window() -> u32 {
        128
    }
    /// 64 MiB: covers 50 ms of round trip at up to 1.2 GiB/s. Bytes in
    /// flight cost no agent memory (frames are freed once written; unacked
    /// records are read again from Kafka after a reconnect), only a re-read
    /// of up to this much after one.
    pub fn window_bytes() -> u64 {
        64 * 1024 * 1024
    }
    /// The smallest `window_bytes` a job may give: below a few batches the
    /// relay waits for an ack after every one.
    pub const MIN_WINDOW_BYTES: u64 = 64 * 1024;
    /// The largest `window_bytes` a job may give (records read again after a
    /// reconnect).
    pub const MAX_WINDOW_BYTES: u64 = 1024 * 1024 * 1024;
    pub fn session_timeout_ms() -> u32 {
        6000
    }
}

/// Which partitions of the topic the job reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Partitions {
    /// All partitions, shared across the agents of the group by Kafka.
    #[default]
    #[serde(with = "all_keyword")]
    All,
    /// Only these partitions (assigned directly, no group rebalancing).
    List(Vec<i32>),
}

mod all_keyword {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("all")
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        let v = String::deserialize(d)?;
        if v == "all" {
            Ok(())
        } else {
            Err(serde::de::Error::custom(format!(
                "partitions must be \"all\" or a list of numbers, not {v:?}"
            )))
        }
    }
}

/// Start position for partitions with no committed offset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPosition {
    #[default]
    Earliest,
    Latest,
    /// An explicit offset per partition; partitions not listed start at earliest.
    Offsets(#[serde(deserialize_with = "partition_keys::deserialize")] BTreeMap<i32, i64>),
}

/// JSON object keys are strings (`{"0": 42}`). serde_json turns them back
/// into numbers only when it deserializes directly; inside an internally
/// tagged enum such as `ControlMessage::AssignJob` it buffers the content
/// first and then refuses `"0"` as an `i32`. So the keys are read either way.
mod partition_keys {
    use serde::de::{Deserializer, Error, MapAccess, Visitor};
    use std::collections::BTreeMap;
    use std::fmt;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<i32, i64>, D::Error> {
        d.deserialize_map(OffsetsVisitor)
    }

    struct OffsetsVisitor;

    impl<'de> Visitor<'de> for OffsetsVisitor {
        type Value = BTreeMap<i32, i64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of partition numbers to offsets")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<Key>()? {
                out.insert(key.0, map.next_value::<i64>()?);
            }
            Ok(out)
        }
    }

    /// A partition number given as a number or as a string of one.
    struct Key(i32);

    impl<'de> serde::Deserialize<'de> for Key {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct KeyVisitor;
            impl Visitor<'_> for KeyVisitor {
                type Value = Key;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a partition number")
                }
                fn visit_i64<E: Error>(self, v: i64) -> Result<Key, E> {
                    i32::try_from(v)
                        .map(Key)
                        .map_err(|_| E::custom(format!("partition {v} is out of range")))
                }
                fn visit_u64<E: Error>(self, v: u64) -> Result<Key, E> {
                    i32::try_from(v)
                        .map(Key)
                        .map_err(|_| E::custom(format!("partition {v} is out of range")))
                }
                fn visit_str<E: Error>(self, v: &str) -> Result<Key, E> {
                    v.trim().parse::<i32>().map(Key).map_err(|_| {
                        E::custom(format!("partition {v:?} is not a partition number"))
                    })
                }
            }
            d.deserialize_any(KeyVisitor)
        }
    }
}

/// Kafka `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    #[default]
    SaslSsl,
}

/// SASL mechanism.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[default]
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_kafka(&self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// How the job connects to the stream endpoint. Every secret in here is a
/// [`Secret`]; the console API shows them masked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Security {
    #[serde(default)]
    pub protocol: SecurityProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<Sasl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truststore: Option<Truststore>,
    /// Client certificate (PEM) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_pem: Option<String>,
    /// Client private key (PEM) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_pem: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sasl {
    #[serde(default)]
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: Secret,
}

/// Format of a truststore as users bring it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TruststoreFormat {
    Pem,
    Jks,
    Pkcs12,
}

/// A truststore: the file's content (base64 for JKS and PKCS#12, text for PEM)
/// and its optional password.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Truststore {
    pub format: TruststoreFormat,
    /// PEM text, or base64 of the binary file.
    pub data: Secret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
}

/// Class of a job error, so operators (and alerting) can tell causes apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    Config,
    NotAllowed,
    Dns,
    Tcp,
    Tls,
    Sasl,
    Authorization,
    TopicMissing,
    Sink,
    /// An offset outside the partition's watermarks (reads on demand).
    OutOfRange,
    /// A record over the stream's size limit (publish).
    TooLarge,
    /// The agent runs as many publish and read requests as it may.
    Busy,
    Other,
}

/// Lifecycle state of a job on one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    Starting,
    Running,
    /// Stopped fetching until resumed.
    Paused,
    /// Finishing in-flight batches before stopping.
    Draining,
    Stopped,
    /// Cannot run; `error` says why. Retried with backoff unless permanent.
    Failed,
}

/// Per-partition progress of a job on one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    pub partition: i32,
    /// Next offset the consumer will fetch.
    pub fetched: i64,
    /// Highest offset sent to the control plane, plus one.
    pub relayed: i64,
    /// Watermark: every record below this offset is acked.
    pub acked: i64,
    /// Offset last committed to the consumer group.
    pub committed: i64,
    /// High watermark of the partition as last seen, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_watermark: Option<i64>,
}

/// A job's state on the agent that reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub job_id: String,
    pub phase: JobPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    #[serde(default)]
    pub partitions: Vec<PartitionState>,
    #[serde(default)]
    pub records_relayed: u64,
    /// Bytes of batch frames sent, as they went on the wire (compressed
    /// when the job compresses).
    #[serde(default)]
    pub bytes_relayed: u64,
    /// The same frames before compression (equal to `bytes_relayed` when the
    /// job does not compress): their ratio is what compression saves.
    #[serde(default)]
    pub bytes_uncompressed: u64,
    #[serde(default)]
    pub batches_acked: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub class: ErrorClass,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_accept_all_keyword_or_list() {
        assert_eq!(
            serde_json::from_str::<Partitions>("\"all\"").unwrap(),
            Partitions::All
        );
        assert_eq!(
            serde_json::from_str::<Partitions>("[0,2]").unwrap(),
            Partitions::List(vec![0, 2])
        );
        assert_eq!(serde_json::to_string(&Partitions::All).unwrap(), "\"all\"");
        assert!(serde_json::from_str::<Partitions>("\"some\"").is_err());
    }

    #[test]
    fn start_offsets_survive_the_assign_job_message() {
        let mut spec: JobSpec = serde_json::from_str(
            r#"{"id":"j","bootstrap_servers":"h:9092","topic":"t","consumer_group":"g"}"#,
        )
        .unwrap();
        spec.start = StartPosition::Offsets([(0, 5), (3, 7)].into());
        let text = crate::encode(&crate::ControlMessage::AssignJob(spec.clone()));
        assert!(
            text.contains(r#""start":{"offsets":{"0":5,"3":7}}"#),
            "{text}"
        );
        let back: crate::ControlMessage = crate::decode(&text).unwrap();
        assert_eq!(back, crate::ControlMessage::AssignJob(spec));
        let err = serde_json::from_str::<StartPosition>(r#"{"offsets":{"x":1}}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("partition \"x\" is not a partition number"),
            "{err}"
        );
    }

    #[test]
    fn job_defaults_fill_in_and_secrets_do_not_debug_print() {
        let job: JobSpec = serde_json::from_str(
            r#"{"id":"j","bootstrap_servers":"h:9092","topic":"t","consumer_group":"g",
                "security":{"protocol":"SASL_SSL","sasl":{"mechanism":"SCRAM-SHA-512","username":"u","password":"p4ss"}}}"#,
        )
        .unwrap();
        assert_eq!(job.max_records, 2000);
        assert_eq!(job.start, StartPosition::Earliest);
        assert_eq!(
            job.security.sasl.as_ref().unwrap().mechanism,
            SaslMechanism::ScramSha512
        );
        assert!(!format!("{job:?}").contains("p4ss"));
    }
}
