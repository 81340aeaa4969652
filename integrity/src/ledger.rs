//! The ledger: a hash chain over versioned record tables (`custos.ledger`, migration 0013).
//!
//! The audit trail's own chain lives in its rows (`custos.audit_events`), because an audit
//! record is written once. The query audit, the consent history and the revocations are
//! `ReplacingMergeTree`s that hold several versions of a row (a report's `answering` record,
//! then its `answered` one) or collapse a replay's copies; a merge drops the older versions,
//! so a chain threaded through their rows would break by itself. Their chain lives here
//! instead:
//!
//! - every process that writes one of these tables holds one [`Ledger`] per table: its own
//!   chain (`chain_id` = `table/instance`), so writers never contend for a head;
//! - [`Ledger::insert`] writes the rows, and once ClickHouse acknowledged them, one entry per
//!   row: its key, the SHA-256 of its content, its retention time, and the previous entry's
//!   hash and time. A failed entry write is kept in memory and written first next time;
//! - [`verify`] walks every chain (links, hashes, gaps not explained by retention) and then
//!   matches every surviving row with the entries of its key: an edited row hashes to a
//!   value no entry holds, a deleted row leaves entries without a row, an inserted row has no
//!   entry. A version superseded by a later one is fine: the surviving version must hash to
//!   one of the entries of its key.
//!
//! Limitation: the chains are not anchored outside the database. Someone who can rewrite
//! both a row and every later entry of its chain, or remove the newest entries of a chain
//! together with their rows, is not detected by this module alone.

use std::marker::PhantomData;

use clickhouse::{Client, Row, RowOwned, RowRead, RowWrite};
use custos_schemas::records::{
    AlertActionRow, AlertRow, HistoryRow, ReportQueryRow, ReviewDecisionRow, RevocationRow,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::Mutex;

/// The ledger table.
pub const TABLE: &str = "custos.ledger";

/// `prev_hash` of the first entry of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Entries whose write failed that a [`Ledger`] keeps for the next write; past it the
/// ledger refuses new rows (fail closed) rather than write rows it cannot chain.
pub const MAX_UNWRITTEN: usize = 65_536;

const DAY_MS: i64 = 86_400_000;

/// A record table chained by the ledger.
pub trait Ledgered: RowOwned + RowRead + RowWrite + Serialize + Send + Sync + 'static {
    /// Its table name (in database `custos`).
    const TABLE: &'static str;
    /// A SQL expression over the table's columns equal to [`Ledgered::row_key`] (a constant,
    /// never user input): the table's sorting key, so versions of one row share it.
    const KEY_SQL: &'static str;
    /// The column its retention (TTL) counts from, equal to [`Ledgered::row_time`].
    const TIME_COLUMN: &'static str;
    /// The row's identity: the table's sorting key, fields joined by 0x1f.
    fn row_key(&self) -> String;
    /// The row's retention time (ms since the epoch).
    fn row_time(&self) -> i64;
    /// The row's tenant.
    fn tenant(&self) -> &str;
}

const SEP: char = '\u{1f}';

impl Ledgered for ReportQueryRow {
    const TABLE: &'static str = "report_queries";
    const KEY_SQL: &'static str =
        "concat(toString(toUnixTimestamp64Milli(asked_at)), char(31), query_id)";
    const TIME_COLUMN: &'static str = "asked_at";
    fn row_key(&self) -> String {
        format!("{}{SEP}{}", self.asked_at, self.query_id)
    }
    fn row_time(&self) -> i64 {
        self.asked_at
    }
    fn tenant(&self) -> &str {
        &self.tenant
    }
}

impl Ledgered for HistoryRow {
    const TABLE: &'static str = "consent_history";
    const KEY_SQL: &'static str =
        "concat(tenant, char(31), patient, char(31), client_id, char(31), \
                                   consent_id, char(31), event_key)";
    const TIME_COLUMN: &'static str = "event_time";
    fn row_key(&self) -> String {
        format!(
            "{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}",
            self.tenant, self.patient, self.client_id, self.consent_id, self.event_key
        )
    }
    fn row_time(&self) -> i64 {
        self.event_time
    }
    fn tenant(&self) -> &str {
        &self.tenant
    }
}

