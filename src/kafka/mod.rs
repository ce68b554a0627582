//! Talking to Kafka-compatible streams (OCI Streaming, Apache Kafka, Redpanda)
//! through librdkafka: client configuration from a poll job (checked first by
//! `protocol::validate`, truststores read by `protocol::truststore`), classification of librdkafka's failures into something an
//! operator can act on, and the connection test behind the console's "Test".
//!
//! The consuming itself (batches, acks, offsets) is in [`crate::relay`].

pub mod client;
pub mod context;
pub mod errors;
pub mod leaf_trust;
pub mod metadata;
pub mod probe;
