//! The measurements: drain a filled topic (ceiling and relay), latency at a
//! fixed rate, the idle agent, and memory over a long run.

use crate::agent::{Agent, ProfileArgs};
use crate::broker::{self, Broker, Payload};
use crate::ceiling::{self, Settings};
use crate::cp_process::ControlPlaneProcess;
use crate::floor;
use crate::meter::{self, Latency, Meter};
use crate::procstat::{self, Sample};
use crate::proxy::{self, Link};
use crate::system::{SinkKind, System};
use crate::{gc, paced, report};
use anyhow::{Context, bail};
use connectivity_protocol::job::Compression;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a relay may make no progress before the run is declared stuck.
const PATIENCE: Duration = Duration::from_secs(60);
/// Longest wait for the consumer group's commits to reach the end.
const COMMIT_PATIENCE: Duration = Duration::from_secs(20);
const MIB: f64 = 1024.0 * 1024.0;

/// Job fields a diagnosis run may change (`None`: the job default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tuning {
    pub window: Option<u32>,
    pub window_bytes: Option<u64>,
    pub max_wait_ms: Option<u64>,
    pub max_records: Option<u32>,
}

/// Everything a scenario needs.
pub struct Ctx {
    pub broker: Broker,
    pub tuning: Tuning,
    pub broker_port: u16,
    pub system: System,
    pub agent_bin: PathBuf,
    /// The `control-plane` binary, for [`drain_relay_process`].
    pub cp_bin: PathBuf,
    pub out: PathBuf,
    seq: AtomicU64,
    stamp: String,
}

impl Ctx {
    pub fn new(
        broker: Broker,
        system: System,
        agent_bin: PathBuf,
        cp_bin: PathBuf,
        out: PathBuf,
        tuning: Tuning,
    ) -> anyhow::Result<Ctx> {
        let broker_port = broker
            .bootstrap
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .context("broker address has no port")?;
        let stamp = format!("{:x}", broker::now_us() / 1_000_000);
        Ok(Ctx {
            broker,
            tuning,
            broker_port,
            system,
            agent_bin,
            cp_bin,
            out,
            seq: AtomicU64::new(0),
            stamp,
        })
    }

    /// The spec of a relay job: defaults, plus any [`Tuning`].
    fn job_spec(&self, id: &str, topic: &str, group: &str) -> connectivity_protocol::JobSpec {
        let mut spec = ceiling::job_spec(id, &self.broker, topic, group);
        let t = &self.tuning;
        spec.window = t.window.unwrap_or(spec.window);
        spec.window_bytes = t.window_bytes.unwrap_or(spec.window_bytes);
        spec.max_wait_ms = t.max_wait_ms.unwrap_or(spec.max_wait_ms);
        spec.max_records = t.max_records.unwrap_or(spec.max_records);
        spec
    }

