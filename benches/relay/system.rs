//! The control plane under test, in this process: the real server (TLS,
//! WebSocket sessions, job assignment, the delivery pipeline with its
//! discard or JSONL sink), with a meter between the session and the
//! delivery pipeline that counts each record once its sink accepted it.
//!
//! Running it here rather than as its own process lets the bench see each
//! acked record the moment it is acked; its CPU time is this process's,
//! reported separately from the agent's.

use crate::meter::{Meter, Stamp};
use anyhow::Context;
use connectivity_control_plane::delivery::{
    Delivery, JobDefinition, JsonlConfig, SinkConfig, ValueFormat, WebhookConfig, WebhookMode,
};
use connectivity_control_plane::{
    BatchOrigin, BatchSink, ControlPlane, ControlPlaneConfig, JobService, Registry, SinkError,
    StartOptions, Submitted,
};
use connectivity_protocol::{Batch, JobSpec};
use futures_util::future::BoxFuture;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "BENCH";
const USER: &str = "bench";
const PASSWORD: &str = "bench-password";

/// Which sink a job's records go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    Discard,
    /// A JSONL file, fsynced after every batch (the default).
    Jsonl,
    /// The bench's HTTP receiver ([`crate::receiver`]), the webhook's
    /// defaults: a POST per partition of a batch, 4 in flight.
    Webhook,
    /// The same receiver, a POST per record, 4 in flight.
    WebhookRecord,
}

pub struct Credentials {
    pub group: &'static str,
    pub user: &'static str,
    pub password: &'static str,
}

/// Counts what the delivery pipeline accepted, then lets the session ack.
/// The pipeline is the control plane's own (set once it started; no batch
/// can arrive before a job exists).
struct MeteredSink {
    delivery: OnceLock<Delivery>,
    meter: Arc<Meter>,
    /// BENCH_TRACE_BATCHES=file: one line per batch (arrival and ack time,
    /// sequence number, records), to see the relay's rhythm (diagnosis only).
    trace: Option<Arc<Trace>>,
    /// BENCH_SERIAL_SESSION=1: hand the session a batch only once it is
    /// delivered, so that it reads no frame meanwhile (diagnosis only).
    serial: bool,
    started: std::time::Instant,
}

impl BatchSink for MeteredSink {
    fn deliver<'a>(
        &'a self,
        origin: &'a BatchOrigin,
        batch: Batch,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move { self.submit(origin, batch).await.await })
    }

    /// As the control plane's own sink: the batch joins its job's queue and
    /// the session reads on while it is delivered.
    #[allow(clippy::async_yields_async)]
    fn submit<'a>(&'a self, _origin: &'a BatchOrigin, batch: Batch) -> BoxFuture<'a, Submitted> {
        Box::pin(async move {
            let failed = |e: SinkError| Box::pin(std::future::ready(Err(e))) as Submitted;
            let bytes: u64 = batch
                .records
                .iter()
                .map(|r| r.value.as_ref().map_or(0, |v| v.len() as u64))
                .sum();
            let stamps = self.stamps(&batch);
            let arrived = self.started.elapsed();
            let (seq, n) = (batch.batch_seq, batch.records.len());
            let Some(delivery) = self.delivery.get() else {
                return failed(SinkError::NoRoute {
                    job_id: batch.job_id,
                });
            };
            let queued = match delivery.enqueue(batch).await {
                Ok(queued) => queued,
                Err(e) => return failed(SinkError::Failed(e.to_string())),
            };
            let (meter, trace) = (self.meter.clone(), self.trace.clone());
            let outcome = Box::pin(async move {
                let ack = queued
                    .outcome()
                    .await
                    .map_err(|e| SinkError::Failed(e.to_string()))?;
                // Duplicates (a resend after a reconnect) are not counted twice.
                meter.add(
                    ack.delivered as u64,
                    if ack.duplicates == 0 { bytes } else { 0 },
                    &stamps,
                );
                if let Some(t) = trace {
                    t.batch(arrived, seq, n);
                }
                Ok(())
            }) as Submitted;
            if self.serial {
                // As a session that waits for each batch before the next.
                let done = outcome.await;
                return Box::pin(std::future::ready(done)) as Submitted;
            }
            outcome
        })
    }
}

