//! What the chaos suite checks: numbered records produced into the broker,
//! what the sink holds, the consumer group's committed offsets and the
//! processes' memory sampled every second, and the verdict drawn from them.
//!
//! Records are `{"id": n, "partition": p, "seq": s}`, produced to partition
//! `p = n % partitions` (so `seq = n / partitions` grows with the offset).
//! The sink is read the way an operator would: the JSONL file's lines, or
//! the requests a webhook receiver accepted.

use super::webhook::Receiver;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One record as a sink received it.
#[derive(Debug, Clone)]
pub struct SinkRecord {
    pub partition: i32,
    pub offset: i64,
    pub id: Option<u64>,
    /// The webhook request's `Idempotency-Key` and whether a request with
    /// that key had reached the receiver before (a resend).
    pub resend_of_seen_key: bool,
}

fn parse_record(v: &Value, resend: bool) -> Option<SinkRecord> {
    Some(SinkRecord {
        partition: v["partition"].as_i64()? as i32,
        offset: v["offset"].as_i64()?,
        id: v["value"]["id"].as_u64(),
        resend_of_seen_key: resend,
    })
}

/// Where the scenario's job delivers.
#[derive(Clone)]
pub enum Sink {
    Jsonl(PathBuf),
    Webhook(Arc<Receiver>),
}

/// Reads a sink from where it stopped last time.
pub struct SinkReader {
    sink: Sink,
    pos: u64,
    partial: Vec<u8>,
    next_request: usize,
}

impl SinkReader {
    pub fn new(sink: Sink) -> SinkReader {
        SinkReader {
            sink,
            pos: 0,
            partial: Vec::new(),
            next_request: 0,
        }
    }

    /// Records that reached the sink since the last call. A JSONL file cut
    /// shorter than what was read (the control plane cuts back a failed
    /// write) is read again from its start.
    pub fn read_new(&mut self) -> Vec<SinkRecord> {
        match &self.sink {
            Sink::Jsonl(path) => {
                let Ok(mut f) = std::fs::File::open(path) else {
                    return Vec::new();
                };
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if len < self.pos {
                    self.pos = 0;
                    self.partial.clear();
                }
                if f.seek(SeekFrom::Start(self.pos)).is_err() {
                    return Vec::new();
                }
                let mut buf = Vec::new();
                let _ = f.read_to_end(&mut buf);
                self.pos += buf.len() as u64;
                self.partial.extend_from_slice(&buf);
                let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
                    return Vec::new();
                };
                let complete: Vec<u8> = self.partial.drain(..=end).collect();
                String::from_utf8_lossy(&complete)
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter_map(|v| parse_record(&v, false))
                    .collect()
            }
            Sink::Webhook(rx) => {
                let (records, next) = rx.records_since(self.next_request);
                self.next_request = next;
                records
            }
        }
    }

    /// Everything the sink holds, in the order it arrived, and the number
    /// of lines that are not a record (torn or garbage lines).
    pub fn read_all(sink: &Sink) -> (Vec<SinkRecord>, usize) {
        match sink {
            Sink::Jsonl(path) => {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let mut bad = 0;
                let records = text
                    .lines()
                    .filter_map(|l| {
                        let r = serde_json::from_str::<Value>(l)
                            .ok()
                            .and_then(|v| parse_record(&v, false));
                        if r.is_none() {
                            bad += 1;
                        }
                        r
                    })
                    .collect();
                (records, bad)
            }
            Sink::Webhook(rx) => (rx.records_since(0).0, 0),
        }
    }
}

/// The value of record `id`.
pub fn record_value(id: u64, partitions: i32) -> Value {
    serde_json::json!({"id": id, "partition": id % partitions as u64, "seq": id / partitions as u64})
}

/// What the producer got into the broker: (partition, offset) → id.
#[derive(Debug, Default, Clone)]
pub struct Produced {
    pub at: BTreeMap<(i32, i64), u64>,
    /// Records the producer gave up on (not in the broker as far as it knows).
    pub failed: u64,
    /// The first reason it gave.
    pub first_error: Option<String>,
    /// Every id produced (whatever its offset).
    pub ids: std::collections::HashSet<u64>,
}

