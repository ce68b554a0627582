//! Publish: write a request's records with `acks=all` and answer with each
//! record's partition and offset, or its error.
//!
//! Duplicates are avoided two ways. Within one producer, Kafka's idempotent
//! producer (`enable.idempotence=true`) makes librdkafka's own retries safe.
//! Across producers (an agent killed after the broker's ack, before its
//! answer), the control plane sends the retry with `recover_since_ms`: every
//! record carries [`IDEMPOTENCY_HEADER`], so the agent first reads what was
//! written since the first attempt and writes only the records it does not
//! find there. A broker without INIT_PRODUCER_ID (OCI Streaming) gets a
//! producer without idempotence and without retries, so no write is
//! repeated behind the caller's back; the header scan still protects
//! retries (docs/CONTROL_PLANE.md, "Publish").

use super::read::{self, remaining, target_of};
use crate::allowlist::AllowList;
use crate::kafka::client::connection_config;
use crate::kafka::context::CaptureContext;
use crate::kafka::errors::{self, ErrorLog, Target};
use connectivity_protocol::batch::{Batch, Record};
use connectivity_protocol::job::{ErrorClass, JobError};
use connectivity_protocol::stream::{
    self, IDEMPOTENCY_HEADER, Idempotence, PublishRequest, PublishResult, RecordOutcome,
    StreamConnection,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode as C;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Producers kept, one per connection (endpoint and credentials).
const MAX_PRODUCERS: usize = 8;
/// Longest a publish may take, whatever the request says.
const MAX_DEADLINE: Duration = Duration::from_secs(120);
/// Clock difference allowed between the control plane, which stamps the
/// first attempt, and the broker, which stamps the records.
const CLOCK_SLACK_MS: i64 = 60_000;

/// A producer and what it has learnt about its broker.
struct Client {
    producer: FutureProducer<CaptureContext>,
    errors: ErrorLog,
    idempotence: Idempotence,
    /// Topics whose metadata this producer has seen (bounded by the
    /// connections' topics; a connection names one).
    known_topics: Mutex<HashSet<String>>,
}

/// The producers of this agent, by connection.
#[derive(Default)]
pub struct Producers {
    cache: Mutex<Vec<(u64, Arc<Client>)>>,
}

impl Producers {
    /// Run a publish request to its answer.
    pub async fn publish(&self, req: PublishRequest, allow: &AllowList) -> PublishResult {
        let id = req.request_id.clone();
        match self.try_publish(&req, allow).await {
            Ok(r) => r,
            Err(e) => super::failed_publish(id, e),
        }
    }

    async fn try_publish(
        &self,
        req: &PublishRequest,
        allow: &AllowList,
    ) -> Result<PublishResult, JobError> {
        let batch = stream::frame_from_base64(&req.frame)
            .map_err(|m| stream::error(ErrorClass::Config, m))?;
        let deadline = Instant::now() + Duration::from_millis(req.timeout_ms).min(MAX_DEADLINE);
        let target = target_of(&req.connection);
        let found = match req.recover_since_ms {
            Some(since) => {
                // A record keeps the time it was given (a kafka sink
                // forwards its source's), and the time lookup goes by
                // record times: look from the earliest of them too, or an
                // old record the first attempt wrote would be missed.
                let from = batch
                    .records
                    .iter()
                    .filter_map(|r| r.timestamp)
                    .fold(since, i64::min);
                let count = batch.records.len();
                recover(req, from, count, &target, allow, deadline).await?
            }
            None => HashMap::new(),
        };
        let mut client = self.client(&req.connection, None)?;
        ensure_topic(&client, &req.connection.topic, &target, allow, deadline).await?;
        let mut outcomes = produce(&client, req, &batch, &found, &target, deadline).await;
        if client.idempotence == Idempotence::Enabled && idempotence_refused(&outcomes, &client) {
            warn!(endpoint = %target.bootstrap, "broker does not support idempotent producers (INIT_PRODUCER_ID); writing without");
            client = self.client(&req.connection, Some(Idempotence::Unsupported))?;
            // Nothing was written: the producer never got its producer id.
            outcomes = produce(&client, req, &batch, &found, &target, deadline).await;
        }
        Ok(PublishResult {
            request_id: req.request_id.clone(),
            records: outcomes,
            error: None,
            idempotence: Some(client.idempotence),
        })
    }

    /// The producer for `c`, created when there is none (or, with `force`,
    /// replaced by one with that idempotence).
    fn client(
        &self,
        c: &StreamConnection,
        force: Option<Idempotence>,
    ) -> Result<Arc<Client>, JobError> {
        let key = connection_key(c);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pos) = cache.iter().position(|(k, _)| *k == key) {
            if force.is_none_or(|f| cache[pos].1.idempotence == f) {
                return Ok(cache[pos].1.clone());
            }
            cache.remove(pos);
        }
        let client = Arc::new(new_client(c, force.unwrap_or(Idempotence::Enabled))?);
        if cache.len() >= MAX_PRODUCERS {
            // The oldest goes; its in-flight requests keep their own handle.
            cache.remove(0);
        }
        cache.push((key, client.clone()));
        Ok(client)
    }
}

