//! FHIR R4 `AuditEvent` resources recorded after the IHE Basic Audit Log Patterns (BALP)
//! RESTful profiles (`IHE.BasicAudit.Read`/`PatientRead`, `Query`/`PatientQuery`,
//! `Create`, `Update`, `Delete` and their patient variants) together with the BALP OAuth
//! token-use profiles (`IHE.BasicAudit.OAUTHaccessTokenUse.*`). Each becomes one
//! `custos.fhir.access` event.
//!
//! | Custos | AuditEvent |
//! |---|---|
//! | `id` | `AuditEvent.id` (required) |
//! | `source` | `source.observer.reference`, else `.display`, else `.identifier.value`, else `fhir:` + `source.site` |
//! | `time` | `recorded` (required) |
//! | `tenant` | extension [`EXT_TENANT`], else none |
//! | `interaction` | `subtype` coding of `http://hl7.org/fhir/restful-interaction` (required); `search` becomes `search-type` when a resource type is known, else `search-system` |
//! | `decision` | `outcome` `0` permit; `4`, `8`, `12` deny |
//! | `httpStatus` | extension [`EXT_HTTP_STATUS`], else 200 for outcome `0`, 403 for `4`, 500 for `8` and `12` |
//! | user | the agent with `requestor = true` (else a BALP `UserOauthAgent`/`UserSamlAgent`); required |
//! | `sub`, `iss` | user `who.identifier.value` and `.system` (BALP OAuth mapping), `iss` else extension [`EXT_ISSUER`] |
//! | `fhirUser` | user `who.reference` (as `Type/id`) |
//! | `jti` | user `policy[0]` (BALP: JWT ID), else extension [`EXT_JTI`]; never taken from the `Opaque` profile, whose policy is a token fragment |
//! | `scope` | extension [`EXT_SCOPE`] (on the resource or the user agent) |
//! | `purposeOfUse` | v3-ActReason codes of `purposeOfEvent` and of the user's `purposeOfUse` |
//! | `breakGlassReason` | extension [`EXT_BREAK_GLASS_REASON`], else the `text` of the concept carrying `BTG` |
//! | `client_id` | the DICOM `110150` (Application) agent's `who.identifier.value` (else `.display`); without one, the non-requestor `110152`/`110153` agent with a machine-name or IP network address |
//! | `sourceIp` | the client agent's `network.address` (type `2`, IP), else the user's |
//! | `userAgent` | extension [`EXT_USER_AGENT`] |
//! | `patient` | entity with role `1` (object-role Patient) referencing `Patient/x` |
//! | `resourceType`, `resourceId` | the data entity (role `4` Domain Resource, `3`, `20`, or any other entity with a reference) `what.reference` `Type/id` (or `what.type`) |
//! | search type | the query entity (role `24`): a `resource-types` type code, else the last resource-type segment of the request line in `description`/`name`, else the data entities' type |
//! | `returnedIds` | searches and histories: the data entities' references |
//! | `encounter` | the entity referencing `Encounter/x` |
//! | `requestId` | BALP `XrequestId` entity `what.identifier.value`, else `AuditEvent.id` |
//!
//! System-level interactions without a typed entity get the resource type `Resource`
//! (`search-system`, `history-system`), `Bundle` (`transaction`, `batch`) or
//! `CapabilityStatement` (`capabilities`).
//!
//! The query entity's base64 `query`, its `description`, agent names and displays of the
//! user are read only to find a type name and are never copied: they may hold PHI.
//!
//! Keycloak admin events also carry `resourceType` (`USER`, `CLIENT`, ...) and reach this
//! decoder first; a document with a top-level `realmId` whose `resourceType` is not
//! `AuditEvent` is handed to [`crate::decode::keycloak::decode_keycloak`].

use chrono::{DateTime, Utc};
use memchr::memmem;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::json;
use crate::error::DecodeError;
use crate::event::{
    Decision, Event, EventType, FhirAccessData, Payload, SourceFormat, INTERACTIONS,
};

