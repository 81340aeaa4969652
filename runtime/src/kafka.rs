//! The Kafka settings: the bootstrap servers every service reads (`CUSTOS_KAFKA_BROKERS`)
//! and every `ClientConfig` key the services set, in one place, so a benchmark or a new
//! service consumes exactly as the ingest does.
//!
//! Consumers never commit automatically: the services store and commit offsets themselves,
//! only after ClickHouse acknowledged what the messages became (at-least-once). Producers
//! are idempotent and acknowledged by all in-sync replicas.

use clap::Args;
use rdkafka::config::ClientConfig;

/// Where Kafka answers.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "CUSTOS_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    pub brokers: String,
}

/// How a consumer fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Large fetches and a deep local queue for throughput (the ingest); oversized (poison)
    /// messages still come through to the size check and the dead-letter queue.
    Bulk,
    /// Small batches answered within 20 ms (the consent service reacts to single events).
    Prompt,
}

/// Consumer settings: group `group_id`, manual offset store and commit, from the earliest
/// offset when the group has none.
pub fn consumer_config(
    brokers: &str,
    group_id: &str,
    client_id: &str,
    fetch: Fetch,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        .set("client.id", client_id)
        // Offsets are committed by the service, never automatically.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000");
    match fetch {
        Fetch::Bulk => {
            c.set("max.poll.interval.ms", "300000")
                .set("fetch.message.max.bytes", "8388608")
                .set("fetch.max.bytes", "67108864")
                .set("queued.max.messages.kbytes", "131072")
                .set("statistics.interval.ms", "5000");
        }
        Fetch::Prompt => {
            c.set("fetch.wait.max.ms", "20")
                .set("fetch.message.max.bytes", "8388608");
        }
    }
    c
}

/// How a producer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    /// Dead letters: up to 4 MiB per message (the original bytes plus headers), lingering
    /// 5 ms to batch, 30 s to deliver.
    DeadLetters,
    /// Events a caller waits for: no linger, 15 s to deliver.
    Immediate,
}

/// Producer settings: idempotent, acknowledged by all in-sync replicas.
pub fn producer_config(brokers: &str, client_id: &str, send: Send) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all");
    match send {
        Send::DeadLetters => {
            c.set("message.max.bytes", "4194304")
                .set("message.timeout.ms", "30000")
                .set("linger.ms", "5");
        }
        Send::Immediate => {
            c.set("linger.ms", "0").set("message.timeout.ms", "15000");
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(c: &'a ClientConfig, key: &str) -> Option<&'a str> {
        c.get(key)
    }

    #[test]
    fn consumers_never_commit_by_themselves() {
        for fetch in [Fetch::Bulk, Fetch::Prompt] {
            let c = consumer_config("b:9092", "g", "custos-test", fetch);
            assert_eq!(get(&c, "bootstrap.servers"), Some("b:9092"));
            assert_eq!(get(&c, "group.id"), Some("g"));
            assert_eq!(get(&c, "client.id"), Some("custos-test"));
            assert_eq!(get(&c, "enable.auto.commit"), Some("false"));
            assert_eq!(get(&c, "enable.auto.offset.store"), Some("false"));
            assert_eq!(get(&c, "auto.offset.reset"), Some("earliest"));
            // Poison messages up to 8 MiB reach the size check.
            assert_eq!(get(&c, "fetch.message.max.bytes"), Some("8388608"));
        }
        let bulk = consumer_config("b", "g", "c", Fetch::Bulk);
        assert_eq!(get(&bulk, "fetch.max.bytes"), Some("67108864"));
        assert_eq!(get(&bulk, "fetch.wait.max.ms"), None);
        let prompt = consumer_config("b", "g", "c", Fetch::Prompt);
        assert_eq!(get(&prompt, "fetch.wait.max.ms"), Some("20"));
    }

    #[test]
    fn producers_are_idempotent_and_wait_for_all_replicas() {
        for send in [Send::DeadLetters, Send::Immediate] {
            let c = producer_config("b:9092", "custos-test", send);
            assert_eq!(get(&c, "enable.idempotence"), Some("true"));
            assert_eq!(get(&c, "acks"), Some("all"));
        }
        let dlq = producer_config("b", "c", Send::DeadLetters);
        assert_eq!(get(&dlq, "message.max.bytes"), Some("4194304"));
        assert_eq!(get(&dlq, "message.timeout.ms"), Some("30000"));
        let now = producer_config("b", "c", Send::Immediate);
        assert_eq!(get(&now, "linger.ms"), Some("0"));
        assert_eq!(get(&now, "message.timeout.ms"), Some("15000"));
    }
}
