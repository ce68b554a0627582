//! Per-partition delivered watermarks of one job: which records a sink already
//! has, so that resent batches do not reach it twice.
//!
//! The watermark of a partition is the next offset expected: every record
//! below it was delivered. A record is delivered only if its offset is at or
//! above the watermark, so per partition a sink sees strictly increasing
//! offsets. Offsets above the watermark are accepted even with a gap, because
//! Kafka offsets are not contiguous (compaction, transaction markers, a group
//! that starts at `latest`). The map is per job, not per agent: a partition
//! that moves to another agent of the group keeps its watermark.

use connectivity_protocol::Record;
use std::collections::BTreeMap;

/// What [`Watermarks::filter`] kept.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filtered {
    /// Records to hand to the sink, in batch order.
    pub records: Vec<Record>,
    /// Records dropped because they were already delivered (or repeated
    /// within the batch).
    pub duplicates: usize,
}

/// Delivered watermarks of one job, by partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermarks {
    next: BTreeMap<i32, i64>,
}

impl Watermarks {
    pub fn new(next: BTreeMap<i32, i64>) -> Self {
        Watermarks { next }
    }

    /// Next offset expected on `partition`; `None` when nothing was delivered.
    pub fn get(&self, partition: i32) -> Option<i64> {
        self.next.get(&partition).copied()
    }

    pub fn as_map(&self) -> &BTreeMap<i32, i64> {
        &self.next
    }

    /// Keep the records not yet delivered. A record is also dropped when it
    /// does not move forward within this batch (a repeated offset), so the
    /// sink never sees an offset twice or out of order.
    pub fn filter(&self, records: Vec<Record>) -> Filtered {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut out = Filtered {
            records: Vec::with_capacity(records.len()),
            duplicates: 0,
        };
        for r in records {
            let n = next
                .entry(r.partition)
                .or_insert_with(|| self.get(r.partition).unwrap_or(i64::MIN));
            if r.offset >= *n {
                *n = r.offset.saturating_add(1);
                out.records.push(r);
            } else {
                out.duplicates += 1;
            }
        }
        out
    }

    /// Record that `delivered` reached the sink. Returns the partitions whose
    /// watermark moved, with the new value, for persisting.
    pub fn advance<'a>(
        &mut self,
        delivered: impl IntoIterator<Item = &'a Record>,
    ) -> Vec<(i32, i64)> {
        let mut moved: BTreeMap<i32, i64> = BTreeMap::new();
        for r in delivered {
            let candidate = r.offset.saturating_add(1);
            let current = self.next.entry(r.partition).or_insert(i64::MIN);
            if candidate > *current {
                *current = candidate;
                moved.insert(r.partition, candidate);
            }
        }
        moved.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(list: &[(i32, i64)]) -> Vec<Record> {
        list.iter()
            .map(|&(partition, offset)| Record {
                partition,
                offset,
                timestamp: None,
                key: None,
                value: None,
                headers: vec![],
            })
            .collect()
    }

    fn offsets(f: &Filtered) -> Vec<(i32, i64)> {
        f.records.iter().map(|r| (r.partition, r.offset)).collect()
    }

    #[test]
    fn resent_batch_is_entirely_dropped() {
        let mut w = Watermarks::default();
        let first = w.filter(recs(&[(0, 10), (0, 11), (1, 3)]));
        assert_eq!(first.duplicates, 0);
        assert_eq!(w.advance(&first.records), vec![(0, 12), (1, 4)]);
        let again = w.filter(recs(&[(0, 10), (0, 11), (1, 3)]));
        assert_eq!((again.records.len(), again.duplicates), (0, 3));
        assert_eq!(w.advance(&again.records), vec![]);
    }

    #[test]
    fn partial_overlap_keeps_only_new_records() {
        let mut w = Watermarks::new(BTreeMap::from([(0, 12)]));
        let f = w.filter(recs(&[(0, 10), (0, 11), (0, 12), (0, 13), (2, 0)]));
        assert_eq!(offsets(&f), vec![(0, 12), (0, 13), (2, 0)]);
        assert_eq!(f.duplicates, 2);
        w.advance(&f.records);
        assert_eq!(w.get(0), Some(14));
        assert_eq!(w.get(2), Some(1));
    }

    #[test]
    fn gaps_are_accepted_and_late_records_below_are_not() {
        let mut w = Watermarks::new(BTreeMap::from([(0, 5)]));
        let f = w.filter(recs(&[(0, 100), (0, 250)]));
        assert_eq!(offsets(&f), vec![(0, 100), (0, 250)]);
        w.advance(&f.records);
        assert_eq!(w.get(0), Some(251));
        assert_eq!(w.filter(recs(&[(0, 6)])).duplicates, 1);
    }

    #[test]
    fn repeats_and_reorders_within_a_batch_are_dropped() {
        let w = Watermarks::default();
        let f = w.filter(recs(&[(0, 1), (0, 1), (0, 3), (0, 2), (0, 4)]));
        assert_eq!(offsets(&f), vec![(0, 1), (0, 3), (0, 4)]);
        assert_eq!(f.duplicates, 2);
    }

    #[test]
    fn largest_offset_does_not_overflow() {
        let mut w = Watermarks::default();
        let f = w.filter(recs(&[(0, i64::MAX)]));
        w.advance(&f.records);
        assert_eq!(w.get(0), Some(i64::MAX));
    }
}
