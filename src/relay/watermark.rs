//! Per-partition ack watermarks of one job: which offset may be stored (and
//! so committed) once the control plane acks batches, possibly out of order.
//!
//! A batch may hold records of several partitions. For each partition the
//! tracker keeps the batches that carry it, in send order, each with the
//! highest offset it carries there. An ack marks a batch done; a partition's
//! watermark then moves past every batch at the front of its queue that is
//! done, and stops at the first that is not: a gap holds the watermark back,
//! so an offset is stored only when every record before it in that partition
//! was acked (vector's ack tracker, rust-rdkafka's `at_least_once` example).
//!
//! The watermark is the *next* offset to consume (last acked offset + 1),
//! which is what Kafka commits. Offsets need not be contiguous (compaction,
//! transaction markers): a batch's range ends at its highest offset, and the
//! next batch of that partition starts wherever the consumer went on.
//!
//! Pure data: no I/O, no clock; the runner decides when to store and commit.

use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Partition {
    /// Batches carrying this partition, in send order: (batch_seq, highest offset, acked).
    queue: VecDeque<(u64, i64, bool)>,
    /// Next offset to consume after everything acked so far; `None` until
    /// the first batch carrying this partition is acked.
    watermark: Option<i64>,
}

/// Ack tracker of one job (one consumer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermarks {
    /// Sent, unacked batches → the partitions they carry.
    batches: BTreeMap<u64, Vec<i32>>,
    partitions: BTreeMap<i32, Partition>,
}

impl Watermarks {
    pub fn new() -> Self {
        Self::default()
    }

    /// A batch was sent carrying, for each partition, records up to the given
    /// highest offset. Records of one partition must be sent in offset order
    /// (as a consumer reads them); a repeated partition keeps its highest offset.
    pub fn sent(&mut self, batch_seq: u64, highest: impl IntoIterator<Item = (i32, i64)>) {
        let mut parts: Vec<i32> = Vec::new();
        for (partition, offset) in highest {
            let queue = &mut self.partitions.entry(partition).or_default().queue;
            match queue.back_mut() {
                Some((seq, last, _)) if *seq == batch_seq => *last = (*last).max(offset),
                _ => {
                    queue.push_back((batch_seq, offset, false));
                    parts.push(partition);
                }
            }
        }
        if !parts.is_empty() {
            self.batches.insert(batch_seq, parts);
        }
    }

    /// The control plane acked a batch. Returns the partitions whose
    /// watermark moved, with the new watermark (the offset to store), in
    /// partition order. Unknown or repeated acks change nothing.
    pub fn ack(&mut self, batch_seq: u64) -> Vec<(i32, i64)> {
        let Some(parts) = self.batches.remove(&batch_seq) else {
            return Vec::new();
        };
        let mut moved = Vec::new();
        for p in parts {
            let Some(part) = self.partitions.get_mut(&p) else {
                continue;
            };
            if let Some(entry) = part.queue.iter_mut().find(|(seq, _, _)| *seq == batch_seq) {
                entry.2 = true;
            }
            let mut advanced = None;
            while let Some(&(_, last, true)) = part.queue.front() {
                part.queue.pop_front();
                advanced = Some(last + 1);
            }
            if let Some(w) = advanced {
                part.watermark = Some(w);
                moved.push((p, w));
            }
        }
        moved.sort_unstable();
        moved
    }

    /// Forget a partition (revoked, lost): its watermark and its place in
    /// every batch in flight, so a late ack of an old batch cannot move the
    /// watermark of a later assignment of the same partition.
    pub fn forget(&mut self, partition: i32) {
        if self.partitions.remove(&partition).is_none() {
            return;
        }
        self.batches.retain(|_, parts| {
            parts.retain(|p| *p != partition);
            !parts.is_empty()
        });
    }

    /// Forget the batches in flight, keeping the watermarks: their records
    /// will be read again from Kafka (a new session) and sent in new batches,
    /// so a late ack of one of them moves nothing.
    pub fn abandon_in_flight(&mut self) {
        self.batches.clear();
        for part in self.partitions.values_mut() {
            part.queue.clear();
        }
    }

