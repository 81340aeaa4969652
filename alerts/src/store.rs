//! ClickHouse: the saved detector state (`custos.detector_state`), the alert and action
//! tables (written through their ledgers) and the break-glass openings the review sweep
//! reads. Every statement is a constant with bound values.

use std::collections::BTreeMap;

use clickhouse::{Client, Row};
use custos_integrity::ledger::{Ledger, LedgerError};
use custos_schemas::records::{AlertActionRow, AlertRow};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// ClickHouse errors of this service.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A statement failed.
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// A ledgered write failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The saved offsets do not parse.
    #[error("saved offsets are corrupt: {0}")]
    Offsets(serde_json::Error),
}

/// One row of `custos.detector_state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Row)]
pub struct StateRow {
    /// The deployment's state name.
    pub consumer: String,
    /// When saved (ms).
    pub saved_at: i64,
    /// The next offset to read per topic and partition, JSON (see [`Offsets`]).
    pub offsets: String,
    /// The engine's snapshot.
    pub state: String,
}

/// Next offset to read, per topic, per partition.
pub type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// A saved state: the engine snapshot and the offsets it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// When saved (ms).
    pub saved_at: i64,
    /// Next offset to read, per topic and partition.
    pub offsets: Offsets,
    /// The engine's snapshot.
    pub snapshot: Vec<u8>,
}

/// A break-glass opening without a review decision (or an overdue alert yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Row)]
pub struct Opening {
    /// Tenant.
    pub tenant: String,
    /// The opening's event key (the review item's id).
    pub event_key: String,
    /// Event time (ms).
    pub opened_ms: i64,
    /// User subject as stored.
    pub user_sub: String,
    /// User kind.
    pub user_kind: String,
    /// Client.
    pub client_id: String,
    /// Session.
    pub session_id: String,
    /// Token id.
    pub token_jti: String,
    /// Patient pseudonym.
    pub patient: String,
}

/// The detector of an overdue break-glass review.
pub const REVIEW_OVERDUE: &str = "break_glass_review_overdue";

const LOAD_STATE: &str = "SELECT ?fields FROM custos.detector_state WHERE consumer = ? \
                          ORDER BY saved_at DESC LIMIT 1";

/// Openings older than a bound with neither a decision nor an overdue alert. Both checks
/// are by (tenant, key), so one tenant's rows never hide another's.
const OPENINGS: &str =
    "SELECT tenant, event_key, toUnixTimestamp64Milli(event_time) AS opened_ms, \
       user_sub, user_kind, client_id, session_id, token_jti, patient \
     FROM custos.audit_events FINAL \
     WHERE event_type = 'custos.breakglass.opened' AND event_time <= fromUnixTimestamp64Milli(?) \
       AND (tenant, event_key) NOT IN (SELECT tenant, review_id FROM custos.break_glass_reviews) \
       AND (tenant, concat('review:', event_key)) NOT IN \
           (SELECT tenant, dedup_key FROM custos.alerts WHERE detector = ?) \
     ORDER BY event_time, event_key LIMIT ?";

/// The service's ClickHouse side.
#[derive(Debug)]
pub struct Store {
    client: Client,
    alerts: Ledger<AlertRow>,
    actions: Ledger<AlertActionRow>,
}

impl Store {
    /// A store over `client` with fresh ledger chains for this process.
    pub fn new(client: Client) -> Store {
        Store {
            client,
            alerts: Ledger::new(),
            actions: Ledger::new(),
        }
    }

    /// `SELECT 1`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.client.query("SELECT 1").execute().await?;
        Ok(())
    }

    /// The latest saved state of `name`, if any.
    pub async fn load(&self, name: &str) -> Result<Option<Saved>, StoreError> {
        let row = self
            .client
            .query(LOAD_STATE)
            .bind(name)
            .fetch_optional::<StateRow>()
            .await?;
        row.map(|r| {
            Ok(Saved {
                saved_at: r.saved_at,
                offsets: serde_json::from_str(&r.offsets).map_err(StoreError::Offsets)?,
                snapshot: r.state.into_bytes(),
            })
        })
        .transpose()
    }

    /// Saves a state of `name`. The snapshot is the engine's JSON.
    pub async fn save(&self, name: &str, saved: &Saved) -> Result<(), StoreError> {
        let row = StateRow {
            consumer: name.to_owned(),
            saved_at: saved.saved_at,
            offsets: serde_json::to_string(&saved.offsets).map_err(StoreError::Offsets)?,
            state: String::from_utf8_lossy(&saved.snapshot).into_owned(),
        };
        // A fixed name, never input: unescaped so the database part is kept.
        let mut insert = self
            .client
            .insert_unescaped::<StateRow>("custos.detector_state")
            .await?;
        insert.write(&row).await?;
        insert.end().await?;
        Ok(())
    }

    /// Writes alert revisions through the alerts' ledger.
    pub async fn write_alerts(&self, rows: &[AlertRow]) -> Result<(), StoreError> {
        Ok(self.alerts.insert(&self.client, rows).await?)
    }

    /// Writes alert actions through the actions' ledger.
    pub async fn write_actions(&self, rows: &[AlertActionRow]) -> Result<(), StoreError> {
        Ok(self.actions.insert(&self.client, rows).await?)
    }

    /// Break-glass openings at or before `before_ms` with neither a review decision nor an
    /// overdue alert, oldest first, at most `limit`.
    pub async fn open_reviews(
        &self,
        before_ms: i64,
        limit: u64,
    ) -> Result<Vec<Opening>, StoreError> {
        Ok(self
            .client
            .query(OPENINGS)
            .bind(before_ms)
            .bind(REVIEW_OVERDUE)
            .bind(limit)
            .fetch_all::<Opening>()
            .await?)
    }
}
