//! librdkafka client configuration for a poll job: connection and security
//! settings from the [`JobSpec`], and the consumer settings that give
//! at-least-once delivery.
//!
//! Offsets: `enable.auto.offset.store=false`, so nothing is committed unless
//! the relay stored it with `store_offset` after the control plane acked every
//! record before it; `enable.auto.commit=true` then commits the *stored*
//! offsets every [`COMMIT_INTERVAL_MS`] in the background (the pattern of
//! librdkafka's docs and rust-rdkafka's `at_least_once` example). That is one
//! OffsetCommit request per second for all partitions of a job, well under
//! OCI Streaming's 10 commits/s, and librdkafka skips partitions whose stored
//! offset has not moved. The relay commits synchronously itself on revoke and
//! on shutdown, where waiting for the next tick would lose progress.
//!
//! A [`ClientConfig`] holds the SASL password and the client key: never
//! `Debug`-print it; log [`describe`] instead.

use connectivity_protocol::job::{JobSpec, Security, StartPosition};
use connectivity_protocol::truststore;
pub use connectivity_protocol::validate::SpecError;
use connectivity_protocol::validate::{protocol_name, uses_tls, validate, validate_security};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

/// How often stored offsets are committed (librdkafka auto-commit).
pub const COMMIT_INTERVAL_MS: u32 = 1000;

/// Longest time the broker holds an empty fetch. An idle partition is thus
/// read at most twice a second, within OCI Streaming's 5 reads/s per
/// partition and consumer group, while new records still arrive within
/// half a second (a fetch returns as soon as it has data).
pub const FETCH_WAIT_MAX_MS: u32 = 500;

/// How often librdkafka reports statistics (high watermarks, lag) to the relay.
pub const STATISTICS_INTERVAL_MS: u32 = 5000;

/// Connection and security settings shared by the relay's consumer and the
/// connection test: bootstrap servers, security protocol, SASL, TLS trust.
pub fn connection_config(
    bootstrap_servers: &str,
    sec: &Security,
) -> Result<ClientConfig, SpecError> {
    validate_security(sec)?;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap_servers.trim())
        .set(
            "client.id",
            format!("connectivity-agent/{}", env!("CARGO_PKG_VERSION")),
        )
        .set("security.protocol", protocol_name(sec.protocol))
        // Firewalls and NAT gateways in front of private endpoints drop idle
        // connections silently; keepalives make that visible.
        .set("socket.keepalive.enable", "true")
        // Log lines reach the context's `log`, which keeps warnings for error
        // classification; debug chatter is not wanted.
        .set_log_level(RDKafkaLogLevel::Warning);
    if let Some(sasl) = &sec.sasl {
        c.set("sasl.mechanism", sasl.mechanism.as_kafka())
            .set("sasl.username", &sasl.username)
            .set("sasl.password", sasl.password.expose());
    }
    if uses_tls(sec.protocol) {
        c.set("ssl.endpoint.identification.algorithm", "https");
        match &sec.truststore {
            Some(ts) => {
                c.set("ssl.ca.pem", truststore::to_pem(ts)?);
            }
            // No truststore: the system's CAs (OCI Streaming's certificates are
            // publicly trusted). The vendored OpenSSL does not know where the
            // system keeps them, so librdkafka has to look.
            None => {
                c.set("ssl.ca.location", "probe");
            }
        }
        if let (Some(cert), Some(key)) = (&sec.client_cert_pem, &sec.client_key_pem) {
            c.set("ssl.certificate.pem", cert)
                .set("ssl.key.pem", key.expose());
        }
    }
    Ok(c)
}

