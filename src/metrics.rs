//! The agent's Prometheus metrics and health endpoint, served on
//! `agent_METRICS_ADDRESS` (off by default; keep it on loopback).
//!
//! Counters that accumulate (reconnects, batch round trips, errors) live in a
//! process-wide registry; per-job and per-partition values are snapshots of
//! the jobs' own state, refreshed when the session forwards a job state.

use connectivity_protocol::JobState;
use connectivity_protocol::job::{JobPhase, PartitionState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, Mutex};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    job: String,
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubjectLabels {
    subject: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    job: String,
    class: String,
}

struct Metrics {
    registry: Registry,
    session_connected: Gauge,
    reconnects: Counter,
    batch_rtt: Family<JobLabels, Histogram>,
    records: Family<JobLabels, Gauge<u64, AtomicU64>>,
    bytes: Family<JobLabels, Gauge<u64, AtomicU64>>,
    bytes_uncompressed: Family<JobLabels, Gauge<u64, AtomicU64>>,
    acks: Family<JobLabels, Gauge<u64, AtomicU64>>,
    running: Family<JobLabels, Gauge>,
    errors: Family<ErrorLabels, Counter>,
    fetched: Family<PartitionLabels, Gauge>,
    relayed: Family<PartitionLabels, Gauge>,
    acked: Family<PartitionLabels, Gauge>,
    committed: Family<PartitionLabels, Gauge>,
    lag: Family<PartitionLabels, Gauge>,
    control_plane_cert_expiry: Gauge,
    ca_file_expiry: Family<SubjectLabels, Gauge>,
    /// Last error message per job, so a repeated report is not counted twice.
    last_error: Mutex<HashMap<String, String>>,
    /// When each batch was sent: (job, seq) -> instant. Bounded by the windows.
    in_flight: Mutex<HashMap<(String, u64), std::time::Instant>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("connectivity_agent");
    let m = Metrics {
        session_connected: Gauge::default(),
        reconnects: Counter::default(),
        batch_rtt: Family::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        }),
        records: Family::default(),
        bytes: Family::default(),
        bytes_uncompressed: Family::default(),
        acks: Family::default(),
        running: Family::default(),
        errors: Family::default(),
        fetched: Family::default(),
        relayed: Family::default(),
        acked: Family::default(),
        committed: Family::default(),
        lag: Family::default(),
        control_plane_cert_expiry: Gauge::default(),
        ca_file_expiry: Family::default(),
        last_error: Mutex::new(HashMap::new()),
        in_flight: Mutex::new(HashMap::new()),
        registry: Registry::default(),
    };
    registry.register(
        "session_connected",
        "1 while a control-plane session is established",
        m.session_connected.clone(),
    );
    registry.register(
        "reconnects",
        "Sessions lost and re-established",
        m.reconnects.clone(),
    );
    registry.register(
        "batch_round_trip_seconds",
        "Time from sending a batch to its ack",
        m.batch_rtt.clone(),
    );
    registry.register(
        "job_records_relayed",
        "Records sent to the control plane",
        m.records.clone(),
    );
    registry.register(
        "job_bytes_relayed",
        "Bytes of batch frames sent to the control plane, as sent (compressed when the job compresses)",
        m.bytes.clone(),
    );
    registry.register(
        "job_bytes_uncompressed",
        "Bytes of the same batch frames before compression",
        m.bytes_uncompressed.clone(),
    );
    registry.register(
        "job_batches_acked",
        "Batches acked by the control plane",
        m.acks.clone(),
    );
    registry.register("job_running", "1 while the job fetches", m.running.clone());
    registry.register(
        "job_errors",
        "Job errors by class (dns, tcp, tls, sasl, authorization, topic_missing, ...)",
        m.errors.clone(),
    );
    registry.register(
        "partition_fetched_offset",
        "Next offset the consumer fetches",
        m.fetched.clone(),
    );
    registry.register(
        "partition_relayed_offset",
        "Highest offset sent, plus one",
        m.relayed.clone(),
    );
    registry.register(
        "partition_acked_offset",
        "Watermark: every record below it is acked",
        m.acked.clone(),
    );
    registry.register(
        "partition_committed_offset",
        "Offset committed to the consumer group",
        m.committed.clone(),
    );
    registry.register(
        "partition_lag",
        "High watermark minus committed offset",
        m.lag.clone(),
    );
    registry.register(
        "control_plane_certificate_expiry_timestamp_seconds",
        "notAfter of the control plane's certificate seen at the last handshake (Unix seconds)",
        m.control_plane_cert_expiry.clone(),
    );
    registry.register(
        "ca_file_certificate_expiry_timestamp_seconds",
        "notAfter of each certificate in oic_CA_FILE (Unix seconds), by subject",
        m.ca_file_expiry.clone(),
    );
    Metrics { registry, ..m }
});

/// The session is up (or down).
pub fn set_session_connected(up: bool) {
    METRICS.session_connected.set(i64::from(up));
}

pub fn session_connected() -> bool {
    METRICS.session_connected.get() == 1
}

