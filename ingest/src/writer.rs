//! The ClickHouse and dead-letter side of the pipeline: for each batch, in order,
//! dead-letter its rejected messages (awaiting delivery), insert its rejection records and
//! audit rows (awaiting ClickHouse's acknowledgement), then acknowledge the batch's
//! offsets to the consumer. Failures are retried with capped exponential backoff and
//! jitter until they succeed or the writer is cancelled; nothing is acknowledged early.
//!
//! Errors are classified ([`classify`]). When ClickHouse refuses the audit rows' *data*
//! for good (a constraint, a value a column cannot hold, too many partitions in one
//! block), the batch is bisected until every row that can be stored is, and each row the
//! store refuses on its own is dead-lettered with ClickHouse's error and recorded in
//! `custos.ingest_rejections` (`store_refused`, with the row itself, so its chain still
//! verifies); the partitions then go on. A refused *statement* (unknown table, missing
//! grant, schema mismatch) is no fault of the rows: it is retried until an operator fixes
//! it, and reported loudly, so nothing is dropped.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse::Client;
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
use custos_runtime::health::Health;
use custos_runtime::retry::{sleep_or_cancel, RetryPolicy};

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
    /// Server unreachable, timeout, overload, 5xx: retry.
    Transient,
    /// ClickHouse refused the rows' data (a value, a constraint, a block spanning too many
    /// partitions): retrying the same rows cannot help; bisect and dead-letter the rows
    /// it refuses on their own.
    BadData,
    /// ClickHouse refused the statement (unknown table or column, missing grant, schema
    /// mismatch): no fault of the rows, so dropping them would lose audit records; retried
    /// until an operator fixes it, and reported loudly.
    Statement,
}

impl Failure {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Transient => "transient",
            Failure::BadData => "bad_data",
            Failure::Statement => "statement",
        }
    }
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

/// ClickHouse error codes that mean the inserted data is wrong.
const BAD_DATA_CODES: [u32; 16] = [
    6,   // CANNOT_PARSE_TEXT
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    33,  // CANNOT_READ_ALL_DATA
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    252, // TOO_MANY_PARTS (too many partitions in one block)
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    407, // DECIMAL_OVERFLOW
    469, // VIOLATED_CONSTRAINT
    691, // UNKNOWN_ELEMENT_OF_ENUM
];

/// ClickHouse error codes that mean the statement or the account is wrong.
const STATEMENT_CODES: [u32; 10] = [
    16,  // NO_SUCH_COLUMN_IN_TABLE
    47,  // UNKNOWN_IDENTIFIER
    60,  // UNKNOWN_TABLE
    62,  // SYNTAX_ERROR
    81,  // UNKNOWN_DATABASE
    192, // UNKNOWN_USER
    193, // WRONG_PASSWORD
    497, // ACCESS_DENIED
    516, // AUTHENTICATION_FAILED
    8,   // THERE_IS_NO_COLUMN
];

