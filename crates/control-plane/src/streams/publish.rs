//! A publish through an agent, with its idempotency key.

use super::hub::{Answer, RequestError};
use super::input::{self, PublishBody};
use super::{ConnectionDef, PublishAnswer, REQUEST_TIMEOUT, StreamError, StreamService};
use crate::commands::CommandHub;
use connectivity_protocol::job::ErrorClass;
use connectivity_protocol::stream::{self, CAPABILITY_PUBLISH, MAX_PUBLISH_FRAME_BYTES};
use connectivity_protocol::{ControlMessage, PublishRequest, PublishResult, Record};
use sha1::{Digest, Sha1};

/// Frees a (connection, key) pair when its publish ends, however it ends.
struct Running<'a> {
    service: &'a StreamService,
    pair: (String, String),
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.service
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.pair);
    }
}

/// A publish request's records, encoded as a batch frame, before it is sent.
pub struct Prepared {
    frame: bytes::Bytes,
    count: usize,
    /// SHA-1 of the frame, hex: what an idempotency key is checked against.
    hash: String,
}

impl Prepared {
    fn new(frame: bytes::Bytes, count: usize) -> Prepared {
        let hash = Sha1::digest(&frame)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Prepared { frame, count, hash }
    }

    /// The frame's hash: equal for equal records, so a caller may derive
    /// an idempotency key from it.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

impl StreamService {
    /// Publish the records of `body` into connection `name`; answers once
    /// the broker acknowledged them, or with the first attempt's answer
    /// when `key` was used before.
    pub async fn publish(
        &self,
        commands: &CommandHub,
        name: &str,
        key: &str,
        body: &[u8],
    ) -> Result<PublishAnswer, StreamError> {
        let def = self.connection(name)?;
        check_key(key)?;
        let prepared = prepare(&def, body)?;
        self.send_prepared(commands, name, def, key, prepared).await
    }

    /// Records as they came from a stream (a poll job's, for a `kafka`
    /// sink) as one publish request to connection `name`; without
    /// `keep_partitions` the producer's partitioner picks each record's
    /// partition by key.
    pub fn prepare_records(
        &self,
        name: &str,
        records: &[Record],
        keep_partitions: bool,
    ) -> Result<Prepared, StreamError> {
        let def = self.connection(name)?;
        let writer = input::records_frame(&def.connection.topic, records, keep_partitions)?;
        Ok(Prepared::new(writer.finish(), records.len()))
    }

    /// [`publish`](Self::publish) of records prepared by
    /// [`prepare_records`](Self::prepare_records).
    pub async fn publish_prepared(
        &self,
        commands: &CommandHub,
        name: &str,
        key: &str,
        prepared: Prepared,
    ) -> Result<PublishAnswer, StreamError> {
        let def = self.connection(name)?;
        check_key(key)?;
        self.send_prepared(commands, name, def, key, prepared).await
    }

    async fn send_prepared(
        &self,
        commands: &CommandHub,
        name: &str,
        def: ConnectionDef,
        key: &str,
        prepared: Prepared,
    ) -> Result<PublishAnswer, StreamError> {
        let Prepared { frame, count, hash } = prepared;
        let _running = self.claim(name, key)?;
        let (row, new) = self.store.begin(name, key, &hash).await?;
        if row.request_hash != hash {
            return Err(StreamError::KeyReused(key.to_owned()));
        }
        if let Some(stored) = row.answer {
            return replayed(&stored);
        }
        let request = PublishRequest {
            request_id: String::new(),
            connection: def.connection.clone(),
            idempotency_key: key.to_owned(),
            frame: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &frame),
            recover_since_ms: (!new).then_some(row.started_at_ms),
            timeout_ms: (REQUEST_TIMEOUT.as_millis() as u64).saturating_sub(2000),
        };
        let sent = self.send(commands, &def.group, request).await;
        let (agent, result) = match sent {
            Ok(answered) => answered,
            Err(e) => {
                // Never written by this attempt, and no earlier attempt:
                // forget the key so a retry starts clean.
                let nothing_sent = matches!(
                    e,
                    StreamError::Stream(_)
                        | StreamError::Agent(
                            RequestError::NoAgent(_)
                                | RequestError::TooOld { .. }
                                | RequestError::Busy(_)
                        )
                );
                if new && nothing_sent {
                    self.store.forget(name, key).await?;
                }
                return Err(e);
            }
        };
        if result.records.len() != count {
            return Err(StreamError::Stream(stream::error(
                ErrorClass::Other,
                format!(
                    "the agent answered for {} of {count} records; retry with the same idempotency key",
                    result.records.len()
                ),
            )));
        }
        let answer = answer(name, agent, &def.connection.topic, result);
        // Only a complete answer is final: after a failure, a retry with the
        // same key finds what was written and writes the rest.
        if answer.first_error.is_none() {
            let json = serde_json::to_string(&answer).unwrap_or_default();
            self.store.finish(name, key, json).await?;
        }
        Ok(answer)
    }

