//! A real Kafka broker for integration tests.
//!
//! The broker is started by `scripts/kafka-broker.sh` (single-node KRaft from
//! Maven Central jars, loopback only) and described by the `broker.env` file
//! it writes. Every test binary calls [`broker()`]; the first call in a
//! process runs `scripts/kafka-broker.sh start`, which is idempotent and
//! `flock`-guarded, so parallel tests and parallel test binaries share one
//! broker and the first one pays the start-up (about 10 s warm, plus a Maven
//! fetch on a machine that has never run it).
//!
//! Set `KAFKA_TEST_ENV=/path/to/broker.env` to use a broker you manage
//! yourself; then nothing is started.
//!
//! Helpers here connect over PLAINTEXT (setup, not under test); tests build
//! their own configs for the listener they exercise.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

/// Connection details of the shared test broker (see `scripts/kafka-broker.sh`).
#[derive(Debug, Clone)]
pub struct TestBroker {
    /// `127.0.0.1:port`, no auth.
    pub plaintext: String,
    /// `localhost:port`, TLS + SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).
    pub sasl_ssl: String,
    /// `localhost:port`, TLS; a client certificate is requested, not required.
    pub ssl: String,
    /// `127.0.0.1:port`, SASL without TLS.
    pub sasl_plaintext: String,
    /// The KRaft controller listener (not for clients).
    pub controller: String,
    /// CA that signed the broker (and client) certificate, PEM.
    pub ca_pem: PathBuf,
    /// An unrelated CA, for "untrusted certificate" tests.
    pub other_ca_pem: PathBuf,
    /// JKS truststore with `ca_pem` under alias `truststore_alias`
    /// (JKS lower-cases it: `ossstream`), password `truststore_password`.
    pub truststore_jks: PathBuf,
    /// Same certificate in a JKS whose store password is empty.
    pub truststore_jks_nopass: Option<PathBuf>,
    /// Same certificate as a PKCS#12 truststore made by keytool,
    /// password `truststore_password`.
    pub truststore_p12: PathBuf,
    pub truststore_password: String,
    pub truststore_alias: String,
    /// Client certificate/key (PEM) signed by `ca_pem`, for mTLS tests.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Known to PLAIN and to both SCRAM mechanisms.
    pub sasl_user: String,
    pub sasl_password: String,
    /// A second user, also known to PLAIN and both SCRAM mechanisms.
    pub admin_user: String,
    pub admin_password: String,
    /// A topic only `admin_user` may use (the broker's one ACL): any other
    /// user gets TOPIC_AUTHORIZATION_FAILED.
    pub acl_denied_topic: String,
    pub log_file: Option<PathBuf>,
    pub env_file: PathBuf,
    /// Every `KEY=VALUE` line of `broker.env`, for keys not mapped above.
    pub vars: HashMap<String, String>,
}

impl TestBroker {
    /// Client config for the PLAINTEXT listener.
    pub fn plaintext_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.plaintext);
        c
    }

    /// Client config for the SASL_SSL listener trusting `ca_pem`.
    /// `mechanism` is `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub fn sasl_ssl_config(&self, mechanism: &str, user: &str, password: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.sasl_ssl)
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", mechanism)
            .set("sasl.username", user)
            .set("sasl.password", password)
            .set("ssl.ca.location", path_str(&self.ca_pem));
        c
    }
}

static BROKER: OnceLock<TestBroker> = OnceLock::new();

/// The shared test broker, started on first use (once per process; the
/// script itself serialises concurrent starts from other test binaries).
/// Panics with the script's output if the broker cannot be started.
pub fn broker() -> TestBroker {
    BROKER
        .get_or_init(|| {
            let env_file = match std::env::var_os("KAFKA_TEST_ENV") {
                Some(path) => {
                    let path = PathBuf::from(path);
                    assert!(
                        path.is_file(),
                        "KAFKA_TEST_ENV={} does not exist; start that broker first \
                         (scripts/kafka-broker.sh start DIR) or unset KAFKA_TEST_ENV",
                        path.display()
                    );
                    path
                }
                None => start_broker(),
            };
            load_env(&env_file)
        })
        .clone()
}

/// Runs `scripts/kafka-broker.sh start` even if `broker.env` exists: the env
/// file can outlive its broker (reboot, `kill`), and the script's check for a
/// healthy running broker takes a few milliseconds.
fn start_broker() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/kafka-broker.sh");
    let default_env = root.join("target/kafka-test/broker.env");
    if !default_env.is_file() {
        eprintln!(
            "starting the test Kafka broker via {} (the first run on a machine also fetches Kafka from Maven Central)",
            script.display()
        );
    }
    // stdout is only the env path; stderr is progress, shown on failure.
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} start failed ({}):\n{stderr}",
        script.display(),
        out.status
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "{} start printed no env file path; stderr:\n{stderr}",
        script.display()
    );
    PathBuf::from(path)
}

