//! Issue 21: a JSONL sink gets every record exactly once while the control
//! plane is killed with SIGKILL over and over. The `control-plane` binary
//! runs as a subprocess with a JSONL job against the real broker, a real
//! agent relays, a producer writes about 1,500 records/s for 60 s, and the
//! control plane is killed and started again 18 times at random (seeded)
//! moments. A kill between the sink's write and the watermark commit used to
//! deliver that batch twice; the sink now recovers its watermarks from the
//! file's tail at start (docs/DELIVERY.md, "When a duplicate can still reach
//! a sink").
//!
//! `JSONL_CRASH_SEED=<n>` replays another kill schedule.

mod common;

use common::control_plane as cp;
use common::e2e::{self, InProcessAgent, LogDump};
use common::kafka::{self, TestBroker};
use common::processes::{ControlPlaneProcess, Rng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

const RATE: u64 = 1_500;
const RUN: Duration = Duration::from_secs(60);
const KILLS: u32 = 18;
const PARTITIONS: i32 = 3;
const JOB: &str = "crash-sink";

/// One kill per equal slot of [`RUN`], at a random moment of its slot, so
/// the kills spread over the run but their phase against the batches is
/// random. Times are from the start of the run.
fn kill_schedule(seed: u64) -> Vec<Duration> {
    let mut rng = Rng(seed);
    let slot = RUN / KILLS;
    (0..KILLS)
        .map(|i| {
            slot * i + Duration::from_millis(300) + rng.below(slot - Duration::from_millis(300))
        })
        .collect()
}

/// What a sink file holds, counted rather than asserted line by line, so a
/// failure says how many duplicates there were.
#[derive(Debug, Default)]
struct Tally {
    lines: usize,
    unparsable: usize,
    duplicates: usize,
    out_of_order: usize,
    records: Vec<Value>,
}

fn tally(path: &Path) -> Tally {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut t = Tally::default();
    let mut seen = BTreeSet::new();
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for line in text.lines() {
        t.lines += 1;
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            t.unparsable += 1;
            continue;
        };
        let (p, o) = (
            v["partition"].as_i64().unwrap_or(-1),
            v["offset"].as_i64().unwrap_or(-1),
        );
        if !seen.insert((p, o)) {
            t.duplicates += 1;
            continue;
        }
        if last.insert(p, o).is_some_and(|prev| o < prev) {
            t.out_of_order += 1;
        }
        t.records.push(v);
    }
    t
}

/// Produce `{"n": i}` keyed `k<i>` at [`RATE`] for [`RUN`]; returns each
/// record's value by (partition, offset).
async fn produce_for_the_run(broker: &TestBroker, topic: &str) -> BTreeMap<(i32, i64), Value> {
    let producer: FutureProducer = broker
        .plaintext_config()
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "5")
        .create()
        .expect("create Kafka producer");
    let tick = Duration::from_millis(10);
    let per_tick = RATE * tick.as_millis() as u64 / 1000;
    let mut ticks = tokio::time::interval(tick);
    let mut reports = Vec::new();
    let mut n = 0u64;
    for _ in 0..RUN.as_millis() / tick.as_millis() {
        ticks.tick().await;
        for _ in 0..per_tick {
            let (key, value) = (format!("k{n}"), json!({ "n": n }));
            let payload = value.to_string();
            let record = FutureRecord::to(topic).key(&key).payload(&payload);
            let report = producer
                .send_result(record)
                .unwrap_or_else(|(e, _)| panic!("queue record {n}: {e}"));
            reports.push((value, report));
            n += 1;
        }
    }
    let mut produced = BTreeMap::new();
    for (value, report) in reports {
        let delivered = report
            .await
            .expect("delivery report")
            .unwrap_or_else(|(e, _)| panic!("producing {value}: {e}"));
        produced.insert((delivered.partition, delivered.offset), value);
    }
    produced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_sink_has_no_duplicate_after_control_plane_kills() {
    e2e::logs();
    connectivity_common::tls::install_default_provider();
    let seed = std::env::var("JSONL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(21);
    let schedule = kill_schedule(seed);
    eprintln!("kill schedule (seed {seed}): {schedule:?}");

    let broker = kafka::broker();
    let topic = kafka::unique_topic("jsonl-crash");
    kafka::create_topic(&broker, &topic, PARTITIONS).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let _logs = LogDump(dir.path().to_owned());
    let sink = dir.path().join(format!("{JOB}.jsonl"));
    let mut control_plane = ControlPlaneProcess::start(dir.path()).await;

    let group = kafka::unique_topic("jsonl-crash-group");
    let job = json!({
        "spec": {
            "id": JOB, "bootstrap_servers": broker.plaintext, "topic": topic,
            "consumer_group": group,
            "max_records": 50, "max_wait_ms": 50, "session_timeout_ms": 6000,
            "security": {"protocol": "PLAINTEXT"}
        },
        "group": cp::GROUP,
        "sink": {"kind": "jsonl", "path": sink}
    });
    control_plane
        .console(reqwest::Method::POST, "/api/v1/jobs", Some(&job))
        .await;
    let state = dir.path().join("agent");
    std::fs::create_dir_all(&state).expect("agent state dir");
    let agent = InProcessAgent::spawn(e2e::agent_config(
        &control_plane.base_url(),
        &control_plane.pki.ca_file,
        &state,
    ));

    let producing = tokio::spawn({
        let (broker, topic) = (broker.clone(), topic.clone());
        async move { produce_for_the_run(&broker, &topic).await }
    });
    let start = Instant::now();
    for at in &schedule {
        tokio::time::sleep_until(start + *at).await;
        control_plane.kill();
        control_plane.spawn().await;
    }
    let produced = producing.await.expect("producer task");
    assert_eq!(
        produced.len() as u64,
        RATE * RUN.as_secs(),
        "records produced"
    );

    // Done when the group has committed every record: the agent commits only
    // what the control plane acked, so nothing is resent after that.
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o) in produced.keys() {
        let end = ends.entry(*p).or_insert(0);
        *end = (*end).max(o + 1);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let committed = e2e::kafka_committed(&broker, &group, &topic, PARTITIONS).await;
        if ends.iter().all(|(p, end)| committed.get(p) >= Some(end)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not commit every record: committed {committed:?}, ends {ends:?}; sink has {} lines",
            tally(&sink).lines
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    agent.stop().await;

    let t = tally(&sink);
    let log = std::fs::read_to_string(&control_plane.log).unwrap_or_default();
    let recoveries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("watermarks recovered from the sink file"))
        .collect();
    for line in &recoveries {
        eprintln!("{line}");
    }
    eprintln!(
        "{} records produced, {} lines in the sink: {} duplicates, {} unparsable, {} out of order; {} starts recovered watermarks from the file",
        produced.len(),
        t.lines,
        t.duplicates,
        t.unparsable,
        t.out_of_order,
        recoveries.len()
    );
    assert_eq!(
        (t.duplicates, t.unparsable, t.out_of_order),
        (0, 0, 0),
        "duplicates, unparsable lines, records out of order in the sink"
    );
    e2e::assert_exactly_once_in_order(&t.records, &produced);
}