/// Extension (on `AuditEvent`) with the HTTP status returned (`valueInteger`).
pub const EXT_HTTP_STATUS: &str = "urn:custos:fhir:ext:http-status";
/// Extension (on `AuditEvent`) with the Custos tenant (`valueString` or `valueCode`).
pub const EXT_TENANT: &str = "urn:custos:fhir:ext:tenant";
/// Extension (on `AuditEvent` or the user agent) with the token's scopes, space separated.
pub const EXT_SCOPE: &str = "urn:custos:fhir:ext:scope";
/// Extension (on `AuditEvent` or the user agent) with the token issuer, when
/// `who.identifier.system` does not hold it.
pub const EXT_ISSUER: &str = "urn:custos:fhir:ext:issuer";
/// Extension (on `AuditEvent` or the user agent) with the token's `jti`, when
/// `policy` does not hold it.
pub const EXT_JTI: &str = "urn:custos:fhir:ext:jti";
/// Extension (on `AuditEvent` or the user agent) with the stated break-the-glass reason.
pub const EXT_BREAK_GLASS_REASON: &str = "urn:custos:fhir:ext:break-glass-reason";
/// Extension (on `AuditEvent`) with the HTTP `User-Agent` of the request.
pub const EXT_USER_AGENT: &str = "urn:custos:fhir:ext:user-agent";

const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const AUDIT_EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const RESOURCE_TYPES: &str = "http://hl7.org/fhir/resource-types";
const BALP_ENTITY_TYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
const BALP_USER_AGENT_TYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const ACT_REASON: [&str; 2] = [
    "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "urn:oid:2.16.840.1.113883.5.8",
];

/// Just enough to route Keycloak admin events away.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    resource_type: Option<String>,
    realm_id: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditEventJson {
    resource_type: String,
    id: Option<String>,
    meta: Option<Meta>,
    #[serde(default)]
    extension: Vec<Extension>,
    #[serde(rename = "type")]
    ty: Option<CodingLike>,
    #[serde(default)]
    subtype: Vec<CodingLike>,
    recorded: Option<DateTime<Utc>>,
    outcome: Option<Outcome>,
    #[serde(default)]
    purpose_of_event: Vec<CodingLike>,
    #[serde(default)]
    agent: Vec<Agent>,
    source: Option<Source>,
    #[serde(default)]
    entity: Vec<Entity>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    profile: Vec<String>,
}

/// A `Coding` (R4 `subtype`, `entity.type`, `entity.role`) or a `CodeableConcept`
/// (R4 `agent.type`, `purposeOfEvent`; R5 `subtype`): both shapes fit.
#[derive(Deserialize, Default)]
struct CodingLike {
    system: Option<String>,
    code: Option<String>,
    #[serde(default)]
    coding: Vec<Coding>,
    text: Option<String>,
}

#[derive(Deserialize)]
struct Coding {
    system: Option<String>,
    code: Option<String>,
}

impl CodingLike {
    /// `(system, code)` of the value itself and of each of its codings.
    fn codings(&self) -> impl Iterator<Item = (Option<&str>, &str)> {
        let own = self.code.as_deref().map(|c| (self.system.as_deref(), c));
        own.into_iter().chain(
            self.coding
                .iter()
                .filter_map(|c| c.code.as_deref().map(|code| (c.system.as_deref(), code))),
        )
    }

    /// Has `code` in `system` (a coding without a system matches too).
    fn has(&self, system: &str, code: &str) -> bool {
        self.codings()
            .any(|(s, c)| c == code && s.is_none_or(|s| s == system))
    }
}

