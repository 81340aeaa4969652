//! The self-audit of every authorized request (`custos.report_queries`), written with the
//! service's own account through its ledger chain ([`custos_integrity::ledger`]). The query
//! API records each report, the consent service each privacy-API call.
//!
//! Every answer is recorded in two phases under one `query_id`
//! (`ReplacingMergeTree(recorded_at)`: the later version replaces the earlier one):
//!
//! 1. the *asked* record (who, which report, pseudonymized parameters; status `answering`,
//!    or `streaming` for an export) is inserted **concurrently** with the report query, and
//!    the answer is sent only once ClickHouse acknowledged it: no durable record, no answer
//!    (503 `audit-unavailable`);
//! 2. the *final* record (`answered` with the rows returned, `complete` / `aborted` for an
//!    export, `failed` when the report query failed) is queued before the response leaves
//!    and written after, without delaying it. A crash or a failed insert between the two
//!    phases leaves the `answering` / `streaming` row visible.
//!
//! Records are written by one background task per [`QueryAudit`] (group commit): it takes
//! every record waiting in its queue (up to [`GroupCommit::max_rows`], lingering up to
//! [`GroupCommit::linger`] for more; final records nobody waits for wait up to
//! [`GroupCommit::final_linger`] for the next awaited record to ride along with), writes them
//! as one INSERT and acknowledges each waiter.
//! Batches are written one at a time in queue order, so a final record queued before a
//! later request's asked record is never committed after it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use custos_integrity::ledger::{Ledger, LedgerError};
use custos_schemas::records::ReportQueryRow;
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{error, info, warn};

use crate::oidc::Caller;

/// Why a query-audit record was not written.
#[derive(Debug, Clone, Error)]
pub enum AuditError {
    /// The INSERT of the batch holding the record, or of its ledger entries, failed.
    #[error("insert failed: {0}")]
    Insert(Arc<LedgerError>),
    /// The background writer is gone (its runtime shut down).
    #[error("query-audit writer stopped")]
    WriterGone,
}

/// Group-commit settings of the query-audit writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    /// Most records in one INSERT.
    pub max_rows: usize,
    /// How long a batch waits for more records after its first one. Zero: a batch takes
    /// what is queued when the previous INSERT ends (records arriving during an INSERT go
    /// together into the next one), adding no latency to a lone request.
    pub linger: Duration,
    /// How long a batch of final records only (nobody waits for them) waits for more. It
    /// ends as soon as a record somebody waits for arrives, which then carries the finals
    /// in its INSERT: a request's asked record usually takes the previous request's final
    /// record along, one INSERT per request instead of two.
    pub final_linger: Duration,
    /// Records that may wait in the queue before callers wait for room.
    pub queue: usize,
}

impl Default for GroupCommit {
    fn default() -> GroupCommit {
        GroupCommit {
            max_rows: 256,
            linger: Duration::ZERO,
            final_linger: Duration::from_millis(200),
            queue: 4096,
        }
    }
}

type Ack = oneshot::Sender<Result<(), AuditError>>;

/// One queued record (none: a flush barrier), with the waiter to acknowledge (none for
/// final records).
struct Pending {
    row: Option<ReportQueryRow>,
    ack: Option<Ack>,
}

/// Writes query-audit records through a group-committing background task.
#[derive(Clone)]
pub struct QueryAudit {
    inner: Arc<Inner>,
}

struct Inner {
    writer: clickhouse::Client,
    /// This process's chain over the records it writes.
    ledger: Arc<Ledger<ReportQueryRow>>,
    group: GroupCommit,
    /// The queue of the background task, started on first use (inside a runtime).
    tx: OnceLock<mpsc::Sender<Pending>>,
    /// INSERT statements sent so far (group-commit effect, for tests and diagnostics).
    inserts: Arc<AtomicU64>,
    /// Tasks that may wait for queue room on behalf of [`QueryAudit::submit_detached`].
    detached: Arc<Semaphore>,
}

/// Most tasks waiting for queue room on behalf of [`QueryAudit::submit_detached`]; past
/// them a detached record is dropped (logged and counted), never an unbounded task pile.
pub const MAX_DETACHED_WAITERS: usize = 256;

impl std::fmt::Debug for QueryAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryAudit")
            .field("group", &self.inner.group)
            .finish_non_exhaustive()
    }
}

impl QueryAudit {
    /// Uses `writer` (INSERT on `custos.*`) with the default group commit.
    pub fn new(writer: clickhouse::Client) -> QueryAudit {
        QueryAudit::with_group_commit(writer, GroupCommit::default())
    }