impl Produced {
    pub fn merge(&mut self, other: Produced) {
        self.at.extend(other.at);
        self.ids.extend(other.ids);
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Partition → next offset after the last produced record.
    pub fn ends(&self) -> BTreeMap<i32, i64> {
        let mut ends = BTreeMap::new();
        for (p, o) in self.at.keys() {
            let e = ends.entry(*p).or_insert(0);
            *e = (*e).max(o + 1);
        }
        ends
    }
}

/// Samples taken every second while a scenario runs.
#[derive(Debug, Default)]
pub struct Samples {
    /// (sample number, the group's committed offsets read from the broker).
    pub committed: Vec<(usize, BTreeMap<i32, i64>)>,
    /// (partition, offset) → the sample number at which the sink first held it.
    pub first_seen: HashMap<(i32, i64), usize>,
    /// Largest resident set seen, per role (`agent`, `control-plane`), KiB.
    pub max_rss_kib: BTreeMap<String, u64>,
    /// The control plane's `duplicates_dropped`, summed over its restarts
    /// (a restart starts the counter again; a kill between two samples
    /// loses the last second's count, so this is a lower bound then).
    pub duplicates_filtered: u64,
    last_filtered: u64,
    pub sample_count: usize,
}

impl Samples {
    pub fn note_filtered(&mut self, now: u64) {
        if now < self.last_filtered {
            self.duplicates_filtered += self.last_filtered;
        }
        self.last_filtered = now;
    }

    pub fn filtered_total(&self) -> u64 {
        self.duplicates_filtered + self.last_filtered
    }
}

/// Process ids by name (`agent-1`, `control-plane`), kept current by whoever
/// starts and kills the processes.
pub type Pids = Arc<Mutex<BTreeMap<String, u32>>>;

/// Resident set of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The role of a process name: `agent-2` → `agent`.
pub fn role(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
        .to_string()
}

/// Limits a scenario is held to.
#[derive(Debug, Clone)]
pub struct Limits {
    pub rss_agent_mib: u64,
    pub rss_control_plane_mib: u64,
    pub recovery: Duration,
    /// Duplicate causes docs/DELIVERY.md names that this scenario can cause.
    pub allowed_duplicates: &'static [Cause],
}

/// Why a record reached the sink more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    /// docs/DELIVERY.md case 1 (and 2 for webhooks): the webhook got the
    /// request but its answer was lost; the resend carries the same
    /// `Idempotency-Key`.
    WebhookAnswerLost,
    /// Cases 4 and 6: a watermark or JSONL write failed (disk full).
    WriteFailed,
    /// Anything else: a bug.
    Unexplained,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::WebhookAnswerLost => "webhook answer lost",
            Cause::WriteFailed => "write failed (disk full)",
            Cause::Unexplained => "unexplained",
        }
    }
}

/// The verdict on one scenario: one row of the summary table.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    pub scenario: String,
    pub produced: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates_filtered: u64,
    pub duplicates_at_sink: BTreeMap<Cause, u64>,
    pub out_of_order: u64,
    pub commit_violations: u64,
    pub max_rss_agent_mib: u64,
    pub max_rss_cp_mib: u64,
    pub recovery: Option<Duration>,
    /// Every invariant that did not hold, in words.
    pub violations: Vec<String>,
    pub seconds: f64,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Check what the sink holds against what was produced and sampled.
