//! # custos-runtime
//!
//! What every Custos service needs around its own work, written once: the services stand
//! side by side on this crate and never depend on each other for it.
//!
//! - [`telemetry`]: tracing set-up (`CUSTOS_LOG`, `CUSTOS_LOG_FORMAT`) and the HTTP request
//!   span that records the path only (query strings hold raw patient identifiers);
//! - [`metrics`]: the Prometheus recorder with the one documented bucket list;
//! - [`health`]: readiness flags and the reason `/readyz` gives;
//! - [`ops`]: the operational routes `/healthz`, `/readyz`, `/metrics`, and serving a router
//!   until shutdown;
//! - [`shutdown`]: SIGTERM / SIGINT handling;
//! - [`clickhouse`]: the shared ClickHouse settings (`CUSTOS_CLICKHOUSE_URL`,
//!   `CUSTOS_CLICKHOUSE_TIMEOUT_SECS`);
//! - [`keys`]: the pseudonym-key settings (`CUSTOS_PSEUDONYM_*`) and the one `key_ring()`;
//! - [`kafka`]: the Kafka settings (`CUSTOS_KAFKA_BROKERS`) and every client profile;
//! - [`keygen`]: P-256 signing-key generation (checkpoint and SET keys);
//! - [`retry`]: the one retry policy (capped exponential backoff with jitter).
#![deny(missing_docs)]

pub mod clickhouse;
pub mod health;
pub mod kafka;
pub mod keygen;
pub mod keys;
pub mod metrics;
pub mod ops;
pub mod retry;
pub mod review;
pub mod shutdown;
pub mod telemetry;

use thiserror::Error;

/// Errors while starting a service's runtime (before its own work begins).
#[derive(Debug, Error)]
pub enum StartupError {
    /// The async runtime could not be built.
    #[error("cannot build the async runtime: {0}")]
    Runtime(std::io::Error),
    /// The metrics recorder could not be installed.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The signal handlers could not be installed.
    #[error(transparent)]
    Signals(#[from] crate::shutdown::SignalError),
}

/// The multi-threaded async runtime of a service; `worker_threads` of `None` takes one per
/// core.
pub fn async_runtime(
    worker_threads: Option<usize>,
) -> Result<tokio::runtime::Runtime, StartupError> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    builder.enable_all().build().map_err(StartupError::Runtime)
}