impl Ledgered for RevocationRow {
    const TABLE: &'static str = "revocations";
    const KEY_SQL: &'static str =
        "concat(revocation_id, char(31), target, char(31), state, char(31), toString(seq))";
    const TIME_COLUMN: &'static str = "requested_at";
    fn row_key(&self) -> String {
        format!(
            "{}{SEP}{}{SEP}{}{SEP}{}",
            self.revocation_id, self.target, self.state, self.seq
        )
    }
    fn row_time(&self) -> i64 {
        self.requested_at
    }
    fn tenant(&self) -> &str {
        &self.tenant
    }
}

impl Ledgered for AlertRow {
    const TABLE: &'static str = "alerts";
    const KEY_SQL: &'static str =
        "concat(tenant, char(31), alert_id, char(31), toString(revision))";
    const TIME_COLUMN: &'static str = "first_seen";
    fn row_key(&self) -> String {
        format!(
            "{}{SEP}{}{SEP}{}",
            self.tenant, self.alert_id, self.revision
        )
    }
    fn row_time(&self) -> i64 {
        self.first_seen
    }
    fn tenant(&self) -> &str {
        &self.tenant
    }
}

impl Ledgered for AlertActionRow {
    const TABLE: &'static str = "alert_actions";
    const KEY_SQL: &'static str = "concat(tenant, char(31), alert_id, char(31), \
                                   toString(toUnixTimestamp64Milli(at)), char(31), action_id)";
    const TIME_COLUMN: &'static str = "alert_first_seen";
    fn row_key(&self) -> String {
        format!(
            "{}{SEP}{}{SEP}{}{SEP}{}",
            self.tenant, self.alert_id, self.at, self.action_id
        )
    }
    fn row_time(&self) -> i64 {
        self.alert_first_seen
    }
    fn tenant(&self) -> &str {
        &self.tenant
    }
}

impl Ledgered for ReviewDecisionRow {
    const TABLE: &'static str = "break_glass_reviews";
    const KEY_SQL: &'static str = "concat(tenant, char(31), review_id, char(31), decision_id)";
    const TIME_COLUMN: &'static str = "opened_at";
    fn row_key(&self) -> String {
        format!(
            "{}{SEP}{}{SEP}{}",
            self.tenant, self.review_id, self.decision_id
        )
    }
    fn row_time(&self) -> i64 {
        self.opened_at
    }
    fn tenant(&self) -> &str {
        &self.tenant
    }
}

/// One row of `custos.ledger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Row)]
pub struct Entry {
    /// The chained table.
    pub table_name: String,
    /// The writer's chain: `table/instance`.
    pub chain_id: String,
    /// Position in the chain, from 0.
    pub seq: u64,
    /// The row's tenant.
    pub tenant: String,
    /// The row's key ([`Ledgered::row_key`]).
    pub row_key: String,
    /// Hex SHA-256 of the row's content ([`row_hash`]).
    pub row_hash: String,
    /// The row's retention time (ms).
    pub row_time: i64,
    /// When the entry was made (ms; never before the previous entry's).
    pub recorded_at: i64,
    /// The previous entry's `recorded_at` (0 for the first).
    pub prev_at: i64,
    /// The previous entry's hash ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// Hex SHA-256 over every field above ([`entry_hash`]).
    pub entry_hash: String,
}

fn put_str(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_be_bytes());
    h.update(s.as_bytes());
}