/// R4 `outcome` is a code; R5 has `outcome.code` as a Coding.
#[derive(Deserialize)]
#[serde(untagged)]
enum Outcome {
    Code(String),
    Concept { code: CodingLike },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Agent {
    #[serde(rename = "type")]
    ty: Option<CodingLike>,
    who: Option<Reference>,
    requestor: Option<bool>,
    #[serde(default)]
    policy: Vec<String>,
    network: Option<Network>,
    #[serde(default)]
    purpose_of_use: Vec<CodingLike>,
    #[serde(default)]
    extension: Vec<Extension>,
}

impl Agent {
    fn has_type(&self, system: &str, code: &str) -> bool {
        self.ty.as_ref().is_some_and(|t| t.has(system, code))
    }
}

#[derive(Deserialize)]
struct Reference {
    reference: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    identifier: Option<Identifier>,
    display: Option<String>,
}

#[derive(Deserialize)]
struct Identifier {
    system: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
struct Network {
    address: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
}

#[derive(Deserialize)]
struct Source {
    site: Option<String>,
    observer: Option<Reference>,
}

#[derive(Deserialize)]
struct Entity {
    what: Option<Reference>,
    #[serde(rename = "type")]
    ty: Option<CodingLike>,
    role: Option<CodingLike>,
    name: Option<String>,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Extension {
    url: Option<String>,
    value_string: Option<String>,
    value_code: Option<String>,
    value_id: Option<String>,
    value_uri: Option<String>,
    value_integer: Option<i64>,
    value_unsigned_int: Option<i64>,
    value_positive_int: Option<i64>,
}

impl Extension {
    fn text(&self) -> Option<&str> {
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

    fn integer(&self) -> Option<i64> {
        self.value_integer
            .or(self.value_unsigned_int)
            .or(self.value_positive_int)
    }
}

fn find_ext<'a>(exts: &'a [Extension], url: &str) -> Option<&'a Extension> {
    exts.iter().find(|e| e.url.as_deref() == Some(url))
}

fn ext_text(exts: &[Extension], url: &str) -> Option<String> {
    find_ext(exts, url)
        .and_then(Extension::text)
        .map(str::to_owned)
}

/// Decodes a FHIR R4 AuditEvent resource (or hands a Keycloak admin event on).
pub fn decode_fhir_audit_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    if memmem::find(bytes, b"\"realmId\"").is_some() {
        let probe: Probe = parse(bytes, "")?;
        if probe.realm_id.is_some() && probe.resource_type.as_deref() != Some("AuditEvent") {
            return super::keycloak::decode_keycloak(bytes);
        }
    }
    let audit: AuditEventJson = parse(bytes, "AuditEvent")?;
    map(audit)
}

fn parse<'de, T: Deserialize<'de>>(bytes: &'de [u8], prefix: &str) -> Result<T, DecodeError> {
    json::parse(bytes, prefix)
}

fn missing(path: &str) -> DecodeError {
    DecodeError::MissingField(path.to_owned())
}

fn nonempty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.trim().is_empty())
}

/// What an entity is, for this mapping.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EntityKind {
    Transaction,
    Query,
    Patient,
    Data,
    Other,
}

fn entity_kind(e: &Entity) -> EntityKind {
    let role = |code| e.role.as_ref().is_some_and(|r| r.has(OBJECT_ROLE, code));
    if e.ty
        .as_ref()
        .is_some_and(|t| t.has(BALP_ENTITY_TYPE, "XrequestId"))
    {
        EntityKind::Transaction
    } else if role("24") {
        EntityKind::Query
    } else if role("1") {
        EntityKind::Patient
    } else if entity_target(e).is_some() {
        EntityKind::Data
    } else {
        EntityKind::Other
    }
}

/// `(type, id)` an entity points at: from `what.reference`, else type only from `what.type`.
fn entity_target(e: &Entity) -> Option<(&str, Option<&str>)> {
    let what = e.what.as_ref()?;
    if let Some((t, id)) = what.reference.as_deref().and_then(split_reference) {
        return Some((t, Some(id)));
    }
    let t = what.ty.as_deref()?;
    let t = t.rsplit('/').next().unwrap_or(t);
    is_type_name(t).then_some((t, None))
}

/// Splits `Type/id`, `Type/id/_history/v` or an absolute URL ending so into type and id.
fn split_reference(reference: &str) -> Option<(&str, &str)> {
    let r = reference.split(['?', '#']).next().unwrap_or("");
    let r = match r.find("/_history") {
        Some(i) => &r[..i],
        None => r,
    };
    let mut parts = r.trim_end_matches('/').rsplit('/');
    let id = parts.next().filter(|id| !id.is_empty())?;
    let t = parts.next()?;
    is_type_name(t).then_some((t, id))
}

/// A FHIR resource type name: `PascalCase` ASCII letters (rejects `FHIR`, `r4`, hosts).
fn is_type_name(s: &str) -> bool {
    s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphabetic())
        && s.chars().any(|c| c.is_ascii_lowercase())
}

/// The resource type a query entity searched: a `resource-types` type code, else the last
/// resource-type path segment of the request line in `description` or `name`.
fn query_type(e: &Entity) -> Option<String> {
    let coded = e.ty.as_ref().and_then(|t| {
        t.codings()
            .find(|(s, c)| *s == Some(RESOURCE_TYPES) && is_type_name(c))
            .map(|(_, c)| c.to_owned())
    });
    coded
        .or_else(|| e.description.as_deref().and_then(type_from_request_line))
        .or_else(|| e.name.as_deref().and_then(type_from_request_line))
}

