//! The peer: Apache Kafka's MirrorMaker 2 (`connect-mirror`, the dedicated
//! `org.apache.kafka.connect.mirror.MirrorMaker` driver), which a user
//! would run instead of the relay to copy a topic somewhere else. It
//! replicates a filled topic to a second topic on the same broker over the
//! SASL_SSL listener; the run counts from the first record on the second
//! topic to the last, like the relay's runs, and samples the JVM's CPU and
//! peak RSS.
//!
//! Its jars come from Maven Central (scripts/kafka/mirror-maker-pom.xml,
//! fetched by scripts/bench.sh into target/mirror-maker-libs, or
//! `BENCH_MIRROR_LIBS`); without them the part is skipped with a message.

use crate::broker::SaslSsl;
use crate::procstat;
use crate::report;
use crate::scenarios::{Ctx, Filled};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The JVM heap connect-mirror-maker.sh gives MirrorMaker 2.
const HEAP: &[&str] = &["-Xms256M", "-Xmx2G"];
/// Longest wait for the first record on the second topic (the JVM starts,
/// the connectors start and find the topic).
const START_PATIENCE: Duration = Duration::from_secs(120);
/// Longest time without progress once records flow.
const PATIENCE: Duration = Duration::from_secs(60);

/// The directory of MirrorMaker 2's jars, if fetched.
pub fn libs() -> Option<PathBuf> {
    let dir = std::env::var_os("BENCH_MIRROR_LIBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/mirror-maker-libs"));
    let has_jar = std::fs::read_dir(&dir).ok()?.flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with("connect-mirror-")
    });
    has_jar.then(|| std::path::absolute(dir).ok()).flatten()
}

/// MirrorMaker 2's configuration: `src` -> `dst`, both the broker's
/// SASL_SSL listener, only `topic`, nothing else (no checkpoints, no
/// offset or config sync, no heartbeats), internal topics with one replica.
fn properties(s: &SaslSsl, topic: &str, tasks: i32) -> String {
    let mut p = String::from("clusters = src, dst\n");
    for c in ["src", "dst"] {
        p.push_str(&format!(
            "{c}.bootstrap.servers = {}\n{c}.security.protocol = SASL_SSL\n{c}.sasl.mechanism = PLAIN\n\
             {c}.sasl.jaas.config = org.apache.kafka.common.security.plain.PlainLoginModule required username=\"{}\" password=\"{}\";\n\
             {c}.ssl.truststore.type = PEM\n{c}.ssl.truststore.location = {}\n",
            s.bootstrap,
            s.user,
            s.password,
            s.ca_pem.display()
        ));
    }
    p.push_str(&format!(
        "src->dst.enabled = true\nsrc->dst.topics = {topic}\ndst->src.enabled = false\ntasks.max = {tasks}\n\
         emit.checkpoints.enabled = false\nemit.heartbeats.enabled = false\nsync.group.offsets.enabled = false\n\
         sync.topic.configs.enabled = false\nsync.topic.acls.enabled = false\n\
         replication.factor = 1\ncheckpoints.topic.replication.factor = 1\nheartbeats.topic.replication.factor = 1\n\
         offset-syncs.topic.replication.factor = 1\noffset.storage.replication.factor = 1\n\
         status.storage.replication.factor = 1\nconfig.storage.replication.factor = 1\n"
    ));
    p
}

/// MirrorMaker 2 copies the filled topic to `src.<topic>`.
pub async fn drain_mirror(ctx: &Ctx, f: &Filled, libs: &Path) -> anyhow::Result<report::Run> {
    let s = ctx
        .broker
        .sasl_ssl
        .clone()
        .context("the broker's broker.env names no SASL_SSL listener")?;
    let dir = ctx.out.join("mirror").join(&f.topic);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("mm2.properties");
    std::fs::write(&config, properties(&s, &f.topic, f.partitions))?;
    let log = std::fs::File::create(dir.join("mirror-maker.log"))?;
    let mut java = Command::new("java");
    java.args(HEAP)
        .arg("-cp")
        .arg(format!("{}/*", libs.display()))
        .arg("org.apache.kafka.connect.mirror.MirrorMaker")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let child = java.spawn().context("starting MirrorMaker 2 (java)")?;
    let mut mm = Mirror { child };
    let target = format!("src.{}", f.topic);
    let (b, n, parts) = (ctx.broker.clone(), f.records, f.partitions);
    let pid = mm.child.id().to_string();
    let measured = tokio::task::spawn_blocking(move || watch(&b, &target, parts, n, &pid)).await?;
    mm.stop();
    let m = measured.with_context(|| format!("MirrorMaker 2, log in {}", dir.display()))?;
    let _ = ctx.broker.delete_topic(&format!("src.{}", f.topic)).await;
    let mut r = report::Run {
        part: report::SINKS.into(),
        size: f.size,
        partitions: f.partitions,
        consumer: report::MIRROR_MAKER.into(),
        payload: Some(f.payload.name().into()),
        ..Default::default()
    };
    r.set_rate(f.records, f.records * f.size as u64, m.secs);
    r.consumer_cpu_s = Some(m.cpu_s);
    r.consumer_cpu_total_s = Some(m.cpu_total_s);
    r.cpu_s_per_m = Some(m.cpu_s / (f.records as f64 / 1e6));
    r.peak_rss_mib = Some(m.hwm_kib as f64 / 1024.0);
    Ok(r)
}

struct Measured {
    secs: f64,
    cpu_s: f64,
    cpu_total_s: f64,
    hwm_kib: u64,
}

/// Poll the second topic's end offsets until it holds `records`: the time
/// from the first record to the last, and the JVM's CPU over that time.
fn watch(
    b: &crate::broker::Broker,
    target: &str,
    partitions: i32,
    records: u64,
    pid: &str,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let mut first: Option<(Instant, f64)> = None;
    let mut progress = (0u64, Instant::now());
    loop {
        let have: u64 = b
            .end_offsets(target, partitions)
            .map(|e| e.iter().map(|o| (*o).max(0) as u64).sum())
            .unwrap_or(0);
        let sample = procstat::sample(pid).context("MirrorMaker 2 exited")?;
        if have > 0 && first.is_none() {
            first = Some((Instant::now(), sample.cpu_s));
        }
        if have >= records {
            let (t0, cpu0) = first.unwrap_or((started, 0.0));
            return Ok(Measured {
                secs: t0.elapsed().as_secs_f64(),
                cpu_s: sample.cpu_s - cpu0,
                cpu_total_s: sample.cpu_s,
                hwm_kib: sample.hwm_kib,
            });
        }
        if have != progress.0 {
            progress = (have, Instant::now());
        }
        let patience = if have == 0 { START_PATIENCE } else { PATIENCE };
        if progress.1.elapsed() > patience {
            bail!("MirrorMaker 2 stuck at {have} of {records} records");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The JVM, stopped (SIGTERM, then kill) when dropped.
struct Mirror {
    child: Child,
}

impl Mirror {
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}
