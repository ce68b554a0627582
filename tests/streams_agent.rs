//! The agent's publish and read service driven directly, for what the
//! end-to-end tests (`streams_e2e.rs`) cannot set up: an allow-list that
//! holds the bootstrap server but not the broker it advertises (against the
//! real broker), and a cluster without idempotent producers, as OCI
//! Streaming is (librdkafka's mock cluster with INIT_PRODUCER_ID switched
//! off: the real test broker supports it).

mod common;

use common::kafka;
use connectivity_agent::allowlist::AllowList;
use connectivity_agent::streams::Streams;
use connectivity_protocol::batch::BatchWriter;
use connectivity_protocol::job::{ErrorClass, Security, SecurityProtocol};
use connectivity_protocol::stream::{
    self, Idempotence, PublishRequest, ReadRequest, ReadSelection, StreamConnection,
};
use connectivity_protocol::{AgentMessage, ControlMessage, PublishResult, ReadResult};
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaApiKey;

fn plaintext(bootstrap: &str, topic: &str) -> StreamConnection {
    StreamConnection {
        bootstrap_servers: bootstrap.to_owned(),
        topic: topic.to_owned(),
        security: Security {
            protocol: SecurityProtocol::Plaintext,
            ..Default::default()
        },
    }
}

fn publish_request(c: StreamConnection, key: &str, values: &[&str]) -> ControlMessage {
    let mut writer = BatchWriter::new("publish", 0, &c.topic, 1024);
    for v in values {
        writer.push(-1, 0, None, None, Some(v.as_bytes()), Vec::new());
    }
    ControlMessage::Publish(PublishRequest {
        request_id: format!("req-{key}"),
        connection: c,
        idempotency_key: key.to_owned(),
        frame: stream::frame_to_base64(writer),
        recover_since_ms: None,
        timeout_ms: 20_000,
    })
}

async fn publish(s: &Streams, msg: ControlMessage) -> PublishResult {
    match s.handle(msg).await {
        Some(AgentMessage::PublishResult(r)) => r,
        other => panic!("not a publish result: {other:?}"),
    }
}

async fn read(s: &Streams, c: StreamConnection) -> ReadResult {
    let msg = ControlMessage::Read(ReadRequest {
        request_id: "read-1".into(),
        connection: c,
        selection: ReadSelection::Latest { count: 1 },
        max_records: 10,
        max_bytes: 64 * 1024,
        timeout_ms: 20_000,
    });
    match s.handle(msg).await {
        Some(AgentMessage::ReadResult(r)) => r,
        other => panic!("not a read result: {other:?}"),
    }
}

/// The bootstrap server is allowed by name, but the broker advertises
/// itself by address, which the allow-list does not hold: publish and read
/// are refused as a poll job is (`relay.rs`), with the same message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_advertised_outside_the_allow_list_are_refused() {
    let b = kafka::broker();
    let topic = kafka::unique_topic("streams-advertised");
    kafka::create_topic(&b, &topic, 1).await;
    let port = b.plaintext.rsplit_once(':').unwrap().1;
    let bootstrap = format!("localhost:{port}");
    let streams = Streams::new(AllowList::parse(&bootstrap).unwrap());
    let expected = format!(
        "the cluster at {bootstrap} advertises broker {0}, which is not in this agent's \
         agent_ALLOWED_ENDPOINTS ({bootstrap}); nothing was read or written. If that broker \
         belongs to the cluster, add it there on the agent host (for example \
         agent_ALLOWED_ENDPOINTS={0}) and restart the agent; otherwise fix the \
         brokers' advertised.listeners",
        b.plaintext
    );

    let r = publish(
        &streams,
        publish_request(plaintext(&bootstrap, &topic), "adv-1", &["v"]),
    )
    .await;
    let e = r.error.expect("the publish is refused");
    assert_eq!(
        (e.class, e.message.as_str()),
        (ErrorClass::NotAllowed, &*expected)
    );
    let r = read(&streams, plaintext(&bootstrap, &topic)).await;
    let e = r.error.expect("the read is refused");
    assert_eq!(
        (e.class, e.message.as_str()),
        (ErrorClass::NotAllowed, &*expected)
    );
    // With the advertised address allowed too, both go through, and the
    // first record gets offset 0: the refused publish wrote nothing.
    let both = format!("{bootstrap},{}", b.plaintext);
    let streams = Streams::new(AllowList::parse(&both).unwrap());
    let r = publish(
        &streams,
        publish_request(plaintext(&bootstrap, &topic), "adv-2", &["v"]),
    )
    .await;
    assert!(r.error.is_none(), "{r:?}");
    assert_eq!(r.records[0].offset, Some(0), "{r:?}");
    let r = read(&streams, plaintext(&bootstrap, &topic)).await;
    assert!(r.error.is_none(), "{r:?}");
    kafka::delete_topic(&b, &topic).await;
}

/// A cluster that does not offer INIT_PRODUCER_ID (OCI Streaming): the
/// publish falls back to a producer without idempotence, says so in its
/// answer, and writes every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_idempotent_producers_gets_a_plain_producer() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("oci", 1, 1).expect("mock topic");
    mock.apiversion(RDKafkaApiKey::InitProducerId, None, None)
        .expect("switch INIT_PRODUCER_ID off");
    let bootstrap = mock.bootstrap_servers();
    let streams = Streams::new(AllowList::parse("127.0.0.1:*,localhost:*").unwrap());

    let r = publish(
        &streams,
        publish_request(plaintext(&bootstrap, "oci"), "oci-1", &["a", "b", "c"]),
    )
    .await;
    assert!(r.error.is_none(), "{r:?}");
    assert_eq!(r.idempotence, Some(Idempotence::Unsupported), "{r:?}");
    let offsets: Vec<_> = r.records.iter().map(|o| (o.offset, &o.error)).collect();
    assert_eq!(
        offsets,
        [(Some(0), &None), (Some(1), &None), (Some(2), &None)]
    );

    // The next request uses the plain producer at once.
    let r = publish(
        &streams,
        publish_request(plaintext(&bootstrap, "oci"), "oci-2", &["d"]),
    )
    .await;
    assert_eq!(r.idempotence, Some(Idempotence::Unsupported), "{r:?}");
    assert_eq!(r.records[0].offset, Some(3), "{r:?}");
}
