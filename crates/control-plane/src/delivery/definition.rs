//! A job as the control plane keeps it: the [`JobSpec`] sent to agents plus
//! what only the control plane needs (agent group, sink, value format, paused),
//! its validation, and the redacted view shown by the console.

use super::record::ValueFormat;
use super::sink::SinkConfig;
use connectivity_protocol::job::{Partitions, SecurityProtocol, StartPosition};
use connectivity_protocol::secret::{MASK, Secret};
use connectivity_protocol::{JobSpec, MAX_FRAME_BYTES};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Most batches in flight per agent a job may ask for.
pub const MAX_WINDOW: u32 = 1024;

/// Longest job id (it travels in every batch frame and in file names).
pub const MAX_JOB_ID_LEN: usize = 128;

/// A job definition: JSON in the console API and in the job store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobDefinition {
    pub spec: JobSpec,
    /// Agent group whose agents run the job.
    pub group: String,
    pub sink: SinkConfig,
    #[serde(default)]
    pub value_format: ValueFormat,
    /// A paused job is not assigned to agents. Batches already in flight are
    /// still delivered, so pausing never strands them.
    #[serde(default)]
    pub paused: bool,
}

/// One problem in a job definition: the field, its value (masked if secret),
/// what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Dotted path, e.g. `spec.topic`, `sink.url`.
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub problem: String,
    pub fix: String,
}

impl FieldError {
    pub fn new(
        field: &str,
        value: Option<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        FieldError {
            field: field.to_owned(),
            value,
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(
                f,
                "{} = {v:?}: {}; fix: {}",
                self.field, self.problem, self.fix
            ),
            None => write!(f, "{}: {}; fix: {}", self.field, self.problem, self.fix),
        }
    }
}

