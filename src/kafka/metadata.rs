//! A topic-metadata request that can be abandoned.
//!
//! librdkafka's metadata call blocks its thread until it has an answer or its
//! timeout passes; against a wrong password or an untrusted certificate that
//! is the whole timeout, although the cause is known (from librdkafka's error
//! events) within a second. So the call is made in short slices on a blocking
//! thread, and the caller can tell that thread to stop between slices: an
//! abandoned check frees its thread (and its client) within a second instead
//! of holding up shutdown for the full timeout.

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What a metadata answer says about the cluster and the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub brokers: usize,
    /// `host:port` of every broker the cluster advertises.
    pub advertised: Vec<String>,
    /// The topic's error code, if the broker reported one, and its partition count.
    pub topic: Option<(Option<RDKafkaErrorCode>, usize)>,
}

const SLICE: Duration = Duration::from_secs(1);

/// Fetch metadata (of `topic`, or of the cluster) until an answer, the
/// timeout, or `stop`. Blocking: call it on a blocking thread.
pub fn fetch<C, K>(
    consumer: &K,
    topic: Option<&str>,
    timeout: Duration,
    stop: &AtomicBool,
) -> KafkaResult<Summary>
where
    C: ConsumerContext,
    K: Consumer<C>,
{
    let end = Instant::now() + timeout;
    loop {
        let slice = SLICE
            .min(end.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(10));
        match consumer.fetch_metadata(topic, slice) {
            Ok(md) => return Ok(summary(&md)),
            Err(e) if stop.load(Ordering::Relaxed) || Instant::now() >= end => return Err(e),
            Err(_) => continue,
        }
    }
}

/// The broker count, and the first topic's error and partition count.
fn summary(md: &Metadata) -> Summary {
    Summary {
        brokers: md.brokers().len(),
        advertised: md
            .brokers()
            .iter()
            .map(|b| format!("{}:{}", b.host(), b.port()))
            .collect(),
        topic: md
            .topics()
            .first()
            .map(|t| (t.error().map(RDKafkaErrorCode::from), t.partitions().len())),
    }
}

/// Tells a [`fetch`] to give up when dropped (the waiting side went away).
#[derive(Debug, Default)]
pub struct StopOnDrop(pub std::sync::Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
