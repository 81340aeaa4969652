//! The parts of a FHIR R4 `AuditEvent` the mapping reads, as serde shapes. Everything else
//! in the resource is skipped while parsing.

use chrono::{DateTime, Utc};
use serde::de::IgnoredAny;
use serde::Deserialize;

/// Just enough to route Keycloak admin events away.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Probe {
    pub(super) resource_type: Option<String>,
    pub(super) realm_id: Option<IgnoredAny>,
}

/// The `AuditEvent` resource.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AuditEventJson {
    pub(super) resource_type: String,
    pub(super) id: Option<String>,
    pub(super) meta: Option<Meta>,
    #[serde(default)]
    pub(super) extension: Vec<Extension>,
    #[serde(rename = "type")]
    pub(super) ty: Option<CodingLike>,
    #[serde(default)]
    pub(super) subtype: Vec<CodingLike>,
    pub(super) recorded: Option<DateTime<Utc>>,
    pub(super) outcome: Option<Outcome>,
    #[serde(default)]
    pub(super) purpose_of_event: Vec<CodingLike>,
    #[serde(default)]
    pub(super) agent: Vec<Agent>,
    pub(super) source: Option<Source>,
    #[serde(default)]
    pub(super) entity: Vec<Entity>,
}

/// `meta`: only the profiles (to recognize the BALP `Opaque` token profile).
#[derive(Deserialize)]
pub(super) struct Meta {
    #[serde(default)]
    pub(super) profile: Vec<String>,
}

/// A `Coding` (R4 `subtype`, `entity.type`, `entity.role`) or a `CodeableConcept`
/// (R4 `agent.type`, `purposeOfEvent`; R5 `subtype`): both shapes fit.
#[derive(Deserialize, Default)]
pub(super) struct CodingLike {
    pub(super) system: Option<String>,
    pub(super) code: Option<String>,
    #[serde(default)]
    pub(super) coding: Vec<Coding>,
    pub(super) text: Option<String>,
}

/// One `Coding` of a `CodeableConcept`.
#[derive(Deserialize)]
pub(super) struct Coding {
    pub(super) system: Option<String>,
    pub(super) code: Option<String>,
}

impl CodingLike {
    /// `(system, code)` of the value itself and of each of its codings.
    pub(super) fn codings(&self) -> impl Iterator<Item = (Option<&str>, &str)> {
        let own = self.code.as_deref().map(|c| (self.system.as_deref(), c));
        own.into_iter().chain(
            self.coding
                .iter()
                .filter_map(|c| c.code.as_deref().map(|code| (c.system.as_deref(), code))),
        )
    }

    /// Has `code` in `system` (a coding without a system matches too).
    pub(super) fn has(&self, system: &str, code: &str) -> bool {
        self.codings()
            .any(|(s, c)| c == code && s.is_none_or(|s| s == system))
    }
}

/// R4 `outcome` is a code; R5 has `outcome.code` as a Coding.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Outcome {
    /// R4: the code itself.
    Code(String),
    /// R5: a concept holding the code.
    Concept {
        /// The outcome coding.
        code: CodingLike,
    },
}

/// An `agent`: the user, the client application or a server.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Agent {
    #[serde(rename = "type")]
    pub(super) ty: Option<CodingLike>,
    pub(super) who: Option<Reference>,
    pub(super) requestor: Option<bool>,
    #[serde(default)]
    pub(super) policy: Vec<String>,
    pub(super) network: Option<Network>,
    #[serde(default)]
    pub(super) purpose_of_use: Vec<CodingLike>,
    #[serde(default)]
    pub(super) extension: Vec<Extension>,
}

impl Agent {
    /// Has a `type` coding `code` in `system`.
    pub(super) fn has_type(&self, system: &str, code: &str) -> bool {
        self.ty.as_ref().is_some_and(|t| t.has(system, code))
    }
}

/// A `Reference` (`agent.who`, `entity.what`, `source.observer`).
#[derive(Deserialize)]
pub(super) struct Reference {
    pub(super) reference: Option<String>,
    #[serde(rename = "type")]
    pub(super) ty: Option<String>,
    pub(super) identifier: Option<Identifier>,
    pub(super) display: Option<String>,
}

/// An `Identifier`.
#[derive(Deserialize)]
pub(super) struct Identifier {
    pub(super) system: Option<String>,
    pub(super) value: Option<String>,
}

/// `agent.network`: an address and its type (`1` machine name, `2` IP, `5` URI).
#[derive(Deserialize)]
pub(super) struct Network {
    pub(super) address: Option<String>,
    #[serde(rename = "type")]
    pub(super) ty: Option<String>,
}

/// `source`: the server that recorded the event.
#[derive(Deserialize)]
pub(super) struct Source {
    pub(super) site: Option<String>,
    pub(super) observer: Option<Reference>,
}

/// An `entity`: the patient, the data, the query or the transaction.
#[derive(Deserialize)]
pub(super) struct Entity {
    pub(super) what: Option<Reference>,
    #[serde(rename = "type")]
    pub(super) ty: Option<CodingLike>,
    pub(super) role: Option<CodingLike>,
    pub(super) name: Option<String>,
    pub(super) description: Option<String>,
}

/// An `extension` with the value types the Custos extensions use.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Extension {
    pub(super) url: Option<String>,
    pub(super) value_string: Option<String>,
    pub(super) value_code: Option<String>,
    pub(super) value_id: Option<String>,
    pub(super) value_uri: Option<String>,
    pub(super) value_integer: Option<i64>,
    pub(super) value_unsigned_int: Option<i64>,
    pub(super) value_positive_int: Option<i64>,
}

impl Extension {
    /// The non-blank text value (string, code, id or uri).
    pub(super) fn text(&self) -> Option<&str> {
        [
            &self.value_string,
            &self.value_code,
            &self.value_id,
            &self.value_uri,
        ]
        .into_iter()
        .find_map(|v| v.as_deref())
        .filter(|v| !v.trim().is_empty())
    }

    /// The integer value (integer, unsignedInt or positiveInt).
    pub(super) fn integer(&self) -> Option<i64> {
        self.value_integer
            .or(self.value_unsigned_int)
            .or(self.value_positive_int)
    }
}

/// The first extension with `url`.
pub(super) fn find_ext<'a>(exts: &'a [Extension], url: &str) -> Option<&'a Extension> {
    exts.iter().find(|e| e.url.as_deref() == Some(url))
}

/// The non-blank text value of the first extension with `url`.
pub(super) fn ext_text(exts: &[Extension], url: &str) -> Option<String> {
    find_ext(exts, url)
        .and_then(Extension::text)
        .map(str::to_owned)
}