    /// A name no earlier run against the same broker used.
    pub fn unique(&self, what: &str) -> String {
        format!(
            "bench-{what}-{}-{}",
            self.stamp,
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn broker_cpu(&self) -> Option<f64> {
        self.broker
            .pid
            .and_then(|p| procstat::sample(&p.to_string()).ok())
            .map(|s| s.cpu_s)
    }

    fn start_agent(&self, name: &str, url: String) -> anyhow::Result<Agent> {
        let dir = self.out.join("agents").join(name);
        let creds = self.system.credentials();
        Agent::start(
            &self.agent_bin,
            &dir,
            &ProfileArgs {
                url,
                ca_file: &self.system.ca_file(),
                group: creds.group,
                user: creds.user,
                password: creds.password,
                broker: &self.broker.bootstrap,
            },
        )
    }
}

/// A topic filled for the drain scenarios.
pub struct Filled {
    pub topic: String,
    pub size: usize,
    pub partitions: i32,
    pub records: u64,
    pub end: Vec<i64>,
    pub fill_rec_per_s: f64,
    pub payload: Payload,
}

/// A new topic filled with `records` of `size` bytes holding words.
pub async fn fill(ctx: &Ctx, size: usize, partitions: i32, records: u64) -> anyhow::Result<Filled> {
    fill_with(ctx, size, partitions, records, Payload::Words).await
}

pub async fn fill_with(
    ctx: &Ctx,
    size: usize,
    partitions: i32,
    records: u64,
    payload: Payload,
) -> anyhow::Result<Filled> {
    let topic = ctx.unique(&format!("{size}b-{partitions}p"));
    ctx.broker.create_topic(&topic, partitions).await?;
    let (b, t) = (ctx.broker.clone(), topic.clone());
    let took = tokio::task::spawn_blocking(move || b.fill(&t, partitions, size, records, payload))
        .await??;
    let end = ctx.broker.end_offsets(&topic, partitions)?;
    let total: i64 = end.iter().sum();
    if total as u64 != records {
        bail!("topic {topic} holds {total} records after filling {records}");
    }
    Ok(Filled {
        topic,
        size,
        partitions,
        records,
        end,
        fill_rec_per_s: records as f64 / took.as_secs_f64(),
        payload,
    })
}

fn run(f: &Filled, consumer: &str) -> report::Run {
    report::Run {
        part: report::THROUGHPUT.into(),
        size: f.size,
        partitions: f.partitions,
        consumer: consumer.to_owned(),
        records: f.records,
        payload: Some(f.payload.name().into()),
        ..Default::default()
    }
}

/// A bare rdkafka consumer drains the topic.
pub async fn drain_rdkafka(
    ctx: &Ctx,
    f: &Filled,
    settings: Settings,
) -> anyhow::Result<report::Run> {
    let (b, t, g, n) = (
        ctx.broker.clone(),
        f.topic.clone(),
        ctx.unique("group"),
        f.records,
    );
    let broker0 = ctx.broker_cpu();
    let d =
        tokio::task::spawn_blocking(move || ceiling::rdkafka(&b, &t, &g, n, settings)).await??;
    let name = match settings {
        Settings::Defaults => report::RDKAFKA.to_owned(),
        Settings::Agent => report::RDKAFKA_AGENT.to_owned(),
        Settings::AgentQueueBackoff(ms) => {
            format!("{} + fetch.queue.backoff.ms={ms}", report::RDKAFKA_AGENT)
        }
    };
    let mut r = run(f, &name);
    r.set_rate(d.records, d.bytes, d.secs);
    r.consumer_cpu_s = Some(d.cpu_s);
    r.broker_cpu_s = delta(broker0, ctx.broker_cpu());
    Ok(r)
}

/// The floor: the bare consumer writing batch frames over a TLS pipe
/// (`floor.rs`).
pub async fn drain_floor(ctx: &Ctx, f: &Filled) -> anyhow::Result<report::Run> {
    let (b, t, g, n) = (
        ctx.broker.clone(),
        f.topic.clone(),
        ctx.unique("group"),
        f.records,
    );
    let tls_dir = ctx
        .system
        .ca_file()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let broker0 = ctx.broker_cpu();
    let d = tokio::task::spawn_blocking(move || floor::tls_pipe(&b, &t, &g, n, &tls_dir)).await??;
    let mut r = run(f, report::FLOOR);
    r.set_rate(d.records, d.bytes, d.secs);
    r.consumer_cpu_s = Some(d.cpu_s);
    r.broker_cpu_s = delta(broker0, ctx.broker_cpu());
    Ok(r)
}

pub async fn drain_kcat(ctx: &Ctx, f: &Filled) -> anyhow::Result<report::Run> {
    let (b, t, n) = (ctx.broker.clone(), f.topic.clone(), f.records);
    let d = tokio::task::spawn_blocking(move || ceiling::kcat(&b, &t, n)).await??;
    let mut r = run(f, report::KCAT);
    r.set_rate(d.records, d.records * f.size as u64, d.secs);
    r.consumer_cpu_s = Some(d.cpu_s);
    Ok(r)
}

fn delta(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(b? - a?)
}

/// Wait until the group has committed the end of every partition.
async fn wait_committed(
    ctx: &Ctx,
    group: &str,
    topic: &str,
    end: &[i64],
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + COMMIT_PATIENCE;
    loop {
        let got = committed(ctx, group, topic, end.len()).await?;
        if got.iter().zip(end).all(|(c, e)| c >= e) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!(
                "group {group} committed {got:?}, expected {end:?}, {COMMIT_PATIENCE:?} after the last ack"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The relay connected directly, without compression.
pub async fn drain_relay_direct(
    ctx: &Ctx,
    f: &Filled,
    sink: SinkKind,
) -> anyhow::Result<report::Run> {
    drain_relay(ctx, f, sink, None, Compression::None).await
}

/// The relay drains the topic: agent process + control plane + `sink`,
/// optionally through a proxy that models the `link` between them, with the
/// job's `compression`. Counts records the sink accepted (and so the control
/// plane acked), then checks the agent committed all of them.
pub async fn drain_relay(
    ctx: &Ctx,
    f: &Filled,
    sink: SinkKind,
    link: Option<Link>,
    compression: Compression,
) -> anyhow::Result<report::Run> {
    drain_relay_batches(ctx, f, sink, link, compression, None).await
}

/// [`drain_relay`] with batches of up to `max_records` (and bytes to match:
/// 2 KiB a record, at most the 8 MiB a batch may hold).
pub async fn drain_relay_batches(
    ctx: &Ctx,
    f: &Filled,
    sink: SinkKind,
    link: Option<Link>,
    compression: Compression,
    max_records: Option<u32>,
) -> anyhow::Result<report::Run> {
    let meter = ctx.system.meter();
    meter.reset();
    let (job, group) = (ctx.unique("job"), ctx.unique("group"));
    let mut spec = ctx.job_spec(&job, &f.topic, &group);
    spec.compression = compression;
    if let Some(n) = max_records {
        spec.max_records = n;
        spec.max_bytes = (n.saturating_mul(f.size as u32 + 1024)).min(8 << 20);
    }
    let sink_path = ctx.system.add_job(&job, &spec, sink, &ctx.out).await?;
    let proxy = match link {
        Some(l) => Some(proxy::start(ctx.system.addr(), l).await?),
        None => None,
    };
    let url = format!(
        "https://127.0.0.1:{}",
        proxy.as_ref().map_or(ctx.system.addr(), |p| p.addr).port()
    );
    // The control plane's memory is measured from here on. What the
    // harness freed (the filler's producer buffers) is handed back first, so
    // the peak is the control plane's plus what the harness still holds.
    connectivity_common::memory::release();
    procstat::reset_peak_rss("self");
    let mut agent = ctx.start_agent(&job, url)?;

    let (first, last) = wait_relayed(ctx, &meter, &mut agent, f.records).await?;
    let c = meter.count();
    let committed_at = wait_committed(ctx, &group, &f.topic, &f.end).await?;
    let mut r = run(f, relay_name(sink, link));
    if compression != Compression::None {
        r.compression = Some(compression.as_str().into());
    }
    if let Some((sent, raw)) = ctx.system.frame_bytes(&job, c.records).await {
        r.frame_mib = Some(sent as f64 / MIB);
        r.frame_raw_mib = Some(raw as f64 / MIB);
    }
    r.set_rate(c.records, c.bytes, c.span_s());
    first_to_last(&mut r, first.as_ref(), &last, c.records);
    r.commit_after_s = c
        .last
        .map(|l| committed_at.saturating_duration_since(l).as_secs_f64());

    let stop = tokio::task::spawn_blocking(move || agent.stop(Duration::from_secs(30))).await??;
    r.stop_s = Some(stop.as_secs_f64());
    drop(proxy);
    ctx.system.remove_job(&job).await?;
    if let Some(p) = sink_path {
        r.sink_file_mib = std::fs::metadata(&p).ok().map(|m| m.len() as f64 / MIB);
        let _ = std::fs::remove_file(&p);
    }
    Ok(r)
}

/// The relay into the `control-plane` binary as its own process, JSONL
/// sink: its CPU and peak RSS (VmHWM over its whole life) apart from the
/// harness's. Timed from the sink file's first growth to its last; every
/// line is counted at the end.
pub async fn drain_relay_process(ctx: &Ctx, f: &Filled) -> anyhow::Result<report::Run> {
    let (job, group) = (ctx.unique("job"), ctx.unique("group"));
    let spec = ctx.job_spec(&job, &f.topic, &group);
    let sink = std::path::absolute(ctx.out.join("sink").join(format!("{job}.jsonl")))?;
    std::fs::create_dir_all(sink.parent().context("sink path has no parent")?)?;
    let dir = ctx.out.join("control-plane-process");
    let cp = ControlPlaneProcess::start(&ctx.cp_bin, &dir, ctx.system.dir(), &spec, &sink).await?;
    let mut agent = ctx.start_agent(&job, cp.url())?;
    let watched = watch_sink(ctx, &cp, &mut agent, &sink, &group, f).await;
    let stop = tokio::task::spawn_blocking(move || agent.stop(Duration::from_secs(30))).await?;
    let (first, last) = match watched {
        Ok(w) => w,
        Err(e) => bail!("{e:#}\ncontrol plane log:\n{}", cp.log_tail()),
    };
    let cp_hwm = cp.sample()?.hwm_kib;
    tokio::task::spawn_blocking(move || cp.stop()).await??;
    let lines = count_lines(&sink)?;
    let _ = std::fs::remove_file(&sink);
    if lines != f.records {
        bail!(
            "{} holds {lines} lines, expected {}",
            sink.display(),
            f.records
        );
    }
    let mut r = run(f, report::RELAY_JSONL_PROCESS);
    let secs = last.at.duration_since(first.at).as_secs_f64();
    r.set_rate(f.records, f.records * f.size as u64, secs);
    let agent_cpu = last.agent.cpu_s - first.agent.cpu_s;
    r.consumer_cpu_s = Some(agent_cpu);
    r.consumer_cpu_total_s = Some(last.agent.cpu_s);
    r.cpu_s_per_m = Some(agent_cpu / (f.records as f64 / 1e6));
    r.peak_rss_mib = Some(last.agent.hwm_kib as f64 / 1024.0);
    r.cp_cpu_s = Some(last.cp.cpu_s - first.cp.cpu_s);
    r.cp_peak_rss_mib = Some(cp_hwm as f64 / 1024.0);
    r.stop_s = Some(stop?.as_secs_f64());
    Ok(r)
}

/// The moment the sink file grew, and the two processes' resources then.
struct Growth {
    at: Instant,
    cp: Sample,
    agent: Sample,
}

/// Follow the sink file's size until the group has committed the end of
/// every partition (which follows the last ack, so the last write); the
/// first and the last growth seen.
async fn watch_sink(
    ctx: &Ctx,
    cp: &ControlPlaneProcess,
    agent: &mut Agent,
    sink: &Path,
    group: &str,
    f: &Filled,
) -> anyhow::Result<(Growth, Growth)> {
    let (mut first, mut last, mut size) = (None, None, 0);
    let started = Instant::now();
    let mut next_check = started;
    loop {
        let now = std::fs::metadata(sink).map_or(0, |m| m.len());
        if now != size {
            size = now;
            let g = Growth {
                at: Instant::now(),
                cp: cp.sample()?,
                agent: agent.sample()?,
            };
            if first.is_none() {
                first = Some(g);
            } else {
                last = Some(g);
            }
        }
        if Instant::now() >= next_check {
            next_check += Duration::from_millis(200);
            if committed_end(ctx, group, f).await? {
                return match (first, last) {
                    (Some(first), Some(last)) => Ok((first, last)),
                    _ => bail!("the group committed the end, but the sink file grew at most once"),
                };
            }
        }
        let progress = last.as_ref().or(first.as_ref()).map_or(started, |g| g.at);
        if progress.elapsed() > PATIENCE {
            bail!(
                "the sink file stopped at {size} bytes; agent log:\n{}",
                agent.log_tail()
            );
        }
        if !agent.alive() {
            bail!("agent exited; its log:\n{}", agent.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether the group has committed the end of every partition.
async fn committed_end(ctx: &Ctx, group: &str, f: &Filled) -> anyhow::Result<bool> {
    let got = committed(ctx, group, &f.topic, f.end.len()).await?;
    Ok(got.iter().zip(&f.end).all(|(c, e)| c >= e))
}

/// The offsets the group has committed on the first `partitions` of `topic`.
async fn committed(
    ctx: &Ctx,
    group: &str,
    topic: &str,
    partitions: usize,
) -> anyhow::Result<Vec<i64>> {
    let (b, g, t) = (ctx.broker.clone(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || b.committed(&g, &t, partitions as i32)).await?
}

/// Lines in a file, read in 8 MiB pieces.
fn count_lines(path: &Path) -> anyhow::Result<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 8 << 20];
    let mut lines = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// CPU seconds of the agent (and its memory), of this process and of the
/// broker, at one moment.
struct Usage {
    agent: Sample,
    this: Option<f64>,
    this_hwm_kib: Option<u64>,
    broker: Option<f64>,
}

impl Usage {
    fn now(ctx: &Ctx, agent: &Agent) -> anyhow::Result<Usage> {
        let this = procstat::sample("self").ok();
        Ok(Usage {
            agent: agent.sample()?,
            this: this.map(|s| s.cpu_s),
            this_hwm_kib: this.map(|s| s.hwm_kib),
            broker: ctx.broker_cpu(),
        })
    }
}

/// Wait until the sink has `records`; bail out if the relay makes no
/// progress for [`PATIENCE`] or the agent exits. The resources used at the
/// first record out (if any came) and at the last.
async fn wait_relayed(
    ctx: &Ctx,
    meter: &Meter,
    agent: &mut Agent,
    records: u64,
) -> anyhow::Result<(Option<Usage>, Usage)> {
    let mut first = None;
    let mut last_progress = (0u64, Instant::now());
    loop {
        let c = meter.count();
        if c.records > 0 && first.is_none() {
            first = Some(Usage::now(ctx, agent)?);
        }
        if c.records >= records {
            break;
        }
        if c.records != last_progress.0 {
            last_progress = (c.records, Instant::now());
        } else if last_progress.1.elapsed() > PATIENCE {
            bail!(
                "relay stuck at {} of {records} records; agent log:\n{}",
                c.records,
                agent.log_tail()
            );
        }
        if !agent.alive() {
            bail!("agent exited; its log:\n{}", agent.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((first, Usage::now(ctx, agent)?))
}

/// The resources a relay run used from the first record out to the last
/// (and the agent's CPU over its whole life).
fn first_to_last(r: &mut report::Run, first: Option<&Usage>, last: &Usage, records: u64) {
    let cpu = last.agent.cpu_s - first.map_or(0.0, |u| u.agent.cpu_s);
    r.consumer_cpu_s = Some(cpu);
    r.consumer_cpu_total_s = Some(last.agent.cpu_s);
    r.cpu_s_per_m = Some(cpu / (records as f64 / 1e6));
    r.peak_rss_mib = Some(last.agent.hwm_kib as f64 / 1024.0);
    r.cp_cpu_s = delta(first.and_then(|u| u.this), last.this);
    r.cp_peak_rss_mib = last.this_hwm_kib.map(|k| k as f64 / 1024.0);
    r.broker_cpu_s = delta(first.and_then(|u| u.broker), last.broker);
}

/// The consumer column of a relay run.
fn relay_name(sink: SinkKind, link: Option<Link>) -> &'static str {
    match (sink, link) {
        (SinkKind::Discard, None) => report::RELAY_DISCARD,
        (SinkKind::Jsonl, None) => report::RELAY_JSONL,
        (SinkKind::Discard, Some(l)) if l.bytes_per_s.is_some() => report::RELAY_DISCARD_LINK,
        (SinkKind::Discard, Some(l)) if l.one_way.is_zero() => report::RELAY_DISCARD_PROXY,
        (SinkKind::Discard, Some(_)) => report::RELAY_DISCARD_RTT,
        (SinkKind::Jsonl, Some(_)) => "relay -> jsonl, through the proxy",
        (SinkKind::Webhook, _) => report::RELAY_WEBHOOK,
        (SinkKind::WebhookRecord, _) => report::RELAY_WEBHOOK_RECORD,
    }
}

/// Which consumer a latency run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    Bare,
    Relay,
    /// The relay into the webhook receiver.
    RelayWebhook,
}

/// Records produced at `rate`/s; the latency of `rate * secs` of them from
/// produce to the sink (relay) or to the consumer (bare).
pub async fn latency(
    ctx: &Ctx,
    size: usize,
    partitions: i32,
    rate: u64,
    secs: f64,
    consumer: Consumer,
    settle: Duration,
) -> anyhow::Result<report::LatencyRun> {
    let topic = ctx.unique(&format!("lat-{rate}"));
    // The broker stamps each record with its append time: the latency tail
    // splits into before the log and after it.
    ctx.broker.create_log_time_topic(&topic, partitions).await?;
    let meter = match consumer {
        Consumer::Bare => Arc::new(Meter::default()),
        Consumer::Relay | Consumer::RelayWebhook => ctx.system.meter(),
    };
    meter.reset();
    let consuming = Consuming::start(ctx, consumer, &topic, &meter).await?;
    let producer = paced::start(&ctx.broker, &topic, partitions, size, rate)?;
    let want = (rate as f64 * secs).round() as u64;
    let result = measure_latency(&meter, &producer, consuming.agent.as_ref(), want, settle).await;
    let (_, achieved) = producer.stop()?;
    let log = consuming.stop(ctx).await?;
    ctx.broker.delete_topic(&topic).await?;
    let (samples, agent_use) =
        result.with_context(|| format!("latency at {rate}/s; agent log:\n{log}"))?;
    // Read after the run: the JVM writes a pause's line when it ends.
    let tail = ctx
        .broker
        .gc_log
        .as_ref()
        .map(|log| gc::tail(&samples, &gc::read(log)));
    let lat = Latency::of(samples.into_iter().map(|s| s.latency_us).collect());
    Ok(report::LatencyRun {
        rate,
        achieved_rate: achieved,
        size,
        partitions,
        consumer: match consumer {
            Consumer::Bare => report::RDKAFKA.to_owned(),
            Consumer::Relay => report::RELAY_DISCARD.to_owned(),
            Consumer::RelayWebhook => report::RELAY_WEBHOOK.to_owned(),
        },
        latency: lat,
        tail,
        agent_cpu_pct: agent_use.map(|a| a.0),
        agent_peak_rss_mib: agent_use.map(|a| a.1),
    })
}

/// What consumes a latency run's topic: a bare consumer on its own thread,
/// or the agent with a relay job.
struct Consuming {
    stop: Arc<AtomicBool>,
    bare: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    agent: Option<Agent>,
    job: Option<String>,
}

impl Consuming {
    async fn start(
        ctx: &Ctx,
        consumer: Consumer,
        topic: &str,
        meter: &Arc<Meter>,
    ) -> anyhow::Result<Consuming> {
        let group = ctx.unique("group");
        let stop = Arc::new(AtomicBool::new(false));
        let mut consuming = Consuming {
            stop: stop.clone(),
            bare: None,
            agent: None,
            job: None,
        };
        match consumer {
            Consumer::Bare => {
                let (b, t, m) = (ctx.broker.clone(), topic.to_owned(), meter.clone());
                consuming.bare = Some(std::thread::spawn(move || {
                    ceiling::consume_into(&b, &t, &group, Settings::Defaults, m, stop)
                }));
            }
            Consumer::Relay | Consumer::RelayWebhook => {
                let id = ctx.unique("job");
                let spec = ctx.job_spec(&id, topic, &group);
                let sink = match consumer {
                    Consumer::RelayWebhook => SinkKind::Webhook,
                    _ => SinkKind::Discard,
                };
                ctx.system.add_job(&id, &spec, sink, &ctx.out).await?;
                consuming.agent = Some(ctx.start_agent(&id, ctx.system.url())?);
                consuming.job = Some(id);
            }
        }
        Ok(consuming)
    }

    /// Stop consuming and remove the job; the agent's log, if there was one.
    async fn stop(self, ctx: &Ctx) -> anyhow::Result<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.bare {
            h.join()
                .map_err(|_| anyhow::anyhow!("bare consumer panicked"))??;
        }
        let log = self.agent.as_ref().map(Agent::log_tail).unwrap_or_default();
        if let Some(a) = self.agent {
            tokio::task::spawn_blocking(move || a.stop(Duration::from_secs(30))).await??;
        }
        if let Some(j) = self.job {
            ctx.system.remove_job(&j).await?;
        }
        Ok(log)
    }
}

/// Once records come through and `settle` has passed, the latency of the
/// next `want` records produced; with an agent, its CPU (% of a core)
/// meanwhile and its peak RSS (MiB).
async fn measure_latency(
    meter: &Meter,
    producer: &paced::Paced,
    agent: Option<&Agent>,
    want: u64,
    settle: Duration,
) -> anyhow::Result<(Vec<meter::Sample>, Option<(f64, f64)>)> {
    if !meter::wait_for(|| meter.count().records > 0, || 0, Duration::from_secs(60)).await {
        bail!("no record came through within 60 s");
    }
    tokio::time::sleep(settle).await;
    let from = producer.sent();
    meter.measure(from, from + want);
    let cpu0 = agent.map(|a| a.sample()).transpose()?;
    let t0 = Instant::now();
    if !meter::wait_for(
        || meter.measured() as u64 >= want,
        || meter.measured() as u64,
        Duration::from_secs(30),
    )
    .await
    {
        bail!(
            "only {} of {want} measured records arrived",
            meter.measured()
        );
    }
    let took = t0.elapsed().as_secs_f64();
    let cpu1 = agent.map(|a| a.sample()).transpose()?;
    let agent_use = cpu0.zip(cpu1).map(|(a, b)| {
        (
            (b.cpu_s - a.cpu_s) / took * 100.0,
            b.hwm_kib as f64 / 1024.0,
        )
    });
    Ok((meter.take_samples(), agent_use))
}

/// An agent with a job on an idle topic: its CPU use and the requests it
/// sends the broker, over `secs`.
pub async fn idle(ctx: &Ctx, partitions: i32, secs: f64) -> anyhow::Result<report::IdleRun> {
    let topic = ctx.unique("idle");
    ctx.broker.create_topic(&topic, partitions).await?;
    let meter = ctx.system.meter();
    meter.reset();
    let (job, group) = (ctx.unique("job"), ctx.unique("group"));
    ctx.system
        .add_job(
            &job,
            &ctx.job_spec(&job, &topic, &group),
            SinkKind::Discard,
            &ctx.out,
        )
        .await?;
    let agent = ctx.start_agent(&job, ctx.system.url())?;
    // One record per partition proves the job runs; then let it settle
    // (batch sealed, acked, committed) before measuring.
    let b = ctx.broker.clone();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || {
        b.fill(&t, partitions, 100, partitions as u64, Payload::Words)
    })
    .await??;
    let ok = meter::wait_for(
        || meter.count().records >= partitions as u64,
        || meter.count().records,
        Duration::from_secs(60),
    )
    .await;
    let result = async {
        if !ok {
            bail!(
                "the idle job relayed {} of {partitions} records",
                meter.count().records
            );
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (s0, seg0) = (
            agent.sample()?,
            procstat::data_segments_to(agent.pid, ctx.broker_port)?,
        );
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let (s1, seg1) = (
            agent.sample()?,
            procstat::data_segments_to(agent.pid, ctx.broker_port)?,
        );
        let took = t0.elapsed().as_secs_f64();
        Ok(report::IdleRun {
            partitions,
            secs: took,
            cpu_pct_of_core: (s1.cpu_s - s0.cpu_s) / took * 100.0,
            requests_per_s_max: (seg1.saturating_sub(seg0)) as f64 / took,
            rss_mib: s1.rss_kib as f64 / 1024.0,
        })
    }
    .await;
    let log = agent.log_tail();
    tokio::task::spawn_blocking(move || agent.stop(Duration::from_secs(30))).await??;
    ctx.system.remove_job(&job).await?;
    ctx.broker.delete_topic(&topic).await?;
    result.with_context(|| format!("idle agent; its log:\n{log}"))
}

/// A long run at a fixed rate: the agent's memory every `every`.
pub async fn soak(
    ctx: &Ctx,
    size: usize,
    partitions: i32,
    rate: u64,
    secs: f64,
    every: Duration,
) -> anyhow::Result<report::Soak> {
    let topic = ctx.unique("soak");
    // An hour at 10 MB/s would fill the disk: old segments go (the sink
    // has had them long before).
    ctx.broker
        .create_bounded_topic(&topic, partitions, 256 * 1024 * 1024)
        .await?;
    let meter = ctx.system.meter();
    meter.reset();
    let (job, group) = (ctx.unique("job"), ctx.unique("group"));
    ctx.system
        .add_job(
            &job,
            &ctx.job_spec(&job, &topic, &group),
            SinkKind::Discard,
            &ctx.out,
        )
        .await?;
    let mut agent = ctx.start_agent(&job, ctx.system.url())?;
    let producer = paced::start(&ctx.broker, &topic, partitions, size, rate)?;
    let load = (rate, size, partitions);
    let result = sample_memory(&meter, &mut agent, load, secs, every).await;
    let (produced, _) = producer.stop()?;
    let log = agent.log_tail();
    // Everything produced must come out, or the run proves nothing.
    let drained = meter::wait_for(
        || meter.count().records >= produced,
        || meter.count().records,
        Duration::from_secs(30),
    )
    .await;
    tokio::task::spawn_blocking(move || agent.stop(Duration::from_secs(30))).await??;
    ctx.system.remove_job(&job).await?;
    ctx.broker.delete_topic(&topic).await?;
    let soak = result.with_context(|| format!("soak; agent log:\n{log}"))?;
    if !drained {
        bail!(
            "soak: {} of {produced} records reached the sink",
            meter.count().records
        );
    }
    Ok(soak)
}

/// Once records come through: the agent's RSS every `every` for `secs`,
/// under `load` (records/s, record size, partitions).
async fn sample_memory(
    meter: &Meter,
    agent: &mut Agent,
    (rate, size, partitions): (u64, usize, i32),
    secs: f64,
    every: Duration,
) -> anyhow::Result<report::Soak> {
    if !meter::wait_for(|| meter.count().records > 0, || 0, Duration::from_secs(60)).await {
        bail!("no record came through within 60 s");
    }
    let t0 = Instant::now();
    let (cpu0, rec0) = (agent.sample()?.cpu_s, meter.count().records);
    let mut samples = Vec::new();
    while t0.elapsed().as_secs_f64() < secs {
        let s = agent.sample()?;
        samples.push((t0.elapsed().as_secs_f64(), s.rss_kib as f64 / 1024.0));
        if !agent.alive() {
            bail!("agent exited");
        }
        tokio::time::sleep(every.min(Duration::from_secs_f64(
            (secs - t0.elapsed().as_secs_f64()).max(0.01),
        )))
        .await;
    }
    let end = agent.sample()?;
    samples.push((t0.elapsed().as_secs_f64(), end.rss_kib as f64 / 1024.0));
    let relayed = meter.count().records - rec0;
    Ok(report::Soak::new(
        rate,
        size,
        partitions,
        samples,
        end.hwm_kib as f64 / 1024.0,
        relayed,
        end.cpu_s - cpu0,
    ))
}
