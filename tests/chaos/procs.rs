//! The processes a scenario kills: agents (the `connectivity-agent` binary)
//! and, for broker faults, a broker of the suite's own (never the shared
//! test broker other tests are using).

use super::checker::Pids;
use crate::common::e2e;
use crate::common::kafka::{self, TestBroker};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// One agent binary with its profile and state under `dir/<name>`.
pub struct AgentProcess {
    pub name: String,
    profile: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pids: Pids,
}

impl AgentProcess {
    pub fn new(dir: &Path, name: &str, base_url: &str, ca_file: &Path, pids: Pids) -> AgentProcess {
        let state = dir.join(name);
        std::fs::create_dir_all(&state).expect("state dir");
        let profile = dir.join(format!("{name}.cfg"));
        e2e::write_private(
            &profile,
            &e2e::agent_profile_text(base_url, ca_file, &state),
        );
        AgentProcess {
            name: name.to_string(),
            profile,
            log: dir.join(format!("{name}.log")),
            child: None,
            pids,
        }
    }

    /// Replace the profile's `agent_ALLOWED_ENDPOINTS` (before `spawn`).
    pub fn set_allowed_endpoints(&self, rules: &str) {
        let text = std::fs::read_to_string(&self.profile).expect("profile");
        let text: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with("agent_ALLOWED_ENDPOINTS=") {
                    format!("agent_ALLOWED_ENDPOINTS={rules}")
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(&self.profile, text.join("\n") + "\n").expect("profile");
    }

    pub fn spawn(&mut self) {
        // CHAOS_AGENT_LOG=connectivity_agent=debug to look closer.
        let rust_log = std::env::var("CHAOS_AGENT_LOG").unwrap_or_else(|_| "info".into());
        let child = e2e::spawn_agent_binary(&self.profile, &self.log, &rust_log);
        self.pids
            .lock()
            .expect("pids")
            .insert(self.name.clone(), child.id());
        self.child = Some(child);
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.pids.lock().expect("pids").remove(&self.name);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (a graceful stop: drain, commit) and wait for the exit; a
    /// process still running after `within` is killed and reported.
    pub async fn terminate(&mut self, within: Duration) -> Result<ExitStatus, String> {
        self.pids.lock().expect("pids").remove(&self.name);
        let Some(mut child) = self.child.take() else {
            return Err("not running".into());
        };
        signal(child.id(), "TERM");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not stop within {within:?} of SIGTERM",
                    self.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An exit nobody asked for (a crash), if there was one.
    pub fn crashed(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `kill -<sig> <pid>`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// A broker of the suite's own in `target/kafka-chaos`, started by
/// `scripts/kafka-broker.sh` and then killed and started again by this
/// code with the same command line, data and ports.
///
/// The agents reach its PLAINTEXT listener through a fault proxy: the
/// listener advertises the proxy's address, so every connection a client
/// makes after bootstrap goes through it too. The suite's own clients
/// (producer, offset sampler) use the SASL_PLAINTEXT listener, directly.
pub struct OwnBroker {
    pub dir: PathBuf,
    pub env: TestBroker,
    cmdline: Vec<String>,
    /// The broker once this code restarted it (the script's broker is not
    /// our child).
    child: Option<Child>,
    pid: u32,
}

impl OwnBroker {
    /// Start it with `scripts/kafka-broker.sh start DIR`.
    pub fn start(dir: &Path) -> OwnBroker {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        // A broker left over from an interrupted run advertises a proxy
        // that is gone: start from scratch (fresh data, ports, properties).
        let _ = Command::new("bash")
            .arg(root.join("scripts/kafka-broker.sh"))
            .arg("stop")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let out = Command::new("bash")
            .arg(root.join("scripts/kafka-broker.sh"))
            .arg("start")
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/kafka-broker.sh");
        assert!(
            out.status.success(),
            "starting the chaos broker failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env_file = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let env = kafka::load_env(&env_file);
        let pid: u32 = std::fs::read_to_string(dir.join("broker.pid"))
            .expect("broker.pid")
            .trim()
            .parse()
            .expect("pid");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("broker cmdline");
        let cmdline = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        OwnBroker {
            dir: dir.to_path_buf(),
            env,
            cmdline,
            child: None,
            pid,
        }
    }

    /// Make the PLAINTEXT listener advertise `addr` (the fault proxy), by a
    /// clean restart with the edited `server.properties`.
    pub async fn advertise_plaintext(&mut self, addr: &str) {
        let props = self.dir.join("server.properties");
        let text = std::fs::read_to_string(&props).expect("server.properties");
        let direct = self.env.plaintext.clone();
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("advertised.listeners=") {
                    l.replace(
                        &format!("PLAINTEXT://{direct}"),
                        &format!("PLAINTEXT://{addr}"),
                    )
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&props, text + "\n").expect("write server.properties");
        self.stop("TERM").await;
        self.restart().await;
    }

    /// Send `sig` and wait until the process is gone.
    pub async fn stop(&mut self, sig: &str) {
        signal(self.pid, sig);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let gone = match self.child.as_mut() {
                Some(c) => c.try_wait().ok().flatten().is_some(),
                None => {
                    let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                        .unwrap_or_default();
                    stat.is_empty() || stat.contains(") Z ")
                }
            };
            if gone {
                self.child = None;
                return;
            }
            if Instant::now() > deadline {
                signal(self.pid, "KILL");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Start the same command line again and wait until a client gets
    /// metadata from it.
    pub async fn restart(&mut self) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .expect("broker log");
        let child = Command::new(&self.cmdline[0])
            .args(&self.cmdline[1..])
            .current_dir(&self.dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("restart the chaos broker");
        self.pid = child.id();
        std::fs::write(self.dir.join("broker.pid"), format!("{}\n", self.pid)).expect("pid file");
        self.child = Some(child);
        let config = self.client_config();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let c = config.clone();
            let ok = tokio::task::spawn_blocking(move || {
                use rdkafka::consumer::{BaseConsumer, Consumer};
                let consumer: BaseConsumer = c.create().expect("consumer");
                consumer
                    .fetch_metadata(None, Duration::from_secs(3))
                    .is_ok_and(|m| !m.brokers().is_empty())
            })
            .await
            .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the chaos broker did not come back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The suite's own clients: SASL_PLAINTEXT, not through the proxy.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.env.sasl_plaintext)
            .set("security.protocol", "SASL_PLAINTEXT")
            .set("sasl.mechanism", "PLAIN")
            .set("sasl.username", &self.env.sasl_user)
            .set("sasl.password", &self.env.sasl_password);
        c
    }

    /// Stop it for good (the script removes its pid and env files).
    pub async fn shutdown(&mut self) {
        self.stop("TERM").await;
        let _ = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-broker.sh"))
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        match self.child.take() {
            Some(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            None => signal(self.pid, "KILL"),
        }
    }
}
