//! Regression test for a bug the chaos suite found (issue 18, scenario
//! `agent-sigterm`): a graceful stop took every job out of the agent's job
//! table before draining it, so the acks of the batches in flight, which the
//! drain waits for, no longer found their job and were dropped. Every stop
//! with batches in flight ran into the drain deadline (10 s by default) and
//! left acked records uncommitted; the next start read them again (the
//! control plane dropped them as duplicates, but a graceful stop must cause
//! no redelivery at all).
//!
//! Here the test plays the control plane: it holds the acks of everything
//! relayed, starts `Jobs::drain_all`, and only then acks. The drain must
//! end long before its deadline with everything committed.

mod common;

use common::kafka;
use connectivity_agent::allowlist::AllowList;
use connectivity_agent::relay::{Jobs, Outbound, RelaySettings};
use connectivity_protocol::job::{
    Compression, JobSpec, Partitions, Security, SecurityProtocol, StartPosition, defaults,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const RECORDS: usize = 300;
const DEADLINE: Duration = Duration::from_secs(20);

fn spec(bootstrap: &str, topic: &str, group: &str) -> JobSpec {
    JobSpec {
        id: "drain".into(),
        bootstrap_servers: bootstrap.into(),
        topic: topic.into(),
        partitions: Partitions::All,
        consumer_group: group.into(),
        start: StartPosition::Earliest,
        max_records: 20,
        max_bytes: 1024 * 1024,
        max_wait_ms: 50,
        window: 64,
        window_bytes: defaults::window_bytes(),
        session_timeout_ms: 6000,
        compression: Compression::None,
        security: Security {
            protocol: SecurityProtocol::Plaintext,
            ..Default::default()
        },
    }
}

async fn committed(b: &kafka::TestBroker, group: &str, topic: &str) -> i64 {
    let mut cfg = b.plaintext_config();
    cfg.set("group.id", group);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = cfg.create().expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, 0);
        let got = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        match got.find_partition(&topic, 0).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        }
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_that_arrive_during_a_graceful_stop_reach_their_job() {
    let b = kafka::broker();
    let topic = kafka::unique_topic("graceful-drain");
    kafka::create_topic(&b, &topic, 1).await;
    let values: Vec<Vec<u8>> = (0..RECORDS)
        .map(|i| format!("{{\"n\":{i}}}").into_bytes())
        .collect();
    let recs: Vec<(Option<&[u8]>, &[u8])> = values.iter().map(|v| (None, v.as_slice())).collect();
    kafka::produce(&b, &topic, &recs).await;
    let group = kafka::unique_topic("graceful-drain-group");

    let settings = RelaySettings {
        session_grace: Duration::from_secs(30),
        ..RelaySettings::default()
    };
    let allow = AllowList::parse("127.0.0.1:*").expect("allow list");
    let jobs = Jobs::new(allow, settings, CancellationToken::new());
    let (tx, mut rx) = mpsc::channel(256);
    jobs.session_restored(tx);
    jobs.assign(spec(&b.plaintext, &topic, &group));

    // Relay everything, ack nothing yet.
    let mut held = Vec::new();
    let mut records = 0usize;
    let end = tokio::time::Instant::now() + Duration::from_secs(40);
    while records < RECORDS {
        match tokio::time::timeout_at(end, rx.recv()).await {
            Ok(Some(Outbound::Batch {
                frame, batch_seq, ..
            })) => {
                records += connectivity_protocol::batch::decode(frame)
                    .expect("batch")
                    .records
                    .len();
                held.push(batch_seq);
            }
            Ok(Some(Outbound::State(_))) => {}
            Ok(None) | Err(_) => panic!("only {records} of {RECORDS} records relayed"),
        }
    }
    assert_eq!(committed(&b, &group, &topic).await, -1, "nothing acked yet");

    // A graceful stop starts; the acks come while it drains.
    let started = Instant::now();
    let drain = tokio::spawn(jobs.drain_all(DEADLINE));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for seq in &held {
        jobs.ack("drain", *seq);
    }
    // Keep the session's channel read, as the session's writer does.
    let reading = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    drain.await.expect("drain");
    let took = started.elapsed();
    reading.abort();
    assert!(
        took < Duration::from_secs(5),
        "the drain took {took:?}: the acks did not reach the draining job (deadline {DEADLINE:?})"
    );
    assert_eq!(
        committed(&b, &group, &topic).await,
        RECORDS as i64,
        "a graceful stop commits everything acked"
    );
}
