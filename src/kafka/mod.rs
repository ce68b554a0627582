//! Talking to Kafka-compatible streams (OCI Streaming, Apache Kafka, Redpanda)
//! through librdkafka: truststores as users bring them, client configuration
//! from a poll job, classification of librdkafka's failures into something an
//! operator can act on, and the connection test behind the console's "Test".
//!
//! The consuming itself (batches, acks, offsets) is in [`crate::relay`].

pub mod client;
pub mod context;
pub mod errors;
pub mod leaf_trust;
pub mod metadata;
pub mod probe;
pub mod truststore;