impl MeteredSink {
    /// The records' produce times, parsed only while latency is measured
    /// (it costs a little).
    fn stamps(&self, batch: &Batch) -> Vec<Stamp> {
        if !self.meter.wants_latency() {
            return Vec::new();
        }
        batch
            .records
            .iter()
            .filter_map(|r| {
                let (produced_us, seq) = crate::broker::parse(r.value.as_deref()?)?;
                Some(Stamp {
                    produced_us,
                    seq,
                    logged_ms: r.timestamp,
                })
            })
            .collect()
    }
}

/// The BENCH_TRACE_BATCHES file.
struct Trace {
    file: std::sync::Mutex<std::fs::File>,
    started: std::time::Instant,
}

impl Trace {
    /// A batch's line: arrival and ack time (ms since the start), sequence
    /// number, records.
    fn batch(&self, arrived: std::time::Duration, seq: u64, n: usize) {
        use std::io::Write;
        let done = self.started.elapsed();
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            f,
            "{:.3} {:.3} {seq} {n}",
            arrived.as_secs_f64() * 1000.0,
            done.as_secs_f64() * 1000.0
        );
    }
}

pub struct System {
    dir: PathBuf,
    addr: SocketAddr,
    ca_file: PathBuf,
    meter: Arc<Meter>,
    jobs: Arc<JobService>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    handle: Option<ControlPlane>,
    receiver: crate::receiver::Receiver,
}

/// A CA and a certificate for 127.0.0.1 signed by it, as PEM files in `dir`.
fn pki(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "relay bench CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &issuer)?;
    let (ca_file, cert_file, key_file) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    );
    std::fs::write(&ca_file, ca_cert.pem())?;
    std::fs::write(&cert_file, format!("{}{}", cert.pem(), ca_cert.pem()))?;
    std::fs::write(&key_file, key.serialize_pem())?;
    Ok((ca_file, cert_file, key_file))
}

/// Argon2id with the smallest parameters: the bench measures relaying, not logins.
fn weak_hash(secret: &str) -> anyhow::Result<String> {
    use argon2::password_hash::PasswordHasher;
    let params = argon2::Params::new(argon2::Params::MIN_M_COST, 1, 1, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(secret.as_bytes())
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_string(),
    )
}

/// A control plane's config: listening on `listen`, TLS from the files
/// [`pki`] wrote in `tls_dir`, the bench's agent group, agent and console
/// token, then `jobs` (`[[jobs]]` tables) as they are.
pub fn config_text(listen: &str, tls_dir: &Path, jobs: &str) -> anyhow::Result<String> {
    let tls = |name: &str| -> anyhow::Result<String> {
        let p = std::path::absolute(tls_dir.join(name))?;
        Ok(p.display().to_string())
    };
    Ok(format!(
        r#"listen = "{listen}"
state_dir = "state"
shutdown_timeout_ms = 3000

[tls]
cert_file = "{}"
key_file = "{}"

[[groups]]
id = "{GROUP}"

[[users]]
name = "{USER}"
password_hash = "{}"
groups = ["{GROUP}"]

[[console_tokens]]
name = "bench"
token_hash = "{}"
{jobs}"#,
        tls("server.pem")?,
        tls("server-key.pem")?,
        weak_hash(PASSWORD)?,
        weak_hash("bench-console-token")?
    ))
}

