//! The control plane as its own process: the `control-plane` binary as an
//! operator runs it, with one job into a JSONL file defined in its config.
//!
//! The in-process control plane ([`crate::system`]) shares its process with
//! the harness, so its RSS cannot be read apart; this one's can (VmHWM over
//! its whole life), and its CPU without the meter's.

use crate::procstat::{self, Sample};
use anyhow::{Context, bail};
use connectivity_protocol::JobSpec;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for the binary to listen.
const START_PATIENCE: Duration = Duration::from_secs(30);

pub struct ControlPlaneProcess {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl ControlPlaneProcess {
    /// Start `bin` with its config and state in `dir` (emptied first), the
    /// certificates of `tls_dir`, and `spec` as its one job, delivering
    /// into the JSONL file `sink` (`fsync` per batch, the default).
    pub async fn start(
        bin: &Path,
        dir: &Path,
        tls_dir: &Path,
        spec: &JobSpec,
        sink: &Path,
    ) -> anyhow::Result<ControlPlaneProcess> {
        anyhow::ensure!(
            bin.is_file(),
            "control plane binary {} not found; build it (scripts/bench.sh does)",
            bin.display()
        );
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let addr = free_port()?;
        let config = dir.join("control-plane.toml");
        let text = crate::system::config_text(&addr.to_string(), tls_dir, &job_toml(spec, sink))?;
        std::fs::write(&config, text)?;
        // As an operator would: the control plane warns about a config others can read.
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let log = dir.join("control-plane.log");
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut cp = ControlPlaneProcess { child, addr, log };
        cp.wait_listening().await?;
        Ok(cp)
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn sample(&self) -> anyhow::Result<Sample> {
        procstat::sample(&self.child.id().to_string())
    }

    /// SIGTERM (a graceful stop), then wait for the exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the control plane did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The last lines of its log, for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn wait_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the control plane exited ({status}) before listening; its log:\n{}",
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the control plane did not listen on {} within {START_PATIENCE:?}",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        // After `stop` this finds the child gone; after an error it ends it.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port nobody listens on now (the kernel's choice for port 0).
fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// `spec` as a `[[jobs]]` table of the config file (docs/CONTROL_PLANE.md),
/// the fields the bench sets; the broker is reached over PLAINTEXT.
fn job_toml(spec: &JobSpec, sink: &Path) -> String {
    format!(
        r#"
[[jobs]]
id = "{}"
group = "{}"
bootstrap_servers = "{}"
topic = "{}"
consumer_group = "{}"
start = "earliest"
max_records = {}
max_bytes = {}
max_wait_ms = {}
window = {}
window_bytes = {}
compression = "{}"
security = {{ protocol = "PLAINTEXT" }}
sink = {{ kind = "jsonl", path = "{}" }}
"#,
        spec.id,
        crate::system::GROUP,
        spec.bootstrap_servers,
        spec.topic,
        spec.consumer_group,
        spec.max_records,
        spec.max_bytes,
        spec.max_wait_ms,
        spec.window,
        spec.window_bytes,
        spec.compression.as_str(),
        sink.display(),
    )
}
