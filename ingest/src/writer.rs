//! The ClickHouse and dead-letter side of the pipeline: for each batch, in order,
//! dead-letter its rejected messages (awaiting delivery), insert its rejection records and
//! audit rows (awaiting ClickHouse's acknowledgement, through the [`crate::sink`]), then
//! acknowledge the batch to the consumer. Failures are retried with capped exponential backoff and
//! jitter until they succeed or the writer is cancelled; nothing is acknowledged early.
//!
//! Errors are classified ([`crate::sink::classify`]). When ClickHouse refuses the audit rows' *data*
//! for good (a constraint, a value a column cannot hold, too many partitions in one
//! block), the batch is bisected until every row that can be stored is, and each row the
//! store refuses on its own is dead-lettered with ClickHouse's error and recorded in
//! `custos.ingest_rejections` (`store_refused`, with the row itself, so its chain still
//! verifies); the partitions then go on. A refused *statement* (unknown table, missing
//! grant, schema mismatch) is no fault of the rows: it is retried until an operator fixes
//! it, and reported loudly, so nothing is dropped.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use custos_schemas::{AuditRow, RejectionRow};
use metrics::{counter, histogram};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::batch::Batch;
use crate::checkpoints::{CheckpointPolicy, Tracker};
use crate::offsets::Ack;
use crate::sink::Sink;
use custos_runtime::retry::{sleep_or_cancel, RetryPolicy};

/// Writes batches to ClickHouse and the DLQ.
pub struct Writer {
    /// ClickHouse inserts (writer account, database `custos`).
    pub sink: Sink,
    /// Producer for the dead-letter and checkpoint topics.
    pub dlq: FutureProducer,
    /// Dead-letter topic.
    pub dlq_topic: String,
    /// Checkpoint signing, when configured.
    pub checkpoints: Option<CheckpointPolicy>,
}
/// One message for the dead-letter topic.
struct DeadLetter<'a> {
    pos: &'a custos_schemas::KafkaPosition,
    key: Option<&'a [u8]>,
    payload: &'a [u8],
    headers: &'a [(String, Vec<u8>)],
    reason: &'a str,
    detail: &'a str,
    at_ms: i64,
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
            let Some(refused) = self.write(&batch, &cancel).await else {
                warn!("writer cancelled with a batch unwritten; it will be replayed");
                return;
            };
            if let Some(policy) = &self.checkpoints {
                tracker.observe(&batch.rows, policy.every_records);
            }
            if !self.checkpoint(&mut tracker, false, &cancel).await {
                return;
            }
            histogram!("custos_ingest_batch_seconds").record(started.elapsed().as_secs_f64());
            histogram!("custos_ingest_batch_rows").record(rows as f64);
            counter!("custos_ingest_inserted_rows_total").increment((rows - refused) as u64);
            for (topic, n) in &batch.consumed {
                counter!("custos_ingest_consumed_total", "topic" => topic.to_string())
                    .increment(*n);
            }
            for r in &batch.rejects {
                counter!("custos_ingest_rejected_total", "reason" => r.error.reason()).increment(1);
            }
            if acks.send(Ack { seq: batch.seq }).is_err() {
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
            .sink
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
        let mut backoff = RetryPolicy::STORE.backoff();
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

    /// Writes one batch durably; returns how many audit rows the store refused (dead-lettered
    /// and recorded), or `None` when cancelled first.
    async fn write(&self, batch: &Batch, cancel: &CancellationToken) -> Option<usize> {
        for r in &batch.rejects {
            let detail = r.error.to_string();
            let letter = DeadLetter {
                pos: &r.pos,
                key: r.key.as_deref(),
                payload: &r.payload,
                headers: &r.headers,
                reason: r.error.reason(),
                detail: &detail,
                at_ms: r.at_ms,
            };
            if !self.dead_letter_with_retry(&letter, cancel).await {
                return None;
            }
        }
        if !batch.rejects.is_empty() {
            let rows: Vec<RejectionRow> = batch.rejects.iter().map(|r| r.row()).collect();
            if !self
                .sink
                .insert_with_retry("ingest_rejections", &rows, cancel)
                .await
            {
                return None;
            }
        }
        let mut refused_rows = 0;
        if !batch.rows.is_empty() {
            let refused = self.sink.insert_audit_rows(&batch.rows, cancel).await?;
            refused_rows = refused.len();
            if !refused.is_empty() && !self.store_refused(&batch.rows, refused, cancel).await {
                return None;
            }
        }
        // Where the chains now stand (a row the store refused stays in its chain: it is
        // recorded with its content in custos.ingest_rejections), durable before the offsets are committed.
        let heads = crate::chainer::batch_heads(&batch.rows);
        if !heads.is_empty()
            && !self
                .sink
                .insert_with_retry("chain_heads", &heads, cancel)
                .await
        {
            return None;
        }
        Some(refused_rows)
    }

    /// Dead-letters and records each audit row the store refused (awaiting both).
    async fn store_refused(
        &self,
        rows: &[AuditRow],
        refused: Vec<(usize, clickhouse::error::Error)>,
        cancel: &CancellationToken,
    ) -> bool {
        let at_ms = chrono::Utc::now().timestamp_millis();
        let mut records = Vec::with_capacity(refused.len());
        for (i, e) in refused {
            let row = &rows[i];
            let detail = crate::sink::refusal_detail(&e);
            // Cannot fail: an AuditRow is plain strings, numbers and lists.
            let json = serde_json::to_string(row).unwrap_or_default();
            tracing::error!(
                topic = %row.kafka_topic,
                partition = row.kafka_partition,
                offset = row.kafka_offset,
                error = %detail,
                "ClickHouse refused an audit row for good; dead-lettering it"
            );
            counter!("custos_ingest_store_refused_total").increment(1);
            let pos = custos_schemas::KafkaPosition {
                topic: row.kafka_topic.clone(),
                partition: row.kafka_partition,
                offset: row.kafka_offset,
            };
            let letter = DeadLetter {
                pos: &pos,
                key: Some(row.event_key.as_bytes()),
                payload: json.as_bytes(),
                headers: &[],
                reason: "store_refused",
                detail: &detail,
                at_ms,
            };
            if !self.dead_letter_with_retry(&letter, cancel).await {
                return false;
            }
            records.push(RejectionRow {
                kafka_topic: row.kafka_topic.clone(),
                kafka_partition: row.kafka_partition,
                kafka_offset: row.kafka_offset,
                rejected_at: at_ms,
                reason: "store_refused".to_owned(),
                detail,
                size_bytes: u32::try_from(json.len()).unwrap_or(u32::MAX),
                refused_row: json,
            });
        }
        self.sink
            .insert_with_retry("ingest_rejections", &records, cancel)
            .await
    }

    /// Sends one dead letter, retrying until delivered; false when cancelled first.
    async fn dead_letter_with_retry(
        &self,
        letter: &DeadLetter<'_>,
        cancel: &CancellationToken,
    ) -> bool {
        let mut backoff = RetryPolicy::STORE.backoff();
        loop {
            match self.dead_letter(letter).await {
                Ok(()) => return true,
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

    async fn dead_letter(&self, r: &DeadLetter<'_>) -> Result<(), rdkafka::error::KafkaError> {
        let partition = r.pos.partition.to_string();
        let offset = r.pos.offset.to_string();
        let at = r.at_ms.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 6);
        for (k, v) in r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        for (key, value) in [
            ("custos-reason", r.reason),
            ("custos-detail", r.detail),
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
            .payload(r.payload)
            .headers(headers);
        if let Some(k) = r.key {
            record = record.key(k);
        }
        self.dlq
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}
