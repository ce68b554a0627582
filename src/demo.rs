//! `connectivity-agent demo`: the whole system in one process, with nothing
//! installed. An in-process Kafka cluster (librdkafka's mock cluster), the
//! reference control plane on a loopback port with a certificate made on the
//! spot, an agent joined to it, and a producer writing rows shaped like the
//! seed article's USERS table as Kafka Connect JSON. Every row the sink
//! receives is printed.
//!
//! The mock cluster is only for this demo and fast tests; the real tests run
//! against a real Kafka broker.

use crate::agent::runner::run_agent;
use crate::config::{self, Profile, SecretValues};
use anyhow::Context;
use connectivity_control_plane::{ControlPlane, ControlPlaneConfig, auth::hash_password, pki};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Options of the demo.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Stop after this many rows reached the sink (default: run until Ctrl-C).
    #[arg(long)]
    pub rows: Option<u64>,
    /// Milliseconds between two produced rows.
    #[arg(long, default_value_t = 500)]
    pub interval_ms: u64,
}

const TOPIC: &str = "ATP.ADMIN.USERS";
const GROUP: &str = "DEMO_GROUP";

/// Run the demo until `shutdown` or `--rows`: a mock cluster, the control
/// plane, an agent, then rows produced and shown until the end.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    let mock = MockCluster::new(1).context("cannot start the in-process Kafka mock cluster")?;
    mock.create_topic(TOPIC, 3, 1)
        .context("cannot create the demo topic")?;
    let bootstrap = mock.bootstrap_servers();

    let (cert, key, ca) = make_certificates(dir.path())?;
    let agent_password = random_token();
    let console_token = random_token();
    let sink = dir.path().join("users.jsonl");
    let cp_toml = control_plane_toml(
        dir.path(),
        &bootstrap,
        (&cert, &key),
        &agent_password,
        &console_token,
        &sink,
    )?;
    let cp_stop = CancellationToken::new();
    let cp = start_control_plane(dir.path(), &cp_toml, &cp_stop).await?;
    let port = cp.local_addr().port();

    let agent_config = agent_config(dir.path(), port, &agent_password, &ca, &bootstrap)?;
    let agent_stop = CancellationToken::new();
    let agent = tokio::spawn(run_agent(agent_config, agent_stop.clone()));
    print_banner(&bootstrap, port, &console_token, &sink, &ca);

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let mut rows = Rows::default();
    let result = produce_and_show(&args, &producer, &sink, &agent, &shutdown, &mut rows).await;
    agent_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), agent).await;
    cp_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), cp.stopped()).await;
    println!(
        "demo stopped: {} rows produced, {} delivered",
        rows.produced, rows.shown
    );
    result
}

/// The demo control plane's configuration: one group, one agent user, a
/// console token and the demo job writing to `sink`.
fn control_plane_toml(
    dir: &Path,
    bootstrap: &str,
    (cert, key): (&Path, &Path),
    agent_password: &str,
    console_token: &str,
    sink: &Path,
) -> anyhow::Result<String> {
    Ok(format!(
        r#"listen = "127.0.0.1:0"
state_dir = "{state}"
heartbeat_interval_ms = 2000

[tls]
cert_file = "{cert}"
key_file = "{key}"

[[groups]]
id = "{GROUP}"

[[users]]
name = "demo-agent"
password_hash = "{pw_hash}"
groups = ["{GROUP}"]

[[console_tokens]]
name = "demo"
token_hash = "{token_hash}"

[[jobs]]
id = "users-to-integration"
group = "{GROUP}"
bootstrap_servers = "{bootstrap}"
topic = "{TOPIC}"
consumer_group = "oic-users-trigger"
max_wait_ms = 50
value_format = "connect_payload"
sink = {{ kind = "jsonl", path = "{sink}" }}

[jobs.security]
protocol = "PLAINTEXT"
"#,
        state = dir.join("control-plane").display(),
        cert = cert.display(),
        key = key.display(),
        pw_hash = hash_password(agent_password.as_bytes()).map_err(anyhow::Error::msg)?,
        token_hash = hash_password(console_token.as_bytes()).map_err(anyhow::Error::msg)?,
        sink = sink.display(),
    ))
}

