//! The one entry point for input messages: detects the source format and dispatches to
//! its decoder, after the checks that apply to every format (size, raw tokens).
//!
//! One module per format, each yielding `Result<Event, DecodeError>`: [`cloudevents`]
//! (structured and binary mode), [`keycloak`] (user and admin events), [`fhir_audit`]
//! (FHIR R4 `AuditEvent`, IHE BALP) and [`fhir_consent`] (FHIR R4 `Consent`); beside them
//! [`json`], the value-free JSON parser they share, and the raw-token check
//! ([`find_raw_token`]).
//!
//! ```
//! use custos_schemas::{decode, DecodeLimits, EventType};
//! let msg = br#"{"specversion":"1.0","id":"e1","source":"//as.example","type":"custos.auth.logout",
//!   "time":"2026-01-02T03:04:05Z","data":{"iss":"https://as.example","sub":"u1","client_id":"app"}}"#;
//! let event = decode(msg, &[], &DecodeLimits::default()).unwrap();
//! assert_eq!(event.event_type, EventType::AuthLogout);
//! ```

pub mod cloudevents;
pub mod fhir_audit;
pub mod fhir_consent;
pub mod json;
pub mod keycloak;
mod raw_token;

use memchr::memmem;

pub use raw_token::find_raw_token;

use crate::error::DecodeError;
use crate::event::Event;
use crate::validate;

/// Limits applied before any parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted message, in bytes (1 MiB by default).
    pub max_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_bytes: 1024 * 1024,
        }
    }
}

/// A Kafka header as seen by the decoder.
pub type Header<'a> = (&'a str, &'a [u8]);

/// Decodes one Kafka message (value and headers) into an [`Event`].
pub fn decode(
    payload: &[u8],
    headers: &[Header<'_>],
    limits: &DecodeLimits,
) -> Result<Event, DecodeError> {
    if payload.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            limit: limits.max_bytes,
        });
    }
    if let Some(kind) = find_raw_token(payload) {
        return Err(DecodeError::RawToken(kind));
    }
    for (_, value) in headers {
        if let Some(kind) = find_raw_token(value) {
            return Err(DecodeError::RawToken(kind));
        }
    }
    let event = if headers.iter().any(|(k, _)| *k == "ce_specversion") {
        cloudevents::decode_binary(payload, headers)
    } else if memmem::find(payload, b"\"specversion\"").is_some() {
        cloudevents::decode_structured(payload)
    } else if fhir_consent::is_fhir_consent(payload) {
        fhir_consent::decode_fhir_consent(payload)
    } else if memmem::find(payload, b"\"resourceType\"").is_some() {
        fhir_audit::decode_fhir_audit_event(payload)
    } else if memmem::find(payload, b"\"realmId\"").is_some() {
        keycloak::decode_keycloak(payload)
    } else if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_err() {
        Err(DecodeError::InvalidJson("not a JSON document".to_owned()))
    } else {
        Err(DecodeError::UnknownFormat(
            "expected a CloudEvent, a Keycloak event, a FHIR AuditEvent or a FHIR Consent",
        ))
    }?;
    validate::validate(&event)?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_oversized_before_parsing() {
        let big = vec![b' '; 2 * 1024 * 1024];
        let err = decode(&big, &[], &DecodeLimits::default()).unwrap_err();
        assert_eq!(err.reason(), "too_large");
    }

    #[test]
    fn unknown_json_and_garbage() {
        let err = decode(b"{\"hello\":1}", &[], &DecodeLimits::default()).unwrap_err();
        assert_eq!(err.reason(), "unknown_format");
        let err = decode(b"\x00\x01not json", &[], &DecodeLimits::default()).unwrap_err();
        assert_eq!(err.reason(), "invalid_json");
    }
}
