//! JSON Schema documents for producers, generated from the Rust types so they cannot
//! drift: `schemas/jsonschema/*.schema.json` are checked against [`documents`] by a test
//! (`CUSTOS_BLESS=1 cargo test -p custos-schemas jsonschema` rewrites them).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;

use crate::event::{
    AuthData, BreakGlassData, ConsentData, DeprovisionData, EventType, FhirAccessData, TokenData,
};

/// A CloudEvents 1.0 structured-mode envelope as Custos accepts it (documentation type).
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(title = "Custos CloudEvent envelope")]
pub struct Envelope {
    /// Always `1.0`.
    pub specversion: String,
    /// Event id; `id` + `source` identify the event for deduplication.
    pub id: String,
    /// Producer URI-reference.
    pub source: String,
    /// One of the `custos.*` event types.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When it happened (RFC 3339). Required by Custos.
    pub time: DateTime<Utc>,
    /// Optional; informational only (never stored, it may identify a patient).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `application/json` when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// Extension attribute: tenant (1-64 of A-Z a-z 0-9 - _ .).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The payload; its schema depends on `type` (see the `*.data.schema.json` files).
    pub data: serde_json::Value,
}

/// `(file name, document)` for every producer schema.
pub fn documents() -> Vec<(&'static str, serde_json::Value)> {
    fn doc<T: JsonSchema>() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default()
    }
    vec![
        ("envelope.schema.json", doc::<Envelope>()),
        ("auth.data.schema.json", doc::<AuthData>()),
        ("token.data.schema.json", doc::<TokenData>()),
        ("consent.data.schema.json", doc::<ConsentData>()),
        ("fhir-access.data.schema.json", doc::<FhirAccessData>()),
        (
            "user-deprovisioned.data.schema.json",
            doc::<DeprovisionData>(),
        ),
        ("break-glass.data.schema.json", doc::<BreakGlassData>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn jsonschema_files_match_the_types() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("jsonschema");
        let bless = std::env::var_os("CUSTOS_BLESS").is_some();
        for (name, doc) in documents() {
            let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
            let path = dir.join(name);
            if bless {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
                continue;
            }
            let on_disk = std::fs::read_to_string(&path)
                .unwrap_or_else(|_| panic!("{name} missing: run with CUSTOS_BLESS=1"));
            assert_eq!(on_disk, text, "{name} is stale: run with CUSTOS_BLESS=1");
        }
    }

    #[test]
    fn required_fields_are_required_in_the_schema() {
        let docs = documents();
        let fhir = &docs
            .iter()
            .find(|(n, _)| n.starts_with("fhir-access"))
            .unwrap()
            .1;
        let required: Vec<&str> = fhir["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for f in [
            "requestId",
            "iss",
            "sub",
            "client_id",
            "interaction",
            "resourceType",
            "decision",
            "httpStatus",
        ] {
            assert!(required.contains(&f), "{f} not required");
        }
        assert!(!required.contains(&"patient"));
    }
}