/// Every problem found in a job definition (never empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(transparent)]
pub struct ValidationError(pub Vec<FieldError>);

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid job definition: ")?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "[{e}]")?;
        }
        Ok(())
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl JobDefinition {
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// Check everything the control plane can check before running the job.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = Vec::new();
        self.validate_names(&mut errors);
        self.validate_limits(&mut errors);
        self.validate_partitions(&mut errors);
        self.validate_security(&mut errors);
        self.sink.validate(&mut errors);
        for field in self.masked_secrets() {
            errors.push(FieldError::new(
                field,
                Some(MASK.into()),
                "holds the mask instead of a value",
                "give the real value (the mask is only kept when editing an existing job)",
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationError(errors))
        }
    }

    /// The job id, its group, and the names it needs from Kafka.
    fn validate_names(&self, e: &mut Vec<FieldError>) {
        let s = &self.spec;
        let val = |v: &str| Some(v.to_owned());
        if !is_name(&s.id) || s.id.len() > MAX_JOB_ID_LEN {
            e.push(FieldError::new(
                "spec.id",
                val(&s.id),
                "is not a valid job id",
                format!("use 1 to {MAX_JOB_ID_LEN} letters, digits, '.', '_' or '-'"),
            ));
        }
        if self.group.trim().is_empty() {
            e.push(FieldError::new(
                "group",
                val(&self.group),
                "is empty",
                "name the agent group that runs this job",
            ));
        }
        if s.topic.is_empty() {
            e.push(FieldError::new(
                "spec.topic",
                val(&s.topic),
                "is empty",
                "give the name of the topic (stream) to consume",
            ));
        } else if !is_name(&s.topic) || s.topic.len() > 249 || s.topic == "." || s.topic == ".." {
            e.push(FieldError::new(
                "spec.topic",
                val(&s.topic),
                "is not a valid Kafka topic name",
                "use up to 249 letters, digits, '.', '_' or '-'",
            ));
        }
        let servers: Vec<&str> = s.bootstrap_servers.split(',').map(str::trim).collect();
        if servers.iter().any(|hp| {
            hp.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().map_or(true, |p| p == 0))
        }) {
            e.push(FieldError::new("spec.bootstrap_servers", val(&s.bootstrap_servers), "is not a list of host:port", "give host:port[,host:port...], e.g. cell-1.streaming.eu-frankfurt-1.oci.oraclecloud.com:9092"));
        }
        if s.consumer_group.trim().is_empty() {
            e.push(FieldError::new(
                "spec.consumer_group",
                val(&s.consumer_group),
                "is empty",
                "name the Kafka consumer group the agents join",
            ));
        }
    }

    /// Batch sizes and the window of batches in flight.
    fn validate_limits(&self, e: &mut Vec<FieldError>) {
        use connectivity_protocol::job::defaults::{MAX_WINDOW_BYTES, MIN_WINDOW_BYTES};
        let s = &self.spec;
        if s.max_records == 0 {
            e.push(FieldError::new(
                "spec.max_records",
                Some("0".into()),
                "is zero",
                format!(
                    "give at least 1 (default {})",
                    connectivity_protocol::job::defaults::max_records()
                ),
            ));
        }
        let max_bytes_cap = (MAX_FRAME_BYTES / 2) as u32;
        if s.max_bytes == 0 || s.max_bytes > max_bytes_cap {
            e.push(FieldError::new(
                "spec.max_bytes",
                Some(s.max_bytes.to_string()),
                "is out of range",
                format!(
                    "give 1 to {max_bytes_cap} bytes (half the largest frame; default 1048576)"
                ),
            ));
        }
        if s.window == 0 || s.window > MAX_WINDOW {
            e.push(FieldError::new(
                "spec.window",
                Some(s.window.to_string()),
                "is out of range",
                format!(
                    "give 1 to {MAX_WINDOW} batches in flight (default {})",
                    connectivity_protocol::job::defaults::window()
                ),
            ));
        }
        if !(MIN_WINDOW_BYTES..=MAX_WINDOW_BYTES).contains(&s.window_bytes) {
            e.push(FieldError::new(
                "spec.window_bytes",
                Some(s.window_bytes.to_string()),
                "is out of range",
                format!(
                    "give {MIN_WINDOW_BYTES} to {MAX_WINDOW_BYTES} bytes in flight on each agent running the job (default {}, 64 MiB; records read again after a reconnect)",
                    connectivity_protocol::job::defaults::window_bytes()
                ),
            ));
        }
    }

    /// The partitions to read and where to start in them.
    fn validate_partitions(&self, e: &mut Vec<FieldError>) {
        let s = &self.spec;
        let val = |v: &str| Some(v.to_owned());
        match &s.partitions {
            Partitions::List(list) if list.is_empty() => {
                e.push(FieldError::new(
                    "spec.partitions",
                    val("[]"),
                    "is an empty list",
                    "list partition numbers, or give \"all\"",
                ));
            }
            Partitions::List(list) if list.iter().any(|p| *p < 0) => {
                e.push(FieldError::new(
                    "spec.partitions",
                    Some(format!("{list:?}")),
                    "holds a negative partition",
                    "partitions are numbered from 0",
                ));
            }
            _ => {}
        }
        if let StartPosition::Offsets(map) = &s.start
            && map.iter().any(|(p, o)| *p < 0 || *o < 0)
        {
            e.push(FieldError::new(
                "spec.start.offsets",
                Some(format!("{map:?}")),
                "holds a negative partition or offset",
                "give non-negative partition numbers and offsets",
            ));
        }
    }

    fn validate_security(&self, e: &mut Vec<FieldError>) {
        let sec = &self.spec.security;
        let protocol = Some(format!("{:?}", sec.protocol));
        let uses_sasl = matches!(
            sec.protocol,
            SecurityProtocol::SaslSsl | SecurityProtocol::SaslPlaintext
        );
        let uses_tls = matches!(
            sec.protocol,
            SecurityProtocol::SaslSsl | SecurityProtocol::Ssl
        );
        match &sec.sasl {
            None if uses_sasl => e.push(FieldError::new("spec.security.sasl", None, "is missing but the protocol uses SASL", "give sasl.username and sasl.password (OCI Streaming: <tenancy>/<user>/<stream pool OCID> and an auth token)")),
            Some(_) if !uses_sasl => e.push(FieldError::new("spec.security.protocol", protocol.clone(), "does not use SASL but sasl is set", "set protocol to SASL_SSL, or remove sasl")),
            Some(sasl) => {
                if sasl.username.is_empty() {
                    e.push(FieldError::new("spec.security.sasl.username", None, "is empty", "give the SASL user name"));
                }
                if sasl.password.is_empty() {
                    e.push(FieldError::new("spec.security.sasl.password", None, "is empty", "give the SASL password (auth token)"));
                }
            }
            None => {}
        }
        if !uses_tls && (sec.truststore.is_some() || sec.client_key_pem.is_some()) {
            e.push(FieldError::new(
                "spec.security.protocol",
                protocol,
                "does not use TLS but a truststore or client key is set",
                "set protocol to SSL or SASL_SSL, or remove them",
            ));
        }
        if sec.truststore.as_ref().is_some_and(|t| t.data.is_empty()) {
            e.push(FieldError::new(
                "spec.security.truststore.data",
                None,
                "is empty",
                "paste the PEM text, or the base64 of the JKS/PKCS#12 file",
            ));
        }
        if sec.client_key_pem.is_some() != sec.client_cert_pem.is_some() {
            e.push(FieldError::new(
                "spec.security.client_cert_pem",
                None,
                "is given without its pair",
                "give both client_cert_pem and client_key_pem, or neither",
            ));
        }
    }

    /// Every secret in the definition, by field path.
    fn secrets_mut(&mut self) -> Vec<(&'static str, &mut Secret)> {
        let sec = &mut self.spec.security;
        let mut out: Vec<(&'static str, &mut Secret)> = Vec::new();
        if let Some(s) = sec.sasl.as_mut() {
            out.push(("spec.security.sasl.password", &mut s.password));
        }
        if let Some(t) = sec.truststore.as_mut() {
            out.push(("spec.security.truststore.data", &mut t.data));
            if let Some(p) = t.password.as_mut() {
                out.push(("spec.security.truststore.password", p));
            }
        }
        if let Some(k) = sec.client_key_pem.as_mut() {
            out.push(("spec.security.client_key_pem", k));
        }
        out
    }

    fn masked_secrets(&self) -> Vec<&'static str> {
        let mut copy = self.clone();
        let mut fields: Vec<&'static str> = copy
            .secrets_mut()
            .into_iter()
            .filter(|(_, s)| s.expose() == MASK)
            .map(|(f, _)| f)
            .collect();
        if let SinkConfig::Webhook(w) = &self.sink
            && w.headers.values().any(|v| v.expose() == MASK)
        {
            fields.push("sink.headers");
        }
        fields
    }

    /// A copy fit to show people: every secret replaced by the mask (SASL
    /// password, truststore data and password, client key, webhook header
    /// values, webhook URL query).
    pub fn redacted(&self) -> JobDefinition {
        let mut copy = self.clone();
        for (_, secret) in copy.secrets_mut() {
            *secret = Secret::new(MASK);
        }
        copy.sink = self.sink.redacted();
        copy
    }

    /// After a console round trip (GET the redacted view, edit, PUT it back),
    /// put back the secrets still showing the mask from `previous`.
    pub fn unmask_from(&mut self, previous: &JobDefinition) {
        let mut old = previous.clone();
        let old_secrets: Vec<(&'static str, Secret)> = old
            .secrets_mut()
            .into_iter()
            .map(|(f, s)| (f, s.clone()))
            .collect();
        for (field, secret) in self.secrets_mut() {
            if secret.expose() == MASK
                && let Some((_, old)) = old_secrets.iter().find(|(f, _)| *f == field)
            {
                *secret = old.clone();
            }
        }
        self.sink.unmask_from(&previous.sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(json: &str) -> JobDefinition {
        serde_json::from_str(json).unwrap()
    }

    const GOOD: &str = r#"{
        "spec": {"id":"users-sync","bootstrap_servers":"cell-1.example:9092","topic":"USERS","consumer_group":"oic",
                 "security":{"protocol":"SASL_SSL","sasl":{"username":"t/u/ocid1","password":"tok3n"},
                             "truststore":{"format":"pem","data":"-----BEGIN CERTIFICATE-----"}}},
        "group": "prod",
        "sink": {"kind":"webhook","url":"https://hooks.example/x?key=q","headers":{"Authorization":"Bearer abc"}},
        "value_format": "connect_payload"
    }"#;

    #[test]
    fn good_definition_validates_and_defaults_fill_in() {
        let d = def(GOOD);
        d.validate().unwrap();
        assert!(!d.paused);
        assert_eq!(d.spec.window_bytes, 64 << 20);
        assert_eq!(d.value_format, ValueFormat::ConnectPayload);
    }

    #[test]
    fn every_problem_is_named_with_field_and_fix() {
        let mut d = def(GOOD);
        d.spec.topic = String::new();
        d.spec.max_bytes = (MAX_FRAME_BYTES / 2) as u32 + 1;
        d.spec.window = 0;
        d.spec.window_bytes = 1 << 31;
        d.sink = serde_json::from_str(r#"{"kind":"jsonl","path":"out/users.jsonl"}"#).unwrap();
        let err = d.validate().unwrap_err();
        let lines: Vec<String> = err.0.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            vec![
                "spec.topic = \"\": is empty; fix: give the name of the topic (stream) to consume".to_string(),
                "spec.max_bytes = \"8388609\": is out of range; fix: give 1 to 8388608 bytes (half the largest frame; default 1048576)".into(),
                "spec.window = \"0\": is out of range; fix: give 1 to 1024 batches in flight (default 128)".into(),
                "spec.window_bytes = \"2147483648\": is out of range; fix: give 65536 to 1073741824 bytes in flight on each agent running the job (default 67108864, 64 MiB; records read again after a reconnect)".into(),
                "sink.path = \"out/users.jsonl\": is a relative path; fix: give an absolute path, e.g. /var/lib/connectivity-agent/out/users.jsonl".into(),
            ]
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let json = GOOD.replacen("\"group\"", "\"pasued\": true, \"group\"", 1);
        let err = serde_json::from_str::<JobDefinition>(&json).unwrap_err();
        assert!(err.to_string().contains("unknown field `pasued`"), "{err}");
    }

    #[test]
    fn redacted_masks_every_secret_and_round_trips() {
        let d = def(GOOD);
        let r = d.redacted();
        let json = serde_json::to_string(&r).unwrap();
        for secret in ["tok3n", "BEGIN CERTIFICATE", "Bearer abc", "key=q"] {
            assert!(!json.contains(secret), "{secret} leaked in {json}");
        }
        assert!(!format!("{d:?}").contains("tok3n"));
        // A masked definition is refused as such...
        let err = r.validate().unwrap_err().to_string();
        assert!(
            err.contains(
                "spec.security.sasl.password = \"******\": holds the mask instead of a value"
            ),
            "{err}"
        );
        // ...and restored from the stored one after a console edit.
        let mut edited = r.clone();
        edited.spec.max_records = 10;
        edited.unmask_from(&d);
        let mut expected = d.clone();
        expected.spec.max_records = 10;
        assert_eq!(edited, expected);
    }

    #[test]
    fn sasl_protocol_needs_sasl() {
        let mut d = def(GOOD);
        d.spec.security.sasl = None;
        let err = d.validate().unwrap_err().to_string();
        assert!(
            err.contains("spec.security.sasl: is missing but the protocol uses SASL"),
            "{err}"
        );
    }
}
