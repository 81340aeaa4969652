-- The ledger: a hash chain over the versioned record tables (report_queries, consent_history,
-- revocations), whose ReplacingMergeTree merges drop superseded versions and so cannot carry
-- a chain in their own rows. Every version a service writes gets one entry here, after the
-- row is acknowledged, on the writing process's own chain (`chain_id` = table/instance).
-- An entry commits to the row's key, the SHA-256 of its content, its retention time and the
-- previous entry, so an edited, deleted or inserted row, and a removed entry, are found by
-- `custos_integrity::ledger::verify`. Append-only MergeTree: a repeated entry stays visible.
-- Entries outlive their rows by one day, so a chain is only ever pruned from its start.
CREATE TABLE IF NOT EXISTS custos.ledger
(
    table_name  LowCardinality(String),
    chain_id    String,
    seq         UInt64,
    tenant      LowCardinality(String),
    row_key     String,
    row_hash    String,
    row_time    DateTime64(3, 'UTC'),
    recorded_at DateTime64(3, 'UTC'),
    prev_at     DateTime64(3, 'UTC'),
    prev_hash   String,
    entry_hash  String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(recorded_at)
ORDER BY (table_name, chain_id, seq)
TTL toDateTime(recorded_at) + INTERVAL {retention_days} DAY + INTERVAL 1 DAY;
