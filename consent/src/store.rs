//! ClickHouse access of the consent service: appends history, sealed identifiers,
//! revocation state changes and attempts; loads what a restart needs (current state, sealed
//! identifiers, applied Kafka positions, known and pending revocations); answers the API.
//! Every value is a bound parameter; table names are fixed strings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;
use custos_integrity::ledger::Ledger;
use serde::{Deserialize, Serialize};

use custos_schemas::records::AlertActionRow;

use crate::rows::{AttemptRow, HistoryRow, RevocationRow, SealedRow};

/// ClickHouse errors.
pub type Error = clickhouse::error::Error;

/// The consent tables. The history, the revocations and the automatic response's receipts
/// (`custos.alert_actions`) are written through this process's ledger chains
/// (`custos.ledger`), shared by every clone of the store.
#[derive(Clone)]
pub struct Store {
    client: Client,
    history_ledger: Arc<Ledger<HistoryRow>>,
    revocation_ledger: Arc<Ledger<RevocationRow>>,
    action_ledger: Arc<Ledger<AlertActionRow>>,
}

/// A pending (revocation, target) with the attempts already made.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Its `requested` row.
    pub row: RevocationRow,
    /// Attempts recorded so far.
    pub attempts: u32,
}

/// Latest state of one (revocation, target), for reports.
#[derive(Debug, Clone, Serialize, Deserialize, clickhouse::Row)]
pub struct StatusRow {
    /// Revocation.
    pub revocation_id: String,
    /// Target.
    pub target: String,
    /// Latest state.
    pub state: String,
    /// When it was reached (ms).
    pub updated_at: i64,
    /// Tenant.
    pub tenant: String,
    /// Consent.
    pub consent_id: String,
    /// Client.
    pub client_id: String,
    /// Cause.
    pub cause: String,
    /// Requested (ms).
    pub requested_at: i64,
    /// Acknowledged (ms).
    pub acked_at: Option<i64>,
    /// Request → acknowledgement (ms).
    pub latency_ms: Option<i64>,
    /// Attempts.
    pub attempts: u32,
    /// Detail of the latest state.
    pub detail: String,
}

const STATUS_SELECT: &str = "SELECT revocation_id, target, \
       argMax(state, (at, seq)) AS state, max(at) AS updated_at, \
       any(tenant) AS tenant, any(consent_id) AS consent_id, any(client_id) AS client_id, \
       any(cause) AS cause, min(requested_at) AS requested_at, \
       max(acked_at) AS acked_at, max(latency_ms) AS latency_ms, max(attempts) AS attempts, \
       argMax(detail, (at, seq)) AS detail \
     FROM (SELECT * FROM custos.revocations FINAL WHERE ";

#[derive(Deserialize, clickhouse::Row)]
struct Applied {
    kafka_topic: String,
    kafka_partition: i32,
    offset: i64,
}

#[derive(Deserialize, clickhouse::Row)]
struct AttemptCount {
    revocation_id: String,
    target: String,
    attempts: u32,
}

impl Store {
    /// Connects (lazily) with the writer account.
    pub fn new(url: &str, user: &str, password: &str, timeout: Duration) -> Store {
        let client = Client::default()
            .with_url(url)
            .with_user(user)
            .with_password(password)
            .with_database(custos_schemas::migrations::DATABASE)
            .with_setting("max_execution_time", timeout.as_secs().max(1).to_string());
        Store {
            client,
            history_ledger: Arc::new(Ledger::new()),
            revocation_ledger: Arc::new(Ledger::new()),
            action_ledger: Arc::new(Ledger::new()),
        }
    }

    /// Pings ClickHouse.
    pub async fn ping(&self) -> Result<(), Error> {
        self.client
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await
            .map(|_| ())
    }

