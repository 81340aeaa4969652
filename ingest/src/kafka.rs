//! Every Kafka client setting the ingest uses, in one place.

use rdkafka::config::ClientConfig;

/// Consumer settings: manual commits only, after ClickHouse acknowledged the batch.
pub fn consumer_config(brokers: &str, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        .set("client.id", "custos-ingest")
        // Offsets are committed by the pipeline, never automatically.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
        .set("max.poll.interval.ms", "300000")
        // Let oversized (poison) messages through to the size check and the DLQ.
        .set("fetch.message.max.bytes", "8388608")
        .set("fetch.max.bytes", "67108864")
        .set("queued.max.messages.kbytes", "131072")
        .set("statistics.interval.ms", "5000");
    c
}

/// Dead-letter producer settings: idempotent, acknowledged by all in-sync replicas.
pub fn dlq_producer_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "custos-ingest-dlq")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.max.bytes", "4194304")
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "5");
    c
}
