//! Publish and read on demand through agents, against the real broker over
//! SASL_SSL with a JKS truststore (issue 19): records written and read
//! back, a retry after the agent died between the broker's ack and its
//! answer writes nothing twice, two agents share the requests, and every
//! bad input gets its status and its exact message.

mod common;

use common::control_plane::CONSOLE_TOKEN;
use common::e2e::{E2E_WAIT, E2e};
use common::kafka;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

/// `POST .../publish` with an idempotency key: status, Retry-After, body.
async fn publish(
    e: &E2e,
    name: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, Option<String>, Value) {
    let mut req = http(e)
        .post(format!("{}/api/v1/streams/{name}/publish", e.cp.base_url()))
        .bearer_auth(CONSOLE_TOKEN)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().await.expect("publish request");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    (
        status,
        retry,
        resp.json().await.expect("publish answer is JSON"),
    )
}

/// One HTTPS client per control plane, so requests reuse connections.
fn http(e: &E2e) -> reqwest::Client {
    static CLIENTS: std::sync::Mutex<Vec<(String, reqwest::Client)>> =
        std::sync::Mutex::new(Vec::new());
    let url = e.cp.base_url();
    let mut clients = CLIENTS.lock().unwrap();
    if let Some((_, c)) = clients.iter().find(|(u, _)| *u == url) {
        return c.clone();
    }
    // Longer than the control plane's 30 s wait for an agent's answer.
    let c = reqwest::Client::builder()
        .tls_backend_preconfigured((*e.cp.pki.client_config()).clone())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client");
    clients.push((url, c.clone()));
    c
}

async fn read(e: &E2e, name: &str, query: &str) -> (u16, Value) {
    e.cp.console(
        "GET",
        &format!("/api/v1/streams/{name}/records?{query}"),
        None,
    )
    .await
}

