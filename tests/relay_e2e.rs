//! The whole flow against the real broker: Kafka → agent (rdkafka) → TLS
//! WebSocket → control plane → job sink → ack → commit. Jobs are created
//! and watched through the console API, records are read from the JSONL
//! (or webhook) sink, agents run in-process or as the binary.
//!
//! Every test uses its own topics and consumer groups; waits poll with
//! deadlines. `RUST_LOG=connectivity_agent=info cargo test --test relay_e2e -- --nocapture`
//! shows what the agents and the control plane do.

mod common;

use common::e2e::{
    self, E2e, agents, assert_exactly_once_in_order, committed_reached, counts, numbered,
    positions, produce, read_jsonl,
};
use common::kafka::{self, path_str};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A fresh topic with `partitions` partitions.
async fn topic(t: &E2e, prefix: &str, partitions: i32) -> String {
    let name = kafka::unique_topic(prefix);
    kafka::create_topic(&t.broker, &name, partitions).await;
    name
}

#[tokio::test]
async fn every_record_of_a_multi_partition_topic_arrives_once_in_order_across_two_agents() {
    let started = Instant::now();
    let t = E2e::start().await;
    let topic = topic(&t, "e2e-multi", 3).await;
    let records = numbered(0, 300);
    let at = produce(&t.broker, &topic, &records).await;
    let ends = counts(&at);
    assert_eq!(
        ends.len(),
        3,
        "the keys spread the records over every partition: {ends:?}"
    );

    let a = t.spawn_agent("agent-a");
    let b = t.spawn_agent("agent-b");
    t.create_job(&t.job("multi", &topic)).await;
    let got = t.wait_records("multi", 300).await;
    assert_exactly_once_in_order(&got, &positions(&records, &at));
    assert_eq!(got[0]["topic"], topic.as_str());

    // Both agents run the job as members of one consumer group: Kafka
    // gives each a share of the partitions, and the offsets get committed.
    let view = t
        .wait_job(
            "multi",
            "both agents holding partitions, everything committed",
            |v| {
                let holders = agents(v)
                    .iter()
                    .filter(|a| {
                        a["phase"] == "running"
                            && a["partitions"].as_array().is_some_and(|p| !p.is_empty())
                    })
                    .count();
                holders == 2 && committed_reached(v, &ends)
            },
        )
        .await;
    assert_eq!(view["delivery"]["records_delivered"], 300, "{view:#}");
    assert_eq!(view["delivery"]["sink_state"], "ok");
    let watermarks: BTreeMap<String, i64> = ends.iter().map(|(p, n)| (p.to_string(), *n)).collect();
    assert_eq!(view["delivery"]["watermarks"], json!(watermarks));
    a.stop().await;
    b.stop().await;
    t.cp.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

#[tokio::test]
async fn lz4_and_zstd_jobs_arrive_exactly_once_through_the_control_plane() {
    let started = Instant::now();
    let t = E2e::start().await;
    let agent = t.spawn_agent("agent");
    let mut jobs = Vec::new();
    for codec in ["lz4", "zstd"] {
        let topic = topic(&t, &format!("e2e-{codec}"), 2).await;
        let records = numbered(0, 200);
        let at = produce(&t.broker, &topic, &records).await;
        let mut job = t.job(codec, &topic);
        job["spec"]["compression"] = codec.into();
        let created = t.create_job(&job).await;
        assert_eq!(
            created["definition"]["spec"]["compression"], codec,
            "{created}"
        );
        jobs.push((codec, records, at));
    }
    for (codec, records, at) in &jobs {
        let got = t.wait_records(codec, 200).await;
        assert_exactly_once_in_order(&got, &positions(records, at));
        let view = t
            .wait_job(codec, "all committed", |v| {
                committed_reached(v, &counts(at))
            })
            .await;
        let a = &agents(&view)[0];
        let (sent, raw) = (
            a["bytes_relayed"].as_u64().unwrap(),
            a["bytes_uncompressed"].as_u64().unwrap(),
        );
        assert!(
            sent > 0 && sent < raw,
            "{codec}: {sent} bytes sent for {raw}: {view:#}"
        );
    }
    // A codec the agent does not know is refused, naming the ones it does.
    let mut job = t.job("gzip", "any-topic");
    job["spec"]["compression"] = "gzip".into();
    let (status, body) = t.cp.console("POST", "/api/v1/jobs", Some(&job)).await;
    assert_eq!(status, 400, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("gzip") && text.contains("lz4") && text.contains("zstd"),
        "{text}"
    );
    agent.stop().await;
    t.cp.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

#[tokio::test]
async fn start_positions_earliest_latest_and_explicit_offsets() {
    let started = Instant::now();
    let t = E2e::start().await;
    let topic = topic(&t, "e2e-start", 2).await;
    let before = numbered(0, 40);
    let at = produce(&t.broker, &topic, &before).await;
    let all = positions(&before, &at);

    let agent = t.spawn_agent("agent");
    t.create_job(&t.job("earliest", &topic)).await;
    let mut explicit = t.job("explicit", &topic);
    explicit["spec"]["start"] = json!({"offsets": {"0": 5}});
    t.create_job(&explicit).await;
    let mut latest = t.job("latest", &topic);
    latest["spec"]["start"] = json!("latest");
    t.create_job(&latest).await;

    // earliest: everything. explicit: partition 0 from offset 5, partition 1
    // (not listed) from the beginning.
    assert_exactly_once_in_order(&t.wait_records("earliest", 40).await, &all);
    let from_five: BTreeMap<(i32, i64), Value> = all
        .iter()
        .filter(|((p, o), _)| *p != 0 || *o >= 5)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    assert_exactly_once_in_order(
        &t.wait_records("explicit", from_five.len()).await,
        &from_five,
    );

    // latest: nothing from before it joined; what comes after arrives. When
    // the consumer's position is fixed is not observable from outside, so
    // keep producing until something arrives, then check.
    t.wait_job("latest", "running with its partitions", |v| {
        agents(v).iter().any(|a| {
            a["phase"] == "running" && a["partitions"].as_array().is_some_and(|p| p.len() == 2)
        })
    })
    .await;
    let mut after = Vec::new();
    let mut after_at = Vec::new();
    let deadline = Instant::now() + e2e::E2E_WAIT;
    while read_jsonl(&t.sink_path("latest")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "nothing produced after the job started reached the latest job"
        );
        let batch = numbered(1000 + after.len(), 4);
        after_at.extend(produce(&t.broker, &topic, &batch).await);
        after.extend(batch);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let more = numbered(2000, 20);
    after_at.extend(produce(&t.broker, &topic, &more).await);
    after.extend(more);
    let got = loop {
        let got = read_jsonl(&t.sink_path("latest"));
        let last_20_in = more_arrived(&got, &after_at[after_at.len() - 20..]);
        if last_20_in {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "the records produced last did not all arrive: {} lines",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        got.iter()
            .all(|r| r["value"]["n"].as_u64().is_some_and(|n| n >= 1000)),
        "the latest job got records from before it started"
    );
    // Markers produced before its position was fixed may be skipped (that
    // is what latest means); the rest arrives once, in order.
    let arrived: BTreeMap<(i32, i64), Value> = positions(&after, &after_at)
        .into_iter()
        .filter(|((p, o), _)| more_arrived(&got, &[(*p, *o)]))
        .collect();
    assert_exactly_once_in_order(&got, &arrived);
    agent.stop().await;
    t.cp.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

fn more_arrived(got: &[Value], at: &[(i32, i64)]) -> bool {
    at.iter().all(|(p, o)| {
        got.iter()
            .any(|r| r["partition"].as_i64() == Some(*p as i64) && r["offset"].as_i64() == Some(*o))
    })
}

#[tokio::test]
async fn a_restarted_agent_resumes_its_consumer_group_without_redelivery() {
    let started = Instant::now();
    let t = E2e::start().await;
    let topic = topic(&t, "e2e-resume", 2).await;
    let first = numbered(0, 100);
    let first_at = produce(&t.broker, &topic, &first).await;
    let agent = t.spawn_agent("agent");
    t.create_job(&t.job("resume", &topic)).await;
    t.wait_records("resume", 100).await;
    t.wait_job("resume", "offsets committed", |v| {
        committed_reached(v, &counts(&first_at))
    })
    .await;
    agent.stop().await;

    let second = numbered(100, 60);
    let second_at = produce(&t.broker, &topic, &second).await;
    let agent = t.spawn_agent("agent");
    let got = t.wait_records("resume", 160).await;
    let mut all = positions(&first, &first_at);
    all.extend(positions(&second, &second_at));
    assert_exactly_once_in_order(&got, &all);
    let mut ends = counts(&first_at);
    for (p, n) in counts(&second_at) {
        *ends.entry(p).or_default() += n;
    }
    let view = t
        .wait_job("resume", "all committed", |v| committed_reached(v, &ends))
        .await;
    // The agent started from the committed offsets: the control plane's
    // duplicate filter had nothing to drop.
    assert_eq!(view["delivery"]["duplicates_dropped"], 0, "{view:#}");
    assert_eq!(view["delivery"]["records_delivered"], 160);
    agent.stop().await;
    t.cp.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

#[tokio::test]
async fn pause_resume_and_edit_through_the_console_lose_and_repeat_nothing() {
    let started = Instant::now();
    let t = E2e::start().await;
    let topic = topic(&t, "e2e-pause", 2).await;
    let first = numbered(0, 80);
    let mut at = produce(&t.broker, &topic, &first).await;
    let mut records = first;
    let agent = t.spawn_agent("agent");
    t.create_job(&t.job("pause", &topic)).await;
    t.wait_records("pause", 80).await;

    // Pause: the agent drains, commits and stops; the job stays defined.
    let (status, view) = t.cp.console("POST", "/api/v1/jobs/pause/pause", None).await;
    assert_eq!(
        (status, &view["definition"]["paused"]),
        (200, &Value::Bool(true))
    );
    t.wait_job("pause", "the agent stopped the job", |v| {
        !agents(v).is_empty() && agents(v).iter().all(|a| a["phase"] == "stopped")
    })
    .await;
    let group = view["definition"]["spec"]["consumer_group"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        e2e::kafka_committed(&t.broker, &group, &topic, 2).await,
        counts(&at),
        "a paused job has committed everything it relayed"
    );
    let more = numbered(80, 40);
    at.extend(produce(&t.broker, &topic, &more).await);
    records.extend(more);

    // Resume, then edit (smaller batches): the agent restarts the job from
    // the committed offsets each time.
    assert_eq!(
        t.cp.console("POST", "/api/v1/jobs/pause/resume", None)
            .await
            .0,
        200
    );
    t.wait_records("pause", 120).await;
    let (_, view) = t.cp.console("GET", "/api/v1/jobs/pause", None).await;
    let mut edited = view["definition"].clone();
    edited["spec"]["max_records"] = 5.into();
    let (status, body) =
        t.cp.console("PUT", "/api/v1/jobs/pause", Some(&edited))
            .await;
    assert_eq!(status, 200, "{body}");
    let last = numbered(120, 30);
    at.extend(produce(&t.broker, &topic, &last).await);
    records.extend(last);
    let got = t.wait_records("pause", 150).await;
    assert_exactly_once_in_order(&got, &positions(&records, &at));
    let view = t
        .wait_job("pause", "all committed", |v| {
            committed_reached(v, &counts(&at))
        })
        .await;
    assert_eq!(view["delivery"]["records_delivered"], 150);
    eprintln!(
        "duplicates dropped by the control plane across pause, resume and edit: {}",
        view["delivery"]["duplicates_dropped"]
    );
    agent.stop().await;
    t.cp.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

/// The seed's recipe, to the letter: the certificate the endpoint presents,
/// fetched with `openssl s_client`, imported with keytool under alias
/// OSSStream into `app_streaming_truststore.jks` (store password changeit).
/// `storetype` adds `-storetype <it>`; without it, keytool since Java 9
/// writes PKCS#12 whatever the file is called.
fn seed_truststore(dir: &Path, sasl_ssl: &str, storetype: Option<&str>) -> Vec<u8> {
    let port = sasl_ssl
        .rsplit_once(':')
        .map(|(_, p)| p)
        .expect("host:port");
    let storetype = storetype
        .map(|t| format!(" -storetype {t}"))
        .unwrap_or_default();
    let script = format!(
        "rm -f app_streaming_truststore.jks && \
         openssl s_client -connect localhost:{port} </dev/null 2>/dev/null | sed -ne '/-BEGIN CERTIFICATE-/,/-END CERTIFICATE-/p' > app-streaming.cert && \
         keytool -keystore app_streaming_truststore.jks -alias OSSStream -import -file app-streaming.cert -storepass changeit -noprompt{storetype}"
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = std::fs::read_to_string(dir.join("app-streaming.cert")).unwrap();
    assert_eq!(
        cert.matches("BEGIN CERTIFICATE").count(),
        1,
        "s_client shows the leaf only"
    );
    std::fs::read(dir.join("app_streaming_truststore.jks")).unwrap()
}

/// `[[jobs]]` for the SASL_SSL listener (PLAIN, as OCI Streaming) with the
/// truststore given as a file, the way docs/control-plane.toml.example shows.
fn sasl_ssl_job_toml(
    t_dir: &Path,
    broker: &kafka::TestBroker,
    id: &str,
    topic: &str,
    truststore: &str,
) -> String {
    format!(
        r#"
[[jobs]]
id = "{id}"
group = "PRIVATE_GROUP"
bootstrap_servers = "{servers}"
topic = "{topic}"
consumer_group = "{group}"
max_wait_ms = 50
session_timeout_ms = 6000
value_format = "raw"
sink = {{ kind = "jsonl", path = "{sink}" }}

[jobs.security]
protocol = "SASL_SSL"
sasl = {{ mechanism = "PLAIN", username = "{user}", password = "{password}" }}
truststore = {truststore}
"#,
        servers = broker.sasl_ssl,
        group = kafka::unique_topic(&format!("{id}-group")),
        sink = t_dir.join(format!("{id}.jsonl")).display(),
        user = broker.sasl_user,
        password = broker.sasl_password,
    )
}

#[tokio::test]
async fn sasl_ssl_with_pem_pkcs12_and_ca_jks_truststores() {
    let started = Instant::now();
    let broker = kafka::broker();
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::unique_topic("e2e-sasl");
    kafka::create_topic(&broker, &topic, 2).await;
    let pw = &broker.truststore_password;
    let mut toml = String::new();
    toml += &sasl_ssl_job_toml(
        dir.path(),
        &broker,
        "pem",
        &topic,
        &format!(
            r#"{{ format = "pem", file = "{}" }}"#,
            path_str(&broker.ca_pem)
        ),
    );
    toml += &sasl_ssl_job_toml(
        dir.path(),
        &broker,
        "p12",
        &topic,
        &format!(
            r#"{{ format = "pkcs12", file = "{}", password = "{pw}" }}"#,
            path_str(&broker.truststore_p12)
        ),
    );
    toml += &sasl_ssl_job_toml(
        dir.path(),
        &broker,
        "jks",
        &topic,
        &format!(
            r#"{{ format = "jks", file = "{}", password = "{pw}" }}"#,
            path_str(&broker.truststore_jks)
        ),
    );
    // The CA's JKS read without its password (integrity not checked), like `keytool -list` without -storepass.
    toml += &sasl_ssl_job_toml(
        dir.path(),
        &broker,
        "jks-nopw",
        &topic,
        &format!(
            r#"{{ format = "jks", file = "{}" }}"#,
            path_str(&broker.truststore_jks)
        ),
    );
    let t = E2e::start_with_toml(toml).await;
    let records = numbered(0, 30);
    let at = produce(&t.broker, &topic, &records).await;
    let agent = t.spawn_agent("agent");
    for id in ["pem", "p12", "jks", "jks-nopw"] {
        let got = wait_file(&dir.path().join(format!("{id}.jsonl")), 30).await;
        assert_exactly_once_in_order(&got, &positions(&records, &at));
        let view = t.job_view(id).await;
        assert_eq!(view["defined_in"], "config");
        assert_eq!(
            view["definition"]["spec"]["security"]["truststore"]["data"],
            "******"
        );
        assert!(!view.to_string().contains(&broker.sasl_password), "{view}");
    }
    agent.stop().await;
    t.cp.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

async fn wait_file(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + e2e::E2E_WAIT;
    loop {
        let got = read_jsonl(path);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {} of {n} records",
            path.display(),
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The truststore of the seed's recipe, every way a user may hand it over.
/// Two things stand in the way: keytool (Java 9+) writes PKCS#12 into the
/// file called `.jks`, and the store holds the broker's *leaf* certificate,
/// not a CA (Java trusts a leaf in a truststore; OpenSSL, under librdkafka,
/// only with X509_V_FLAG_PARTIAL_CHAIN).
#[tokio::test]
async fn sasl_ssl_with_the_seed_recipe_truststore_holding_the_leaf_certificate() {
    use base64::Engine as _;
    let started = Instant::now();
    let t = E2e::start().await;
    let topic = topic(&t, "e2e-seed", 1).await;
    let records = numbered(0, 10);
    let at = produce(&t.broker, &topic, &records).await;
    let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
    let verbatim = b64(seed_truststore(t.dir.path(), &t.broker.sasl_ssl, None));
    let real_jks = b64(seed_truststore(
        t.dir.path(),
        &t.broker.sasl_ssl,
        Some("JKS"),
    ));
    let mut outcomes = Vec::new();
    // Java 17's keytool encrypts the certificates of a PKCS#12 store: without
    // its password even keytool -list shows 0 entries, so the job must be
    // refused with a message that asks for the password.
    let variants = [
        (
            "seed-as-jks",
            json!({"format": "jks", "data": verbatim, "password": "changeit"}),
        ),
        (
            "seed-as-pkcs12",
            json!({"format": "pkcs12", "data": verbatim, "password": "changeit"}),
        ),
        (
            "seed-storetype-jks",
            json!({"format": "jks", "data": real_jks, "password": "changeit"}),
        ),
        (
            "seed-storetype-jks-nopw",
            json!({"format": "jks", "data": real_jks}),
        ),
    ];
    for (id, truststore) in [
        (
            "seed-as-jks-nopw",
            json!({"format": "jks", "data": verbatim}),
        ),
        (
            "seed-as-pkcs12-nopw",
            json!({"format": "pkcs12", "data": verbatim}),
        ),
    ] {
        let mut job = t.job(id, &topic);
        job["spec"]["security"] = json!({"protocol": "SSL", "truststore": truststore});
        let (status, body) = t.cp.console("POST", "/api/v1/jobs", Some(&job)).await;
        let problem = body["fields"][0]["problem"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if status != 400
            || body["fields"][0]["field"] != "spec.security.truststore"
            || !problem.to_lowercase().contains("password")
        {
            outcomes.push(format!(
                "{id}: expected 400 asking for the truststore password, got {status}: {body}"
            ));
        }
    }
    let agent = t.spawn_agent("agent");
    let mut created = Vec::new();
    for (id, truststore) in &variants {
        let mut job = t.job(id, &topic);
        job["spec"]["bootstrap_servers"] = t.broker.sasl_ssl.clone().into();
        job["spec"]["security"] = json!({
            "protocol": "SASL_SSL",
            "sasl": {"mechanism": "PLAIN", "username": t.broker.sasl_user, "password": t.broker.sasl_password},
            "truststore": truststore,
        });
        let (status, body) = t.cp.console("POST", "/api/v1/jobs", Some(&job)).await;
        if status == 201 {
            created.push(*id);
        } else {
            outcomes.push(format!(
                "{id}: refused by the control plane ({status}): {}",
                body["error"]
            ));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !created.is_empty() {
        for id in created.clone() {
            let got = read_jsonl(&t.sink_path(id));
            if got.len() >= 10 {
                assert_exactly_once_in_order(&got, &positions(&records, &at));
                created.retain(|c| *c != id);
            } else if Instant::now() >= deadline {
                let view = t.job_view(id).await;
                let errors: Vec<Value> = agents(&view).iter().map(|a| a["error"].clone()).collect();
                outcomes.push(format!(
                    "{id}: no records in 30 s; agent errors: {}",
                    Value::Array(errors)
                ));
                created.retain(|c| *c != id);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent.stop().await;
    t.cp.stop().await;
    eprintln!("took {:?}", started.elapsed());
    assert!(
        outcomes.is_empty(),
        "the seed's truststore does not work every way:\n{}",
        outcomes.join("\n")
    );
}

#[tokio::test]
async fn job_errors_are_classified_and_shown_in_the_console() {
    let started = Instant::now();
    let t = E2e::start().await;
    let topic = topic(&t, "e2e-errors", 1).await;
    let ca = std::fs::read_to_string(&t.broker.ca_pem).unwrap();
    let other_ca = std::fs::read_to_string(&t.broker.other_ca_pem).unwrap();
    let sasl_ssl = |id: &str, password: &str, ca: &str| {
        let mut j = t.job(id, &topic);
        j["spec"]["bootstrap_servers"] = t.broker.sasl_ssl.clone().into();
        j["spec"]["security"] = json!({
            "protocol": "SASL_SSL",
            "sasl": {"mechanism": "PLAIN", "username": t.broker.sasl_user, "password": password},
            "truststore": {"format": "pem", "data": ca}
        });
        j
    };
    t.create_job(&sasl_ssl("wrong-password", "not-the-password-4711", &ca))
        .await;
    t.create_job(&sasl_ssl("wrong-ca", &t.broker.sasl_password, &other_ca))
        .await;
    t.create_job(&t.job("no-topic", "e2e-no-such-topic-4711"))
        .await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut unreachable = t.job("unreachable", &topic);
    unreachable["spec"]["bootstrap_servers"] = closed.to_string().into();
    t.create_job(&unreachable).await;
    let mut outside = t.job("not-allowed", &topic);
    outside["spec"]["bootstrap_servers"] = "10.1.2.3:9092".into();
    t.create_job(&outside).await;
    let agent = t.spawn_agent("agent");

    let e = t.wait_job_error("not-allowed", "not_allowed").await;
    assert_eq!(
        e["message"],
        "stream endpoint 10.1.2.3:9092 is not in this agent's agent_ALLOWED_ENDPOINTS (127.0.0.1:*,localhost:*); add it there on the agent host \
         (for example agent_ALLOWED_ENDPOINTS=10.1.2.3:9092) and restart the agent"
    );
    let e = t.wait_job_error("wrong-password", "sasl").await;
    let message = e["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "the stream endpoint {} rejected user \"{}\" with SASL PLAIN",
            t.broker.sasl_ssl, t.broker.sasl_user
        )),
        "{message}"
    );
    assert!(message.ends_with("; check the username and password (OCI Streaming: username <tenancy>/<user>/<stream pool OCID>, password an auth token of that user)"), "{message}");
    let e = t.wait_job_error("wrong-ca", "tls").await;
    let message = e["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("the TLS handshake with {} failed: its certificate is not signed by a CA in the truststore", t.broker.sasl_ssl)), "{message}");
    let e = t.wait_job_error("no-topic", "topic_missing").await;
    assert!(
        e["message"].as_str().unwrap().starts_with(&format!(
            "topic \"e2e-no-such-topic-4711\" does not exist on {}",
            t.broker.plaintext
        )),
        "{e}"
    );
    let e = t.wait_job_error("unreachable", "tcp").await;
    assert!(
        e["message"].as_str().unwrap().contains(&closed.to_string()),
        "{e}"
    );

    // No secret in any view, and the failed jobs are still defined.
    let (_, list) = t.cp.console("GET", "/api/v1/jobs", None).await;
    let text = list.to_string();
    assert!(
        !text.contains("not-the-password-4711") && !text.contains(&t.broker.sasl_password),
        "{text}"
    );
    assert_eq!(list["jobs"].as_array().unwrap().len(), 5);
    eprintln!(
        "errors: {:#}",
        list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| json!({"id": j["id"], "error": agents(j).first().map(|a| a["error"].clone())}))
            .collect::<Vec<_>>()
            .into_iter()
            .collect::<Value>()
    );
    agent.stop().await;
    t.cp.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

/// A local webhook receiver answering 500 to the first `fail` requests.
#[derive(Default)]
struct Hook {
    fail: usize,
    requests: usize,
    bodies: Vec<Value>,
    keys: Vec<String>,
}

async fn start_hook(fail: usize) -> (String, Arc<Mutex<Hook>>) {
    use axum::http::{HeaderMap, StatusCode};
    let hook = Arc::new(Mutex::new(Hook {
        fail,
        ..Hook::default()
    }));
    let h = hook.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let h = h.clone();
            async move {
                let mut hook = h.lock().unwrap();
                hook.requests += 1;
                if hook.requests <= hook.fail {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                hook.keys.push(
                    headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned(),
                );
                hook.bodies
                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/hook",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hook)
}

#[tokio::test]
async fn a_webhook_answering_500_then_200_loses_nothing() {
    let started = Instant::now();
    let t = E2e::start().await;
    let topic = topic(&t, "e2e-hook", 2).await;
    let records = numbered(0, 100);
    let at = produce(&t.broker, &topic, &records).await;
    let (url, hook) = start_hook(3).await;
    let mut job = t.job("hook", &topic);
    job["sink"] = json!({"kind": "webhook", "url": url, "timeout_ms": 5000});
    job["spec"]["max_records"] = 20.into();
    let agent = t.spawn_agent("agent");
    t.create_job(&job).await;

    let view = t
        .wait_job("hook", "every record delivered", |v| {
            v["delivery"]["records_delivered"] == 100
        })
        .await;
    assert_eq!(view["delivery"]["sink_errors"], 3, "{view:#}");
    assert_eq!(view["delivery"]["sink_state"], "ok");
    assert!(
        view["delivery"]["last_sink_error"]["message"]
            .as_str()
            .unwrap()
            .contains("answered HTTP 500"),
        "{view:#}"
    );
    let (got, keys) = {
        let h = hook.lock().unwrap();
        assert_eq!(h.requests, 3 + h.bodies.len());
        let got: Vec<Value> = h
            .bodies
            .iter()
            .flat_map(|b| b["records"].as_array().cloned().unwrap_or_default())
            .collect();
        (got, h.keys.clone())
    };
    assert_exactly_once_in_order(&got, &positions(&records, &at));
    assert!(
        keys.iter()
            .all(|k| k.starts_with(&format!("hook/{topic}/"))),
        "{keys:?}"
    );
    agent.stop().await;
    t.cp.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

/// Records produced (key, value) and where they landed (partition, offset).
type Produced = (Vec<(Vec<u8>, Vec<u8>)>, Vec<(i32, i64)>);

/// Produce 40 chunks of `chunk` numbered records, one every 100 ms, while
/// the agent relays; returns the records and where they landed.
fn produce_paced(t: &E2e, topic: &str, chunk: usize) -> tokio::task::JoinHandle<Produced> {
    let broker = t.broker.clone();
    let topic = topic.to_owned();
    tokio::spawn(async move {
        let mut records = Vec::new();
        let mut at = Vec::new();
        for i in 0..40 {
            let batch = numbered(i * chunk, chunk);
            at.extend(produce(&broker, &topic, &batch).await);
            records.extend(batch);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (records, at)
    })
}

#[tokio::test]
async fn an_agent_killed_with_sigkill_mid_stream_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let t = E2e::start().await;
    let topic = topic(&t, "e2e-kill", 3).await;
    let mut job = t.job("kill", &topic);
    // Small batches and a small window: many acks and commits in flight
    // when the agent dies.
    job["spec"]["max_records"] = 10.into();
    job["spec"]["window"] = 4.into();
    t.create_job(&job).await;
    let mut agent = t.spawn_agent_binary("agent");
    let first_session = t.wait_binary_connected(&mut agent, "agent", None).await;

    // Produce while the agent relays, in paced chunks.
    let producer = produce_paced(&t, &topic, 25);

    let before_kill = t.wait_records("kill", 200).await.len();
    agent.kill().expect("SIGKILL the agent");
    let status = agent.wait().expect("reap the agent");
    assert_eq!(status.code(), None, "killed by a signal: {status:?}");
    let mut agent = t.spawn_agent_binary("agent");
    t.wait_binary_connected(&mut agent, "agent", Some(&first_session))
        .await;
    let (records, at) = producer.await.unwrap();
    assert!(
        before_kill < records.len(),
        "the kill came mid-stream ({before_kill} of {})",
        records.len()
    );
    let got = t.wait_records("kill", records.len()).await;
    assert_exactly_once_in_order(&got, &positions(&records, &at));
    let view = t
        .wait_job("kill", "all committed", |v| {
            committed_reached(v, &counts(&at))
        })
        .await;
    eprintln!(
        "killed after {before_kill} records; {} duplicates resent by the restarted agent were dropped by the control plane",
        view["delivery"]["duplicates_dropped"]
    );
    // SIGTERM: the restarted agent drains and exits cleanly.
    let pid = rustix::process::Pid::from_raw(agent.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = agent.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
    t.cp.stop().await;
    eprintln!("took {:?}", started.elapsed());
}

/// A TCP relay in front of the control plane whose connections can be
/// reset at once (both sockets closed), while new ones are still accepted:
/// a proxy or load balancer restarting between the agent and the cloud.
struct Resettable {
    port: u16,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Resettable {
    async fn start(target: std::net::SocketAddr) -> Resettable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let c = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        Resettable {
            port,
            conns,
            accept,
        }
    }

    /// Close every connection open now.
    fn reset(&self) -> usize {
        let open: Vec<_> = std::mem::take(&mut *self.conns.lock().unwrap());
        let n = open.iter().filter(|t| !t.is_finished()).count();
        for t in open {
            t.abort();
        }
        n
    }
}

impl Drop for Resettable {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset();
    }
}

#[tokio::test]
async fn sessions_reset_mid_stream_read_unacked_records_again_and_lose_and_duplicate_nothing() {
    let started = Instant::now();
    let t = E2e::start().await;
    let topic = topic(&t, "e2e-reset", 3).await;
    let mut job = t.job("reset", &topic);
    // Small batches and window: many batches in flight at each reset.
    job["spec"]["max_records"] = 10.into();
    job["spec"]["window"] = 8.into();
    t.create_job(&job).await;

    // The agent reaches the control plane through the relay, with a grace
    // longer than the test: each reset is a session loss within the grace,
    // so the job keeps its partitions and reads its unacked records again.
    let relay = Resettable::start(t.cp.addr).await;
    let state = t.dir.path().join("reset-agent");
    std::fs::create_dir_all(&state).unwrap();
    let text = t
        .profile_text(&state)
        .replace(
            &t.cp.base_url(),
            &format!("https://127.0.0.1:{}", relay.port),
        )
        .replace(
            "agent_SESSION_GRACE_SECONDS=2",
            "agent_SESSION_GRACE_SECONDS=60",
        );
    let profile = connectivity_agent::config::Profile::parse(Path::new("reset.cfg"), text).unwrap();
    let secrets = connectivity_agent::config::SecretValues::from_profile(&profile);
    let cfg = connectivity_agent::config::validate(&profile, &secrets, &|_| None).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let agent =
        tokio::spawn(async move { connectivity_agent::agent::runner::run_agent(cfg, s).await });

    let producer = produce_paced(&t, &topic, 50);
    let mut resets = Vec::new();
    for after in [200, 800, 1400] {
        let got = t.wait_records("reset", after).await.len();
        resets.push((got, relay.reset()));
    }
    let (records, at) = producer.await.unwrap();
    assert!(
        resets
            .iter()
            .all(|(got, closed)| *got < records.len() && *closed > 0),
        "each reset came mid-stream and closed the session: {resets:?}"
    );
    let got = t.wait_records("reset", records.len()).await;
    assert_exactly_once_in_order(&got, &positions(&records, &at));
    let view = t
        .wait_job("reset", "all committed", |v| {
            committed_reached(v, &counts(&at))
        })
        .await;
    eprintln!(
        "resets at {resets:?} (records in the sink, connections closed); {} duplicates dropped by the control plane",
        view["delivery"]["duplicates_dropped"]
    );
    stop.cancel();
    let _ = agent.await;
    t.cp.stop().await;
    eprintln!("took {:?}", started.elapsed());
}