    async fn insert<T>(&self, table: &str, rows: &[T]) -> Result<(), Error>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self.client.insert::<T>(table).await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }

    /// Records the sealed identifiers and the `requested` revocations of a batch
    /// (concurrently). Pushes may start once this returned.
    pub async fn record_requests(
        &self,
        sealed: &[SealedRow],
        revocations: &[RevocationRow],
    ) -> Result<(), Error> {
        let (a, b) = tokio::join!(
            self.insert("consent_sealed", sealed),
            self.record_revocations(revocations),
        );
        a.and(b)
    }

    /// Records the history of a batch. Called after [`Store::record_requests`]: a restart
    /// treats Kafka positions found in the history as applied, so a revocation must never be
    /// missing behind an applied position. Idempotent on replay.
    pub async fn record_history(&self, history: &[HistoryRow]) -> Result<(), Error> {
        Ok(self.history_ledger.insert(&self.client, history).await?)
    }

    /// Records revocation state changes.
    pub async fn record_revocations(&self, rows: &[RevocationRow]) -> Result<(), Error> {
        Ok(self.revocation_ledger.insert(&self.client, rows).await?)
    }

    /// Records the receipt of an automatic response on its alert (`custos.alert_actions`).
    pub async fn record_alert_action(&self, row: &AlertActionRow) -> Result<(), Error> {
        Ok(self
            .action_ledger
            .insert(&self.client, std::slice::from_ref(row))
            .await?)
    }

    /// Whether the action `action_id` of `alert_id` is recorded.
    pub async fn alert_action_exists(
        &self,
        tenant: &str,
        alert_id: &str,
        action_id: &str,
    ) -> Result<bool, Error> {
        let n: u64 = self
            .client
            .query(
                "SELECT count() FROM custos.alert_actions \
                 WHERE tenant = ? AND alert_id = ? AND action_id = ?",
            )
            .bind(tenant)
            .bind(alert_id)
            .bind(action_id)
            .fetch_one()
            .await?;
        Ok(n > 0)
    }

    /// The `requested` and `skipped` rows a revocation was planned into, by target.
    pub async fn planned(&self, revocation_id: &str) -> Result<Vec<RevocationRow>, Error> {
        self.client
            .query(
                "SELECT ?fields FROM custos.revocations FINAL \
                 WHERE revocation_id = ? AND seq = 0 ORDER BY target",
            )
            .bind(revocation_id)
            .fetch_all()
            .await
    }

    /// Records an attempt.
    pub async fn record_attempt(&self, row: &AttemptRow) -> Result<(), Error> {
        self.insert("revocation_attempts", std::slice::from_ref(row))
            .await
    }

    /// The latest history row of every consent recorded from `topics` (the current state).
    pub async fn latest_states(&self, topics: &[String]) -> Result<Vec<HistoryRow>, Error> {
        self.client
            .query(
                "SELECT ?fields FROM custos.consent_history FINAL \
                 WHERE consent_id != '' AND version > 0 AND kafka_topic IN ? \
                 ORDER BY version DESC LIMIT 1 BY tenant, consent_id",
            )
            .bind(topics)
            .fetch_all()
            .await
    }

    /// The latest sealed identifiers of every consent.
    pub async fn sealed(&self) -> Result<Vec<SealedRow>, Error> {
        self.client
            .query("SELECT ?fields FROM custos.consent_sealed FINAL")
            .fetch_all()
            .await
    }

    /// Highest applied offset per partition of `topics`.
    pub async fn applied_offsets(
        &self,
        topics: &[String],
    ) -> Result<HashMap<(String, i32), i64>, Error> {
        let rows: Vec<Applied> = self
            .client
            .query(
                "SELECT kafka_topic, kafka_partition, max(kafka_offset) AS offset \
                 FROM custos.consent_history WHERE kafka_topic IN ? \
                 GROUP BY kafka_topic, kafka_partition",
            )
            .bind(topics)
            .fetch_all()
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| ((r.kafka_topic, r.kafka_partition), r.offset))
            .collect())
    }

    /// Ids of every revocation ever requested.
    pub async fn revocation_ids(&self) -> Result<Vec<String>, Error> {
        self.client
            .query("SELECT DISTINCT revocation_id FROM custos.revocations")
            .fetch_all()
            .await
    }

    /// (revocation, target) pairs requested but neither delivered, failed nor skipped.
    pub async fn pending(&self) -> Result<Vec<Pending>, Error> {
        let rows: Vec<RevocationRow> = self
            .client
            .query(
                "SELECT ?fields FROM custos.revocations FINAL \
                 WHERE state = 'requested' AND (revocation_id, target) NOT IN \
                   (SELECT revocation_id, target FROM custos.revocations \
                    WHERE state IN ('delivered', 'failed', 'skipped')) \
                 ORDER BY requested_at",
            )
            .fetch_all()
            .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = rows.iter().map(|r| r.revocation_id.as_str()).collect();
        let counts: Vec<AttemptCount> = self
            .client
            .query(
                "SELECT revocation_id, target, toUInt32(max(attempt)) AS attempts \
                 FROM custos.revocation_attempts WHERE revocation_id IN ? \
                 GROUP BY revocation_id, target",
            )
            .bind(ids)
            .fetch_all()
            .await?;
        let counts: HashMap<(String, String), u32> = counts
            .into_iter()
            .map(|c| ((c.revocation_id, c.target), c.attempts))
            .collect();
        Ok(rows
            .into_iter()
            .map(|row| {
                let attempts = counts
                    .get(&(row.revocation_id.clone(), row.target.clone()))
                    .copied()
                    .unwrap_or(0);
                Pending { row, attempts }
            })
            .collect())
    }

    /// History of some consents of a tenant, oldest first.
    pub async fn history(
        &self,
        tenant: &str,
        consent_ids: &[String],
    ) -> Result<Vec<HistoryRow>, Error> {
        if consent_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.client
            .query(
                "SELECT ?fields FROM custos.consent_history FINAL \
                 WHERE tenant = ? AND consent_id IN ? ORDER BY consent_id, version, event_time",
            )
            .bind(tenant)
            .bind(consent_ids)
            .fetch_all()
            .await
    }

    /// Latest revocation states of some consents of a tenant.
    pub async fn revocation_status_of(
        &self,
        tenant: &str,
        consent_ids: &[String],
    ) -> Result<Vec<StatusRow>, Error> {
        if consent_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.client
            .query(&format!(
                "{STATUS_SELECT} tenant = ? AND consent_id IN ?) \
                 GROUP BY revocation_id, target ORDER BY requested_at, revocation_id, target"
            ))
            .bind(tenant)
            .bind(consent_ids)
            .fetch_all()
            .await
    }

    /// Latest states of every revocation, optionally only those in `state`.
    pub async fn revocation_report(
        &self,
        state: Option<&str>,
        limit: u64,
    ) -> Result<Vec<StatusRow>, Error> {
        let q = match state {
            Some(s) => self
                .client
                .query(&format!(
                    "{STATUS_SELECT} 1) GROUP BY revocation_id, target HAVING state = ? \
                     ORDER BY requested_at DESC LIMIT ?"
                ))
                .bind(s)
                .bind(limit),
            None => self
                .client
                .query(&format!(
                    "{STATUS_SELECT} 1) GROUP BY revocation_id, target \
                     ORDER BY requested_at DESC LIMIT ?"
                ))
                .bind(limit),
        };
        q.fetch_all().await
    }

    /// Attempts of one revocation.
    pub async fn attempts(&self, revocation_id: &str) -> Result<Vec<AttemptRow>, Error> {
        self.client
            .query(
                "SELECT ?fields FROM custos.revocation_attempts FINAL \
                 WHERE revocation_id = ? ORDER BY target, attempt",
            )
            .bind(revocation_id)
            .fetch_all()
            .await
    }
}
