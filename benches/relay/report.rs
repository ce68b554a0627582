//! Results: what each run measured, the tables and charts made from them,
//! and the targets of the issue checked against them.

use crate::meter::Latency;
use crate::procstat::Machine;
use crate::svg;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

pub const RDKAFKA: &str = "rdkafka consumer";
pub const RDKAFKA_AGENT: &str = "rdkafka consumer, agent's settings";
pub const KCAT: &str = "kcat -C";
pub const FLOOR: &str = "floor: rdkafka -> frames -> TLS pipe";
pub const RELAY_DISCARD: &str = "relay -> discard";
pub const RELAY_JSONL: &str = "relay -> jsonl";
pub const RELAY_DISCARD_RTT: &str = "relay -> discard, +50 ms RTT";
pub const RELAY_DISCARD_PROXY: &str = "relay -> discard, through the proxy, no delay";
pub const RELAY_DISCARD_LINK: &str = "relay -> discard, over the limited link";
/// `Run::part` of the throughput, distance and compression runs.
pub const THROUGHPUT: &str = "throughput";
pub const DISTANCE: &str = "distance";
pub const COMPRESSION: &str = "compression";
/// The limited link of the compression runs: 100 Mbit/s each way, 50 ms
/// round trip (a site's uplink to a cloud region).
pub const LINK_BYTES_PER_S: u64 = 100_000_000 / 8;
pub const LINK_ONE_WAY_MS: u64 = 25;

const MIB: f64 = 1024.0 * 1024.0;

/// One drain of a filled topic.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Run {
    /// [`THROUGHPUT`] or [`DISTANCE`] (each has its own topics).
    pub part: String,
    pub size: usize,
    pub partitions: i32,
    pub consumer: String,
    pub records: u64,
    /// First record out to last record out.
    pub secs: f64,
    pub rec_per_s: f64,
    pub mib_per_s: f64,
    /// CPU seconds of the consumer (the agent process for the relay) over `secs`.
    pub consumer_cpu_s: Option<f64>,
    pub cpu_s_per_m: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// CPU seconds of the bench process (control plane + meter) over `secs`.
    pub cp_cpu_s: Option<f64>,
    pub broker_cpu_s: Option<f64>,
    /// From the last ack to the group's commit reaching the end.
    pub commit_after_s: Option<f64>,
    /// SIGTERM to exit of the agent.
    pub stop_s: Option<f64>,
    pub sink_file_mib: Option<f64>,
    /// What the records' pad holds (`words`, `random`); older runs: `None`.
    #[serde(default)]
    pub payload: Option<String>,
    /// CPU seconds of the agent over its whole life (a relay that
    /// compresses ahead of a slow link does much of its work before the
    /// first record arrives).
    #[serde(default)]
    pub consumer_cpu_total_s: Option<f64>,
    /// The job's compression; `None`: none.
    #[serde(default)]
    pub compression: Option<String>,
    /// Batch frames the agent sent, as sent and before compression
    /// (from its job state).
    #[serde(default)]
    pub frame_mib: Option<f64>,
    #[serde(default)]
    pub frame_raw_mib: Option<f64>,
}