/// Hex SHA-256 of a row's content: the table name and the row's JSON form (fields in
/// declaration order, so the value read back from ClickHouse hashes the same).
pub fn row_hash<T: Ledgered>(row: &T) -> String {
    let mut h = Sha256::new();
    h.update(b"custos-ledger-row-v1\0");
    put_str(&mut h, T::TABLE);
    // Serializing plain structs of strings, integers and vectors cannot fail; an empty
    // body would still hash deterministically.
    h.update(serde_json::to_vec(row).unwrap_or_default());
    hex::encode(h.finalize())
}

/// Hex SHA-256 of an entry's fields (its `entry_hash` excluded).
pub fn entry_hash(e: &Entry) -> String {
    let mut h = Sha256::new();
    h.update(b"custos-ledger-entry-v1\0");
    for s in [
        &e.table_name,
        &e.chain_id,
        &e.tenant,
        &e.row_key,
        &e.row_hash,
        &e.prev_hash,
    ] {
        put_str(&mut h, s);
    }
    h.update(e.seq.to_be_bytes());
    for n in [e.row_time, e.recorded_at, e.prev_at] {
        h.update(n.to_be_bytes());
    }
    hex::encode(h.finalize())
}

/// Why rows were not written or not chained.
#[derive(Debug, Error)]
pub enum LedgerError {
    /// The rows' INSERT failed; nothing was written.
    #[error("insert into {table} failed: {source}")]
    Rows {
        /// The table.
        table: &'static str,
        /// ClickHouse's error.
        source: clickhouse::error::Error,
    },
    /// The rows were written, their entries not yet: they are kept and written first by the
    /// next [`Ledger::insert`] (until then [`verify`] reports the rows as unledgered).
    #[error("ledger entries for {table} not written: {source}")]
    Entries {
        /// The table.
        table: &'static str,
        /// ClickHouse's error.
        source: clickhouse::error::Error,
    },
    /// Too many entries wait to be written: new rows are refused.
    #[error("ledger backlog of {0} entries: rows refused until the ledger is writable")]
    Backlog(usize),
}

impl From<LedgerError> for clickhouse::error::Error {
    fn from(e: LedgerError) -> clickhouse::error::Error {
        match e {
            LedgerError::Rows { source, .. } | LedgerError::Entries { source, .. } => source,
            backlog @ LedgerError::Backlog(_) => {
                clickhouse::error::Error::Custom(backlog.to_string())
            }
        }
    }
}

#[derive(Debug)]
struct Head {
    next_seq: u64,
    prev_hash: String,
    prev_at: i64,
    unwritten: Vec<Entry>,
}

/// One writer's chain over table `T`. Writes through one ledger are serialized (the chain
/// has one head); share it (`Arc`) within a process, never across processes.
#[derive(Debug)]
pub struct Ledger<T> {
    chain_id: String,
    head: Mutex<Head>,
    rows: PhantomData<fn(&T)>,
}

/// A fresh instance name: the start time and 64 random bits, in hex.
pub fn fresh_instance() -> String {
    use rand_core::RngCore;
    let mut bytes = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut bytes);
    format!("{:x}-{}", now_ms(), hex::encode(bytes))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl<T: Ledgered> Default for Ledger<T> {
    fn default() -> Ledger<T> {
        Ledger::new()
    }
}

impl<T: Ledgered> Ledger<T> {
    /// A new chain for this process.
    pub fn new() -> Ledger<T> {
        Ledger::with_instance(&fresh_instance())
    }

    /// A new chain named `T::TABLE/instance` (the instance must be unique to the writer).
    pub fn with_instance(instance: &str) -> Ledger<T> {
        Ledger {
            chain_id: format!("{}/{instance}", T::TABLE),
            head: Mutex::new(Head {
                next_seq: 0,
                prev_hash: GENESIS.to_owned(),
                prev_at: 0,
                unwritten: Vec::new(),
            }),
            rows: PhantomData,
        }
    }

