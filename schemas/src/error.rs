//! Decode errors. Messages name fields and positions, never field values, so they are
//! safe to put in DLQ headers and logs.

use thiserror::Error;

/// Why an input message could not become an [`crate::Event`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The message exceeds the size limit.
    #[error("event is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The message carries a raw access, refresh or id token.
    #[error("event carries a raw token ({0})")]
    RawToken(&'static str),
    /// The bytes are not JSON (or not UTF-8).
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// None of the accepted formats matched.
    #[error("unrecognized event format: {0}")]
    UnknownFormat(&'static str),
    /// The `type` (or the Keycloak / FHIR code) is not one Custos accepts.
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    /// A required field is absent or empty.
    #[error("missing required field `{0}`")]
    MissingField(String),
    /// A field has the wrong type or an unacceptable value.
    #[error("invalid field `{field}`: {problem}")]
    InvalidField {
        /// Path of the field, e.g. `data.httpStatus`.
        field: String,
        /// What is wrong, without the value.
        problem: String,
    },
}

impl DecodeError {
    /// A short stable code for the DLQ `custos-reason` header and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::RawToken(_) => "raw_token",
            DecodeError::InvalidJson(_) => "invalid_json",
            DecodeError::UnknownFormat(_) => "unknown_format",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::InvalidField { .. } => "invalid_field",
        }
    }

    /// Every reason code, for pre-registering metrics.
    pub const REASONS: [&'static str; 7] = [
        "too_large",
        "raw_token",
        "invalid_json",
        "unknown_format",
        "unknown_type",
        "missing_field",
        "invalid_field",
    ];

    /// An invalid field with a fixed description.
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        DecodeError::InvalidField {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// An unknown type, keeping only a short, safe rendering of the offending code.
    pub fn unknown_type(code: &str) -> Self {
        let safe: String = code
            .chars()
            .take(64)
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'))
            .collect();
        DecodeError::UnknownType(safe)
    }

    /// Deserializes `bytes` as `T`, naming the failing field (with `prefix`) on error; see
    /// [`crate::decode::json::parse`].
    pub fn parse_json<'de, T: serde::Deserialize<'de>>(
        bytes: &'de [u8],
        prefix: &str,
    ) -> Result<T, Self> {
        crate::decode::json::parse(bytes, prefix)
    }

    /// Converts a serde error (with its path) into a value-free decode error; see
    /// [`crate::decode::json::error_from_serde`].
    pub fn from_serde(err: serde_path_to_error::Error<serde_json::Error>, prefix: &str) -> Self {
        crate::decode::json::error_from_serde(err, prefix)
    }
}
