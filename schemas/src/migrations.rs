//! Versioned ClickHouse DDL. Each migration is a `.sql` file of `;`-terminated statements
//! using the template variable `{retention_days}` (rendered from a validated integer,
//! never from free text). The runner (in `custos-ingest migrate`) records applied
//! versions with a checksum in `custos.schema_migrations`. Every statement is idempotent
//! (`IF NOT EXISTS`), so a rerun is harmless, unless the migration has a [`Migration::done_when`]
//! guard: a query that tells whether its effect is already in place (a table rebuild), in
//! which case the runner records it without running the statements again.

use sha2::{Digest, Sha256};

/// The database all Custos tables live in (the users.xml grants name it).
pub const DATABASE: &str = "custos";

/// DDL of the table that records applied migrations.
pub const MIGRATIONS_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS custos.schema_migrations \
(version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) \
ENGINE = ReplacingMergeTree ORDER BY version";

/// Default retention: six years (HIPAA 164.316(b)(2) documentation retention).
pub const DEFAULT_RETENTION_DAYS: u32 = 6 * 366;

/// One migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Monotonic version.
    pub version: u32,
    /// File stem.
    pub name: &'static str,
    /// Template SQL.
    pub sql: &'static str,
    /// A `SELECT count() ...` that returns a positive count when the migration's effect is
    /// already in place; the runner then skips the statements (needed by the statements
    /// that are not idempotent by themselves, such as `EXCHANGE TABLES`).
    pub done_when: Option<&'static str>,
}

/// All migrations, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_audit_events",
        sql: include_str!("../migrations/0001_audit_events.sql"),
        done_when: None,
    },
    Migration {
        version: 2,
        name: "0002_ingest_rejections",
        sql: include_str!("../migrations/0002_ingest_rejections.sql"),
        done_when: None,
    },
    Migration {
        version: 3,
        name: "0003_chain",
        sql: include_str!("../migrations/0003_chain.sql"),
        done_when: None,
    },
    Migration {
        version: 4,
        name: "0004_report_queries",
        sql: include_str!("../migrations/0004_report_queries.sql"),
        done_when: None,
    },
    Migration {
        version: 5,
        name: "0005_consent",
        sql: include_str!("../migrations/0005_consent.sql"),
        done_when: None,
    },
    Migration {
        version: 6,
        name: "0006_audit_layout",
        sql: include_str!("../migrations/0006_audit_layout.sql"),
        done_when: Some(
            "SELECT count() FROM system.tables WHERE database = 'custos' \
             AND name = 'audit_events' AND partition_key = 'toYear(event_time)'",
        ),
    },
    Migration {
        version: 7,
        name: "0007_chain_hint",
        sql: include_str!("../migrations/0007_chain_hint.sql"),
        done_when: None,
    },
    Migration {
        version: 8,
        name: "0008_chain_binary",
        sql: include_str!("../migrations/0008_chain_binary.sql"),
        done_when: Some(
            "SELECT count() FROM system.columns WHERE database = 'custos' \
             AND table = 'audit_events' AND name = 'record_hash' AND type = 'FixedString(32)'",
        ),
    },
    Migration {
        version: 9,
        name: "0009_token_index",
        sql: include_str!("../migrations/0009_token_index.sql"),
        done_when: Some(
            "SELECT count() FROM system.tables WHERE database = 'custos' \
             AND name = 'audit_by_token' AND comment = '0009 backfill complete'",
        ),
    },
    Migration {
        version: 10,
        name: "0010_chain_heads",
        sql: include_str!("../migrations/0010_chain_heads.sql"),
        done_when: Some(
            "SELECT count() FROM system.tables WHERE database = 'custos' \
             AND name = 'chain_heads' AND comment = '0010 backfill complete'",
        ),
    },
    Migration {
        version: 11,
        name: "0011_store_refused",
        sql: include_str!("../migrations/0011_store_refused.sql"),
        done_when: None,
    },
    Migration {
        version: 12,
        name: "0012_checkpoint_retention",
        sql: include_str!("../migrations/0012_checkpoint_retention.sql"),
        done_when: Some(
            "SELECT count() FROM system.tables WHERE database = 'custos' \
             AND name = 'chain_checkpoints' AND position(engine_full, ' TTL ') = 0",
        ),
    },
    Migration {
        version: 13,
        name: "0013_ledger",
        sql: include_str!("../migrations/0013_ledger.sql"),
        done_when: None,
    },
    Migration {
        version: 14,
        name: "0014_alerts",
        sql: include_str!("../migrations/0014_alerts.sql"),
        done_when: None,
    },
];

impl Migration {
    /// The SQL statements with the template rendered.
    pub fn statements(&self, retention_days: u32) -> Vec<String> {
        let rendered = self
            .sql
            .replace("{retention_days}", &retention_days.to_string());
        let without_comments: String = rendered
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        without_comments
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Checksum of the template (detects an applied migration edited afterwards).
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_increasing_and_render() {
        let mut last = 0;
        for m in MIGRATIONS {
            assert!(m.version > last);
            last = m.version;
            let stmts = m.statements(30);
            assert!(!stmts.is_empty());
            for s in &stmts {
                assert!(!s.contains('{'), "unrendered template in {}", m.name);
                assert!(
                    m.done_when.is_some() || s.contains("IF NOT EXISTS"),
                    "not idempotent: {s}"
                );
            }
        }
    }
}
