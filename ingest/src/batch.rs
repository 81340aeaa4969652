//! A batch of decoded rows and rejected messages, with the Kafka positions it covers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_schemas::{AuditRow, DecodeError, KafkaPosition, RejectionRow};

/// When to cut a batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Maximum rows (audit rows plus rejections).
    pub max_rows: usize,
    /// Maximum input bytes.
    pub max_bytes: usize,
    /// Maximum age of the oldest message in the batch.
    pub linger: Duration,
}

/// A message that failed to decode, kept for the dead-letter queue: its bytes with
/// credentials redacted ([`custos_schemas::redact`]), nothing else changed.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// Where it was read.
    pub pos: KafkaPosition,
    /// Key, credentials redacted.
    pub key: Option<Vec<u8>>,
    /// Value bytes, credentials redacted.
    pub payload: Vec<u8>,
    /// Size of the original value.
    pub size_bytes: usize,
    /// Headers, credentials redacted.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Why it was rejected.
    pub error: DecodeError,
    /// When (ms since the epoch).
    pub at_ms: i64,
}

impl Rejected {
    /// A rejected message, its key, value and headers redacted of credentials.
    pub fn redacted(
        pos: KafkaPosition,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(&str, &[u8])],
        error: DecodeError,
        at_ms: i64,
    ) -> Self {
        use custos_schemas::redact::{redact, redact_header};
        Rejected {
            pos,
            key: key.map(|k| redact(k).into_owned()),
            payload: redact(payload).into_owned(),
            size_bytes: payload.len(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), redact_header(k, v).into_owned()))
                .collect(),
            error,
            at_ms,
        }
    }

    /// The row recorded in `custos.ingest_rejections`.
    pub fn row(&self) -> RejectionRow {
        RejectionRow {
            kafka_topic: self.pos.topic.clone(),
            kafka_partition: self.pos.partition,
            kafka_offset: self.pos.offset,
            rejected_at: self.at_ms,
            reason: self.error.reason().to_owned(),
            detail: self.error.to_string(),
            size_bytes: u32::try_from(self.size_bytes).unwrap_or(u32::MAX),
            refused_row: String::new(),
        }
    }
}

/// Topic and partition.
pub type PartitionKey = (Arc<str>, i32);

/// Rows, rejections and the next offset to commit per partition.
#[derive(Debug, Default)]
pub struct Batch {
    /// Decoded audit rows.
    pub rows: Vec<AuditRow>,
    /// Rejected messages.
    pub rejects: Vec<Rejected>,
    /// Next offset to commit, per partition (last offset in the batch + 1).
    pub next_offsets: HashMap<PartitionKey, i64>,
    /// Messages consumed per topic.
    pub consumed: HashMap<Arc<str>, u64>,
    /// Input bytes.
    pub bytes: usize,
    /// Sequence number given when handed to the writer ([`crate::offsets::OffsetTracker`]).
    pub seq: u64,
    first_at: Option<Instant>,
}

impl Batch {
    /// Number of messages in the batch.
    pub fn len(&self) -> usize {
        self.rows.len() + self.rejects.len()
    }

    /// Whether the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records that the message at `(topic, partition, offset)` of `bytes` bytes is in the batch.
    pub fn note(&mut self, topic: &Arc<str>, partition: i32, offset: i64, bytes: usize) {
        if self.first_at.is_none() {
            self.first_at = Some(Instant::now());
        }
        self.bytes += bytes;
        let next = self
            .next_offsets
            .entry((topic.clone(), partition))
            .or_insert(offset + 1);
        if *next < offset + 1 {
            *next = offset + 1;
        }
        *self.consumed.entry(topic.clone()).or_insert(0) += 1;
    }

    /// Whether the batch should be flushed now.
    pub fn is_due(&self, policy: &BatchPolicy) -> bool {
        self.len() >= policy.max_rows
            || self.bytes >= policy.max_bytes
            || self.first_at.is_some_and(|t| t.elapsed() >= policy.linger)
    }

    /// Whether the batch is full (no more messages should be added while it waits).
    pub fn is_full(&self, policy: &BatchPolicy) -> bool {
        self.len() >= policy.max_rows || self.bytes >= policy.max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_next_offsets_and_cuts_by_rows_bytes_and_time() {
        let policy = BatchPolicy {
            max_rows: 3,
            max_bytes: 100,
            linger: Duration::from_millis(20),
        };
        let t: Arc<str> = Arc::from("t");
        let mut b = Batch::default();
        assert!(!b.is_due(&policy));
        b.note(&t, 0, 7, 10);
        b.note(&t, 0, 5, 10);
        b.note(&t, 1, 2, 10);
        assert_eq!(b.next_offsets[&(t.clone(), 0)], 8);
        assert_eq!(b.next_offsets[&(t.clone(), 1)], 3);
        assert!(!b.is_due(&policy));
        std::thread::sleep(Duration::from_millis(25));
        assert!(b.is_due(&policy));
        let mut big = Batch::default();
        big.note(&t, 0, 1, 200);
        assert!(big.is_full(&policy));
    }
}