/// Identifies a connection without keeping its secrets: a hash of the
/// endpoint and the security settings (the topic is per record).
fn connection_key(c: &StreamConnection) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    c.bootstrap_servers.trim().hash(&mut h);
    serde_json::to_string(&c.security)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

fn new_client(c: &StreamConnection, idempotence: Idempotence) -> Result<Client, JobError> {
    let mut config = connection_config(&c.bootstrap_servers, &c.security)
        .map_err(|e| stream::error(ErrorClass::Config, e.to_string()))?;
    let idempotent = idempotence == Idempotence::Enabled;
    config
        .set("acks", "all")
        .set("enable.idempotence", idempotent.to_string())
        // Low latency at a thousand records a second, batches at more.
        .set("linger.ms", "2")
        .set("allow.auto.create.topics", "false")
        // A broker that is down fails the record within this time (the
        // default, five minutes, is longer than any caller waits).
        .set("message.timeout.ms", "30000")
        // Without idempotence a retry after a lost ack writes the record
        // twice; the control plane's retry (with the header scan) is safe.
        .set(
            "message.send.max.retries",
            if idempotent { "2147483647" } else { "0" },
        );
    let errors = ErrorLog::default();
    let ctx = CaptureContext {
        errors: errors.clone(),
        label: "publish".into(),
    };
    let producer = config
        .create_with_context(ctx)
        .map_err(|e| stream::error(ErrorClass::Config, e.to_string()))?;
    info!(endpoint = %c.bootstrap_servers.trim(), ?idempotence, "publish producer created");
    Ok(Client {
        producer,
        errors,
        idempotence,
        known_topics: Mutex::default(),
    })
}

/// Check once per producer that the topic exists: librdkafka would
/// otherwise hold the records for a missing topic (or a broker that is
/// down) until they time out, and say less about why.
async fn ensure_topic(
    client: &Arc<Client>,
    topic: &str,
    target: &Target,
    allow: &AllowList,
    deadline: Instant,
) -> Result<(), JobError> {
    let known = |c: &Client| {
        c.known_topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(topic)
    };
    if known(client) {
        return Ok(());
    }
    // Reports of earlier requests say nothing about this one.
    let _ = client.errors.take();
    let (c, t, t2, a) = (
        client.clone(),
        topic.to_owned(),
        target.clone(),
        allow.clone(),
    );
    let budget = remaining(deadline).min(Duration::from_secs(10));
    let mut meta = tokio::task::spawn_blocking(move || topic_metadata(&c, &t, &t2, &a, budget));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            r = &mut meta => {
                return r.unwrap_or_else(|e| {
                    Err(stream::error(ErrorClass::Other, format!("metadata failed: {e}")))
                });
            }
            _ = tick.tick() => {
                // A definite cause (bad password, connection refused) ends
                // the wait before the metadata request gives up.
                if let Some(e) = errors::definite(&client.errors.snapshot(), target) {
                    return Err(e);
                }
            }
        }
    }
}

/// The topic's metadata, on a blocking thread; remembered once it exists
/// and its cluster advertises only allowed brokers. The producer has no
/// record to send before that, so it has contacted no broker but the
/// bootstrap servers.
fn topic_metadata(
    c: &Client,
    t: &str,
    target: &Target,
    allow: &AllowList,
    budget: Duration,
) -> Result<(), JobError> {
    use rdkafka::producer::Producer;
    let md = c
        .producer
        .client()
        .fetch_metadata(Some(t), budget)
        .map_err(|e| errors::classify(Some(&e), &c.errors.snapshot(), target))?;
    super::check_brokers(allow, target, &md)?;
    let entry = md.topics().iter().find(|m| m.name() == t);
    match entry.map(|m| (m.error(), m.partitions().len())) {
        Some((None, n)) if n > 0 => {
            c.known_topics
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(t.to_owned());
            Ok(())
        }
        // Refused by an ACL: worded for writing, as the records would be.
        Some((Some(code), _)) if C::from(code) == C::TopicAuthorizationFailed => Err(explain(
            &KafkaError::MetadataFetch(C::TopicAuthorizationFailed),
            &c.errors,
            target,
        )),
        Some((Some(code), _)) => Err(errors::classify_one(Some(code.into()), "", target)),
        _ => Err(errors::classify_one(
            Some(C::UnknownTopicOrPartition),
            "",
            target,
        )),
    }
}

