//! Rules every decoded event must satisfy, whatever format it came in.

use crate::error::DecodeError;
use crate::event::{Decision, Event, EventType, Payload, INTERACTIONS};

/// Longest accepted identifier-like value (ids, subjects, client ids).
pub const MAX_ID_LEN: usize = 256;
/// Longest accepted free-text value (reasons, user agents).
pub const MAX_TEXT_LEN: usize = 2048;

fn required(field: &str, value: &str) -> Result<(), DecodeError> {
    if value.trim().is_empty() {
        return Err(DecodeError::MissingField(field.to_owned()));
    }
    bounded(field, value, MAX_ID_LEN)
}

fn bounded(field: &str, value: &str, max: usize) -> Result<(), DecodeError> {
    if value.len() > max {
        return Err(DecodeError::invalid(
            field,
            format!("longer than {max} bytes"),
        ));
    }
    Ok(())
}

fn optional(field: &str, value: &Option<String>, max: usize) -> Result<(), DecodeError> {
    match value {
        Some(v) => bounded(field, v, max),
        None => Ok(()),
    }
}

/// Checks the attributes and the payload of a decoded event.
pub fn validate(event: &Event) -> Result<(), DecodeError> {
    required("id", &event.id)?;
    required("source", &event.source)?;
    if let Some(tenant) = &event.tenant {
        let ok = !tenant.is_empty()
            && tenant.len() <= 64
            && tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(DecodeError::invalid(
                "tenant",
                "must be 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
    }
    match &event.payload {
        Payload::Auth(d) => {
            required("data.iss", &d.iss)?;
            required("data.client_id", &d.client_id)?;
            if event.event_type != EventType::AuthLoginFailed {
                required("data.sub", d.sub.as_deref().unwrap_or_default())?;
            }
            optional("data.sub", &d.sub, MAX_ID_LEN)?;
            optional("data.fhirUser", &d.fhir_user, MAX_ID_LEN)?;
            optional("data.userAgent", &d.user_agent, MAX_TEXT_LEN)?;
        }
        Payload::Token(d) => {
            required("data.iss", &d.iss)?;
            required("data.client_id", &d.client_id)?;
            required("data.jti", &d.jti)?;
            optional("data.sub", &d.sub, MAX_ID_LEN)?;
            optional("data.scope", &d.scope, MAX_TEXT_LEN)?;
            if let Some(t) = &d.token_type {
                if !matches!(t.as_str(), "access" | "refresh" | "id") {
                    return Err(DecodeError::invalid(
                        "data.tokenType",
                        "expected access, refresh or id",
                    ));
                }
            }
            optional("data.reason", &d.reason, MAX_TEXT_LEN)?;
        }
        Payload::Consent(d) => {
            required("data.consentId", &d.consent_id)?;
            required("data.patient", &d.patient)?;
            required("data.client_id", &d.client_id)?;
            optional("data.scope", &d.scope, MAX_TEXT_LEN)?;
            optional("data.reason", &d.reason, MAX_TEXT_LEN)?;
            if let (Some(start), Some(end)) = (d.period_start, d.period_end) {
                if end < start {
                    return Err(DecodeError::invalid(
                        "data.periodEnd",
                        "ends before periodStart",
                    ));
                }
            }
        }
        Payload::FhirAccess(d) => {
            required("data.requestId", &d.request_id)?;
            required("data.iss", &d.iss)?;
            required("data.sub", &d.sub)?;
            required("data.client_id", &d.client_id)?;
            if !INTERACTIONS.contains(&d.interaction.as_str()) {
                return Err(DecodeError::invalid(
                    "data.interaction",
                    "not a FHIR restful-interaction code",
                ));
            }
            let rt = &d.resource_type;
            let ok = rt.len() <= 64
                && rt.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && rt.chars().all(|c| c.is_ascii_alphabetic());
            if !ok {
                return Err(DecodeError::invalid(
                    "data.resourceType",
                    "not a FHIR resource type name",
                ));
            }
            if !(100..=599).contains(&d.http_status) {
                return Err(DecodeError::invalid(
                    "data.httpStatus",
                    "not an HTTP status code",
                ));
            }
            if d.purpose_of_use.iter().any(|p| p == "BTG")
                && d.decision == Decision::Permit
                && d.break_glass_reason
                    .as_deref()
                    .unwrap_or("")
                    .trim()
                    .is_empty()
            {
                return Err(DecodeError::MissingField(
                    "data.breakGlassReason".to_owned(),
                ));
            }
            optional("data.breakGlassReason", &d.break_glass_reason, MAX_TEXT_LEN)?;
            optional("data.userAgent", &d.user_agent, MAX_TEXT_LEN)?;
            if d.returned_ids.len() > 10_000 {
                return Err(DecodeError::invalid(
                    "data.returnedIds",
                    "more than 10000 entries",
                ));
            }
        }
        Payload::UserDeprovisioned(d) => {
            required("data.iss", &d.iss)?;
            required("data.sub", &d.sub)?;
            optional("data.reason", &d.reason, MAX_TEXT_LEN)?;
        }
        Payload::BreakGlass(d) => {
            required("data.iss", &d.iss)?;
            required("data.sub", &d.sub)?;
            required("data.patient", &d.patient)?;
            if d.reason.trim().is_empty() {
                return Err(DecodeError::MissingField("data.reason".to_owned()));
            }
            bounded("data.reason", &d.reason, MAX_TEXT_LEN)?;
        }
    }
    Ok(())
}