/// The `Code: N.` of a ClickHouse error message.
fn error_code(msg: &str) -> Option<u32> {
    let at = msg.find("Code: ")? + "Code: ".len();
    let digits: String = msg[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Classifies a ClickHouse client error.
pub fn classify(err: &clickhouse::error::Error) -> Failure {
    use clickhouse::error::Error as E;
    match err {
        E::Network(_) | E::TimedOut => Failure::Transient,
        E::BadResponse(msg) => match error_code(msg) {
            Some(c) if BAD_DATA_CODES.contains(&c) => Failure::BadData,
            Some(c) if STATEMENT_CODES.contains(&c) => Failure::Statement,
            _ => Failure::Transient,
        },
        E::SchemaMismatch(_) | E::InvalidParams(_) | E::Unsupported(_) => Failure::Statement,
        _ => Failure::Transient,
    }
}

/// What ClickHouse said about a row it refused, kept short (a message can quote the value
/// it could not parse; values in audit rows are already pseudonymized).
fn refusal_detail(err: &clickhouse::error::Error) -> String {
    let text = err.to_string();
    let text = text.split(" Stack trace").next().unwrap_or_default();
    let mut out: String = text.chars().take(400).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// Inserts rows `0..len` through `insert` (one call per contiguous range). Transient
/// failures are retried after `sleep`; statement failures too, loudly; a range whose data
/// is refused is split in halves until single rows, and a single row refused for its data
/// is returned with the error, in row order. `None` when `sleep` says to stop.
pub async fn insert_bisecting<I, IF, S, SF>(
    len: usize,
    mut insert: I,
    mut sleep: S,
) -> Option<Vec<(usize, clickhouse::error::Error)>>
where
    I: FnMut(std::ops::Range<usize>) -> IF,
    IF: std::future::Future<Output = clickhouse::error::Result<()>>,
    S: FnMut(Failure, &clickhouse::error::Error) -> SF,
    SF: std::future::Future<Output = bool>,
{
    let mut refused = Vec::new();
    // Ranges still to insert, the next one last.
    let mut todo: Vec<std::ops::Range<usize>> = Vec::new();
    todo.push(0..len);
    while let Some(range) = todo.pop() {
        if range.is_empty() {
            continue;
        }
        loop {
            match insert(range.clone()).await {
                Ok(()) => break,
                Err(e) => match classify(&e) {
                    Failure::BadData if range.len() == 1 => {
                        refused.push((range.start, e));
                        break;
                    }
                    Failure::BadData => {
                        let mid = range.start + range.len() / 2;
                        todo.push(mid..range.end);
                        todo.push(range.start..mid);
                        break;
                    }
                    kind => {
                        if !sleep(kind, &e).await {
                            return None;
                        }
                    }
                },
            }
        }
    }
    Some(refused)
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
                .insert_with_retry("ingest_rejections", &rows, cancel)
                .await
            {
                return None;
            }
        }
        let mut refused_rows = 0;
        if !batch.rows.is_empty() {
            let refused = self.insert_audit_rows(&batch.rows, cancel).await?;
            refused_rows = refused.len();
            if !refused.is_empty() && !self.store_refused(&batch.rows, refused, cancel).await {
                return None;
            }
        }
        // Where the chains now stand (a row the store refused stays in its chain: it is
        // recorded with its content in custos.ingest_rejections), durable before the offsets are committed.
        let heads = crate::chainer::batch_heads(&batch.rows);
        if !heads.is_empty() && !self.insert_with_retry("chain_heads", &heads, cancel).await {
            return None;
        }
        Some(refused_rows)
    }

    /// Inserts audit rows, bisecting a batch whose data ClickHouse refuses; returns the rows
    /// it refused on their own (index and error), or `None` when cancelled.
    async fn insert_audit_rows(
        &self,
        rows: &[AuditRow],
        cancel: &CancellationToken,
    ) -> Option<Vec<(usize, clickhouse::error::Error)>> {
        let mut backoff = RetryPolicy::STORE.backoff();
        let refused = insert_bisecting(
            rows.len(),
            |range| self.insert("audit_events", &rows[range]),
            |kind, e| {
                self.health.set_clickhouse(false);
                counter!("custos_ingest_insert_retries_total", "kind" => kind.label()).increment(1);
                if kind == Failure::Statement {
                    tracing::error!(table = "audit_events", error = %e, "ClickHouse refused the insert statement; retrying until fixed");
                } else {
                    warn!(table = "audit_events", error = %e, "ClickHouse insert failed; retrying");
                }
                let pause = backoff.step();
                async move { sleep_or_cancel(pause, cancel).await }
            },
        )
        .await?;
        self.health.set_clickhouse(true);
        Some(refused)
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
            let detail = refusal_detail(&e);
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
        self.insert_with_retry("ingest_rejections", &records, cancel)
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

    async fn insert_with_retry<T>(
        &self,
        table: &str,
        rows: &[T],
        cancel: &CancellationToken,
    ) -> bool
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite,
    {
        let mut backoff = RetryPolicy::STORE.backoff();
        loop {
            match self.insert(table, rows).await {
                Ok(()) => {
                    self.health.set_clickhouse(true);
                    return true;
                }
                Err(e) => {
                    let kind = classify(&e);
                    self.health.set_clickhouse(false);
                    counter!("custos_ingest_insert_retries_total", "kind" => kind.label())
                        .increment(1);
                    if kind != Failure::Transient {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(code: u32) -> clickhouse::error::Error {
        clickhouse::error::Error::BadResponse(format!("Code: {code}. DB::Exception: refused"))
    }

    #[test]
    fn classifies_data_statement_and_transient_errors() {
        let e = clickhouse::error::Error::BadResponse(
            "Code: 117. DB::Exception: Cannot parse input".into(),
        );
        assert_eq!(classify(&e), Failure::BadData);
        assert_eq!(classify(&bad(469)), Failure::BadData);
        assert_eq!(classify(&bad(252)), Failure::BadData);
        assert_eq!(classify(&bad(60)), Failure::Statement);
        assert_eq!(classify(&bad(497)), Failure::Statement);
        // Code 1170 is not code 117.
        assert_eq!(classify(&bad(1170)), Failure::Transient);
        let e = clickhouse::error::Error::BadResponse("Code: 241. Memory limit".into());
        assert_eq!(classify(&e), Failure::Transient);
        assert_eq!(
            classify(&clickhouse::error::Error::TimedOut),
            Failure::Transient
        );
    }

    /// Runs the bisection over `len` rows, where the rows in `poison` are refused for their
    /// data and a range over `max_block` rows is refused as a block (too many partitions).
    fn bisect(
        len: usize,
        poison: &[usize],
        max_block: usize,
        transient_first: usize,
    ) -> (Option<Vec<usize>>, Vec<usize>, usize) {
        use std::cell::RefCell;
        let stored = RefCell::new(Vec::new());
        let calls = RefCell::new(0usize);
        let sleeps = RefCell::new(0usize);
        let result = futures_util::FutureExt::now_or_never(insert_bisecting(
            len,
            |range: std::ops::Range<usize>| {
                *calls.borrow_mut() += 1;
                let out = if *calls.borrow() <= transient_first {
                    Err(clickhouse::error::Error::TimedOut)
                } else if range.len() > max_block {
                    Err(bad(252))
                } else if range.clone().any(|i| poison.contains(&i)) {
                    Err(bad(469))
                } else {
                    stored.borrow_mut().extend(range);
                    Ok(())
                };
                std::future::ready(out)
            },
            |_, _| {
                *sleeps.borrow_mut() += 1;
                std::future::ready(true)
            },
        ))
        .expect("no real waiting");
        let refused = result.map(|r| r.into_iter().map(|(i, _)| i).collect());
        let stored = stored.into_inner();
        let sleeps = sleeps.into_inner();
        (refused, stored, sleeps)
    }

    #[test]
    fn bisection_stores_every_good_row_once_and_returns_the_refused_ones() {
        let (refused, mut stored, sleeps) = bisect(100, &[7, 63, 64], usize::MAX, 0);
        assert_eq!(refused, Some(vec![7, 63, 64]));
        stored.sort_unstable();
        let want: Vec<usize> = (0..100).filter(|i| ![7, 63, 64].contains(i)).collect();
        assert_eq!(stored, want);
        assert_eq!(sleeps, 0);
        // A block refused as a whole is split until it fits; nothing is refused.
        let (refused, stored, _) = bisect(1000, &[], 100, 0);
        assert_eq!(refused, Some(vec![]));
        assert_eq!(stored, (0..1000).collect::<Vec<_>>());
        // Transient errors are retried on the same range, not bisected.
        let (refused, stored, sleeps) = bisect(10, &[], usize::MAX, 3);
        assert_eq!((refused, stored.len(), sleeps), (Some(vec![]), 10, 3));
    }

    #[test]
    fn a_refused_statement_is_retried_never_dead_lettered() {
        let mut calls = 0;
        let result = futures_util::FutureExt::now_or_never(insert_bisecting(
            4,
            |_| {
                calls += 1;
                std::future::ready(if calls < 5 { Err(bad(60)) } else { Ok(()) })
            },
            |kind, _| std::future::ready(kind == Failure::Statement),
        ))
        .expect("no real waiting");
        assert_eq!(result.map(|r| r.len()), Some(0));
        // Cancelled while retrying: nothing is reported refused.
        let result = futures_util::FutureExt::now_or_never(insert_bisecting(
            4,
            |_| std::future::ready(Err(bad(497))),
            |_, _| std::future::ready(false),
        ))
        .expect("no real waiting");
        assert!(result.is_none());
    }

    #[test]
    fn refusal_details_are_short() {
        let long = clickhouse::error::Error::BadResponse(format!(
            "Code: 469. DB::Exception: Constraint violated {} Stack trace: frames",
            "x".repeat(1000)
        ));
        let d = refusal_detail(&long);
        assert!(
            d.starts_with("bad response: Code: 469.") || d.contains("Code: 469."),
            "{d}"
        );
        assert!(
            d.chars().count() <= 401 && !d.contains("Stack trace"),
            "{d}"
        );
    }
}
