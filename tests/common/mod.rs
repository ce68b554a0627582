// The control plane's test helpers live with its crate; the agent's
// end-to-end tests start control planes and certificates the same way.
#[path = "../../crates/control-plane/tests/common/control_plane.rs"]
pub mod control_plane;
pub mod e2e;
pub mod kafka;
pub mod processes;
pub mod proxy;
#[path = "../../crates/control-plane/tests/common/tls.rs"]
pub mod tls;
pub mod webdriver;

#[allow(dead_code)] // only the tests that run the binary use it
/// The `control-plane` binary, built beside the agent's by `cargo build
/// --workspace` (a package's tests only get their own package's binaries
/// from Cargo).
pub fn control_plane_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/control-plane
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory")
        .join("control-plane");
    assert!(
        bin.is_file(),
        "{} is missing; build it first with cargo build --workspace --bins",
        bin.display()
    );
    bin
}
