//! Every answer of the feed that is not a success is a FHIR R4 `OperationOutcome`
//! (`application/fhir+json`) with a 4xx or 5xx status. The diagnostics name what is wrong
//! (a field path, a limit, an entry index), never a value of the request: an AuditEvent holds
//! patient identifiers and a refused one may even hold a token.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use custos_auth::oidc::AuthError;
use custos_schemas::DecodeError;
use serde_json::{json, Value};
use thiserror::Error;
use tracing::{info, warn};

/// Media type of FHIR JSON.
pub const FHIR_JSON: &str = "application/fhir+json";

/// Seconds a client is told to wait after an overload or a broker outage.
pub const RETRY_AFTER_SECS: u32 = 2;

/// Why a request (or one Bundle entry) is refused.
#[derive(Debug, Error)]
pub enum FeedError {
    /// No acceptable bearer token.
    #[error("authentication: {0}")]
    Unauthenticated(#[from] AuthError),
    /// The token lacks the `audit_source` role.
    #[error("the token lacks the audit_source role")]
    Forbidden,
    /// The body is not JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The body is JSON but not what the endpoint takes (resource type, Bundle type, entry
    /// request).
    #[error("{0}")]
    BadRequest(String),
    /// The decoder refused the AuditEvent (as the ingest would).
    #[error("{0}")]
    Rejected(DecodeError),
    /// The body, an AuditEvent or a Bundle is over a configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// The `Content-Type` is not FHIR JSON or JSON.
    #[error("unsupported content type; send application/fhir+json or application/json")]
    UnsupportedMediaType,
    /// No such endpoint.
    #[error("no such endpoint; AuditEvents are accepted at POST [base]/AuditEvent and Bundles at POST [base]")]
    NotFound,
    /// The endpoint exists but not with this method (the feed is write-only).
    #[error("method not allowed; the feed only accepts POST")]
    MethodNotAllowed,
    /// Too many requests in flight.
    #[error("too many requests in progress; retry later")]
    Overloaded,
    /// The broker did not acknowledge in time (or refused).
    #[error("the event log did not acknowledge the write; retry later")]
    Unavailable,
    /// The token keys could not be fetched.
    #[error("token keys unavailable; retry later")]
    KeysUnavailable,
}

impl FeedError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            FeedError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            FeedError::Forbidden => StatusCode::FORBIDDEN,
            FeedError::MalformedJson(_) | FeedError::BadRequest(_) => StatusCode::BAD_REQUEST,
            FeedError::Rejected(DecodeError::TooLarge { .. }) | FeedError::TooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            FeedError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            FeedError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            FeedError::NotFound => StatusCode::NOT_FOUND,
            FeedError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            FeedError::Overloaded | FeedError::Unavailable | FeedError::KeysUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// A stable label for metrics (`custos_feed_refused_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            FeedError::Unauthenticated(_) => "unauthenticated",
            FeedError::Forbidden => "forbidden",
            FeedError::MalformedJson(_) => "malformed_json",
            FeedError::BadRequest(_) => "bad_request",
            FeedError::Rejected(e) => e.reason(),
            FeedError::TooLarge(_) => "too_large",
            FeedError::UnsupportedMediaType => "unsupported_media_type",
            FeedError::NotFound => "not_found",
            FeedError::MethodNotAllowed => "method_not_allowed",
            FeedError::Overloaded => "overloaded",
            FeedError::Unavailable => "kafka_unavailable",
            FeedError::KeysUnavailable => "jwks_unavailable",
        }
    }

    /// What the client is told: never a token detail, never a value of the body.
    pub fn diagnostics(&self) -> String {
        match self {
            FeedError::Unauthenticated(e) => e.public_detail().to_owned(),
            // Decode errors name fields and positions only (custos_schemas::error).
            FeedError::Rejected(e) => format!("AuditEvent refused: {e}"),
            other => other.to_string(),
        }
    }

    /// The `OperationOutcome` issue type.
    pub fn issue_code(&self) -> &'static str {
        match self.status().as_u16() {
            400 | 422 => "invalid",
            401 => "login",
            403 => "forbidden",
            404 => "not-found",
            405 | 415 => "not-supported",
            413 => "too-costly",
            _ => "transient",
        }
    }

    /// The `OperationOutcome` of this error.
    pub fn outcome(&self) -> Value {
        let severity = if self.status().is_server_error() {
            "fatal"
        } else {
            "error"
        };
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": severity,
                "code": self.issue_code(),
                "diagnostics": self.diagnostics(),
            }],
        })
    }

    /// Counts and logs the refusal (reason only: no body, no token).
    pub fn record(&self) {
        metrics::counter!("custos_feed_refused_total", "reason" => self.reason()).increment(1);
        if self.status().is_server_error() {
            warn!(reason = self.reason(), "request refused");
        } else {
            info!(reason = self.reason(), "request refused");
        }
    }
}

impl From<AuthError> for Box<FeedError> {
    fn from(e: AuthError) -> Self {
        Box::new(FeedError::from(e))
    }
}

/// A FHIR JSON response.
pub fn fhir_json(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    fhir_bytes(status, bytes)
}

/// A FHIR JSON response of bytes already serialized.
pub fn fhir_bytes(status: StatusCode, bytes: impl Into<axum::body::Bytes>) -> Response {
    let mut resp = (status, bytes.into()).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    resp
}

impl IntoResponse for FeedError {
    fn into_response(self) -> Response {
        self.record();
        let status = self.status();
        let mut resp = fhir_json(status, &self.outcome());
        let headers = resp.headers_mut();
        match &self {
            FeedError::Unauthenticated(AuthError::Missing) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"custos-feed\""),
                );
            }
            FeedError::Unauthenticated(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"custos-feed\", error=\"invalid_token\"",
                    ),
                );
            }
            FeedError::Forbidden => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"custos-feed\", error=\"insufficient_scope\"",
                    ),
                );
            }
            FeedError::Overloaded | FeedError::Unavailable | FeedError::KeysUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            FeedError::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_issue_codes() {
        let cases: Vec<(FeedError, u16, &str)> = vec![
            (AuthError::Missing.into(), 401, "login"),
            (FeedError::Forbidden, 403, "forbidden"),
            (FeedError::MalformedJson("x".into()), 400, "invalid"),
            (
                FeedError::Rejected(DecodeError::RawToken("jwt")),
                422,
                "invalid",
            ),
            (
                FeedError::Rejected(DecodeError::TooLarge { size: 2, limit: 1 }),
                413,
                "too-costly",
            ),
            (FeedError::UnsupportedMediaType, 415, "not-supported"),
            (FeedError::Unavailable, 503, "transient"),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.status().as_u16(), status, "{e}");
            assert_eq!(e.issue_code(), code, "{e}");
            assert_eq!(e.outcome()["resourceType"], "OperationOutcome");
        }
    }

    #[test]
    fn token_details_never_reach_the_client() {
        let e = FeedError::from(AuthError::Invalid("signature of eyJhbGciOi".into()));
        assert_eq!(e.diagnostics(), "the bearer token is not acceptable");
    }
}
