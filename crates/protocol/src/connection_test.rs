//! The connection test's question and answer as they cross the wire: which
//! stream connection to test, and the report of each layer (allow-list,
//! DNS, TCP, TLS, Kafka). The agent runs the test (`kafka::probe`); the
//! control plane only forwards it and shows the report.

use crate::job::{JobError, JobSpec, Security};
use serde::{Deserialize, Serialize};

/// What to test: a stream connection as the console holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionParams {
    pub bootstrap_servers: String,
    /// Topic whose metadata is fetched; without it only the connection and
    /// authentication are tested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default)]
    pub security: Security,
}

impl From<&JobSpec> for ConnectionParams {
    fn from(spec: &JobSpec) -> Self {
        ConnectionParams {
            bootstrap_servers: spec.bootstrap_servers.clone(),
            topic: Some(spec.topic.clone()),
            security: spec.security.clone(),
        }
    }
}

/// The layers tested, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepName {
    AllowList,
    Dns,
    Tcp,
    Tls,
    /// SASL authentication and the topic's metadata, through librdkafka.
    Kafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Passed,
    Failed,
    /// Not run: it does not apply (TLS on PLAINTEXT) or an earlier step failed.
    Skipped,
}

/// A certificate the endpoint presented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// RFC 3339, UTC.
    pub not_before: String,
    pub not_after: String,
    pub expired: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub step: StepName,
    pub status: StepStatus,
    /// What was found (addresses, handshake, partitions) or why it was skipped.
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    pub elapsed_ms: u64,
    /// The chain the endpoint sent (TLS step only), leaf first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertInfo>,
}

/// The result of a connection test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestReport {
    /// No step failed.
    pub ok: bool,
    pub steps: Vec<Step>,
    /// Partitions of the topic, when its metadata was fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<usize>,
    pub elapsed_ms: u64,
}

impl TestReport {
    pub fn step(&self, name: StepName) -> Option<&Step> {
        self.steps.iter().find(|s| s.step == name)
    }

    /// One line for the operator: every step passed, or which step failed
    /// and why (the error's own message, which says how to fix it).
    pub fn summary(&self) -> String {
        if self.ok {
            return format!("all steps passed in {} ms", self.elapsed_ms);
        }
        match self.steps.iter().find(|s| s.status == StepStatus::Failed) {
            Some(s) => match &s.error {
                Some(e) => format!("{} step failed: {}", s.step.as_str(), e.message),
                None => format!("{} step failed: {}", s.step.as_str(), s.detail),
            },
            None => "test did not complete".to_owned(),
        }
    }
}

impl StepName {
    /// The name used on the wire and in the console API.
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::AllowList => "allow_list",
            StepName::Dns => "dns",
            StepName::Tcp => "tcp",
            StepName::Tls => "tls",
            StepName::Kafka => "kafka",
        }
    }
}