    /// Uses `writer` with explicit group-commit settings (no I/O until the first record).
    pub fn with_group_commit(writer: clickhouse::Client, group: GroupCommit) -> QueryAudit {
        let group = GroupCommit {
            max_rows: group.max_rows.max(1),
            queue: group.queue.max(1),
            ..group
        };
        QueryAudit {
            inner: Arc::new(Inner {
                writer,
                ledger: Arc::new(Ledger::new()),
                group,
                tx: OnceLock::new(),
                inserts: Arc::new(AtomicU64::new(0)),
                detached: Arc::new(Semaphore::new(MAX_DETACHED_WAITERS)),
            }),
        }
    }

    fn sender(&self) -> &mpsc::Sender<Pending> {
        self.inner.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.inner.group.queue);
            tokio::spawn(run_writer(
                self.inner.writer.clone(),
                self.inner.ledger.clone(),
                self.inner.group,
                rx,
                self.inner.inserts.clone(),
            ));
            tx
        })
    }

    /// Writes one record and waits for ClickHouse's acknowledgement of the INSERT that
    /// carried it (phase 1: the answer depends on it).
    pub async fn write(&self, r: &ReportQueryRow) -> Result<(), AuditError> {
        let row = r.clone();
        let (ack, done) = oneshot::channel();
        let pending = Pending {
            row: Some(row),
            ack: Some(ack),
        };
        match self.sender().send(pending).await {
            Ok(()) => done.await.unwrap_or(Err(AuditError::WriterGone)),
            // The writer's runtime is gone (a state outliving it): write directly.
            Err(mpsc::error::SendError(p)) => self
                .inner
                .ledger
                .insert(&self.inner.writer, p.row.as_slice())
                .await
                .map_err(|e| AuditError::Insert(Arc::new(e))),
        }
    }

    /// Queues one record without waiting for its INSERT (phase 2); a failure is logged and
    /// counted (`custos_query_audit_write_failures_total`), the earlier version stays.
    /// Returns once the record is queued, so it is committed no later than any record
    /// queued after it.
    pub async fn submit(&self, r: &ReportQueryRow) {
        let pending = Pending {
            row: Some(r.clone()),
            ack: None,
        };
        if let Err(mpsc::error::SendError(p)) = self.sender().send(pending).await {
            if let Err(e) = self
                .inner
                .ledger
                .insert(&self.inner.writer, p.row.as_slice())
                .await
            {
                metrics::counter!("custos_query_audit_write_failures_total").increment(1);
                error!(error = %e, query_id = %r.query_id, "final query-audit record not written");
            }
        }
    }

    /// Queues `r` from synchronous code (a drop): without waiting when the queue has room,
    /// else from a spawned task, of which at most [`MAX_DETACHED_WAITERS`] wait at a time;
    /// beyond them the record is dropped (`custos_query_audit_dropped_total`; the earlier
    /// version of the record, if any, stays).
    pub fn submit_detached(&self, r: ReportQueryRow) {
        let pending = Pending {
            row: Some(r),
            ack: None,
        };
        match self.sender().try_send(pending) {
            Ok(()) => {}
            Err(
                mpsc::error::TrySendError::Full(Pending { row: Some(r), .. })
                | mpsc::error::TrySendError::Closed(Pending { row: Some(r), .. }),
            ) => {
                let Ok(permit) = self.inner.detached.clone().try_acquire_owned() else {
                    metrics::counter!("custos_query_audit_dropped_total").increment(1);
                    error!(
                        query_id = %r.query_id,
                        status = %r.status,
                        "query-audit queue full: record dropped"
                    );
                    return;
                };
                let audit = self.clone();
                tokio::spawn(async move {
                    audit.submit(&r).await;
                    drop(permit);
                });
            }
            Err(_) => {}
        }
    }

    /// Detached records waiting for queue room now.
    pub fn detached_waiting(&self) -> usize {
        MAX_DETACHED_WAITERS - self.inner.detached.available_permits()
    }

    /// INSERT statements the background writer has sent so far.
    pub fn inserts(&self) -> u64 {
        self.inner.inserts.load(Ordering::Relaxed)
    }

    /// Waits until every record queued before this call is written (or failed): for a
    /// graceful shutdown.
    pub async fn flush(&self) {
        let Some(tx) = self.inner.tx.get() else {
            return;
        };
        let (ack, done) = oneshot::channel();
        // A record-less barrier: an empty row is never inserted (see `run_writer`).
        let barrier = Pending {
            row: None,
            ack: Some(ack),
        };
        if tx.send(barrier).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// The group-commit loop: one batch at a time, in queue order, until every sender is gone.
async fn run_writer(
    writer: clickhouse::Client,
    ledger: Arc<Ledger<ReportQueryRow>>,
    group: GroupCommit,
    mut rx: mpsc::Receiver<Pending>,
    inserts: Arc<AtomicU64>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(group.max_rows);
    loop {
        if rx.recv_many(&mut batch, group.max_rows).await == 0 {
            return;
        }
        let awaited = |b: &[Pending]| b.iter().any(|p| p.ack.is_some());
        let linger = if awaited(&batch) {
            group.linger
        } else {
            group.final_linger
        };
        if !linger.is_zero() && batch.len() < group.max_rows {
            let deadline = tokio::time::Instant::now() + linger;
            let finals_only = !awaited(&batch);
            while batch.len() < group.max_rows {
                let room = group.max_rows - batch.len();
                match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                    Ok(0) | Err(_) => break,
                    // Somebody waits now: write at once (their own linger does not apply).
                    Ok(_) if finals_only && awaited(&batch) => break,
                    Ok(_) => {}
                }
            }
        }
        let rows: Vec<ReportQueryRow> = batch.iter().filter_map(|p| p.row.clone()).collect();
        let result = if rows.is_empty() {
            Ok(())
        } else {
            let started = Instant::now();
            inserts.fetch_add(1, Ordering::Relaxed);
            let r = ledger.insert(&writer, &rows).await;
            metrics::histogram!("custos_query_audit_insert_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("custos_query_audit_batch_rows").record(rows.len() as f64);
            r.map_err(|e| AuditError::Insert(Arc::new(e)))
        };
        if let Err(e) = &result {
            metrics::counter!("custos_query_audit_write_failures_total")
                .increment(rows.len() as u64);
            warn!(error = %e, rows = rows.len(), "query-audit batch not written");
        }
        for p in batch.drain(..) {
            match p.ack {
                Some(ack) => {
                    let _ = ack.send(result.clone());
                }
                None if result.is_err() => {
                    if let Some(row) = &p.row {
                        error!(
                            query_id = %row.query_id,
                            status = %row.status,
                            "final query-audit record not written; the earlier version stays"
                        );
                    }
                }
                None => {}
            }
        }
    }
}

/// A code as the query-audit report filters on it (report names, purposes of use):
/// `[A-Za-z0-9._-]{1,64}`. Every report name a service records must pass it.
pub fn valid_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A fresh query id: 16 bytes of SHA-256 over time, process and a counter, in hex.
pub fn new_query_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(nanos.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(n.to_le_bytes());
    hex::encode(&h.finalize()[..16])
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A report request being answered.
#[derive(Debug, Clone)]
pub struct Asked {
    /// Its id.
    pub query_id: String,
    asked_at: i64,
    started: Instant,
    caller: Caller,
    report: &'static str,
    tenant: String,
    parameters: Value,
    format: &'static str,
    /// `recorded_at` of the latest version made, shared by clones: every version of this
    /// record gets a strictly later one, so the final version always replaces the first.
    last_recorded: Arc<AtomicI64>,
}

impl Asked {
    /// Starts the clock on a request; `parameters` must already be pseudonymized.
    pub fn new(
        caller: &Caller,
        report: &'static str,
        tenant: &str,
        parameters: Value,
        format: &'static str,
    ) -> Asked {
        Asked {
            query_id: new_query_id(),
            asked_at: now_ms(),
            started: Instant::now(),
            caller: caller.clone(),
            report,
            tenant: tenant.to_owned(),
            parameters,
            format,
            last_recorded: Arc::new(AtomicI64::new(i64::MIN)),
        }
    }

    /// The record for a status and row count: a new version, recorded strictly later (by
    /// at least 1 ms) than every version made before it.
    pub fn record(&self, status: &str, rows: u64) -> ReportQueryRow {
        let floor = now_ms().max(self.asked_at);
        let previous = self
            .last_recorded
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(floor.max(last.saturating_add(1)))
            })
            .unwrap_or(i64::MIN);
        let recorded_at = floor.max(previous.saturating_add(1));
        ReportQueryRow {
            query_id: self.query_id.clone(),
            asked_at: self.asked_at,
            recorded_at,
            caller_sub: self.caller.sub.clone(),
            caller_issuer: self.caller.issuer.clone(),
            caller_client: self.caller.client.clone(),
            caller_roles: self.caller.role_names(),
            report: self.report.to_owned(),
            tenant: self.tenant.clone(),
            parameters: self.parameters.to_string(),
            format: self.format.to_owned(),
            status: status.to_owned(),
            rows_returned: rows,
            duration_ms: u32::try_from(self.started.elapsed().as_millis()).unwrap_or(u32::MAX),
        }
    }

    /// Report name.
    pub fn report(&self) -> &'static str {
        self.report
    }

    /// `sub` of the caller.
    pub fn caller_sub(&self) -> &str {
        &self.caller.sub
    }

    /// The same request recorded under another tenant (known only once the record of a
    /// proof was found).
    pub fn with_tenant(mut self, tenant: &str) -> Asked {
        tenant.clone_into(&mut self.tenant);
        self
    }
}

