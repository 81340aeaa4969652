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

    /// Deserializes `bytes` as `T`, naming the failing field (with `prefix`) on error. The
    /// common, valid case runs plain serde_json; only a failure is deserialized again
    /// through `serde_path_to_error` to find the path, which costs ~5% of ingest CPU when
    /// it tracks every value.
    pub fn parse_json<'de, T: serde::Deserialize<'de>>(
        bytes: &'de [u8],
        prefix: &str,
    ) -> Result<T, Self> {
        if let Ok(value) = T::deserialize(&mut serde_json::Deserializer::from_slice(bytes)) {
            return Ok(value);
        }
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        match serde_path_to_error::deserialize::<_, T>(de) {
            Err(e) => Err(DecodeError::from_serde(e, prefix)),
            // Deserialization is deterministic, so this does not happen; stay value-free.
            Ok(_) => Err(DecodeError::InvalidJson("undecodable document".to_owned())),
        }
    }

    /// Converts a serde error (with its path) into a value-free decode error.
    /// `prefix` is prepended to the path, e.g. `data`.
    pub fn from_serde(err: serde_path_to_error::Error<serde_json::Error>, prefix: &str) -> Self {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let join = |tail: &str| -> String {
            let mut parts: Vec<&str> = Vec::new();
            if !prefix.is_empty() {
                parts.push(prefix);
            }
            if !path.is_empty() && path != "." {
                parts.push(&path);
            }
            if !tail.is_empty() {
                parts.push(tail);
            }
            parts.join(".")
        };
        use serde_json::error::Category;
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => DecodeError::InvalidJson(format!(
                "syntax error at line {} column {}",
                inner.line(),
                inner.column()
            )),
            Category::Data => {
                let msg = inner.to_string();
                if let Some(rest) = msg.strip_prefix("missing field `") {
                    let name = rest.split('`').next().unwrap_or_default();
                    return DecodeError::MissingField(join(name));
                }
                let problem = if msg.starts_with("invalid type") {
                    // "invalid type: string \"x\", expected u16" -> keep only the expectation.
                    match msg.rsplit_once(", expected ") {
                        Some((_, expected)) => {
                            let expected = expected.split(" at line").next().unwrap_or(expected);
                            format!("wrong type, expected {expected}")
                        }
                        None => "wrong type".to_owned(),
                    }
                } else if msg.starts_with("unknown variant") {
                    match msg.rsplit_once(", expected ") {
                        Some((_, expected)) => {
                            let expected = expected.split(" at line").next().unwrap_or(expected);
                            format!("unknown value, expected {expected}")
                        }
                        None => "unknown value".to_owned(),
                    }
                } else if msg.starts_with("premature end of input")
                    || msg.contains("input contains invalid characters")
                {
                    "malformed value".to_owned()
                } else {
                    "invalid value".to_owned()
                };
                DecodeError::InvalidField {
                    field: join(""),
                    problem,
                }
            }
        }
    }
}
