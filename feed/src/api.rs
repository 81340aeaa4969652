//! The feed's FHIR interactions (IHE BALP, ATNA "Record Audit Event" over FHIR R4):
//!
//! - `POST [base]/AuditEvent`: one AuditEvent; `201 Created` with
//!   `Location: [base]/AuditEvent/{id}`;
//! - `POST [base]`: a `batch` or `transaction` Bundle whose entries are
//!   `request.method = POST`, `request.url = AuditEvent`; answered with a `batch-response` /
//!   `transaction-response` Bundle, one `response` per entry, in order. In a batch each entry
//!   stands alone (a refused one gets its 4xx and an `OperationOutcome` in
//!   `response.outcome`, the others are written); in a transaction one refused entry refuses
//!   the whole Bundle with 400 and nothing is written;
//! - `GET [base]/metadata`: the CapabilityStatement.
//!
//! The body of a success follows `Prefer: return=`: `minimal` (the default: no body),
//! `representation` (the AuditEvent as written, with its id) or `OperationOutcome`.
//!
//! Every request is authenticated (bearer token with the `audit_source` role) before its
//! body is read, every AuditEvent is decoded as the ingest decodes it before anything is
//! produced, and the answer is sent only after the broker acknowledged every record. A
//! broker failure answers 503: records acknowledged before it stay, and resending the same
//! request is deduplicated by the ingest (AuditEvent ids are kept).

use std::borrow::Cow;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use custos_auth::oidc::{bearer, AuthError, Role, MAX_TOKEN_BYTES};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::outcome::{fhir_bytes, fhir_json, FeedError};
use crate::resource::{json_error, prepare, prepare_entry, Accepted};
use crate::AppState;

/// The roles that may write to the feed.
pub const WRITE_ROLES: &[Role] = &[Role::AuditSource];

/// What a success answers with (`Prefer: return=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    /// No body.
    Minimal,
    /// The resource as written.
    Representation,
    /// An informational `OperationOutcome`.
    OperationOutcome,
}

impl Return {
    /// Reads `Prefer`; anything unknown or absent is [`Return::Minimal`].
    pub fn from_headers(headers: &HeaderMap) -> Return {
        let prefs = headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .map(str::trim);
        for p in prefs {
            match p.strip_prefix("return=").map(|r| r.trim_matches('"')) {
                Some("representation") => return Return::Representation,
                Some(r) if r.eq_ignore_ascii_case("operationoutcome") => {
                    return Return::OperationOutcome
                }
                Some("minimal") => return Return::Minimal,
                _ => {}
            }
        }
        Return::Minimal
    }
}

/// Authenticates the bearer token and checks the write role; a token that passed both
/// within the last `CUSTOS_FEED_TOKEN_CACHE_SECS` (and has not expired) is not verified
/// again ([`crate::tokens`]).
pub async fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), FeedError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .filter(|t| t.len() <= MAX_TOKEN_BYTES);
    if token.is_some_and(|t| state.tokens.allows(t)) {
        return Ok(());
    }
    match state.auth.authenticate_headers(headers).await {
        Ok(caller) if caller.has_any(WRITE_ROLES) => {
            if let Some(t) = token {
                state.tokens.remember(t);
            }
            Ok(())
        }
        Ok(_) => Err(FeedError::Forbidden),
        Err(AuthError::Jwks(_)) => Err(FeedError::KeysUnavailable),
        Err(e) => Err(FeedError::Unauthenticated(e)),
    }
}

/// Accepts `application/fhir+json` and `application/json` (parameters such as `charset`
/// allowed); anything else, or none, is 415.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), FeedError> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/fhir+json" | "application/json") => Ok(()),
        _ => Err(FeedError::UnsupportedMediaType),
    }
}

/// Reads the body up to `limit` bytes (413 beyond, and at once when `Content-Length` says
/// so).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, FeedError> {
    let too_large = || FeedError::TooLarge(format!("the body is over the {limit}-byte limit"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())
}

