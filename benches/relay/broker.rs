//! The Kafka side of the benchmark: the broker `scripts/kafka-broker.sh`
//! started, topics filled with records of a fixed size, and what a consumer
//! group has committed.
//!
//! Every record value is a small JSON document of exactly the requested
//! size whose first field is the time it was produced, so the control plane
//! side can measure produce-to-sink latency without trusting Kafka's
//! millisecond timestamps:
//!
//! ```text
//! {"ts_us":1700000000000000,"seq":        42,"pad":"..."}
//! ```
//!
//! What the pad holds ([`Payload`]) matters only to compression: topics are
//! filled with words, or with random characters.

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Smallest record [`record`] can build.
pub const MIN_RECORD: usize = 52;
/// Where the produce time sits in a record value.
const TS_AT: std::ops::Range<usize> = 9..25;
const SEQ_AT: std::ops::Range<usize> = 32..42;

/// Where the pad of a record starts (after `"pad":"`).
const PAD_AT: usize = 50;

/// What the pad of a filled record holds. A batch compresses only as well
/// as its records do, so the compression runs fill one topic of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// Words drawn at random (uniformly) from a vocabulary of 128 English
    /// and technical words, different in every record: text with about one
    /// bit of information per character, between log lines (which compress
    /// better) and prose.
    Words,
    /// Random characters of the base64 alphabet, 6 bits in every 8: what an
    /// encrypted or already compressed value carried in JSON looks like.
    Random,
}

impl Payload {
    pub fn name(self) -> &'static str {
        match self {
            Payload::Words => "words",
            Payload::Random => "random",
        }
    }
}

const WORDS: &str = "the of and to in is that for it as was with be by on not he this are or his from at which \
    but have an they you were her she there been one all we their has would when if so no will more can out \
    up about into them some could time only new other then also any these two may first like our over such \
    order customer status shipped pending amount currency invoice account region service request response \
    latency error warning info debug user session token event stream topic partition offset batch agent \
    control plane group record value key header timestamp commit ack window broker consumer producer \
    payload schema version created updated deleted id name type source target";

/// Fill the pad of `value` (made by [`record`]) with `payload`, drawn from `rng`.
pub fn repad(value: &mut [u8], payload: Payload, rng: &mut u64) {
    let end = value.len() - 2;
    let pad = &mut value[PAD_AT.min(end)..end];
    match payload {
        Payload::Random => pad_random(pad, rng),
        Payload::Words => pad_words(pad, rng),
    }
}

/// xorshift64: fast, and plenty random for filling pads.
fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

/// Base64 characters, 10 of them (60 bits) from each draw.
fn pad_random(pad: &mut [u8], rng: &mut u64) {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in pad.chunks_mut(10) {
        let mut r = next(rng);
        for b in chunk {
            *b = B64[(r & 63) as usize];
            r >>= 6;
        }
    }
}

/// Words of [`WORDS`] separated by spaces; the last one cut to fit.
fn pad_words(pad: &mut [u8], rng: &mut u64) {
    thread_local! {
        static VOCABULARY: Vec<&'static str> = WORDS.split_whitespace().collect();
    }
    VOCABULARY.with(|words| {
        let mut at = 0;
        while at < pad.len() {
            let w = words[(next(rng) % words.len() as u64) as usize].as_bytes();
            let n = w.len().min(pad.len() - at);
            pad[at..at + n].copy_from_slice(&w[..n]);
            at += n;
            if at < pad.len() {
                pad[at] = b' ';
                at += 1;
            }
        }
    });
}

