//! Ingest configuration: every knob has a flag and an environment variable, and
//! [`IngestConfig::validate`] checks the combination before anything connects.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use custos_integrity::checkpoint::Signer256;
use custos_runtime::clickhouse::{ClickHouseArgs, ClickHouseUrl};
use custos_runtime::kafka::KafkaArgs;
use custos_runtime::keys::{KeyRingLoadError, PseudonymKeyArgs};
use custos_schemas::migrations::DEFAULT_RETENTION_DAYS;

use crate::checkpoints::CheckpointPolicy;
use thiserror::Error;

/// Errors in the configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The pseudonymization key ring could not be loaded.
    #[error(transparent)]
    Keys(#[from] KeyRingLoadError),
    /// The key file could not be read.
    #[error("cannot read key file: {0}")]
    KeyFile(std::io::Error),
}

/// Settings of `custos-ingest run`.
#[derive(Debug, Clone, Args)]
pub struct IngestConfig {
    /// Kafka settings.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group id.
    #[arg(long, env = "CUSTOS_INGEST_GROUP", default_value = "custos-ingest")]
    pub group_id: String,
    /// Input topics, comma separated.
    #[arg(
        long,
        env = "CUSTOS_INPUT_TOPICS",
        value_delimiter = ',',
        default_value = "custos.as-events,custos.gateway-events,custos.consent-events"
    )]
    pub topics: Vec<String>,
    /// Dead-letter topic.
    #[arg(long, env = "CUSTOS_DLQ_TOPIC", default_value = "custos.dlq")]
    pub dlq_topic: String,
    /// ClickHouse endpoint and request timeout.
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// Account for inserts (INSERT and SELECT on the ingest's own tables only).
    #[arg(
        long,
        env = "CUSTOS_CLICKHOUSE_WRITER_USER",
        default_value = "custos_writer"
    )]
    pub clickhouse_user: String,
    /// Password of the writer account (required: no password is built in).
    #[arg(
        long,
        env = "CUSTOS_CLICKHOUSE_WRITER_PASSWORD",
        hide_env_values = true
    )]
    pub clickhouse_password: String,
    /// Flush a batch at this many rows.
    #[arg(long, env = "CUSTOS_BATCH_MAX_ROWS", default_value_t = 50_000)]
    pub batch_max_rows: usize,
    /// Flush a batch at this many input bytes.
    #[arg(long, env = "CUSTOS_BATCH_MAX_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub batch_max_bytes: usize,
    /// Flush a non-empty batch after this many milliseconds.
    #[arg(long, env = "CUSTOS_BATCH_LINGER_MS", default_value_t = 2000)]
    pub batch_linger_ms: u64,
    /// Batches in flight between the consumer and the writer.
    #[arg(long, env = "CUSTOS_BATCH_QUEUE", default_value_t = 2)]
    pub batch_queue: usize,
    /// Largest accepted event, in bytes.
    #[arg(long, env = "CUSTOS_MAX_EVENT_BYTES", default_value_t = 1024 * 1024)]
    pub max_event_bytes: usize,
    /// Tenant for events that name none.
    #[arg(long, env = "CUSTOS_DEFAULT_TENANT", default_value = "default")]
    pub default_tenant: String,
    /// Pseudonymization keys.
    #[command(flatten)]
    pub keys: PseudonymKeyArgs,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "CUSTOS_INGEST_HTTP_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub http_addr: SocketAddr,
    /// Hash-chain the audit records (tamper evidence). Off only to measure its cost.
    #[arg(long, env = "CUSTOS_CHAIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub chain: bool,
    /// PKCS#8 PEM P-256 key that signs chain checkpoints (`custos-ingest keygen` makes one).
    /// Without it no checkpoints are signed.
    #[arg(long, env = "CUSTOS_CHECKPOINT_KEY_FILE")]
    pub checkpoint_key_file: Option<std::path::PathBuf>,
    /// Key id of the checkpoint key (the `kid` in the JWKS).
    #[arg(long, env = "CUSTOS_CHECKPOINT_KID", default_value = "custos-ck-1")]
    pub checkpoint_kid: String,
    /// Records per chain between checkpoints.
    #[arg(
        long,
        env = "CUSTOS_CHECKPOINT_EVERY_RECORDS",
        default_value_t = 10_000
    )]
    pub checkpoint_every_records: u64,
    /// Seconds before a chain's new records get a checkpoint.
    #[arg(long, env = "CUSTOS_CHECKPOINT_EVERY_SECS", default_value_t = 60)]
    pub checkpoint_every_secs: u64,
    /// Topic the checkpoints are published to.
    #[arg(
        long,
        env = "CUSTOS_CHECKPOINT_TOPIC",
        default_value = "custos.checkpoints"
    )]
    pub checkpoint_topic: String,
    /// Seconds to drain in-flight batches on shutdown or partition revocation.
    #[arg(long, env = "CUSTOS_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,
}

