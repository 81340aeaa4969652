-- Where each hash chain stands, found by primary key. The ingest links the first record it
-- reads from a partition to the last durable chained record before it; that lookup used to
-- scan all of custos.audit_events (kafka_topic/partition/offset are not in its sorting key)
-- once per partition at every assignment. The writer now adds, after each acknowledged
-- batch and before the offsets are committed, one row per chain: the batch's last chained
-- record. The row with the highest offset below a committed position is therefore the last
-- chained record below it. The backfill records the current head of every existing chain
-- (the lookup takes a chain without any row here for a new one, so the backfill must be
-- complete): the last statement marks the table, and the guard in schemas/src/migrations.rs
-- then records the migration without running it again. A rerun after an interruption adds
-- identical rows that ReplacingMergeTree collapses.
CREATE TABLE IF NOT EXISTS custos.chain_heads
(
    kafka_topic     LowCardinality(String),
    kafka_partition Int32,
    kafka_offset    Int64,
    record_hash     FixedString(32),
    event_key       String,
    written_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (kafka_topic, kafka_partition, kafka_offset)
TTL toDateTime(written_at) + INTERVAL {retention_days} DAY;

INSERT INTO custos.chain_heads (kafka_topic, kafka_partition, kafka_offset, record_hash, event_key)
SELECT kafka_topic, kafka_partition, max(kafka_offset), argMax(record_hash, kafka_offset),
       argMax(event_key, kafka_offset)
FROM custos.audit_events
WHERE record_hash != ''
GROUP BY kafka_topic, kafka_partition;

ALTER TABLE custos.chain_heads MODIFY COMMENT '0010 backfill complete';