/// Send `value` to `partition` of `topic`; while librdkafka's queue is
/// full, serve its callbacks for up to `wait` and try again.
pub fn send_waiting(
    producer: &BaseProducer,
    topic: &str,
    partition: i32,
    value: &[u8],
    wait: Duration,
) -> Result<(), KafkaError> {
    loop {
        let record = BaseRecord::<(), [u8]>::to(topic)
            .partition(partition)
            .payload(value);
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(wait);
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The broker under test, as described by its `broker.env`.
#[derive(Debug, Clone)]
pub struct Broker {
    /// `127.0.0.1:port` of the PLAINTEXT listener.
    pub bootstrap: String,
    /// The broker's JVM, for its CPU time.
    pub pid: Option<u32>,
    /// The JVM's GC log (pauses), when the broker writes one.
    pub gc_log: Option<std::path::PathBuf>,
    /// The SASL_SSL listener, for the MirrorMaker 2 peer.
    pub sasl_ssl: Option<SaslSsl>,
}

/// How to reach the broker's SASL_SSL listener (SASL PLAIN, its CA).
#[derive(Debug, Clone)]
pub struct SaslSsl {
    pub bootstrap: String,
    pub user: String,
    pub password: String,
    pub ca_pem: std::path::PathBuf,
}

impl Broker {
    pub fn from_env_file(path: &Path) -> anyhow::Result<Broker> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {}; start the broker with scripts/kafka-broker.sh start",
                path.display()
            )
        })?;
        let vars: HashMap<&str, &str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let bootstrap = vars
            .get("KAFKA_PLAINTEXT")
            .with_context(|| format!("{} has no KAFKA_PLAINTEXT", path.display()))?;
        Ok(Broker {
            bootstrap: (*bootstrap).to_owned(),
            pid: vars.get("KAFKA_BROKER_PID").and_then(|p| p.parse().ok()),
            gc_log: vars.get("KAFKA_GC_LOG").map(std::path::PathBuf::from),
            sasl_ssl: (|| {
                Some(SaslSsl {
                    bootstrap: (*vars.get("KAFKA_SASL_SSL")?).to_owned(),
                    user: (*vars.get("KAFKA_SASL_USER")?).to_owned(),
                    password: (*vars.get("KAFKA_SASL_PASSWORD")?).to_owned(),
                    ca_pem: vars.get("KAFKA_CA_PEM")?.into(),
                })
            })(),
        })
    }

    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        self.create_topic_with(name, partitions, &[]).await
    }

    /// A topic that keeps at most `bytes` per partition (the broker deletes
    /// older segments), for runs that produce more than the disk holds.
    pub async fn create_bounded_topic(
        &self,
        name: &str,
        partitions: i32,
        bytes: u64,
    ) -> anyhow::Result<()> {
        let bytes = bytes.to_string();
        self.create_topic_with(name, partitions, &[("retention.bytes", &bytes)])
            .await
    }

    /// A topic whose records carry the broker's append time as their
    /// timestamp (`LogAppendTime`) instead of the producer's.
    pub async fn create_log_time_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        self.create_topic_with(
            name,
            partitions,
            &[("message.timestamp.type", "LogAppendTime")],
        )
        .await
    }

    async fn create_topic_with(
        &self,
        name: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (k, v) in configs {
            topic = topic.set(k, v);
        }
        for r in admin.create_topics(&[topic], &opts).await? {
            if let Err((t, code)) = r {
                bail!("cannot create topic {t}: {code}");
            }
        }
        Ok(())
    }

    /// Delete a topic (its gigabytes would otherwise stay on disk).
    pub async fn delete_topic(&self, name: &str) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for r in admin.delete_topics(&[name], &opts).await? {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((t, code)) => bail!("cannot delete topic {t}: {code}"),
            }
        }
        Ok(())
    }

    /// A producer tuned for `linger_ms` (0 for latency runs, larger to fill fast).
    pub fn producer(&self, linger_ms: u32) -> anyhow::Result<BaseProducer> {
        Ok(self
            .config()
            .set("linger.ms", linger_ms.to_string())
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("compression.type", "none")
            .set("acks", "1")
            .create()?)
    }

    /// Write `count` records of `size` bytes, spread evenly over the
    /// partitions, as fast as the broker takes them. Blocking.
    pub fn fill(
        &self,
        topic: &str,
        partitions: i32,
        size: usize,
        count: u64,
        payload: Payload,
    ) -> anyhow::Result<Duration> {
        let producer = self.producer(20)?;
        let started = Instant::now();
        let mut value = record(0, 0, size);
        let mut rng = 0x2545_F491_4F6C_DD1D_u64;
        for seq in 0..count {
            stamp(&mut value, seq, now_us());
            repad(&mut value, payload, &mut rng);
            let p = (seq % partitions as u64) as i32;
            send_waiting(&producer, topic, p, &value, Duration::from_millis(5))
                .map_err(|e| anyhow::anyhow!("producing to {topic}: {e}"))?;
            if seq % 1024 == 0 {
                producer.poll(Duration::ZERO);
            }
        }
        producer
            .flush(Duration::from_secs(120))
            .context("flushing the filler")?;
        Ok(started.elapsed())
    }

    /// The end offset of every partition (what a full drain must reach).
    pub fn end_offsets(&self, topic: &str, partitions: i32) -> anyhow::Result<Vec<i64>> {
        let c: BaseConsumer = self.config().create()?;
        (0..partitions)
            .map(|p| Ok(c.fetch_watermarks(topic, p, Duration::from_secs(10))?.1))
            .collect()
    }

    /// What `group` has committed on each partition (-1 for nothing).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> anyhow::Result<Vec<i64>> {
        let c: BaseConsumer = self
            .config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
        Ok((0..partitions)
            .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            })
            .collect())
    }
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A record value of exactly `size` bytes (at least [`MIN_RECORD`]).
pub fn record(seq: u64, ts_us: u64, size: usize) -> Vec<u8> {
    // Numbers right-aligned in fixed-width fields, padded with spaces (JSON
    // allows them; leading zeros it does not), so `stamp` can rewrite them.
    let head = format!("{{\"ts_us\":{ts_us:>16},\"seq\":{seq:>10},\"pad\":\"");
    debug_assert_eq!(head.len(), 50);
    let mut v = head.into_bytes();
    v.resize(size.max(MIN_RECORD) - 2, b'x');
    v.extend_from_slice(b"\"}");
    v
}

