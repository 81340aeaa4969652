//! The shared state of the handlers: clients, the query-audit writer, the key ring, the
//! report settings, the integrity resources and the load limits, built once from the
//! configuration.

use std::sync::Arc;
use std::time::Duration;

use custos_schemas::KeyRing;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::clock::{Clock, SystemClock};
use crate::config::{ConfigError, QueryConfig, ReviewDue};
use crate::error::ApiError;
use crate::limits::{ExportSlots, RequestLimit};
use crate::params::Limits;
use custos_auth::audit::QueryAudit;
use custos_auth::oidc::Authenticator;
use custos_integrity::ledger::Ledger;
use custos_schemas::records::{AlertActionRow, ReviewDecisionRow};

/// Report settings derived from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Validation limits and defaults.
    pub limits: Limits,
    /// Purposes excluded from the accounting of disclosures.
    pub excluded_purposes: Vec<String>,
    /// Grace after a consent revocation, seconds.
    pub revocation_grace_secs: u64,
    /// Public base URL.
    pub public_url: String,
    /// Request timeout (headers of a response).
    pub request_timeout: Duration,
    /// Time limit of one CSV / NDJSON export (its ClickHouse query and its stream).
    pub export_timeout: Duration,
    /// Due time of the break-glass review, per tenant.
    pub review_due: ReviewDue,
}

/// What the people's actions write: the alert actions and the break-glass review decisions,
/// each through its own ledger chain, with the query service's writer account. One action
/// or decision at a time per process ([`Workflow::gate`]), so a state check and the write it
/// allows are not interleaved with another.
#[derive(Debug)]
pub struct Workflow {
    /// ClickHouse as the writer account (INSERT on the two tables and the ledger).
    pub writer: clickhouse::Client,
    /// The chain of this process's alert actions.
    pub actions: Ledger<AlertActionRow>,
    /// The chain of this process's review decisions.
    pub decisions: Ledger<ReviewDecisionRow>,
    /// Serializes check-then-write.
    pub gate: tokio::sync::Mutex<()>,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Bearer-token verification.
    pub auth: Arc<Authenticator>,
    /// ClickHouse as the read-only account.
    pub reader: clickhouse::Client,
    /// The read-only account for CSV / NDJSON exports: `max_execution_time` is
    /// `CUSTOS_QUERY_EXPORT_TIMEOUT_SECS` instead of the request timeout.
    pub exporter: clickhouse::Client,
    /// Query-audit writer (writer account).
    pub audit: QueryAudit,
    /// Pseudonymization keys (lookups try every live key).
    pub keys: Arc<KeyRing>,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Prometheus handle for `/metrics` of [`crate::admin_app`] (none in tests).
    pub metrics: Option<PrometheusHandle>,
    /// Tamper-evidence endpoints: checkpoint JWKS, verify client.
    pub integrity: Arc<Integrity>,
    /// Requests served at a time (`CUSTOS_QUERY_MAX_CONCURRENT_REQUESTS`).
    pub requests: RequestLimit,
    /// Exports per caller (`CUSTOS_QUERY_EXPORTS_PER_CALLER`).
    pub exports: ExportSlots,
    /// "Now" of the review queue and the alert actions (the system clock; tests may fix it).
    pub clock: Arc<dyn Clock>,
    /// The writers of the alert actions and review decisions.
    pub workflow: Arc<Workflow>,
}

impl custos_auth::oidc::AuthState for AppState {
    type Rejection = ApiError;

    fn authenticator(&self) -> &Authenticator {
        &self.auth
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("auth", &self.auth)
            .field("keys", &self.keys)
            .field("settings", &self.settings)
            .field("integrity", &self.integrity)
            .finish_non_exhaustive()
    }
}

/// Reader settings that only newer ClickHouse servers know; [`AppState::enable_optional_settings`]
/// switches each on when the server lists it in `system.settings`.
///
/// `use_skip_indexes_if_final_exact_mode = 0`: with `FINAL`, the exact mode widens a skip-index
/// selection (the `token_jti`, `session_id`, `user_sub` bloom filters) to every granule whose
/// primary-key range intersects it in other parts, in case a newer version of a row hides
/// there. Every version of an audit row is an identical replay of the same event, so no row
/// can change between versions and the widening only costs time (token trace: ~1 s to ~50 ms
/// on 10M rows).
pub const OPTIONAL_READER_SETTINGS: &[(&str, &str)] =
    &[("use_skip_indexes_if_final_exact_mode", "0")];

