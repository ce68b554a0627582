//! What every librdkafka client of the agent does with librdkafka's log
//! lines and error events: forward them to `tracing` with the job's name,
//! and keep the recent failures so they can be explained (see [`errors`]).
//!
//! [`errors`]: crate::kafka::errors

use crate::kafka::errors::ErrorLog;
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;

/// Record a librdkafka log line: warnings and worse are kept for
/// classification (they carry the reason, e.g. "SSL handshake failed").
pub fn on_log(errors: &ErrorLog, job: &str, level: RDKafkaLogLevel, fac: &str, line: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            errors.record(None, line);
            tracing::warn!(job, fac, "librdkafka: {line}");
        }
        RDKafkaLogLevel::Warning => {
            errors.record(None, line);
            tracing::info!(job, fac, "librdkafka: {line}");
        }
        _ => tracing::debug!(job, fac, "librdkafka: {line}"),
    }
}

/// Record a librdkafka error event with its code and reason.
pub fn on_error(errors: &ErrorLog, job: &str, error: &KafkaError, reason: &str) {
    errors.record(error.rdkafka_error_code(), reason);
    tracing::debug!(job, %error, "librdkafka error: {reason}");
}

/// A context that only captures failures: for short-lived clients such as
/// the connection test.
#[derive(Clone, Default)]
pub struct CaptureContext {
    pub errors: ErrorLog,
    /// Shown in log lines (a job id or "connection-test").
    pub label: String,
}

impl ClientContext for CaptureContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, line: &str) {
        on_log(&self.errors, &self.label, level, fac, line);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        on_error(&self.errors, &self.label, &error, reason);
    }
}

impl ConsumerContext for CaptureContext {}
