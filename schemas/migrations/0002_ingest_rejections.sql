-- Where and why messages were dead-lettered. No payload bytes: they stay on the DLQ topic.
-- Together with audit_events' Kafka positions this tells a rejected offset (a gap with a
-- reason) apart from a record that went missing.
CREATE TABLE IF NOT EXISTS custos.ingest_rejections
(
    kafka_topic     LowCardinality(String),
    kafka_partition Int32,
    kafka_offset    Int64,
    rejected_at     DateTime64(3, 'UTC'),
    reason          LowCardinality(String),
    detail          String,
    size_bytes      UInt32
)
ENGINE = ReplacingMergeTree
ORDER BY (kafka_topic, kafka_partition, kafka_offset)
TTL toDateTime(rejected_at) + INTERVAL {retention_days} DAY;
