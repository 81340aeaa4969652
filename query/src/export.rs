//! Answering a report: one JSON page with a cursor on the stable order, or a CSV /
//! NDJSON export streamed from a ClickHouse cursor in chunks (never the whole result in
//! memory).
//!
//! An export holds one of its caller's export slots (`CUSTOS_QUERY_EXPORTS_PER_CALLER`)
//! until its stream ends, runs as the export client (ClickHouse `max_execution_time` of
//! `CUSTOS_QUERY_EXPORT_TIMEOUT_SECS`) and is cut off when that time has passed since it
//! started, however slowly the client reads.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use clickhouse::{RowOwned, RowRead};
use serde::Serialize;
use tracing::error;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::limits::ExportSlot;
use crate::params::{Common, Format};
use crate::reports::{Keyed, Tabular};
use crate::sql::Sql;
use crate::state::AppState;
use custos_auth::audit::{Asked, StreamAudit};

/// Bytes of one streamed chunk (about).
const CHUNK_BYTES: usize = 64 * 1024;

/// A JSON page of a report.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    /// Report name.
    pub report: String,
    /// Id of the query-audit record of this answer.
    pub query_id: String,
    /// Tenant.
    pub tenant: String,
    /// Window start (RFC 3339).
    pub from: String,
    /// Window end, exclusive (RFC 3339).
    pub to: String,
    /// The rows, in `(time, key)` order.
    pub rows: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Runs `work` (the report query) while the asked record of `asked` (`status`:
/// `answering` or `streaming`) is written, and returns its output once both finished: no
/// acknowledged record, no answer ([`ApiError::AuditWrite`]). When the query fails after
/// the record was written, a `failed` final record is queued.
pub async fn audited<T, Fut>(
    state: &AppState,
    asked: &Asked,
    status: &'static str,
    work: Fut,
) -> Result<T, ApiError>
where
    Fut: Future<Output = Result<T, ApiError>>,
{
    let record = asked.record(status, 0);
    let (written, out) = tokio::join!(state.audit.write(&record), work);
    written.map_err(ApiError::AuditWrite)?;
    if out.is_err() {
        state.audit.submit(&asked.record("failed", 0)).await;
    }
    out
}

/// Fetches `limit + 1` rows of `sql` (built with that limit) while the asked record is
/// written, maps them, queues the final `answered` record and returns the rows and the
/// next cursor.
pub async fn fetch_page<R, O, F>(
    state: &AppState,
    asked: &Asked,
    sql: &Sql,
    limit: u64,
    map: F,
) -> Result<(Vec<O>, Option<String>), ApiError>
where
    R: RowOwned + RowRead,
    O: Keyed,
    F: FnMut(R) -> O,
{
    let rows: Vec<R> = audited(state, asked, "answering", async {
        Ok(sql.query(&state.reader).fetch_all().await?)
    })
    .await?;
    page_of(state, asked, rows, limit, map).await
}

/// The page of rows already fetched (`limit + 1` of them at most) under an acknowledged
/// asked record ([`audited`]); queues the final `answered` record (not awaited: it is
/// committed after the answer, before any record queued later).
pub async fn page_of<R, O, F>(
    state: &AppState,
    asked: &Asked,
    mut rows: Vec<R>,
    limit: u64,
    map: F,
) -> Result<(Vec<O>, Option<String>), ApiError>
where
    O: Keyed,
    F: FnMut(R) -> O,
{
    let more = rows.len() as u64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let out: Vec<O> = rows.into_iter().map(map).collect();
    let next = if more {
        out.last().map(|o| o.cursor().encode())
    } else {
        None
    };
    let rows = out.len() as u64;
    state.audit.submit(&asked.record("answered", rows)).await;
    metrics::counter!("custos_query_rows_returned_total", "report" => asked.report())
        .increment(rows);
    Ok((out, next))
}

/// A JSON page response.
pub fn page_response<T: Serialize>(
    asked: &Asked,
    c: &Common,
    rows: Vec<T>,
    next_cursor: Option<String>,
) -> Response {
    Json(Page {
        report: asked.report().to_owned(),
        query_id: asked.query_id.clone(),
        tenant: c.tenant.clone(),
        from: c.window.from_rfc3339(),
        to: c.window.to_rfc3339(),
        rows,
        next_cursor,
    })
    .into_response()
}

struct Export<R, F> {
    cursor: clickhouse::query::RowCursor<R>,
    first: Option<R>,
    map: F,
    format: Format,
    header: bool,
    audit: StreamAudit,
    done: bool,
    /// When the export must have ended.
    deadline: Instant,
    /// The caller's export slot, freed with the stream.
    _slot: ExportSlot,
}

/// One chunk being written.
enum Chunk {
    Csv(Box<csv::Writer<Vec<u8>>>),
    Lines(Vec<u8>),
}

impl Chunk {
    fn new(format: Format) -> Chunk {
        let buf = Vec::with_capacity(CHUNK_BYTES + 4096);
        match format {
            Format::Csv => Chunk::Csv(Box::new(csv::Writer::from_writer(buf))),
            _ => Chunk::Lines(buf),
        }
    }

    fn len(&self) -> usize {
        match self {
            Chunk::Csv(w) => w.get_ref().len(),
            Chunk::Lines(b) => b.len(),
        }
    }

    fn header(&mut self, names: &[&str]) -> Result<(), std::io::Error> {
        match self {
            Chunk::Csv(w) => w.write_record(names).map_err(std::io::Error::other),
            Chunk::Lines(_) => Ok(()),
        }
    }

    fn row<O: Serialize + Tabular>(&mut self, o: &O) -> Result<(), std::io::Error> {
        match self {
            Chunk::Csv(w) => w.write_record(o.record()).map_err(std::io::Error::other),
            Chunk::Lines(b) => {
                serde_json::to_writer(&mut *b, o).map_err(std::io::Error::other)?;
                b.push(b'\n');
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<Bytes, std::io::Error> {
        match self {
            Chunk::Csv(w) => w
                .into_inner()
                .map(Bytes::from)
                .map_err(|e| std::io::Error::other(e.to_string())),
            Chunk::Lines(b) => Ok(Bytes::from(b)),
        }
    }
}

async fn fill<R, O, F>(ex: &mut Export<R, F>, chunk: &mut Chunk) -> Result<(), std::io::Error>
where
    R: RowOwned + RowRead,
    O: Serialize + Tabular,
    F: FnMut(R) -> O,
{
    if ex.header {
        ex.header = false;
        chunk.header(O::header())?;
    }
    if let Some(r) = ex.first.take() {
        chunk.row(&(ex.map)(r))?;
        ex.audit.rows += 1;
    }
    loop {
        if ex.audit.complete {
            ex.done = true;
            return Ok(());
        }
        if chunk.len() >= CHUNK_BYTES {
            return Ok(());
        }
        // Checked first: a cursor with buffered rows would always win the race below.
        let deadline = tokio::time::Instant::from_std(ex.deadline);
        let next = if Instant::now() < ex.deadline {
            tokio::time::timeout_at(deadline, ex.cursor.next())
                .await
                .ok()
        } else {
            None
        };
        let Some(next) = next else {
            error!(
                report = ex.audit.report(),
                "export cut off at CUSTOS_QUERY_EXPORT_TIMEOUT_SECS"
            );
            return Err(std::io::Error::other("export time limit reached"));
        };
        match next {
            Ok(Some(r)) => {
                chunk.row(&(ex.map)(r))?;
                ex.audit.rows += 1;
            }
            Ok(None) => {
                ex.audit.complete = true;
            }
            Err(e) => {
                error!(error = %e, "export cursor failed");
                return Err(std::io::Error::other("export aborted"));
            }
        }
    }
}

/// Streams the whole result of `sql` as CSV or NDJSON. The query audit gets a `streaming`
/// record, written while the query starts and acknowledged before the response starts, and
/// a final one (`complete` / `aborted`) when the stream ends.
pub async fn stream<R, O, F>(
    state: &AppState,
    asked: Asked,
    sql: &Sql,
    format: Format,
    map: F,
) -> Result<Response, ApiError>
where
    R: RowOwned + RowRead + Send,
    O: Serialize + Tabular,
    F: FnMut(R) -> O + Send + 'static,
{
    let slot = state.exports.acquire(asked.caller_sub())?;
    let prepared = std::future::ready(Ok((sql.clone(), map)));
    stream_prepared(state, asked, slot, format, prepared).await
}

/// Like [`stream`] for an export whose query needs reads first (the token trace reads its
/// index and summary): `prepare` makes the query and the row mapping, and runs, like the
/// export's query, only while the `streaming` record is being written; nothing is sent
/// unless that record is acknowledged. `slot` is the caller's export slot.
pub async fn stream_prepared<R, O, F, P>(
    state: &AppState,
    asked: Asked,
    slot: ExportSlot,
    format: Format,
    prepare: P,
) -> Result<Response, ApiError>
where
    R: RowOwned + RowRead + Send,
    O: Serialize + Tabular,
    F: FnMut(R) -> O + Send + 'static,
    P: Future<Output = Result<(Sql, F), ApiError>>,
{
    let started = Instant::now();
    let limit = state.settings.export_timeout;
    // The first row (or the end) before answering, so a failing query is a proper error;
    // the `streaming` record is written meanwhile.
    let (cursor, first, map) = audited(state, &asked, "streaming", async {
        let (sql, map) = prepare.await?;
        let mut cursor = sql.query(&state.exporter).fetch::<R>()?;
        let first = tokio::time::timeout(limit, cursor.next())
            .await
            .map_err(|_| ApiError::ClickHouse(clickhouse::error::Error::TimedOut))??;
        Ok((cursor, first, map))
    })
    .await?;
    let query_id = asked.query_id.clone();
    let report = asked.report();
    let done = first.is_none();
    let mut audit = StreamAudit::new(state.audit.clone(), asked);
    audit.complete = done;
    let export = Export {
        cursor,
        first,
        map,
        format,
        header: format == Format::Csv,
        audit,
        done: false,
        deadline: started + limit.max(Duration::from_millis(1)),
        _slot: slot,
    };
    let body = futures_util::stream::unfold(export, |mut ex| async move {
        if ex.done {
            return None;
        }
        let mut chunk = Chunk::new(ex.format);
        let result = fill(&mut ex, &mut chunk).await;
        let result = result.and_then(|()| chunk.finish());
        if result.is_err() {
            ex.done = true;
        }
        Some((result, ex))
    });
    let (ctype, ext) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        _ => ("application/x-ndjson", "ndjson"),
    };
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{report}-{query_id}.{ext}\""
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&query_id) {
        h.insert("x-custos-query-id", v);
    }
    Ok(resp)
}