    /// Forget everything (the consumer was closed).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Next offset to consume after everything acked, if anything was acked.
    pub fn watermark(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition).and_then(|p| p.watermark)
    }

    /// All known watermarks, by partition.
    pub fn watermarks(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.partitions
            .iter()
            .filter_map(|(p, s)| s.watermark.map(|w| (*p, w)))
    }

    /// Batches sent and not yet acked that still carry a tracked partition.
    pub fn in_flight(&self) -> usize {
        self.batches.len()
    }

    /// Whether `partition` has records sent and not yet acked.
    pub fn has_unacked(&self, partition: i32) -> bool {
        self.partitions
            .get(&partition)
            .is_some_and(|p| !p.queue.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_acks_move_the_watermark_one_past_the_batch() {
        let mut w = Watermarks::new();
        w.sent(1, [(0, 9)]);
        w.sent(2, [(0, 19)]);
        assert_eq!(w.watermark(0), None);
        assert_eq!(w.ack(1), vec![(0, 10)]);
        assert_eq!(w.ack(2), vec![(0, 20)]);
        assert_eq!(w.watermark(0), Some(20));
        assert_eq!(w.in_flight(), 0);
        assert!(!w.has_unacked(0));
    }

    #[test]
    fn a_gap_holds_the_watermark_back_until_it_is_filled() {
        let mut w = Watermarks::new();
        w.sent(1, [(0, 9)]);
        w.sent(2, [(0, 19)]);
        w.sent(3, [(0, 29)]);
        assert_eq!(w.ack(3), vec![]);
        assert_eq!(w.ack(2), vec![]);
        assert_eq!(w.watermark(0), None);
        assert_eq!(w.in_flight(), 1);
        assert_eq!(w.ack(1), vec![(0, 30)]);
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn middle_gap_stops_at_the_first_unacked_batch() {
        let mut w = Watermarks::new();
        for seq in 1..=5 {
            w.sent(seq, [(0, seq as i64 * 10 - 1)]);
        }
        assert_eq!(w.ack(1), vec![(0, 10)]);
        assert_eq!(w.ack(3), vec![]);
        assert_eq!(w.ack(5), vec![]);
        assert_eq!(w.ack(2), vec![(0, 30)]);
        assert_eq!(w.watermark(0), Some(30));
        assert_eq!(w.ack(4), vec![(0, 50)]);
    }

    #[test]
    fn batches_spanning_partitions_move_each_independently() {
        let mut w = Watermarks::new();
        w.sent(1, [(0, 4), (1, 7)]);
        w.sent(2, [(1, 9), (2, 100)]);
        w.sent(3, [(0, 6)]);
        // Batch 2 acked first: partition 2 has no gap, partition 1 does.
        assert_eq!(w.ack(2), vec![(2, 101)]);
        assert_eq!(w.ack(3), vec![]);
        assert_eq!(w.ack(1), vec![(0, 7), (1, 10)]);
        assert_eq!(
            (w.watermark(0), w.watermark(1), w.watermark(2)),
            (Some(7), Some(10), Some(101))
        );
    }

    #[test]
    fn repeated_partition_in_one_batch_keeps_its_highest_offset() {
        let mut w = Watermarks::new();
        w.sent(1, [(0, 3), (0, 8), (0, 5)]);
        assert_eq!(w.ack(1), vec![(0, 9)]);
    }

    #[test]
    fn unknown_and_repeated_acks_change_nothing() {
        let mut w = Watermarks::new();
        w.sent(1, [(0, 9)]);
        assert_eq!(w.ack(42), vec![]);
        assert_eq!(w.ack(1), vec![(0, 10)]);
        assert_eq!(w.ack(1), vec![]);
        assert_eq!(w.watermark(0), Some(10));
    }

    #[test]
    fn sparse_offsets_are_fine() {
        // Compacted topic: offsets 3, 17, 90 only.
        let mut w = Watermarks::new();
        w.sent(1, [(0, 17)]);
        w.sent(2, [(0, 90)]);
        assert_eq!(w.ack(1), vec![(0, 18)]);
        assert_eq!(w.ack(2), vec![(0, 91)]);
    }

    #[test]
    fn forgetting_a_revoked_partition_ignores_late_acks_for_it() {
        let mut w = Watermarks::new();
        w.sent(1, [(0, 9), (1, 9)]);
        w.sent(2, [(0, 19)]);
        w.forget(0);
        assert_eq!(w.watermark(0), None);
        // Batch 2 carried only partition 0: nothing left to wait for.
        assert_eq!(w.in_flight(), 1);
        // Partition 0 comes back and is read again from its committed offset.
        w.sent(3, [(0, 4)]);
        // The late ack of batch 1 moves partition 1 only; batch 2 is unknown now.
        assert_eq!(w.ack(1), vec![(1, 10)]);
        assert_eq!(w.ack(2), vec![]);
        assert_eq!(w.watermark(0), None);
        assert_eq!(w.ack(3), vec![(0, 5)]);
        // Forgetting an unknown partition is harmless.
        w.forget(7);
    }

    #[test]
    fn abandoned_batches_keep_the_watermark_and_their_late_acks_move_nothing() {
        let mut w = Watermarks::new();
        w.sent(1, [(0, 9), (1, 4)]);
        w.sent(2, [(0, 19)]);
        w.sent(3, [(1, 9)]);
        assert_eq!(w.ack(1), vec![(0, 10), (1, 5)]);
        w.abandon_in_flight();
        assert_eq!((w.watermark(0), w.watermark(1)), (Some(10), Some(5)));
        assert_eq!(w.in_flight(), 0);
        assert!(!w.has_unacked(0) && !w.has_unacked(1));
        assert_eq!(w.ack(2), vec![]);
        assert_eq!(w.ack(3), vec![]);
        // The same records again, cut differently: the watermark goes on from
        // where it was.
        w.sent(4, [(0, 14)]);
        w.sent(5, [(0, 19), (1, 9)]);
        assert_eq!(w.ack(5), vec![(1, 10)]);
        assert_eq!(w.ack(4), vec![(0, 20)]);
    }

    #[test]
    fn reset_forgets_everything() {
        let mut w = Watermarks::new();
        w.sent(1, [(0, 9)]);
        w.sent(2, [(1, 9)]);
        w.ack(1);
        w.reset();
        assert_eq!(w, Watermarks::new());
        assert_eq!(w.ack(2), vec![]);
        assert_eq!(w.watermarks().count(), 0);
    }

    /// Every order of acking five batches over two partitions ends at the
    /// same watermarks, and a watermark never passes an unacked batch.
    #[test]
    fn any_ack_order_never_passes_an_unacked_batch() {
        let batches: [(u64, &[(i32, i64)]); 5] = [
            (1, &[(0, 9)]),
            (2, &[(0, 19), (1, 4)]),
            (3, &[(1, 9)]),
            (4, &[(0, 29)]),
            (5, &[(0, 39), (1, 14)]),
        ];
        let mut order: Vec<usize> = (0..5).collect();
        let mut count = 0;
        permute(&mut order, 0, &mut |perm| {
            count += 1;
            let mut w = Watermarks::new();
            for (seq, parts) in &batches {
                w.sent(*seq, parts.iter().copied());
            }
            let mut acked = [false; 5];
            for &i in perm {
                acked[i] = true;
                w.ack(batches[i].0);
                for p in [0, 1] {
                    // Expected: one past the last batch of p in the acked prefix of p's batches.
                    let mut expect = None;
                    for (j, (_, parts)) in batches.iter().enumerate() {
                        if let Some((_, off)) = parts.iter().find(|(q, _)| *q == p) {
                            if !acked[j] {
                                break;
                            }
                            expect = Some(off + 1);
                        }
                    }
                    assert_eq!(w.watermark(p), expect, "order {perm:?}, partition {p}");
                }
            }
            assert_eq!(
                (w.watermark(0), w.watermark(1), w.in_flight()),
                (Some(40), Some(15), 0)
            );
        });
        assert_eq!(count, 120);
    }

    fn permute(v: &mut Vec<usize>, k: usize, f: &mut impl FnMut(&[usize])) {
        if k == v.len() {
            f(v);
            return;
        }
        for i in k..v.len() {
            v.swap(k, i);
            permute(v, k + 1, f);
            v.swap(k, i);
        }
    }
}