pub fn judge(
    scenario: &str,
    produced: &Produced,
    sink: &Sink,
    samples: &Samples,
    limits: &Limits,
    recovery: Option<Duration>,
) -> Verdict {
    let (records, bad_lines) = SinkReader::read_all(sink);
    let mut v = Verdict {
        scenario: scenario.to_string(),
        produced: produced.at.len() as u64,
        duplicates_filtered: samples.filtered_total(),
        recovery,
        ..Verdict::default()
    };
    if bad_lines > 0 {
        v.violations
            .push(format!("{bad_lines} sink lines are not records"));
    }
    // Loss, duplicates, order of first deliveries.
    let mut copies: HashMap<(i32, i64), u64> = HashMap::new();
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    let mut wrong_value = 0u64;
    let mut foreign = 0u64;
    for r in &records {
        let n = copies.entry((r.partition, r.offset)).or_insert(0);
        *n += 1;
        if *n > 1 {
            let cause = if r.resend_of_seen_key {
                Cause::WebhookAnswerLost
            } else if limits.allowed_duplicates.contains(&Cause::WriteFailed) {
                Cause::WriteFailed
            } else {
                Cause::Unexplained
            };
            *v.duplicates_at_sink.entry(cause).or_insert(0) += 1;
            continue;
        }
        if let Some(prev) = last.insert(r.partition, r.offset)
            && r.offset < prev
        {
            v.out_of_order += 1;
        }
        match produced.at.get(&(r.partition, r.offset)) {
            Some(want) if r.id != Some(*want) => wrong_value += 1,
            Some(_) => {}
            // The producer's own duplicate: a retry after a lost answer
            // wrote the record again; the delivery report named the other
            // copy. Not the relay's doing, and not foreign.
            None if r.id.is_some_and(|id| produced.ids.contains(&id)) => {}
            None => foreign += 1,
        }
    }
    v.delivered = produced
        .at
        .keys()
        .filter(|k| copies.contains_key(k))
        .count() as u64;
    v.lost = v.produced - v.delivered;
    if v.lost > 0 {
        let first: Vec<_> = produced
            .at
            .keys()
            .filter(|k| !copies.contains_key(k))
            .take(5)
            .collect();
        v.violations
            .push(format!("{} records lost, e.g. {first:?}", v.lost));
    }
    if wrong_value > 0 {
        v.violations.push(format!(
            "{wrong_value} records carry another record's value"
        ));
    }
    if foreign > 0 {
        v.violations.push(format!(
            "{foreign} records in the sink were never produced (or their producer gave up on them)"
        ));
    }
    for (cause, n) in &v.duplicates_at_sink {
        if !limits.allowed_duplicates.contains(cause) {
            v.violations
                .push(format!("{n} duplicates at the sink ({})", cause.name()));
        }
    }
    if v.out_of_order > 0 {
        v.violations.push(format!(
            "{} records out of order in their partition",
            v.out_of_order
        ));
    }
    // The committed offset never passes what the sink holds: every produced
    // offset below a sampled commit was in the sink at that sample.
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (p, o) in produced.at.keys() {
        by_partition.entry(*p).or_default().push(*o);
    }
    let mut example = None;
    for (i, committed) in &samples.committed {
        for (p, c) in committed {
            let Some(offsets) = by_partition.get(p) else {
                continue;
            };
            let missing = offsets
                .iter()
                .take_while(|o| *o < c)
                .find(|o| samples.first_seen.get(&(*p, **o)).is_none_or(|s| s > i));
            if let Some(o) = missing {
                v.commit_violations += 1;
                example.get_or_insert((*i, *p, *c, *o));
            }
        }
    }
    if let Some((i, p, c, o)) = example {
        v.violations.push(format!(
            "{} samples saw a commit past the sink, e.g. sample {i}: partition {p} committed {c} while offset {o} was not in the sink",
            v.commit_violations
        ));
    }
    if samples.committed.is_empty() {
        v.violations
            .push("no committed offsets were sampled".to_string());
    }
    // Memory.
    let mib = |role: &str| samples.max_rss_kib.get(role).copied().unwrap_or(0) / 1024;
    v.max_rss_agent_mib = mib("agent");
    v.max_rss_cp_mib = mib("control-plane");
    if v.max_rss_agent_mib > limits.rss_agent_mib {
        v.violations.push(format!(
            "agent RSS {} MiB over the {} MiB limit",
            v.max_rss_agent_mib, limits.rss_agent_mib
        ));
    }
    if v.max_rss_cp_mib > limits.rss_control_plane_mib {
        v.violations.push(format!(
            "control-plane RSS {} MiB over the {} MiB limit",
            v.max_rss_cp_mib, limits.rss_control_plane_mib
        ));
    }
    match recovery {
        Some(r) if r > limits.recovery => v.violations.push(format!(
            "recovery took {:.1} s, over the {:.0} s limit",
            r.as_secs_f64(),
            limits.recovery.as_secs_f64()
        )),
        Some(_) => {}
        None => v
            .violations
            .push("new records did not reach the sink after the faults".to_string()),
    }
    v
}

/// The summary table, one row per scenario.
pub fn table(rows: &[Verdict]) -> String {
    let header = [
        "scenario",
        "produced",
        "delivered",
        "lost",
        "dups filtered",
        "dups at sink",
        "out of order",
        "commit viol.",
        "max RSS agent/cp MiB",
        "recovery s",
        "time s",
        "result",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let dups: u64 = r.duplicates_at_sink.values().sum();
        let dups = if dups == 0 {
            "0".to_string()
        } else {
            let causes: Vec<String> = r
                .duplicates_at_sink
                .iter()
                .map(|(c, n)| format!("{n} {}", c.name()))
                .collect();
            causes.join(", ")
        };
        lines.push(vec![
            r.scenario.clone(),
            r.produced.to_string(),
            r.delivered.to_string(),
            r.lost.to_string(),
            r.duplicates_filtered.to_string(),
            dups,
            r.out_of_order.to_string(),
            r.commit_violations.to_string(),
            format!("{}/{}", r.max_rss_agent_mib, r.max_rss_cp_mib),
            r.recovery
                .map(|d| format!("{:.1}", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            format!("{:.0}", r.seconds),
            if r.passed() { "ok" } else { "FAILED" }.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
        }
    }
    out
}
