//! A hostile control plane against the real agent binary: a TLS WebSocket
//! server written here welcomes the agent, assigns a real job and reads
//! its batches, but acks batches it never received, acks for a job that
//! does not exist, assigns a job outside the agent's allow-list, one whose
//! cluster advertises a broker outside it, and one with absurd fields. The
//! agent must not crash, must refuse the three bad jobs, and
//! the consumer group must commit nothing but what was really acked; then
//! real acks of the first batches must move the commit to exactly them.

use super::checker::{self, Pids, Produced, Verdict};
use super::procs::AgentProcess;
use super::world;
use crate::common::kafka;
use crate::common::tls::TestPki;
use connectivity_protocol::job::{ErrorClass, JobSpec};
use connectivity_protocol::{AgentMessage, ControlMessage, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const RECORDS: u64 = 600;

/// What the fake control plane saw.
#[derive(Debug)]
enum Seen {
    Batch {
        seq: u64,
        ends: BTreeMap<i32, i64>,
        records: u64,
    },
    State {
        job: String,
        class: Option<ErrorClass>,
    },
}

fn port_of(endpoint: &str) -> &str {
    endpoint.rsplit_once(':').expect("host:port").1
}

fn spec(v: serde_json::Value) -> JobSpec {
    serde_json::from_value(v).expect("job spec")
}

pub async fn hostile_control_plane(dir: &std::path::Path) -> Verdict {
    let started = Instant::now();
    let broker = kafka::broker();
    let client = broker.plaintext_config();
    let topic = kafka::unique_topic("chaos-hostile-cp");
    world::create_topic(&client, &topic).await;
    let produced: Produced = world::produce(client.clone(), topic.clone(), 0, RECORDS, 2000).await;
    let group = kafka::unique_topic("chaos-hostile-cp-group");
    let job = spec(json!({
        "id": "real", "bootstrap_servers": broker.plaintext, "topic": topic,
        "consumer_group": group, "max_records": 50, "max_wait_ms": 50, "window": 8,
        "security": {"protocol": "PLAINTEXT"}
    }));
    // Other groups: were one of them started after all, it must not take
    // partitions from the real job.
    let outside = spec(json!({
        "id": "outside", "bootstrap_servers": "203.0.113.1:9092", "topic": topic,
        "consumer_group": format!("{group}-outside"), "security": {"protocol": "PLAINTEXT"}
    }));
    // Its bootstrap server is allowed by name, but the broker advertises
    // itself at an address the allow-list does not hold.
    let advertised = spec(json!({
        "id": "advertised", "topic": topic, "consumer_group": format!("{group}-advertised"),
        "bootstrap_servers": format!("localhost:{}", port_of(&broker.sasl_plaintext)),
        "security": {"protocol": "SASL_PLAINTEXT",
            "sasl": {"mechanism": "PLAIN", "username": broker.sasl_user, "password": broker.sasl_password}}
    }));
    let absurd = spec(json!({
        "id": "absurd", "bootstrap_servers": broker.plaintext, "topic": topic,
        "consumer_group": format!("{group}-absurd"), "window": 0, "max_records": 0, "max_bytes": 0,
        "session_timeout_ms": 1, "security": {"protocol": "PLAINTEXT"}
    }));

    let pki = TestPki::generate();
    let tls = connectivity_common::tls::server_config(&pki.cert_file, &pki.key_file).expect("tls");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Seen>();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<ControlMessage>();
    let server = tokio::spawn(async move {
        let mut ack_rx = ack_rx;
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = acceptor.accept(tcp).await.expect("tls accept");
        let mut ws = tokio_tungstenite::accept_async(tls)
            .await
            .expect("ws accept");
        let _hello = ws.next().await;
        let send = |m: &ControlMessage| Message::text(connectivity_protocol::encode(m));
        let welcome = ControlMessage::Welcome {
            session_id: "hostile".into(),
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 5000,
            protocol_version: PROTOCOL_VERSION,
        };
        let _ = ws.send(send(&welcome)).await;
        for j in [job, outside, advertised, absurd] {
            let _ = ws.send(send(&ControlMessage::AssignJob(j))).await;
        }
        let mut hb = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                m = ws.next() => match m {
                    Some(Ok(Message::Binary(b))) => {
                        if let Ok(batch) = connectivity_protocol::batch::decode(b) {
                            let mut ends = BTreeMap::new();
                            for r in &batch.records {
                                let e = ends.entry(r.partition).or_insert(0);
                                *e = (*e).max(r.offset + 1);
                            }
                            let _ = seen_tx.send(Seen::Batch { seq: batch.batch_seq, ends, records: batch.records.len() as u64 });
                        }
                    }
                    Some(Ok(Message::Text(t))) => {
                        if let Ok(AgentMessage::JobState(s)) = connectivity_protocol::decode::<AgentMessage>(&t) {
                            let _ = seen_tx.send(Seen::State { job: s.job_id, class: s.error.map(|e| e.class) });
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                },
                Some(a) = ack_rx.recv() => { let _ = ws.send(send(&a)).await; }
                _ = hb.tick() => {
                    if ws.send(send(&ControlMessage::Heartbeat { seq: 1 })).await.is_err() { return; }
                }
            }
        }
    });

    let pids: Pids = Default::default();
    let url = format!("https://127.0.0.1:{port}");
    let mut agent = AgentProcess::new(dir, "agent-hostile", &url, &pki.ca_file, pids.clone());
    agent.set_allowed_endpoints(&format!("localhost:*,{}", broker.plaintext));
    agent.spawn();
    let mut v = Verdict {
        scenario: "hostile-control-plane".into(),
        produced: produced.at.len() as u64,
        ..Verdict::default()
    };
    // Gather the batches of the whole window (8 unacked at most) and the
    // refusals of the two bad jobs.
    let mut batches: Vec<(u64, BTreeMap<i32, i64>, u64)> = Vec::new();
    let mut classes: BTreeMap<String, Option<ErrorClass>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && (batches.len() < 8
            || !["outside", "advertised"]
                .iter()
                .all(|j| classes.get(*j).is_some_and(Option::is_some)))
    {
        match tokio::time::timeout(Duration::from_secs(1), seen_rx.recv()).await {
            Ok(Some(Seen::Batch { seq, ends, records })) => batches.push((seq, ends, records)),
            Ok(Some(Seen::State { job, class })) => {
                let e = classes.entry(job).or_insert(None);
                if class.is_some() {
                    *e = class;
                }
            }
            _ => {}
        }
    }
    if batches.is_empty() {
        v.violations
            .push("the agent relayed no batch to the hostile control plane".into());
    }
    if classes.get("outside").copied().flatten() != Some(ErrorClass::NotAllowed) {
        v.violations.push(format!(
            "a job outside the allow-list was not refused as not_allowed: {:?}",
            classes.get("outside")
        ));
    }
    if classes.get("advertised").copied().flatten() != Some(ErrorClass::NotAllowed) {
        v.violations.push(format!(
            "a job whose cluster advertises a broker outside the allow-list was not refused as not_allowed: {:?}",
            classes.get("advertised")
        ));
    }
    if classes.get("absurd").copied().flatten().is_none() {
        v.violations.push(format!(
            "a job with absurd fields was not refused: {:?}",
            classes.get("absurd")
        ));
    }
    // Acks for what was never sent, and for a job that does not exist.
    let top = batches.iter().map(|b| b.0).max().unwrap_or(0);
    for seq in [top + 1, top + 1_000_000, u64::MAX, 0] {
        let _ = ack_tx.send(ControlMessage::Ack {
            job_id: "real".into(),
            batch_seq: seq,
        });
    }
    if let Some(b) = batches.first() {
        let _ = ack_tx.send(ControlMessage::Ack {
            job_id: "no-such-job".into(),
            batch_seq: b.0,
        });
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let committed = world::committed(&client, &group, &topic).await;
    if !committed.is_empty() {
        v.commit_violations += 1;
        v.violations.push(format!(
            "acks for batches never sent moved the commit: {committed:?}"
        ));
    }
    // Now real acks for the first half of the batches, in order.
    let half = batches.len().div_ceil(2);
    let mut want: BTreeMap<i32, i64> = BTreeMap::new();
    for (seq, ends, records) in &batches[..half] {
        let _ = ack_tx.send(ControlMessage::Ack {
            job_id: "real".into(),
            batch_seq: *seq,
        });
        v.delivered += records;
        for (p, e) in ends {
            let w = want.entry(*p).or_insert(0);
            *w = (*w).max(*e);
        }
    }
    let until = Instant::now() + Duration::from_secs(15);
    let mut last = BTreeMap::new();
    while Instant::now() < until {
        last = world::committed(&client, &group, &topic).await;
        if last.iter().any(|(p, c)| want.get(p).is_none_or(|w| c > w)) {
            v.commit_violations += 1;
        }
        if last == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if last != want {
        v.violations.push(format!(
            "after real acks the group committed {last:?}, not what was acked {want:?}"
        ));
    }
    if v.commit_violations > 0 && last == want {
        v.violations
            .push("the committed offset passed what was acked".into());
    }
    if let Some(status) = agent.crashed() {
        v.violations.push(format!("the agent exited: {status}"));
    }
    let pid = pids.lock().expect("pids").get("agent-hostile").copied();
    v.max_rss_agent_mib = pid.and_then(checker::rss_kib).unwrap_or(0) / 1024;
    agent.kill();
    server.abort();
    // Nothing to recover from: the peer itself was the fault.
    v.recovery = Some(Duration::ZERO);
    v.seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "chaos: hostile-control-plane: {} batches read, bogus acks sent, jobs refused as {:?}; committed {:?} after acking {} batches",
        batches.len(),
        classes,
        last,
        half
    );
    v
}
