//! connectivity-agent: an on-premises agent that relays private Kafka-compatible
//! streams to a cloud control plane over one outbound WebSocket, and the
//! reference control plane it talks to.
//!
//! The two binaries are thin: `src/main.rs` (the agent) and
//! `src/bin/control-plane.rs` call into the modules below.
#![forbid(unsafe_code)]
// ConfigError carries file, line, key, value and fix on purpose; it only
// travels the start-up path, where its size costs nothing.
#![allow(clippy::result_large_err)]

pub mod agent;
pub mod allowlist;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod install;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod relay;
pub mod service;
pub mod streams;
