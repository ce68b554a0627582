//! Counting records where they come out (a bare consumer, or the control
//! plane's sink once the sink accepted them), and the produce-to-here
//! latency of the records in a measured range.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What came out, and when.
#[derive(Default)]
struct Inner {
    records: u64,
    bytes: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Sequence numbers whose latency is recorded: `from..to`.
    window: Option<(u64, u64)>,
    samples: Vec<Sample>,
}

/// What a record says of its times where it comes out.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// When `produce()` was called, µs since the epoch (in the value).
    pub produced_us: u64,
    pub seq: u64,
    /// The record's Kafka timestamp, ms since the epoch: the broker's append
    /// time on a topic with `message.timestamp.type=LogAppendTime`.
    pub logged_ms: Option<i64>,
}

/// One measured record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub produced_us: u64,
    /// Produce to here.
    pub latency_us: u32,
    /// Produce to the broker's log (its append time has ms precision, so
    /// this is up to 1 ms short), when the record carried it.
    pub to_log_us: Option<u32>,
}

/// Shared by whoever sees records come out and the scenario watching.
#[derive(Default)]
pub struct Meter {
    inner: Mutex<Inner>,
}

/// A snapshot of a meter.
#[derive(Debug, Clone, Copy)]
pub struct Count {
    pub records: u64,
    pub bytes: u64,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
}

impl Count {
    /// From the first record out to the last, in seconds.
    pub fn span_s(&self) -> f64 {
        match (self.first, self.last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        }
    }
}

impl Meter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget everything (a new scenario).
    pub fn reset(&self) {
        *self.lock() = Inner::default();
    }

    /// Record latencies of sequence numbers `from..to` from now on.
    pub fn measure(&self, from: u64, to: u64) {
        let mut m = self.lock();
        m.window = Some((from, to));
        m.samples.clear();
    }

    /// Whether a latency window is set (callers parse record values only then).
    pub fn wants_latency(&self) -> bool {
        self.lock().window.is_some()
    }

    /// `records` records of `bytes` bytes in total came out now; `stamps` are
    /// those of them parsed, if any.
    pub fn add(&self, records: u64, bytes: u64, stamps: &[Stamp]) {
        let now = Instant::now();
        let now_us = super::broker::now_us();
        let mut m = self.lock();
        m.records += records;
        m.bytes += bytes;
        m.first.get_or_insert(now);
        m.last = Some(now);
        if let Some((from, to)) = m.window {
            let measured = stamps.iter().filter(|s| (from..to).contains(&s.seq));
            m.samples.extend(measured.map(|s| Sample::of(s, now_us)));
        }
    }

    pub fn count(&self) -> Count {
        let m = self.lock();
        Count {
            records: m.records,
            bytes: m.bytes,
            first: m.first,
            last: m.last,
        }
    }

    /// Latencies recorded so far in the window.
    pub fn measured(&self) -> usize {
        self.lock().samples.len()
    }

    /// The records measured so far; takes them.
    pub fn take_samples(&self) -> Vec<Sample> {
        std::mem::take(&mut self.lock().samples)
    }
}

impl Sample {
    /// The record `stamp` describes, come out at `now_us` (µs since the epoch).
    fn of(stamp: &Stamp, now_us: u64) -> Sample {
        let us = |from: u64, to: u64| to.saturating_sub(from).min(u64::from(u32::MAX)) as u32;
        Sample {
            produced_us: stamp.produced_us,
            latency_us: us(stamp.produced_us, now_us),
            to_log_us: stamp
                .logged_ms
                .and_then(|ms| u64::try_from(ms).ok())
                .map(|ms| us(stamp.produced_us, ms * 1000)),
        }
    }
}

/// Percentiles of produce-to-sink latency, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(mut us: Vec<u32>) -> Latency {
        if us.is_empty() {
            return Latency::default();
        }
        us.sort_unstable();
        // Nearest rank: the smallest value with at least q of the samples at or below it.
        let rank = |q: f64| {
            us[((q * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1] as f64 / 1000.0
        };
        Latency {
            samples: us.len(),
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: *us.last().unwrap_or(&0) as f64 / 1000.0,
        }
    }
}

/// Wait until `done` holds, checking every 10 ms; false after `patience`
/// without `progress` changing.
pub async fn wait_for(
    mut done: impl FnMut() -> bool,
    mut progress: impl FnMut() -> u64,
    patience: Duration,
) -> bool {
    let mut last = progress();
    let mut since = Instant::now();
    loop {
        if done() {
            return true;
        }
        let p = progress();
        if p != last {
            last = p;
            since = Instant::now();
        } else if since.elapsed() > patience {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks run under `cargo test`.
pub fn self_check() -> anyhow::Result<()> {
    let l = Latency::of((1..=1000).map(|ms| ms * 1000).collect());
    anyhow::ensure!(
        (l.p50_ms, l.p99_ms, l.max_ms, l.samples) == (500.0, 990.0, 1000.0, 1000),
        "percentiles: {l:?}"
    );
    let m = Meter::default();
    m.measure(10, 20);
    let produced_us = super::broker::now_us() - 5_000;
    let stamp = |seq, logged_ms| Stamp {
        produced_us,
        seq,
        logged_ms,
    };
    // Logged 2 ms after produce (to the ms below), measured: only seq 10.
    let logged = Some((produced_us / 1000 + 2) as i64);
    m.add(
        3,
        300,
        &[stamp(9, None), stamp(10, logged), stamp(20, None)],
    );
    anyhow::ensure!(m.count().records == 3 && m.measured() == 1, "meter counts");
    let s = m.take_samples();
    let l = Latency::of(s.iter().map(|s| s.latency_us).collect());
    anyhow::ensure!(
        l.p50_ms >= 5.0 && l.p50_ms < 1000.0,
        "latency of a 5 ms old record: {l:?}"
    );
    anyhow::ensure!(
        s[0].to_log_us
            .is_some_and(|us| (1_000..=2_000).contains(&us)),
        "time to the log: {s:?}"
    );
    Ok(())
}