impl IngestConfig {
    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return bad("at least one input topic, none empty");
        }
        if self.topics.contains(&self.dlq_topic) {
            return bad("the DLQ topic must not be an input topic");
        }
        if !(1..=1_000_000).contains(&self.batch_max_rows) {
            return bad("CUSTOS_BATCH_MAX_ROWS must be 1..=1000000");
        }
        if self.batch_max_bytes < 1024 {
            return bad("CUSTOS_BATCH_MAX_BYTES must be at least 1024");
        }
        if self.batch_linger_ms == 0 || self.batch_linger_ms > 60_000 {
            return bad("CUSTOS_BATCH_LINGER_MS must be 1..=60000");
        }
        if self.batch_queue == 0 || self.batch_queue > 64 {
            return bad("CUSTOS_BATCH_QUEUE must be 1..=64");
        }
        if self.max_event_bytes < 1024 {
            return bad("CUSTOS_MAX_EVENT_BYTES must be at least 1024");
        }
        if self.checkpoint_key_file.is_some() && !self.chain {
            return bad("checkpoints need CUSTOS_CHAIN=true");
        }
        if self.checkpoint_every_records == 0 || self.checkpoint_every_secs == 0 {
            return bad("checkpoint intervals must be positive");
        }
        Ok(())
    }

    /// The checkpoint policy, when a key file is configured.
    pub fn checkpoint_policy(&self) -> Result<Option<CheckpointPolicy>, ConfigError> {
        let Some(path) = &self.checkpoint_key_file else {
            return Ok(None);
        };
        let pem = std::fs::read_to_string(path).map_err(ConfigError::KeyFile)?;
        let signer = Signer256::from_pem(&pem, &self.checkpoint_kid)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(Some(CheckpointPolicy {
            every_records: self.checkpoint_every_records,
            every: Duration::from_secs(self.checkpoint_every_secs),
            signer,
            topic: self.checkpoint_topic.clone(),
        }))
    }

    /// Linger as a duration.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.batch_linger_ms)
    }

    /// The writer account's client: database `custos`, requests bounded by the timeout.
    pub fn writer_client(&self) -> clickhouse::Client {
        self.clickhouse
            .client(&self.clickhouse_user, &self.clickhouse_password)
            .with_database(custos_schemas::migrations::DATABASE)
    }
}

/// Settings of `custos-ingest migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateConfig {
    /// ClickHouse endpoint.
    #[command(flatten)]
    pub clickhouse: ClickHouseUrl,
    /// Admin account (DDL rights).
    #[arg(
        long,
        env = "CUSTOS_CLICKHOUSE_ADMIN_USER",
        default_value = "custos_admin"
    )]
    pub admin_user: String,
    /// Admin password (required: no password is built in).
    #[arg(long, env = "CUSTOS_CLICKHOUSE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: String,
    /// Retention of audit rows in days (TTL), applied when a table is created.
    #[arg(long, env = "CUSTOS_RETENTION_DAYS", default_value_t = DEFAULT_RETENTION_DAYS)]
    pub retention_days: u32,
}
