//! # custos-feed
//!
//! The FHIR audit feed: audit sources (FHIR servers, gateways) send IHE BALP `AuditEvent`s
//! over HTTP, one at a time or in `batch` / `transaction` Bundles (ATNA "Record Audit Event"
//! over FHIR R4), and the feed writes them to Kafka (`custos.gateway-events`), where the
//! ingest stores them like any gateway event. Kafka stays the one ingress: the feed never
//! writes ClickHouse, and it answers only after the broker acknowledged.
//!
//! - [`api`]: the FHIR interactions and their answers;
//! - [`resource`]: the checks of one AuditEvent (the ingest's decoder), its id and its key;
//! - [`publish`]: the idempotent, acknowledged producer;
//! - [`outcome`]: every refusal as an `OperationOutcome`;
//! - [`config`]: the `CUSTOS_FEED_*` settings;
//! - [`tokens`]: the short memory of verified bearer tokens.
//!
//! Callers authenticate with a bearer token of the configured issuer (`CUSTOS_OIDC_*`,
//! through [`custos_auth`]) that carries the write-only role `audit_source`; the report
//! APIs grant that role nothing, so a source can write and never read.
//!
//! Tests drive [`app`] without a socket:
//!
//! ```no_run
//! # async fn demo(cfg: custos_feed::config::FeedConfig) -> anyhow::Result<()> {
//! use tower::ServiceExt;
//! let state = custos_feed::AppState::new(&cfg, None)?;
//! let resp = custos_feed::app(state)
//!     .oneshot(axum::http::Request::get("/healthz").body(axum::body::Body::empty())?)
//!     .await?;
//! assert_eq!(resp.status(), 200);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod outcome;
pub mod publish;
pub mod resource;
pub mod tokens;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use custos_auth::oidc::Authenticator;
use custos_runtime::ops;
use custos_runtime::telemetry::request_trace_layer;
use custos_schemas::DecodeLimits;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use crate::config::{ConfigError, FeedConfig};
use crate::outcome::FeedError;
use crate::publish::Publisher;
use crate::tokens::TokenCache;

/// Most bearer tokens remembered at once (see [`tokens`]).
pub const TOKEN_CACHE_ENTRIES: usize = 1024;

/// What the handlers share.
#[derive(Debug)]
pub struct Shared {
    /// Bearer-token verification.
    pub auth: Authenticator,
    /// Tokens verified recently (`CUSTOS_FEED_TOKEN_CACHE_SECS`).
    pub tokens: TokenCache,
    /// The Kafka producer.
    pub publisher: Publisher,
    /// The decoder's limits (`CUSTOS_FEED_MAX_EVENT_BYTES`).
    pub limits: DecodeLimits,
    /// `CUSTOS_FEED_MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
    /// `CUSTOS_FEED_MAX_BUNDLE_ENTRIES`.
    pub max_bundle_entries: usize,
    /// `CUSTOS_FEED_PUBLIC_URL`, without a trailing slash.
    pub public_url: String,
    /// Requests in flight (`CUSTOS_FEED_MAX_CONCURRENT_REQUESTS`).
    pub permits: Arc<Semaphore>,
    /// `CUSTOS_FEED_REQUEST_TIMEOUT_SECS`.
    pub request_timeout: Duration,
    /// The Prometheus recorder, for `/metrics`.
    pub metrics: Option<PrometheusHandle>,
}

/// The application state (cheap to clone).
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Builds the state from validated settings (no I/O: Kafka and the JWKS are reached on
    /// first use).
    pub fn new(
        cfg: &FeedConfig,
        metrics: Option<PrometheusHandle>,
    ) -> Result<AppState, ConfigError> {
        cfg.validate()?;
        Ok(AppState(Arc::new(Shared {
            auth: Authenticator::new(&cfg.oidc)?,
            tokens: TokenCache::new(
                Duration::from_secs(cfg.token_cache_secs),
                TOKEN_CACHE_ENTRIES,
            ),
            publisher: Publisher::new(cfg)?,
            limits: DecodeLimits {
                max_bytes: cfg.max_event_bytes,
            },
            max_body_bytes: cfg.max_body_bytes,
            max_bundle_entries: cfg.max_bundle_entries,
            public_url: cfg.public_url.trim_end_matches('/').to_owned(),
            permits: Arc::new(Semaphore::new(cfg.max_concurrent_requests)),
            request_timeout: Duration::from_secs(cfg.request_timeout_secs),
            metrics,
        })))
    }

    /// Ready when the token keys are loaded and the broker answers for the topic.
    pub async fn ready(&self) -> Result<(), &'static str> {
        if !self.auth.ready().await {
            return Err("token keys (JWKS) not available");
        }
        if !self.publisher.reachable().await {
            return Err("Kafka not reachable");
        }
        Ok(())
    }
}

/// Middleware: at most `CUSTOS_FEED_MAX_CONCURRENT_REQUESTS` requests at a time (more get
/// 503 with `Retry-After` at once), each within `CUSTOS_FEED_REQUEST_TIMEOUT_SECS`.
async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Ok(_permit) = state.permits.clone().try_acquire_owned() else {
        return FeedError::Overloaded.into_response();
    };
    match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => FeedError::Unavailable.into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    ops::readiness(state.ready().await)
}

async fn not_found() -> Response {
    FeedError::NotFound.into_response()
}

async fn method_not_allowed() -> Response {
    FeedError::MethodNotAllowed.into_response()
}

/// The public router: the FHIR endpoints under `/fhir`, `/healthz` and `/readyz`.
pub fn app(state: AppState) -> Router {
    let fhir = Router::new()
        .route("/fhir/AuditEvent", post(api::create))
        .route("/fhir", post(api::bundle))
        .route("/fhir/", post(api::bundle))
        .route("/fhir/metadata", get(api::metadata))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), limit));
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(readyz))
        .merge(fhir)
        .layer(request_trace_layer())
        .with_state(state)
}

/// The admin router: `/healthz`, `/readyz` and `/metrics` (`CUSTOS_FEED_ADMIN_ADDR`).
pub fn admin_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { ops::metrics_text(s.metrics.as_ref()) }),
        )
        .with_state(state)
}

/// Registers the feed's metrics at zero, so dashboards see them before the first request.
pub fn describe_metrics() {
    metrics::counter!("custos_feed_events_accepted_total").absolute(0);
    metrics::describe_counter!(
        "custos_feed_events_accepted_total",
        "AuditEvents acknowledged by the broker"
    );
    metrics::describe_counter!(
        "custos_feed_refused_total",
        "Requests and Bundle entries refused, by reason"
    );
    metrics::describe_histogram!(
        "custos_feed_produce_seconds",
        "Time from producing a request's records to the broker's acknowledgement"
    );
}
