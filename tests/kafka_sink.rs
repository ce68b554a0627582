//! The kafka sink against the real broker (issue 19): a poll job on one
//! topic forwards into another through a stream connection over SASL_SSL
//! with a JKS truststore; every record arrives once with its key, value,
//! headers and timestamp, partitioned by key or as in the source, also
//! when the agent that publishes dies between the broker's ack and its
//! answer; a job naming a connection that does not exist gets an error
//! that says so and how to fix it.

mod common;

use common::control_plane::CONSOLE_TOKEN;
use common::e2e::{E2E_WAIT, E2e};
use common::kafka;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// A day ago, in ms: a time of our own for the records, which the
/// forwarded copies must keep (brokers refuse times far ahead).
fn base_time() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    now.as_millis() as i64 - 86_400_000
}

/// Record `i` as the record format shows it: key `k<i>`, value `{"n":
/// i}`, headers `source: test` and `i: <i>` (record 0 also a header with
/// no value), timestamp `t0 + i`.
fn expected(i: usize, t0: i64) -> Value {
    let mut headers = vec![
        json!({"name": "source", "value": "test"}),
        json!({"name": "i", "value": i.to_string()}),
    ];
    if i == 0 {
        headers.push(json!({"name": "empty", "value": null}));
    }
    json!({"key": format!("k{i}"), "key_encoding": "string", "value": {"n": i},
           "headers": headers, "timestamp": t0 + i as i64})
}

/// Produce records `0..n` ([`expected`]) into `topic` over PLAINTEXT;
/// returns each one's (partition, offset).
async fn produce_with_headers(e: &E2e, topic: &str, n: usize, t0: i64) -> Vec<(i32, i64)> {
    let producer: FutureProducer = e
        .broker
        .plaintext_config()
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let (key, value, index) = (format!("k{i}"), json!({"n": i}).to_string(), i.to_string());
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "source",
                value: Some("test"),
            })
            .insert(Header {
                key: "i",
                value: Some(&index),
            });
        if i == 0 {
            headers = headers.insert(Header::<&str> {
                key: "empty",
                value: None,
            });
        }
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(&value)
            .headers(headers)
            .timestamp(t0 + i as i64);
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("queue"),
        );
    }
    let mut placed = Vec::with_capacity(n);
    for p in pending {
        let d = p
            .await
            .expect("delivery")
            .map_err(|(e, _)| e)
            .expect("acked");
        placed.push((d.partition, d.offset));
    }
    placed
}

/// Every record of connection `name`'s topic, through the console's read
/// route (at most 1,000 per partition). A client of its own: an agent may
/// take longer than the console helper waits to open its first reader.
async fn read_all(e: &E2e, name: &str) -> Vec<Value> {
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured((*e.cp.pki.client_config()).clone())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client");
    let url = format!(
        "{}/api/v1/streams/{name}/records?latest=1000&max_records=1000",
        e.cp.base_url()
    );
    let resp = client
        .get(url)
        .bearer_auth(CONSOLE_TOKEN)
        .send()
        .await
        .expect("read request");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("read answer is JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["truncated"], false, "{body}");
    body["records"].as_array().expect("records").clone()
}

/// The header `i` of each record, which names the source record.
fn index_of(r: &Value) -> usize {
    let headers = r["headers"].as_array().expect("headers");
    let i = headers.iter().find(|h| h["name"] == "i").expect("header i");
    i["value"].as_str().expect("i").parse().expect("a number")
}

/// Wait until connection `target`'s topic holds `n` records; then check
/// that each record produced is there exactly once, with its key, value,
/// headers (plus the publish's idempotency header) and timestamp. Returns
/// the target's records.
async fn assert_forwarded_once(e: &E2e, target: &str, n: usize, t0: i64) -> Vec<Value> {
    let deadline = Instant::now() + E2E_WAIT;
    let mut got = read_all(e, target).await;
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} records forwarded",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        got = read_all(e, target).await;
    }
    let mut seen = BTreeMap::new();
    for r in &got {
        let i = index_of(r);
        assert!(
            seen.insert(i, r).is_none(),
            "record {i} forwarded twice: {r}"
        );
        let mut shown = r.clone();
        let headers = shown["headers"].as_array_mut().unwrap();
        let marker = headers.pop().expect("the idempotency header");
        assert_eq!(marker["name"], "connectivity-idempotency", "{r}");
        assert!(
            marker["value"].as_str().unwrap().starts_with("sink:"),
            "{r}"
        );
        let want = expected(i, t0);
        for field in ["key", "key_encoding", "value", "headers", "timestamp"] {
            assert_eq!(shown[field], want[field], "record {i}: {field}: {r}");
        }
    }
    assert_eq!(seen.len(), n, "every record once");
    assert_eq!(got.len(), n, "no record twice");
    got
}

