//! Proves the Kafka test harness (scripts/kafka-broker.sh + tests/common/kafka.rs)
//! with plain rdkafka clients: every listener and SASL mechanism the agent's
//! tests rely on works, and the failure modes they assert on look the way
//! these tests pin down.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::kafka::{self, Consumed, TestBroker, path_str};
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Produces `n` records over PLAINTEXT into a fresh topic; returns the topic
/// and what a consumer should read back. Record 0 has no key on purpose.
async fn seeded_topic(b: &TestBroker, prefix: &str, n: usize) -> (String, Vec<Consumed>) {
    let topic = kafka::unique_topic(prefix);
    kafka::create_topic(b, &topic, 1).await;
    let owned: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..n)
        .map(|i| {
            let key = (i > 0).then(|| format!("key-{i}").into_bytes());
            (key, format!("payload-{i}").into_bytes())
        })
        .collect();
    let records: Vec<(Option<&[u8]>, &[u8])> = owned
        .iter()
        .map(|(k, v)| (k.as_deref(), v.as_slice()))
        .collect();
    let delivered = kafka::produce(b, &topic, &records).await;
    assert_eq!(delivered.len(), n);
    let expected = owned
        .into_iter()
        .zip(delivered)
        .map(|((key, payload), (partition, offset))| Consumed {
            key,
            payload,
            partition,
            offset,
        })
        .collect();
    (topic, expected)
}

#[tokio::test]
async fn plaintext_produce_then_sasl_ssl_plain_consume() {
    let b = kafka::broker();
    let (topic, expected) = seeded_topic(&b, "harness-plain", 10).await;
    assert_eq!(
        expected.iter().map(|c| c.offset).collect::<Vec<_>>(),
        (0..10).collect::<Vec<i64>>()
    );

    // CA from a file.
    let config = b.sasl_ssl_config("PLAIN", &b.sasl_user, &b.sasl_password);
    let got = kafka::consume(&config, &topic, 10, TIMEOUT)
        .await
        .expect("consume over SASL_SSL/PLAIN with ssl.ca.location");
    assert_eq!(got, expected);

    // CA inline as PEM text (what the agent does with a truststore it parsed).
    let mut config = b.sasl_ssl_config("PLAIN", &b.sasl_user, &b.sasl_password);
    config.remove("ssl.ca.location");
    config.set("ssl.ca.pem", std::fs::read_to_string(&b.ca_pem).unwrap());
    let got = kafka::consume(&config, &topic, 10, TIMEOUT)
        .await
        .expect("consume over SASL_SSL/PLAIN with ssl.ca.pem");
    assert_eq!(got, expected);
}

#[tokio::test]
async fn scram_sha_512_over_sasl_ssl() {
    let b = kafka::broker();
    let (topic, expected) = seeded_topic(&b, "harness-scram512", 3).await;
    let config = b.sasl_ssl_config("SCRAM-SHA-512", &b.sasl_user, &b.sasl_password);
    let got = kafka::consume(&config, &topic, 3, TIMEOUT)
        .await
        .expect("consume over SASL_SSL/SCRAM-SHA-512");
    assert_eq!(got, expected);
}

#[tokio::test]
async fn scram_sha_256_over_sasl_plaintext() {
    let b = kafka::broker();
    let (topic, expected) = seeded_topic(&b, "harness-scram256", 3).await;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &b.sasl_plaintext)
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "SCRAM-SHA-256")
        .set("sasl.username", &b.sasl_user)
        .set("sasl.password", &b.sasl_password);
    let got = kafka::consume(&config, &topic, 3, TIMEOUT)
        .await
        .expect("consume over SASL_PLAINTEXT/SCRAM-SHA-256");
    assert_eq!(got, expected);
}

#[tokio::test]
async fn ssl_listener_with_client_certificate() {
    let b = kafka::broker();
    let (topic, expected) = seeded_topic(&b, "harness-mtls", 2).await;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &b.ssl)
        .set("security.protocol", "SSL")
        .set("ssl.ca.location", path_str(&b.ca_pem))
        .set("ssl.certificate.location", path_str(&b.client_cert))
        .set("ssl.key.location", path_str(&b.client_key));
    let got = kafka::consume(&config, &topic, 2, TIMEOUT)
        .await
        .expect("consume over SSL with a client certificate");
    assert_eq!(got, expected);
}