pub fn load_env(path: &Path) -> TestBroker {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let vars: HashMap<String, String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let get = |key: &str| -> String {
        vars.get(key)
            .cloned()
            .unwrap_or_else(|| panic!("{} has no {key}", path.display()))
    };
    let opt = |key: &str| vars.get(key).cloned();
    TestBroker {
        plaintext: get("KAFKA_PLAINTEXT"),
        sasl_ssl: get("KAFKA_SASL_SSL"),
        ssl: get("KAFKA_SSL"),
        sasl_plaintext: get("KAFKA_SASL_PLAINTEXT"),
        controller: opt("KAFKA_CONTROLLER").unwrap_or_default(),
        ca_pem: get("KAFKA_CA_PEM").into(),
        other_ca_pem: get("KAFKA_OTHER_CA_PEM").into(),
        truststore_jks: get("KAFKA_TRUSTSTORE_JKS").into(),
        truststore_jks_nopass: opt("KAFKA_TRUSTSTORE_JKS_NOPASS").map(PathBuf::from),
        truststore_p12: get("KAFKA_TRUSTSTORE_P12").into(),
        truststore_password: get("KAFKA_TRUSTSTORE_PASSWORD"),
        truststore_alias: opt("KAFKA_TRUSTSTORE_ALIAS").unwrap_or_else(|| "OSSStream".into()),
        client_cert: get("KAFKA_CLIENT_CERT").into(),
        client_key: get("KAFKA_CLIENT_KEY").into(),
        sasl_user: get("KAFKA_SASL_USER"),
        sasl_password: get("KAFKA_SASL_PASSWORD"),
        admin_user: opt("KAFKA_SASL_ADMIN_USER").unwrap_or_else(|| "admin".into()),
        admin_password: opt("KAFKA_SASL_ADMIN_PASSWORD").unwrap_or_else(|| "admin-secret".into()),
        acl_denied_topic: get("KAFKA_ACL_DENIED_TOPIC"),
        log_file: opt("KAFKA_BROKER_LOG").map(PathBuf::from),
        env_file: path.to_path_buf(),
        vars,
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A topic name no other test (or earlier run against the same broker) uses.
/// Characters outside Kafka's `[a-zA-Z0-9._-]` in `prefix` become `-`.
pub fn unique_topic(prefix: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates `name` (replication factor 1) over PLAINTEXT and waits until the
/// broker's metadata shows every partition with a leader. Panics on failure,
/// including "already exists".
pub async fn create_topic(b: &TestBroker, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = b
        .plaintext_config()
        .create()
        .expect("create Kafka admin client");
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .unwrap_or_else(|e| panic!("CreateTopics {name}: {e}"));
    for r in results {
        if let Err((topic, code)) = r {
            panic!("CreateTopics {topic}: {code:?} ({code})");
        }
    }
    // CreateTopics answers once the controller has the topic; the broker's
    // metadata cache follows a moment later, and a client that asks in
    // between is told the topic does not exist. Wait until every partition
    // has a leader.
    let started = std::time::Instant::now();
    loop {
        let md = admin
            .inner()
            .fetch_metadata(Some(name), Duration::from_secs(5));
        let ready = md.as_ref().is_ok_and(|md| {
            md.topics().iter().any(|t| {
                t.name() == name
                    && t.error().is_none()
                    && t.partitions().len() == partitions as usize
                    && t.partitions()
                        .iter()
                        .all(|p| p.error().is_none() && p.leader() >= 0)
            })
        });
        if ready {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "topic {name} created but its metadata did not show {partitions} partitions with leaders within 30 s: {:?}",
            md.map(|md| md.topics().len())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes `name` over PLAINTEXT; a missing topic is not an error.
pub async fn delete_topic(b: &TestBroker, name: &str) {
    let admin: AdminClient<DefaultClientContext> = b
        .plaintext_config()
        .create()
        .expect("create Kafka admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .delete_topics(&[name], &opts)
        .await
        .unwrap_or_else(|e| panic!("DeleteTopics {name}: {e}"));
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => panic!("DeleteTopics {topic}: {code:?} ({code})"),
        }
    }
}

/// Produces `records` (key, payload) in order over PLAINTEXT and waits for
/// every delivery report. Returns (partition, offset) of each record.
pub async fn produce(
    b: &TestBroker,
    topic: &str,
    records: &[(Option<&[u8]>, &[u8])],
) -> Vec<(i32, i64)> {
    let producer: FutureProducer = b
        .plaintext_config()
        .set("message.timeout.ms", "30000")
        // Records are sent one at a time (awaiting each report), so batching
        // would only add latency.
        .set("linger.ms", "0")
        .create()
        .expect("create Kafka producer");
    let mut delivered = Vec::with_capacity(records.len());
    for (i, (key, payload)) in records.iter().enumerate() {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        match producer.send(record, Duration::from_secs(30)).await {
            Ok(d) => delivered.push((d.partition, d.offset)),
            Err((e, _)) => panic!("producing record {i} to {topic}: {e}"),
        }
    }
    delivered
}

/// One consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
}

/// Subscribes with `config` (any listener/auth) under a fresh group id,
/// reading from the earliest offset, and returns the first `n` records, or
/// the first error the consumer reports, or `OperationTimedOut` after
/// `timeout`. Sets only consumer basics that `config` does not already have.
pub async fn consume(
    config: &ClientConfig,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<Consumed>, KafkaError> {
    let mut config = config.clone();
    for (k, v) in [
        ("group.id", unique_topic("test-group")),
        ("auto.offset.reset", "earliest".into()),
        ("enable.auto.commit", "false".into()),
        ("session.timeout.ms", "6000".into()),
    ] {
        if config.get(k).is_none() {
            config.set(k, v);
        }
    }
    let consumer: StreamConsumer = config.create()?;
    consumer.subscribe(&[topic])?;
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_elapsed) => {
                return Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::OperationTimedOut,
                ));
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(m)) => out.push(Consumed {
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                partition: m.partition(),
                offset: m.offset(),
            }),
        }
    }
    Ok(out)
}
