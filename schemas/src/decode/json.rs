//! The JSON parser every decoder uses: plain serde_json for the valid case, and on failure
//! a value-free [`DecodeError`] that names the failing field by its path.

use serde::Deserialize;

use crate::error::DecodeError;

/// Deserializes `bytes` as `T`, naming the failing field (with `prefix`) on error. The
/// common, valid case runs plain serde_json; only a failure is deserialized again
/// through `serde_path_to_error` to find the path, which costs ~5% of ingest CPU when
/// it tracks every value.
pub fn parse<'de, T: Deserialize<'de>>(bytes: &'de [u8], prefix: &str) -> Result<T, DecodeError> {
    if let Ok(value) = T::deserialize(&mut serde_json::Deserializer::from_slice(bytes)) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Err(e) => Err(error_from_serde(e, prefix)),
        // Deserialization is deterministic, so this does not happen; stay value-free.
        Ok(_) => Err(DecodeError::InvalidJson("undecodable document".to_owned())),
    }
}

/// Converts a serde error (with its path) into a value-free decode error.
/// `prefix` is prepended to the path, e.g. `data`.
pub fn error_from_serde(
    err: serde_path_to_error::Error<serde_json::Error>,
    prefix: &str,
) -> DecodeError {
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