impl AppState {
    /// Probes the server for [`OPTIONAL_READER_SETTINGS`] and applies the known ones to the
    /// reader client. Returns the names applied; an unreachable server applies none.
    pub async fn enable_optional_settings(
        &mut self,
    ) -> Result<Vec<&'static str>, clickhouse::error::Error> {
        let mut applied = Vec::new();
        for (name, value) in OPTIONAL_READER_SETTINGS {
            let known: u64 = self
                .reader
                .query("SELECT count() FROM system.settings WHERE name = ?")
                .bind(*name)
                .fetch_one()
                .await?;
            if known > 0 {
                self.reader = self.reader.clone().with_setting(*name, *value);
                self.exporter = self.exporter.clone().with_setting(*name, *value);
                applied.push(*name);
            }
        }
        Ok(applied)
    }

    /// Validates the configuration and builds the state (no I/O).
    pub fn new(
        cfg: &QueryConfig,
        metrics: Option<PrometheusHandle>,
    ) -> Result<AppState, ConfigError> {
        cfg.validate()?;
        let reader = cfg
            .clickhouse
            .client(&cfg.reader_user, &cfg.reader_password);
        let exporter = cfg
            .clickhouse
            .endpoint
            .client(&cfg.reader_user, &cfg.reader_password)
            .with_setting("max_execution_time", cfg.export_timeout_secs.to_string());
        let writer = cfg
            .clickhouse
            .client(&cfg.writer_user, &cfg.writer_password)
            .with_database(custos_schemas::migrations::DATABASE);
        Ok(AppState {
            auth: Arc::new(Authenticator::new(&cfg.oidc)?),
            reader,
            exporter,
            audit: QueryAudit::with_group_commit(writer.clone(), cfg.group_commit()),
            keys: Arc::new(cfg.keys.key_ring()?),
            settings: Arc::new(Settings {
                limits: Limits {
                    default_tenant: cfg.default_tenant.clone(),
                    page_default: cfg.page_default,
                    page_max: cfg.page_max,
                    export_max_rows: cfg.export_max_rows,
                    default_window_days: cfg.default_window_days,
                },
                excluded_purposes: cfg
                    .disclosure_excluded_purposes
                    .iter()
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect(),
                revocation_grace_secs: cfg.revocation_grace_secs,
                public_url: cfg.public_url.clone(),
                request_timeout: cfg.clickhouse.timeout() + Duration::from_secs(5),
                export_timeout: Duration::from_secs(cfg.export_timeout_secs),
                review_due: cfg.review_due()?,
            }),
            metrics,
            integrity: Arc::new(Integrity::new(cfg)?),
            requests: RequestLimit::new(cfg.max_concurrent_requests as usize),
            exports: ExportSlots::new(cfg.exports_per_caller as usize),
            clock: Arc::new(SystemClock),
            workflow: Arc::new(Workflow {
                writer,
                actions: Ledger::new(),
                decisions: Ledger::new(),
                gate: tokio::sync::Mutex::new(()),
            }),
        })
    }
}

/// Integrity settings and resources.
pub struct Integrity {
    jwks: Option<Value>,
    verifier: clickhouse::Client,
    gate: Semaphore,
    /// Most records a proof path holds.
    pub proof_max_records: u64,
    /// Time limit of one verify run.
    pub verify_timeout: Duration,
    /// Audit-row retention: records gone before now minus this may have been pruned.
    pub retention: chrono::Duration,
    /// The same retention in days (the ledger's horizon).
    pub retention_days: u32,
}

impl std::fmt::Debug for Integrity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integrity")
            .field("jwks", &self.jwks.is_some())
            .field("proof_max_records", &self.proof_max_records)
            .field("verify_timeout", &self.verify_timeout)
            .finish_non_exhaustive()
    }
}

impl Integrity {
    /// Loads the checkpoint JWKS (if configured) and prepares the verify client: the reader
    /// account with `max_execution_time` raised to the verify time limit.
    pub fn new(cfg: &QueryConfig) -> Result<Integrity, ConfigError> {
        let verifier = clickhouse::Client::default()
            .with_url(cfg.clickhouse.url())
            .with_user(&cfg.reader_user)
            .with_password(&cfg.reader_password)
            .with_setting("max_execution_time", cfg.verify_timeout_secs.to_string());
        Ok(Integrity {
            jwks: cfg.checkpoint_jwks()?,
            verifier,
            // One verification at a time: each one reads whole chains.
            gate: Semaphore::new(1),
            proof_max_records: cfg.proof_max_records,
            verify_timeout: Duration::from_secs(cfg.verify_timeout_secs),
            retention: chrono::Duration::days(i64::from(cfg.retention_days)),
            retention_days: cfg.retention_days,
        })
    }

    /// The read-only client of verifications (its time limit raised to theirs).
    pub fn verifier(&self) -> &clickhouse::Client {
        &self.verifier
    }

    /// Waits for the one verification slot (each reads whole chains).
    pub async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.gate
            .acquire()
            .await
            .map_err(|_| ApiError::Internal("verify gate closed".into()))
    }

    /// The served JWKS, if configured.
    pub fn jwks(&self) -> Option<&Value> {
        self.jwks.as_ref()
    }
}