/// `GET https://host/r4/Observation?patient=x` or `POST /r4/Observation/_search HTTP/1.1`:
/// the last path segment that is a resource type name. Only the name is kept.
fn type_from_request_line(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut tokens = line.split_ascii_whitespace();
    let first = tokens.next()?;
    let target = if first.chars().all(|c| c.is_ascii_uppercase()) {
        tokens.next()?
    } else {
        first
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    path.rsplit('/')
        .find(|s| is_type_name(s))
        .map(str::to_owned)
}

fn map(audit: AuditEventJson) -> Result<Event, DecodeError> {
    if audit.resource_type != "AuditEvent" {
        return Err(DecodeError::unknown_type(&format!(
            "fhir:{}",
            audit.resource_type
        )));
    }
    let id = nonempty(audit.id.as_deref())
        .ok_or_else(|| missing("AuditEvent.id"))?
        .to_owned();
    let time = audit
        .recorded
        .ok_or_else(|| missing("AuditEvent.recorded"))?;

    // Interaction.
    let interaction = audit
        .subtype
        .iter()
        .flat_map(CodingLike::codings)
        .find(|(s, c)| match s {
            Some(s) => *s == RESTFUL_INTERACTION,
            None => INTERACTIONS.contains(c),
        })
        .map(|(_, c)| c);
    let interaction = match interaction {
        Some(i) if INTERACTIONS.contains(&i) => i,
        Some(other) => return Err(DecodeError::unknown_type(&format!("fhir:{other}"))),
        None => {
            let non_rest = audit.ty.as_ref().and_then(|t| {
                t.codings()
                    .find(|(s, c)| !(*c == "rest" && s.is_none_or(|s| s == AUDIT_EVENT_TYPE)))
                    .map(|(_, c)| c)
            });
            return Err(match non_rest {
                Some(code) => DecodeError::unknown_type(&format!("fhir:AuditEvent:{code}")),
                None => missing("AuditEvent.subtype"),
            });
        }
    };

    // Outcome.
    let outcome = match &audit.outcome {
        None => return Err(missing("AuditEvent.outcome")),
        Some(Outcome::Code(c)) => c.as_str(),
        Some(Outcome::Concept { code }) => code
            .codings()
            .next()
            .map(|(_, c)| c)
            .ok_or_else(|| missing("AuditEvent.outcome.code"))?,
    };
    let (decision, default_status) = match outcome {
        "0" => (Decision::Permit, 200),
        "4" => (Decision::Deny, 403),
        "8" | "12" => (Decision::Deny, 500),
        _ => {
            return Err(DecodeError::invalid(
                "AuditEvent.outcome",
                "not an audit-event-outcome code (0, 4, 8, 12)",
            ))
        }
    };
    let http_status = match find_ext(&audit.extension, EXT_HTTP_STATUS) {
        None => default_status,
        Some(ext) => ext
            .integer()
            .and_then(|s| u16::try_from(s).ok())
            .filter(|s| (100..=599).contains(s))
            .ok_or_else(|| {
                DecodeError::invalid(
                    "AuditEvent.extension(http-status)",
                    "not an HTTP status code",
                )
            })?,
    };

    // Source.
    let source = audit.source.as_ref().and_then(|s| {
        let observer = s.observer.as_ref();
        observer
            .and_then(|o| nonempty(o.reference.as_deref()))
            .or_else(|| observer.and_then(|o| nonempty(o.display.as_deref())))
            .or_else(|| {
                observer
                    .and_then(|o| o.identifier.as_ref())
                    .and_then(|i| nonempty(i.value.as_deref()))
            })
            .map(str::to_owned)
            .or_else(|| nonempty(s.site.as_deref()).map(|site| format!("fhir:{site}")))
    });
    let source = source.ok_or_else(|| missing("AuditEvent.source.observer"))?;

    // The user (requestor) agent.
    let user = audit
        .agent
        .iter()
        .find(|a| a.requestor == Some(true))
        .or_else(|| {
            audit.agent.iter().find(|a| {
                a.has_type(BALP_USER_AGENT_TYPE, "UserOauthAgent")
                    || a.has_type(BALP_USER_AGENT_TYPE, "UserSamlAgent")
            })
        })
        .ok_or_else(|| missing("AuditEvent.agent(requestor)"))?;
    let user_id = user.who.as_ref().and_then(|w| w.identifier.as_ref());
    let sub = nonempty(user_id.and_then(|i| i.value.as_deref()))
        .ok_or_else(|| missing("AuditEvent.agent(requestor).who.identifier.value"))?
        .to_owned();
    let user_ext =
        |url: &str| ext_text(&audit.extension, url).or_else(|| ext_text(&user.extension, url));
    let iss = nonempty(user_id.and_then(|i| i.system.as_deref()))
        .map(str::to_owned)
        .or_else(|| user_ext(EXT_ISSUER))
        .ok_or_else(|| missing("AuditEvent.agent(requestor).who.identifier.system"))?;
    let fhir_user = user
        .who
        .as_ref()
        .and_then(|w| w.reference.as_deref())
        .and_then(split_reference)
        .map(|(t, id)| format!("{t}/{id}"));
    let opaque = audit.meta.as_ref().is_some_and(|m| {
        m.profile
            .iter()
            .any(|p| p.contains("OAUTHaccessTokenUse.Opaque"))
    });
    let jti = user
        .policy
        .first()
        .filter(|_| !opaque)
        .and_then(|p| nonempty(Some(p.as_str())))
        .map(str::to_owned)
        .or_else(|| user_ext(EXT_JTI));
    let scope = user_ext(EXT_SCOPE);

    // The client agent.
    let client = audit
        .agent
        .iter()
        .find(|a| a.has_type(DCM, "110150"))
        .or_else(|| {
            audit.agent.iter().find(|a| {
                a.requestor != Some(true)
                    && (a.has_type(DCM, "110152") || a.has_type(DCM, "110153"))
                    && a.network
                        .as_ref()
                        .is_some_and(|n| matches!(n.ty.as_deref(), Some("1" | "2")))
            })
        })
        .ok_or_else(|| missing("AuditEvent.agent(client)"))?;
    let client_id = client
        .who
        .as_ref()
        .and_then(|w| {
            nonempty(w.identifier.as_ref().and_then(|i| i.value.as_deref()))
                .or(nonempty(w.display.as_deref()))
                .or(nonempty(w.reference.as_deref()))
        })
        .ok_or_else(|| missing("AuditEvent.agent(client).who"))?
        .to_owned();
    let ip_of = |a: &Agent| {
        a.network
            .as_ref()
            .filter(|n| matches!(n.ty.as_deref(), None | Some("2")))
            .and_then(|n| nonempty(n.address.as_deref()))
            .map(str::to_owned)
    };
    let source_ip = ip_of(client).or_else(|| ip_of(user));

    // Purpose of use and break-the-glass.
    let mut purpose_of_use: Vec<String> = Vec::new();
    let mut btg_text: Option<String> = None;
    for concept in audit
        .purpose_of_event
        .iter()
        .chain(user.purpose_of_use.iter())
    {
        for (system, code) in concept.codings() {
            if !system.is_none_or(|s| ACT_REASON.contains(&s)) {
                continue;
            }
            if code == "BTG" && btg_text.is_none() {
                btg_text = nonempty(concept.text.as_deref()).map(str::to_owned);
            }
            if !purpose_of_use.iter().any(|p| p == code) {
                purpose_of_use.push(code.to_owned());
            }
        }
    }
    let break_glass_reason = user_ext(EXT_BREAK_GLASS_REASON).or(btg_text);
    if purpose_of_use.iter().any(|p| p == "BTG")
        && decision == Decision::Permit
        && break_glass_reason.is_none()
    {
        return Err(missing("AuditEvent.purposeOfEvent(BTG).text"));
    }

    // Entities.
    let kinds: Vec<EntityKind> = audit.entity.iter().map(entity_kind).collect();
    let of_kind = |kind: EntityKind| {
        audit
            .entity
            .iter()
            .zip(kinds.iter())
            .filter(move |(_, k)| **k == kind)
            .map(|(e, _)| e)
    };
    let request_id = of_kind(EntityKind::Transaction)
        .find_map(|e| {
            e.what
                .as_ref()
                .and_then(|w| w.identifier.as_ref())
                .and_then(|i| nonempty(i.value.as_deref()))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| id.clone());
    let search_like = matches!(
        interaction,
        "search" | "search-type" | "search-system" | "history-type" | "history-system"
    );
    let patient_ref = |e: &Entity| {
        e.what
            .as_ref()
            .and_then(|w| w.reference.as_deref())
            .and_then(split_reference)
            .filter(|(t, _)| *t == "Patient")
            .map(|(_, id)| format!("Patient/{id}"))
    };
    let patient = of_kind(EntityKind::Patient)
        .find_map(patient_ref)
        .or_else(|| {
            if search_like {
                None
            } else {
                audit.entity.iter().find_map(patient_ref)
            }
        });
    let encounter = audit.entity.iter().find_map(|e| {
        e.what
            .as_ref()
            .and_then(|w| w.reference.as_deref())
            .and_then(split_reference)
            .filter(|(t, _)| *t == "Encounter")
            .map(|(_, id)| format!("Encounter/{id}"))
    });
    let explicit_data_role = |e: &Entity| {
        e.role.as_ref().is_some_and(|r| {
            r.has(OBJECT_ROLE, "4") || r.has(OBJECT_ROLE, "3") || r.has(OBJECT_ROLE, "20")
        })
    };
    let primary = of_kind(EntityKind::Data)
        .find(|e| explicit_data_role(e))
        .or_else(|| of_kind(EntityKind::Data).next())
        .and_then(entity_target);
    let data_type = primary.map(|(t, _)| t.to_owned());

    let mut interaction = interaction.to_owned();
    let mut resource_id = None;
    let mut returned_ids = Vec::new();
    let resource_type = match interaction.as_str() {
        "search-system" | "history-system" => "Resource".to_owned(),
        "capabilities" => "CapabilityStatement".to_owned(),
        "transaction" | "batch" => "Bundle".to_owned(),
        "search" | "search-type" | "history-type" => {
            let searched = of_kind(EntityKind::Query)
                .find_map(query_type)
                .or(data_type);
            match (searched, interaction.as_str()) {
                (Some(t), "search") => {
                    interaction = "search-type".to_owned();
                    t
                }
                (Some(t), _) => t,
                (None, "search") => {
                    interaction = "search-system".to_owned();
                    "Resource".to_owned()
                }
                (None, _) => return Err(missing("AuditEvent.entity(query)")),
            }
        }
        _ => match primary {
            Some((t, id)) => {
                resource_id = id.map(str::to_owned);
                t.to_owned()
            }
            None => match patient.as_deref().and_then(|p| p.strip_prefix("Patient/")) {
                Some(pid) if interaction != "create" => {
                    resource_id = Some(pid.to_owned());
                    "Patient".to_owned()
                }
                _ if interaction == "history" => "Resource".to_owned(),
                _ => return Err(missing("AuditEvent.entity(data).what")),
            },
        },
    };
    if search_like {
        returned_ids = of_kind(EntityKind::Data)
            .filter_map(entity_target)
            .filter_map(|(t, id)| id.map(|id| format!("{t}/{id}")))
            .collect();
    }

    let data = FhirAccessData {
        request_id,
        iss,
        sub,
        fhir_user,
        client_id,
        jti,
        scope,
        interaction,
        resource_type,
        resource_id,
        patient,
        encounter,
        purpose_of_use,
        break_glass_reason,
        decision,
        http_status,
        source_ip,
        user_agent: ext_text(&audit.extension, EXT_USER_AGENT),
        returned_ids,
    };
    Ok(Event {
        id,
        source,
        event_type: EventType::FhirAccess,
        time,
        tenant: ext_text(&audit.extension, EXT_TENANT),
        format: SourceFormat::FhirAuditEvent,
        payload: Payload::FhirAccess(data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_references() {
        assert_eq!(split_reference("Patient/123"), Some(("Patient", "123")));
        assert_eq!(
            split_reference("https://fhir.example/r4/Observation/o-1/_history/3"),
            Some(("Observation", "o-1"))
        );
        assert_eq!(split_reference("#contained"), None);
        assert_eq!(split_reference("urn:uuid:1234"), None);
        assert_eq!(split_reference("Patient/"), None);
    }

    #[test]
    fn finds_the_searched_type() {
        let t = |s| type_from_request_line(s);
        assert_eq!(
            t("GET test.fhir.org/r4/Observation?patient=ex-patient&_count=10\nAccept: x"),
            Some("Observation".to_owned())
        );
        assert_eq!(
            t("POST /r4/Observation/_search HTTP/1.1\nHost: test.fhir.org"),
            Some("Observation".to_owned())
        );
        assert_eq!(t("GET Patient/123/Condition"), Some("Condition".to_owned()));
        assert_eq!(t("GET https://x.example/FHIR?_type=Observation"), None);
    }
}
