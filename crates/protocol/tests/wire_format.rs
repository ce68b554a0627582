//! The wire format is byte-identical to what version 1 of the protocol sent
//! (docs/PROTOCOL.md): messages and batch frames recorded from the encoder
//! before the workspace split are decoded and encoded again here. A change
//! that alters a field name, a default, an order or a byte of a frame fails
//! this test; such a change needs a new protocol version, not a new fixture.

use bytes::Bytes;
use connectivity_protocol::batch::{self, BatchWriter, Record};
use connectivity_protocol::{self as wire, AgentMessage, ControlMessage};

const AGENT_MESSAGES: &str = include_str!("fixtures/wire-v1/agent-messages.jsonl");
const CONTROL_MESSAGES: &str = include_str!("fixtures/wire-v1/control-messages.jsonl");
const FRAME: &[u8] = include_bytes!("fixtures/wire-v1/batch.cab1");
const FRAME_LZ4: &[u8] = include_bytes!("fixtures/wire-v1/batch-lz4.caz1");
const FRAME_ZSTD: &[u8] = include_bytes!("fixtures/wire-v1/batch-zstd.caz1");

/// The records inside the recorded frames: null and empty keys and values,
/// headers with and without values, an unknown timestamp, a non-ASCII topic.
fn sample_records() -> Vec<Record> {
    let b = |s: &str| Some(Bytes::copy_from_slice(s.as_bytes()));
    vec![
        Record {
            partition: 0,
            offset: 0,
            timestamp: Some(1_733_356_800_000),
            key: b("order-1"),
            value: b(r#"{"id":1,"note":"quotes \" stay as they are"}"#),
            headers: vec![("trace".into(), b("abc")), ("empty".into(), None)],
        },
        Record {
            partition: 5,
            offset: i64::MAX - 1,
            timestamp: None,
            key: None,
            value: b(""),
            headers: vec![],
        },
        Record {
            partition: 2,
            offset: 77,
            timestamp: Some(0),
            key: b(""),
            value: None,
            headers: vec![("ünïcode".into(), b("välue"))],
        },
    ]
}

fn encode_sample() -> Bytes {
    let mut writer = BatchWriter::new("orders", 42, "orders-ß", 256);
    for r in sample_records() {
        writer.push(
            r.partition,
            r.offset,
            r.timestamp,
            r.key.as_deref(),
            r.value.as_deref(),
            r.headers.iter().map(|(n, v)| (n.as_str(), v.as_deref())),
        );
    }
    writer.finish()
}

fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.trim().is_empty())
}

#[test]
fn recorded_agent_messages_decode_and_encode_byte_identically() {
    let mut kinds = Vec::new();
    for line in lines(AGENT_MESSAGES) {
        let msg: AgentMessage = wire::decode(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(wire::encode(&msg), line);
        kinds.push(serde_json::from_str::<serde_json::Value>(line).unwrap()["type"].clone());
    }
    for kind in [
        "hello",
        "heartbeat",
        "job_state",
        "command_result",
        "draining",
        "protocol_error",
        "goodbye",
    ] {
        assert!(kinds.contains(&kind.into()), "no recorded {kind} message");
    }
}

#[test]
fn recorded_control_messages_decode_and_encode_byte_identically() {
    let mut kinds = Vec::new();
    for line in lines(CONTROL_MESSAGES) {
        let msg: ControlMessage = wire::decode(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(wire::encode(&msg), line);
        kinds.push(serde_json::from_str::<serde_json::Value>(line).unwrap()["type"].clone());
    }
    let expected = [
        "welcome",
        "rejected",
        "heartbeat",
        "assign_job",
        "revoke_job",
        "ack",
        "command",
        "protocol_error",
        "goodbye",
    ];
    for kind in expected {
        assert!(kinds.contains(&kind.into()), "no recorded {kind} message");
    }
}

#[test]
fn recorded_batch_frame_decodes_to_its_records_and_encodes_byte_identically() {
    let batch = batch::decode(Bytes::from_static(FRAME)).unwrap();
    assert_eq!(batch.job_id, "orders");
    assert_eq!(batch.batch_seq, 42);
    assert_eq!(batch.topic, "orders-ß");
    assert_eq!(batch.records, sample_records());
    assert_eq!(encode_sample(), Bytes::from_static(FRAME));
}

#[test]
fn recorded_compressed_frames_hold_the_same_batch() {
    for (name, frame) in [("lz4", FRAME_LZ4), ("zstd", FRAME_ZSTD)] {
        assert_eq!(&frame[..4], batch::MAGIC_COMPRESSED, "{name}");
        let raw = batch::decompress(Bytes::from_static(frame)).unwrap();
        assert_eq!(raw, Bytes::from_static(FRAME), "{name}");
    }
}

const STREAM_AGENT_MESSAGES: &str = include_str!("fixtures/wire-v1/stream-agent-messages.jsonl");
const STREAM_CONTROL_MESSAGES: &str =
    include_str!("fixtures/wire-v1/stream-control-messages.jsonl");

/// The publish and read messages (issue 19), recorded when they were added:
/// additive to version 1, sent only to agents whose hello lists the
/// capability, so an older agent never sees one.
#[test]
fn recorded_stream_messages_decode_and_encode_byte_identically() {
    let mut kinds = Vec::new();
    for line in lines(STREAM_AGENT_MESSAGES) {
        let msg: AgentMessage = wire::decode(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(wire::encode(&msg), line);
        kinds.push(serde_json::from_str::<serde_json::Value>(line).unwrap()["type"].clone());
    }
    for line in lines(STREAM_CONTROL_MESSAGES) {
        let msg = wire::decode_control(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(wire::encode(&msg), line);
        let v = serde_json::from_str::<serde_json::Value>(line).unwrap();
        kinds.push(v["type"].clone());
        if let Some(from) = v["selection"]["from"].as_str() {
            kinds.push(format!("read from {from}").into());
        }
    }
    for kind in [
        "publish",
        "publish_result",
        "read",
        "read_result",
        "hello",
        "read from offset",
        "read from offsets",
        "read from latest",
        "read from timestamp",
    ] {
        assert!(kinds.contains(&kind.into()), "no recorded {kind} message");
    }
    // The hello of an agent that publishes lists the capabilities; one
    // without them (version 1 as first recorded) still decodes, with none.
    let hello = lines(STREAM_AGENT_MESSAGES)
        .find(|l| l.contains("\"type\":\"hello\""))
        .unwrap();
    assert!(
        hello.ends_with(r#""capabilities":["publish","read"]}"#),
        "{hello}"
    );
    let old = lines(AGENT_MESSAGES)
        .find(|l| l.contains("\"type\":\"hello\""))
        .unwrap();
    match wire::decode::<AgentMessage>(old).unwrap() {
        AgentMessage::Hello(h) => assert!(h.capabilities.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_recorded_publish_carries_its_records_as_a_batch_frame() {
    let line = lines(STREAM_CONTROL_MESSAGES).next().unwrap();
    let ControlMessage::Publish(p) = wire::decode_control(line).unwrap() else {
        panic!("first recorded control message is a publish: {line}");
    };
    let batch = connectivity_protocol::stream::frame_from_base64(&p.frame).unwrap();
    assert_eq!(batch.topic, "ORDERS");
    assert_eq!(batch.records.len(), 2);
    assert_eq!(batch.records[0].partition, -1, "partitioner chooses");
    assert_eq!(batch.records[1].partition, 2);
}
