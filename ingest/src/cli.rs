//! The `custos-ingest` command line: `run`, `migrate`, `verify`, `verify-ledger`, `keygen`,
//! `jwks`, and the offline commands' work (`main.rs` only wires them).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use custos_runtime::clickhouse::ClickHouseUrl;
use custos_runtime::keygen::KeygenArgs;
use thiserror::Error;

use crate::checkpoints::ExternalError;
use crate::config::{IngestConfig, MigrateConfig};
use crate::verify::{Report, Scope, VerifyError};

/// `custos-ingest`.
#[derive(Debug, Parser)]
#[command(name = "custos-ingest", version, about = "Custos audit ingest")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume the input topics into ClickHouse until SIGTERM or SIGINT.
    Run(Box<IngestConfig>),
    /// Apply pending ClickHouse migrations with the admin account.
    Migrate(MigrateConfig),
    /// Recompute every hash chain and check the signed checkpoints; exits 1 on any break.
    Verify(Box<VerifyArgs>),
    /// Check the query audit, consent history and revocations against their ledger chains;
    /// exits 1 on any finding.
    VerifyLedger(Box<VerifyLedgerArgs>),
    /// Write a new PKCS#8 PEM P-256 checkpoint signing key (mode 0600).
    Keygen(KeygenArgs),
    /// Print the JWKS of a checkpoint key (public part only).
    Jwks {
        /// The key file.
        #[arg(long, env = "CUSTOS_CHECKPOINT_KEY_FILE")]
        key_file: PathBuf,
        /// Key id.
        #[arg(long, env = "CUSTOS_CHECKPOINT_KID", default_value = "custos-ck-1")]
        kid: String,
    },
}

/// The ClickHouse endpoint and read-only account the verifications read with.
#[derive(Debug, Clone, clap::Args)]
pub struct ReaderArgs {
    /// ClickHouse endpoint.
    #[command(flatten)]
    pub clickhouse: ClickHouseUrl,
    /// Account to read with (SELECT is enough).
    #[arg(
        long,
        env = "CUSTOS_CLICKHOUSE_READER_USER",
        default_value = "custos_reader"
    )]
    pub user: String,
    /// Its password (required: no password is built in).
    #[arg(
        long,
        env = "CUSTOS_CLICKHOUSE_READER_PASSWORD",
        hide_env_values = true
    )]
    pub password: String,
}

impl ReaderArgs {
    /// A client of the read-only account.
    pub fn client(&self) -> clickhouse::Client {
        self.clickhouse.client(&self.user, &self.password)
    }
}

/// Settings of `custos-ingest verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The read-only account.
    #[command(flatten)]
    pub reader: ReaderArgs,
    /// JWKS file with the checkpoint public keys.
    #[arg(long, env = "CUSTOS_CHECKPOINT_JWKS_FILE")]
    pub jwks: Option<PathBuf>,
    /// Only this topic.
    #[arg(long)]
    pub topic: Option<String>,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Only records with event time at or after this RFC 3339 instant.
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only records with event time before this RFC 3339 instant.
    #[arg(long)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Retention of audit rows in days: records older than this may be gone (pruned).
    #[arg(long, env = "CUSTOS_RETENTION_DAYS", default_value_t = custos_schemas::migrations::DEFAULT_RETENTION_DAYS,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub retention_days: u32,
    /// The instant the retention horizon is counted back from (RFC 3339; default: now).
    #[arg(long)]
    pub now: Option<chrono::DateTime<chrono::Utc>>,
    /// Kafka bootstrap servers: when set, the checkpoint topic is read and cross-checked.
    #[arg(long, env = "CUSTOS_KAFKA_BROKERS")]
    pub brokers: Option<String>,
    /// Topic the checkpoints are published to.
    #[arg(
        long,
        env = "CUSTOS_CHECKPOINT_TOPIC",
        default_value = "custos.checkpoints"
    )]
    pub checkpoints_topic: String,
    /// Do not read the checkpoint topic even when brokers are configured.
    #[arg(long)]
    pub no_checkpoints_topic: bool,
    /// Seconds allowed to read the checkpoint topic to its end.
    #[arg(long, default_value_t = 60)]
    pub kafka_timeout_secs: u64,
    /// JSON list of checkpoints kept by an auditor (compact JWS strings or objects with a
    /// `jws` field), cross-checked like the topic's.
    #[arg(long)]
    pub anchors: Option<PathBuf>,
}

