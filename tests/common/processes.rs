//! The control plane as a subprocess (the `control-plane` binary), so a
//! test can SIGKILL it and start it again on the same port with the same
//! certificates and state, and a seeded random source for fault schedules.
//! Used by `tests/jsonl_crash.rs` and the chaos suite (`tests/chaos.rs`).
#![allow(dead_code)] // each test binary uses a different subset

use super::control_plane::{self as cp, Options};
use super::tls::TestPki;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// splitmix64: a seeded schedule without depending on a RNG crate's API.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, below)`.
    pub fn below(&mut self, below: Duration) -> Duration {
        Duration::from_nanos(self.next() % (below.as_nanos() as u64).max(1))
    }

    /// Uniform in `[lo, hi)`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + self.below(hi.saturating_sub(lo))
    }

    /// Uniform in `[0, n)`.
    pub fn index(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The `control-plane` binary on a fixed port, with its config, certificates
/// and state directory in `pki.dir`; its log goes to `<log_dir>/control-plane.log`.
pub struct ControlPlaneProcess {
    pub pki: TestPki,
    pub config: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl ControlPlaneProcess {
    pub async fn start(log_dir: &Path) -> ControlPlaneProcess {
        Self::start_with(log_dir, &Options::default()).await
    }

    /// With other heartbeat settings or extra config text.
    pub async fn start_with(log_dir: &Path, opts: &Options) -> ControlPlaneProcess {
        let pki = TestPki::generate();
        // The agent reconnects to one URL, so every start uses one port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = pki.dir.path().join("control-plane.toml");
        let text = cp::config_text(opts).replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
        std::fs::write(&config, text).expect("write config");
        let mut process = ControlPlaneProcess {
            pki,
            config,
            log: log_dir.join("control-plane.log"),
            port,
            child: None,
        };
        process.spawn().await;
        process
    }

    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_backend_preconfigured((*self.pki.client_config()).clone())
            .timeout(cp::WAIT)
            .build()
            .expect("reqwest client")
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Start the binary and wait until `/healthz` answers.
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut child = Command::new(super::control_plane_bin())
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the control-plane binary");
        let http = self.http();
        let deadline = Instant::now() + cp::WAIT * 3;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("control-plane exited with {status} before it was ready");
            }
            let ready = http
                .get(format!("{}/healthz", self.base_url()))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "control-plane not ready in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = Some(child);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL the control plane");
            child.wait().expect("reap the control plane");
        }
    }

    /// Whether the process is still running (a crash is noticed here).
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub async fn console(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Value {
        let mut req = self
            .http()
            .request(method, format!("{}{path}", self.base_url()))
            .bearer_auth(cp::CONSOLE_TOKEN);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("console request");
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: HTTP {status}: {body}");
        body
    }
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
