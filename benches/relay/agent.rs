//! The agent under test: the real binary (`connectivity-agent run --config
//! ...`) as its own process, so its CPU time and memory are its own.

use crate::procstat::{self, Sample};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Agent {
    child: Child,
    pub pid: u32,
    pub log: PathBuf,
}

/// What the agent's profile needs to reach the control plane and the broker.
pub struct ProfileArgs<'a> {
    /// `https://127.0.0.1:port` (the control plane, or the delay proxy).
    pub url: String,
    pub ca_file: &'a Path,
    pub group: &'a str,
    pub user: &'a str,
    pub password: &'a str,
    /// `host:port` of the broker, for `agent_ALLOWED_ENDPOINTS`.
    pub broker: &'a str,
}

impl Agent {
    /// Write a profile into `dir` and start `bin run --config` on it.
    pub fn start(bin: &Path, dir: &Path, p: &ProfileArgs<'_>) -> anyhow::Result<Agent> {
        std::fs::create_dir_all(dir.join("state"))?;
        let profile = dir.join("InstallerProfile.cfg");
        // BENCH_AGENT_PROFILE adds profile lines (a literal \n between them) to try
        // agent settings side by side, e.g. agent_MEMORY_TRIM_SECONDS=0.
        let extra = std::env::var("BENCH_AGENT_PROFILE")
            .map(|lines| lines.replace("\\n", "\n") + "\n")
            .unwrap_or_default();
        std::fs::write(
            &profile,
            format!(
                "oic_URL={}\nagent_GROUP_IDENTIFIER={}\noic_USER={}\noic_PASSWORD={}\noic_CA_FILE={}\nagent_STATE_DIR={}\n\
                 agent_NAME=bench-agent\nagent_LOG_LEVEL={}\nagent_ALLOWED_ENDPOINTS={}\nagent_DRAIN_TIMEOUT_SECONDS=10\n{extra}",
                p.url,
                p.group,
                p.user,
                p.password,
                p.ca_file.display(),
                dir.join("state").display(),
                "warn",
                p.broker
            ),
        )?;
        // The agent refuses a profile holding a password that others can read.
        std::fs::set_permissions(
            &profile,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        let log = dir.join("agent.log");
        let out = std::fs::File::create(&log)?;
        // BENCH_AGENT_WRAPPER runs the agent under a profiler, e.g.
        // "valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p"
        // (valgrind keeps the pid, so /proc and SIGTERM still reach the agent).
        let wrapper = std::env::var("BENCH_AGENT_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut cmd = match words.next() {
            Some(w) => {
                let mut c = Command::new(w);
                c.args(words).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&profile)
            .env_remove("RUST_LOG");
        // BENCH_AGENT_LOG (a RUST_LOG filter, e.g. connectivity_agent::relay=debug)
        // shows the relay's pauses and batches: for diagnosis, not for measuring.
        if let Ok(filter) = std::env::var("BENCH_AGENT_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        Ok(Agent { child, pid, log })
    }

    pub fn sample(&self) -> anyhow::Result<Sample> {
        procstat::sample(&self.pid.to_string())
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// SIGTERM (the graceful stop), then wait; SIGKILL after `patience`.
    /// Returns how long the graceful stop took.
    pub fn stop(mut self, patience: Duration) -> anyhow::Result<Duration> {
        let t = Instant::now();
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        while t.elapsed() < patience {
            if self.child.try_wait()?.is_some() {
                return Ok(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        anyhow::bail!("agent did not stop within {patience:?} of SIGTERM; killed it")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
