//! The ceiling: how fast the topic drains with no relay at all. A bare
//! rdkafka consumer in this process (librdkafka's defaults, and the agent's
//! own consumer settings), and `kcat -C` as an outside reference.

use crate::broker::{self, Broker};
use crate::meter::{Meter, Stamp};
use anyhow::{Context, bail};
use connectivity_protocol::job::{JobSpec, Partitions, Security, SecurityProtocol, StartPosition};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a drain may see nothing new before it is declared stuck.
const PATIENCE: Duration = Duration::from_secs(60);

/// Records drained, and the time from the first to the last.
#[derive(Debug, Clone, Copy)]
pub struct Drained {
    pub records: u64,
    pub bytes: u64,
    pub secs: f64,
    /// CPU seconds the consumer used (this process, or kcat).
    pub cpu_s: f64,
}

/// Which consumer settings a bare consumer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settings {
    /// librdkafka's defaults (plus group and `earliest`).
    Defaults,
    /// Exactly the agent's consumer config (`kafka::client::consumer_config`).
    Agent,
    /// The agent's config with `fetch.queue.backoff.ms` set to this: a
    /// diagnosis, to show what that one setting costs.
    AgentQueueBackoff(u32),
}

/// A job spec as the bench's jobs use it (also gives the agent's consumer config).
pub fn job_spec(id: &str, broker: &Broker, topic: &str, group: &str) -> JobSpec {
    JobSpec {
        id: id.into(),
        bootstrap_servers: broker.bootstrap.clone(),
        topic: topic.into(),
        partitions: Partitions::All,
        consumer_group: group.into(),
        start: StartPosition::Earliest,
        max_records: connectivity_protocol::job::defaults::max_records(),
        max_bytes: connectivity_protocol::job::defaults::max_bytes(),
        max_wait_ms: connectivity_protocol::job::defaults::max_wait_ms(),
        window: connectivity_protocol::job::defaults::window(),
        window_bytes: connectivity_protocol::job::defaults::window_bytes(),
        session_timeout_ms: connectivity_protocol::job::defaults::session_timeout_ms(),
        compression: Default::default(),
        security: Security {
            protocol: SecurityProtocol::Plaintext,
            ..Default::default()
        },
    }
}

pub fn consumer_config(
    broker: &Broker,
    topic: &str,
    group: &str,
    settings: Settings,
) -> anyhow::Result<ClientConfig> {
    Ok(match settings {
        Settings::Defaults => {
            let mut c = broker.config();
            c.set("group.id", group)
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false");
            c
        }
        Settings::Agent => connectivity_agent::kafka::client::consumer_config(&job_spec(
            "ceiling", broker, topic, group,
        ))?,
        Settings::AgentQueueBackoff(ms) => {
            let mut c = connectivity_agent::kafka::client::consumer_config(&job_spec(
                "ceiling", broker, topic, group,
            ))?;
            c.set("fetch.queue.backoff.ms", ms.to_string());
            c
        }
    })
}

/// Drain `expected` records of `topic` with a bare `BaseConsumer` poll loop
/// (the fastest way to use rdkafka). Blocking.
pub fn rdkafka(
    broker: &Broker,
    topic: &str,
    group: &str,
    expected: u64,
    settings: Settings,
) -> anyhow::Result<Drained> {
    let consumer: BaseConsumer = consumer_config(broker, topic, group, settings)?.create()?;
    consumer.subscribe(&[topic])?;
    let cpu0 = process_cpu_s();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut first = None;
    let mut last_progress = Instant::now();
    while records < expected {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                records += 1;
                // Touch the bytes, as any real consumer would.
                let p = m.payload().unwrap_or_default();
                std::hint::black_box(p.last());
                bytes += p.len() as u64;
                last_progress = Instant::now();
            }
            Some(Err(e)) => bail!("bare consumer: {e}"),
            None if last_progress.elapsed() > PATIENCE => {
                bail!("bare consumer stuck at {records} of {expected} records")
            }
            None => {}
        }
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    // librdkafka's own threads count too: take the whole process.
    let cpu_s = process_cpu_s() - cpu0;
    drop(consumer);
    Ok(Drained {
        records,
        bytes,
        secs,
        cpu_s,
    })
}

/// CPU seconds of this whole process (the bare consumer runs alone in it
/// while it is measured, apart from an idle control plane).
pub fn process_cpu_s() -> f64 {
    crate::procstat::sample("self").map_or(0.0, |s| s.cpu_s)
}

/// `kcat -C -o beginning -e`: every partition from the start to the end,
/// payloads to /dev/null. The time includes kcat's start-up (about 0.1 s).
pub fn kcat(broker: &Broker, topic: &str, expected: u64) -> anyhow::Result<Drained> {
    let cpu0 = children_cpu_s();
    let start = Instant::now();
    let out = Command::new("kcat")
        .args([
            "-C",
            "-b",
            &broker.bootstrap,
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-c",
            &expected.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running kcat (apt-get install kcat)")?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "kcat failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // kcat's CPU: the only child reaped meanwhile.
    let cpu_s = children_cpu_s() - cpu0;
    Ok(Drained {
        records: expected,
        bytes: 0,
        secs,
        cpu_s,
    })
}

/// CPU seconds of the children this process has waited for (cutime + cstime).
fn children_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<f64> = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0.0))
                .collect();
            // cutime and cstime are fields 16 and 17; `rest` starts at field 3.
            Some((f.get(13)? + f.get(14)?) / crate::procstat::clock_ticks())
        })
        .unwrap_or(0.0)
}

/// A bare consumer that feeds `meter` until `stop`: the latency floor that
/// Kafka and librdkafka alone give. Blocking; run it on its own thread.
pub fn consume_into(
    broker: &Broker,
    topic: &str,
    group: &str,
    settings: Settings,
    meter: Arc<Meter>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = consumer_config(broker, topic, group, settings)?.create()?;
    consumer.subscribe(&[topic])?;
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                let payload = m.payload().unwrap_or_default();
                meter.add(1, payload.len() as u64, stamp_of(&m).as_slice());
            }
            Some(Err(e)) => bail!("bare consumer: {e}"),
            None => {}
        }
    }
    Ok(())
}

/// The produce time and sequence number a record carries, and when the
/// broker logged it.
fn stamp_of(m: &impl Message) -> Option<Stamp> {
    let (produced_us, seq) = broker::parse(m.payload()?)?;
    Some(Stamp {
        produced_us,
        seq,
        logged_ms: m.timestamp().to_millis(),
    })
}
