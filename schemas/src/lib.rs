//! # custos-schemas
//!
//! The contract of the Custos pipeline, as pure types and functions (no I/O):
//!
//! - [`event`]: the normalized [`Event`] and its typed payloads, one per event family;
//! - [`decode()`]: one entry point that recognizes CloudEvents 1.0 (structured and binary
//!   mode), Keycloak event JSON (user and admin events), FHIR R4 `AuditEvent` (IHE BALP)
//!   and FHIR R4 `Consent` ([`fhir_consent`]) and yields `Result<Event, DecodeError>`;
//!   one module per format under [`mod@decode`], with the JSON parser
//!   ([`decode::json`]) beside them;
//! - [`pseudonym`]: the HMAC-SHA256 key ring that turns patient identifiers into keyed
//!   pseudonyms carrying their key id;
//! - [`row`]: the ClickHouse row types and the conversion from events, and [`hash`], the
//!   value type of their `record_hash` column (chaining it is `custos-integrity`'s job);
//! - [`records`]: the row types of the query audit, consent history and revocations;
//! - [`migrations`]: the versioned ClickHouse DDL;
//! - [`jsonschema`]: JSON Schema documents for producers, generated from the types.
#![deny(missing_docs)]

pub mod decode;
pub mod error;
pub mod event;
pub mod hash;
pub mod jsonschema;
pub mod migrations;
pub mod pseudonym;
pub mod records;
pub mod redact;
pub mod row;
pub mod validate;

// The format decoders live under `decode/`; their former paths stay valid.
pub use decode::{cloudevents, fhir_audit, fhir_consent, keycloak};
pub use decode::{decode, DecodeLimits, Header};
pub use error::DecodeError;
pub use event::{
    AuthData, BreakGlassData, ConsentData, Decision, DeprovisionData, Event, EventType,
    FhirAccessData, Payload, PayloadFamily, SourceFormat, TokenData,
};
pub use pseudonym::{KeyRing, KeyRingError, PseudonymKind};
pub use row::{AuditRow, KafkaPosition, RejectionRow};