/// Everything before the body is parsed: role, content type, size.
async fn admit(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, FeedError> {
    authorize(state, headers).await?;
    check_content_type(headers)?;
    read_body(headers, body, state.max_body_bytes).await
}

fn location(state: &AppState, id: &str) -> String {
    format!("{}/AuditEvent/{id}", state.public_url)
}

fn information(text: &str) -> Value {
    json!({"resourceType": "OperationOutcome",
           "issue": [{"severity": "information", "code": "informational", "diagnostics": text}]})
}

/// `POST [base]/AuditEvent`.
pub async fn create(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    match create_inner(&state, &headers, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn create_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, FeedError> {
    let bytes = admit(state, headers, body).await?;
    let accepted = prepare(&bytes, &bytes, &state.limits)?;
    state.publisher.publish(&[&accepted]).await?;
    let mut resp = match Return::from_headers(headers) {
        Return::Minimal => StatusCode::CREATED.into_response(),
        Return::Representation => fhir_bytes(StatusCode::CREATED, accepted.bytes.clone()),
        Return::OperationOutcome => {
            fhir_json(StatusCode::CREATED, &information("AuditEvent recorded"))
        }
    };
    let loc = HeaderValue::from_str(&location(state, &accepted.id))
        .map_err(|_| FeedError::BadRequest("AuditEvent.id cannot be put in a URL".into()))?;
    resp.headers_mut().insert(header::LOCATION, loc);
    resp.headers_mut()
        .insert(header::ETAG, HeaderValue::from_static("W/\"1\""));
    Ok(resp)
}

#[derive(Deserialize)]
struct BundleIn<'a> {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    #[serde(default, borrow)]
    entry: Vec<EntryIn<'a>>,
}

#[derive(Deserialize)]
struct EntryIn<'a> {
    #[serde(borrow)]
    resource: Option<&'a RawValue>,
    request: Option<RequestIn>,
}

#[derive(Deserialize)]
struct RequestIn {
    method: Option<String>,
    url: Option<String>,
}

/// Whether an entry's `request.url` names the AuditEvent type (relative, or ending in it).
fn is_audit_event_url(url: &str) -> bool {
    let u = url.trim().trim_end_matches('/');
    u == "AuditEvent" || u.ends_with("/AuditEvent")
}

fn check_entry(entry: &EntryIn<'_>, body: &Bytes, state: &AppState) -> Result<Accepted, FeedError> {
    let request = entry
        .request
        .as_ref()
        .ok_or_else(|| FeedError::BadRequest("entry.request is required".into()))?;
    if !request
        .method
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case("POST"))
    {
        return Err(FeedError::BadRequest(
            "entry.request.method must be POST".into(),
        ));
    }
    if !request.url.as_deref().is_some_and(is_audit_event_url) {
        return Err(FeedError::BadRequest(
            "entry.request.url must be AuditEvent".into(),
        ));
    }
    let resource = entry
        .resource
        .ok_or_else(|| FeedError::BadRequest("entry.resource is required".into()))?;
    prepare_entry(body, resource, &state.limits)
}

fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    )
}

