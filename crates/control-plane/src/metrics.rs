//! `GET /metrics`: the control plane's Prometheus metrics (text format),
//! behind the console token like the console API.
//!
//! Events (sessions opened, batches received, delivery latency, commands,
//! refused logins) are counted as they happen; levels (agents by state,
//! open sessions, each job's delivery counters) are read from the registry
//! and the delivery pipeline at each scrape, so they cannot drift.

use super::jobs::JobService;
use super::registry::Registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn job(id: &str) -> Labels {
    vec![("job", id.to_owned())]
}

/// Every metric of the control plane.
pub struct Metrics {
    registry: prometheus_client::registry::Registry,
    /// Serialises scrapes (levels are set, then encoded).
    scrape: Mutex<()>,
    agents: Family<Labels, Gauge>,
    sessions: Gauge,
    sessions_opened: Counter,
    auth_failures: Counter,
    commands: Family<Labels, Counter>,
    batches_received: Family<Labels, Counter>,
    records_received: Family<Labels, Counter>,
    delivery_latency: HistogramFamily,
    records_delivered: Family<Labels, Counter>,
    batches_acked: Family<Labels, Counter>,
    duplicates_dropped: Family<Labels, Counter>,
    sink_errors: Family<Labels, Counter>,
    queued_batches: Family<Labels, Gauge>,
    certificate_expiry: Gauge,
    certificate_refusals: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = prometheus_client::registry::Registry::with_prefix("control_plane");
        let m = Metrics {
            scrape: Mutex::new(()),
            agents: Family::default(),
            sessions: Gauge::default(),
            sessions_opened: Counter::default(),
            auth_failures: Counter::default(),
            commands: Family::default(),
            batches_received: Family::default(),
            records_received: Family::default(),
            delivery_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            records_delivered: Family::default(),
            batches_acked: Family::default(),
            duplicates_dropped: Family::default(),
            sink_errors: Family::default(),
            queued_batches: Family::default(),
            certificate_expiry: Gauge::default(),
            certificate_refusals: Family::default(),
            registry: prometheus_client::registry::Registry::default(),
        };
        m.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Every metric under its name and help text: a flat list, long because
    /// there are that many metrics.
    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let m = self;
        registry.register("agents", "Agents known, by console state (connected, draining, reconnecting, auth_failing, version_refused, refused, gone)", m.agents.clone());
        registry.register("sessions", "Open agent sessions", m.sessions.clone());
        registry.register(
            "sessions_opened",
            "Agent sessions welcomed since start",
            m.sessions_opened.clone(),
        );
        registry.register(
            "agent_auth_failures",
            "Agent logins refused since start",
            m.auth_failures.clone(),
        );
        registry.register("commands", "Console commands sent to agents, by command and result (ok, failed, timeout, disconnected)", m.commands.clone());
        registry.register(
            "batches_received",
            "Batches received from agents, by job",
            m.batches_received.clone(),
        );
        registry.register(
            "records_received",
            "Records received from agents, by job",
            m.records_received.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Time from a batch's arrival to its ack (sink included), by job",
            m.delivery_latency.clone(),
        );
        registry.register(
            "records_delivered",
            "Records the job's sink took (duplicates excluded), since start",
            m.records_delivered.clone(),
        );
        registry.register(
            "batches_acked",
            "Batches acked to agents, by job, since start",
            m.batches_acked.clone(),
        );
        registry.register(
            "duplicates_dropped",
            "Records dropped as already delivered, by job, since start",
            m.duplicates_dropped.clone(),
        );
        registry.register(
            "sink_errors",
            "Failed sink attempts, by job, since start",
            m.sink_errors.clone(),
        );
        registry.register(
            "queued_batches",
            "Batches waiting for the job's sink",
            m.queued_batches.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "notAfter of the certificate in tls.cert_file (Unix seconds)",
            m.certificate_expiry.clone(),
        );
        registry.register(
            "tls_certificate_refusals",
            "TLS handshakes in which the client refused the certificate, by the alert it sent",
            m.certificate_refusals.clone(),
        );
    }

    /// `notAfter` of the server certificate, set at start.
    pub fn set_certificate_expiry(&self, not_after: i64) {
        self.certificate_expiry.set(not_after);
    }

    /// A client ended a handshake with a certificate alert.
    pub fn certificate_refused(&self, alert: rustls::AlertDescription) {
        self.certificate_refusals
            .get_or_create(&vec![("alert", format!("{alert:?}"))])
            .inc();
    }

    pub fn session_opened(&self) {
        self.sessions_opened.inc();
    }

    pub fn auth_failed(&self) {
        self.auth_failures.inc();
    }

    /// A console command ended: `result` is ok, failed, timeout or disconnected.
    pub fn command(&self, command: &'static str, result: &'static str) {
        self.commands
            .get_or_create(&vec![
                ("command", command.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
    }

    /// A batch arrived from an agent and was acked (`acked`) or not after `took`.
    pub fn batch(&self, job_id: &str, records: usize, took: Duration, acked: bool) {
        let labels = job(job_id);
        self.batches_received.get_or_create(&labels).inc();
        self.records_received
            .get_or_create(&labels)
            .inc_by(records as u64);
        if acked {
            self.delivery_latency
                .get_or_create(&labels)
                .observe(took.as_secs_f64());
        }
    }

    /// Forget a deleted job's series.
    pub fn forget_job(&self, job_id: &str) {
        let labels = job(job_id);
        self.batches_received.remove(&labels);
        self.records_received.remove(&labels);
        self.delivery_latency.remove(&labels);
    }

    /// The text exposition, levels read now.
    pub fn render(&self, registry: &Registry, jobs: &JobService) -> String {
        let _one_at_a_time = self
            .scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.agents.clear();
        for (state, n) in registry.health_counts(None) {
            self.agents
                .get_or_create(&vec![("state", state.to_owned())])
                .set(n as i64);
        }
        self.sessions.set(
            registry
                .list(None)
                .iter()
                .filter(|a| a.state == super::AgentState::Connected)
                .count() as i64,
        );
        for f in [
            &self.records_delivered,
            &self.batches_acked,
            &self.duplicates_dropped,
            &self.sink_errors,
        ] {
            f.clear();
        }
        self.queued_batches.clear();
        let delivery = jobs.delivery();
        for j in delivery.jobs() {
            let id = &j.definition.spec.id;
            let Some(s) = delivery.stats(id) else {
                continue;
            };
            let labels = job(id);
            let set = |f: &Family<Labels, Counter>, v: u64| {
                f.get_or_create(&labels).inner().store(v, Ordering::Relaxed)
            };
            set(&self.records_delivered, s.records_delivered);
            set(&self.batches_acked, s.batches_acked);
            set(&self.duplicates_dropped, s.duplicates_dropped);
            set(&self.sink_errors, s.sink_errors);
            self.queued_batches
                .get_or_create(&labels)
                .set(s.queued_batches as i64);
        }
        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%err, "cannot encode metrics");
        }
        out
    }
}
