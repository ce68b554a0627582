//! Reads on demand through an agent, and their query parameters.

use super::hub::Answer;
use super::{REQUEST_TIMEOUT, ReadAnswer, StreamError, StreamService};
use crate::commands::CommandHub;
use crate::delivery::record::{ValueFormat, write_record};
use connectivity_protocol::job::ErrorClass;
use connectivity_protocol::stream::{self, CAPABILITY_READ, MAX_READ_BYTES, ReadSelection};
use connectivity_protocol::{ControlMessage, ReadRequest};
use std::collections::BTreeMap;

/// Records a read returns unless it asks for another number.
pub const DEFAULT_MAX_RECORDS: u32 = 100;
/// Most records one read returns.
pub const MAX_RECORDS: u32 = 10_000;

/// A read as the console API's query asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadQuery {
    pub selection: ReadSelection,
    pub max_records: u32,
    pub max_bytes: u32,
}

impl ReadQuery {
    /// From `?partition=&offset=`, `?partition=&offsets=6,10-11,16`,
    /// `?latest=N`, or `?timestamp=MS[&partition=]`, with optional
    /// `max_records` and `max_bytes`.
    pub fn from_params(q: &BTreeMap<String, String>) -> Result<ReadQuery, String> {
        const USAGE: &str =
            "give one of offset (with partition), offsets (with partition), latest, timestamp";
        let known = [
            "partition",
            "offset",
            "offsets",
            "latest",
            "timestamp",
            "max_records",
            "max_bytes",
        ];
        if let Some(k) = q.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(format!(
                "unknown parameter {k:?}; {USAGE}, and optionally max_records, max_bytes"
            ));
        }
        let num = |name: &str, min: i64, max: i64| -> Result<Option<i64>, String> {
            q.get(name)
                .map(|v| {
                    v.trim()
                        .parse::<i64>()
                        .ok()
                        .filter(|n| (min..=max).contains(n))
                        .ok_or_else(|| format!("{name}={v:?} is not a number from {min} to {max}"))
                })
                .transpose()
        };
        let partition = num("partition", 0, i32::MAX.into())?.map(|p| p as i32);
        let given: Vec<&str> = ["offset", "offsets", "latest", "timestamp"]
            .into_iter()
            .filter(|k| q.contains_key(*k))
            .collect();
        if given.len() != 1 {
            return Err(format!(
                "{} of offset, offsets, latest, timestamp given; {USAGE}",
                given.len()
            ));
        }
        let need_partition =
            || partition.ok_or_else(|| format!("{} needs partition=<number>", given[0]));
        let selection = match given[0] {
            "offset" => ReadSelection::Offset {
                partition: need_partition()?,
                offset: num("offset", 0, i64::MAX)?.unwrap_or(0),
            },
            "offsets" => ReadSelection::Offsets {
                partition: need_partition()?,
                ranges: stream::parse_offsets(&q["offsets"])?,
            },
            "latest" => ReadSelection::Latest {
                count: num("latest", 1, MAX_RECORDS.into())?.unwrap_or(1) as u32,
            },
            _ => ReadSelection::Timestamp {
                timestamp_ms: num("timestamp", 0, i64::MAX)?.unwrap_or(0),
                partition,
            },
        };
        Ok(ReadQuery {
            selection,
            max_records: num("max_records", 1, MAX_RECORDS.into())?
                .map_or(DEFAULT_MAX_RECORDS, |n| n as u32),
            max_bytes: num("max_bytes", 1, MAX_READ_BYTES.into())?
                .map_or(MAX_READ_BYTES, |n| n as u32),
        })
    }
}

impl StreamService {
    /// Read records of connection `name` through an agent of its group.
    pub async fn read(
        &self,
        commands: &CommandHub,
        name: &str,
        q: ReadQuery,
    ) -> Result<ReadAnswer, StreamError> {
        let def = self.connection(name)?;
        let request = ReadRequest {
            request_id: String::new(),
            connection: def.connection.clone(),
            selection: q.selection,
            max_records: q.max_records,
            max_bytes: q.max_bytes,
            timeout_ms: (REQUEST_TIMEOUT.as_millis() as u64).saturating_sub(2000),
        };
        let (_, answer) = self
            .hub
            .request(
                commands,
                &def.group,
                CAPABILITY_READ,
                |id| {
                    ControlMessage::Read(ReadRequest {
                        request_id: id,
                        ..request
                    })
                },
                REQUEST_TIMEOUT,
            )
            .await?;
        let Answer::Read(r) = answer else {
            return Err(StreamError::Stream(stream::error(
                ErrorClass::Other,
                "the agent answered a read with a publish result; upgrade the agent",
            )));
        };
        if let Some(e) = r.error {
            return Err(StreamError::Stream(e));
        }
        let batch = stream::frame_from_base64(r.frame.as_deref().unwrap_or_default())
            .map_err(|m| StreamError::Stream(stream::error(ErrorClass::Other, m)))?;
        let topic = def.connection.topic;
        let mut json = Vec::with_capacity(1024);
        json.push(b'[');
        for (i, rec) in batch.records.iter().enumerate() {
            if i > 0 {
                json.push(b',');
            }
            write_record(&mut json, &topic, rec, ValueFormat::Raw);
        }
        json.push(b']');
        Ok(ReadAnswer {
            records_json: String::from_utf8_lossy(&json).into_owned(),
            count: batch.records.len(),
            topic,
            partitions: r.partitions,
            truncated: r.truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<ReadQuery, String> {
        ReadQuery::from_params(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn queries_pick_one_selection_and_name_what_is_wrong() {
        assert_eq!(
            q(&[("partition", "0"), ("offsets", "6,10-11,16")])
                .unwrap()
                .selection,
            ReadSelection::Offsets {
                partition: 0,
                ranges: stream::parse_offsets("6,10-11,16").unwrap()
            }
        );
        assert_eq!(
            q(&[("latest", "5")]).unwrap().selection,
            ReadSelection::Latest { count: 5 }
        );
        assert_eq!(
            q(&[("offset", "3")]).unwrap_err(),
            "offset needs partition=<number>"
        );
        assert_eq!(
            q(&[("latest", "5"), ("offset", "1")]).unwrap_err(),
            "2 of offset, offsets, latest, timestamp given; give one of offset (with partition), offsets (with partition), latest, timestamp"
        );
        assert_eq!(
            q(&[("latest", "x")]).unwrap_err(),
            "latest=\"x\" is not a number from 1 to 10000"
        );
        assert!(
            q(&[("latest", "1"), ("group", "g")])
                .unwrap_err()
                .starts_with("unknown parameter \"group\"")
        );
    }
}