/// `POST [base]`: a batch or transaction Bundle of AuditEvents.
pub async fn bundle(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    match bundle_inner(&state, &headers, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn bundle_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, FeedError> {
    let bytes = admit(state, headers, body).await?;
    let bundle: BundleIn<'_> =
        serde_json::from_slice(&bytes).map_err(|e| json_error(&e, "the Bundle"))?;
    if bundle.resource_type.as_deref() != Some("Bundle") {
        return Err(FeedError::BadRequest(
            "POST [base] takes a Bundle of type batch or transaction".into(),
        ));
    }
    let transaction = match bundle.ty.as_deref() {
        Some("batch") => false,
        Some("transaction") => true,
        _ => {
            return Err(FeedError::BadRequest(
                "Bundle.type must be batch or transaction".into(),
            ))
        }
    };
    if bundle.entry.len() > state.max_bundle_entries {
        return Err(FeedError::TooLarge(format!(
            "the Bundle has more than {} entries",
            state.max_bundle_entries
        )));
    }
    let checked: Vec<Result<Accepted, FeedError>> = bundle
        .entry
        .iter()
        .map(|e| check_entry(e, &bytes, state))
        .collect();
    if transaction && checked.iter().any(Result::is_err) {
        let issues: Vec<Value> = checked
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
            .map(|(i, e)| {
                e.record();
                json!({"severity": "error", "code": e.issue_code(),
                       "diagnostics": format!("entry {i}: {}", e.diagnostics()),
                       "expression": [format!("Bundle.entry[{i}]")]})
            })
            .collect();
        let outcome = json!({"resourceType": "OperationOutcome", "issue": issues});
        metrics::counter!("custos_feed_refused_total", "reason" => "transaction_refused")
            .increment(1);
        return Ok(fhir_json(StatusCode::BAD_REQUEST, &outcome));
    }
    let accepted: Vec<&Accepted> = checked.iter().filter_map(|r| r.as_ref().ok()).collect();
    state.publisher.publish(&accepted).await?;
    let ret = Return::from_headers(headers);
    let recorded = (ret == Return::OperationOutcome).then(|| information("AuditEvent recorded"));
    let created = status_line(StatusCode::CREATED);
    let entries: Vec<EntryOut<'_>> = checked
        .iter()
        .map(|r| match r {
            Ok(a) => EntryOut {
                full_url: Some(location(state, &a.id)),
                // The record is the resource as received, valid JSON (the decoder read it).
                resource: (ret == Return::Representation)
                    .then(|| serde_json::from_slice::<&RawValue>(&a.bytes).ok())
                    .flatten(),
                response: ResponseOut {
                    status: Cow::Borrowed(created.as_str()),
                    location: Some(format!("AuditEvent/{}", a.id)),
                    etag: Some("W/\"1\""),
                    outcome: recorded.clone(),
                },
            },
            Err(e) => {
                e.record();
                EntryOut {
                    full_url: None,
                    resource: None,
                    response: ResponseOut {
                        status: Cow::Owned(status_line(e.status())),
                        location: None,
                        etag: None,
                        outcome: Some(e.outcome()),
                    },
                }
            }
        })
        .collect();
    let kind = if transaction {
        "transaction-response"
    } else {
        "batch-response"
    };
    let out = BundleOut {
        resource_type: "Bundle",
        ty: kind,
        entry: entries,
    };
    let body = serde_json::to_vec(&out)
        .map_err(|e| FeedError::BadRequest(format!("encoding the answer: {e}")))?;
    Ok(fhir_bytes(StatusCode::OK, body))
}

/// The answer to a Bundle, written without building a JSON tree.
#[derive(Serialize)]
struct BundleOut<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    #[serde(rename = "type")]
    ty: &'static str,
    entry: Vec<EntryOut<'a>>,
}

#[derive(Serialize)]
struct EntryOut<'a> {
    #[serde(rename = "fullUrl", skip_serializing_if = "Option::is_none")]
    full_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a RawValue>,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    status: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<Value>,
}

/// `GET [base]/metadata`: what the feed accepts.
pub async fn metadata(State(state): State<AppState>) -> Response {
    fhir_json(
        StatusCode::OK,
        &json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json", "application/json"],
            "implementation": {"description": "Custos audit feed (IHE BALP, ATNA Record Audit Event)",
                               "url": state.public_url.as_str()},
            "rest": [{
                "mode": "server",
                "security": {"service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "OAuth"}]}],
                    "description": "Bearer token (OAuth client credentials) with the audit_source role"},
                "resource": [{"type": "AuditEvent", "interaction": [{"code": "create"}]}],
                "interaction": [{"code": "batch"}, {"code": "transaction"}]
            }]
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_return() {
        let mut h = HeaderMap::new();
        assert_eq!(Return::from_headers(&h), Return::Minimal);
        h.insert("prefer", HeaderValue::from_static("return=representation"));
        assert_eq!(Return::from_headers(&h), Return::Representation);
        h.insert(
            "prefer",
            HeaderValue::from_static("handling=strict, return=OperationOutcome"),
        );
        assert_eq!(Return::from_headers(&h), Return::OperationOutcome);
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(check_content_type(&h).is_err());
        for ok in [
            "application/fhir+json",
            "application/json; charset=utf-8",
            "Application/FHIR+JSON",
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ok));
            assert!(check_content_type(&h).is_ok(), "{ok}");
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+xml"),
        );
        assert!(check_content_type(&h).is_err());
    }

    #[test]
    fn entry_urls() {
        assert!(is_audit_event_url("AuditEvent"));
        assert!(is_audit_event_url("https://feed.example/fhir/AuditEvent"));
        assert!(!is_audit_event_url("Patient"));
        assert!(!is_audit_event_url("AuditEvent/1"));
    }
}
