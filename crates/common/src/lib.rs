//! What the agent and the control plane share besides the wire format: TLS
//! set-up with certificate diagnosis ([`tls`]), reconnect and retry backoff
//! ([`backoff`]), timestamps ([`timefmt`]), the configuration error both
//! programs print ([`ConfigError`]), private directories ([`fs`]) and how
//! the allocator keeps and returns memory ([`memory`]).
//!
//! It depends on neither librdkafka nor the wire protocol, so both sides
//! link it without pulling in the other's dependencies.
// deny, not forbid: `memory` calls glibc's `mallopt` and `malloc_trim`,
// which have no safe binding; nothing else may use `unsafe`.
#![deny(unsafe_code)]

pub mod backoff;
mod config_error;
pub mod fs;
pub mod memory;
pub mod timefmt;
pub mod tls;

pub use config_error::{ConfigError, EX_USAGE};
