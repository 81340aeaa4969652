//! Applies the versioned DDL from `custos_schemas::migrations` with the admin account,
//! recording each version and checksum in `custos.schema_migrations`.

use clickhouse::Client;
use custos_schemas::migrations::{MIGRATIONS, MIGRATIONS_TABLE_DDL};
use serde::Deserialize;
use std::time::{Duration, Instant};
use thiserror::Error;

use tracing::{info, warn};

use crate::config::MigrateConfig;

/// Migration failures.
#[derive(Debug, Error)]
pub enum MigrateError {
    /// ClickHouse refused or could not be reached.
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// An applied migration's file was edited afterwards.
    #[error("migration {version} was applied with a different checksum; migrations are immutable, add a new one")]
    ChecksumMismatch {
        /// The version.
        version: u32,
    },
    /// Retention out of range.
    #[error("retention must be 1..=36500 days")]
    Retention,
    /// Another migrator held the lock for longer than the wait.
    #[error("another migrator holds custos.migration_lock; waited {0:?}")]
    LockTimeout(Duration),
}

/// The lock table: created by the one migrator that runs, dropped when it is done.
const LOCK_TABLE: &str = "custos.migration_lock";
/// A lock older than this is taken to belong to a migrator that died, and is broken.
const STALE_LOCK: Duration = Duration::from_secs(3600);
/// How long a migrator waits for another one.
const LOCK_WAIT: Duration = Duration::from_secs(3 * 3600);

/// Takes the migration lock: `CREATE TABLE` without `IF NOT EXISTS` succeeds for exactly one
/// caller. Migrations that rebuild a table (0006) must not run twice at once.
async fn lock(client: &Client) -> Result<(), MigrateError> {
    let start = Instant::now();
    let mut told = false;
    loop {
        let created = client
            .query(&format!(
                "CREATE TABLE {LOCK_TABLE} (holder String, since DateTime DEFAULT now()) \
                 ENGINE = TinyLog"
            ))
            .execute()
            .await;
        match created {
            Ok(()) => return Ok(()),
            Err(e) if e.to_string().contains("already exists") => {
                let age: u64 = client
                    .query(
                        "SELECT toUInt64(greatest(0, dateDiff('second', metadata_modification_time, now()))) \
                         FROM system.tables WHERE database = 'custos' AND name = 'migration_lock'",
                    )
                    .fetch_optional()
                    .await?
                    .unwrap_or(0);
                if age > STALE_LOCK.as_secs() {
                    warn!(age_secs = age, "breaking a stale migration lock");
                    client
                        .query(&format!("DROP TABLE IF EXISTS {LOCK_TABLE}"))
                        .execute()
                        .await?;
                    continue;
                }
                if start.elapsed() > LOCK_WAIT {
                    return Err(MigrateError::LockTimeout(LOCK_WAIT));
                }
                if !told {
                    info!("another migrator is running; waiting for its lock");
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Applied {
    version: u32,
    checksum: String,
}

/// Applies every pending migration; returns the versions applied now.
pub async fn migrate(cfg: &MigrateConfig) -> Result<Vec<u32>, MigrateError> {
    if !(1..=36_500).contains(&cfg.retention_days) {
        return Err(MigrateError::Retention);
    }
    let client = cfg.clickhouse.client(&cfg.admin_user, &cfg.admin_password);
    client
        .query("CREATE DATABASE IF NOT EXISTS custos")
        .execute()
        .await?;
    client.query(MIGRATIONS_TABLE_DDL).execute().await?;
    lock(&client).await?;
    let result = apply_pending(&client, cfg).await;
    let unlocked = client
        .query(&format!("DROP TABLE IF EXISTS {LOCK_TABLE}"))
        .execute()
        .await;
    let done = result?;
    unlocked?;
    Ok(done)
}

/// Applies the pending migrations (the caller holds the lock).
async fn apply_pending(client: &Client, cfg: &MigrateConfig) -> Result<Vec<u32>, MigrateError> {
    let applied: Vec<Applied> = client
        // Two migrators racing may both record a version: read one row per version.
        .query(
            "SELECT version, any(checksum) AS checksum FROM custos.schema_migrations \
             GROUP BY version ORDER BY version",
        )
        .fetch_all()
        .await?;
    let mut done = Vec::new();
    for m in MIGRATIONS {
        if let Some(a) = applied.iter().find(|a| a.version == m.version) {
            if a.checksum != m.checksum() {
                return Err(MigrateError::ChecksumMismatch { version: m.version });
            }
            continue;
        }
        let in_place = match m.done_when {
            Some(guard) => client.query(guard).fetch_one::<u64>().await? > 0,
            None => false,
        };
        if in_place {
            info!(
                version = m.version,
                name = m.name,
                "migration already in effect; recording it"
            );
        } else {
            for stmt in m.statements(cfg.retention_days) {
                client.query(&stmt).execute().await?;
            }
        }
        client
            .query(
                "INSERT INTO custos.schema_migrations (version, name, checksum) VALUES (?, ?, ?)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(m.checksum())
            .execute()
            .await?;
        info!(version = m.version, name = m.name, "applied migration");
        done.push(m.version);
    }
    Ok(done)
}
