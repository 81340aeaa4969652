//! The checkpoints topic: where the writer publishes each signed checkpoint, so a copy lives
//! outside the database, and [`read_topic`], which reads that copy back for `verify`.
//! The checkpoint types, the tracker that cuts them and the anchor files are in
//! [`custos_integrity::checkpoints`], re-exported here.

use std::time::{Duration, Instant};

pub use custos_integrity::checkpoints::*;

/// Errors reading the checkpoints' copy outside the database.
#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    /// Kafka refused or could not be reached.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The checkpoint topic does not exist.
    #[error("checkpoint topic {0} not found")]
    UnknownTopic(String),
    /// The topic was not read to its end in time.
    #[error("checkpoint topic {topic} not read to its end within {secs} s")]
    Timeout {
        /// The topic.
        topic: String,
        /// The time allowed.
        secs: u64,
    },
    /// An anchor file could not be read or parsed.
    #[error(transparent)]
    Anchor(#[from] AnchorError),
}

/// Reads every checkpoint on `topic` from the beginning to the high watermark of each
/// partition, as a read-only client: the partitions are assigned (no consumer group is
/// joined) and no offset is ever committed. Blocking; run it off the async runtime.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<ExternalCheckpoint>, ExternalError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "custos-verify")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("allow.auto.create.topics", "false")
        .create()?;
    let started = Instant::now();
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(ExternalError::UnknownTopic(topic.to_owned()));
    }
    let mut assignment = TopicPartitionList::new();
    // partition -> high watermark still to reach
    let mut open = std::collections::BTreeMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        if high > low {
            assignment.add_partition_offset(topic, p, Offset::Offset(low))?;
            open.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if open.is_empty() {
        return Ok(out);
    }
    consumer.assign(&assignment)?;
    while !open.is_empty() {
        if started.elapsed() > timeout {
            return Err(ExternalError::Timeout {
                topic: topic.to_owned(),
                secs: timeout.as_secs(),
            });
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let (p, offset) = (message.partition(), message.offset());
        if let Some(payload) = message.payload() {
            out.push(ExternalCheckpoint {
                source: format!("topic {topic} partition {p} offset {offset}"),
                jws: String::from_utf8_lossy(payload).into_owned(),
            });
        }
        if open.get(&p).is_some_and(|high| offset + 1 >= *high) {
            open.remove(&p);
        }
    }
    Ok(out)
}
