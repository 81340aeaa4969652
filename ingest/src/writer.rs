//! The ClickHouse and dead-letter side of the pipeline: for each batch, in order,
//! dead-letter its rejected messages (awaiting delivery), insert its rejection records and
//! audit rows (awaiting ClickHouse's acknowledgement), then acknowledge the batch's
//! offsets to the consumer. Failures are retried with capped exponential backoff and
//! jitter until they succeed or the writer is cancelled; nothing is acknowledged early.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse::Client;
use custos_schemas::RejectionRow;
use metrics::{counter, histogram};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::batch::Batch;
use crate::checkpoints::{CheckpointPolicy, Tracker};
use crate::consumer::Ack;
use crate::health::Health;

/// Writes batches to ClickHouse and the DLQ.
pub struct Writer {
    /// ClickHouse client (writer account, database `custos`).
    pub client: Client,
    /// Producer for the dead-letter and checkpoint topics.
    pub dlq: FutureProducer,
    /// Dead-letter topic.
    pub dlq_topic: String,
    /// Readiness.
    pub health: Arc<Health>,
    /// Checkpoint signing, when configured.
    pub checkpoints: Option<CheckpointPolicy>,
}

/// How a failed call should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Server unreachable, timeout, 5xx: retry.
    Transient,
    /// ClickHouse refused the data or the statement (schema mismatch, bad data): retrying
    /// cannot help without an operator, but dropping would lose audit records, so the
    /// writer keeps retrying slowly and reports it loudly.
    Permanent,
}

/// Classifies a ClickHouse client error.
pub fn classify(err: &clickhouse::error::Error) -> Failure {
    use clickhouse::error::Error as E;
    match err {
        E::Network(_) | E::TimedOut => Failure::Transient,
        E::BadResponse(msg) => {
            // ClickHouse error codes that mean the data or statement itself is wrong.
            const BAD_DATA: [&str; 8] = [
                "Code: 6.",
                "Code: 27.",
                "Code: 33.",
                "Code: 41.",
                "Code: 53.",
                "Code: 60.",
                "Code: 62.",
                "Code: 117.",
            ];
            if BAD_DATA.iter().any(|c| msg.contains(c)) {
                Failure::Permanent
            } else {
                Failure::Transient
            }
        }
        E::SchemaMismatch(_) | E::InvalidParams(_) | E::Unsupported(_) => Failure::Permanent,
        _ => Failure::Transient,
    }
}

/// Capped exponential backoff with jitter.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            next: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }

    fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // Jitter: 50%..100% of the base, from the clock's sub-second noise.
        let noise = u64::from(chrono::Utc::now().timestamp_subsec_nanos() % 1000);
        base.mul_f64(0.5 + (noise as f64) / 2000.0)
    }
}