/// Write the control plane's config and start it on a loopback port.
async fn start_control_plane(
    dir: &Path,
    cp_toml: &str,
    stop: &CancellationToken,
) -> anyhow::Result<ControlPlane> {
    let cp_path = dir.join("control-plane.toml");
    // It holds the demo job's definition: private, like any such file.
    write_private(&cp_path, cp_toml.as_bytes())?;
    let cp_config = ControlPlaneConfig::load(&cp_path)
        .map_err(|e| anyhow::anyhow!("demo control plane config: {e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    ControlPlane::start(cp_config, listener, stop.clone()).await
}

/// The demo agent's configuration, from a profile like an installer's.
fn agent_config(
    dir: &Path,
    port: u16,
    agent_password: &str,
    ca: &Path,
    bootstrap: &str,
) -> anyhow::Result<config::AgentConfig> {
    let profile_text = format!(
        "oic_URL=https://localhost:{port}\nagent_GROUP_IDENTIFIER={GROUP}\noic_USER=demo-agent\noic_PASSWORD={agent_password}\n\
         oic_CA_FILE={}\nagent_STATE_DIR={}\nagent_NAME=demo-agent\nagent_ALLOWED_ENDPOINTS={bootstrap}\nagent_LOG_LEVEL=warn\n",
        ca.display(),
        dir.join("agent").display()
    );
    let profile = Profile::parse(&dir.join("InstallerProfile.cfg"), profile_text)?;
    Ok(config::validate(
        &profile,
        &SecretValues::from_profile(&profile),
        &|_| None,
    )?)
}

fn print_banner(bootstrap: &str, port: u16, console_token: &str, sink: &Path, ca: &Path) {
    println!("connectivity-agent demo");
    println!("  Kafka (in-process mock)   {bootstrap}, topic {TOPIC} with 3 partitions");
    println!(
        "  control plane             https://localhost:{port} (console token {console_token})"
    );
    println!("  web console               https://localhost:{port}/console/#token={console_token}");
    println!(
        "                            (the demo's own CA signed its certificate: your browser warns; {} is the CA)",
        ca.display()
    );
    println!("  agent                     joined group {GROUP}, job users-to-integration");
    println!("  sink                      {}", sink.display());
    println!(
        "  try: curl -s --cacert {} -H 'Authorization: Bearer {console_token}' https://localhost:{port}/api/v1/jobs/users-to-integration",
        ca.display()
    );
    println!("rows as the sink receives them (Kafka Connect payload only):");
}

/// Rows produced to the mock cluster and rows shown from the sink.
#[derive(Default)]
struct Rows {
    produced: u64,
    shown: u64,
}

/// Produce a row every interval and print what reaches the sink, until
/// shutdown, `--rows` rows shown, or the agent stopping.
async fn produce_and_show<T>(
    args: &DemoArgs,
    producer: &FutureProducer,
    sink: &Path,
    agent: &tokio::task::JoinHandle<T>,
    shutdown: &CancellationToken,
    rows: &mut Rows,
) -> anyhow::Result<()> {
    let mut read_pos = 0usize;
    let mut produce_tick = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
    let mut poll_tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = produce_tick.tick(), if args.rows.is_none_or(|n| rows.produced < n) => {
                rows.produced += 1;
                let value = users_row(rows.produced);
                let key = format!("{{\"ID\":{}}}", rows.produced);
                let record = FutureRecord::to(TOPIC).key(&key).payload(&value);
                if let Err((e, _)) = producer.send(record, Duration::from_secs(5)).await {
                    return Err(anyhow::anyhow!("producing to the mock cluster failed: {e}"));
                }
            }
            _ = poll_tick.tick() => {
                for line in read_new_lines(sink, &mut read_pos) {
                    rows.shown += 1;
                    println!("{}", render_line(&line));
                }
                if args.rows.is_some_and(|n| rows.shown >= n) {
                    return Ok(());
                }
                if agent.is_finished() {
                    return Err(anyhow::anyhow!("the demo agent stopped unexpectedly"));
                }
            }
        }
    }
}

