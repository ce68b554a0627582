//! Where the slowest records of a latency run lost their time: before the
//! broker's log (producer and broker) or after it (consumer or relay), and
//! whether the broker's JVM was paused for garbage collection meanwhile,
//! from the GC log that `scripts/kafka-broker.sh` has the JVM write.

use crate::meter::Sample;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The latency target: records slower than this are the tail looked at.
pub const TARGET_MS: u32 = 50;

/// One stop-the-world pause of the broker's JVM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pause {
    /// Wall clock when it ended, µs since the epoch.
    pub end_us: u64,
    pub us: u64,
}

impl Pause {
    fn start_us(&self) -> u64 {
        self.end_us.saturating_sub(self.us)
    }
}

/// The pauses in `log` and its rotated predecessors (`log.0`, `log.1`),
/// oldest first. A missing file is no pause: the broker may predate the log.
pub fn read(log: &Path) -> Vec<Pause> {
    let mut all = Vec::new();
    for suffix in [".1", ".0", ""] {
        let mut p = log.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(text) = std::fs::read_to_string(&p) {
            all.extend(text.lines().filter_map(parse));
        }
    }
    all.sort_by_key(|p| p.end_us);
    all.dedup();
    all
}

/// `[1795724840429ms] GC(1640) Pause Young (Normal) (G1 Evacuation Pause)
/// 374M->144M(393M) 30.849ms` (decorator `timemillis`, the time the line was
/// written, at the end of the pause). Other lines (concurrent phases) are none.
fn parse(line: &str) -> Option<Pause> {
    let rest = line.strip_prefix('[')?;
    let (millis, rest) = rest.split_once("ms]")?;
    if !rest.contains(" Pause ") {
        return None;
    }
    let took = rest.trim_end().rsplit(' ').next()?.strip_suffix("ms")?;
    let took: f64 = took.parse().ok()?;
    Some(Pause {
        end_us: millis.parse::<u64>().ok()? * 1000,
        us: (took * 1000.0).round() as u64,
    })
}

/// The tail of a latency run: where its slowest records lost their time,
/// and the broker's pauses while it ran.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Tail {
    /// Records slower than [`TARGET_MS`].
    pub over_target: usize,
    /// Of those, the ones in flight (between produce and arrival) while the
    /// broker was paused: a lower bound of what the pauses explain, since
    /// records produced just after a pause also wait behind its backlog.
    pub over_target_in_pause: usize,
    /// Of the records over the target, the ones that spent more than half
    /// of their time before the broker appended them to its log (producer,
    /// broker), not after.
    #[serde(default)]
    pub over_target_mostly_to_log: usize,
    /// p99 of produce to the broker's log, over all records (none if the
    /// records did not carry the broker's append time).
    #[serde(default)]
    pub to_log_p99_ms: Option<f64>,
    /// Pauses that ended within the run (first produce to last arrival).
    pub pauses: usize,
    pub longest_pause_ms: f64,
    pub paused_ms: f64,
}

/// The tail of `samples` (a run's records), with `pauses` (the broker's).
pub fn tail(samples: &[Sample], pauses: &[Pause]) -> Tail {
    let mut t = Tail::default();
    let (Some(from), Some(to)) = (
        samples.iter().map(|s| s.produced_us).min(),
        samples
            .iter()
            .map(|s| s.produced_us + u64::from(s.latency_us))
            .max(),
    ) else {
        return t;
    };
    let to_log: Vec<u32> = samples.iter().filter_map(|s| s.to_log_us).collect();
    if to_log.len() == samples.len() {
        t.to_log_p99_ms = Some(crate::meter::Latency::of(to_log).p99_ms);
    }
    let within: Vec<&Pause> = pauses
        .iter()
        .filter(|p| p.end_us >= from && p.start_us() <= to)
        .collect();
    t.pauses = within.len();
    t.paused_ms = within
        .iter()
        .map(|p| p.us as f64 / 1000.0)
        .fold(0.0, |a, b| a + b);
    t.longest_pause_ms = within
        .iter()
        .map(|p| p.us as f64 / 1000.0)
        .fold(0.0, f64::max);
    for s in samples {
        let (produced, lat) = (s.produced_us, s.latency_us);
        if lat < TARGET_MS * 1000 {
            continue;
        }
        t.over_target += 1;
        if s.to_log_us.is_some_and(|l| l > lat / 2) {
            t.over_target_mostly_to_log += 1;
        }
        let arrived = produced + u64::from(lat);
        if within
            .iter()
            .any(|p| p.start_us() <= arrived && p.end_us >= produced)
        {
            t.over_target_in_pause += 1;
        }
    }
    t
}

/// Checks run under `cargo test`.
pub fn self_check() -> anyhow::Result<()> {
    let young = "[1795724840429ms] GC(1640) Pause Young (Normal) (G1 Evacuation Pause) 374M->144M(393M) 30.849ms";
    anyhow::ensure!(
        parse(young)
            == Some(Pause {
                end_us: 1_795_724_840_429_000,
                us: 30_849
            }),
        "young pause: {:?}",
        parse(young)
    );
    let remark = "[1795724840500ms] GC(1641) Pause Remark 200M->190M(393M) 2.5ms";
    anyhow::ensure!(parse(remark).is_some_and(|p| p.us == 2_500), "remark");
    for other in [
        "[1795724840600ms] GC(1642) Concurrent Mark Cycle 120.1ms",
        "[1795724840600ms] Using G1",
        "garbage",
    ] {
        anyhow::ensure!(parse(other).is_none(), "not a pause: {other}");
    }
    // A pause 1,000..1,040 ms: a slow record in flight across it counts, a
    // slow record after it does not, a fast one is not in the tail; the
    // first slow one lost most of its time before the log.
    let pauses = [
        Pause {
            end_us: 1_040_000,
            us: 40_000,
        },
        Pause {
            end_us: 9_000_000,
            us: 5_000,
        },
    ];
    let sample = |produced_us, latency_us, to_log_us| Sample {
        produced_us,
        latency_us,
        to_log_us: Some(to_log_us),
    };
    let samples = [
        sample(990_000, 60_000, 45_000),
        sample(1_100_000, 70_000, 2_000),
        sample(1_000_000, 3_000, 1_000),
    ];
    let t = tail(&samples, &pauses);
    anyhow::ensure!(
        (
            t.over_target,
            t.over_target_in_pause,
            t.over_target_mostly_to_log,
            t.pauses
        ) == (2, 1, 1, 1)
            && (t.longest_pause_ms, t.paused_ms) == (40.0, 40.0)
            && t.to_log_p99_ms == Some(45.0),
        "tail: {t:?}"
    );
    // No pause: a sum of 0 ms, not -0 (an empty f64 sum is -0.0).
    let none = tail(&samples, &[]);
    anyhow::ensure!(
        none.pauses == 0 && none.paused_ms.is_sign_positive(),
        "no pause: {none:?}"
    );
    Ok(())
}