/// A poll job on `source` whose sink is the stream connection `connection`.
fn forwarding_job(e: &E2e, id: &str, source: &str, connection: &str) -> Value {
    let mut job = e.job(id, source);
    job["sink"] = json!({"kind": "kafka", "connection": connection});
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_job_forwards_every_record_once_into_another_stream() {
    let e = E2e::start().await;
    let (a, b) = (
        kafka::unique_topic("forward-from"),
        kafka::unique_topic("forward-to"),
    );
    kafka::create_topic(&e.broker, &a, 3).await;
    kafka::create_topic(&e.broker, &b, 2).await;
    e.put_stream_connection("copy", &e.stream_connection(&b))
        .await;
    let _agent = e.spawn_agent("a1");
    e.wait_agents_in_group(1).await;

    let created = e
        .create_job(&forwarding_job(&e, "forward", &a, "copy"))
        .await;
    assert_eq!(
        created["definition"]["sink"],
        json!({"kind": "kafka", "connection": "copy", "partitioning": "key", "max_parallel": 4})
    );
    let (n, t0) = (150, base_time());
    produce_with_headers(&e, &a, n, t0).await;
    assert_forwarded_once(&e, "copy", n, t0).await;

    let view = e
        .wait_job("forward", "every record acked", |v| {
            v["delivery"]["records_delivered"] == n
        })
        .await;
    assert_eq!(view["delivery"]["sink_state"], "ok", "{view:#}");
    assert_eq!(read_all(&e, "copy").await.len(), n, "nothing more came");
    // By key: records with equal keys share a target partition. Each key
    // is unique here, so the records land in both partitions.
    let parts: std::collections::BTreeSet<i64> = read_all(&e, "copy")
        .await
        .iter()
        .map(|r| r["partition"].as_i64().unwrap())
        .collect();
    assert_eq!(parts.len(), 2, "{parts:?}");
    kafka::delete_topic(&e.broker, &a).await;
    kafka::delete_topic(&e.broker, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_partitioning_keeps_each_record_in_its_partition_and_order() {
    let e = E2e::start().await;
    let (a, b) = (
        kafka::unique_topic("forward-same-from"),
        kafka::unique_topic("forward-same-to"),
    );
    kafka::create_topic(&e.broker, &a, 3).await;
    kafka::create_topic(&e.broker, &b, 3).await;
    e.put_stream_connection("copy", &e.stream_connection(&b))
        .await;
    let _agent = e.spawn_agent("a1");
    e.wait_agents_in_group(1).await;
    let mut job = forwarding_job(&e, "same", &a, "copy");
    job["sink"]["partitioning"] = json!("source");
    e.create_job(&job).await;
    let (n, t0) = (90, base_time());
    let placed = produce_with_headers(&e, &a, n, t0).await;
    let got = assert_forwarded_once(&e, "copy", n, t0).await;
    // Each record in its source partition number; within a partition,
    // target offsets follow source offsets.
    let mut by_partition: BTreeMap<i64, Vec<(i64, i64)>> = BTreeMap::new();
    for r in &got {
        let (p, source_offset) = placed[index_of(r)];
        assert_eq!(r["partition"], p, "{r}");
        by_partition
            .entry(p.into())
            .or_default()
            .push((r["offset"].as_i64().unwrap(), source_offset));
    }
    assert_eq!(by_partition.len(), 3, "{by_partition:?}");
    for (p, mut pairs) in by_partition {
        pairs.sort();
        let sources: Vec<i64> = pairs.iter().map(|(_, s)| *s).collect();
        assert!(
            sources.windows(2).all(|w| w[0] < w[1]),
            "partition {p} keeps the source's order: {pairs:?}"
        );
    }
    kafka::delete_topic(&e.broker, &a).await;
    kafka::delete_topic(&e.broker, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_dying_between_ack_and_answer_loses_and_repeats_nothing() {
    let e = E2e::start().await;
    let (a, b) = (
        kafka::unique_topic("forward-crash-from"),
        kafka::unique_topic("forward-crash-to"),
    );
    kafka::create_topic(&e.broker, &a, 2).await;
    kafka::create_topic(&e.broker, &b, 2).await;
    e.put_stream_connection("copy", &e.stream_connection(&b))
        .await;
    let (n, t0) = (120, base_time());
    produce_with_headers(&e, &a, n, t0).await;

    // The only agent polls the job and runs its publishes; it exits once
    // the broker acknowledged the first one, before it answers.
    let mut crashing = e
        .agent_binary("crash")
        .env("CONNECTIVITY_AGENT_TEST_CRASH_AFTER_PUBLISH", "1")
        .spawn()
        .expect("start the agent binary");
    e.wait_agents_in_group(1).await;
    e.create_job(&forwarding_job(&e, "forward", &a, "copy"))
        .await;
    let exit = tokio::task::spawn_blocking(move || crashing.wait())
        .await
        .expect("join")
        .expect("agent exit");
    assert_eq!(exit.code(), Some(86), "the agent crashed on purpose");
    let view = e
        .wait_job("forward", "the lost answer reported", |v| {
            v["delivery"]["sink_errors"].as_u64() >= Some(1)
        })
        .await;
    let err = &view["delivery"]["last_sink_error"];
    assert_eq!(err["retryable"], true, "{view:#}");

    // Another agent: the batch's retry finds the records the first wrote
    // and writes the rest; the records the new agent polls again are
    // dropped as already delivered.
    let _agent = e.spawn_agent("healthy");
    e.wait_agents_in_group(1).await;
    assert_forwarded_once(&e, "copy", n, t0).await;
    e.wait_job("forward", "every record acked", |v| {
        v["delivery"]["records_delivered"] == n
    })
    .await;
    assert_eq!(read_all(&e, "copy").await.len(), n, "nothing more came");
    kafka::delete_topic(&e.broker, &a).await;
    kafka::delete_topic(&e.broker, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_connection_is_named_with_the_fix() {
    let e = E2e::start().await;
    let (status, body) =
        e.cp.console(
            "POST",
            "/api/v1/jobs",
            Some(&forwarding_job(&e, "lost", "t", "nowhere")),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"],
        "invalid job definition: sink.connection = \"nowhere\": names no stream connection; fix: create it first with PUT /api/v1/streams/nowhere, or give one that GET /api/v1/streams lists"
    );
    let mut empty = forwarding_job(&e, "lost", "t", "");
    empty["sink"]["max_parallel"] = json!(0);
    let (status, body) = e.cp.console("POST", "/api/v1/jobs", Some(&empty)).await;
    assert_eq!(status, 400, "{body}");
    let fields: Vec<&str> = body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["sink.connection", "sink.max_parallel"], "{body}");

    // A connection deleted after the job was created: its deliveries fail
    // for good (retried slowly, never skipped), naming the fix.
    let (a, b) = (
        kafka::unique_topic("forward-gone-from"),
        kafka::unique_topic("forward-gone-to"),
    );
    kafka::create_topic(&e.broker, &a, 1).await;
    e.put_stream_connection("gone", &e.stream_connection(&b))
        .await;
    let _agent = e.spawn_agent("a1");
    e.wait_agents_in_group(1).await;
    e.create_job(&forwarding_job(&e, "forward", &a, "gone"))
        .await;
    let (status, body) = e.cp.console("DELETE", "/api/v1/streams/gone", None).await;
    assert_eq!(status, 204, "{body}");
    produce_with_headers(&e, &a, 3, base_time()).await;
    let view = e
        .wait_job("forward", "the sink error", |v| {
            v["delivery"]["sink_state"] == "failed"
        })
        .await;
    let err = &view["delivery"]["last_sink_error"];
    assert_eq!(
        err["message"],
        "kafka sink (stream connection \"gone\"): no stream connection \"gone\"; create it with PUT /api/v1/streams/gone",
        "{view:#}"
    );
    assert_eq!(err["retryable"], false);
    assert_eq!(view["delivery"]["records_delivered"], 0);
    kafka::delete_topic(&e.broker, &a).await;
}
