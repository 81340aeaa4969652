//! The Kafka source: every message read becomes a [`SourceMessage`], a small owned value
//! that carries its position (topic, partition, offset) together with its key, value and
//! headers through the rest of the pipeline.

use std::collections::HashMap;
use std::sync::Arc;

use custos_schemas::{Header, KafkaPosition};
use rdkafka::message::{Headers, Message};

/// One Kafka message and where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMessage {
    /// Topic (shared with every message of the topic).
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key, if any.
    pub key: Option<Vec<u8>>,
    /// Value (empty for a tombstone).
    pub payload: Vec<u8>,
    /// Headers in order (a header without a value has an empty one).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl SourceMessage {
    /// Copies a message read from Kafka; `topic` is its topic name, shared.
    pub fn from_kafka<M: Message>(msg: &M, topic: Arc<str>) -> Self {
        let headers = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|header| {
                        (
                            header.key.to_owned(),
                            header.value.unwrap_or_default().to_vec(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        SourceMessage {
            topic,
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }

    /// Where the message was read.
    pub fn position(&self) -> KafkaPosition {
        KafkaPosition {
            topic: self.topic.to_string(),
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// The headers as the decoder sees them.
    pub fn header_refs(&self) -> Vec<Header<'_>> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect()
    }
}

/// Topic names seen so far, each allocated once and shared by its messages.
#[derive(Debug, Default)]
pub struct Topics(HashMap<String, Arc<str>>);

impl Topics {
    /// The shared name of `name`.
    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(t) = self.0.get(name) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(name);
        self.0.insert(name.to_owned(), t.clone());
        t
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header as KafkaHeader, OwnedHeaders, OwnedMessage, Timestamp};

    use super::*;

    #[test]
    fn a_message_keeps_its_position_key_value_and_headers() {
        let headers = OwnedHeaders::new()
            .insert(KafkaHeader {
                key: "ce_type",
                value: Some("login"),
            })
            .insert(KafkaHeader::<&str> {
                key: "empty",
                value: None,
            });
        let kafka = OwnedMessage::new(
            Some(b"{\"a\":1}".to_vec()),
            Some(b"k1".to_vec()),
            "audit".into(),
            Timestamp::NotAvailable,
            3,
            42,
            Some(headers),
        );
        let mut topics = Topics::default();
        let msg = SourceMessage::from_kafka(&kafka, topics.get("audit"));
        assert_eq!(&*msg.topic, "audit");
        assert_eq!((msg.partition, msg.offset), (3, 42));
        assert_eq!(msg.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(msg.payload, b"{\"a\":1}");
        assert_eq!(
            msg.header_refs(),
            vec![("ce_type", &b"login"[..]), ("empty", &b""[..])]
        );
        assert_eq!(
            msg.position(),
            KafkaPosition {
                topic: "audit".into(),
                partition: 3,
                offset: 42
            }
        );
        // The topic name is shared, not copied per message.
        assert!(Arc::ptr_eq(&msg.topic, &topics.get("audit")));
    }

    #[test]
    fn a_tombstone_without_key_or_headers_is_empty() {
        let kafka = OwnedMessage::new(
            None,
            None,
            "audit".into(),
            Timestamp::NotAvailable,
            0,
            7,
            None,
        );
        let msg = SourceMessage::from_kafka(&kafka, Arc::from("audit"));
        assert!(msg.key.is_none() && msg.payload.is_empty() && msg.headers.is_empty());
    }
}
