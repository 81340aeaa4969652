//! # custos-consent
//!
//! Folds consent events into state, records their history immutably in ClickHouse, and
//! pushes revocations (on withdrawal, period expiry and user deprovisioning) to the
//! authorization server and to gateways, recording every attempt and receipt.
//!
//! - [`consumer`]: Kafka (consent topic + AS-events topic) → [`state`] fold → ClickHouse →
//!   commit; replays are skipped and never push twice.
//!   Every input, FHIR R4 `Consent` resources included, is decoded by
//!   [`custos_schemas::decode()`], the decoder ingest uses
//!   ([`custos_schemas::fhir_consent`] has the FHIR mapping).
//! - [`scopes`]: SMART v1/v2 scope parsing and coverage.
//! - [`dispatcher`]: durable per-target push with retries; adapters [`keycloak`] (Admin REST),
//!   [`ssf`] + [`set`] (CAEP session-revoked SETs, RFC 8417/8935/9493) and [`publish`]
//!   (`custos.revocations`).
//! - [`seal`]: AEAD sealing of the raw identifiers a push needs.
//! - [`api`]: the privacy API, SSF metadata, JWKS and health; metrics on the admin address.
//! - [`audit`]: the privacy API's own audit (the query API's `custos.report_queries`).
//! - [`idempotency`]: repeated revocation requests answered with the first revocation.
//! - [`response`]: the opt-in automatic response to high-severity token theft: alerts of
//!   `custos-alerts` marked `custos-response: revoke-session` revoke the session through the
//!   dispatcher, with the receipt recorded on the alert (`custos.alert_actions`).
//!
//! Readiness, the ops routes, metrics, shutdown and the Kafka, ClickHouse and key settings
//! come from [`custos_runtime`].
#![deny(missing_docs)]

pub mod api;
pub mod audit;
pub mod config;
pub mod consumer;
pub mod dispatcher;
pub mod idempotency;
pub mod keycloak;
pub mod publish;
pub mod push;
pub mod response;
pub mod rows;
pub mod scopes;
pub mod seal;
pub mod service;
pub mod set;
pub mod ssf;
pub mod state;
pub mod store;
