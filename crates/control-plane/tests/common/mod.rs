//! Helpers shared by the control plane's integration tests; the agent's
//! tests (`tests/common/mod.rs` at the top) include these files too, so
//! both sides start control planes and certificates the same way.

pub mod control_plane;
pub mod tls;
