//! Applies the versioned DDL from `custos_schemas::migrations` with the admin account,
//! recording each version and checksum in `custos.schema_migrations`.

use clickhouse::Client;
use custos_schemas::migrations::{MIGRATIONS, MIGRATIONS_TABLE_DDL};
use serde::Deserialize;
use thiserror::Error;
use tracing::info;

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
    let client = Client::default()
        .with_url(&cfg.clickhouse_url)
        .with_user(&cfg.admin_user)
        .with_password(&cfg.admin_password);
    client
        .query("CREATE DATABASE IF NOT EXISTS custos")
        .execute()
        .await?;
    client.query(MIGRATIONS_TABLE_DDL).execute().await?;
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
