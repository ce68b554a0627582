//! The whole system for end-to-end tests: the shared test broker
//! ([`super::kafka`]), a real control plane ([`super::control_plane`]) with
//! JSONL sinks in a temp dir, and real agents, in-process
//! (`agent::runner::run_agent`) or as the `connectivity-agent` binary.
//!
//! Everything is observed the way an operator would: job errors, phases and
//! offsets through the console API, records in the sink's file.
#![allow(dead_code)] // each test binary uses a different subset

use super::control_plane::{self as cp, Options, TestControlPlane};
use super::kafka::{self, TestBroker};
use connectivity_agent::agent::AgentError;
use connectivity_agent::config::{self, AgentConfig, Profile, SecretValues};
use connectivity_control_plane::delivery::DeliveryOptions;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest wait for records or a job state in one step of a test.
pub const E2E_WAIT: Duration = Duration::from_secs(40);

/// `RUST_LOG=connectivity_agent=debug cargo test --test relay_e2e -- --nocapture`
/// shows the agent's and the control plane's logs.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A control plane with fast delivery retries, the test broker, and a
/// directory for sinks and agent state.
pub struct E2e {
    pub cp: TestControlPlane,
    pub broker: TestBroker,
    _logs: LogDump,
    pub dir: tempfile::TempDir,
}

impl E2e {
    pub async fn start() -> E2e {
        Self::start_with_toml(String::new()).await
    }

    /// With extra config text (e.g. `[[jobs]]` tables).
    pub async fn start_with_toml(extra_toml: String) -> E2e {
        logs();
        let broker = kafka::broker();
        let mut delivery =
            DeliveryOptions::new(connectivity_common::tls::client_config(None).expect("CA roots"));
        delivery.retry_base = Duration::from_millis(100);
        delivery.retry_cap = Duration::from_secs(1);
        let cp = TestControlPlane::start(Options {
            extra_toml,
            delivery: Some(delivery),
            ..Options::default()
        })
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        E2e {
            cp,
            broker,
            _logs: LogDump(dir.path().to_owned()),
            dir,
        }
    }

    /// Where job `id` writes its records.
    pub fn sink_path(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.jsonl"))
    }

    /// An agent profile for this control plane ([`agent_profile_text`]).
    pub fn profile_text(&self, state: &Path) -> String {
        agent_profile_text(&self.cp.base_url(), &self.cp.pki.ca_file, state)
    }

    pub fn agent_config(&self, state: &Path) -> AgentConfig {
        agent_config(&self.cp.base_url(), &self.cp.pki.ca_file, state)
    }

    /// Run an agent in this process with state in `<dir>/<name>`.
    pub fn spawn_agent(&self, name: &str) -> InProcessAgent {
        let state = self.dir.path().join(name);
        std::fs::create_dir_all(&state).expect("state dir");
        InProcessAgent::spawn(self.agent_config(&state))
    }

    /// Run the agent binary with state in `<dir>/<name>`; its output goes
    /// to `<dir>/<name>.log`.
    pub fn spawn_agent_binary(&self, name: &str) -> Child {
        self.agent_binary(name)
            .spawn()
            .expect("start the agent binary")
    }

    /// The command that runs the agent binary with state in `<dir>/<name>`
    /// (its profile written), for a test to add to before it spawns it.
    pub fn agent_binary(&self, name: &str) -> Command {
        let state = self.dir.path().join(name);
        std::fs::create_dir_all(&state).expect("state dir");
        let profile = self.dir.path().join(format!("{name}.cfg"));
        write_private(&profile, &self.profile_text(&state));
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        agent_command(
            &profile,
            &self.dir.path().join(format!("{name}.log")),
            &rust_log,
        )
    }

