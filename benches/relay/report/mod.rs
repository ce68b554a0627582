//! Results: what each run measured, the tables and charts made from them,
//! and the targets of the issue checked against them.
//!
//! This module holds the results and what is computed from them (medians,
//! ceilings, charts); [`markdown`] writes the report's tables, [`targets`]
//! judges the targets, [`check`] holds the checks `cargo test` runs.

use crate::meter::Latency;
use crate::procstat::Machine;
use crate::svg;
use serde::{Deserialize, Serialize};

mod check;
mod markdown;
mod targets;

pub use check::self_check;

pub const RDKAFKA: &str = "rdkafka consumer";
pub const RDKAFKA_AGENT: &str = "rdkafka consumer, agent's settings";
pub const KCAT: &str = "kcat -C";
pub const FLOOR: &str = "floor: rdkafka -> frames -> TLS pipe";
pub const RELAY_DISCARD: &str = "relay -> discard";
pub const RELAY_JSONL: &str = "relay -> jsonl";
pub const RELAY_JSONL_PROCESS: &str = "relay -> jsonl, control plane as its own process";
pub const RELAY_WEBHOOK: &str = "relay -> webhook";
pub const RELAY_WEBHOOK_BIG: &str = "relay -> webhook, batches up to 8 MiB";
pub const RELAY_WEBHOOK_RECORD: &str = "relay -> webhook, a POST per record";
pub const MIRROR_MAKER: &str = "MirrorMaker 2 -> second topic (SASL_SSL)";
pub const RELAY_DISCARD_RTT: &str = "relay -> discard, +50 ms RTT";
pub const RELAY_DISCARD_PROXY: &str = "relay -> discard, through the proxy, no delay";
pub const RELAY_DISCARD_LINK: &str = "relay -> discard, over the limited link";
/// `Run::part` of the throughput, distance and compression runs.
pub const THROUGHPUT: &str = "throughput";
pub const DISTANCE: &str = "distance";
pub const COMPRESSION: &str = "compression";
pub const SINKS: &str = "sinks";
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
    /// CPU seconds of the bench process (control plane + meter) over `secs`;
    /// for [`RELAY_JSONL_PROCESS`], of the `control-plane` process alone.
    pub cp_cpu_s: Option<f64>,
    /// Peak RSS of the bench process during the drain (the allocator's free
    /// pages are returned and the peak reset before the agent starts): the
    /// control plane's plus what the harness holds (the meter, the webhook
    /// receiver, rdkafka clients), so an upper bound of the control plane's.
    /// For [`RELAY_JSONL_PROCESS`], the `control-plane` process's over its
    /// whole life.
    #[serde(default)]
    pub cp_peak_rss_mib: Option<f64>,
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

/// A compression row's key: topic, payload, consumer (which link) and codec.
type CompressionKey = (usize, i32, String, String, String);

fn compression_key(r: &Run) -> CompressionKey {
    (
        r.size,
        r.partitions,
        r.payload.clone().unwrap_or_default(),
        r.consumer.clone(),
        r.compression.clone().unwrap_or_else(|| "none".into()),
    )
}

/// The compression runs of `runs` as rows: by topic, payload, link and codec.
fn compression_of(runs: &[Run]) -> Vec<CompressionRow> {
    let mut keys: Vec<CompressionKey> = Vec::new();
    for key in runs
        .iter()
        .filter(|r| r.part == COMPRESSION)
        .map(compression_key)
    {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .filter_map(|key| compression_row(runs, key))
        .collect()
}

/// The row of one key: the medians of its runs.
fn compression_row(runs: &[Run], key: CompressionKey) -> Option<CompressionRow> {
    let of: Vec<&Run> = runs
        .iter()
        .filter(|r| r.part == COMPRESSION && compression_key(r) == key)
        .collect();
    let m = |f: &dyn Fn(&Run) -> Option<f64>| median(of.iter().map(|r| f(r)));
    let (size, partitions, payload, consumer, codec) = key;
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