    /// Send the request to an agent of `group`; its result, or why there is
    /// none (a request refused as a whole is [`StreamError::Stream`]).
    async fn send(
        &self,
        commands: &CommandHub,
        group: &str,
        request: PublishRequest,
    ) -> Result<(String, PublishResult), StreamError> {
        let build = |id| {
            ControlMessage::Publish(PublishRequest {
                request_id: id,
                ..request
            })
        };
        let (agent, answer) = self
            .hub
            .request(commands, group, CAPABILITY_PUBLISH, build, REQUEST_TIMEOUT)
            .await?;
        let Answer::Publish(result) = answer else {
            return Err(StreamError::Stream(stream::error(
                ErrorClass::Other,
                "the agent answered a publish with a read result; upgrade the agent",
            )));
        };
        match result.error {
            Some(err) => Err(StreamError::Stream(err)),
            None => Ok((agent, result)),
        }
    }

    fn claim(&self, name: &str, key: &str) -> Result<Running<'_>, StreamError> {
        let pair = (name.to_owned(), key.to_owned());
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !running.insert(pair.clone()) {
            return Err(StreamError::KeyInProgress(key.to_owned()));
        }
        Ok(Running {
            service: self,
            pair,
        })
    }
}

/// The records of a request body as a batch frame.
fn prepare(def: &ConnectionDef, body: &[u8]) -> Result<Prepared, StreamError> {
    let parsed: PublishBody = serde_json::from_slice(body).map_err(|e| {
        StreamError::BadInput(format!(
            "the body is not a publish request: {e}; give {{\"records\": [{{\"key\": ..., \"value\": ...}}]}}"
        ))
    })?;
    // The frame's job id is fixed so the same records give the same hash.
    let writer =
        input::to_frame("publish", &def.connection.topic, &parsed.records).map_err(|m| match m
            .contains("the limit is")
        {
            true => StreamError::TooLarge(m),
            false => StreamError::BadInput(m),
        })?;
    if writer.encoded_len() > MAX_PUBLISH_FRAME_BYTES {
        return Err(StreamError::TooLarge(format!(
            "the records take {} bytes; one request carries at most {MAX_PUBLISH_FRAME_BYTES}: split the request",
            writer.encoded_len()
        )));
    }
    Ok(Prepared::new(writer.finish(), parsed.records.len()))
}

/// The stored answer of an earlier request with the same key.
fn replayed(stored: &str) -> Result<PublishAnswer, StreamError> {
    let mut answer: PublishAnswer = serde_json::from_str(stored).map_err(|e| {
        StreamError::Stream(stream::error(
            ErrorClass::Other,
            format!("stored answer unreadable: {e}"),
        ))
    })?;
    answer.replayed = true;
    Ok(answer)
}

/// The console's answer from the agent's result.
fn answer(name: &str, agent: String, topic: &str, result: PublishResult) -> PublishAnswer {
    let first = result
        .records
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.error.as_ref().map(|e| (i, e)));
    PublishAnswer {
        connection: name.to_owned(),
        agent,
        topic: topic.to_owned(),
        error: first.map(|(i, e)| format!("record {i}: {}", e.message)),
        first_error: first.map(|(_, e)| e.class),
        idempotence: result.idempotence,
        records: result.records,
        replayed: false,
    }
}

/// Idempotency keys: short, printable, no separators of our own.
pub fn check_key(key: &str) -> Result<(), StreamError> {
    let ok = (1..=128).contains(&key.len())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StreamError::BadInput(format!(
            "Idempotency-Key {key:?} is not valid; give 1-128 of A-Z a-z 0-9 . _ : - (a new UUID per distinct request)"
        )))
    }
}
