//! One scenario's system: a topic, a control-plane process with one job,
//! agent processes, the sink, an optional fault proxy between agents and
//! control plane, the producer of numbered records and the sampler.

use super::checker::{self, Pids, Produced, Samples, Sink, SinkReader};
use super::procs::{AgentProcess, OwnBroker};
use super::toxiproxy::Toxiproxy;
use super::webhook::Receiver;
use crate::common::control_plane::{self as cp, Options};
use crate::common::kafka;
use crate::common::processes::{ControlPlaneProcess, Rng};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const PARTITIONS: i32 = 3;
pub const JOB: &str = "chaos";

/// What a scenario needs besides the defaults (one agent, JSONL sink,
/// shared broker, agents straight to the control plane).
#[derive(Debug, Clone, Copy, Default)]
pub struct Setup {
    pub agents: usize,
    pub cp_proxy: bool,
    pub webhook: bool,
    /// The JSONL sink on a tmpfs of this many MiB mounted for the scenario.
    pub tmpfs_mib: Option<u64>,
    pub own_broker: bool,
    /// Webhook request timeout (ms).
    pub webhook_timeout_ms: u64,
}

/// What lives for the whole run: the fault proxy server and, once a broker
/// scenario asks for it, the suite's own broker behind its proxy.
pub struct Suite {
    pub seed: u64,
    pub toxiproxy: Toxiproxy,
    pub own_broker: Option<OwnBroker>,
    pub logs: PathBuf,
    seq: u32,
}

impl Suite {
    pub async fn start(seed: u64, logs: PathBuf) -> Suite {
        std::fs::create_dir_all(&logs).expect("log dir");
        Suite {
            seed,
            toxiproxy: Toxiproxy::start(seed, &logs.join("toxiproxy.log")).await,
            own_broker: None,
            logs,
            seq: 0,
        }
    }

    /// The suite's broker, started on first use, its PLAINTEXT listener
    /// behind the `kafka` proxy.
    pub async fn own_broker(&mut self) -> &mut OwnBroker {
        if self.own_broker.is_none() {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/kafka-chaos");
            eprintln!(
                "chaos: starting the suite's own broker in {}",
                dir.display()
            );
            let mut b = tokio::task::block_in_place(|| OwnBroker::start(&dir));
            let listen = self.toxiproxy.proxy("kafka", &b.env.plaintext).await;
            b.advertise_plaintext(&listen).await;
            b.env.plaintext = listen;
            self.own_broker = Some(b);
        }
        self.own_broker.as_mut().expect("own broker")
    }

    pub async fn shutdown(&mut self) {
        if let Some(b) = self.own_broker.as_mut() {
            b.shutdown().await;
        }
        self.own_broker = None;
    }
}

pub struct World {
    pub rng: Rng,
    pub dir: tempfile::TempDir,
    /// The suite's own clients (producer, offset sampler).
    pub client: ClientConfig,
    pub topic: String,
    pub group: String,
    pub cp: ControlPlaneProcess,
    /// The toxiproxy proxy between agents and the control plane.
    pub cp_proxy: Option<String>,
    pub agents: Vec<AgentProcess>,
    pub sink: Sink,
    pub sink_mount: Option<PathBuf>,
    pub pids: Pids,
    pub next_id: u64,
}

impl World {
    pub async fn build(suite: &mut Suite, name: &str, setup: Setup) -> World {
        suite.seq += 1;
        let rng = Rng(suite.seed ^ (u64::from(suite.seq) << 32) ^ hash(name));
        let (bootstrap, client) = if setup.own_broker {
            let b = suite.own_broker().await;
            (b.env.plaintext.clone(), b.client_config())
        } else {
            let b = kafka::broker();
            (b.plaintext.clone(), b.plaintext_config())
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("chaos-{name}-"))
            .tempdir_in(&suite.logs)
            .expect("scenario dir");
        let topic = kafka::unique_topic(&format!("chaos-{name}"));
        create_topic(&client, &topic).await;
        let group = kafka::unique_topic(&format!("chaos-{name}-group"));
        let pids: Pids = Default::default();
        let cp = ControlPlaneProcess::start_with(dir.path(), &Options::default()).await;
        let mut sink_mount = None;
        let sink = if setup.webhook {
            Sink::Webhook(Receiver::start().await)
        } else if let Some(mib) = setup.tmpfs_mib {
            let mount = dir.path().join("sinkfs");
            std::fs::create_dir_all(&mount).expect("mount point");
            run(
                "mount",
                &[
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={mib}m"),
                    "tmpfs",
                    &mount.display().to_string(),
                ],
            );
            sink_mount = Some(mount.clone());
            Sink::Jsonl(mount.join("chaos.jsonl"))
        } else {
            Sink::Jsonl(dir.path().join("chaos.jsonl"))
        };
        let sink_def = match &sink {
            Sink::Jsonl(path) => json!({"kind": "jsonl", "path": path}),
            Sink::Webhook(rx) => json!({
                "kind": "webhook", "url": rx.url(),
                "timeout_ms": if setup.webhook_timeout_ms > 0 { setup.webhook_timeout_ms } else { 10_000 }
            }),
        };
        let job = json!({
            "spec": {
                "id": JOB, "bootstrap_servers": bootstrap, "topic": topic,
                "consumer_group": group,
                "max_records": 50, "max_wait_ms": 50, "session_timeout_ms": 6000,
                "security": {"protocol": "PLAINTEXT"}
            },
            "group": cp::GROUP,
            "sink": sink_def,
        });
        cp.console(reqwest::Method::POST, "/api/v1/jobs", Some(&job))
            .await;
        let mut cp_proxy = None;
        let mut base_url = cp.base_url();
        if setup.cp_proxy {
            let proxy = format!("cp-{}", suite.seq);
            let listen = suite
                .toxiproxy
                .proxy(&proxy, &format!("127.0.0.1:{}", cp.port))
                .await;
            base_url = format!("https://{listen}");
            cp_proxy = Some(proxy);
        }
        let agents = (1..=setup.agents.max(1))
            .map(|i| {
                AgentProcess::new(
                    dir.path(),
                    &format!("agent-{i}"),
                    &base_url,
                    &cp.pki.ca_file,
                    pids.clone(),
                )
            })
            .collect();
        let world = World {
            rng,
            dir,
            client,
            topic,
            group,
            cp,
            cp_proxy,
            agents,
            sink,
            sink_mount,
            pids,
            next_id: 0,
        };
        world.note_cp_pid();
        world
    }

