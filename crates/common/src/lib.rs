//! What the agent and the control plane share besides the wire format: TLS
//! set-up with certificate diagnosis ([`tls`]), reconnect and retry backoff
//! ([`backoff`]), timestamps ([`timefmt`]), the configuration error both
//! programs print ([`ConfigError`]) and private directories ([`fs`]).
//!
//! It depends on neither librdkafka nor the wire protocol, so both sides
//! link it without pulling in the other's dependencies.
#![forbid(unsafe_code)]

pub mod backoff;
mod config_error;
pub mod fs;
pub mod timefmt;
pub mod tls;

pub use config_error::{ConfigError, EX_USAGE};