    /// The chain's id.
    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// Writes `rows` into `T::TABLE` and, once acknowledged, their entries into the ledger.
    pub async fn insert(&self, client: &Client, rows: &[T]) -> Result<(), LedgerError> {
        let mut head = self.head.lock().await;
        if !head.unwritten.is_empty() {
            // Entries of earlier rows first: a chain is written in order.
            self.flush(client, &mut head).await?;
        }
        if rows.is_empty() {
            return Ok(());
        }
        if head.unwritten.len() + rows.len() > MAX_UNWRITTEN {
            return Err(LedgerError::Backlog(head.unwritten.len()));
        }
        insert_rows(client, &format!("custos.{}", T::TABLE), rows)
            .await
            .map_err(|source| LedgerError::Rows {
                table: T::TABLE,
                source,
            })?;
        let at = now_ms().max(head.prev_at);
        for row in rows {
            let mut e = Entry {
                table_name: T::TABLE.to_owned(),
                chain_id: self.chain_id.clone(),
                seq: head.next_seq,
                tenant: row.tenant().to_owned(),
                row_key: row.row_key(),
                row_hash: row_hash(row),
                row_time: row.row_time(),
                recorded_at: at,
                prev_at: head.prev_at,
                prev_hash: std::mem::take(&mut head.prev_hash),
                entry_hash: String::new(),
            };
            e.entry_hash = entry_hash(&e);
            head.next_seq += 1;
            head.prev_hash = e.entry_hash.clone();
            head.prev_at = at;
            head.unwritten.push(e);
        }
        self.flush(client, &mut head).await
    }

    async fn flush(&self, client: &Client, head: &mut Head) -> Result<(), LedgerError> {
        insert_rows(client, TABLE, &head.unwritten)
            .await
            .map_err(|source| LedgerError::Entries {
                table: T::TABLE,
                source,
            })?;
        head.unwritten.clear();
        Ok(())
    }
}

async fn insert_rows<R: RowOwned + RowWrite>(
    client: &Client,
    table: &str,
    rows: &[R],
) -> Result<(), clickhouse::error::Error> {
    // Fixed names (`custos.<table>`), never input: unescaped so the database part is kept.
    let mut insert = client.insert_unescaped::<R>(table).await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await
}

/// What a verification covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Only rows of this tenant, and the chains holding entries of it.
    pub tenant: Option<String>,
    /// The retention the tables were created with (days): rows older than it may be gone,
    /// and a chain may begin after a gap left by entries older than it plus a day.
    pub retention_days: u32,
    /// "Now" (ms), for the retention horizon.
    pub now_ms: i64,
}

impl Scope {
    /// Every tenant, as of now.
    pub fn all(retention_days: u32) -> Scope {
        Scope {
            tenant: None,
            retention_days,
            now_ms: now_ms(),
        }
    }
}

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// An entry's hash does not match its fields: the entry was edited.
    EntryAltered,
    /// Two different entries hold the same position of a chain.
    EntryConflict,
    /// An entry does not link to its predecessor, or entries are missing inside a chain
    /// where retention cannot explain it.
    ChainBroken,
    /// A chain's first entries are missing although retention has not reached them.
    ChainTruncated,
    /// A row's content matches none of the entries of its key: the row was edited.
    RowAltered,
    /// A row has no entry: it was inserted outside the service (or its entry was removed).
    RowUnledgered,
    /// Entries exist for a key whose row is gone: the row was deleted.
    RowMissing,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What is wrong.
    pub kind: FindingKind,
    /// The chain, for chain findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<String>,
    /// The position in the chain, for chain findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The row's key (pseudonymized identifiers only), for row findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row_key: Option<String>,
}

/// Most findings listed per table (all are counted).
pub const MAX_FINDINGS: usize = 100;

/// The verification of one table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableReport {
    /// The table.
    pub table: String,
    /// Chains walked.
    pub chains: u64,
    /// Entries walked.
    pub entries: u64,
    /// Chains whose start, or a stretch of which, was pruned by retention.
    pub pruned_chains: u64,
    /// Rows matched with their entries.
    pub rows_checked: u64,
    /// Every finding, counted.
    pub findings_total: u64,
    /// The first [`MAX_FINDINGS`] findings.
    pub findings: Vec<Finding>,
}

