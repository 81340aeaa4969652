//! Writing the query audit (`custos.report_queries`) with the writer account. A JSON
//! answer is recorded before it is sent (no record, no answer); an export is recorded as
//! `streaming` before its first byte and again, with the rows sent, when it ends
//! (`complete`) or is cut off (`aborted`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clickhouse::Row;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::{error, info};

use crate::auth::Caller;
use crate::reports::query_audit::ReportQuery;

/// Insert form of [`ReportQuery`] (times as epoch ms).
#[derive(Debug, Clone, Row, Serialize)]
struct ReportQueryInsert {
    query_id: String,
    asked_at: i64,
    recorded_at: i64,
    caller_sub: String,
    caller_issuer: String,
    caller_client: String,
    caller_roles: Vec<String>,
    report: String,
    tenant: String,
    parameters: String,
    format: String,
    status: String,
    rows_returned: u64,
    duration_ms: u32,
}

/// Writes query-audit records.
#[derive(Clone)]
pub struct QueryAudit {
    writer: clickhouse::Client,
}

impl std::fmt::Debug for QueryAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueryAudit")
    }
}

impl QueryAudit {
    /// Uses `writer` (INSERT on `custos.*`).
    pub fn new(writer: clickhouse::Client) -> QueryAudit {
        QueryAudit { writer }
    }

    /// Inserts one record and waits for ClickHouse's acknowledgement.
    pub async fn write(&self, r: &ReportQuery) -> Result<(), clickhouse::error::Error> {
        let row = ReportQueryInsert {
            query_id: r.query_id.clone(),
            asked_at: r.asked_at,
            recorded_at: r.recorded_at,
            caller_sub: r.caller_sub.clone(),
            caller_issuer: r.caller_issuer.clone(),
            caller_client: r.caller_client.clone(),
            caller_roles: r.caller_roles.clone(),
            report: r.report.clone(),
            tenant: r.tenant.clone(),
            parameters: r.parameters.clone(),
            format: r.format.clone(),
            status: r.status.clone(),
            rows_returned: r.rows_returned,
            duration_ms: r.duration_ms,
        };
        let mut insert = self
            .writer
            .insert::<ReportQueryInsert>("report_queries")
            .await?;
        insert.write(&row).await?;
        insert.end().await
    }
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
        }
    }

    /// The record for a status and row count.
    pub fn record(&self, status: &str, rows: u64) -> ReportQuery {
        ReportQuery {
            query_id: self.query_id.clone(),
            asked_at: self.asked_at,
            recorded_at: now_ms().max(self.asked_at),
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
        let audit = self.audit.clone();
        info!(
            query_id = %record.query_id,
            report = record.report,
            rows = record.rows_returned,
            status,
            "export finished"
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = audit.write(&record).await {
                    error!(error = %e, query_id = %record.query_id, "final export audit record not written");
                }
            });
        }
    }
}