impl Writer {
    /// Processes batches until the channel closes or `cancel` fires.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Batch>,
        acks: std_mpsc::Sender<Ack>,
        cancel: CancellationToken,
    ) {
        let mut tracker = Tracker::default();
        // Quiet chains still get their time-based checkpoints.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = tokio::select! {
                biased;
                _ = cancel.cancelled() => None,
                b = rx.recv() => b,
                _ = tick.tick() => {
                    if !self.checkpoint(&mut tracker, false, &cancel).await {
                        return;
                    }
                    continue;
                }
            };
            let Some(batch) = batch else { break };
            let started = Instant::now();
            let rows = batch.rows.len();
            if !self.write(&batch, &cancel).await {
                warn!("writer cancelled with a batch unwritten; it will be replayed");
                return;
            }
            if let Some(policy) = &self.checkpoints {
                tracker.observe(&batch.rows, policy.every_records);
            }
            if !self.checkpoint(&mut tracker, false, &cancel).await {
                return;
            }
            histogram!("custos_ingest_batch_seconds").record(started.elapsed().as_secs_f64());
            histogram!("custos_ingest_batch_rows").record(rows as f64);
            counter!("custos_ingest_inserted_rows_total").increment(rows as u64);
            for (topic, n) in &batch.consumed {
                counter!("custos_ingest_consumed_total", "topic" => topic.to_string())
                    .increment(*n);
            }
            for r in &batch.rejects {
                counter!("custos_ingest_rejected_total", "reason" => r.error.reason()).increment(1);
            }
            if acks
                .send(Ack {
                    next_offsets: batch.next_offsets,
                })
                .is_err()
            {
                return;
            }
        }
        self.checkpoint(&mut tracker, true, &cancel).await;
        info!("writer finished");
    }

    /// Signs, stores and publishes the checkpoints that are due; false when cancelled.
    async fn checkpoint(
        &mut self,
        tracker: &mut Tracker,
        force: bool,
        cancel: &CancellationToken,
    ) -> bool {
        let Some(policy) = self.checkpoints.clone() else {
            return true;
        };
        let due = tracker.due(&policy, force);
        if due.is_empty() {
            return true;
        }
        if !self
            .insert_with_retry("chain_checkpoints", &due, cancel)
            .await
        {
            return false;
        }
        // Published together; only the ones Kafka refused are sent again.
        let keys: Vec<String> = due
            .iter()
            .map(|cp| format!("{}/{}", cp.kafka_topic, cp.kafka_partition))
            .collect();
        let mut pending: Vec<usize> = (0..due.len()).collect();
        let mut backoff = Backoff::new();
        while !pending.is_empty() {
            let sends = pending.iter().map(|&i| {
                let record: FutureRecord<'_, str, str> = FutureRecord::to(&policy.topic)
                    .key(keys[i].as_str())
                    .payload(due[i].jws.as_str());
                self.dlq
                    .send(record, Timeout::After(Duration::from_secs(30)))
            });
            let results = futures_util::future::join_all(sends).await;
            pending = pending
                .into_iter()
                .zip(results)
                .filter_map(|(i, r)| {
                    let (e, _) = r.err()?;
                    warn!(error = %e, "checkpoint publish failed; retrying");
                    Some(i)
                })
                .collect();
            if !pending.is_empty() && !sleep_or_cancel(backoff.step(), cancel).await {
                return false;
            }
        }
        counter!("custos_ingest_checkpoints_total").increment(due.len() as u64);
        true
    }

    /// Writes one batch durably; false when cancelled first.
    async fn write(&self, batch: &Batch, cancel: &CancellationToken) -> bool {
        for r in &batch.rejects {
            let mut backoff = Backoff::new();
            loop {
                match self.dead_letter(r).await {
                    Ok(()) => break,
                    Err(e) => {
                        counter!("custos_ingest_dlq_retries_total").increment(1);
                        warn!(error = %e, "DLQ delivery failed; retrying");
                        if !sleep_or_cancel(backoff.step(), cancel).await {
                            return false;
                        }
                    }
                }
            }
        }
        if !batch.rejects.is_empty() {
            let rows: Vec<RejectionRow> = batch.rejects.iter().map(|r| r.row()).collect();
            if !self
                .insert_with_retry("ingest_rejections", &rows, cancel)
                .await
            {
                return false;
            }
        }
        if !batch.rows.is_empty()
            && !self
                .insert_with_retry("audit_events", &batch.rows, cancel)
                .await
        {
            return false;
        }
        // Where the chains now stand, durable before the offsets are committed.
        let heads = crate::chainer::batch_heads(&batch.rows);
        if !heads.is_empty() && !self.insert_with_retry("chain_heads", &heads, cancel).await {
            return false;
        }
        true
    }

    async fn dead_letter(
        &self,
        r: &crate::batch::Rejected,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let partition = r.pos.partition.to_string();
        let offset = r.pos.offset.to_string();
        let detail = r.error.to_string();
        let at = r.at_ms.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 6);
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        for (key, value) in [
            ("custos-reason", r.error.reason()),
            ("custos-detail", detail.as_str()),
            ("custos-source-topic", r.pos.topic.as_str()),
            ("custos-source-partition", partition.as_str()),
            ("custos-source-offset", offset.as_str()),
            ("custos-rejected-at", at.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.dlq_topic)
            .payload(r.payload.as_slice())
            .headers(headers);
        if let Some(k) = &r.key {
            record = record.key(k.as_slice());
        }
        self.dlq
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    async fn insert_with_retry<T>(
        &self,
        table: &str,
        rows: &[T],
        cancel: &CancellationToken,
    ) -> bool
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite,
    {
        let mut backoff = Backoff::new();
        loop {
            match self.insert(table, rows).await {
                Ok(()) => {
                    self.health.set_clickhouse(true);
                    return true;
                }
                Err(e) => {
                    let kind = classify(&e);
                    self.health.set_clickhouse(false);
                    let label = match kind {
                        Failure::Transient => "transient",
                        Failure::Permanent => "permanent",
                    };
                    counter!("custos_ingest_insert_retries_total", "kind" => label).increment(1);
                    if kind == Failure::Permanent {
                        tracing::error!(table, error = %e, "ClickHouse rejected the batch; retrying until fixed");
                    } else {
                        warn!(table, error = %e, "ClickHouse insert failed; retrying");
                    }
                    if !sleep_or_cancel(backoff.step(), cancel).await {
                        return false;
                    }
                }
            }
        }
    }

    async fn insert<T>(&self, table: &str, rows: &[T]) -> clickhouse::error::Result<()>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite,
    {
        let mut insert = self.client.insert::<T>(table).await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }
}

async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_bad_data_as_permanent() {
        let e = clickhouse::error::Error::BadResponse(
            "Code: 117. DB::Exception: Cannot parse input".into(),
        );
        assert_eq!(classify(&e), Failure::Permanent);
        let e = clickhouse::error::Error::BadResponse("Code: 241. Memory limit".into());
        assert_eq!(classify(&e), Failure::Transient);
        assert_eq!(
            classify(&clickhouse::error::Error::TimedOut),
            Failure::Transient
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new();
        let first = b.step();
        assert!(first <= Duration::from_millis(100) && first >= Duration::from_millis(50));
        for _ in 0..10 {
            assert!(b.step() <= Duration::from_secs(5));
        }
    }
}
