//! The `connectivity-agent` binary as users and systemd run it: exit codes,
//! `check` output, and a SIGTERM that stops it within its drain deadline.

mod common;

use common::control_plane::{self as cp, Options, TestControlPlane, WAIT};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_connectivity-agent");

fn write_profile(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("InstallerProfile.cfg");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn profile(cp: &TestControlPlane, dir: &Path, password: &str) -> PathBuf {
    write_profile(
        dir,
        &format!(
            "oic_URL={}\nagent_GROUP_IDENTIFIER={}\noic_USER={}\noic_PASSWORD={password}\noic_CA_FILE={}\nagent_STATE_DIR={}\nagent_DRAIN_TIMEOUT_SECONDS=5\n",
            cp.base_url(),
            cp::GROUP,
            cp::USER,
            cp.pki.ca_file.display(),
            dir.join("state").display()
        ),
    )
}

#[test]
fn bad_profile_exits_64_with_the_exact_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_profile(
        dir.path(),
        "oic_URL=http://cp.example.com:80\nagent_GROUP_IDENTIFIER=G\noic_USER=u\noic_PASSWORD=secret-value\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr,
        format!(
            "error: {}:1: oic_URL = \"http://cp.example.com:80\": uses http://, but only https is allowed (credentials must not cross the network in clear text)\n  fix: write it as https://<host>:<port>\n",
            path.display()
        )
    );
    assert!(!stderr.contains("secret-value"));
}

#[test]
fn missing_profile_exits_64_and_says_how_to_fix() {
    let out = Command::new(BIN)
        .args(["run", "--config", "/nonexistent/InstallerProfile.cfg"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: /nonexistent/InstallerProfile.cfg: cannot read the file"),
        "{stderr}"
    );
    assert!(
        stderr.contains("fix: create it from InstallerProfile.cfg.example"),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_passes_every_step_against_a_live_control_plane() {
    let cp = TestControlPlane::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = profile(&cp, dir.path(), cp::PASSWORD);
    let out = tokio::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in ["config", "DNS", "TCP", "TLS", "auth", "hello"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(step)),
            "step {step} missing:\n{stdout}"
        );
    }
    assert!(stdout.ends_with("all checks passed\n"), "{stdout}");
    cp.stop().await;
}

#[tokio::test]
async fn check_names_the_failing_step() {
    let cp = TestControlPlane::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = profile(&cp, dir.path(), "wrong-password");
    let out = tokio::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with("FAIL auth   the control plane refused the credentials (HTTP 401)"),
        "{stdout}"
    );

    // Nothing listening: the TCP step fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&cp.base_url(), &format!("https://127.0.0.1:{port}"));
    let path = write_profile(dir.path(), &text);
    let out = tokio::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with(&format!("FAIL TCP    cannot connect to 127.0.0.1:{port}")),
        "{stdout}"
    );
    cp.stop().await;
}

#[tokio::test]
async fn refused_credentials_exit_78_without_retrying() {
    let cp = TestControlPlane::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = profile(&cp, dir.path(), "wrong-password");
    let started = Instant::now();
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .output(),
    )
    .await
    .expect("agent kept retrying refused credentials")
    .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(started.elapsed() < WAIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the control plane refused the credentials (HTTP 401)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong-password"),
        "secret in the log: {stderr}"
    );
    cp.stop().await;
}

#[tokio::test]
async fn sigterm_stops_the_agent_within_the_drain_deadline() {
    let cp = TestControlPlane::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = profile(&cp, dir.path(), cp::PASSWORD);
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the control plane lists the agent as connected.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = cp.console_get("/api/v1/agents").await;
        if body["agents"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["state"] == "connected"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "agent never connected: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().unwrap();
    let stop_sent = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    // Drain deadline is 5 s in this profile.
    let status = tokio::time::timeout(Duration::from_secs(6), child.wait())
        .await
        .expect("agent outlived its drain deadline")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(stop_sent.elapsed() < Duration::from_secs(6));
    // The control plane heard the goodbye: the agent is disconnected at once,
    // not after a heartbeat timeout.
    let (_, body) = cp.console_get("/api/v1/agents").await;
    assert_eq!(body["agents"][0]["state"], "disconnected", "{body}");
    cp.stop().await;
}