    pub fn note_cp_pid(&self) {
        let mut pids = self.pids.lock().expect("pids");
        match self.cp.pid() {
            Some(pid) => pids.insert("control-plane".into(), pid),
            None => pids.remove("control-plane"),
        };
    }

    pub async fn restart_cp(&mut self) {
        self.cp.kill();
        self.cp.spawn().await;
        self.note_cp_pid();
    }

    pub fn start_agents(&mut self) {
        for a in &mut self.agents {
            a.spawn();
        }
    }

    /// Produce numbered records at `rate` per second for `run`; the ids
    /// continue from the last call.
    pub fn produce(&mut self, rate: u64, run: Duration) -> JoinHandle<Produced> {
        let n = rate * run.as_millis() as u64 / 1000;
        let first = self.next_id;
        self.next_id += n;
        let (client, topic) = (self.client.clone(), self.topic.clone());
        tokio::spawn(async move { produce(client, topic, first, n, rate).await })
    }

    /// Start sampling committed offsets, the sink, memory and the control
    /// plane's duplicate counter every second until `stop`.
    pub fn sample(&self, stop: CancellationToken) -> JoinHandle<Samples> {
        let mut client = self.client.clone();
        client.set("group.id", &self.group);
        let topic = self.topic.clone();
        let mut reader = SinkReader::new(self.sink.clone());
        let pids = self.pids.clone();
        let http = self.cp.http();
        let job_url = format!("{}/api/v1/jobs/{JOB}", self.cp.base_url());
        tokio::spawn(async move {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let consumer: Arc<BaseConsumer> = Arc::new(client.create().expect("sampler consumer"));
            let mut s = Samples::default();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                let stopping = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stop.cancelled() => true,
                };
                let i = s.sample_count;
                s.sample_count += 1;
                // Committed first, then the sink: the sink only grows, so a
                // commit is compared with at least what the sink held then.
                let c = consumer.clone();
                let t = topic.clone();
                let committed = tokio::task::spawn_blocking(move || {
                    let mut tpl = rdkafka::TopicPartitionList::new();
                    for p in 0..PARTITIONS {
                        tpl.add_partition(&t, p);
                    }
                    c.committed_offsets(tpl, Duration::from_secs(3))
                })
                .await
                .expect("join");
                for r in reader.read_new() {
                    s.first_seen.entry((r.partition, r.offset)).or_insert(i);
                }
                if let Ok(tpl) = committed {
                    let m: BTreeMap<i32, i64> = tpl
                        .elements()
                        .iter()
                        .filter_map(|e| match e.offset() {
                            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
                            _ => None,
                        })
                        .collect();
                    s.committed.push((i, m));
                }
                let now: Vec<(String, u32)> = pids
                    .lock()
                    .expect("pids")
                    .iter()
                    .map(|(n, p)| (n.clone(), *p))
                    .collect();
                for (name, pid) in now {
                    if let Some(kib) = checker::rss_kib(pid) {
                        let e = s.max_rss_kib.entry(checker::role(&name)).or_insert(0);
                        *e = (*e).max(kib);
                    }
                }
                let view = http
                    .get(&job_url)
                    .bearer_auth(cp::CONSOLE_TOKEN)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                if let Ok(resp) = view
                    && let Ok(v) = resp.json::<Value>().await
                    && let Some(n) = v["delivery"]["duplicates_dropped"].as_u64()
                {
                    s.note_filtered(n);
                }
                if stopping {
                    return s;
                }
            }
        })
    }

    /// Wait until the sink holds every record of `produced`; returns how
    /// long that took, or `None` after `limit`.
    pub async fn wait_delivered(&self, produced: &Produced, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut reader = SinkReader::new(self.sink.clone());
        let mut missing: std::collections::BTreeSet<(i32, i64)> =
            produced.at.keys().copied().collect();
        loop {
            for r in reader.read_new() {
                missing.remove(&(r.partition, r.offset));
            }
            if missing.is_empty() {
                return Some(start.elapsed());
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until the group has committed every record of `produced`
    /// (read from the broker); false after `limit`.
    pub async fn wait_committed(&self, produced: &Produced, limit: Duration) -> bool {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let ends = produced.ends();
        let mut client = self.client.clone();
        client.set("group.id", &self.group);
        let consumer: Arc<BaseConsumer> = Arc::new(client.create().expect("consumer"));
        let deadline = Instant::now() + limit;
        loop {
            let c = consumer.clone();
            let t = self.topic.clone();
            let committed = tokio::task::spawn_blocking(move || {
                let mut tpl = rdkafka::TopicPartitionList::new();
                for p in 0..PARTITIONS {
                    tpl.add_partition(&t, p);
                }
                c.committed_offsets(tpl, Duration::from_secs(3))
            })
            .await
            .expect("join");
            if let Ok(tpl) = committed {
                let done = ends.iter().all(|(p, end)| {
                    tpl.find_partition(&self.topic, *p).is_some_and(
                        |e| matches!(e.offset(), rdkafka::Offset::Offset(o) if o >= *end),
                    )
                });
                if done {
                    return true;
                }
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub fn cp_log_has(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.cp.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.kill();
        }
        self.cp.kill();
        if let Some(m) = &self.sink_mount {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(m)
                .status();
        }
    }
}

/// The offsets `group` has committed for `topic`, read from the broker
/// (partitions without a commit are left out; empty if the broker cannot
/// be asked).
pub async fn committed(client: &ClientConfig, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let mut client = client.clone();
    client.set("group.id", group);
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client.create().expect("consumer");
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&topic, p);
        }
        consumer
            .committed_offsets(tpl, Duration::from_secs(5))
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
    .await
    .expect("join")
}

/// Run a command that must succeed.
pub fn run(cmd: &str, args: &[&str]) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

pub async fn create_topic(client: &ClientConfig, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        client.create().expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let r = admin
        .create_topics(
            &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .expect("create topic");
    for t in r {
        t.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    // Wait until every partition has a leader (see kafka::create_topic).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(5));
        let ready = md.as_ref().is_ok_and(|md| {
            md.topics().iter().any(|t| {
                t.name() == topic
                    && t.error().is_none()
                    && t.partitions().len() == PARTITIONS as usize
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            })
        });
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "topic {topic} has no leaders");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Produce ids `first..first+n` at `rate` per second, each to partition
/// `id % PARTITIONS`, in order (one request in flight).
pub async fn produce(
    client: ClientConfig,
    topic: String,
    first: u64,
    n: u64,
    rate: u64,
) -> Produced {
    let producer: FutureProducer = client
        .clone()
        // Not idempotent: librdkafka's idempotent producer, after a broker
        // restart with requests in flight, waited for them to time out and
        // failed everything queued behind them (broker-restart in the soak).
        // One request in flight keeps the order; a retry after a lost
        // answer can write a record twice, at two offsets (see `judge`).
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .set("acks", "all")
        .set("retries", "1000000")
        .set("retry.backoff.ms", "200")
        .set("message.timeout.ms", "180000")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let tick = Duration::from_millis(20);
    let per_tick = (rate * tick.as_millis() as u64 / 1000).max(1);
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reports = Vec::with_capacity(n as usize);
    let mut id = first;
    while id < first + n {
        ticks.tick().await;
        for _ in 0..per_tick.min(first + n - id) {
            let partition = (id % PARTITIONS as u64) as i32;
            let payload = checker::record_value(id, PARTITIONS).to_string();
            let key = format!("k{id}");
            let record = FutureRecord::to(&topic)
                .partition(partition)
                .key(&key)
                .payload(&payload);
            match producer.send_result(record) {
                Ok(report) => reports.push((id, report)),
                Err((e, _)) => {
                    eprintln!("chaos: cannot queue record {id}: {e}");
                }
            }
            id += 1;
        }
    }
    let mut out = Produced::default();
    for (id, report) in reports {
        match report.await {
            Ok(Ok(d)) => {
                out.at.insert((d.partition, d.offset), id);
                out.ids.insert(id);
            }
            Ok(Err((e, _))) => {
                out.failed += 1;
                out.first_error
                    .get_or_insert_with(|| format!("record {id}: {e}"));
            }
            Err(_) => {
                out.failed += 1;
                out.first_error
                    .get_or_insert_with(|| format!("record {id}: report cancelled"));
            }
        }
    }
    out
}
