//! Which Kafka offsets may be committed.
//!
//! Each batch handed to the writer is registered with the next offset it reaches in each
//! of its partitions ([`OffsetTracker::dispatched`]) and gets a sequence number; the
//! writer acknowledges it by that number once ClickHouse (and the dead-letter topic) have
//! it ([`OffsetTracker::acknowledge`]). Per partition, only the contiguous prefix of
//! acknowledged batches, in the order they were dispatched, may be committed: a batch
//! acknowledged before an earlier one of the same partition waits for it. Offsets never
//! move backwards.
//!
//! A revoked partition's pending state is dropped ([`OffsetTracker::revoke`]): later
//! acknowledgements for it are ignored, and a re-assignment starts fresh
//! ([`OffsetTracker::assign`]) from the group's committed offset. Drain
//! ([`OffsetTracker::drain`]) waits, up to a deadline, until no batch is in flight.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::batch::PartitionKey;

/// What the writer sends back once a batch is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The batch's sequence number ([`OffsetTracker::dispatched`]).
    pub seq: u64,
}

/// One dispatched batch's reach in a partition.
#[derive(Debug)]
struct Step {
    seq: u64,
    next: i64,
    acked: bool,
}

/// Offsets of one assigned partition.
#[derive(Debug, Default)]
struct PartitionOffsets {
    /// Dispatched batches not yet part of the acknowledged prefix, in dispatch order.
    steps: VecDeque<Step>,
    /// End of the acknowledged prefix, not yet committed.
    ready: Option<i64>,
    /// Last offset committed by this process since the assignment.
    committed: Option<i64>,
}

/// Per-partition offset bookkeeping between dispatch, acknowledgement and commit.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<PartitionKey, PartitionOffsets>,
    in_flight: HashSet<u64>,
    next_seq: u64,
}

impl OffsetTracker {
    /// An empty tracker: nothing assigned, nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking `key` afresh (on assignment); any earlier state of it is dropped.
    pub fn assign(&mut self, key: PartitionKey) {
        self.partitions.insert(key, PartitionOffsets::default());
    }