/// Send every record not `found` and wait for the broker's answers.
async fn produce(
    client: &Client,
    req: &PublishRequest,
    batch: &Batch,
    found: &HashMap<usize, (i32, i64)>,
    target: &Target,
    deadline: Instant,
) -> Vec<RecordOutcome> {
    let topic = &req.connection.topic;
    let mut pending = Vec::with_capacity(batch.records.len());
    for (i, r) in batch.records.iter().enumerate() {
        if let Some(&(p, o)) = found.get(&i) {
            pending.push(Sent::Recovered(p, o));
            continue;
        }
        let marker = format!("{}/{i}", req.idempotency_key);
        let record = future_record(topic, r, &marker);
        pending.push(match client.producer.send_result(record) {
            Ok(f) => Sent::Waiting(f),
            Err((e, _)) => Sent::Failed(e),
        });
    }
    let mut out = Vec::with_capacity(pending.len());
    for sent in pending {
        out.push(match sent {
            Sent::Recovered(p, o) => RecordOutcome {
                partition: Some(p),
                offset: Some(o),
                recovered: true,
                error: None,
            },
            Sent::Failed(e) => failed(&e, client, target),
            Sent::Waiting(f) => match tokio::time::timeout_at(deadline.into(), f).await {
                // Not acknowledged yet, maybe written later: the caller's
                // retry with the same key finds it instead of writing twice.
                Err(_) => failed(
                    &KafkaError::MessageProduction(C::MessageTimedOut),
                    client,
                    target,
                ),
                Ok(r) => match r {
                    Ok(Ok(d)) => RecordOutcome {
                        partition: Some(d.partition),
                        offset: Some(d.offset),
                        recovered: false,
                        error: None,
                    },
                    Ok(Err((e, _))) => failed(&e, client, target),
                    Err(_) => failed(&KafkaError::Canceled, client, target),
                },
            },
        });
    }
    out
}

enum Sent {
    Recovered(i32, i64),
    Waiting(rdkafka::producer::DeliveryFuture),
    Failed(KafkaError),
}

fn future_record<'a>(
    topic: &'a str,
    r: &'a Record,
    marker: &'a str,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 1);
    for (name, value) in &r.headers {
        headers = headers.insert(Header {
            key: name.as_str(),
            value: value.as_deref(),
        });
    }
    headers = headers.insert(Header {
        key: IDEMPOTENCY_HEADER,
        value: Some(marker.as_bytes()),
    });
    let mut rec = FutureRecord::to(topic).headers(headers);
    if let Some(k) = r.key.as_deref() {
        rec = rec.key(k);
    }
    if let Some(v) = r.value.as_deref() {
        rec = rec.payload(v);
    }
    if r.partition >= 0 {
        rec = rec.partition(r.partition);
    }
    if let Some(ts) = r.timestamp {
        rec = rec.timestamp(ts);
    }
    rec
}

/// One record's failure, classified with the client's recent reports.
fn failed(e: &KafkaError, client: &Client, t: &Target) -> RecordOutcome {
    RecordOutcome {
        partition: None,
        offset: None,
        recovered: false,
        error: Some(explain(e, &client.errors, t)),
    }
}

