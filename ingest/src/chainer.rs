//! Finds where each partition's hash chain stands, so new records link to the last durable
//! one. Asked once per partition after each assignment; the answer comes from ClickHouse
//! (the last chained record below the first offset this process reads), which makes a
//! replay after a crash or a takeover by another process link exactly as the first write did.
//!
//! The writer records each acknowledged batch's last chained record per chain in
//! `custos.chain_heads` before committing offsets (migration 0010), so the row with the
//! highest offset below the first offset read is the head, found by primary key. A chain
//! with no row there at all is new. Only a chain whose recorded heads all lie at or after
//! that offset (a replay into history written before migration 0010) is looked up in
//! `custos.audit_events` itself, with a full scan.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clickhouse::Client;
use custos_integrity::chain::{Hash, Head, GENESIS};
use custos_runtime::retry::RetryPolicy;
use custos_schemas::AuditRow;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tracing::{info, warn};

/// The lookup was abandoned because the service is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopping")]
pub struct Stopping;

/// Looks up chain heads.
#[derive(Clone)]
pub struct Chainer {
    client: Client,
    runtime: Handle,
    stop: Arc<AtomicBool>,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct HeadRow {
    kafka_offset: i64,
    record_hash: Hash,
    event_key: String,
}

/// One row of `custos.chain_heads`: the last chained record of a chain in a written batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, clickhouse::Row)]
pub struct ChainHeadRow {
    /// Topic of the chain.
    pub kafka_topic: String,
    /// Partition of the chain.
    pub kafka_partition: i32,
    /// Offset of the record.
    pub kafka_offset: i64,
    /// Its hash.
    pub record_hash: Hash,
    /// Its event key.
    pub event_key: String,
}

/// The last chained record of each chain among `rows` (rows of a partition in offset order).
pub fn batch_heads(rows: &[AuditRow]) -> Vec<ChainHeadRow> {
    let mut heads: Vec<ChainHeadRow> = Vec::new();
    for r in rows.iter().filter(|r| r.record_hash != GENESIS) {
        match heads
            .iter_mut()
            .find(|h| h.kafka_partition == r.kafka_partition && h.kafka_topic == r.kafka_topic)
        {
            Some(h) if h.kafka_offset < r.kafka_offset => {
                h.kafka_offset = r.kafka_offset;
                h.record_hash = r.record_hash;
                h.event_key.clone_from(&r.event_key);
            }
            Some(_) => {}
            None => heads.push(ChainHeadRow {
                kafka_topic: r.kafka_topic.clone(),
                kafka_partition: r.kafka_partition,
                kafka_offset: r.kafka_offset,
                record_hash: r.record_hash,
                event_key: r.event_key.clone(),
            }),
        }
    }
    heads
}

impl Chainer {
    /// A chainer reading with `client` on `runtime` (called from the consumer thread).
    pub fn new(client: Client, runtime: Handle, stop: Arc<AtomicBool>) -> Self {
        Chainer {
            client,
            runtime,
            stop,
        }
    }

    /// The last chained record of `topic/partition` below `offset`; `Ok(None)` when the
    /// chain starts here. Retries while ClickHouse is unavailable; `Err` only when stopping.
    pub fn head_before(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<Option<Head>, Stopping> {
        let mut backoff = RetryPolicy::STORE.backoff();
        loop {
            let query = self.lookup(topic, partition, offset);
            match self.runtime.block_on(query) {
                Ok(found) => {
                    let head = found.map(|r| Head {
                        offset: r.kafka_offset,
                        hash: r.record_hash,
                        event_key: r.event_key,
                    });
                    info!(
                        topic,
                        partition,
                        offset,
                        head_offset = head.as_ref().map(|h| h.offset),
                        "chain head found"
                    );
                    return Ok(head);
                }
                Err(e) => {
                    warn!(topic, partition, error = %e, "chain head lookup failed; retrying");
                    if self.stop.load(Ordering::Relaxed) {
                        return Err(Stopping);
                    }
                    std::thread::sleep(backoff.step());
                }
            }
        }
    }

    /// The head below `offset`: from `custos.chain_heads`, else (history only) by scan.
    async fn lookup(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<Option<HeadRow>, clickhouse::error::Error> {
        let recorded: Option<HeadRow> = self
            .client
            .query(
                "SELECT kafka_offset, record_hash, event_key FROM custos.chain_heads \
                 WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset < ? \
                 ORDER BY kafka_offset DESC LIMIT 1",
            )
            .bind(topic)
            .bind(partition)
            .bind(offset)
            .fetch_optional()
            .await?;
        if recorded.is_some() {
            return Ok(recorded);
        }
        let known: u64 = self
            .client
            .query(
                "SELECT count() FROM custos.chain_heads \
                 WHERE kafka_topic = ? AND kafka_partition = ?",
            )
            .bind(topic)
            .bind(partition)
            .fetch_one()
            .await?;
        if known == 0 {
            return Ok(None);
        }
        self.client
            .query(
                "SELECT kafka_offset, record_hash, event_key FROM custos.audit_events \
                 WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset < ? \
                   AND record_hash != '' \
                 ORDER BY kafka_offset DESC LIMIT 1",
            )
            .bind(topic)
            .bind(partition)
            .bind(offset)
            .fetch_optional()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(topic: &str, partition: i32, offset: i64, chained: bool) -> AuditRow {
        AuditRow {
            kafka_topic: topic.into(),
            kafka_partition: partition,
            kafka_offset: offset,
            event_key: format!("k{offset}"),
            record_hash: if chained { [7u8; 32] } else { GENESIS },
            ..AuditRow::default()
        }
    }

    #[test]
    fn a_batch_records_the_last_chained_record_of_each_chain() {
        let rows = vec![
            row("a", 0, 5, true),
            row("a", 1, 9, true),
            row("a", 0, 6, true),
            row("b", 0, 3, true),
            row("a", 0, 7, false),
        ];
        let heads: Vec<(String, i32, i64, String)> = batch_heads(&rows)
            .into_iter()
            .map(|h| {
                (
                    h.kafka_topic,
                    h.kafka_partition,
                    h.kafka_offset,
                    h.event_key,
                )
            })
            .collect();
        assert_eq!(
            heads,
            vec![
                ("a".into(), 0, 6, "k6".into()),
                ("a".into(), 1, 9, "k9".into()),
                ("b".into(), 0, 3, "k3".into()),
            ]
        );
        assert!(batch_heads(&[row("a", 0, 1, false)]).is_empty());
    }
}