/// Records librdkafka's log lines: the consumer error only carries a code,
/// the broker's reason is in the log.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<String>>>);

impl ClientContext for LogCapture {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, line: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{level:?} {fac}: {line}"));
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("error {error}: {reason}"));
    }
}
impl ConsumerContext for LogCapture {}

/// Subscribes with `config` and returns the first consumer error together
/// with what librdkafka logged; panics if a record or nothing arrives.
/// The first consumer error with code `expected`. librdkafka may report a
/// transport failure first (a broker that closes the socket before the TLS
/// alert is read, which a loaded machine makes likely); other errors are
/// kept and named if `expected` never comes.
async fn first_consumer_error(
    config: &ClientConfig,
    topic: &str,
    expected: RDKafkaErrorCode,
) -> (KafkaError, Vec<String>) {
    let capture = LogCapture::default();
    let mut config = config.clone();
    config
        .set("group.id", kafka::unique_topic("harness-fail"))
        .set("auto.offset.reset", "earliest")
        .set_log_level(RDKafkaLogLevel::Warning);
    let consumer: StreamConsumer<LogCapture> = config
        .create_with_context(capture.clone())
        .expect("create consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut others = Vec::new();
    let err = loop {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => panic!(
                "no {expected:?} error within {TIMEOUT:?} (other errors: {others:?}); log: {:#?}",
                capture.0.lock().unwrap()
            ),
            Ok(Ok(m)) => panic!(
                "expected a failure, got a record at offset {}",
                rdkafka::Message::offset(&m)
            ),
            Ok(Err(e)) if e.rdkafka_error_code() == Some(expected) => break e,
            Ok(Err(e)) => others.push(e),
        }
    };
    drop(consumer);
    let lines = capture.0.lock().unwrap().clone();
    (err, lines)
}

fn assert_logged(lines: &[String], needle: &str) {
    assert!(
        lines.iter().any(|l| l.contains(needle)),
        "expected a librdkafka log line containing {needle:?}, got: {lines:#?}"
    );
}

#[tokio::test]
async fn wrong_password_is_an_authentication_error() {
    let b = kafka::broker();
    let topic = kafka::unique_topic("harness-badpw");
    kafka::create_topic(&b, &topic, 1).await;

    let config = b.sasl_ssl_config("PLAIN", &b.sasl_user, "not-the-password");
    let (_, log) = first_consumer_error(&config, &topic, RDKafkaErrorCode::Authentication).await;
    assert_logged(&log, "Authentication failed: Invalid username or password");

    let config = b.sasl_ssl_config("SCRAM-SHA-512", &b.sasl_user, "not-the-password");
    let (_, log) = first_consumer_error(&config, &topic, RDKafkaErrorCode::Authentication).await;
    assert_logged(
        &log,
        "invalid credentials with SASL mechanism SCRAM-SHA-512",
    );
}

#[tokio::test]
async fn untrusted_ca_fails_the_tls_handshake() {
    let b = kafka::broker();
    let topic = kafka::unique_topic("harness-badca");
    kafka::create_topic(&b, &topic, 1).await;
    let mut config = b.sasl_ssl_config("PLAIN", &b.sasl_user, &b.sasl_password);
    config.set("ssl.ca.location", path_str(&b.other_ca_pem));
    let (_, log) = first_consumer_error(&config, &topic, RDKafkaErrorCode::SSL).await;
    assert_logged(&log, "certificate verify failed");
}

#[test]
fn env_file_paths_exist() {
    let b = kafka::broker();
    for p in [
        &b.ca_pem,
        &b.other_ca_pem,
        &b.truststore_jks,
        &b.truststore_p12,
        &b.client_cert,
        &b.client_key,
    ] {
        assert!(p.is_absolute() && p.is_file(), "{} missing", p.display());
    }
    if let Some(p) = &b.truststore_jks_nopass {
        assert!(p.is_file(), "{} missing", p.display());
    }
    // JKS magic number; the agent's truststore loader relies on real JKS files.
    let jks = std::fs::read(&b.truststore_jks).unwrap();
    assert_eq!(&jks[..4], &[0xFE, 0xED, 0xFE, 0xED]);
    assert_eq!(b.truststore_password, "changeit");
}
