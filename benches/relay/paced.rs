//! A producer at a fixed rate, on its own thread: the load of the latency and
//! memory scenarios. Each record carries the time `produce()` was called.

use crate::broker::{self, Broker};
use anyhow::bail;
use rdkafka::producer::{BaseProducer, Producer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `linger.ms` of the paced producer.
pub const PRODUCER_LINGER_MS: u32 = 5;

pub struct Paced {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    started: Instant,
    thread: JoinHandle<anyhow::Result<()>>,
}

/// Start producing `rate` records/s of `size` bytes to `topic`, round-robin
/// over its partitions, sequence numbers from 0.
pub fn start(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    size: usize,
    rate: u64,
) -> anyhow::Result<Paced> {
    // librdkafka's default linger (5 ms): with none, 10,000 records/s
    // become 10,000 produce requests/s and the broker, not the relay, sets
    // the latency. The linger is part of what is measured, for the bare
    // consumer and the relay alike.
    // BENCH_PRODUCER_LINGER_MS: another linger, for diagnosing the tail
    // before the broker's log (the tables still say the default).
    let linger = std::env::var("BENCH_PRODUCER_LINGER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PRODUCER_LINGER_MS);
    let producer = broker.producer(linger)?;
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load {
        topic: topic.to_owned(),
        partitions,
        size,
        rate,
    };
    let (s, st) = (sent.clone(), stop.clone());
    let started = Instant::now();
    let thread = std::thread::Builder::new()
        .name("paced-producer".into())
        .spawn(move || produce(&producer, &load, started, &s, &st))?;
    Ok(Paced {
        sent,
        stop,
        started,
        thread,
    })
}

/// What the paced producer writes.
struct Load {
    topic: String,
    partitions: i32,
    size: usize,
    rate: u64,
}

/// The producer thread: record `seq` is due `seq / rate` seconds after
/// `started`, and stamped when it is sent. Counts into `sent` until `stop`,
/// then flushes.
fn produce(
    producer: &BaseProducer,
    load: &Load,
    started: Instant,
    sent: &AtomicU64,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut value = broker::record(0, 0, load.size);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = started + Duration::from_secs_f64(seq as f64 / load.rate as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        broker::stamp(&mut value, seq, broker::now_us());
        let p = (seq % load.partitions as u64) as i32;
        broker::send_waiting(producer, &load.topic, p, &value, Duration::from_millis(1))
            .map_err(|e| anyhow::anyhow!("paced producer: {e}"))?;
        producer.poll(Duration::ZERO);
        seq += 1;
        sent.store(seq, Ordering::Relaxed);
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

impl Paced {
    /// Records produced so far (the next sequence number).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stop, flush, and return the number of records produced and the rate achieved.
    pub fn stop(self) -> anyhow::Result<(u64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        match self.thread.join() {
            Ok(r) => r?,
            Err(_) => bail!("paced producer panicked"),
        }
        let n = self.sent.load(Ordering::Relaxed);
        Ok((n, n as f64 / secs))
    }
}