/// `notAfter` of the control plane's certificate, seen at a handshake.
pub fn set_control_plane_cert_expiry(not_after: i64) {
    METRICS.control_plane_cert_expiry.set(not_after);
}

/// `notAfter` of a certificate in `oic_CA_FILE`.
pub fn set_ca_file_expiry(subject: &str, not_after: i64) {
    METRICS
        .ca_file_expiry
        .get_or_create(&SubjectLabels {
            subject: subject.to_owned(),
        })
        .set(not_after);
}

pub fn count_reconnect() {
    METRICS.reconnects.inc();
}

/// A batch left for the control plane.
pub fn batch_sent(job: &str, seq: u64) {
    if let Ok(mut m) = METRICS.in_flight.lock() {
        // Bounded: windows are small; a runaway map means acks never come,
        // and the oldest entries are useless then.
        if m.len() > 10_000 {
            m.clear();
        }
        m.insert((job.to_owned(), seq), std::time::Instant::now());
    }
}

/// Batches that will never be acked (their records are read again after a
/// reconnect and sent in new batches): no round trip to observe.
pub fn batches_abandoned(job: &str, seqs: &[u64]) {
    if let Ok(mut m) = METRICS.in_flight.lock() {
        for seq in seqs {
            m.remove(&(job.to_owned(), *seq));
        }
    }
}

/// The control plane acked a batch.
pub fn batch_acked(job: &str, seq: u64) {
    let sent = METRICS
        .in_flight
        .lock()
        .ok()
        .and_then(|mut m| m.remove(&(job.to_owned(), seq)));
    if let Some(sent) = sent {
        METRICS
            .batch_rtt
            .get_or_create(&JobLabels {
                job: job.to_owned(),
            })
            .observe(sent.elapsed().as_secs_f64());
    }
}

/// Record a job state as it is reported to the control plane.
pub fn observe_job(state: &JobState) {
    let m = &*METRICS;
    let job = JobLabels {
        job: state.job_id.clone(),
    };
    m.records.get_or_create(&job).set(state.records_relayed);
    m.bytes.get_or_create(&job).set(state.bytes_relayed);
    m.bytes_uncompressed
        .get_or_create(&job)
        .set(state.bytes_uncompressed);
    m.acks.get_or_create(&job).set(state.batches_acked);
    m.running
        .get_or_create(&job)
        .set(i64::from(state.phase == JobPhase::Running));
    count_new_error(m, state);
    for p in &state.partitions {
        observe_partition(m, &state.job_id, p);
    }
}

/// Count a job's error once per new message (a state repeats it every
/// report); forget it when the job recovers.
fn count_new_error(m: &Metrics, state: &JobState) {
    let Ok(mut last) = m.last_error.lock() else {
        return;
    };
    match &state.error {
        Some(e) if last.get(&state.job_id) != Some(&e.message) => {
            let class = serde_json::to_value(e.class)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            m.errors
                .get_or_create(&ErrorLabels {
                    job: state.job_id.clone(),
                    class,
                })
                .inc();
            last.insert(state.job_id.clone(), e.message.clone());
        }
        Some(_) => {}
        None => {
            last.remove(&state.job_id);
        }
    }
}

/// A partition's offsets, and its lag when the high watermark is known.
fn observe_partition(m: &Metrics, job: &str, p: &PartitionState) {
    let l = PartitionLabels {
        job: job.to_owned(),
        partition: p.partition.to_string(),
    };
    m.fetched.get_or_create(&l).set(p.fetched);
    m.relayed.get_or_create(&l).set(p.relayed);
    m.acked.get_or_create(&l).set(p.acked);
    m.committed.get_or_create(&l).set(p.committed);
    if let Some(hw) = p.high_watermark {
        m.lag
            .get_or_create(&l)
            .set((hw - p.committed.max(0)).max(0));
    }
}

/// The metrics in Prometheus text format.
pub fn render() -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    out
}

/// Serve `/metrics` and `/healthz` on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<SocketAddr> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(local)
}

/// `GET /metrics`: the Prometheus text format.
async fn metrics_page() -> impl axum::response::IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        render(),
    )
}

/// `GET /healthz`: 200 while a control-plane session is up, 503 otherwise.
async fn healthz() -> impl axum::response::IntoResponse {
    if session_connected() {
        (axum::http::StatusCode::OK, "ok: session established\n")
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not ok: no control-plane session\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(job: &str, seq: u64) -> bool {
        METRICS
            .in_flight
            .lock()
            .unwrap()
            .contains_key(&(job.to_owned(), seq))
    }

    #[test]
    fn abandoned_batches_leave_the_round_trip_map() {
        let job = "metrics-abandoned-test";
        batch_sent(job, 1);
        batch_sent(job, 2);
        batch_sent(job, 3);
        batches_abandoned(job, &[1, 3]);
        assert!(!pending(job, 1) && pending(job, 2) && !pending(job, 3));
        batch_acked(job, 2);
        assert!(!pending(job, 2));
    }
}
