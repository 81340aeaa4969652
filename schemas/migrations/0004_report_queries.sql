-- Every report query the query API answered (HIPAA 164.312(b): the audit is itself audited).
-- Parameters are stored with patient and user identifiers pseudonymized. A streamed export
-- writes a `streaming` row before its first byte and a final row (`complete` or `aborted`,
-- with the rows sent) under the same query_id; ReplacingMergeTree keeps the latest
-- (version `recorded_at`), so reports read with FINAL.
CREATE TABLE IF NOT EXISTS custos.report_queries
(
    query_id      String,
    asked_at      DateTime64(3, 'UTC'),
    recorded_at   DateTime64(3, 'UTC'),
    caller_sub    String,
    caller_issuer LowCardinality(String),
    caller_client LowCardinality(String),
    caller_roles  Array(LowCardinality(String)),
    report        LowCardinality(String),
    tenant        LowCardinality(String),
    parameters    String,
    format        LowCardinality(String),
    status        LowCardinality(String),
    rows_returned UInt64,
    duration_ms   UInt32
)
ENGINE = ReplacingMergeTree(recorded_at)
PARTITION BY toYYYYMM(asked_at)
ORDER BY (asked_at, query_id)
TTL toDateTime(asked_at) + INTERVAL {retention_days} DAY;
