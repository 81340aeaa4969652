//! The FHIR general parameters every interaction takes: `_format` (and the `Accept`
//! header it overrides) and `_pretty`. Only JSON is served: JSON media types are accepted,
//! the other FHIR formats (XML, Turtle, HTML) are refused with 406.

use axum::http::{header, HeaderMap};

use super::outcome::FhirError;

/// `_format` / `Accept` values that mean FHIR JSON.
const JSON_TYPES: &[&str] = &[
    "json",
    "application/json",
    "application/fhir+json",
    "application/json+fhir",
    "text/json",
];

/// Formats FHIR defines that this server does not produce.
const OTHER_FHIR_TYPES: &[&str] = &[
    "xml",
    "text/xml",
    "application/xml",
    "application/fhir+xml",
    "application/xml+fhir",
    "ttl",
    "text/turtle",
    "application/x-turtle",
    "application/fhir+turtle",
    "html",
    "text/html",
];

/// The general parameters of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct General {
    /// `_format`, normalized (lowercase, without media-type parameters).
    pub format: Option<String>,
    /// `_pretty=true`: indented JSON.
    pub pretty: bool,
}

/// A media type without parameters, lowercase. `+` decoded as a space by form
/// decoding (an unencoded `application/fhir+json` in a URL) is restored.
fn media_type(v: &str) -> String {
    v.split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .replace(' ', "+")
        .to_ascii_lowercase()
}

impl General {
    /// Consumes `_format` or `_pretty`; returns whether `name` was one of them.
    pub fn take(&mut self, name: &str, value: &str) -> Result<bool, FhirError> {
        match name {
            "_format" => {
                let m = media_type(value);
                if JSON_TYPES.contains(&m.as_str()) {
                    self.format = Some(m);
                } else if OTHER_FHIR_TYPES.contains(&m.as_str()) {
                    return Err(FhirError::NotAcceptable(
                        "only JSON is served: _format must be json, application/json or application/fhir+json".into(),
                    ));
                } else {
                    return Err(FhirError::bad(
                        "_format must be json, application/json or application/fhir+json",
                    ));
                }
                Ok(true)
            }
            "_pretty" => {
                self.pretty = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(FhirError::bad("_pretty must be true or false")),
                };
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Refuses a request whose `Accept` header (when `_format` does not override it)
    /// admits no JSON: 406.
    pub fn negotiate(&self, headers: &HeaderMap) -> Result<(), FhirError> {
        if self.format.is_some() {
            return Ok(());
        }
        let accept: Vec<&str> = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        if accept.is_empty() || accept.iter().any(|r| accepts_json(r)) {
            return Ok(());
        }
        Err(FhirError::NotAcceptable(
            "only JSON is served: Accept must admit application/fhir+json".into(),
        ))
    }
}

/// Whether one `Accept` media range (with its parameters) admits FHIR JSON.
fn accepts_json(range: &str) -> bool {
    let refused = range.split(';').skip(1).any(|p| {
        p.trim()
            .strip_prefix("q=")
            .and_then(|q| q.trim().parse::<f32>().ok())
            .is_some_and(|q| q <= 0.0)
    });
    let m = media_type(range);
    !refused
        && (JSON_TYPES.contains(&m.as_str())
            || m.ends_with("+json")
            || m == "*/*"
            || m == "application/*")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn take(name: &str, v: &str) -> Result<General, FhirError> {
        let mut g = General::default();
        assert!(g.take(name, v)?);
        Ok(g)
    }

    #[test]
    fn json_formats_are_accepted_and_others_refused() {
        for v in [
            "json",
            "application/json",
            "application/fhir+json",
            "application/fhir json",
            "application/fhir+json; fhirVersion=4.0",
            "JSON",
        ] {
            assert!(take("_format", v).is_ok(), "{v}");
        }
        for v in ["xml", "application/fhir+xml", "text/xml", "ttl", "html"] {
            assert!(
                matches!(take("_format", v), Err(FhirError::NotAcceptable(_))),
                "{v}"
            );
        }
        for v in ["", "csv", "application/octet-stream"] {
            assert!(matches!(take("_format", v), Err(FhirError::Api(_))), "{v}");
        }
        assert!(take("_pretty", "true").unwrap().pretty);
        assert!(!take("_pretty", "false").unwrap().pretty);
        assert!(take("_pretty", "yes").is_err());
        assert!(!General::default().take("patient", "x").unwrap());
    }

    #[test]
    fn accept_header_must_admit_json() {
        let g = General::default();
        let mut h = HeaderMap::new();
        assert!(g.negotiate(&h).is_ok());
        for ok in [
            "application/fhir+json",
            "application/fhir+xml;q=1.0, application/fhir+json;q=1.0, application/xml+fhir;q=0.9, application/json+fhir;q=0.9",
            "text/html,application/xhtml+xml,*/*;q=0.8",
            "application/*",
        ] {
            h.insert(header::ACCEPT, HeaderValue::from_static(ok));
            assert!(g.negotiate(&h).is_ok(), "{ok}");
        }
        for refused in [
            "application/fhir+xml",
            "text/xml, application/xml",
            "application/fhir+json;q=0",
        ] {
            h.insert(header::ACCEPT, HeaderValue::from_static(refused));
            assert!(
                matches!(g.negotiate(&h), Err(FhirError::NotAcceptable(_))),
                "{refused}"
            );
        }
        // _format overrides Accept.
        let json = take("_format", "json").unwrap();
        assert!(json.negotiate(&h).is_ok());
    }
}
