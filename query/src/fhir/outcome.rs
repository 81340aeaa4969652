//! Errors on `/fhir` as FHIR R4 `OperationOutcome`s (`application/fhir+json`), which FHIR
//! clients parse, instead of the `application/problem+json` of `/v1`.
//!
//! Handlers return [`FhirError`]; everything else that fails under `/fhir` (the bearer-token
//! extractor, unknown routes, wrong methods, timeouts, any layer added around the router)
//! is rewritten by the [`outcomes`] middleware, which keeps the status and the public
//! problem detail (never internal details) and the `WWW-Authenticate` / `Retry-After`
//! headers.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use thiserror::Error;

use crate::error::{ApiError, PROBLEM_JSON};

/// Media type of FHIR JSON.
pub const FHIR_JSON: &str = "application/fhir+json";

/// Largest problem body read back by [`outcomes`] (problems are a few hundred bytes).
const MAX_PROBLEM_BYTES: usize = 16 * 1024;

/// A failed FHIR interaction.
#[derive(Debug, Error)]
pub enum FhirError {
    /// Any error the report API knows (authentication, roles, parameters, store, audit).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The client accepts no format this server produces (only JSON is served).
    #[error("{0}")]
    NotAcceptable(String),
    /// No resource with this id that the caller may read.
    #[error("{0}")]
    NotFound(String),
}

impl FhirError {
    /// A 400 naming the offending parameter (never its value).
    pub fn bad(detail: impl Into<String>) -> FhirError {
        FhirError::Api(ApiError::bad(detail))
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        match self {
            // Logging, metrics and the public detail stay with ApiError; the middleware
            // turns its problem into an OperationOutcome.
            FhirError::Api(e) => e.into_response(),
            FhirError::NotAcceptable(d) => outcome_response(StatusCode::NOT_ACCEPTABLE, Some(&d)),
            FhirError::NotFound(d) => outcome_response(StatusCode::NOT_FOUND, Some(&d)),
        }
    }
}

/// The `OperationOutcome` issue type of an HTTP error status.
pub fn issue_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 422 => "invalid",
        401 => "login",
        403 => "forbidden",
        404 | 410 => "not-found",
        405 | 406 | 415 => "not-supported",
        408 | 504 => "timeout",
        409 | 412 => "conflict",
        413 => "too-costly",
        429 => "throttled",
        503 => "transient",
        _ => "exception",
    }
}

/// An `OperationOutcome` with one issue for an error status.
pub fn operation_outcome(status: StatusCode, diagnostics: Option<&str>) -> Value {
    let severity = if status.is_server_error() {
        "fatal"
    } else {
        "error"
    };
    let diagnostics = diagnostics
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": severity,
            "code": issue_code(status),
            "diagnostics": diagnostics,
        }],
    })
}

/// A FHIR JSON response of `body` (pretty-printed on `_pretty=true`).
pub fn fhir_json(status: StatusCode, body: &Value, pretty: bool) -> Response {
    let bytes = if pretty {
        serde_json::to_vec_pretty(body)
    } else {
        serde_json::to_vec(body)
    }
    .unwrap_or_default();
    let mut resp = (status, bytes).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    resp
}

/// An `OperationOutcome` response for an error status.
pub fn outcome_response(status: StatusCode, diagnostics: Option<&str>) -> Response {
    fhir_json(status, &operation_outcome(status, diagnostics), false)
}

/// Whether `path` is served by the FHIR endpoint.
pub fn is_fhir_path(path: &str) -> bool {
    path == "/fhir" || path.starts_with("/fhir/")
}

fn is_fhir_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(FHIR_JSON))
}