impl Run {
    pub fn set_rate(&mut self, records: u64, bytes: u64, secs: f64) {
        self.records = records;
        self.secs = secs;
        self.rec_per_s = if secs > 0.0 {
            records as f64 / secs
        } else {
            0.0
        };
        self.mib_per_s = if secs > 0.0 {
            bytes as f64 / MIB / secs
        } else {
            0.0
        };
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyRun {
    pub rate: u64,
    pub achieved_rate: f64,
    pub size: usize,
    pub partitions: i32,
    pub consumer: String,
    pub latency: Latency,
    /// The records over the target and the broker's GC pauses meanwhile
    /// (none in results from before the broker wrote a GC log).
    #[serde(default)]
    pub tail: Option<crate::gc::Tail>,
    pub agent_cpu_pct: Option<f64>,
    pub agent_peak_rss_mib: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleRun {
    pub partitions: i32,
    pub secs: f64,
    pub cpu_pct_of_core: f64,
    /// TCP segments with data the agent sent the broker per second: an upper
    /// bound of its requests (fetches, heartbeats, commits).
    pub requests_per_s_max: f64,
    pub rss_mib: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Soak {
    pub rate: u64,
    pub size: usize,
    pub partitions: i32,
    pub secs: f64,
    /// (seconds, RSS MiB)
    pub rss: Vec<(f64, f64)>,
    pub hwm_mib: f64,
    pub rss_after_1min_mib: f64,
    pub rss_end_mib: f64,
    /// Least-squares slope of RSS after the first minute (or after the
    /// first fifth of a shorter run), MiB per 10 minutes.
    pub slope_mib_per_10min: f64,
    /// The same over the second half of the run: growth that stops (the
    /// allocator settling) is not a leak; growth that goes on is.
    #[serde(default)]
    pub slope_second_half_mib_per_10min: f64,
    pub records: u64,
    pub cpu_s_per_m: f64,
}

/// Least-squares slope of (seconds, MiB) points, in MiB per 10 minutes.
fn slope_per_10min(points: &[(f64, f64)]) -> f64 {
    if points.len() < 2 {
        return 0.0;
    }
    let n = points.len() as f64;
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx > 0.0 { sxy / sxx * 600.0 } else { 0.0 }
}

impl Soak {
    pub fn new(
        rate: u64,
        size: usize,
        partitions: i32,
        rss: Vec<(f64, f64)>,
        hwm_mib: f64,
        records: u64,
        cpu_s: f64,
    ) -> Soak {
        let secs = rss.last().map_or(0.0, |p| p.0);
        let warm = 60f64.min(secs / 5.0);
        let after: Vec<(f64, f64)> = rss.iter().copied().filter(|p| p.0 >= warm).collect();
        let slope = slope_per_10min(&after);
        let second_half: Vec<(f64, f64)> =
            rss.iter().copied().filter(|p| p.0 >= secs / 2.0).collect();
        Soak {
            rate,
            size,
            partitions,
            secs,
            rss_after_1min_mib: after.first().map_or(0.0, |p| p.1),
            rss_end_mib: rss.last().map_or(0.0, |p| p.1),
            hwm_mib,
            slope_mib_per_10min: slope,
            slope_second_half_mib_per_10min: slope_per_10min(&second_half),
            records,
            cpu_s_per_m: if records > 0 {
                cpu_s / (records as f64 / 1e6)
            } else {
                0.0
            },
            rss,
        }
    }
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub machine: Machine,
    pub command: String,
    pub short: bool,
    pub runs: Vec<Run>,
    pub latency: Vec<LatencyRun>,
    pub idle: Vec<IdleRun>,
    pub soak: Option<Soak>,
    pub notes: Vec<String>,
}

fn f0(v: f64) -> String {
    let s = format!("{:.0}", v);
    // Thousands separators make rates readable.
    let (neg, digits) = s
        .strip_prefix('-')
        .map_or((false, s.as_str()), |d| (true, d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if neg { format!("-{out}") } else { out }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn size_name(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// One distance topic: records/s connected directly, through the proxy
/// without delay and with it (medians of their runs).
struct Distance {
    size: usize,
    partitions: i32,
    direct: Option<f64>,
    proxied: Option<f64>,
    delayed: f64,
}

impl Distance {
    /// The ratio the distance target is judged by: delayed over the same
    /// path without the delay (the proxy's own cost is in both), or over
    /// the direct relay where an older run has no proxied one.
    fn ratio(&self) -> Option<f64> {
        self.proxied
            .or(self.direct)
            .filter(|b| *b > 0.0)
            .map(|b| self.delayed / b)
    }
}

/// The runs of one part, topic and consumer.
fn part_runs<'a>(
    runs: &'a [Run],
    part: &str,
    size: usize,
    partitions: i32,
    consumer: &str,
) -> Vec<&'a Run> {
    runs.iter()
        .filter(|r| {
            r.part == part && r.size == size && r.partitions == partitions && r.consumer == consumer
        })
        .collect()
}

/// The topics (size, partitions) of one part, in order.
fn part_topics(runs: &[Run], part: &str) -> Vec<(usize, i32)> {
    let mut t: Vec<(usize, i32)> = runs
        .iter()
        .filter(|r| r.part == part)
        .map(|r| (r.size, r.partitions))
        .collect();
    t.sort();
    t.dedup();
    t
}

/// The median of the values present; `None` if there are none.
fn median(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().flatten().collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// One row of the compression table: the medians of its runs.
struct CompressionRow {
    size: usize,
    partitions: i32,
    payload: String,
    consumer: String,
    codec: String,
    runs: usize,
    rec_per_s: f64,
    /// Frame bytes sent over frame bytes before compression.
    sent_per_raw: Option<f64>,
    /// Frame bytes sent per record.
    sent_per_record: Option<f64>,
    agent_cpu_per_m: Option<f64>,
    cp_cpu_per_m: Option<f64>,
    peak_rss_mib: Option<f64>,
}

/// The compression runs of `runs` as rows: by topic, payload, link and codec.
fn compression_of(runs: &[Run]) -> Vec<CompressionRow> {
    let mut keys: Vec<(usize, i32, String, String, String)> = Vec::new();
    for r in runs.iter().filter(|r| r.part == COMPRESSION) {
        let k = (
            r.size,
            r.partitions,
            r.payload.clone().unwrap_or_default(),
            r.consumer.clone(),
            r.compression.clone().unwrap_or_else(|| "none".into()),
        );
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .filter_map(|(size, partitions, payload, consumer, codec)| {
            let of: Vec<&Run> = part_runs(runs, COMPRESSION, size, partitions, &consumer)
                .into_iter()
                .filter(|r| {
                    r.payload.as_deref().unwrap_or_default() == payload
                        && r.compression.as_deref().unwrap_or("none") == codec
                })
                .collect();
            let m = |f: &dyn Fn(&Run) -> Option<f64>| median(of.iter().map(|r| f(r)));
            Some(CompressionRow {
                rec_per_s: m(&|r| Some(r.rec_per_s))?,
                sent_per_raw: m(&|r| Some(r.frame_mib? / r.frame_raw_mib?)),
                sent_per_record: m(&|r| Some(r.frame_mib? * MIB / r.records as f64)),
                agent_cpu_per_m: m(&|r| Some(r.consumer_cpu_total_s? / (r.records as f64 / 1e6))),
                cp_cpu_per_m: m(&|r| Some(r.cp_cpu_s? / (r.records as f64 / 1e6))),
                peak_rss_mib: m(&|r| r.peak_rss_mib),
                runs: of.len(),
                size,
                partitions,
                payload,
                consumer,
                codec,
            })
        })
        .collect()
}

/// The distance topics of `runs`, records/s of each kind of run.
fn distance_of(runs: &[Run]) -> Vec<Distance> {
    let median = |z: usize, p: i32, c: &str| {
        median(
            part_runs(runs, DISTANCE, z, p, c)
                .iter()
                .map(|r| Some(r.rec_per_s)),
        )
    };
    part_topics(runs, DISTANCE)
        .into_iter()
        .filter_map(|(size, partitions)| {
            Some(Distance {
                size,
                partitions,
                direct: median(size, partitions, RELAY_DISCARD),
                proxied: median(size, partitions, RELAY_DISCARD_PROXY),
                delayed: median(size, partitions, RELAY_DISCARD_RTT)?,
            })
        })
        .collect()
}

/// Checks run under `cargo test`: the distance ratio is the median delayed
/// run over the median proxied one, and over the direct run in results
/// that have no proxied runs (before commit b36b75f).
pub fn self_check() -> anyhow::Result<()> {
    let run = |consumer: &str, rec_per_s: f64| Run {
        part: DISTANCE.into(),
        size: 1024,
        partitions: 6,
        consumer: consumer.into(),
        rec_per_s,
        ..Default::default()
    };
    let mut runs = vec![
        run(RELAY_DISCARD, 100.0),
        run(RELAY_DISCARD_PROXY, 90.0),
        run(RELAY_DISCARD_RTT, 81.0),
        run(RELAY_DISCARD_PROXY, 80.0),
        run(RELAY_DISCARD_RTT, 60.0),
        run(RELAY_DISCARD_PROXY, 100.0),
        run(RELAY_DISCARD_RTT, 72.0),
    ];
    let d = distance_of(&runs);
    anyhow::ensure!(
        d.len() == 1
            && (d[0].direct, d[0].proxied, d[0].delayed) == (Some(100.0), Some(90.0), 72.0),
        "distance medians: direct {:?}, proxied {:?}, delayed {:?}",
        d.first().map(|d| d.direct),
        d.first().map(|d| d.proxied),
        d.first().map(|d| d.delayed)
    );
    anyhow::ensure!(
        d[0].ratio() == Some(0.8),
        "distance ratio {:?}",
        d[0].ratio()
    );
    runs.retain(|r| r.consumer != RELAY_DISCARD_PROXY);
    let d = distance_of(&runs);
    anyhow::ensure!(
        d[0].ratio() == Some(0.72),
        "ratio without proxied runs {:?}",
        d[0].ratio()
    );
    // Compression rows: one per payload, link and codec, medians of their runs.
    let z = |consumer: &str, codec: Option<&str>, payload: &str, rec_per_s: f64, sent: f64| Run {
        part: COMPRESSION.into(),
        size: 1024,
        partitions: 6,
        consumer: consumer.into(),
        records: 1_000_000,
        rec_per_s,
        payload: Some(payload.into()),
        compression: codec.map(Into::into),
        frame_mib: Some(sent),
        frame_raw_mib: Some(1000.0),
        ..Default::default()
    };
    let runs = vec![
        z(RELAY_DISCARD_LINK, None, "words", 10.0, 1000.0),
        z(RELAY_DISCARD_LINK, Some("lz4"), "words", 20.0, 500.0),
        z(RELAY_DISCARD_LINK, None, "words", 12.0, 1000.0),
        z(RELAY_DISCARD_LINK, Some("lz4"), "words", 30.0, 400.0),
        z(RELAY_DISCARD_LINK, Some("lz4"), "random", 9.0, 1000.0),
        z(RELAY_DISCARD, Some("lz4"), "words", 99.0, 500.0),
    ];
    let rows = compression_of(&runs);
    let got: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}/{}/{}: {} runs, {} rec/s, sent/raw {:.3}",
                r.consumer,
                r.payload,
                r.codec,
                r.runs,
                r.rec_per_s,
                r.sent_per_raw.unwrap_or(-1.0)
            )
        })
        .collect();
    anyhow::ensure!(
        got == [
            format!("{RELAY_DISCARD_LINK}/words/none: 2 runs, 11 rec/s, sent/raw 1.000"),
            format!("{RELAY_DISCARD_LINK}/words/lz4: 2 runs, 25 rec/s, sent/raw 0.450"),
            format!("{RELAY_DISCARD_LINK}/random/lz4: 1 runs, 9 rec/s, sent/raw 1.000"),
            format!("{RELAY_DISCARD}/words/lz4: 1 runs, 99 rec/s, sent/raw 0.500"),
        ],
        "compression rows: {got:?}"
    );
    Ok(())
}

impl Results {
    fn runs_of(&self, size: usize, partitions: i32, consumer: &str) -> Vec<&Run> {
        self.part_runs(THROUGHPUT, size, partitions, consumer)
    }

    fn part_runs(&self, part: &str, size: usize, partitions: i32, consumer: &str) -> Vec<&Run> {
        part_runs(&self.runs, part, size, partitions, consumer)
    }

    /// The distance topics, records/s of each kind of run.
    fn distance(&self) -> Vec<Distance> {
        distance_of(&self.runs)
    }

    /// The best of the bare rdkafka runs of a topic (librdkafka's default
    /// settings or the agent's, whichever was faster): the ceiling.
    pub fn ceiling(&self, size: usize, partitions: i32) -> Option<f64> {
        let mut runs = self.runs_of(size, partitions, RDKAFKA);
        runs.extend(self.runs_of(size, partitions, RDKAFKA_AGENT));
        runs.iter().map(|r| r.rec_per_s).reduce(f64::max)
    }

    fn best(&self, size: usize, partitions: i32, consumer: &str) -> Option<&Run> {
        self.runs_of(size, partitions, consumer)
            .into_iter()
            .max_by(|a, b| a.rec_per_s.total_cmp(&b.rec_per_s))
    }

    fn topics(&self) -> Vec<(usize, i32)> {
        part_topics(&self.runs, THROUGHPUT)
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "### Machine\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| CPU | {} × {} |", m.nproc, m.cpu_model);
        let _ = writeln!(s, "| memory | {:.1} GiB |", m.memory_gib);
        let _ = writeln!(s, "| kernel | {} |", m.kernel);
        let _ = writeln!(
            s,
            "| load average (1, 5, 15 min) | start {}, end {} |",
            m.loadavg_start, m.loadavg_end
        );
        let _ = writeln!(
            s,
            "| toolchain | {}, build profile `{}` |",
            m.rustc, m.profile
        );
        let _ = writeln!(
            s,
            "| librdkafka | {} (agent and bare consumer); kcat: {} |",
            m.librdkafka, m.kcat
        );
        let _ = writeln!(s, "| command | `{}` |\n", self.command);

        let _ = writeln!(s, "### Throughput: draining a filled topic\n");
        let _ = writeln!(
            s,
            "Records per second from the first record out to the last. Relay rows count only records the control plane's sink \
             accepted (each batch acked); after the last ack the run waits until the agent's consumer group has committed the end \
             of every partition (\"commit +s\"). Ratio = relay / bare rdkafka consumer (the best of its runs, with librdkafka's default settings or the agent's) in the same run. \
             The floor is the bare consumer (agent's settings) writing the agent's batch frames over one TLS connection to a reader that decrypts and drops them: \
             no WebSocket, acks, commits or sink, only what no relay over TLS can avoid, so floor / rdkafka is the best ratio any such relay could reach on this machine.\n"
        );
        let _ = writeln!(
            s,
            "| record | partitions | records | rdkafka | kcat | rdkafka, agent settings | floor (TLS pipe) | ratio | relay -> discard | ratio | relay / floor | relay -> jsonl | ratio | commit +s | agent CPU s / M rec | agent peak RSS MiB |"
        );
        let _ = writeln!(
            s,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for (size, p) in self.topics() {
            let ceil = self.ceiling(size, p);
            let rate = |c: &str| self.best(size, p, c).map(|r| r.rec_per_s);
            let ratio = |c: &str| match (rate(c), ceil) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.0}%", a / b * 100.0),
                _ => "-".into(),
            };
            let relay = self.best(size, p, RELAY_DISCARD);
            let records = self
                .runs_of(size, p, RDKAFKA)
                .first()
                .map_or(0, |r| r.records);
            let _ = writeln!(
                s,
                "| {} | {p} | {} | {} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {} |",
                size_name(size),
                f0(records as f64),
                rate(RDKAFKA).map_or("-".into(), f0),
                rate(KCAT).map_or("-".into(), f0),
                rate(RDKAFKA_AGENT).map_or("-".into(), f0),
                rate(FLOOR).map_or("-".into(), f0),
                ratio(FLOOR),
                rate(RELAY_DISCARD).map_or("-".into(), f0),
                ratio(RELAY_DISCARD),
                match (rate(RELAY_DISCARD), rate(FLOOR)) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.0}%", a / b * 100.0),
                    _ => "-".into(),
                },
                rate(RELAY_JSONL).map_or("-".into(), f0),
                ratio(RELAY_JSONL),
                opt(relay.and_then(|r| r.commit_after_s), 2),
                opt(relay.and_then(|r| r.cpu_s_per_m), 2),
                opt(relay.and_then(|r| r.peak_rss_mib), 1),
            );
        }
        let distance = self.distance();
        if !distance.is_empty() {
            let _ = writeln!(
                s,
                "\n### Distance: 50 ms round trip between agent and control plane\n"
            );
            let _ = writeln!(
                s,
                "A delaying TCP proxy in the bench adds 25 ms each way. All runs drain the same (smaller) topic with the job's \
                 default in-flight window: once connected directly, then alternately through the proxy without delay and with it \
                 (the median of each is shown). The proxy copies every byte in the bench process, on the same two cores, so the \
                 ratio is taken over the same path without the delay: it measures what the distance costs, not what the proxy \
                 costs. The ratio over the direct connection is shown too.\n"
            );
            let _ = writeln!(
                s,
                "| record | partitions | relay, direct | relay, through the proxy, no delay | relay, +50 ms RTT | ratio | ratio to direct |\n|---|---|---|---|---|---|---|"
            );
            for d in distance {
                let pct = |r: Option<f64>| r.map_or("-".into(), |r| format!("{:.0}%", r * 100.0));
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | **{}** | {} |",
                    size_name(d.size),
                    d.partitions,
                    d.direct.map_or("-".into(), f0),
                    d.proxied.map_or("-".into(), f0),
                    f0(d.delayed),
                    pct(d.ratio()),
                    pct(d.direct.filter(|b| *b > 0.0).map(|b| d.delayed / b)),
                );
            }
        }
        let compression = compression_of(&self.runs);
        if !compression.is_empty() {
            let _ = writeln!(
                s,
                "\n### Compression: none, lz4, zstd, on the loopback and over a limited link\n"
            );
            let _ = writeln!(
                s,
                "Each job compresses its batch frames with the codec shown (`compression` in the job spec). Two topics per payload: \
                 the pad of every record holds random words (text) or random base64 characters (what encrypted or compressed \
                 values look like). \"loopback\": the agent connected directly. \"limited link\": through the bench's proxy, \
                 limited to {} Mbit/s each way with {} ms round trip, a site's uplink to a cloud region. Medians of the runs; \
                 \"vs none\" is over the same payload and link without compression. Sent / raw: bytes of batch frames sent over \
                 their bytes before compression, from the agent's job state. Agent CPU: over the agent's whole life, start-up included \
                 (ahead of a slow link it compresses most records before the first one arrives); control plane CPU: the bench \
                 process, which also runs the proxy on the limited link.\n",
                LINK_BYTES_PER_S * 8 / 1_000_000,
                2 * LINK_ONE_WAY_MS
            );
            let _ = writeln!(
                s,
                "| record | partitions | payload | link | compression | runs | records/s | vs none | sent / raw | bytes sent per record | agent CPU s / M rec | control plane CPU s / M rec | agent peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
            );
            for r in &compression {
                let none = compression.iter().find(|n| {
                    (
                        n.size,
                        n.partitions,
                        &n.payload,
                        &n.consumer,
                        n.codec.as_str(),
                    ) == (r.size, r.partitions, &r.payload, &r.consumer, "none")
                });
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    size_name(r.size),
                    r.partitions,
                    r.payload,
                    if r.consumer == RELAY_DISCARD_LINK {
                        "limited"
                    } else {
                        "loopback"
                    },
                    r.codec,
                    r.runs,
                    f0(r.rec_per_s),
                    none.filter(|n| n.rec_per_s > 0.0)
                        .map_or("-".into(), |n| format!(
                            "**{:.0}%**",
                            r.rec_per_s / n.rec_per_s * 100.0
                        )),
                    r.sent_per_raw
                        .map_or("-".into(), |v| format!("{:.0}%", v * 100.0)),
                    opt(r.sent_per_record, 0),
                    opt(r.agent_cpu_per_m, 2),
                    opt(r.cp_cpu_per_m, 2),
                    opt(r.peak_rss_mib, 1),
                );
            }
        }
        if !self.latency.is_empty() {
            let _ = writeln!(s, "\n### Latency: produce to sink at a fixed rate\n");
            let _ = writeln!(
                s,
                "Each record carries the time `produce()` was called (µs); latency is taken when the sink accepted the batch \
                 (relay, discard sink) or when the bare consumer got the record. Producer: `linger.ms={}` (librdkafka's default), \
                 part of what is measured for both. The broker stamps each record with its append time (`LogAppendTime`): \"to log p99\" is the \
                 p99 of produce to the broker's log alone. \"Over {} ms\": records slower than the target; \"mostly before the log\": those \
                 of them that spent more than half of their time before the broker appended them; \"in a broker pause\": those of them \
                 in flight (between produce and arrival) while the broker's JVM was stopped for garbage collection, from its GC log \
                 (a lower bound of what the pauses explain: records produced just after a pause wait behind its backlog too); \
                 \"broker GC pauses\": the pauses within the run, their longest and their sum.\n",
                crate::paced::PRODUCER_LINGER_MS,
                crate::gc::TARGET_MS
            );
            let _ = writeln!(
                s,
                "| rate /s | achieved /s | record | partitions | consumer | samples | p50 ms | p99 ms | max ms | to log p99 ms | over {} ms | mostly before the log | in a broker pause | broker GC pauses (longest, sum ms) | agent CPU % of a core | agent peak RSS MiB |",
                crate::gc::TARGET_MS
            );
            let _ = writeln!(
                s,
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
            );
            for l in &self.latency {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {:.1} | **{:.1}** | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
                    f0(l.rate as f64),
                    f0(l.achieved_rate),
                    size_name(l.size),
                    l.partitions,
                    l.consumer,
                    f0(l.latency.samples as f64),
                    l.latency.p50_ms,
                    l.latency.p99_ms,
                    l.latency.max_ms,
                    opt(l.tail.and_then(|t| t.to_log_p99_ms), 1),
                    l.tail.map_or("-".into(), |t| f0(t.over_target as f64)),
                    l.tail
                        .map_or("-".into(), |t| f0(t.over_target_mostly_to_log as f64)),
                    l.tail
                        .map_or("-".into(), |t| f0(t.over_target_in_pause as f64)),
                    l.tail.map_or("-".into(), |t| format!(
                        "{} ({:.1}, {:.0})",
                        t.pauses, t.longest_pause_ms, t.paused_ms
                    )),
                    opt(l.agent_cpu_pct, 1),
                    opt(l.agent_peak_rss_mib, 1),
                );
            }
        }
        if !self.idle.is_empty() || self.soak.is_some() {
            let _ = writeln!(s, "\n### Resources\n");
        }
        for i in &self.idle {
            let _ = writeln!(
                s,
                "- Idle agent (job assigned, {} partitions, nothing to read) over {:.0} s: **{:.2}% of a core**, RSS {:.1} MiB, \
                 at most {:.2} requests/s to the broker (TCP segments with data, all requests counted: fetches, heartbeats, commits); \
                 one fetch covers every partition on the broker, so at most that many reads per partition per second.",
                i.partitions, i.secs, i.cpu_pct_of_core, i.rss_mib, i.requests_per_s_max
            );
        }
        if let Some(k) = &self.soak {
            let _ = writeln!(
                s,
                "- Long run: {} records/s of {} on {} partitions for {:.0} s ({} records relayed): RSS after the first minute {:.1} MiB, \
                 at the end {:.1} MiB, peak (VmHWM) **{:.1} MiB**, trend {:+.2} MiB per 10 min after the first minute and {:+.2} MiB per 10 min \
                 over the second half; {:.2} CPU s per million records.",
                f0(k.rate as f64),
                size_name(k.size),
                k.partitions,
                k.secs,
                f0(k.records as f64),
                k.rss_after_1min_mib,
                k.rss_end_mib,
                k.hwm_mib,
                k.slope_mib_per_10min,
                k.slope_second_half_mib_per_10min,
                k.cpu_s_per_m
            );
        }
        let _ = writeln!(s, "\n### Targets\n");
        let _ = writeln!(s, "| target | measured | met |\n|---|---|---|");
        for (t, measured, met) in self.targets() {
            let _ = writeln!(
                s,
                "| {t} | {measured} | {} |",
                match met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "not measured",
                }
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n### Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        let _ = writeln!(s, "\n<details><summary>Every run</summary>\n");
        let _ = writeln!(
            s,
            "| part | record | partitions | consumer | records | s | rec/s | MiB/s | consumer CPU s | control plane CPU s | broker CPU s | commit +s | stop s |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.runs {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.2} | {} | {:.1} | {} | {} | {} | {} | {} |",
                r.part,
                size_name(r.size),
                r.partitions,
                if r.part == COMPRESSION {
                    format!(
                        "{} ({}, {})",
                        r.consumer,
                        r.compression.as_deref().unwrap_or("none"),
                        r.payload.as_deref().unwrap_or("-")
                    )
                } else {
                    r.consumer.clone()
                },
                f0(r.records as f64),
                r.secs,
                f0(r.rec_per_s),
                r.mib_per_s,
                opt(r.consumer_cpu_s, 2),
                opt(r.cp_cpu_s, 2),
                opt(r.broker_cpu_s, 2),
                opt(r.commit_after_s, 2),
                opt(r.stop_s, 2)
            );
        }
        let _ = writeln!(s, "\n</details>");
        s
    }

    /// (target, measured, met) for every target of the issue.
    pub fn targets(&self) -> Vec<(String, String, Option<bool>)> {
        let mut t = Vec::new();
        for (size, floor) in [(1024usize, 0.80), (100, 0.60)] {
            let ratios: Vec<(i32, f64)> = self
                .topics()
                .into_iter()
                .filter(|(z, _)| *z == size)
                .filter_map(|(z, p)| {
                    Some((
                        p,
                        self.best(z, p, RELAY_DISCARD)?.rec_per_s / self.ceiling(z, p)?,
                    ))
                })
                .collect();
            let measured = ratios
                .iter()
                .map(|(p, r)| format!("{p} partitions: {:.0}%", r * 100.0))
                .collect::<Vec<_>>()
                .join(", ");
            t.push((
                format!(
                    "relay throughput at {} ≥ {:.0}% of the bare rdkafka consumer",
                    size_name(size),
                    floor * 100.0
                ),
                if measured.is_empty() {
                    "-".into()
                } else {
                    measured
                },
                (!ratios.is_empty()).then(|| ratios.iter().all(|(_, r)| *r >= floor)),
            ));
        }
        let rtt: Vec<(usize, i32, f64)> = self
            .distance()
            .into_iter()
            .filter_map(|d| Some((d.size, d.partitions, d.ratio()?)))
            .collect();
        t.push((
            "with 50 ms RTT ≥ 80% of the no-delay relay (same path)".into(),
            rtt.iter()
                .map(|(z, p, r)| format!("{} {p}p: {:.0}%", size_name(*z), r * 100.0))
                .collect::<Vec<_>>()
                .join(", "),
            (!rtt.is_empty()).then(|| rtt.iter().all(|r| r.2 >= 0.8)),
        ));
        let lat: Vec<&LatencyRun> = self
            .latency
            .iter()
            .filter(|l| l.rate == 10_000 && l.consumer == RELAY_DISCARD)
            .collect();
        t.push((
            "latency at 10,000 rec/s: p99 < 50 ms".into(),
            lat.iter()
                .map(|l| format!("{}p: p99 {:.1} ms", l.partitions, l.latency.p99_ms))
                .collect::<Vec<_>>()
                .join(", "),
            (!lat.is_empty()).then(|| lat.iter().all(|l| l.latency.p99_ms < 50.0)),
        ));
        let peak = self
            .runs
            .iter()
            .filter_map(|r| r.peak_rss_mib)
            .chain(self.latency.iter().filter_map(|l| l.agent_peak_rss_mib))
            .chain(self.soak.iter().map(|k| k.hwm_mib))
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        t.push((
            "agent peak RSS < 64 MiB (every run)".into(),
            opt(peak, 1) + " MiB",
            peak.map(|p| p < 64.0),
        ));
        t.push((
            "agent RSS flat over a 10-minute run".into(),
            self.soak.as_ref().map_or("-".into(), |k| {
                format!(
                    "{:.0} s run: {:+.2} MiB per 10 min after the first minute, {:+.2} MiB per 10 min over the second half",
                    k.secs, k.slope_mib_per_10min, k.slope_second_half_mib_per_10min
                )
            }),
            // No growth: over a run of at least 10 minutes, the second half
            // grows by less than 1 MiB per 10 minutes and the end is not above
            // the first minute by more than 1 MiB (a leak keeps growing; the
            // allocator settling in the first minutes, or giving memory back,
            // does not).
            self.soak.as_ref().filter(|k| k.secs >= 590.0).map(|k| {
                k.slope_second_half_mib_per_10min < 1.0 && k.rss_end_mib <= k.rss_after_1min_mib + 1.0
            }),
        ));
        let idle = self.idle.first();
        t.push((
            "idle agent < 1% of a core".into(),
            idle.map_or("-".into(), |i| format!("{:.2}%", i.cpu_pct_of_core)),
            idle.map(|i| i.cpu_pct_of_core < 1.0),
        ));
        t.push((
            "idle: ≤ 5 reads/s per consumer group per partition (OCI)".into(),
            idle.map_or("-".into(), |i| {
                format!("≤ {:.2} requests/s in total", i.requests_per_s_max)
            }),
            idle.map(|i| i.requests_per_s_max <= 5.0),
        ));
        t
    }

    /// Throughput chart: relay as a percentage of the bare consumer, per
    /// topic; `others` adds the relay of other runs (each against its own
    /// ceiling), labelled.
    pub fn throughput_svg(&self, others: &[(String, Results)]) -> String {
        let topics = self.topics();
        let groups: Vec<String> = topics
            .iter()
            .map(|(z, p)| format!("{}, {p}p", size_name(*z)))
            .collect();
        let mut series: Vec<(String, &Results, &str)> = [KCAT, FLOOR, RELAY_DISCARD, RELAY_JSONL]
            .iter()
            .map(|c| (c.to_string(), self, *c))
            .collect();
        for (label, r) in others {
            series.push((format!("{RELAY_DISCARD} ({label})"), r, RELAY_DISCARD));
        }
        let values: Vec<Vec<Option<f64>>> = topics
            .iter()
            .map(|(z, p)| {
                series
                    .iter()
                    .map(|(_, r, c)| {
                        Some(r.best(*z, *p, c)?.rec_per_s / r.ceiling(*z, *p)? * 100.0)
                    })
                    .collect()
            })
            .collect();
        let names: Vec<&str> = series.iter().map(|s| s.0.as_str()).collect();
        svg::bars(
            "Throughput as % of a bare rdkafka consumer (same run)",
            "% of bare rdkafka consumer",
            &groups,
            &names,
            &values,
            &[
                (100.0, "bare consumer"),
                (80.0, "target 1 KiB: 80%"),
                (60.0, "target 100 B: 60%"),
            ],
        )
    }

    pub fn soak_svg(&self) -> Option<String> {
        let k = self.soak.as_ref()?;
        Some(svg::lines(
            &format!(
                "Agent RSS at {} records/s of {} ({} partitions)",
                f0(k.rate as f64),
                size_name(k.size),
                k.partitions
            ),
            "seconds",
            "RSS MiB",
            &[("VmRSS", k.rss.clone())],
        ))
    }
}