impl TableReport {
    fn add(&mut self, f: Finding) {
        self.findings_total += 1;
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(f);
        }
    }
}

/// The verification of every ledgered table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// No finding in any table.
    pub ok: bool,
    /// One report per table.
    pub tables: Vec<TableReport>,
}

/// Verifies the query audit, the consent history and the revocations against the ledger.
/// `client` needs SELECT on those tables and on `custos.ledger`.
pub async fn verify(client: &Client, scope: &Scope) -> Result<Report, clickhouse::error::Error> {
    let tables = vec![
        verify_table::<ReportQueryRow>(client, scope).await?,
        verify_table::<HistoryRow>(client, scope).await?,
        verify_table::<RevocationRow>(client, scope).await?,
        verify_table::<AlertRow>(client, scope).await?,
        verify_table::<AlertActionRow>(client, scope).await?,
        verify_table::<ReviewDecisionRow>(client, scope).await?,
    ];
    Ok(Report {
        ok: tables.iter().all(|t| t.findings_total == 0),
        tables,
    })
}

/// Verifies one table: its chains, then its rows.
pub async fn verify_table<T: Ledgered>(
    client: &Client,
    scope: &Scope,
) -> Result<TableReport, clickhouse::error::Error> {
    let mut report = TableReport {
        table: T::TABLE.to_owned(),
        ..TableReport::default()
    };
    verify_chains::<T>(client, scope, &mut report).await?;
    verify_rows::<T>(client, scope, &mut report).await?;
    Ok(report)
}

/// Entries made before this may be gone (their TTL is `recorded_at` + retention + 1 day).
fn entry_horizon(scope: &Scope) -> i64 {
    scope.now_ms - (i64::from(scope.retention_days) + 1) * DAY_MS
}

/// Rows whose retention time is before this may be gone (an hour of margin for TTL merges
/// that run while the verification reads).
fn row_horizon(scope: &Scope) -> i64 {
    scope.now_ms - i64::from(scope.retention_days) * DAY_MS + DAY_MS / 24
}

async fn verify_chains<T: Ledgered>(
    client: &Client,
    scope: &Scope,
    report: &mut TableReport,
) -> Result<(), clickhouse::error::Error> {
    let tenant = scope.tenant.clone().unwrap_or_default();
    let mut cursor = client
        .query(
            "SELECT ?fields FROM custos.ledger WHERE table_name = ? AND (? = '' OR chain_id IN \
             (SELECT DISTINCT chain_id FROM custos.ledger WHERE table_name = ? AND tenant = ?)) \
             ORDER BY chain_id, seq",
        )
        .bind(T::TABLE)
        .bind(&tenant)
        .bind(T::TABLE)
        .bind(&tenant)
        .fetch::<Entry>()?;
    let horizon = entry_horizon(scope);
    let mut last: Option<Entry> = None;
    let mut pruned_here = false;
    while let Some(e) = cursor.next().await? {
        report.entries += 1;
        if entry_hash(&e) != e.entry_hash {
            report.add(chain_finding(FindingKind::EntryAltered, &e));
        }
        let same_chain = last.as_ref().is_some_and(|l| l.chain_id == e.chain_id);
        if !same_chain {
            report.chains += 1;
            pruned_here = false;
            if e.seq == 0 {
                if e.prev_hash != GENESIS {
                    report.add(chain_finding(FindingKind::ChainBroken, &e));
                }
            } else if e.prev_at < horizon {
                pruned_here = true;
                report.pruned_chains += 1;
            } else {
                report.add(chain_finding(FindingKind::ChainTruncated, &e));
            }
            last = Some(e);
            continue;
        }
        let Some(prev) = last.as_ref() else {
            continue;
        };
        if e.seq == prev.seq {
            if e != *prev {
                report.add(chain_finding(FindingKind::EntryConflict, &e));
            }
            // An identical entry written twice (a retried INSERT) is harmless.
            continue;
        }
        if e.seq != prev.seq + 1 {
            // A stretch missing inside a chain: fine only if retention took it.
            if e.prev_at < horizon {
                if !pruned_here {
                    pruned_here = true;
                    report.pruned_chains += 1;
                }
            } else {
                report.add(chain_finding(FindingKind::ChainBroken, &e));
            }
        } else if e.prev_hash != prev.entry_hash || e.prev_at != prev.recorded_at {
            report.add(chain_finding(FindingKind::ChainBroken, &e));
        }
        last = Some(e);
    }
    Ok(())
}

