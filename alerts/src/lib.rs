//! # custos-alerts
//!
//! Incident detection as a stage of the pipeline: consumes the input topics (the ingest's),
//! decodes each message exactly as the ingest does so an alert names the stored audit rows
//! (their event keys and pseudonyms), runs the detectors of [`custos_detect`], and writes
//! alerts to `custos.alerts` (chained by the ledger) and the `custos.alerts` topic.
//!
//! - [`pipeline`]: consume → decode → engine → batches; saves the engine's state with the
//!   offsets it covers and replays from it after a restart (at least once, no doubled row);
//! - [`sink`]: ClickHouse, then the alerts topic, then the SIEM outputs;
//! - [`outputs`]: per-tenant webhook (HMAC-SHA256 signed) and SSF/CAEP SETs, recorded as
//!   `notify` actions;
//! - [`review`]: the overdue break-glass review sweep, with an injectable [`review::Clock`];
//! - [`store`]: the ClickHouse statements; [`alert`]: the alert rows and their JSON;
//! - [`config`], [`service`]: settings and wiring.
//!
//! Readiness, the ops routes, metrics, shutdown and the Kafka, ClickHouse and key settings
//! come from [`custos_runtime`].
#![deny(missing_docs)]

pub mod alert;
pub mod config;
pub mod outputs;
pub mod pipeline;
pub mod review;
pub mod service;
pub mod sink;
pub mod store;
