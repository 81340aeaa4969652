-- Token-trace latency (issue 4): a narrow lookup table from token id and AS session to the
-- primary key of custos.audit_events. audit_events is sorted by (tenant, patient, event_time,
-- event_key), so a trace filtered by token_jti or session_id alone went through the bloom
-- filters of every part; the trace now reads the few keys of one token or session from this
-- table and fetches exactly those rows from audit_events by its primary key.
--
-- One row per (event, kind): kind 'jti' keyed by the event's token_jti, kind 'session' keyed
-- by its session_id (its `jti` column carrying the event's token_jti, so the tokens of a
-- session are found here too). Events with neither add no row. Filled by the materialized view on every INSERT
-- into audit_events (the ingest pays one small extra insert per batch) and, for the rows
-- that existed before, by the backfill below.
--
-- An index row never decides what a report shows: the trace re-checks token_jti / session_id
-- on the audit_events row it fetches, so a stale index row (a record deleted by TTL) shows
-- nothing. A record missing from the index would be missed by the trace: rebuild it with the
-- backfill INSERT below after any rebuild of audit_events (an EXCHANGE TABLES leaves the view
-- attached to the old table).
--
-- Rerunnable: the table and the view are IF NOT EXISTS and a repeated backfill only adds
-- copies that ReplacingMergeTree collapses (every column is part of the key or derived from
-- the same event) and that an IN (...) lookup ignores. The last statement marks the table;
-- the guard (schemas/src/migrations.rs) then records the migration without running it again.
-- The view is created before the backfill, so a row ingested meanwhile is in one or both.
CREATE TABLE IF NOT EXISTS custos.audit_by_token
(
    tenant     LowCardinality(String),
    kind       LowCardinality(String),
    token      String,
    event_time DateTime64(3, 'UTC'),
    event_key  String,
    patient    String,
    jti        String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYear(event_time)
ORDER BY (tenant, kind, token, event_time, event_key)
TTL toDateTime(event_time) + INTERVAL {retention_days} DAY
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS custos.audit_by_token_mv TO custos.audit_by_token AS
SELECT tenant, tupleElement(k, 1) AS kind, tupleElement(k, 2) AS token, event_time, event_key, patient,
       tupleElement(k, 3) AS jti
FROM custos.audit_events
ARRAY JOIN arrayFilter(x -> tupleElement(x, 2) != '', [('jti', token_jti, ''), ('session', session_id, token_jti)]) AS k
WHERE token_jti != '' OR session_id != '';

INSERT INTO custos.audit_by_token (tenant, kind, token, event_time, event_key, patient, jti)
SELECT tenant, tupleElement(k, 1) AS kind, tupleElement(k, 2) AS token, event_time, event_key, patient,
       tupleElement(k, 3) AS jti
FROM custos.audit_events
ARRAY JOIN arrayFilter(x -> tupleElement(x, 2) != '', [('jti', token_jti, ''), ('session', session_id, token_jti)]) AS k
WHERE token_jti != '' OR session_id != '';

ALTER TABLE custos.audit_by_token MODIFY COMMENT '0009 backfill complete';
