//! Finds where each partition's hash chain stands, so new records link to the last durable
//! one. Asked once per partition after each assignment; the answer comes from ClickHouse
//! (the last chained record below the first offset this process reads), which makes a
//! replay after a crash or a takeover by another process link exactly as the first write did.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;
use custos_schemas::chain::Head;
use serde::Deserialize;
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
    record_hash: custos_schemas::chain::Hash,
    event_key: String,
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
        let mut delay = Duration::from_millis(100);
        loop {
            let query = self
                .client
                .query(
                    "SELECT kafka_offset, record_hash, event_key FROM custos.audit_events \
                     WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset < ? \
                       AND record_hash != '' \
                     ORDER BY kafka_offset DESC LIMIT 1",
                )
                .bind(topic)
                .bind(partition)
                .bind(offset);
            match self.runtime.block_on(query.fetch_optional::<HeadRow>()) {
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
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
