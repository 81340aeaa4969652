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

mod agents;
mod entities;
mod resource;

use memchr::memmem;

use self::agents::{Client, User};
use self::entities::Entities;
use self::resource::{ext_text, find_ext, AuditEventJson, CodingLike, Outcome, Probe};
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

/// Decodes a FHIR R4 AuditEvent resource (or hands a Keycloak admin event on).
pub fn decode_fhir_audit_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    if memmem::find(bytes, b"\"realmId\"").is_some() {
        let probe: Probe = json::parse(bytes, "")?;
        if probe.realm_id.is_some() && probe.resource_type.as_deref() != Some("AuditEvent") {
            return super::keycloak::decode_keycloak(bytes);
        }
    }
    let audit: AuditEventJson = json::parse(bytes, "AuditEvent")?;
    map(audit)
}

/// A missing required field, named by its FHIR path.
fn missing(path: &str) -> DecodeError {
    DecodeError::MissingField(path.to_owned())
}

/// The value unless absent or blank.
fn nonempty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.trim().is_empty())
}

/// Maps the resource to a `custos.fhir.access` event, one concern per step, in the order
/// their errors are reported.
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
    let interaction = interaction(&audit)?;
    let (decision, http_status) = outcome(&audit)?;
    let source = source(&audit)?;
    let user = User::find(&audit)?;
    let client = Client::find(&audit, &user)?;
    let (purpose_of_use, break_glass_reason) = purpose_of_use(&audit, &user, decision)?;
    let entities = Entities::classify(&audit.entity);
    let request_id = entities.request_id().unwrap_or_else(|| id.clone());
    let search_like = matches!(
        interaction,
        "search" | "search-type" | "search-system" | "history-type" | "history-system"
    );
    let patient = entities.patient(search_like);
    let target = entities.target(interaction, patient.as_deref())?;
    let returned_ids = if search_like {
        entities.returned_ids()
    } else {
        Vec::new()
    };
    let data = FhirAccessData {
        request_id,
        iss: user.iss,
        sub: user.sub,
        fhir_user: user.fhir_user,
        client_id: client.client_id,
        jti: user.jti,
        scope: user.scope,
        interaction: target.interaction,
        resource_type: target.resource_type,
        resource_id: target.resource_id,
        patient,
        encounter: entities.encounter(),
        purpose_of_use,
        break_glass_reason,
        decision,
        http_status,
        source_ip: client.source_ip,
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

/// The REST interaction: the `subtype` coding of [`RESTFUL_INTERACTION`] (or a known
/// interaction code without a system). Without one, a non-`rest` event type is an unknown
/// type and a `rest` event lacks its subtype.
fn interaction(audit: &AuditEventJson) -> Result<&str, DecodeError> {
    let interaction = audit
        .subtype
        .iter()
        .flat_map(CodingLike::codings)
        .find(|(s, c)| match s {
            Some(s) => *s == RESTFUL_INTERACTION,
            None => INTERACTIONS.contains(c),
        })
        .map(|(_, c)| c);
    match interaction {
        Some(i) if INTERACTIONS.contains(&i) => Ok(i),
        Some(other) => Err(DecodeError::unknown_type(&format!("fhir:{other}"))),
        None => {
            let non_rest = audit.ty.as_ref().and_then(|t| {
                t.codings()
                    .find(|(s, c)| !(*c == "rest" && s.is_none_or(|s| s == AUDIT_EVENT_TYPE)))
                    .map(|(_, c)| c)
            });
            Err(match non_rest {
                Some(code) => DecodeError::unknown_type(&format!("fhir:AuditEvent:{code}")),
                None => missing("AuditEvent.subtype"),
            })
        }
    }
}

/// The decision and HTTP status: from `outcome` (R4 code or R5 concept), the status from
/// extension [`EXT_HTTP_STATUS`] when present.
fn outcome(audit: &AuditEventJson) -> Result<(Decision, u16), DecodeError> {
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
    Ok((decision, http_status))
}

/// The event source: `source.observer` reference, display or identifier, else
/// `fhir:` + `source.site`.
fn source(audit: &AuditEventJson) -> Result<String, DecodeError> {
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
    source.ok_or_else(|| missing("AuditEvent.source.observer"))
}

/// The v3-ActReason purposes of `purposeOfEvent` and of the user's `purposeOfUse` (each
/// once, in order), and the break-the-glass reason: extension [`EXT_BREAK_GLASS_REASON`],
/// else the text of the concept carrying `BTG`. A permitted `BTG` access needs a reason.
fn purpose_of_use(
    audit: &AuditEventJson,
    user: &User<'_>,
    decision: Decision,
) -> Result<(Vec<String>, Option<String>), DecodeError> {
    let mut purpose_of_use: Vec<String> = Vec::new();
    let mut btg_text: Option<String> = None;
    for concept in audit
        .purpose_of_event
        .iter()
        .chain(user.agent.purpose_of_use.iter())
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
    let break_glass_reason = user.extension(EXT_BREAK_GLASS_REASON).or(btg_text);
    if purpose_of_use.iter().any(|p| p == "BTG")
        && decision == Decision::Permit
        && break_glass_reason.is_none()
    {
        return Err(missing("AuditEvent.purposeOfEvent(BTG).text"));
    }
    Ok((purpose_of_use, break_glass_reason))
}
