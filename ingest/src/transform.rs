//! The pure step of the pipeline: one [`SourceMessage`] becomes an audit row (decoded,
//! validated, pseudonymized) or a rejection for the dead-letter topic. A function of the
//! message, the key ring and the settings only, so it runs outside any shared state;
//! chaining the row (which needs the partition's previous hash) is the consumer's
//! serialized step afterwards.

use custos_schemas::row::RowContext;
use custos_schemas::{decode, AuditRow, DecodeLimits, KeyRing};
use tracing::warn;

use crate::batch::Rejected;
use crate::source::SourceMessage;

/// What the transform needs besides the message and the keys.
#[derive(Debug, Clone)]
pub struct TransformSettings {
    /// Limits applied before parsing.
    pub limits: DecodeLimits,
    /// Tenant for events that name none.
    pub default_tenant: String,
}

/// The outcome for one message.
#[derive(Debug)]
pub enum Transformed {
    /// An audit row, not chained yet.
    Row(Box<AuditRow>),
    /// A message that cannot be decoded, its credentials redacted, for the dead-letter topic.
    Rejected(Box<Rejected>),
}

/// Decodes `msg` and builds its row with `keys`, or rejects it; `now_ms` is the ingestion
/// time (ms since the epoch).
pub fn transform(
    msg: &SourceMessage,
    keys: &KeyRing,
    settings: &TransformSettings,
    now_ms: i64,
) -> Transformed {
    let headers = msg.header_refs();
    match decode(&msg.payload, &headers, &settings.limits) {
        Ok(event) => {
            let ctx = RowContext {
                keys,
                default_tenant: &settings.default_tenant,
            };
            // The event's strings move into the row.
            Transformed::Row(Box::new(ctx.audit_row_owned(event, msg.position(), now_ms)))
        }
        Err(error) => {
            warn!(
                topic = %msg.topic,
                partition = msg.partition,
                offset = msg.offset,
                reason = error.reason(),
                detail = %error,
                "rejecting message to the DLQ"
            );
            Transformed::Rejected(Box::new(Rejected::redacted(
                msg.position(),
                msg.key.as_deref(),
                &msg.payload,
                &headers,
                error,
                now_ms,
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const KEY: &str = "k1=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const USER: &str = "c41d8e6b-2f3a-4b5c-9d7e-0a1b2c3d4e5f";

    fn login() -> Vec<u8> {
        format!(
            r#"{{"id":"0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0","time":1767268800000,"type":"LOGIN",
            "realmId":"3f6d2c1a-8b4e-4f7a-9c2d-5e1b7a9c0d44","realmName":"general-hospital",
            "clientId":"smart-ehr-launcher","userId":"{USER}",
            "sessionId":"9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d","ipAddress":"10.20.30.40",
            "error":null,"details":{{"auth_method":"openid-connect","username":"dr.house"}}}}"#
        )
        .into_bytes()
    }

    fn message(payload: Vec<u8>) -> SourceMessage {
        SourceMessage {
            topic: Arc::from("keycloak.events"),
            partition: 2,
            offset: 17,
            key: Some(b"key".to_vec()),
            payload,
            headers: Vec::new(),
        }
    }

    fn settings() -> TransformSettings {
        TransformSettings {
            limits: DecodeLimits::default(),
            default_tenant: "default".into(),
        }
    }

    #[test]
    fn a_valid_event_becomes_a_pseudonymized_row_at_its_position() {
        let keys = KeyRing::parse(KEY, Some("k1")).unwrap();
        let Transformed::Row(row) = transform(&message(login()), &keys, &settings(), 1234) else {
            panic!("a valid event was rejected");
        };
        assert_eq!(row.kafka_topic, "keycloak.events");
        assert_eq!((row.kafka_partition, row.kafka_offset), (2, 17));
        assert_eq!(row.ingested_at, 1234);
        assert!(!row.user_sub.is_empty());
        assert_ne!(row.user_sub, USER, "the user id is pseudonymized");
        assert!(
            !format!("{row:?}").contains(USER),
            "no raw identifier in the row"
        );
        // Pure: the same input gives the same row.
        let Transformed::Row(again) = transform(&message(login()), &keys, &settings(), 1234) else {
            panic!("a valid event was rejected");
        };
        assert_eq!(row, again);
        // Another key gives another pseudonym.
        let other = KeyRing::parse(&KEY.replace("00", "ff"), Some("k1")).unwrap();
        let Transformed::Row(other_row) = transform(&message(login()), &other, &settings(), 1234)
        else {
            panic!("a valid event was rejected");
        };
        assert_ne!(other_row.user_sub, row.user_sub);
    }

    #[test]
    fn an_undecodable_message_is_rejected_with_its_position_and_reason() {
        let keys = KeyRing::parse(KEY, Some("k1")).unwrap();
        let Transformed::Rejected(r) =
            transform(&message(b"not json".to_vec()), &keys, &settings(), 9)
        else {
            panic!("garbage was accepted");
        };
        assert_eq!(r.pos, message(Vec::new()).position());
        assert_eq!(r.payload, b"not json");
        assert_eq!(r.key.as_deref(), Some(&b"key"[..]));
        assert_eq!(r.at_ms, 9);
    }

    #[test]
    fn the_size_limit_applies() {
        let keys = KeyRing::parse(KEY, Some("k1")).unwrap();
        let small = TransformSettings {
            limits: DecodeLimits { max_bytes: 10 },
            ..settings()
        };
        let Transformed::Rejected(r) = transform(&message(login()), &keys, &small, 0) else {
            panic!("an oversized message was accepted");
        };
        assert_eq!(
            r.error.reason(),
            custos_schemas::DecodeError::TooLarge { size: 0, limit: 0 }.reason()
        );
    }
}