fn chain_finding(kind: FindingKind, e: &Entry) -> Finding {
    Finding {
        kind,
        chain_id: Some(e.chain_id.clone()),
        seq: Some(e.seq),
        row_key: None,
    }
}

fn row_finding(kind: FindingKind, row_key: String) -> Finding {
    Finding {
        kind,
        chain_id: None,
        seq: None,
        row_key: Some(row_key),
    }
}

/// The key and content hash of one entry, as the row matching reads them.
#[derive(Debug, Clone, Row, Deserialize)]
struct KeyHash {
    row_key: String,
    row_hash: String,
}

/// Row findings that a concurrent writer may explain (its entry lands just after its row)
/// are looked at again after the pass, at most this many.
const MAX_RECHECKS: usize = 256;

async fn verify_rows<T: Ledgered>(
    client: &Client,
    scope: &Scope,
    report: &mut TableReport,
) -> Result<(), clickhouse::error::Error> {
    let tenant = scope.tenant.clone().unwrap_or_default();
    let horizon = row_horizon(scope);
    let mut entries = client
        .query(
            "SELECT row_key, row_hash FROM custos.ledger WHERE table_name = ? \
             AND row_time >= fromUnixTimestamp64Milli(toInt64(?)) AND (? = '' OR tenant = ?) \
             ORDER BY row_key",
        )
        .bind(T::TABLE)
        .bind(horizon)
        .bind(&tenant)
        .bind(&tenant)
        .fetch::<KeyHash>()?;
    let sql = format!(
        "SELECT ?fields FROM custos.{table} FINAL \
         WHERE {time} >= fromUnixTimestamp64Milli(toInt64(?)) AND (? = '' OR tenant = ?) \
         ORDER BY {key}",
        table = T::TABLE,
        time = T::TIME_COLUMN,
        key = T::KEY_SQL,
    );
    let mut rows = client
        .query(&sql)
        .bind(horizon)
        .bind(&tenant)
        .bind(&tenant)
        .fetch::<T>()?;

    let mut suspects: Vec<(FindingKind, String, String)> = Vec::new();
    let mut entry = entries.next().await?;
    let mut row = rows.next().await?;
    loop {
        let row_key = row.as_ref().map(Ledgered::row_key);
        match (row_key, entry.as_ref()) {
            (None, None) => break,
            (Some(k), e) if e.is_none_or(|e| k < e.row_key) => {
                report.rows_checked += 1;
                let hash = row.as_ref().map(row_hash).unwrap_or_default();
                suspects.push((FindingKind::RowUnledgered, k, hash));
                row = rows.next().await?;
            }
            (k, Some(e)) if k.as_ref().is_none_or(|k| *k > e.row_key) => {
                let key = e.row_key.clone();
                report.add(row_finding(FindingKind::RowMissing, key.clone()));
                while entry.as_ref().is_some_and(|e| e.row_key == key) {
                    entry = entries.next().await?;
                }
            }
            (Some(k), Some(_)) => {
                report.rows_checked += 1;
                let hash = row.as_ref().map(row_hash).unwrap_or_default();
                let mut matched = false;
                while let Some(e) = entry.as_ref().filter(|e| e.row_key == k) {
                    matched |= e.row_hash == hash;
                    entry = entries.next().await?;
                }
                if !matched {
                    suspects.push((FindingKind::RowAltered, k, hash));
                }
                row = rows.next().await?;
            }
            (None, Some(_)) | (Some(_), None) => break,
        }
    }
    // A row written while the pass ran may have had its entry land after the pass read
    // past its key: look each suspect up once more.
    for (i, (kind, key, hash)) in suspects.into_iter().enumerate() {
        if i < MAX_RECHECKS {
            let found: u64 = client
                .query(
                    "SELECT count() FROM custos.ledger \
                     WHERE table_name = ? AND row_key = ? AND row_hash = ?",
                )
                .bind(T::TABLE)
                .bind(&key)
                .bind(&hash)
                .fetch_one()
                .await?;
            if found > 0 {
                continue;
            }
        }
        report.add(row_finding(kind, key));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rq(id: &str, status: &str) -> ReportQueryRow {
        ReportQueryRow {
            query_id: id.into(),
            asked_at: 1_700_000_000_000,
            recorded_at: 1_700_000_000_100,
            caller_sub: "s".into(),
            caller_issuer: "i".into(),
            caller_client: "c".into(),
            caller_roles: vec!["auditor".into()],
            report: "patient_access".into(),
            tenant: "t1".into(),
            parameters: "{}".into(),
            format: "json".into(),
            status: status.into(),
            rows_returned: 3,
            duration_ms: 7,
        }
    }

    #[test]
    fn a_row_hash_changes_with_any_field() {
        let a = rq("q1", "answered");
        let mut b = a.clone();
        assert_eq!(row_hash(&a), row_hash(&b));
        b.rows_returned = 4;
        assert_ne!(row_hash(&a), row_hash(&b));
        let mut c = a.clone();
        c.caller_roles.push("admin".into());
        assert_ne!(row_hash(&a), row_hash(&c));
    }

    #[test]
    fn an_entry_hash_covers_every_field() {
        let mut e = Entry {
            table_name: "report_queries".into(),
            chain_id: "report_queries/x".into(),
            seq: 3,
            tenant: "t1".into(),
            row_key: "k".into(),
            row_hash: "h".into(),
            row_time: 1,
            recorded_at: 2,
            prev_at: 1,
            prev_hash: GENESIS.into(),
            entry_hash: String::new(),
        };
        let base = entry_hash(&e);
        let edits: Vec<fn(&mut Entry)> = vec![
            |e| e.seq = 4,
            |e| e.tenant = "t2".into(),
            |e| e.row_key = "k2".into(),
            |e| e.row_hash = "h2".into(),
            |e| e.row_time = 9,
            |e| e.recorded_at = 9,
            |e| e.prev_at = 0,
            |e| e.prev_hash = "1".into(),
            |e| e.chain_id = "report_queries/y".into(),
            // Length prefixes: moving a character between fields changes the hash.
            |e| {
                e.row_key = "kh".into();
                e.row_hash = String::new();
            },
        ];
        for edit in edits {
            let mut changed = e.clone();
            edit(&mut changed);
            assert_ne!(entry_hash(&changed), base, "{changed:?}");
        }
        e.entry_hash = "ignored".into();
        assert_eq!(entry_hash(&e), base);
    }

    #[test]
    fn row_keys_are_the_sorting_keys_joined() {
        let r = rq("q1", "answered");
        assert_eq!(r.row_key(), "1700000000000\u{1f}q1");
        assert_eq!(r.row_time(), 1_700_000_000_000);
    }

    #[test]
    fn horizons_follow_retention() {
        let s = Scope {
            tenant: None,
            retention_days: 10,
            now_ms: 100 * DAY_MS,
        };
        assert_eq!(entry_horizon(&s), 89 * DAY_MS);
        assert_eq!(row_horizon(&s), 90 * DAY_MS + DAY_MS / 24);
    }
}
