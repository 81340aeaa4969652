-- Tamper evidence: every audit record links to the previous record of its Kafka partition
-- (see schemas/src/chain.rs). Signed checkpoints of each chain's head are kept here and on
-- the custos.checkpoints topic.
ALTER TABLE custos.audit_events
    ADD COLUMN IF NOT EXISTS chain_prev_offset Int64 DEFAULT -1,
    ADD COLUMN IF NOT EXISTS prev_hash String,
    ADD COLUMN IF NOT EXISTS record_hash String;

CREATE TABLE IF NOT EXISTS custos.chain_checkpoints
(
    kafka_topic     LowCardinality(String),
    kafka_partition Int32,
    first_offset    Int64,
    last_offset     Int64,
    record_count    UInt64,
    head_hash       String,
    first_time      DateTime64(3, 'UTC'),
    last_time       DateTime64(3, 'UTC'),
    created_at      DateTime64(3, 'UTC'),
    kid             LowCardinality(String),
    jws             String
)
ENGINE = ReplacingMergeTree
ORDER BY (kafka_topic, kafka_partition, last_offset)
TTL toDateTime(created_at) + INTERVAL {retention_days} DAY;
