//! # custos-query
//!
//! The Custos query API: who-accessed-what reports for compliance officers, privacy
//! officers and incident responders, read from `custos.audit_events FINAL` with a
//! read-only ClickHouse account, secured with OIDC bearer JWTs and roles, and itself
//! audited (every report query is recorded in `custos.report_queries` with the writer
//! account, acknowledged before it is answered; see [`custos_auth::audit`]).
//!
//! - authentication, roles and the query audit come from [`custos_auth`];
//! - [`reports`]: the SQL builders, pure functions over validated parameters;
//! - [`export`]: JSON pages with cursors, CSV / NDJSON streaming;
//! - [`fhir`]: the FHIR R4 endpoint: `metadata`, AuditEvent read and search (IHE BALP);
//! - [`ledger`]: the ledger verification of the query audit, consent history and revocations;
//! - [`integrity`]: chain verification, membership proofs and the checkpoint JWKS;
//! - [`limits`]: the global concurrency limit and the per-caller export limit.
//!
//! `/metrics` is not on the public router: [`admin_app`] serves it on
//! `CUSTOS_QUERY_ADMIN_ADDR` (loopback by default).
//!
//! Tests drive [`app`] without a socket:
//!
//! ```no_run
//! # async fn demo(cfg: custos_query::config::QueryConfig) -> anyhow::Result<()> {
//! use tower::ServiceExt;
//! let state = custos_query::AppState::new(&cfg, None)?;
//! let resp = custos_query::app(state)
//!     .oneshot(axum::http::Request::get("/healthz").body(axum::body::Body::empty())?)
//!     .await?;
//! assert_eq!(resp.status(), 200);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod error;
pub mod export;
pub mod fhir;
pub mod integrity;
pub mod ledger;
pub mod limits;
pub mod openapi;
pub mod params;
pub mod reports;
pub mod sql;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Json, Router};
use custos_runtime::ops;
use custos_runtime::telemetry::request_trace_layer;
use custos_schemas::KeyRing;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;

use crate::config::{ConfigError, QueryConfig};
use crate::error::ApiError;
use crate::limits::{ExportSlots, RequestLimit};
use crate::params::Limits;
use custos_auth::audit::QueryAudit;
use custos_auth::oidc::Authenticator;

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
    /// Prometheus handle for `/metrics` of [`admin_app`] (none in tests).
    pub metrics: Option<PrometheusHandle>,
    /// Tamper-evidence endpoints: checkpoint JWKS, verify client.
    pub integrity: Arc<integrity::Integrity>,
    /// Requests served at a time (`CUSTOS_QUERY_MAX_CONCURRENT_REQUESTS`).
    pub requests: RequestLimit,
    /// Exports per caller (`CUSTOS_QUERY_EXPORTS_PER_CALLER`).
    pub exports: ExportSlots,
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
            }),
            metrics,
            integrity: Arc::new(integrity::Integrity::new(cfg)?),
            requests: RequestLimit::new(cfg.max_concurrent_requests as usize),
            exports: ExportSlots::new(cfg.exports_per_caller as usize),
        })
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let store = s.reader.query("SELECT 1").fetch_one::<u8>().await.is_ok();
    let audit_table = s
        .reader
        .query("SELECT count() FROM custos.report_queries WHERE 0")
        .fetch_one::<u64>()
        .await
        .is_ok();
    // At most one JWKS fetch per CUSTOS_OIDC_JWKS_REFRESH_MIN_SECS, however often probed.
    let keys = s.auth.ready().await;
    let ready = store && audit_table && keys;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"status": if ready { "ready" } else { "not ready" },
            "clickhouse": store, "query_audit_table": audit_table, "jwks": keys})),
    )
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    ops::metrics_text(s.metrics.as_ref())
}

async fn openapi_json() -> impl IntoResponse {
    Json(openapi::ApiDoc::openapi())
}

/// The operations endpoints (`/metrics`), served on `CUSTOS_QUERY_ADMIN_ADDR` only.
pub fn admin_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(ops::healthz))
        .fallback(error::not_found)
        .with_state(state)
}

/// The whole public API (without `/metrics`: see [`admin_app`]).
pub fn app(state: AppState) -> Router {
    let timeout = state.settings.request_timeout;
    let verify_timeout = state.integrity.verify_timeout;
    // Everything but the probes counts against the concurrency limit, an export until its
    // stream ends.
    let limited = Router::new()
        .merge(api::router())
        .merge(integrity::router())
        .route("/fhir/metadata", get(fhir::capability::metadata))
        .route("/fhir/AuditEvent", get(fhir::search))
        .route("/fhir/AuditEvent/{id}", get(fhir::read::read))
        .route("/openapi.json", get(openapi_json))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            timeout,
        ))
        // Verification reads whole chains: its own, longer timeout.
        .merge(integrity::verify_router(verify_timeout))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::limit_requests,
        ));
    Router::new()
        .merge(limited)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(readyz))
        .fallback(error::not_found)
        // Spans carry the path only: query strings hold raw patient ids.
        .layer(request_trace_layer())
        // Outermost: every error under /fhir, from any layer, is an OperationOutcome.
        .layer(axum::middleware::from_fn(fhir::outcome::outcomes))
        .with_state(state)
}