/// The full consumer configuration of a poll job.
pub fn consumer_config(spec: &JobSpec) -> Result<ClientConfig, SpecError> {
    validate(spec)?;
    let mut c = connection_config(&spec.bootstrap_servers, &spec.security)?;
    let session = spec.session_timeout_ms;
    // Prefetch at most two batches' worth per partition queue: memory stays
    // bounded per job however far behind the control plane is. Four were
    // no faster, and the memory went to the bytes in flight instead
    // (`window_bytes`, for a distant control plane; docs/PERFORMANCE.md).
    let queued_kb = (u64::from(spec.max_bytes) * 2 / 1024).clamp(2048, 65536);
    c.set("group.id", &spec.consumer_group)
        .set(
            "client.id",
            format!(
                "connectivity-agent/{}/{}",
                env!("CARGO_PKG_VERSION"),
                spec.id
            ),
        )
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", COMMIT_INTERVAL_MS.to_string())
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            match spec.start {
                StartPosition::Latest => "latest",
                // Explicit offsets apply only where the group has no committed
                // offset; the relay sets them at assignment.
                StartPosition::Earliest | StartPosition::Offsets(_) => "earliest",
            },
        )
        .set("session.timeout.ms", session.to_string())
        .set("heartbeat.interval.ms", (session / 3).max(100).to_string())
        // Moves only the partitions that must move when agents join or leave,
        // so a rebalance does not revoke (and re-deliver) everything.
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string())
        .set("fetch.error.backoff.ms", "500")
        .set("queued.max.messages.kbytes", queued_kb.to_string())
        // Prefetch counted in records too (per partition; ten batches; the
        // default is 100,000): each queued record costs librdkafka a few
        // hundred bytes beyond its payload, which the kbytes limit does not
        // see. Measured with 100 B records: peak RSS 59 -> 44 MiB, and the
        // relay faster (docs/PERFORMANCE.md).
        .set(
            "queued.min.messages",
            (u64::from(spec.max_records) * 10)
                .clamp(1000, 100_000)
                .to_string(),
        )
        // One fetch response is held in memory until its last record is
        // relayed; librdkafka's default allows 50 MiB.
        .set("fetch.max.bytes", (queued_kb * 1024).to_string())
        // How long a fetcher whose bounded queue is full waits before it
        // looks again. The default (1000 ms) held the relay at 1-5% of a
        // bare consumer; 10 ms still starved it whenever the relay drained
        // the small queue faster than that (the fetcher idle, the queue
        // empty): 1 ms made the relay 36% faster at 1 KiB records. 0 spins.
        // Only a full queue waits, so an idle job costs nothing more
        // (docs/PERFORMANCE.md).
        .set("fetch.queue.backoff.ms", "1")
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS.to_string());
    Ok(c)
}

/// Keys whose values are secrets (rdkafka's own list misses `ssl.key.pem`).
fn is_secret_key(key: &str) -> bool {
    key.contains("password")
        || key.contains("secret")
        || key == "ssl.key.pem"
        || key.ends_with(".jaas.config")
}

