//! The one entry point for input messages: detects the source format and dispatches to
//! its decoder, after the checks that apply to every format (size, raw tokens).
//!
//! ```
//! use custos_schemas::{decode, DecodeLimits, EventType};
//! let msg = br#"{"specversion":"1.0","id":"e1","source":"//as.example","type":"custos.auth.logout",
//!   "time":"2026-01-02T03:04:05Z","data":{"iss":"https://as.example","sub":"u1","client_id":"app"}}"#;
//! let event = decode(msg, &[], &DecodeLimits::default()).unwrap();
//! assert_eq!(event.event_type, EventType::AuthLogout);
//! ```

use std::sync::LazyLock;

use memchr::memmem;

use crate::cloudevents;
use crate::error::DecodeError;
use crate::event::Event;
use crate::fhir_audit;
use crate::fhir_consent;
use crate::keycloak;
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

/// Prebuilt searchers of [`find_raw_token`].
struct Finders {
    fields: [(memmem::Finder<'static>, &'static str); 5],
    bearer: [memmem::Finder<'static>; 2],
    jws: memmem::Finder<'static>,
}

/// Field names that only ever hold raw tokens.
const TOKEN_FIELDS: [(&[u8], &str); 5] = [
    (b"\"access_token\"", "access_token field"),
    (b"\"refresh_token\"", "refresh_token field"),
    (b"\"id_token\"", "id_token field"),
    (b"\"accessToken\"", "accessToken field"),
    (b"\"refreshToken\"", "refreshToken field"),
];

/// Looks for a raw token: a token-valued field name, a JWS/JWT compact serialization
/// (`eyJ...` header, `.`, payload, `.`), or an `Authorization: Bearer` value.
pub fn find_raw_token(bytes: &[u8]) -> Option<&'static str> {
    // The searchers are built once: building one per message and needle cost ~2% of ingest.
    static FINDERS: LazyLock<Finders> = LazyLock::new(|| Finders {
        fields: TOKEN_FIELDS.map(|(needle, kind)| (memmem::Finder::new(needle), kind)),
        bearer: [
            memmem::Finder::new(b"Bearer "),
            memmem::Finder::new(b"bearer "),
        ],
        jws: memmem::Finder::new(b"eyJ"),
    });
    let f = &*FINDERS;
    for (finder, kind) in &f.fields {
        let needle = finder.needle();
        for at in finder.find_iter(bytes) {
            // A field name, not a value such as `"grant_type":"refresh_token"`.
            let rest = &bytes[at + needle.len()..];
            let next = rest.iter().find(|b| !b.is_ascii_whitespace());
            if next == Some(&b':') {
                return Some(kind);
            }
        }
    }
    if f.bearer.iter().any(|b| b.find(bytes).is_some()) {
        return Some("bearer credential");
    }
    for start in f.jws.find_iter(bytes) {
        if looks_like_jws(&bytes[start..]) {
            return Some("JWT");
        }
    }
    None
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// `eyJ<b64url>{8,}.<b64url>{8,}.` — a compact JWS or JWT (signature may be empty).
fn looks_like_jws(s: &[u8]) -> bool {
    let header = s.iter().take_while(|b| is_b64url(**b)).count();
    if header < 10 || s.get(header) != Some(&b'.') {
        return false;
    }
    let rest = &s[header + 1..];
    let body = rest.iter().take_while(|b| is_b64url(**b)).count();
    body >= 8 && rest.get(body) == Some(&b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_jwts_and_token_fields() {
        assert_eq!(
            find_raw_token(b"{\"x\":\"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig\"}"),
            Some("JWT")
        );
        assert_eq!(
            find_raw_token(b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4eHh4eHgifQ."),
            Some("JWT")
        );
        assert_eq!(
            find_raw_token(b"{\"refresh_token\":\"opaque\"}"),
            Some("refresh_token field")
        );
        assert_eq!(
            find_raw_token(b"{\"h\":\"Bearer abc\"}"),
            Some("bearer credential")
        );
        assert_eq!(
            find_raw_token(b"{\"refresh_token_id\":\"abc\",\"eyJ\":1}"),
            None
        );
        assert_eq!(find_raw_token(b"{\"grant_type\":\"refresh_token\"}"), None);
        assert_eq!(
            find_raw_token(b"{\"refresh_token\" : \"x\"}"),
            Some("refresh_token field")
        );
        assert_eq!(find_raw_token(b"{\"note\":\"eyJhbGciOiJ.short\"}"), None);
    }

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