/// Rewrite the time and sequence number of a record made by [`record`].
pub fn stamp(value: &mut [u8], seq: u64, ts_us: u64) {
    value[TS_AT].copy_from_slice(format!("{ts_us:>16}").as_bytes());
    value[SEQ_AT].copy_from_slice(format!("{seq:>10}").as_bytes());
}

/// The produce time and sequence number of a record made by [`record`].
pub fn parse(value: &[u8]) -> Option<(u64, u64)> {
    let digits = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = value.get(r)?;
        let s = &s[s.iter().take_while(|&&b| b == b' ').count()..];
        if s.is_empty() {
            return None;
        }
        s.iter().try_fold(0u64, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
        })
    };
    Some((digits(TS_AT)?, digits(SEQ_AT)?))
}

/// Checks run under `cargo test` (this target has no test harness).
pub fn self_check() -> anyhow::Result<()> {
    for size in [MIN_RECORD, 100, 1024, 10240] {
        let mut v = record(0, 0, size);
        anyhow::ensure!(v.len() == size, "record of {size} bytes has {}", v.len());
        anyhow::ensure!(parse(&v) == Some((0, 0)), "fresh record does not parse");
        serde_json::from_slice::<serde_json::Value>(&v).context("fresh record is not JSON")?;
        stamp(&mut v, 42, 1_700_000_000_123_456);
        anyhow::ensure!(
            parse(&v) == Some((1_700_000_000_123_456, 42)),
            "stamped record does not parse back"
        );
        serde_json::from_slice::<serde_json::Value>(&v).context("record is not JSON")?;
        for payload in [Payload::Words, Payload::Random] {
            let mut rng = 1;
            let before = v.clone();
            repad(&mut v, payload, &mut rng);
            anyhow::ensure!(v.len() == size, "repadded record has {} bytes", v.len());
            anyhow::ensure!(
                parse(&v) == Some((1_700_000_000_123_456, 42)),
                "repadded record lost its stamp"
            );
            serde_json::from_slice::<serde_json::Value>(&v)
                .with_context(|| format!("{} record is not JSON", payload.name()))?;
            anyhow::ensure!(
                size <= PAD_AT + 2 || v != before,
                "{} pad changed nothing",
                payload.name()
            );
        }
    }
    Ok(())
}