fn offsets(answer: &Value) -> Vec<(i64, i64)> {
    answer["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            (
                r["partition"].as_i64().unwrap_or(-1),
                r["offset"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

fn records(n: usize, partition: i32) -> Value {
    let recs: Vec<Value> = (0..n)
        .map(|i| {
            json!({"key": format!("k{i}"), "key_encoding": "string",
                        "value": {"n": i, "big": 12345678901234567890u64},
                        "headers": [{"name": "source", "value": "test"}],
                        "partition": partition})
        })
        .collect();
    json!({ "records": recs })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_read_back_over_sasl_ssl_with_a_jks_truststore() {
    let e = E2e::start().await;
    let topic = kafka::unique_topic("publish");
    kafka::create_topic(&e.broker, &topic, 2).await;
    e.put_stream_connection("orders", &e.stream_connection(&topic))
        .await;
    let _agent = e.spawn_agent("a1");
    e.wait_agents_in_group(1).await;

    let (status, _, first) = publish(&e, "orders", Some("batch-1"), &records(20, 1)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["idempotence"], "enabled", "{first}");
    let got = offsets(&first);
    assert_eq!(got, (0..20).map(|o| (1, o)).collect::<Vec<_>>());

    // The same key again: the first answer, nothing written.
    let (status, _, again) = publish(&e, "orders", Some("batch-1"), &records(20, 1)).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["replayed"], true);
    assert_eq!(offsets(&again), got);
    let (_, latest) = read(&e, "orders", "latest=100").await;
    assert_eq!(latest["count"], 20, "written once: {latest}");

    // The same key with other records is the caller's mistake.
    let (status, _, reused) = publish(&e, "orders", Some("batch-1"), &records(3, 1)).await;
    assert_eq!(status, 409);
    assert_eq!(
        reused["error"],
        "idempotency key \"batch-1\" was used for a different request; give each distinct request its own key"
    );

    // Offsets and ranges, in the record format.
    let (status, picked) = read(&e, "orders", "partition=1&offsets=6,10-11,16").await;
    assert_eq!(status, 200, "{picked}");
    let rs = picked["records"].as_array().unwrap();
    let at: Vec<i64> = rs.iter().map(|r| r["offset"].as_i64().unwrap()).collect();
    assert_eq!(at, vec![6, 10, 11, 16]);
    assert_eq!(
        rs[0]["value"],
        json!({"n": 6, "big": 12345678901234567890u64})
    );
    assert_eq!(rs[0]["key"], "k6");
    assert_eq!(rs[0]["key_encoding"], "string");
    assert_eq!(rs[0]["topic"], topic.as_str());
    assert!(
        rs[0]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "source"),
        "{}",
        rs[0]
    );

    // From an offset, at most N records.
    let (_, from) = read(&e, "orders", "partition=1&offset=15&max_records=3").await;
    assert_eq!(from["count"], 3);
    assert_eq!(from["truncated"], true);
    assert_eq!(from["records"][0]["offset"], 15);

    // Latest N of each partition; the empty partition gives none.
    let (_, last) = read(&e, "orders", "latest=2").await;
    let at: Vec<(i64, i64)> = last["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["partition"].as_i64().unwrap(),
                r["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(at, vec![(1, 18), (1, 19)]);
    assert_eq!(
        last["partitions"],
        json!([{"partition":0,"low":0,"high":0},{"partition":1,"low":0,"high":20}])
    );

    // From a timestamp: records given an explicit time.
    // A day ago: brokers refuse times far in the future.
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 86_400_000;
    let timed = json!({"records": [
        {"value": 1, "partition": 0, "timestamp": t0},
        {"value": 2, "partition": 0, "timestamp": t0 + 1000},
        {"value": 3, "partition": 0, "timestamp": t0 + 2000}]});
    let (status, _, body) = publish(&e, "orders", Some("timed"), &timed).await;
    assert_eq!(status, 200, "{body}");
    let (_, since) = read(&e, "orders", &format!("timestamp={}&partition=0", t0 + 500)).await;
    let values: Vec<Value> = since["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].clone())
        .collect();
    assert_eq!(values, vec![json!(2), json!(3)]);
    assert_eq!(since["records"][0]["timestamp"], t0 + 1000);

    // Out of range: the partition's watermarks and what to read instead.
    let (status, body) = read(&e, "orders", "partition=1&offsets=5,25-30").await;
    assert_eq!(status, 416, "{body}");
    assert_eq!(
        body["error"].as_str().unwrap(),
        format!(
            "offsets 25-30 of partition 1 of topic {topic:?} is out of range: the partition holds offsets 0-19 (low watermark 0, high watermark 20); read offsets from 0 to 19"
        )
    );
    let (status, body) = read(&e, "orders", "partition=0&offset=9").await;
    assert_eq!(status, 416, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("(low watermark 0, high watermark 3)"),
        "{body}"
    );
    kafka::delete_topic(&e.broker, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_status_and_a_message_naming_the_fix() {
    let e = E2e::start().await;
    let topic = kafka::unique_topic("publish-bad");
    kafka::create_topic(&e.broker, &topic, 1).await;
    e.put_stream_connection("s", &e.stream_connection(&topic))
        .await;
    let one = json!({"records": [{"value": 1}]});

    // No agent connected yet.
    let (status, retry, body) = publish(&e, "s", Some("k0"), &one).await;
    assert_eq!((status, retry.as_deref()), (503, Some("1")), "{body}");
    assert_eq!(
        body["error"],
        "no agent of group \"PRIVATE_GROUP\" is connected; start one (systemctl start connectivity-agent on a host of the group) or retry later"
    );
    let _agent = e.spawn_agent("a1");
    e.wait_agents_in_group(1).await;

    let (status, _, body) = publish(&e, "s", None, &one).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"],
        "no Idempotency-Key header; give one (a new UUID per distinct request, the same on its retries)"
    );
    let (status, _, body) = publish(&e, "nope", Some("k1"), &one).await;
    assert_eq!(status, 404);
    assert_eq!(
        body["error"],
        "no stream connection \"nope\"; create it with PUT /api/v1/streams/nope"
    );

    let big = "x".repeat(1024 * 1024 + 1);
    let oversized = json!({"records": [{"value": 1}, {"value": big, "value_encoding": "string"}]});
    let (status, _, body) = publish(&e, "s", Some("k2"), &oversized).await;
    assert_eq!(status, 413);
    assert_eq!(
        body["error"],
        "record 1 is 1048577 bytes (key, value and headers); the limit is 1048576 (OCI Streaming: 1 MB per record): make it smaller, or store the payload elsewhere and publish a reference"
    );

    // A record the broker refuses as too large (over its 1 MB default).
    let near = "y".repeat(1024 * 1024 - 100);
    let refused = json!({"records": [{"value": 1}, {"value": near, "value_encoding": "string"}]});
    let (status, _, body) = publish(&e, "s", Some("k3"), &refused).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["records"][0]["offset"], 0, "{body}");
    assert_eq!(
        body["error"].as_str().unwrap(),
        format!(
            "record 1: the record is larger than topic {topic:?} accepts (OCI Streaming: 1 MB per record); make it smaller, or store the payload elsewhere and publish a reference"
        )
    );

    let missing = kafka::unique_topic("no-such-topic");
    e.put_stream_connection("missing", &e.stream_connection(&missing))
        .await;
    let (status, _, body) = publish(&e, "missing", Some("k4"), &one).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body["error"].as_str().unwrap(),
        format!(
            "topic {missing:?} does not exist on {}; create it, or fix the topic name (names are case-sensitive; on OCI Streaming the topic is the stream name)",
            e.broker.sasl_ssl
        )
    );

    let mut down = e.stream_connection(&topic);
    down["bootstrap_servers"] = json!("127.0.0.1:1");
    e.put_stream_connection("down", &down).await;
    let (status, retry, body) = publish(&e, "down", Some("k5"), &one).await;
    assert_eq!((status, retry.as_deref()), (502, Some("5")), "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:1 refused the connection"),
        "{body}"
    );

    // The broker's ACLs give this topic to another user.
    let denied = &e.broker.acl_denied_topic;
    e.put_stream_connection("denied", &e.stream_connection(denied))
        .await;
    let (status, _, body) = publish(&e, "denied", Some("k7"), &one).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"].as_str().unwrap(),
        format!(
            "not authorized to write to topic {denied:?}; grant the SASL user write access to it \
             (OCI: a policy allowing the user's group to `use stream-push` in the stream's compartment)"
        )
    );
    let (status, body) = read(&e, "denied", "latest=1").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"].as_str().unwrap(),
        format!(
            "not authorized to read topic {denied:?}; grant the SASL user read access to it \
             (OCI: a policy allowing the user's group to `use stream-pull` in the stream's compartment)"
        )
    );

    // The agent's allow-list (loopback only in the tests) applies as to a job.
    let mut outside = e.stream_connection(&topic);
    outside["bootstrap_servers"] = json!("kafka.example.com:9092");
    e.put_stream_connection("outside", &outside).await;
    let (status, _, body) = publish(&e, "outside", Some("k6"), &one).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"],
        "stream endpoint kafka.example.com:9092 is not in this agent's agent_ALLOWED_ENDPOINTS (127.0.0.1:*,localhost:*); \
         add it there on the agent host (for example agent_ALLOWED_ENDPOINTS=kafka.example.com:9092) and restart the agent"
    );
    let (status, body) = read(&e, "outside", "latest=1").await;
    assert_eq!(status, 403, "{body}");

    let mut bad = e.stream_connection(&topic);
    bad["topic"] = json!("bad topic");
    let (status, body) = e.cp.console("PUT", "/api/v1/streams/bad", Some(&bad)).await;
    assert_eq!(status, 422);
    assert_eq!(
        body["error"],
        "field topic is \"bad topic\"; a Kafka topic name has at most 249 of the characters a-z A-Z 0-9 . _ - (on OCI Streaming: the stream name)"
    );
    // Secrets never come back.
    let (_, shown) = e.cp.console("GET", "/api/v1/streams/s", None).await;
    assert_eq!(shown["security"]["sasl"]["password"], "******");
    assert_eq!(shown["security"]["truststore"]["data"], "******");
    assert!(!shown.to_string().contains(&e.broker.sasl_password));
    kafka::delete_topic(&e.broker, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_the_publish_capability_is_reported_too_old() {
    let e = E2e::start().await;
    e.put_stream_connection("s", &e.stream_connection("t"))
        .await;
    // A version 1 agent: its hello lists no capabilities.
    let (_ws, _) = e.cp.connect_agent("old-agent").await;
    let (status, _, body) = publish(&e, "s", Some("k"), &json!({"records": [{"value": 1}]})).await;
    assert_eq!(status, 501, "{body}");
    assert_eq!(
        body["error"],
        "agent too old: the connected agents of group \"PRIVATE_GROUP\" (old-agent-name 0.1.0-test) do not support publish; upgrade them to a version that does"
    );
    let (status, body) = read(&e, "s", "latest=1").await;
    assert_eq!(status, 501, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_agent_died_between_ack_and_answer_writes_once() {
    let e = E2e::start().await;
    let topic = kafka::unique_topic("publish-crash");
    kafka::create_topic(&e.broker, &topic, 3).await;
    e.put_stream_connection("s", &e.stream_connection(&topic))
        .await;
    let body = json!({"records": (0..30).map(|i| json!({"key": i, "value": {"i": i}})).collect::<Vec<_>>()});

    // This agent exits once the broker acknowledged, before it answers.
    let mut crashing = spawn_crashing_agent(&e, "crash");
    e.wait_agents_in_group(1).await;
    let (status, retry, lost) = publish(&e, "s", Some("crash-1"), &body).await;
    assert_eq!((status, retry.as_deref()), (503, Some("1")), "{lost}");
    assert_eq!(
        lost["error"],
        "the agent went away before answering; retry with the same idempotency key (records it wrote are found, not written again)"
    );
    let exit = crashing.wait().expect("agent exit");
    assert_eq!(exit.code(), Some(86), "the agent crashed on purpose");

    let _agent = e.spawn_agent("healthy");
    let deadline = Instant::now() + E2E_WAIT;
    loop {
        let (status, _, answer) = publish(&e, "s", Some("crash-1"), &body).await;
        if status == 503 {
            assert!(Instant::now() < deadline, "{answer}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(status, 200, "{answer}");
        let recs = answer["records"].as_array().unwrap();
        assert_eq!(recs.len(), 30);
        assert!(recs.iter().all(|r| r["recovered"] == true), "{answer}");
        break;
    }
    let (_, all) = read(&e, "s", "latest=1000&max_records=1000").await;
    assert_eq!(all["count"], 30, "every record once: {all}");
    kafka::delete_topic(&e.broker, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_spread_over_the_agents_of_a_group() {
    let e = E2e::start().await;
    let topic = kafka::unique_topic("publish-two");
    kafka::create_topic(&e.broker, &topic, 2).await;
    e.put_stream_connection("s", &e.stream_connection(&topic))
        .await;
    let _a1 = e.spawn_agent("a1");
    let _a2 = e.spawn_agent("a2");
    e.wait_agents_in_group(2).await;
    // Concurrent requests go to the agent with fewer in flight: both work.
    let inputs: Vec<(String, Value)> = (0..8)
        .map(|i| (format!("two-{i}"), json!({"records": [{"value": i}]})))
        .collect();
    let tasks = inputs.iter().map(|(k, b)| publish(&e, "s", Some(k), b));
    let answers = futures_util::future::join_all(tasks).await;
    for (status, _, a) in &answers {
        assert_eq!(*status, 200, "{a}");
    }
    let agents: std::collections::BTreeSet<&str> = answers
        .iter()
        .map(|(_, _, a)| a["agent"].as_str().unwrap())
        .collect();
    assert_eq!(agents.len(), 2, "both agents wrote: {agents:?}");
    let (_, all) = read(&e, "s", "latest=100").await;
    assert_eq!(all["count"], 8, "{all}");
    kafka::delete_topic(&e.broker, &topic).await;
}

/// The agent binary with the crash-after-publish fault injected.
fn spawn_crashing_agent(e: &E2e, name: &str) -> std::process::Child {
    e.agent_binary(name)
        .env("CONNECTIVITY_AGENT_TEST_CRASH_AFTER_PUBLISH", "1")
        .spawn()
        .expect("start the agent binary")
}

/// The publish benchmark (scripts/bench.sh --publish; docs/PERFORMANCE.md,
/// "Publish"): 1 KiB records over SASL_SSL, a bare rdkafka producer against
/// the console API through one agent, then the latency of 1,000 records/s
/// as 100 requests of 10 records a second. Prints the numbers; asserts the
/// targets only when `BENCH_ASSERT=1` (a debug build on a shared machine
/// measures the build, not the design).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench.sh --publish"]
async fn measure_publish() {
    let total: usize = std::env::var("BENCH_PUBLISH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let e = E2e::start().await;
    let topic = kafka::unique_topic("bench-publish");
    kafka::create_topic(&e.broker, &topic, 3).await;
    e.put_stream_connection("bench", &e.stream_connection(&topic))
        .await;
    let _agent = e.spawn_agent("bench");
    e.wait_agents_in_group(1).await;
    let value = "v".repeat(1024);

    let bare = bare_producer_rate(&e, &topic, total, &value).await;
    println!("publish bench: bare producer {bare:.0} records/s");
    let through = agent_rate(&e, total, &value).await;
    println!("publish bench: through the agent {through:.0} records/s");
    let (p50, p99) = latency_at_1000_per_second(&e, &value).await;
    let ratio = through / bare;
    println!(
        "publish bench: bare producer {bare:.0} records/s, through the agent {through:.0} records/s ({:.0}%), \
         at 1,000 records/s p50 {p50:.1} ms p99 {p99:.1} ms",
        ratio * 100.0
    );
    if std::env::var("BENCH_ASSERT").as_deref() == Ok("1") {
        assert!(
            ratio >= 0.5,
            "through the agent {:.0}% of a bare producer",
            ratio * 100.0
        );
        assert!(p99 < 50.0, "p99 {p99:.1} ms");
    }
    kafka::delete_topic(&e.broker, &topic).await;
}

/// A bare producer with the agent's settings, writing `total` records.
async fn bare_producer_rate(e: &E2e, topic: &str, total: usize, value: &str) -> f64 {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let b = &e.broker;
    let producer: FutureProducer = b
        .sasl_ssl_config("SCRAM-SHA-256", &b.sasl_user, &b.sasl_password)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()
        .expect("bare producer");
    let started = std::time::Instant::now();
    let mut pending = Vec::with_capacity(total);
    for i in 0..total {
        let key = format!("k{i}");
        let rec = FutureRecord::to(topic).key(&key).payload(value);
        pending.push(
            producer
                .send_result(rec)
                .map_err(|(e, _)| e)
                .expect("queue"),
        );
    }
    for f in pending {
        f.await
            .expect("delivery")
            .map_err(|(e, _)| e)
            .expect("acked");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Requests of 500 records, four at a time, through the console API.
async fn agent_rate(e: &E2e, total: usize, value: &str) -> f64 {
    let batch = 500;
    let bodies: Vec<Value> = (0..total.div_ceil(batch))
        .map(|b| {
            let recs: Vec<Value> = (0..batch)
                .map(|i| {
                    json!({"key": format!("k{}", b * batch + i), "key_encoding": "string",
                                "value": value, "value_encoding": "string"})
                })
                .collect();
            json!({ "records": recs })
        })
        .collect();
    let started = std::time::Instant::now();
    for chunk in bodies.chunks(4).enumerate() {
        let (n, chunk) = chunk;
        let keys: Vec<String> = (0..chunk.len()).map(|i| format!("rate-{n}-{i}")).collect();
        let tasks = chunk
            .iter()
            .zip(&keys)
            .map(|(b, k)| publish(e, "bench", Some(k), b));
        for (status, _, a) in futures_util::future::join_all(tasks).await {
            assert_eq!(status, 200, "{a}");
        }
    }
    (bodies.len() * batch) as f64 / started.elapsed().as_secs_f64()
}

/// 100 requests of 10 records a second for 10 s, each sent on time
/// whatever the others do (an open loop): p50 and p99 in ms.
async fn latency_at_1000_per_second(e: &E2e, value: &str) -> (f64, f64) {
    use futures_util::StreamExt;
    let body = json!({"records": (0..10).map(|i| json!({"key": i, "value": value, "value_encoding": "string"})).collect::<Vec<_>>()});
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut running = futures_util::stream::FuturesUnordered::new();
    let (mut sent, mut done, mut ms) = (0, 0, Vec::with_capacity(1000));
    while done < 1000 {
        tokio::select! {
            _ = tick.tick(), if sent < 1000 => {
                let (key, body) = (format!("lat-{sent}"), &body);
                sent += 1;
                running.push(async move {
                    let t = std::time::Instant::now();
                    let (status, _, _) = publish(e, "bench", Some(&key), body).await;
                    (status, t.elapsed().as_secs_f64() * 1000.0)
                });
            }
            Some((status, took)) = running.next() => {
                done += 1;
                // A refusal (503: the agent's 8 requests in flight) is
                // back-pressure, counted apart from the latencies.
                if status == 200 {
                    ms.push(took);
                }
            }
        }
    }
    println!(
        "publish bench: latency phase: {} of 1000 requests answered 200",
        ms.len()
    );
    ms.sort_by(f64::total_cmp);
    let at = |q: usize| {
        ms.get(ms.len().saturating_sub(1) * q / 100)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (at(50), at(99))
}