impl System {
    /// Start a control plane with its state (config, certificates, job
    /// store) in `dir`, which is emptied first.
    /// `nodelay`: set TCP_NODELAY on the listening socket, which accepted
    /// sockets inherit on Linux (a diagnosis: the control plane as shipped
    /// binds a plain listener).
    pub async fn start(dir: &Path, nodelay: bool) -> anyhow::Result<System> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("state"))?;
        let (ca_file, _, _) = pki(dir)?;
        let config_path = dir.join("control-plane.toml");
        std::fs::write(&config_path, config_text("127.0.0.1:0", dir, "")?)?;
        let config = ControlPlaneConfig::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let meter = Arc::new(Meter::default());
        let started = std::time::Instant::now();
        let trace = match std::env::var_os("BENCH_TRACE_BATCHES") {
            Some(p) => Some(Arc::new(Trace {
                file: std::sync::Mutex::new(std::fs::File::create(p)?),
                started,
            })),
            None => None,
        };
        let sink = Arc::new(MeteredSink {
            delivery: OnceLock::new(),
            meter: meter.clone(),
            trace,
            serial: std::env::var_os("BENCH_SERIAL_SESSION").is_some_and(|v| v == "1"),
            started,
        });
        let socket = tokio::net::TcpSocket::new_v4()?;
        if nodelay {
            socket.set_nodelay(true)?;
        }
        socket.bind("127.0.0.1:0".parse()?)?;
        let listener = socket.listen(1024)?;
        let shutdown = CancellationToken::new();
        let options = StartOptions {
            sink: Some(sink.clone()),
            ..Default::default()
        };
        let handle = ControlPlane::start_with(config, listener, shutdown.clone(), options)
            .await
            .context("starting the control plane")?;
        let jobs = handle.jobs();
        let registry = handle.registry();
        let _ = sink.delivery.set(jobs.delivery().clone());
        Ok(System {
            dir: dir.to_path_buf(),
            receiver: crate::receiver::Receiver::start().await?,
            addr: handle.local_addr(),
            ca_file,
            meter,
            jobs,
            registry,
            shutdown,
            handle: Some(handle),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn ca_file(&self) -> PathBuf {
        self.ca_file.clone()
    }

    /// The directory of its certificates (and config).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn credentials(&self) -> Credentials {
        Credentials {
            group: GROUP,
            user: USER,
            password: PASSWORD,
        }
    }

    /// Requests and connections the webhook receiver has had.
    pub fn received(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        let r = &self.receiver.received;
        (
            r.requests.load(Ordering::Relaxed),
            r.connections.load(Ordering::Relaxed),
        )
    }

    pub fn meter(&self) -> Arc<Meter> {
        self.meter.clone()
    }

    /// Create a job for the bench's agent group; returns the JSONL file, if any.
    pub async fn add_job(
        &self,
        id: &str,
        spec: &JobSpec,
        sink: SinkKind,
        out: &Path,
    ) -> anyhow::Result<Option<PathBuf>> {
        let path = match sink {
            SinkKind::Jsonl => Some(std::path::absolute(
                out.join("sink").join(format!("{id}.jsonl")),
            )?),
            SinkKind::Discard | SinkKind::Webhook | SinkKind::WebhookRecord => None,
        };
        if let Some(p) = &path {
            std::fs::create_dir_all(p.parent().context("sink path has no parent")?)?;
        }
        let webhook = |mode| {
            let c = serde_json::json!({"url": self.receiver.url(), "mode": mode});
            serde_json::from_value::<WebhookConfig>(c).map(SinkConfig::Webhook)
        };
        let def = JobDefinition {
            spec: spec.clone(),
            group: GROUP.into(),
            sink: match (&path, sink) {
                (Some(p), _) => SinkConfig::Jsonl(JsonlConfig {
                    path: p.clone(),
                    fsync: true,
                }),
                (None, SinkKind::Webhook) => webhook(WebhookMode::Batch)?,
                (None, SinkKind::WebhookRecord) => webhook(WebhookMode::Record)?,
                (None, _) => SinkConfig::Discard,
            },
            value_format: ValueFormat::Raw,
            paused: false,
        };
        self.jobs
            .create(def)
            .await
            .map_err(|e| anyhow::anyhow!("creating job {id}: {e}"))?;
        Ok(path)
    }

    /// Bytes of batch frames job `id` sent, as sent and before compression,
    /// from its agent's state once that counts `records` relayed (agents
    /// report every 2 s); `None` if it does not within 10 s.
    pub async fn frame_bytes(&self, id: &str, records: u64) -> Option<(u64, u64)> {
        let end = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let states = self.registry.job_states(id);
            if states.iter().map(|s| s.state.records_relayed).sum::<u64>() >= records {
                return Some(states.iter().fold((0, 0), |(a, b), s| {
                    (a + s.state.bytes_relayed, b + s.state.bytes_uncompressed)
                }));
            }
            if tokio::time::Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub async fn remove_job(&self, id: &str) -> anyhow::Result<()> {
        self.jobs
            .delete(id)
            .await
            .map_err(|e| anyhow::anyhow!("deleting job {id}: {e}"))
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), h.stopped()).await;
        }
    }
}
