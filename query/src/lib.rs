//! # custos-query
//!
//! The Custos query API: who-accessed-what reports for compliance officers, privacy
//! officers and incident responders, read from `custos.audit_events FINAL` with a
//! read-only ClickHouse account, secured with OIDC bearer JWTs and roles, and itself
//! audited (every report query is recorded in `custos.report_queries` with the writer
//! account, acknowledged before it is answered; see [`custos_auth::audit`]).
//!
//! - authentication, roles and the query audit come from [`custos_auth`];
//! - [`catalogue`]: a report as one declaration, and the one path every report takes;
//! - [`reports`]: the reports, one file each, and their registry;
//! - [`alerts`]: the detectors' alerts and the incident responders' actions on them;
//! - [`reviews`]: the break-glass review queue and its decisions;
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

pub mod access;
pub mod alerts;
pub mod catalogue;
pub mod clock;
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
pub mod reviews;
pub mod sql;
pub mod state;

pub use state::{AppState, Settings, OPTIONAL_READER_SETTINGS};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Json, Router};
use custos_runtime::ops;
use custos_runtime::telemetry::request_trace_layer;
use serde_json::json;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;

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
        .merge(reports::router())
        .merge(alerts::router())
        .merge(reviews::router())
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
            state.requests.clone(),
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
