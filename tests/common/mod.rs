pub mod kafka;
pub mod tls;
pub mod control_plane;
pub mod proxy;
pub mod e2e;
