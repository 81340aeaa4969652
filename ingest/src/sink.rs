//! The ClickHouse sink: inserts with the writer account, classifies failures
//! ([`classify`]) and retries them with capped exponential backoff and jitter until they
//! succeed or the writer is cancelled. Audit rows whose *data* ClickHouse refuses for good
//! are found by bisection ([`insert_bisecting`]) and handed back to the writer, which
//! dead-letters and records them; a refused *statement* is retried until an operator fixes
//! it. Readiness follows whether ClickHouse accepts inserts.

use std::sync::Arc;

use clickhouse::Client;
use custos_schemas::AuditRow;
use metrics::counter;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use custos_runtime::health::Health;
use custos_runtime::retry::{sleep_or_cancel, RetryPolicy};

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
pub fn refusal_detail(err: &clickhouse::error::Error) -> String {
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

/// Inserts into the `custos` database.
#[derive(Clone)]
pub struct Sink {
    client: Client,
    health: Arc<Health>,
}

impl Sink {
    /// A sink inserting with `client` (writer account, database `custos`) and reporting
    /// ClickHouse's availability to `health`.
    pub fn new(client: Client, health: Arc<Health>) -> Self {
        Sink { client, health }
    }

    /// Inserts audit rows, bisecting a batch whose data ClickHouse refuses; returns the rows
    /// it refused on their own (index and error), or `None` when cancelled.
    pub async fn insert_audit_rows(
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

    /// Inserts `rows` into `table`, retrying every failure (loudly when it is not transient)
    /// until it succeeds; false when cancelled first.
    pub async fn insert_with_retry<T>(
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

    /// Inserts `rows` into `table` once.
    pub async fn insert<T>(&self, table: &str, rows: &[T]) -> clickhouse::error::Result<()>
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
