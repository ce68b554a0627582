//! Poll jobs against a real Kafka broker (tests/common/kafka.rs): the test
//! plays the control plane, decoding batch frames and acking them, and checks
//! what the consumer group committed with a separate client.

mod common;

use base64::Engine as _;
use common::kafka::{self, TestBroker};
use connectivity_agent::allowlist::AllowList;
use connectivity_agent::relay::{self, JobHandle, Jobs, Outbound, RelaySettings};
use connectivity_protocol::batch::{self, Batch};
use connectivity_protocol::job::{
    Compression, ErrorClass, JobPhase, JobSpec, JobState, Partitions, Sasl, SaslMechanism,
    Security, SecurityProtocol, StartPosition, Truststore, TruststoreFormat, defaults,
};
use connectivity_protocol::secret::Secret;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(40);

/// `RUST_LOG=connectivity_agent=debug cargo test --test relay -- --nocapture` shows the jobs' logs.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn allow() -> AllowList {
    AllowList::parse("127.0.0.1:*,localhost:*").unwrap()
}

fn settings() -> RelaySettings {
    RelaySettings {
        session_grace: Duration::from_secs(2),
        state_interval: Duration::from_millis(500),
        retry_base: Duration::from_millis(300),
        retry_cap: Duration::from_secs(2),
        preflight_timeout: Duration::from_secs(10),
        revoke_deadline: Duration::from_secs(5),
        ..RelaySettings::default()
    }
}

fn spec(id: &str, bootstrap: &str, topic: &str, group: &str) -> JobSpec {
    JobSpec {
        id: id.into(),
        bootstrap_servers: bootstrap.into(),
        topic: topic.into(),
        partitions: Partitions::All,
        consumer_group: group.into(),
        start: StartPosition::Earliest,
        max_records: 100,
        max_bytes: 1024 * 1024,
        max_wait_ms: 50,
        window: 8,
        window_bytes: defaults::window_bytes(),
        session_timeout_ms: 6000,
        compression: Compression::None,
        security: Security {
            protocol: SecurityProtocol::Plaintext,
            ..Default::default()
        },
    }
}

/// Plays the control plane's side of one session channel.
struct ControlPlane {
    rx: mpsc::Receiver<Outbound>,
    stash: VecDeque<Batch>,
    states: HashMap<String, JobState>,
    /// Frames that came compressed ("CAZ1").
    compressed: usize,
}

impl ControlPlane {
    fn new(rx: mpsc::Receiver<Outbound>) -> Self {
        ControlPlane {
            rx,
            stash: VecDeque::new(),
            states: HashMap::new(),
            compressed: 0,
        }
    }

    fn take(&mut self, o: Outbound) {
        match o {
            Outbound::Batch {
                job_id,
                batch_seq,
                frame,
            } => {
                if frame.starts_with(batch::MAGIC_COMPRESSED) {
                    self.compressed += 1;
                }
                let b = batch::decode(frame).expect("a valid batch frame");
                assert_eq!(
                    (b.job_id.as_str(), b.batch_seq),
                    (job_id.as_str(), batch_seq),
                    "frame header matches"
                );
                self.stash.push_back(b);
            }
            Outbound::State(s) => {
                self.states.insert(s.job_id.clone(), s);
            }
        }
    }