    /// Stops tracking `key` (on revocation): its pending and acknowledged offsets are
    /// forgotten and never committed by this process.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.partitions
            .retain(|(t, p), _| !(*p == partition && &**t == topic));
    }

    /// Whether `topic/partition` is assigned.
    pub fn is_assigned(&self, topic: &str, partition: i32) -> bool {
        self.partitions
            .keys()
            .any(|(t, p)| *p == partition && &**t == topic)
    }

    /// Registers a batch handed to the writer, reaching `next_offsets` (per partition, the
    /// offset after its last message); returns its sequence number for the [`Ack`].
    /// Partitions not assigned are not tracked (they are never committed).
    pub fn dispatched(&mut self, next_offsets: &HashMap<PartitionKey, i64>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.insert(seq);
        for (key, next) in next_offsets {
            if let Some(p) = self.partitions.get_mut(key) {
                p.steps.push_back(Step {
                    seq,
                    next: *next,
                    acked: false,
                });
            }
        }
        seq
    }

    /// Undoes [`OffsetTracker::dispatched`] for a batch that could not be handed over after
    /// all (it is dispatched again later under a new number).
    pub fn withdraw(&mut self, seq: u64) {
        if self.in_flight.remove(&seq) {
            for p in self.partitions.values_mut() {
                p.steps.retain(|s| s.seq != seq);
            }
        }
    }

    /// Records that batch `ack.seq` is durable and advances each partition's acknowledged
    /// prefix as far as it is contiguous. Unknown or repeated acknowledgements change
    /// nothing.
    pub fn acknowledge(&mut self, ack: Ack) {
        if !self.in_flight.remove(&ack.seq) {
            return;
        }
        for p in self.partitions.values_mut() {
            if let Some(step) = p.steps.iter_mut().find(|s| s.seq == ack.seq) {
                step.acked = true;
            }
            while p.steps.front().is_some_and(|s| s.acked) {
                if let Some(step) = p.steps.pop_front() {
                    if p.ready.is_none_or(|r| r < step.next) {
                        p.ready = Some(step.next);
                    }
                }
            }
        }
    }

    /// Batches dispatched and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Offsets that may be committed now: per assigned partition, the end of its
    /// acknowledged prefix when it lies beyond what was last committed.
    pub fn committable(&self) -> Vec<(PartitionKey, i64)> {
        let mut out: Vec<(PartitionKey, i64)> = self
            .partitions
            .iter()
            .filter_map(|(key, p)| {
                let ready = p.ready?;
                p.committed
                    .is_none_or(|c| c < ready)
                    .then(|| (key.clone(), ready))
            })
            .collect();
        out.sort();
        out
    }

    /// Records that `offsets` (from [`OffsetTracker::committable`]) were committed.
    pub fn committed(&mut self, offsets: &[(PartitionKey, i64)]) {
        for (key, next) in offsets {
            if let Some(p) = self.partitions.get_mut(key) {
                if p.committed.is_none_or(|c| c < *next) {
                    p.committed = Some(*next);
                }
                if p.ready.is_some_and(|r| r <= *next) {
                    p.ready = None;
                }
            }
        }
    }

    /// Takes acknowledgements from `recv` (called with the time left; `None` when none came
    /// in that time) until nothing is in flight or `deadline` passes. Returns whether
    /// nothing is in flight.
    pub fn drain<R>(&mut self, deadline: Instant, mut recv: R) -> bool
    where
        R: FnMut(Duration) -> Option<Ack>,
    {
        while !self.in_flight.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match recv(left) {
                Some(ack) => self.acknowledge(ack),
                None => return self.in_flight.is_empty(),
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::Arc;

    use super::*;

    fn key(topic: &str, partition: i32) -> PartitionKey {
        (Arc::from(topic), partition)
    }

    fn batch(parts: &[(&str, i32, i64)]) -> HashMap<PartitionKey, i64> {
        parts.iter().map(|(t, p, n)| (key(t, *p), *n)).collect()
    }

    /// Commits what is committable and returns it.
    fn commit(t: &mut OffsetTracker) -> Vec<(PartitionKey, i64)> {
        let c = t.committable();
        t.committed(&c);
        c
    }

    #[test]
    fn in_order_acks_commit_each_batch_end() {
        let mut t = OffsetTracker::new();
        t.assign(key("a", 0));
        let s1 = t.dispatched(&batch(&[("a", 0, 10)]));
        let s2 = t.dispatched(&batch(&[("a", 0, 20)]));
        assert!(t.committable().is_empty());
        t.acknowledge(Ack { seq: s1 });
        assert_eq!(commit(&mut t), vec![(key("a", 0), 10)]);
        assert!(t.committable().is_empty(), "nothing new after a commit");
        t.acknowledge(Ack { seq: s2 });
        assert_eq!(commit(&mut t), vec![(key("a", 0), 20)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn out_of_order_acks_commit_only_the_contiguous_prefix() {
        let mut t = OffsetTracker::new();
        t.assign(key("a", 0));
        t.assign(key("a", 1));
        let s1 = t.dispatched(&batch(&[("a", 0, 10), ("a", 1, 5)]));
        let s2 = t.dispatched(&batch(&[("a", 0, 20)]));
        let s3 = t.dispatched(&batch(&[("a", 0, 30), ("a", 1, 8)]));
        t.acknowledge(Ack { seq: s2 });
        t.acknowledge(Ack { seq: s3 });
        // Batch 1 is the gap: neither partition may move past it.
        assert!(t.committable().is_empty());
        t.acknowledge(Ack { seq: s1 });
        assert_eq!(
            commit(&mut t),
            vec![(key("a", 0), 30), (key("a", 1), 8)],
            "once the gap closes, the whole prefix is committable"
        );
    }

    #[test]
    fn a_gap_holds_back_only_its_own_partition() {
        let mut t = OffsetTracker::new();
        t.assign(key("a", 0));
        t.assign(key("b", 0));
        let s1 = t.dispatched(&batch(&[("a", 0, 10)]));
        let s2 = t.dispatched(&batch(&[("a", 0, 20), ("b", 0, 4)]));
        t.acknowledge(Ack { seq: s2 });
        assert_eq!(commit(&mut t), vec![(key("b", 0), 4)]);
        t.acknowledge(Ack { seq: s1 });
        assert_eq!(commit(&mut t), vec![(key("a", 0), 20)]);
    }

    #[test]
    fn offsets_never_move_backwards_and_repeated_acks_are_ignored() {
        let mut t = OffsetTracker::new();
        t.assign(key("a", 0));
        let s1 = t.dispatched(&batch(&[("a", 0, 10)]));
        t.acknowledge(Ack { seq: s1 });
        assert_eq!(commit(&mut t), vec![(key("a", 0), 10)]);
        t.acknowledge(Ack { seq: s1 });
        assert!(t.committable().is_empty());
        // A replayed batch reaching below the committed offset commits nothing.
        let s2 = t.dispatched(&batch(&[("a", 0, 7)]));
        t.acknowledge(Ack { seq: s2 });
        assert!(t.committable().is_empty());
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn revoke_forgets_and_reassign_starts_fresh() {
        let mut t = OffsetTracker::new();
        t.assign(key("a", 0));
        t.assign(key("a", 1));
        let s1 = t.dispatched(&batch(&[("a", 0, 10), ("a", 1, 3)]));
        let s2 = t.dispatched(&batch(&[("a", 0, 20)]));
        t.acknowledge(Ack { seq: s1 });
        t.revoke("a", 0);
        assert!(!t.is_assigned("a", 0));
        assert!(t.is_assigned("a", 1));
        // The acknowledged-but-uncommitted offset of the revoked partition is gone.
        assert_eq!(t.committable(), vec![(key("a", 1), 3)]);
        // Re-assigned: the old in-flight batch's acknowledgement does not count any more.
        t.assign(key("a", 0));
        t.acknowledge(Ack { seq: s2 });
        assert_eq!(commit(&mut t), vec![(key("a", 1), 3)]);
        // A new batch on the fresh assignment commits, even below what an earlier
        // assignment had reached (the group's committed offset is the truth now).
        let s3 = t.dispatched(&batch(&[("a", 0, 5)]));
        t.acknowledge(Ack { seq: s3 });
        assert_eq!(commit(&mut t), vec![(key("a", 0), 5)]);
    }

    #[test]
    fn a_withdrawn_batch_is_not_waited_for() {
        let mut t = OffsetTracker::new();
        t.assign(key("a", 0));
        let s1 = t.dispatched(&batch(&[("a", 0, 10)]));
        t.withdraw(s1);
        assert_eq!(t.in_flight(), 0);
        let s2 = t.dispatched(&batch(&[("a", 0, 10)]));
        t.acknowledge(Ack { seq: s2 });
        assert_eq!(commit(&mut t), vec![(key("a", 0), 10)]);
    }

    #[test]
    fn an_assignment_drops_earlier_state_of_the_partition() {
        let mut t = OffsetTracker::new();
        t.assign(key("a", 0));
        let s1 = t.dispatched(&batch(&[("a", 0, 10)]));
        t.acknowledge(Ack { seq: s1 });
        t.assign(key("a", 0));
        assert!(t.committable().is_empty());
    }

    #[test]
    fn unassigned_partitions_are_never_committed() {
        let mut t = OffsetTracker::new();
        let s = t.dispatched(&batch(&[("a", 0, 10)]));
        assert_eq!(t.in_flight(), 1);
        t.acknowledge(Ack { seq: s });
        assert!(t.committable().is_empty());
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn drain_waits_for_every_in_flight_batch() {
        let mut t = OffsetTracker::new();
        t.assign(key("a", 0));
        let s1 = t.dispatched(&batch(&[("a", 0, 10)]));
        let s2 = t.dispatched(&batch(&[("a", 0, 20)]));
        let (tx, rx) = mpsc::channel();
        let writer = std::thread::spawn(move || {
            for seq in [s1, s2] {
                std::thread::sleep(Duration::from_millis(20));
                tx.send(Ack { seq }).unwrap();
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(t.drain(deadline, |left| rx.recv_timeout(left).ok()));
        writer.join().unwrap();
        assert_eq!(t.in_flight(), 0);
        assert_eq!(commit(&mut t), vec![(key("a", 0), 20)]);
    }

    #[test]
    fn drain_gives_up_at_the_deadline() {
        let mut t = OffsetTracker::new();
        t.assign(key("a", 0));
        let s1 = t.dispatched(&batch(&[("a", 0, 10)]));
        t.dispatched(&batch(&[("a", 0, 20)]));
        let (tx, rx) = mpsc::channel();
        tx.send(Ack { seq: s1 }).unwrap();
        let started = Instant::now();
        let deadline = started + Duration::from_millis(100);
        assert!(!t.drain(deadline, |left| rx.recv_timeout(left).ok()));
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(t.in_flight(), 1);
        // What was acknowledged before the deadline is still committable.
        assert_eq!(commit(&mut t), vec![(key("a", 0), 10)]);
    }
}