/// A USERS row as Kafka Connect's JsonConverter writes it (schemas.enable=true).
fn users_row(id: u64) -> String {
    let names = [
        ("jdoe", "John", "Q", "Doe"),
        ("asmith", "Alice", "", "Smith"),
        ("bwong", "Bo", "", "Wong"),
        ("cgarcia", "Carmen", "M", "Garcia"),
    ];
    let (user, first, middle, last) = names[(id as usize - 1) % names.len()];
    let field = |name: &str, ty: &str, optional: bool| {
        format!(r#"{{"type":"{ty}","optional":{optional},"field":"{name}"}}"#)
    };
    let schema = format!(
        r#"{{"type":"struct","fields":[{},{},{},{},{},{},{}],"optional":false,"name":"USERS"}}"#,
        field("ID", "int64", false),
        field("USERNAME", "string", false),
        field("FIRST_NAME", "string", true),
        field("MIDDLE_NAME", "string", true),
        field("LAST_NAME", "string", true),
        field("AGE", "int32", true),
        r#"{"type":"int64","optional":true,"name":"org.apache.kafka.connect.data.Timestamp","version":1,"field":"CREATED_ON"}"#,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let middle = if middle.is_empty() {
        "null".to_owned()
    } else {
        format!("\"{middle}\"")
    };
    format!(
        r#"{{"schema":{schema},"payload":{{"ID":{id},"USERNAME":"{user}{id}","FIRST_NAME":"{first}","MIDDLE_NAME":{middle},"LAST_NAME":"{last}","AGE":{},"CREATED_ON":{now}}}}}"#,
        20 + id % 50
    )
}

fn render_line(line: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(v) => format!(
            "  partition {} offset {:>3}  {}",
            v["partition"], v["offset"], v["value"]
        ),
        Err(_) => format!("  {line}"),
    }
}

/// Complete lines appended to `path` since `pos`.
fn read_new_lines(path: &Path, pos: &mut usize) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return vec![];
    };
    let Some(end) = text.rfind('\n').map(|i| i + 1) else {
        return vec![];
    };
    if end <= *pos {
        return vec![];
    }
    let lines = text[*pos..end].lines().map(str::to_owned).collect();
    *pos = end;
    lines
}

fn random_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A CA and a server certificate for localhost, as PEM files in `dir`.
fn make_certificates(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let hosts = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    // A year, like `init`: shorter would trip the 30-day expiry warning.
    let pki = pki::generate(
        "connectivity-agent demo CA",
        &hosts,
        pki::DEFAULT_SERVER_DAYS,
    )?;
    let (cert_path, key_path, ca_path) = (
        dir.join("server.pem"),
        dir.join("server-key.pem"),
        dir.join("ca.pem"),
    );
    std::fs::write(&cert_path, pki.server_pem)?;
    write_private(&key_path, pki.server_key_pem.as_bytes())?;
    std::fs::write(&ca_path, pki.ca_pem)?;
    Ok((cert_path, key_path, ca_path))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(data)
}

/// A private temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "connectivity-agent-demo-{}-{}",
            std::process::id(),
            random_token()
        ));
        connectivity_common::fs::create_private_dir(&path)?;
        Ok(TempDir(path))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn users_row_is_a_kafka_connect_envelope() {
        let v: serde_json::Value = serde_json::from_str(&super::users_row(1)).unwrap();
        assert_eq!(v["payload"]["ID"], 1);
        assert_eq!(v["payload"]["USERNAME"], "jdoe1");
        assert_eq!(v["schema"]["fields"].as_array().unwrap().len(), 7);
    }
}