    /// Wait until the agent binary `child` (state `<dir>/<name>`) has a
    /// session other than `previous`; fails at once if it exits. Returns
    /// the session id.
    pub async fn wait_binary_connected(
        &self,
        child: &mut Child,
        name: &str,
        previous: Option<&str>,
    ) -> String {
        let id_file = self.dir.path().join(name).join("agent-id");
        let deadline = Instant::now() + E2E_WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("agent binary {name} exited with {status} before connecting");
            }
            let id = std::fs::read_to_string(&id_file).unwrap_or_default();
            let record = self.cp.registry.get(id.trim());
            if let Some(a) = record.filter(|a| {
                a.state == connectivity_control_plane::AgentState::Connected
                    && Some(a.session_id.as_str()) != previous
            }) {
                return a.session_id;
            }
            assert!(
                Instant::now() < deadline,
                "agent binary {name} did not connect"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A job definition over PLAINTEXT into a JSONL sink, starting at the
    /// earliest offset, small batches, 6 s Kafka session timeout.
    pub fn job(&self, id: &str, topic: &str) -> Value {
        json!({
            "spec": {
                "id": id, "bootstrap_servers": self.broker.plaintext, "topic": topic,
                "consumer_group": kafka::unique_topic(&format!("{id}-group")),
                "max_records": 50, "max_wait_ms": 50, "session_timeout_ms": 6000,
                "security": {"protocol": "PLAINTEXT"}
            },
            "group": cp::GROUP,
            "sink": {"kind": "jsonl", "path": self.sink_path(id)}
        })
    }

    /// A stream connection to `topic` over SASL_SSL, trusting the broker
    /// through the JKS truststore.
    pub fn stream_connection(&self, topic: &str) -> Value {
        use base64::Engine;
        let b = &self.broker;
        let jks = std::fs::read(&b.truststore_jks).expect("JKS truststore");
        json!({
            "group": cp::GROUP,
            "bootstrap_servers": b.sasl_ssl,
            "topic": topic,
            "security": {
                "protocol": "SASL_SSL",
                "sasl": {"mechanism": "SCRAM-SHA-256", "username": b.sasl_user, "password": b.sasl_password},
                "truststore": {"format": "jks", "password": b.truststore_password,
                               "data": base64::engine::general_purpose::STANDARD.encode(jks)}
            }
        })
    }

    /// `PUT /api/v1/streams/{name}`, expecting 204.
    pub async fn put_stream_connection(&self, name: &str, def: &Value) {
        let (status, body) = self
            .cp
            .console("PUT", &format!("/api/v1/streams/{name}"), Some(def))
            .await;
        assert_eq!(status, 204, "{body}");
    }

    /// Wait until `n` agents of the test group are connected.
    pub async fn wait_agents_in_group(&self, n: usize) {
        let deadline = Instant::now() + E2E_WAIT;
        while self.cp.registry.connected_in_group(cp::GROUP).len() < n {
            assert!(Instant::now() < deadline, "{n} agents did not connect");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /api/v1/jobs`, expecting 201.
    pub async fn create_job(&self, def: &Value) -> Value {
        let (status, body) = self.cp.console("POST", "/api/v1/jobs", Some(def)).await;
        assert_eq!(status, 201, "creating {}: {body}", def["spec"]["id"]);
        body
    }

    /// `GET /api/v1/jobs/{id}`.
    pub async fn job_view(&self, id: &str) -> Value {
        let (status, body) = self
            .cp
            .console("GET", &format!("/api/v1/jobs/{id}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Poll the job's console view until `pred` holds; panics with the last
    /// view after [`E2E_WAIT`].
    pub async fn wait_job(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + E2E_WAIT;
        loop {
            let view = self.job_view(id).await;
            if pred(&view) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "job {id}: timed out waiting for {what}; last view:\n{view:#}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until job `id` reports a failure of `class` on some agent;
    /// returns that agent's `error`.
    pub async fn wait_job_error(&self, id: &str, class: &str) -> Value {
        let view = self
            .wait_job(id, &format!("an error of class {class}"), |v| {
                agents(v).iter().any(|a| a["error"]["class"] == class)
            })
            .await;
        agents(&view)
            .into_iter()
            .find(|a| a["error"]["class"] == class)
            .map(|a| a["error"].clone())
            .unwrap_or_default()
    }

    /// Wait until the sink of job `id` holds at least `n` records.
    pub async fn wait_records(&self, id: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + E2E_WAIT;
        loop {
            let records = read_jsonl(&self.sink_path(id));
            if records.len() >= n {
                return records;
            }
            if Instant::now() >= deadline {
                let view = self.job_view(id).await;
                panic!(
                    "job {id}: {} of {n} records after {E2E_WAIT:?}; job view:\n{view:#}",
                    records.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// On a failure, shows what the agent binaries logged (dropped before the
/// directory that holds the logs).
pub struct LogDump(pub PathBuf);

impl Drop for LogDump {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!(
                    "---- {} (last lines)\n{}",
                    entry.path().display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
}

/// An agent profile: Basic auth, the CA in `ca_file`, state in `state`,
/// loopback endpoints allowed, a short session grace.
pub fn agent_profile_text(base_url: &str, ca_file: &Path, state: &Path) -> String {
    format!(
        "oic_URL={}\nagent_GROUP_IDENTIFIER={}\noic_USER={}\noic_PASSWORD={}\noic_CA_FILE={}\nagent_STATE_DIR={}\nagent_NAME={}\n\
         agent_ALLOWED_ENDPOINTS=127.0.0.1:*,localhost:*\nagent_SESSION_GRACE_SECONDS=2\nagent_DRAIN_TIMEOUT_SECONDS=10\n",
        base_url,
        cp::GROUP,
        cp::USER,
        cp::PASSWORD,
        ca_file.display(),
        state.display(),
        state
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("agent"),
    )
}

/// [`agent_profile_text`], validated as the agent validates its profile.
pub fn agent_config(base_url: &str, ca_file: &Path, state: &Path) -> AgentConfig {
    let profile = Profile::parse(
        Path::new("InstallerProfile.cfg"),
        agent_profile_text(base_url, ca_file, state),
    )
    .expect("profile");
    let secrets = SecretValues::from_profile(&profile);
    config::validate(&profile, &secrets, &|_| None).expect("valid profile")
}

/// The agents' states in a job view.
pub fn agents(view: &Value) -> Vec<Value> {
    view["agents"].as_array().cloned().unwrap_or_default()
}

/// An agent running in this process.
pub struct InProcessAgent {
    pub stop: CancellationToken,
    task: Option<JoinHandle<Result<(), AgentError>>>,
}

impl InProcessAgent {
    /// Run `config` in this process until stopped.
    pub fn spawn(config: AgentConfig) -> InProcessAgent {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            connectivity_agent::agent::runner::run_agent(config, s)
                .await
                .map(|_| ())
        });
        InProcessAgent {
            stop,
            task: Some(task),
        }
    }

    /// Graceful stop (drain, commit, goodbye); must finish in time and cleanly.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("agent stopped in time")
                .expect("agent task");
            assert!(r.is_ok(), "agent ended with {r:?}");
        }
    }
}

impl Drop for InProcessAgent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Every line of a JSONL sink (none if the file does not exist yet).
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{}: bad line {l:?}: {e}", path.display()))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// `n` records `{"n": i}` keyed `k<i>` (the key spreads them over partitions).
pub fn numbered(from: usize, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (from..from + n)
        .map(|i| {
            (
                format!("k{i}").into_bytes(),
                json!({"n": i}).to_string().into_bytes(),
            )
        })
        .collect()
}

/// Produce `records` over PLAINTEXT; returns (partition, offset) of each.
pub async fn produce(
    broker: &TestBroker,
    topic: &str,
    records: &[(Vec<u8>, Vec<u8>)],
) -> Vec<(i32, i64)> {
    let refs: Vec<(Option<&[u8]>, &[u8])> = records
        .iter()
        .map(|(k, v)| (Some(k.as_slice()), v.as_slice()))
        .collect();
    kafka::produce(broker, topic, &refs).await
}

/// Assert that `records` (a sink's lines) hold exactly the records at
/// `produced` positions, each once, with the produced values, and that each
/// partition's offsets appear in increasing order.
pub fn assert_exactly_once_in_order(records: &[Value], produced: &BTreeMap<(i32, i64), Value>) {
    let mut seen = BTreeSet::new();
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for r in records {
        let (p, o) = (
            r["partition"].as_i64().expect("partition"),
            r["offset"].as_i64().expect("offset"),
        );
        assert!(
            seen.insert((p as i32, o)),
            "record {p}:{o} reached the sink twice"
        );
        if let Some(prev) = last.insert(p, o) {
            assert!(o > prev, "partition {p}: offset {o} came after {prev}");
        }
        let expected = produced.get(&(p as i32, o)).unwrap_or_else(|| {
            panic!("record {p}:{o} was never produced (or not in this range): {r}")
        });
        assert_eq!(&r["value"], expected, "value of {p}:{o}");
    }
    let missing: Vec<_> = produced.keys().filter(|k| !seen.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "{} records missing from the sink, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// (partition, offset) → value, for [`assert_exactly_once_in_order`].
pub fn positions(records: &[(Vec<u8>, Vec<u8>)], at: &[(i32, i64)]) -> BTreeMap<(i32, i64), Value> {
    records
        .iter()
        .zip(at)
        .map(|((_, v), pos)| (*pos, serde_json::from_slice(v).expect("json value")))
        .collect()
}

/// Records per partition in `at`.
pub fn counts(at: &[(i32, i64)]) -> BTreeMap<i32, i64> {
    let mut c = BTreeMap::new();
    for (p, _) in at {
        *c.entry(*p).or_insert(0) += 1;
    }
    c
}

/// Whether every agent's partitions, together, show `committed` reaching
/// `ends` (partition → next offset).
pub fn committed_reached(view: &Value, ends: &BTreeMap<i32, i64>) -> bool {
    let mut best: BTreeMap<i32, i64> = BTreeMap::new();
    for a in agents(view) {
        for p in a["partitions"].as_array().cloned().unwrap_or_default() {
            let (part, committed) = (
                p["partition"].as_i64().unwrap_or(-1) as i32,
                p["committed"].as_i64().unwrap_or(-1),
            );
            let e = best.entry(part).or_insert(-1);
            *e = (*e).max(committed);
        }
    }
    ends.iter()
        .all(|(p, end)| best.get(p).is_some_and(|c| c >= end))
}

/// The offsets the consumer group `group` has committed for `topic`, read
/// from the broker (partition → next offset; partitions without a commit
/// are left out). Reading does not join the group.
pub async fn kafka_committed(
    broker: &TestBroker,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = broker
        .plaintext_config()
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = tokio::task::spawn_blocking(move || {
        consumer.committed_offsets(tpl, Duration::from_secs(10))
    })
    .await
    .expect("join")
    .expect("committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Start the `connectivity-agent` binary with `run --config <profile>`,
/// its output appended to `log`.
pub fn spawn_agent_binary(profile: &Path, log: &Path, rust_log: &str) -> Child {
    agent_command(profile, log, rust_log)
        .spawn()
        .expect("start the agent binary")
}

/// Write an agent profile readable by its owner only: the agent refuses a
/// profile others can read (it holds secrets).
pub fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `connectivity-agent run --config <profile>`, its output appended to `log`.
pub fn agent_command(profile: &Path, log: &Path, rust_log: &str) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_connectivity-agent"));
    cmd.arg("run")
        .arg("--config")
        .arg(profile)
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    cmd
}