/// Settings of `custos-ingest verify-ledger`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyLedgerArgs {
    /// The read-only account.
    #[command(flatten)]
    pub reader: ReaderArgs,
    /// Only the rows of this tenant (and the chains holding entries of it).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Retention of the tables in days: rows and entries older than it may be gone.
    #[arg(long, env = "CUSTOS_RETENTION_DAYS", default_value_t = custos_schemas::migrations::DEFAULT_RETENTION_DAYS,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub retention_days: u32,
}

/// Errors of the offline commands (`verify`, `verify-ledger`, `jwks`).
#[derive(Debug, Error)]
pub enum CommandError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The JWKS file is not JSON.
    #[error("JWKS file: {0}")]
    Jwks(serde_json::Error),
    /// The checkpoint key could not be loaded.
    #[error("checkpoint key: {0}")]
    Key(#[from] custos_integrity::checkpoint::CheckpointError),
    /// Anchors or the checkpoint topic could not be read.
    #[error(transparent)]
    External(#[from] ExternalError),
    /// The verification failed to run.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The ledger could not be read.
    #[error("ledger: {0}")]
    Ledger(#[from] clickhouse::error::Error),
    /// The checkpoint-topic reader task failed.
    #[error("reading the checkpoint topic: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn read(path: &std::path::Path) -> Result<String, CommandError> {
    std::fs::read_to_string(path).map_err(|source| CommandError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Runs `verify`: every chain in scope, the checkpoints of the store, the topic and the
/// anchors.
pub async fn verify(args: &VerifyArgs) -> Result<Report, CommandError> {
    let client = args.reader.client();
    let jwks = match &args.jwks {
        Some(p) => Some(serde_json::from_str(&read(p)?).map_err(CommandError::Jwks)?),
        None => None,
    };
    let now = args.now.unwrap_or_else(chrono::Utc::now);
    let horizon = now - chrono::Duration::days(i64::from(args.retention_days));
    let scope = Scope {
        topic: args.topic.clone(),
        partition: args.partition,
        since_ms: args.since.map(|t| t.timestamp_millis()),
        until_ms: args.until.map(|t| t.timestamp_millis()),
        retention_horizon_ms: Some(horizon.timestamp_millis()),
    };
    let mut external = Vec::new();
    if let Some(path) = &args.anchors {
        external.extend(crate::checkpoints::read_anchor_file(path).map_err(ExternalError::from)?);
    }
    if let (Some(brokers), false) = (args.brokers.clone(), args.no_checkpoints_topic) {
        let topic = args.checkpoints_topic.clone();
        let timeout = std::time::Duration::from_secs(args.kafka_timeout_secs);
        external.extend(
            tokio::task::spawn_blocking(move || {
                crate::checkpoints::read_topic(&brokers, &topic, timeout)
            })
            .await??,
        );
    }
    Ok(crate::verify::verify_with(&client, &scope, jwks.as_ref(), &external).await?)
}

/// Runs `verify-ledger` ([`custos_integrity::ledger::verify`]).
pub async fn verify_ledger(
    args: &VerifyLedgerArgs,
) -> Result<custos_integrity::ledger::Report, CommandError> {
    let client = args.reader.client();
    let scope = custos_integrity::ledger::Scope {
        tenant: args.tenant.clone(),
        ..custos_integrity::ledger::Scope::all(args.retention_days)
    };
    Ok(custos_integrity::ledger::verify(&client, &scope).await?)
}

/// The public JWKS of a checkpoint key file.
pub fn jwks(key_file: &std::path::Path, kid: &str) -> Result<serde_json::Value, CommandError> {
    let signer = custos_integrity::checkpoint::Signer256::from_pem(&read(key_file)?, kid)?;
    Ok(signer.jwks())
}
