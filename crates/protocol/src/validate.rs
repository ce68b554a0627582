//! Checks of a job spec that need no Kafka client: names, ranges, and that
//! the security settings fit together and the truststore opens. Both sides
//! run them, once, here: the control plane before it stores a job (so the
//! console shows the error next to the field), the agent before it builds
//! its librdkafka configuration.

use crate::job::{JobSpec, Partitions, Security, SecurityProtocol};
use crate::truststore::{self, TruststoreError};

/// Why a job spec cannot run. Permanent: retrying
/// the same spec cannot help, the spec has to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("job field {field} is empty; {fix}")]
    Empty {
        field: &'static str,
        fix: &'static str,
    },
    #[error("job field {field} is {value}; {fix}")]
    Invalid {
        field: &'static str,
        value: String,
        fix: &'static str,
    },
    #[error(
        "security.protocol is {protocol} but no SASL settings are given; add security.sasl \
         (mechanism, username, password) or choose SSL / PLAINTEXT"
    )]
    MissingSasl { protocol: &'static str },
    #[error(
        "security.sasl is given but security.protocol is {protocol}, which does not use SASL; \
         choose SASL_SSL (OCI Streaming) or SASL_PLAINTEXT, or remove the SASL settings"
    )]
    UnusedSasl { protocol: &'static str },
    #[error(
        "security.{field} is given but security.protocol is {protocol}, which does not use TLS; \
         choose SSL or SASL_SSL, or remove it"
    )]
    UnusedTls {
        field: &'static str,
        protocol: &'static str,
    },
    #[error(
        "security.client_cert_pem and security.client_key_pem must be given together for mutual TLS"
    )]
    HalfClientCert,
    #[error("{0}")]
    Truststore(#[from] TruststoreError),
}

/// `security.protocol` as librdkafka spells it.
pub fn protocol_name(p: SecurityProtocol) -> &'static str {
    match p {
        SecurityProtocol::Plaintext => "PLAINTEXT",
        SecurityProtocol::Ssl => "SSL",
        SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
        SecurityProtocol::SaslSsl => "SASL_SSL",
    }
}

/// Whether the protocol uses TLS.
pub fn uses_tls(p: SecurityProtocol) -> bool {
    matches!(p, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
}

fn uses_sasl(p: SecurityProtocol) -> bool {
    matches!(
        p,
        SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
    )
}

/// Checks the fields of a spec that librdkafka would otherwise reject with a
/// less helpful message (or accept and then misbehave).
pub fn validate(spec: &JobSpec) -> Result<(), SpecError> {
    validate_names(spec)?;
    validate_limits(spec)?;
    validate_security(&spec.security)
}

/// The stream endpoint, the topic and the consumer group.
fn validate_names(spec: &JobSpec) -> Result<(), SpecError> {
    let empty = |field, fix| SpecError::Empty { field, fix };
    if spec.bootstrap_servers.trim().is_empty() {
        return Err(empty(
            "bootstrap_servers",
            "give host:port of the stream endpoint, e.g. cell-1.streaming.<region>.oci.oraclecloud.com:9092",
        ));
    }
    if spec.topic.trim().is_empty() {
        return Err(empty("topic", "give the stream (topic) name"));
    }
    let topic = &spec.topic;
    if topic.len() > 249
        || !topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(SpecError::Invalid {
            field: "topic",
            value: format!("{topic:?}"),
            fix: "a Kafka topic name has at most 249 of the characters a-z A-Z 0-9 . _ - (on OCI Streaming: the stream name)",
        });
    }
    if spec.consumer_group.trim().is_empty() {
        return Err(empty(
            "consumer_group",
            "give a consumer group name; agents of one group share its partitions",
        ));
    }
    Ok(())
}

/// Batch sizes, the window, the session timeout and the partitions.
fn validate_limits(spec: &JobSpec) -> Result<(), SpecError> {
    use crate::job::defaults::{MAX_WINDOW_BYTES, MIN_WINDOW_BYTES};
    let positive = |field: &'static str, value: u64, fix| {
        if value == 0 {
            Err(SpecError::Invalid {
                field,
                value: "0".into(),
                fix,
            })
        } else {
            Ok(())
        }
    };
    positive(
        "max_records",
        spec.max_records.into(),
        "give at least 1 (default 2000)",
    )?;
    positive(
        "max_bytes",
        spec.max_bytes.into(),
        "give at least 1 (default 1048576)",
    )?;
    positive(
        "window",
        spec.window.into(),
        // (`bad_numbers_are_named` checks it follows defaults::window)
        "give at least 1 batch in flight (default 128)",
    )?;
    if !(MIN_WINDOW_BYTES..=MAX_WINDOW_BYTES).contains(&spec.window_bytes) {
        return Err(SpecError::Invalid {
            field: "window_bytes",
            value: spec.window_bytes.to_string(),
            // (`bad_numbers_are_named` checks it follows defaults)
            fix: "give 65536..1073741824 bytes in flight (default 67108864, 64 MiB)",
        });
    }
    if !(1000..=3_600_000).contains(&spec.session_timeout_ms) {
        return Err(SpecError::Invalid {
            field: "session_timeout_ms",
            value: spec.session_timeout_ms.to_string(),
            fix: "give 1000..3600000 milliseconds (default 6000), within the broker's group.min/max.session.timeout.ms",
        });
    }
    if let Partitions::List(list) = &spec.partitions
        && (list.is_empty() || list.iter().any(|p| *p < 0))
    {
        return Err(SpecError::Invalid {
            field: "partitions",
            value: format!("{list:?}"),
            fix: "give \"all\" or a non-empty list of partition numbers (0, 1, ...)",
        });
    }
    Ok(())
}

/// Checks that the security settings fit together.
pub fn validate_security(sec: &Security) -> Result<(), SpecError> {
    let name = protocol_name(sec.protocol);
    match (&sec.sasl, uses_sasl(sec.protocol)) {
        (None, true) => return Err(SpecError::MissingSasl { protocol: name }),
        (Some(_), false) => return Err(SpecError::UnusedSasl { protocol: name }),
        _ => {}
    }
    if !uses_tls(sec.protocol) {
        for (field, given) in [
            ("truststore", sec.truststore.is_some()),
            ("client_cert_pem", sec.client_cert_pem.is_some()),
            ("client_key_pem", sec.client_key_pem.is_some()),
        ] {
            if given {
                return Err(SpecError::UnusedTls {
                    field,
                    protocol: name,
                });
            }
        }
    }
    if sec.client_cert_pem.is_some() != sec.client_key_pem.is_some() {
        return Err(SpecError::HalfClientCert);
    }
    Ok(())
}

/// Every check of [`validate`], and that the truststore opens with its
/// password: a wrong password is an answer when the job is saved, not a
/// job error on the agent later.
pub fn check(spec: &JobSpec) -> Result<(), SpecError> {
    validate(spec)?;
    if let Some(ts) = &spec.security.truststore
        && uses_tls(spec.security.protocol)
    {
        truststore::certificates(ts)?;
    }
    Ok(())
}