/// A one-line description of a client configuration for logs and
/// diagnostics: secrets masked, PEM blobs summarised, keys sorted.
pub fn describe(config: &ClientConfig) -> String {
    config
        .config_map()
        .into_iter()
        .map(|(k, v)| {
            if is_secret_key(k) {
                format!("{k}={}", connectivity_protocol::secret::MASK)
            } else if k.ends_with(".pem") {
                format!(
                    "{k}=<PEM, {} certificates>",
                    v.matches("-----BEGIN CERTIFICATE-----").count()
                )
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use connectivity_protocol::job::{
        Partitions, Sasl, SaslMechanism, SecurityProtocol, Truststore, TruststoreFormat,
    };
    use connectivity_protocol::secret::Secret;

    fn spec() -> JobSpec {
        serde_json::from_str(
            r#"{"id":"j1","bootstrap_servers":"k.example:9092","topic":"users","consumer_group":"g",
                "security":{"protocol":"SASL_SSL","sasl":{"mechanism":"PLAIN","username":"t/u/ocid","password":"tok3n"}}}"#,
        )
        .unwrap()
    }

    #[test]
    fn consumer_config_is_at_least_once() {
        let c = consumer_config(&spec()).unwrap();
        for (k, v) in [
            ("bootstrap.servers", "k.example:9092"),
            ("group.id", "g"),
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "false"),
            ("auto.commit.interval.ms", "1000"),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "2000"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("fetch.wait.max.ms", "500"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "t/u/ocid"),
            ("sasl.password", "tok3n"),
            ("ssl.ca.location", "probe"),
            ("ssl.endpoint.identification.algorithm", "https"),
            ("queued.max.messages.kbytes", "2048"),
            ("fetch.max.bytes", "2097152"),
        ] {
            assert_eq!(c.get(k), Some(v), "{k}");
        }
        // librdkafka accepts every key and value.
        assert!(c.create_native_config().is_ok());
    }

    #[test]
    fn describe_masks_secrets() {
        let mut s = spec();
        s.security.client_cert_pem =
            Some("-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n".into());
        s.security.client_key_pem = Some(Secret::new("-----BEGIN PRIVATE KEY-----\nkeybytes\n"));
        let d = describe(&consumer_config(&s).unwrap());
        assert!(!d.contains("tok3n") && !d.contains("keybytes"), "{d}");
        assert!(
            d.contains("sasl.password=******") && d.contains("ssl.key.pem=******"),
            "{d}"
        );
        assert!(
            d.contains("ssl.certificate.pem=<PEM, 1 certificates>"),
            "{d}"
        );
    }

    #[test]
    fn start_latest_and_plaintext() {
        let mut s = spec();
        s.start = StartPosition::Latest;
        s.security = Security {
            protocol: SecurityProtocol::Plaintext,
            ..Default::default()
        };
        let c = consumer_config(&s).unwrap();
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
        assert_eq!(c.get("security.protocol"), Some("PLAINTEXT"));
        assert_eq!(c.get("ssl.ca.location"), None);
        assert_eq!(c.get("sasl.username"), None);
    }

    #[test]
    fn inconsistent_security_is_refused_with_the_fix() {
        let mut s = spec();
        s.security.sasl = None;
        assert_eq!(
            consumer_config(&s).unwrap_err().to_string(),
            "security.protocol is SASL_SSL but no SASL settings are given; add security.sasl \
             (mechanism, username, password) or choose SSL / PLAINTEXT"
        );
        let mut s = spec();
        s.security.protocol = SecurityProtocol::Ssl;
        assert!(
            consumer_config(&s)
                .unwrap_err()
                .to_string()
                .starts_with("security.sasl is given but security.protocol is SSL")
        );
        let mut s = spec();
        s.security.protocol = SecurityProtocol::SaslPlaintext;
        s.security.truststore = Some(Truststore {
            format: TruststoreFormat::Pem,
            data: Secret::new("x"),
            password: None,
        });
        assert!(
            consumer_config(&s).unwrap_err().to_string().starts_with(
                "security.truststore is given but security.protocol is SASL_PLAINTEXT"
            )
        );
        let mut s = spec();
        s.security.client_key_pem = Some(Secret::new("k"));
        assert_eq!(consumer_config(&s).unwrap_err(), SpecError::HalfClientCert);
        let mut s = spec();
        s.security.truststore = Some(Truststore {
            format: TruststoreFormat::Pem,
            data: Secret::new("x"),
            password: None,
        });
        assert!(matches!(
            consumer_config(&s).unwrap_err(),
            SpecError::Truststore(_)
        ));
        let mut s = spec();
        s.security.sasl = Some(Sasl {
            mechanism: SaslMechanism::ScramSha512,
            username: "u".into(),
            password: Secret::new("p"),
        });
        assert_eq!(
            consumer_config(&s).unwrap().get("sasl.mechanism"),
            Some("SCRAM-SHA-512")
        );
    }

    #[test]
    fn bad_numbers_are_named() {
        let mut s = spec();
        s.window = 0;
        // The fix names the current default (the text is static; this keeps it true).
        let want = format!(
            "job field window is 0; give at least 1 batch in flight (default {})",
            connectivity_protocol::job::defaults::window()
        );
        assert_eq!(validate(&s).unwrap_err().to_string(), want);
        use connectivity_protocol::job::defaults::{self, MAX_WINDOW_BYTES, MIN_WINDOW_BYTES};
        for bad in [0, MIN_WINDOW_BYTES - 1, MAX_WINDOW_BYTES + 1] {
            let mut s = spec();
            s.window_bytes = bad;
            let want = format!(
                "job field window_bytes is {bad}; give {MIN_WINDOW_BYTES}..{MAX_WINDOW_BYTES} bytes in flight (default {}, 64 MiB)",
                defaults::window_bytes()
            );
            assert_eq!(validate(&s).unwrap_err().to_string(), want);
        }
        assert_eq!(defaults::window_bytes(), 64 << 20);
        let mut s = spec();
        s.session_timeout_ms = 10;
        assert!(
            validate(&s)
                .unwrap_err()
                .to_string()
                .starts_with("job field session_timeout_ms is 10;")
        );
        let mut s = spec();
        s.partitions = Partitions::List(vec![]);
        assert!(
            validate(&s)
                .unwrap_err()
                .to_string()
                .starts_with("job field partitions is []")
        );
        let mut s = spec();
        s.topic = " ".into();
        assert_eq!(
            validate(&s).unwrap_err().to_string(),
            "job field topic is empty; give the stream (topic) name"
        );
        // A NUL would panic inside rdkafka's topic lists: refused here.
        s.topic = "us\0ers".into();
        assert_eq!(
            validate(&s).unwrap_err().to_string(),
            "job field topic is \"us\\0ers\"; a Kafka topic name has at most 249 of the characters a-z A-Z 0-9 . _ - \
             (on OCI Streaming: the stream name)"
        );
    }
}
