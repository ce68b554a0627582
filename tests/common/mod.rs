pub mod control_plane;
pub mod e2e;
pub mod kafka;
pub mod proxy;
pub mod tls;
