//! Producing simulated messages to Kafka: one message type ([`Msg`]) and a producer that
//! awaits every delivery, so a caller knows the traffic is in the topics when it returns.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

/// One message to produce.
#[derive(Debug, Clone, Default)]
pub struct Msg {
    /// Key.
    pub key: Option<String>,
    /// Value bytes.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Vec<(String, String)>,
}

impl Msg {
    /// A message with a JSON value.
    pub fn json(v: &serde_json::Value) -> Msg {
        Msg {
            key: None,
            // Serializing a `Value` cannot fail: its map keys are strings.
            payload: v.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    /// A message with raw bytes.
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Msg {
        Msg {
            payload: bytes.into(),
            ..Msg::default()
        }
    }
}

/// Why producing failed.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The producer refused the message (other than a full queue, which is waited out).
    #[error("produce failed: {0}")]
    Send(KafkaError),
    /// The broker did not acknowledge a message.
    #[error("delivery failed: {0}")]
    Delivery(KafkaError),
    /// The delivery report was lost (the producer was dropped).
    #[error("delivery report cancelled")]
    Cancelled,
    /// Flushing the producer's queue timed out or failed.
    #[error("flush failed: {0}")]
    Flush(KafkaError),
}

/// A producer for `brokers` (comma-separated bootstrap servers): acks from every in-sync
/// replica, lz4, batches of up to 10,000 messages lingering 20 ms, messages up to 4 MiB.
pub fn producer(brokers: &str) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.max.bytes", "4194304")
        .set("compression.type", "lz4")
        .create()
}

/// Produces messages to a topic (to `partition` when given), awaiting every delivery.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    msgs: &[Msg],
) -> Result<(), ProduceError> {
    let mut futures = Vec::with_capacity(msgs.len());
    for m in msgs {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &m.headers {
            headers = headers.insert(rdkafka::message::Header {
                key: k,
                value: Some(v),
            });
        }
        let mut rec: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
            .payload(m.payload.as_slice())
            .headers(headers);
        if let Some(k) = &m.key {
            rec = rec.key(k.as_str());
        }
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        loop {
            match producer.send_result(rec) {
                Ok(f) => {
                    futures.push(f);
                    break;
                }
                Err((e, r)) => {
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                        producer.poll(Duration::from_millis(10));
                        rec = r;
                    } else {
                        return Err(ProduceError::Send(e));
                    }
                }
            }
        }
    }
    for f in futures {
        f.await
            .map_err(|_| ProduceError::Cancelled)?
            .map_err(|(e, _)| ProduceError::Delivery(e))?;
    }
    producer
        .flush(Timeout::After(Duration::from_secs(30)))
        .map_err(ProduceError::Flush)
}