    /// The next batch, or `None` if none arrives `within`.
    async fn batch(&mut self, within: Duration) -> Option<Batch> {
        let end = tokio::time::Instant::now() + within;
        loop {
            if let Some(b) = self.stash.pop_front() {
                return Some(b);
            }
            match tokio::time::timeout_at(end, self.rx.recv()).await {
                Ok(Some(o)) => self.take(o),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Wait for a state of `job` matching `pred` (batches are stashed).
    async fn state(
        &mut self,
        job: &str,
        within: Duration,
        pred: impl Fn(&JobState) -> bool,
    ) -> JobState {
        let end = tokio::time::Instant::now() + within;
        loop {
            if let Some(s) = self.states.get(job).filter(|s| pred(s)) {
                return s.clone();
            }
            match tokio::time::timeout_at(end, self.rx.recv()).await {
                Ok(Some(o)) => self.take(o),
                _ => panic!(
                    "no matching state of {job} within {within:?}; last: {:#?}",
                    self.states.get(job)
                ),
            }
        }
    }

    /// Nothing but states arrives during `d`; returns the batches that did.
    async fn quiet_for(&mut self, d: Duration) -> Vec<Batch> {
        let end = tokio::time::Instant::now() + d;
        while let Ok(Some(o)) = tokio::time::timeout_at(end, self.rx.recv()).await {
            self.take(o);
        }
        self.stash.drain(..).collect()
    }
}

/// Produced records: (partition, offset) -> (key, value).
type Seeded = BTreeMap<(i32, i64), (Vec<u8>, Vec<u8>)>;

/// Produce `n` keyed JSON records; returns (partition, offset) -> (key, value).
async fn seed(b: &TestBroker, topic: &str, from: usize, n: usize) -> Seeded {
    produce_keyed(b, topic, from..from + n, |i| {
        format!(r#"{{"schema":{{}},"payload":{{"ID":{i}}}}}"#).into_bytes()
    })
    .await
}

/// Produce records `key-i` with `value(i)` for each `i`.
async fn produce_keyed(
    b: &TestBroker,
    topic: &str,
    numbers: std::ops::Range<usize>,
    value: impl Fn(usize) -> Vec<u8>,
) -> Seeded {
    let owned: Vec<(Vec<u8>, Vec<u8>)> = numbers
        .map(|i| (format!("key-{i}").into_bytes(), value(i)))
        .collect();
    let recs: Vec<(Option<&[u8]>, &[u8])> = owned
        .iter()
        .map(|(k, v)| (Some(k.as_slice()), v.as_slice()))
        .collect();
    let delivered = kafka::produce(b, topic, &recs).await;
    delivered.into_iter().zip(owned).collect()
}

/// Committed offsets of `group` for partitions 0..n (-1 = none), read by a
/// separate client that does not join the group.
async fn committed(b: &TestBroker, group: &str, topic: &str, n: i32) -> Vec<i64> {
    let mut cfg = b.plaintext_config();
    cfg.set("group.id", group);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = cfg.create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..n {
            tpl.add_partition(&topic, p);
        }
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        (0..n)
            .map(
                |p| match got.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => -1,
                },
            )
            .collect()
    })
    .await
    .unwrap()
}

/// Poll `committed` until it equals `want` (auto-commit runs every second).
async fn wait_committed(b: &TestBroker, group: &str, topic: &str, want: &[i64]) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let got = committed(b, group, topic, want.len() as i32).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < end,
            "committed offsets {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Next offset per partition after the seeded records.
fn highs(seeded: &Seeded, partitions: i32) -> Vec<i64> {
    (0..partitions)
        .map(|p| {
            seeded
                .keys()
                .filter(|(q, _)| *q == p)
                .map(|(_, o)| o + 1)
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// Receive and ack (in pairs, swapped: out of order) until `n` records
/// arrived; checks every record against what was produced, no duplicates,
/// offsets in order per partition. Returns the batches seen.
async fn deliver_all(cp: &mut ControlPlane, ack: impl Fn(u64), seeded: &Seeded, n: usize) -> usize {
    let mut seen: BTreeMap<(i32, i64), ()> = BTreeMap::new();
    let mut last: HashMap<i32, i64> = HashMap::new();
    let mut held: Option<u64> = None;
    let mut batches = 0;
    while seen.len() < n {
        let b = cp
            .batch(WAIT)
            .await
            .unwrap_or_else(|| panic!("only {} of {n} records arrived", seen.len()));
        batches += 1;
        for r in &b.records {
            let (k, v) = seeded
                .get(&(r.partition, r.offset))
                .expect("a produced record");
            assert_eq!(
                (r.key.as_deref(), r.value.as_deref()),
                (Some(k.as_slice()), Some(v.as_slice()))
            );
            assert!(r.timestamp.is_some());
            assert!(
                seen.insert((r.partition, r.offset), ()).is_none(),
                "duplicate {}/{}",
                r.partition,
                r.offset
            );
            let prev = last.insert(r.partition, r.offset).unwrap_or(-1);
            assert!(
                r.offset > prev,
                "partition {} went from {prev} to {}",
                r.partition,
                r.offset
            );
        }
        match held.take() {
            None => held = Some(b.batch_seq),
            Some(h) => {
                ack(b.batch_seq);
                ack(h);
            }
        }
    }
    if let Some(h) = held {
        ack(h);
    }
    batches
}

fn spawn(spec: JobSpec) -> (JobHandle, ControlPlane, mpsc::Sender<Outbound>) {
    let (tx, rx) = mpsc::channel(16);
    let h = relay::spawn(
        spec,
        &allow(),
        settings(),
        tx.clone(),
        CancellationToken::new(),
    );
    (h, ControlPlane::new(rx), tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_three_partitions_thousand_records_all_delivered_and_committed() {
    logs();
    let b = kafka::broker();
    let topic = kafka::unique_topic("relay-a");
    kafka::create_topic(&b, &topic, 3).await;
    let seeded = seed(&b, &topic, 0, 1000).await;
    let want = highs(&seeded, 3);
    assert!(
        want.iter().all(|h| *h > 100),
        "keys spread over partitions: {want:?}"
    );
    let group = kafka::unique_topic("group-a");

    let started = Instant::now();
    let (h, mut cp, _tx) = spawn(spec("a", &b.plaintext, &topic, &group));
    let batches = deliver_all(&mut cp, |s| h.ack(s), &seeded, 1000).await;
    let relayed_in = started.elapsed();
    wait_committed(&b, &group, &topic, &want).await;
    eprintln!(
        "1000 records in {batches} batches relayed in {relayed_in:?}, committed after {:?}",
        started.elapsed()
    );

    let s = cp
        .state("a", WAIT, |s| {
            s.batches_acked as usize == batches && s.partitions.iter().all(|p| p.committed >= 0)
        })
        .await;
    assert_eq!(s.phase, JobPhase::Running);
    assert_eq!(s.records_relayed, 1000);
    // Without compression the frames go as they are.
    assert_eq!((cp.compressed, s.bytes_uncompressed), (0, s.bytes_relayed));
    let acked: Vec<i64> = s.partitions.iter().map(|p| p.acked).collect();
    assert_eq!(acked, want);
    let relayed: Vec<i64> = s.partitions.iter().map(|p| p.relayed).collect();
    assert_eq!(relayed, want);
    h.drain(Duration::from_secs(10)).await;
    wait_committed(&b, &group, &topic, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_and_zstd_batches_carry_every_record_and_the_state_counts_the_bytes_saved() {
    logs();
    let b = kafka::broker();
    for codec in [Compression::Lz4, Compression::Zstd] {
        let name = codec.as_str();
        let topic = kafka::unique_topic(&format!("relay-{name}"));
        kafka::create_topic(&b, &topic, 2).await;
        let seeded = seed(&b, &topic, 0, 600).await;
        let want = highs(&seeded, 2);
        let group = kafka::unique_topic(&format!("group-{name}"));
        let mut s = spec(name, &b.plaintext, &topic, &group);
        s.compression = codec;
        let (h, mut cp, _tx) = spawn(s);
        let batches = deliver_all(&mut cp, |s| h.ack(s), &seeded, 600).await;
        wait_committed(&b, &group, &topic, &want).await;
        assert_eq!(cp.compressed, batches, "{name}: every batch compressed");
        let s = cp
            .state(name, WAIT, |s| s.batches_acked as usize == batches)
            .await;
        assert_eq!(s.records_relayed, 600);
        // The seeded values repeat their field names: well under half the bytes.
        assert!(
            s.bytes_relayed * 2 < s.bytes_uncompressed,
            "{name}: {} bytes sent for {} before compression",
            s.bytes_relayed,
            s.bytes_uncompressed
        );
        h.drain(Duration::from_secs(10)).await;
    }
}

async fn run_secure(b: &TestBroker, prefix: &str, security: Security) {
    let topic = kafka::unique_topic(prefix);
    kafka::create_topic(b, &topic, 1).await;
    let seeded = seed(b, &topic, 0, 25).await;
    let group = kafka::unique_topic("group-sec");
    let (h, mut cp, _tx) = spawn(JobSpec {
        security,
        ..spec(prefix, &b.sasl_ssl, &topic, &group)
    });
    deliver_all(&mut cp, |s| h.ack(s), &seeded, 25).await;
    wait_committed(b, &group, &topic, &[25]).await;
    h.drain(Duration::from_secs(10)).await;
}

fn sasl(b: &TestBroker, mechanism: SaslMechanism, password: &str) -> Option<Sasl> {
    Some(Sasl {
        mechanism,
        username: b.sasl_user.clone(),
        password: Secret::new(password),
    })
}

fn b64_file(p: &std::path::Path) -> Secret {
    Secret::new(base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_plain_with_the_jks_truststore() {
    logs();
    let b = kafka::broker();
    let security = Security {
        protocol: SecurityProtocol::SaslSsl,
        sasl: sasl(&b, SaslMechanism::Plain, &b.sasl_password),
        truststore: Some(Truststore {
            format: TruststoreFormat::Jks,
            data: b64_file(&b.truststore_jks),
            password: Some(Secret::new(b.truststore_password.clone())),
        }),
        ..Default::default()
    };
    run_secure(&b, "relay-jks", security).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_scram_sha_512_with_a_pem_truststore() {
    logs();
    let b = kafka::broker();
    let security = Security {
        protocol: SecurityProtocol::SaslSsl,
        sasl: sasl(&b, SaslMechanism::ScramSha512, &b.sasl_password),
        truststore: Some(Truststore {
            format: TruststoreFormat::Pem,
            data: Secret::new(std::fs::read_to_string(&b.ca_pem).unwrap()),
            password: None,
        }),
        ..Default::default()
    };
    run_secure(&b, "relay-scram", security).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_scram_sha_256_with_a_pkcs12_truststore() {
    logs();
    let b = kafka::broker();
    let security = Security {
        protocol: SecurityProtocol::SaslSsl,
        sasl: sasl(&b, SaslMechanism::ScramSha256, &b.sasl_password),
        truststore: Some(Truststore {
            format: TruststoreFormat::Pkcs12,
            data: b64_file(&b.truststore_p12),
            password: Some(Secret::new(b.truststore_password.clone())),
        }),
        ..Default::default()
    };
    run_secure(&b, "relay-p12", security).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_ack_holds_the_commit_and_a_restart_redelivers_from_the_gap() {
    logs();
    let b = kafka::broker();
    let topic = kafka::unique_topic("relay-gap");
    kafka::create_topic(&b, &topic, 1).await;
    let seeded = seed(&b, &topic, 0, 30).await;
    let group = kafka::unique_topic("group-gap");
    let job = JobSpec {
        max_records: 10,
        ..spec("gap", &b.plaintext, &topic, &group)
    };

    let (h, mut cp, _tx) = spawn(job.clone());
    let mut got = Vec::new();
    while got.iter().map(|b: &Batch| b.records.len()).sum::<usize>() < 30 {
        got.push(cp.batch(WAIT).await.expect("a batch"));
    }
    assert!(got.len() >= 3, "{} batches", got.len());
    // Ack everything except the second batch: the gap holds the watermark.
    let gap = &got[1];
    let gap_start = gap.records[0].offset;
    for b in got.iter().filter(|b| b.batch_seq != gap.batch_seq) {
        h.ack(b.batch_seq);
    }
    wait_committed(&b, &group, &topic, &[gap_start]).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        committed(&b, &group, &topic, 1).await,
        vec![gap_start],
        "nothing past the gap is committed"
    );
    let s = cp
        .state("gap", WAIT, |s| {
            s.partitions.first().is_some_and(|p| p.relayed == 30)
        })
        .await;
    assert_eq!(s.partitions[0].acked, gap_start);
    // Stop without the missing ack (the drain deadline passes).
    h.drain(Duration::from_secs(1)).await;
    assert_eq!(committed(&b, &group, &topic, 1).await, vec![gap_start]);

    // A new job in the same group starts at the gap: the unacked records come again.
    let (h, mut cp, _tx) = spawn(job);
    let again: Seeded = seeded
        .iter()
        .filter(|((_, o), _)| *o >= gap_start)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    let first = cp.batch(WAIT).await.expect("redelivery");
    assert_eq!(first.records[0].offset, gap_start);
    cp.stash.push_front(first);
    deliver_all(&mut cp, |s| h.ack(s), &again, again.len()).await;
    wait_committed(&b, &group, &topic, &[30]).await;
    h.drain(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_window_stops_fetching_until_an_ack_frees_a_slot() {
    logs();
    let b = kafka::broker();
    let topic = kafka::unique_topic("relay-window");
    kafka::create_topic(&b, &topic, 1).await;
    let seeded = seed(&b, &topic, 0, 60).await;
    let group = kafka::unique_topic("group-window");
    let (h, mut cp, _tx) = spawn(JobSpec {
        max_records: 5,
        window: 2,
        ..spec("w", &b.plaintext, &topic, &group)
    });

    let b1 = cp.batch(WAIT).await.expect("batch 1");
    let b2 = cp.batch(WAIT).await.expect("batch 2");
    assert_eq!((b1.records.len(), b2.records.len()), (5, 5));
    let extra = cp.quiet_for(Duration::from_secs(3)).await;
    assert!(
        extra.is_empty(),
        "{} batches beyond the window of 2",
        extra.len()
    );
    let s = cp.state("w", WAIT, |_| true).await;
    assert!(
        s.partitions[0].fetched <= 20,
        "fetching paused while full: {:?}",
        s.partitions
    );

    h.ack(b2.batch_seq);
    let b3 = cp.batch(WAIT).await.expect("batch 3 after an ack");
    assert_eq!(b3.records[0].offset, 10);
    assert!(
        cp.quiet_for(Duration::from_secs(2)).await.is_empty(),
        "one ack frees one slot"
    );
    // The out-of-order ack did not commit past batch 1.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(committed(&b, &group, &topic, 1).await, vec![-1]);
    h.ack(b1.batch_seq);
    wait_committed(&b, &group, &topic, &[10]).await;
    h.ack(b3.batch_seq);
    let rest: BTreeMap<_, _> = seeded.into_iter().filter(|((_, o), _)| *o >= 15).collect();
    deliver_all(&mut cp, |s| h.ack(s), &rest, 45).await;
    wait_committed(&b, &group, &topic, &[60]).await;
    h.drain(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_window_stops_fetching_before_the_batch_window_does() {
    logs();
    let b = kafka::broker();
    let topic = kafka::unique_topic("relay-window-bytes");
    kafka::create_topic(&b, &topic, 1).await;
    // 40 records of 16 KiB, two to a batch: about 32 KiB per batch.
    let seeded = produce_keyed(&b, &topic, 0..40, |i| {
        vec![b'a' + (i % 26) as u8; 16 * 1024]
    })
    .await;
    let group = kafka::unique_topic("group-window-bytes");
    let (h, mut cp, _tx) = spawn(JobSpec {
        max_records: 2,
        window: 16,
        window_bytes: 64 * 1024,
        ..spec("wb", &b.plaintext, &topic, &group)
    });

    // 64 KiB in flight is two batches, far below the window of 16 batches
    // (which the default 64 MiB would let through).
    let b1 = cp.batch(WAIT).await.expect("batch 1");
    let mut first = vec![b1];
    first.extend(cp.quiet_for(Duration::from_secs(3)).await);
    let sent: usize = first.iter().map(|b| b.records.len()).sum();
    assert!(
        (1..=3).contains(&first.len()),
        "{} batches ({sent} records of 16 KiB) sent with 64 KiB in flight at most",
        first.len()
    );
    let s = cp.state("wb", WAIT, |_| true).await;
    assert!(
        s.partitions[0].fetched <= 12,
        "fetching stopped while the bytes in flight were at the cap: {:?}",
        s.partitions
    );

    // Acks free room; everything arrives, once and in order.
    for b in &first {
        h.ack(b.batch_seq);
    }
    let rest: Seeded = seeded
        .into_iter()
        .filter(|((_, o), _)| *o >= sent as i64)
        .collect();
    deliver_all(&mut cp, |s| h.ack(s), &rest, 40 - sent).await;
    wait_committed(&b, &group, &topic, &[40]).await;
    h.drain(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_record_goes_out_at_once_and_records_gather_while_the_window_is_full() {
    logs();
    let b = kafka::broker();
    let topic = kafka::unique_topic("relay-eager");
    kafka::create_topic(&b, &topic, 1).await;
    seed(&b, &topic, 0, 1).await;
    let group = kafka::unique_topic("group-eager");
    // max_wait_ms of two minutes: only "send when nothing else is waiting"
    // gets the record out within the wait below.
    let (h, mut cp, _tx) = spawn(JobSpec {
        max_wait_ms: 120_000,
        window: 1,
        ..spec("e", &b.plaintext, &topic, &group)
    });
    let b1 = cp
        .batch(Duration::from_secs(20))
        .await
        .expect("a lone record is sent without waiting for max_wait_ms");
    assert_eq!(b1.records.len(), 1);

    // The window (1 batch) is full: what is produced now waits, then goes
    // out as one batch as soon as the ack frees the window.
    seed(&b, &topic, 1, 30).await;
    let extra = cp.quiet_for(Duration::from_secs(3)).await;
    assert!(
        extra.is_empty(),
        "{} batches beyond the window of 1",
        extra.len()
    );
    h.ack(b1.batch_seq);
    let b2 = cp
        .batch(Duration::from_secs(20))
        .await
        .expect("the waiting records are sent when the ack frees the window");
    let offsets: Vec<i64> = b2.records.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        (1..31).collect::<Vec<i64>>(),
        "one batch with every waiting record"
    );
    h.ack(b2.batch_seq);
    wait_committed(&b, &group, &topic, &[31]).await;
    h.drain(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_fails_as_sasl_while_another_job_keeps_working() {
    logs();
    let b = kafka::broker();
    let topic = kafka::unique_topic("relay-badpw");
    kafka::create_topic(&b, &topic, 1).await;
    let seeded = seed(&b, &topic, 0, 40).await;
    let jobs = Jobs::new(allow(), settings(), CancellationToken::new());
    let (tx, rx) = mpsc::channel(16);
    jobs.session_restored(tx);
    let mut cp = ControlPlane::new(rx);

    let bad = JobSpec {
        security: Security {
            protocol: SecurityProtocol::SaslSsl,
            sasl: sasl(&b, SaslMechanism::Plain, "wrong-secret"),
            truststore: Some(Truststore {
                format: TruststoreFormat::Pem,
                data: Secret::new(std::fs::read_to_string(&b.ca_pem).unwrap()),
                password: None,
            }),
            ..Default::default()
        },
        ..spec(
            "bad",
            &b.sasl_ssl,
            &topic,
            &kafka::unique_topic("group-bad"),
        )
    };
    jobs.assign(bad);
    jobs.assign(spec(
        "good",
        &b.plaintext,
        &topic,
        &kafka::unique_topic("group-good"),
    ));

    let started = Instant::now();
    let s = cp.state("bad", WAIT, |s| s.phase == JobPhase::Failed).await;
    eprintln!("wrong password reported after {:?}", started.elapsed());
    let e = s.error.unwrap();
    assert_eq!(e.class, ErrorClass::Sasl);
    assert!(
        e.message.starts_with(&format!(
            "the stream endpoint {} rejected user \"alice\" with SASL PLAIN (librdkafka: ",
            b.sasl_ssl
        )),
        "{}",
        e.message
    );
    assert!(e.message.ends_with(
        "check the username and password (OCI Streaming: username <tenancy>/<user>/<stream pool OCID>, password an auth token of that user)"
    ), "{}", e.message);
    assert!(!e.message.contains("wrong-secret"));

    deliver_all(&mut cp, |s| jobs.ack("good", s), &seeded, 40).await;
    // Still failing (retried with backoff), never delivered anything.
    assert_eq!(
        jobs.states()
            .iter()
            .find(|s| s.job_id == "bad")
            .unwrap()
            .records_relayed,
        0
    );
    assert_eq!(jobs.job_ids(), vec!["bad".to_string(), "good".to_string()]);
    jobs.drain_all(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_fails_as_tls() {
    logs();
    let b = kafka::broker();
    let topic = kafka::unique_topic("relay-badca");
    kafka::create_topic(&b, &topic, 1).await;
    let job = JobSpec {
        security: Security {
            protocol: SecurityProtocol::SaslSsl,
            sasl: sasl(&b, SaslMechanism::Plain, &b.sasl_password),
            truststore: Some(Truststore {
                format: TruststoreFormat::Pem,
                data: Secret::new(std::fs::read_to_string(&b.other_ca_pem).unwrap()),
                password: None,
            }),
            ..Default::default()
        },
        ..spec(
            "badca",
            &b.sasl_ssl,
            &topic,
            &kafka::unique_topic("group-badca"),
        )
    };
    let (h, mut cp, _tx) = spawn(job);
    let s = cp
        .state("badca", WAIT, |s| s.phase == JobPhase::Failed)
        .await;
    let e = s.error.unwrap();
    assert_eq!(e.class, ErrorClass::Tls, "{}", e.message);
    assert!(
        e.message
            .contains("its certificate is not signed by a CA in the truststore"),
        "{}",
        e.message
    );
    h.drain(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topic_fails_as_topic_missing() {
    logs();
    let b = kafka::broker();
    let topic = kafka::unique_topic("relay-nothere");
    let (h, mut cp, _tx) = spawn(spec(
        "missing",
        &b.plaintext,
        &topic,
        &kafka::unique_topic("group-m"),
    ));
    let s = cp
        .state("missing", WAIT, |s| s.phase == JobPhase::Failed)
        .await;
    let e = s.error.unwrap();
    assert_eq!(e.class, ErrorClass::TopicMissing);
    assert!(
        e.message.starts_with(&format!(
            "topic {topic:?} does not exist on {}",
            b.plaintext
        )),
        "{}",
        e.message
    );
    h.drain(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_outside_the_allow_list_is_refused() {
    logs();
    let b = kafka::broker();
    let (tx, rx) = mpsc::channel(16);
    let mut cp = ControlPlane::new(rx);
    let only = AllowList::parse("kafka.internal:9092").unwrap();
    let h = relay::spawn(
        spec("na", &b.plaintext, "t", "g"),
        &only,
        settings(),
        tx,
        CancellationToken::new(),
    );
    let s = cp.state("na", WAIT, |s| s.phase == JobPhase::Failed).await;
    let e = s.error.unwrap();
    assert_eq!(e.class, ErrorClass::NotAllowed);
    assert_eq!(
        e.message,
        format!(
            "stream endpoint {0} is not in this agent's agent_ALLOWED_ENDPOINTS (kafka.internal:9092); \
             add it there on the agent host (for example agent_ALLOWED_ENDPOINTS={0}) and restart the agent",
            b.plaintext
        )
    );
    h.drain(Duration::from_secs(2)).await;
}

/// The bootstrap server is allowed by name, but the broker advertises
/// itself by address, which the allow-list does not hold: librdkafka would
/// read from that address, so the job is refused before it joins a group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_advertised_outside_the_allow_list_is_refused() {
    logs();
    let b = kafka::broker();
    let topic = kafka::unique_topic("relay-advertised");
    kafka::create_topic(&b, &topic, 1).await;
    let port = b.plaintext.rsplit_once(':').unwrap().1;
    let bootstrap = format!("localhost:{port}");
    let rule = format!("localhost:{port}");
    let only = AllowList::parse(&rule).unwrap();
    let (tx, rx) = mpsc::channel(16);
    let mut cp = ControlPlane::new(rx);
    let h = relay::spawn(
        spec(
            "adv",
            &bootstrap,
            &topic,
            &kafka::unique_topic("group-advertised"),
        ),
        &only,
        settings(),
        tx,
        CancellationToken::new(),
    );
    let s = cp.state("adv", WAIT, |s| s.phase == JobPhase::Failed).await;
    let e = s.error.unwrap();
    assert_eq!(e.class, ErrorClass::NotAllowed, "{}", e.message);
    assert_eq!(
        e.message,
        format!(
            "the cluster at {bootstrap} advertises broker {0}, which is not in this agent's \
             agent_ALLOWED_ENDPOINTS ({rule}); nothing was read or written. If that broker \
             belongs to the cluster, add it there on the agent host (for example \
             agent_ALLOWED_ENDPOINTS={0}) and restart the agent; otherwise fix the \
             brokers' advertised.listeners",
            b.plaintext
        )
    );
    // Not retried: only the operator can change the allow-list.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.state().phase, JobPhase::Failed);
    h.drain(Duration::from_secs(2)).await;
}

/// Offsets of the records of `batches`, in order.
fn offsets(batches: &[Batch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| b.records.iter().map(|r| r.offset))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_restored_within_grace_reads_the_unacked_records_again_from_kafka() {
    logs();
    let b = kafka::broker();
    let topic = kafka::unique_topic("relay-reread");
    kafka::create_topic(&b, &topic, 1).await;
    let seeded = seed(&b, &topic, 0, 60).await;
    let group = kafka::unique_topic("group-reread");
    let (h, mut cp, _tx) = spawn(JobSpec {
        max_records: 10,
        window: 3,
        ..spec("r", &b.plaintext, &topic, &group)
    });
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(cp.batch(WAIT).await.expect("batch"));
    }
    assert_eq!(offsets(&first), (0..30).collect::<Vec<_>>());
    // Batches 1 and 3 acked, 2 not: the watermark stops at the gap (10).
    // Records 30..59 wait in batches or in librdkafka's queue.
    h.ack(first[0].batch_seq);
    h.ack(first[2].batch_seq);
    wait_committed(&b, &group, &topic, &[10]).await;
    h.session_lost();
    // The two acks freed two slots of the window: what went out meanwhile.
    let late = cp.quiet_for(Duration::from_millis(500)).await;
    let sent_before: usize = 30 + late.iter().map(|b| b.records.len()).sum::<usize>();

    let (tx2, rx2) = mpsc::channel(16);
    h.session_restored(tx2);
    let mut cp2 = ControlPlane::new(rx2);
    let old: Vec<u64> = first.iter().map(|b| b.batch_seq).collect();
    let next = cp2.batch(WAIT).await.expect("a batch read again");
    assert_eq!(next.records[0].offset, 10);
    assert!(
        !old.contains(&next.batch_seq),
        "a new batch, not a resent frame"
    );
    // Once the job has gone back, an ack of a batch of the old session is
    // ignored: its records come again.
    h.ack(first[1].batch_seq);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(committed(&b, &group, &topic, 1).await, vec![10]);
    // Everything from the gap on is read again from Kafka and arrives once,
    // in order, in new batches (deliver_all fails on offsets below 10).
    let again: Seeded = seeded
        .iter()
        .filter(|((_, o), _)| *o >= 10)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    cp2.stash.push_front(next);
    deliver_all(&mut cp2, |s| h.ack(s), &again, 50).await;
    wait_committed(&b, &group, &topic, &[60]).await;
    // Records sent count every time they cross the link.
    cp2.state("r", WAIT, |s| s.records_relayed == sent_before as u64 + 50)
        .await;
    assert!(cp2.quiet_for(Duration::from_millis(500)).await.is_empty());
    h.drain(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_restored_before_any_ack_reads_again_from_where_the_job_started() {
    logs();
    let b = kafka::broker();
    let topic = kafka::unique_topic("relay-reread-start");
    kafka::create_topic(&b, &topic, 2).await;
    let seeded = seed(&b, &topic, 0, 60).await;
    let group = kafka::unique_topic("group-reread-start");
    // Partition 1 only, from offset 5: no watermark and no committed offset
    // to go back to, only where the job started.
    let (h, mut cp, _tx) = spawn(JobSpec {
        partitions: Partitions::List(vec![1]),
        start: StartPosition::Offsets(BTreeMap::from([(1, 5)])),
        max_records: 4,
        window: 2,
        ..spec("rs", &b.plaintext, &topic, &group)
    });
    let first = vec![
        cp.batch(WAIT).await.expect("batch"),
        cp.batch(WAIT).await.expect("batch"),
    ];
    assert_eq!(offsets(&first), (5..13).collect::<Vec<_>>());
    h.session_lost();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (tx2, rx2) = mpsc::channel(16);
    h.session_restored(tx2);
    let mut cp2 = ControlPlane::new(rx2);
    let want: Seeded = seeded
        .iter()
        .filter(|((p, o), _)| *p == 1 && *o >= 5)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    deliver_all(&mut cp2, |s| h.ack(s), &want, want.len()).await;
    wait_committed(&b, &group, &topic, &[-1, highs(&seeded, 2)[1]]).await;
    h.drain(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_written_to_the_socket_are_not_held_but_frames_queued_for_it_are() {
    logs();
    let b = kafka::broker();
    let topic = kafka::unique_topic("relay-held");
    kafka::create_topic(&b, &topic, 1).await;
    // 40 records of 16 KiB, two to a batch: about 32 KiB per batch.
    let seeded = produce_keyed(&b, &topic, 0..40, |i| {
        vec![b'a' + (i % 26) as u8; 16 * 1024]
    })
    .await;
    let group = kafka::unique_topic("group-held");
    let (tx, rx) = mpsc::channel(16);
    let h = relay::spawn(
        JobSpec {
            max_records: 2,
            window: 64,
            window_bytes: 4 * 1024 * 1024,
            ..spec("held", &b.plaintext, &topic, &group)
        },
        &allow(),
        RelaySettings {
            held_bytes: 64 * 1024,
            ..settings()
        },
        tx,
        CancellationToken::new(),
    );
    let mut cp = ControlPlane::new(rx);
    // Nobody reads the session's queue (a socket that does not drain): the
    // frames queued for it are memory, and the job stops at 64 KiB of them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = h.state();
    assert!(
        s.partitions
            .first()
            .is_some_and(|p| (1..=8).contains(&p.fetched)),
        "fetching stopped with 64 KiB of frames held: {:?}",
        s.partitions
    );
    // Frames taken off the queue (written) are not kept: with no ack at
    // all, everything goes out within the 4 MiB window.
    let mut got = Vec::new();
    while got.len() < 40 {
        let b = cp
            .batch(WAIT)
            .await
            .unwrap_or_else(|| panic!("{} of 40 records sent without an ack", got.len()));
        got.extend(b.records.iter().map(|r| (r.offset, b.batch_seq)));
    }
    assert_eq!(
        got.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        (0..40).collect::<Vec<_>>()
    );
    for (_, seq) in &got {
        h.ack(*seq);
    }
    wait_committed(&b, &group, &topic, &[40]).await;
    let _ = seeded;
    h.drain(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_lost_past_grace_leaves_the_group_and_rejoins_on_restore() {
    logs();
    let b = kafka::broker();
    let topic = kafka::unique_topic("relay-grace");
    kafka::create_topic(&b, &topic, 2).await;
    let seeded = seed(&b, &topic, 0, 40).await;
    let group = kafka::unique_topic("group-grace");
    let (h, mut cp, _tx) = spawn(spec("g", &b.plaintext, &topic, &group));
    deliver_all(&mut cp, |s| h.ack(s), &seeded, 40).await;
    let want = highs(&seeded, 2);
    wait_committed(&b, &group, &topic, &want).await;

    h.session_lost();
    let more = seed(&b, &topic, 40, 20).await;
    // Past the grace (2 s) the job commits and leaves: a new member of the
    // group gets *both* partitions (with the job still in, it would get one).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        cp.quiet_for(Duration::from_millis(100)).await.is_empty(),
        "nothing sent without a session"
    );
    let mut cfg = b.plaintext_config();
    cfg.set("group.id", &group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000");
    let other: StreamConsumer = cfg.create().unwrap();
    other.subscribe(&[&topic]).unwrap();
    let mut got = 0;
    let end = tokio::time::Instant::now() + WAIT;
    while got < more.len() {
        let m = tokio::time::timeout_at(end, other.recv())
            .await
            .expect("the other member reads")
            .unwrap();
        assert!(
            more.contains_key(&(m.partition(), m.offset())),
            "starts from the committed offsets"
        );
        got += 1;
    }
    assert_eq!(other.assignment().unwrap().count(), 2);
    drop(other);

    // Back: the job rejoins from the committed offsets (the other member
    // did not commit) and delivers the new records.
    let (tx2, rx2) = mpsc::channel(16);
    h.session_restored(tx2);
    let mut cp2 = ControlPlane::new(rx2);
    deliver_all(&mut cp2, |s| h.ack(s), &more, 20).await;
    let mut all = seeded;
    all.extend(more);
    wait_committed(&b, &group, &topic, &highs(&all, 2)).await;
    h.drain(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_partition_with_an_explicit_start_offset() {
    logs();
    let b = kafka::broker();
    let topic = kafka::unique_topic("relay-list");
    kafka::create_topic(&b, &topic, 3).await;
    let seeded = seed(&b, &topic, 0, 90).await;
    let group = kafka::unique_topic("group-list");
    let job = JobSpec {
        partitions: Partitions::List(vec![1]),
        start: StartPosition::Offsets(BTreeMap::from([(1, 5)])),
        ..spec("list", &b.plaintext, &topic, &group)
    };
    let (h, mut cp, _tx) = spawn(job);
    let want: BTreeMap<_, _> = seeded
        .iter()
        .filter(|((p, o), _)| *p == 1 && *o >= 5)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    let first = cp.batch(WAIT).await.expect("a batch");
    assert_eq!(
        (first.records[0].partition, first.records[0].offset),
        (1, 5)
    );
    cp.stash.push_front(first);
    deliver_all(&mut cp, |s| h.ack(s), &want, want.len()).await;
    let high = highs(&seeded, 3)[1];
    wait_committed(&b, &group, &topic, &[-1, high, -1]).await;
    h.drain(Duration::from_secs(10)).await;

    let job = JobSpec {
        partitions: Partitions::List(vec![7]),
        ..spec("list7", &b.plaintext, &topic, &group)
    };
    let (h, mut cp, _tx) = spawn(job);
    let s = cp
        .state("list7", WAIT, |s| s.phase == JobPhase::Failed)
        .await;
    assert_eq!(
        s.error.unwrap().message,
        format!(
            "partition 7 does not exist: topic {topic:?} has 3 partitions (0..=2); fix the job's partitions"
        )
    );
    h.drain(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_fails_as_tcp_and_is_retried() {
    logs();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let bootstrap = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let (h, mut cp, _tx) = spawn(spec("down", &bootstrap, "t", "g"));
    let s = cp
        .state("down", WAIT, |s| s.phase == JobPhase::Failed)
        .await;
    eprintln!("unreachable broker reported after {:?}", started.elapsed());
    let e = s.error.unwrap();
    assert_eq!(e.class, ErrorClass::Tcp, "{}", e.message);
    assert!(
        e.message
            .starts_with(&format!("{bootstrap} refused the connection (librdkafka: ")),
        "{}",
        e.message
    );
    // Retried: it goes back to Starting (keeping the last error) and fails again.
    cp.state("down", WAIT, |s| s.phase == JobPhase::Starting)
        .await;
    cp.state("down", WAIT, |s| s.phase == JobPhase::Failed)
        .await;
    h.drain(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_fetching_and_resume_continues() {
    logs();
    let b = kafka::broker();
    let topic = kafka::unique_topic("relay-pause");
    kafka::create_topic(&b, &topic, 1).await;
    let seeded = seed(&b, &topic, 0, 10).await;
    let group = kafka::unique_topic("group-pause");
    let (h, mut cp, _tx) = spawn(spec("p", &b.plaintext, &topic, &group));
    deliver_all(&mut cp, |s| h.ack(s), &seeded, 10).await;
    h.pause();
    cp.state("p", WAIT, |s| s.phase == JobPhase::Paused).await;
    let more = seed(&b, &topic, 10, 10).await;
    assert!(
        cp.quiet_for(Duration::from_secs(2)).await.is_empty(),
        "paused: nothing fetched"
    );
    h.resume();
    deliver_all(&mut cp, |s| h.ack(s), &more, 10).await;
    assert_eq!(h.state().phase, JobPhase::Running);
    wait_committed(&b, &group, &topic, &[20]).await;
    h.drain(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_commits_the_revoked_partition_so_the_new_owner_starts_after_the_acked_records() {
    logs();
    let b = kafka::broker();
    let topic = kafka::unique_topic("relay-rebalance");
    kafka::create_topic(&b, &topic, 2).await;
    let seeded = seed(&b, &topic, 0, 40).await;
    let first = highs(&seeded, 2);
    let group = kafka::unique_topic("group-rebalance");
    // No periodic commits: only the commit on revoke can tell the new owner
    // where to start.
    let (tx, rx) = mpsc::channel(16);
    let no_auto = RelaySettings {
        commit_interval: Duration::from_secs(3600),
        ..settings()
    };
    let h = relay::spawn(
        spec("rb", &b.plaintext, &topic, &group),
        &allow(),
        no_auto,
        tx,
        CancellationToken::new(),
    );
    let mut cp = ControlPlane::new(rx);
    deliver_all(&mut cp, |s| h.ack(s), &seeded, 40).await;

    // A second member joins: cooperative-sticky moves one partition to it.
    let mut cfg = b.plaintext_config();
    cfg.set("group.id", &group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000");
    let other: StreamConsumer = cfg.create().unwrap();
    other.subscribe(&[&topic]).unwrap();
    let end = tokio::time::Instant::now() + WAIT;
    // Wait for the rebalance (polling serves it). New records are produced
    // only then: records the job had fetched before its partition was
    // revoked would legitimately reach the control plane twice (docs/JOBS.md).
    while other.assignment().unwrap().count() == 0 {
        assert!(tokio::time::Instant::now() < end, "no rebalance");
        let _ = tokio::time::timeout(Duration::from_millis(100), other.recv()).await;
    }
    let more = seed(&b, &topic, 40, 30).await;

    // Scoped: a message still alive would keep the consumer from closing.
    let (moved, offset) = {
        let m = tokio::time::timeout_at(end, other.recv())
            .await
            .expect("the new member reads")
            .unwrap();
        (m.partition(), m.offset())
    };
    assert_eq!(
        offset, first[moved as usize],
        "starts right after the records the job had acked: none lost, none repeated"
    );
    let mut other_got = 1;
    let want_other = more.keys().filter(|(p, _)| *p == moved).count();
    while other_got < want_other {
        let m = tokio::time::timeout_at(end, other.recv())
            .await
            .expect("more")
            .unwrap();
        assert_eq!(m.partition(), moved);
        other_got += 1;
    }
    // The job keeps the other partition and relays only that one.
    let kept: Seeded = more
        .iter()
        .filter(|((p, _), _)| *p != moved)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    deliver_all(&mut cp, |s| h.ack(s), &kept, kept.len()).await;
    let s = cp.state("rb", WAIT, |s| s.partitions.len() == 1).await;
    assert_eq!(s.partitions[0].partition, 1 - moved);
    drop(other);
    h.drain(Duration::from_secs(10)).await;
}