/// The public text of an error body: a problem's `detail` (else `title`); nothing from
/// bodies of other types.
fn public_detail(content_type: Option<&str>, body: &[u8]) -> Option<String> {
    if !content_type.is_some_and(|c| c.starts_with(PROBLEM_JSON)) {
        return None;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("detail")
        .or_else(|| v.get("title"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Middleware: every error response on a `/fhir` path becomes an `OperationOutcome`.
pub async fn outcomes(req: Request, next: Next) -> Response {
    if !is_fhir_path(req.uri().path()) {
        return next.run(req).await;
    }
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || is_fhir_json(resp.headers()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(body, MAX_PROBLEM_BYTES)
        .await
        .unwrap_or_default();
    let detail = public_detail(content_type.as_deref(), &bytes);
    let mut out = outcome_response(status, detail.as_deref());
    for name in [header::WWW_AUTHENTICATE, header::RETRY_AFTER, header::ALLOW] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_issue_types() {
        assert_eq!(issue_code(StatusCode::UNAUTHORIZED), "login");
        assert_eq!(issue_code(StatusCode::FORBIDDEN), "forbidden");
        assert_eq!(issue_code(StatusCode::NOT_FOUND), "not-found");
        assert_eq!(issue_code(StatusCode::NOT_ACCEPTABLE), "not-supported");
        assert_eq!(issue_code(StatusCode::PAYLOAD_TOO_LARGE), "too-costly");
        assert_eq!(issue_code(StatusCode::TOO_MANY_REQUESTS), "throttled");
        assert_eq!(issue_code(StatusCode::SERVICE_UNAVAILABLE), "transient");
        assert_eq!(issue_code(StatusCode::GATEWAY_TIMEOUT), "timeout");
        assert_eq!(issue_code(StatusCode::INTERNAL_SERVER_ERROR), "exception");
        let oo = operation_outcome(StatusCode::SERVICE_UNAVAILABLE, None);
        assert_eq!(oo["issue"][0]["severity"], "fatal");
        assert_eq!(oo["issue"][0]["diagnostics"], "Service Unavailable");
    }

    /// A router whose routes fail like layers and extractors do, behind [`outcomes`].
    fn failing() -> axum::Router {
        use axum::routing::get;
        let problem = |status: StatusCode, detail: &'static str| {
            move || async move {
                let body =
                    json!({"type": "x", "title": "t", "status": status.as_u16(), "detail": detail});
                let mut r = (status, body.to_string()).into_response();
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
                r
            }
        };
        axum::Router::new()
            .route(
                "/fhir/busy",
                get(problem(StatusCode::TOO_MANY_REQUESTS, "slow down")),
            )
            .route(
                "/v1/busy",
                get(problem(StatusCode::TOO_MANY_REQUESTS, "slow down")),
            )
            .route(
                "/fhir/big",
                get(|| async { (StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded") }),
            )
            .route(
                "/fhir/crash",
                get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "panic at db.rs:12") }),
            )
            .layer(axum::middleware::from_fn(outcomes))
    }

    async fn call(path: &str) -> (StatusCode, HeaderMap, Value) {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let req = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = failing().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status, parts.headers, v)
    }

    #[tokio::test]
    async fn every_fhir_error_becomes_an_operation_outcome() {
        let (status, headers, oo) = call("/fhir/busy").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::CONTENT_TYPE], FHIR_JSON);
        assert_eq!(headers[header::RETRY_AFTER], "7");
        assert_eq!(oo["issue"][0]["code"], "throttled");
        assert_eq!(oo["issue"][0]["diagnostics"], "slow down");
        let (status, _, oo) = call("/fhir/big").await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(oo["issue"][0]["code"], "too-costly");
        // A body that is no problem is not passed on (it may hold internal details).
        let (_, _, oo) = call("/fhir/crash").await;
        assert_eq!(oo["issue"][0]["code"], "exception");
        assert_eq!(oo["issue"][0]["diagnostics"], "Internal Server Error");
        let (status, headers, _) = call("/fhir/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers[header::CONTENT_TYPE], FHIR_JSON);
        // Other paths keep their problems.
        let (_, headers, problem) = call("/v1/busy").await;
        assert_eq!(headers[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(problem["detail"], "slow down");
    }

    #[test]
    fn only_problem_details_are_copied() {
        let problem = br#"{"type":"x","title":"Bad Request","status":400,"detail":"_count must be 1..=1000"}"#;
        assert_eq!(
            public_detail(Some(PROBLEM_JSON), problem).as_deref(),
            Some("_count must be 1..=1000")
        );
        assert_eq!(public_detail(Some("text/plain"), b"stack trace"), None);
        assert_eq!(public_detail(None, problem), None);
        assert!(is_fhir_path("/fhir/AuditEvent") && is_fhir_path("/fhir"));
        assert!(!is_fhir_path("/fhirx") && !is_fhir_path("/v1/reports/patient-access"));
    }
}