/// Tracks an export; on drop writes the final record (`complete` or `aborted`).
pub struct StreamAudit {
    audit: QueryAudit,
    asked: Asked,
    /// Rows sent so far.
    pub rows: u64,
    /// Whether the cursor was exhausted.
    pub complete: bool,
}

impl StreamAudit {
    /// Report name of the export.
    pub fn report(&self) -> &'static str {
        self.asked.report
    }

    /// Tracks `asked`.
    pub fn new(audit: QueryAudit, asked: Asked) -> StreamAudit {
        StreamAudit {
            audit,
            asked,
            rows: 0,
            complete: false,
        }
    }
}

impl Drop for StreamAudit {
    fn drop(&mut self) {
        let status = if self.complete { "complete" } else { "aborted" };
        let record = self.asked.record(status, self.rows);
        metrics::counter!("custos_query_rows_returned_total", "report" => self.asked.report)
            .increment(self.rows);
        info!(
            query_id = %record.query_id,
            report = record.report,
            rows = record.rows_returned,
            status,
            "export finished"
        );
        if tokio::runtime::Handle::try_current().is_ok() {
            self.audit.submit_detached(record);
        } else {
            error!(query_id = %record.query_id, "final export audit record not written: no runtime");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::Role;

    fn caller() -> Caller {
        Caller {
            sub: "officer".into(),
            issuer: "https://as.test".into(),
            client: "app".into(),
            username: None,
            roles: vec![Role::Auditor],
            tenants: None,
        }
    }

    #[test]
    fn every_version_is_recorded_strictly_later() {
        let asked = Asked::new(&caller(), "token-trace", "t", Value::Null, "json");
        let copy = asked.clone();
        let mut last = i64::MIN;
        for i in 0..50 {
            // Clones share the version clock (the export's final record is made by a clone).
            let r = if i % 2 == 0 {
                asked.record("answering", 0)
            } else {
                copy.record("answered", 3)
            };
            assert!(r.recorded_at > last, "version {i} not later");
            assert!(r.recorded_at >= r.asked_at);
            assert_eq!(r.query_id, asked.query_id);
            last = r.recorded_at;
        }
    }

    /// A ClickHouse stand-in that accepts connections and never answers: the writer's
    /// first INSERT hangs, so the queue stays full.
    async fn black_hole() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        url
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn detached_records_never_pile_up_tasks() {
        let client = clickhouse::Client::default().with_url(black_hole().await);
        let audit = QueryAudit::with_group_commit(
            client,
            GroupCommit {
                max_rows: 1,
                queue: 1,
                ..GroupCommit::default()
            },
        );
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let asked = Asked::new(&caller(), "patient-access", "t", Value::Null, "csv");
        for _ in 0..5_000 {
            audit.submit_detached(asked.record("aborted", 0));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let spawned = metrics.num_alive_tasks().saturating_sub(before);
        // The writer task plus at most MAX_DETACHED_WAITERS waiters, not one per record.
        assert!(
            spawned <= MAX_DETACHED_WAITERS + 2,
            "{spawned} tasks alive for 5000 detached records"
        );
        assert!(audit.detached_waiting() <= MAX_DETACHED_WAITERS);
    }

    #[test]
    fn group_commit_settings_are_clamped() {
        let client = clickhouse::Client::default();
        let audit = QueryAudit::with_group_commit(
            client,
            GroupCommit {
                max_rows: 0,
                linger: Duration::from_millis(2),
                final_linger: Duration::ZERO,
                queue: 0,
            },
        );
        assert_eq!(audit.inner.group.max_rows, 1);
        assert_eq!(audit.inner.group.queue, 1);
        assert_eq!(audit.inserts(), 0);
    }
}
