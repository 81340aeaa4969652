-- Report latency (issue 4): rebuild custos.audit_events with yearly partitions and 1,024-row
-- granules. A patient-access report reads a few granules of every part its window touches;
-- with monthly partitions a one-year report opened 12-30 parts of 8,192-row granules (~200k
-- rows read for ~50 returned, ~100 ms), with yearly partitions and 1,024-row granules it
-- opens 1-3 parts and reads ~10k rows (~20 ms). Retention still drops rows by TTL.
--
-- Guarded (schemas/src/migrations.rs): skipped when audit_events already has the yearly key.
-- Run it with the ingest stopped (compose and scripts/run do). Rows inserted into the old
-- table while the copy ran (ingested within 2 minutes of the newest copied row or later) are
-- copied again after the swap (ReplacingMergeTree collapses the
-- overlap), and the old table is kept as custos.audit_events_before_0006 rather than dropped:
-- drop it once `custos-ingest verify` is clean.
CREATE TABLE IF NOT EXISTS custos.audit_events_0006 AS custos.audit_events
ENGINE = ReplacingMergeTree
PARTITION BY toYear(event_time)
ORDER BY (tenant, patient, event_time, event_key)
TTL toDateTime(event_time) + INTERVAL {retention_days} DAY
SETTINGS index_granularity = 1024;

INSERT INTO custos.audit_events_0006 SELECT * FROM custos.audit_events;

EXCHANGE TABLES custos.audit_events AND custos.audit_events_0006;

INSERT INTO custos.audit_events SELECT * FROM custos.audit_events_0006
WHERE ingested_at >= (SELECT max(ingested_at) FROM custos.audit_events) - INTERVAL 2 MINUTE;

RENAME TABLE custos.audit_events_0006 TO custos.audit_events_before_0006;