/// A publish failure with its fix. Publishing needs write access, so the
/// read-oriented wording of the job errors does not fit every case.
pub fn explain(e: &KafkaError, log: &ErrorLog, t: &Target) -> JobError {
    match e.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge) => stream::error(
            ErrorClass::TooLarge,
            format!(
                "the record is larger than topic {:?} accepts (OCI Streaming: 1 MB per record); \
                 make it smaller, or store the payload elsewhere and publish a reference",
                t.topic
            ),
        ),
        Some(C::InvalidRecord | C::InvalidTimestamp) => stream::error(
            ErrorClass::Config,
            format!(
                "the broker refused the record as invalid ({e}); check its timestamp (a topic may refuse \
                 times too far from now: message.timestamp.after.max.ms / before.max.ms) and its key \
                 (a compacted topic needs one)"
            ),
        ),
        Some(C::TopicAuthorizationFailed) => stream::error(
            ErrorClass::Authorization,
            format!(
                "not authorized to write to topic {:?}; grant the SASL user write access to it \
                 (OCI: a policy allowing the user's group to `use stream-push` in the stream's compartment)",
                t.topic
            ),
        ),
        Some(C::MessageTimedOut) => {
            let mut why = errors::classify(None, &log.snapshot(), t);
            if why.class == ErrorClass::Other {
                why.class = ErrorClass::Tcp;
            }
            why.message = format!(
                "the broker did not acknowledge the record in time: {}",
                why.message
            );
            why
        }
        code => errors::classify_one(code, &e.to_string(), t),
    }
}

/// Whether the records failed because the broker refused to give the
/// producer an id (no INIT_PRODUCER_ID, or no IdempotentWrite permission).
fn idempotence_refused(outcomes: &[RecordOutcome], client: &Client) -> bool {
    let failed = outcomes.iter().all(|o| o.error.is_some());
    let said = client.errors.snapshot().iter().any(|r| {
        let text = r.text.to_ascii_lowercase();
        matches!(
            r.code,
            Some(C::Fatal | C::UnsupportedVersion | C::UnsupportedFeature)
        ) || text.contains("idempot")
            || text.contains("initproducerid")
            || text.contains("producer id")
            || text.contains(" pid")
    });
    !outcomes.is_empty() && failed && said
}

/// The records of an earlier attempt with this key already in the stream,
/// by index: read every partition from `since_ms` (the first attempt's
/// time, or an earlier record time the request gives; less the clock
/// slack) to its end. An error when the scan cannot finish: writing
/// again without knowing could write twice.
async fn recover(
    req: &PublishRequest,
    since_ms: i64,
    count: usize,
    target: &Target,
    allow: &AllowList,
    deadline: Instant,
) -> Result<HashMap<usize, (i32, i64)>, JobError> {
    let (conn, key, target, allow) = (
        req.connection.clone(),
        req.idempotency_key.clone(),
        target.clone(),
        allow.clone(),
    );
    let prefix = format!("{key}/");
    tokio::task::spawn_blocking(move || {
        let reader = read::reader(&conn, "publish-recovery")?;
        let marks = read::watermarks(&reader, &conn.topic, None, &target, &allow, deadline)?;
        let selection = connectivity_protocol::stream::ReadSelection::Timestamp {
            timestamp_ms: since_ms - CLOCK_SLACK_MS,
            partition: None,
        };
        let plan = read::plan(&reader, &selection, &marks, &conn.topic, deadline, &target)?;
        let mut found = HashMap::new();
        read::scan(&reader, &conn.topic, &plan, deadline, &target, |m| {
            use rdkafka::message::Message;
            if let Some(i) = marker_index(m.headers(), &prefix).filter(|i| *i < count) {
                found.insert(i, (m.partition(), m.offset()));
            }
            true
        })?;
        info!(key = %key, found = found.len(), of = count, "earlier attempt's records looked up");
        Ok(found)
    })
    .await
    .unwrap_or_else(|e| {
        Err(stream::error(
            ErrorClass::Other,
            format!("recovery failed: {e}"),
        ))
    })
}

/// The record index in an idempotency header with this key's prefix.
fn marker_index(
    headers: Option<&rdkafka::message::BorrowedHeaders>,
    prefix: &str,
) -> Option<usize> {
    let headers = headers?;
    headers.iter().find_map(|h| {
        (h.key == IDEMPOTENCY_HEADER)
            .then_some(h.value?)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.strip_prefix(prefix))
            .and_then(|i| i.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idempotency_header_gives_the_index_for_its_key_only() {
        let h = OwnedHeaders::new()
            .insert(Header {
                key: "other",
                value: Some(&b"key-1/9"[..]),
            })
            .insert(Header {
                key: IDEMPOTENCY_HEADER,
                value: Some(&b"key-1/17"[..]),
            });
        assert_eq!(marker_index(Some(h.as_borrowed()), "key-1/"), Some(17));
        assert_eq!(marker_index(Some(h.as_borrowed()), "key-11/"), None);
        assert_eq!(marker_index(None, "key-1/"), None);
    }
}
