//! One error type for the whole API, rendered as RFC 9457 `application/problem+json`.
//! Internal details (ClickHouse messages, JWKS failures) are logged, never sent.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use thiserror::Error;
use tracing::{error, warn};

use custos_auth::oidc::AuthError;

pub use custos_auth::problem::{Problem, PROBLEM_JSON};

/// Seconds a client is asked to wait after a 503 for load.
pub const OVERLOAD_RETRY_AFTER_SECS: u64 = 1;
/// Seconds a caller is asked to wait after a 429 for too many exports.
pub const EXPORT_RETRY_AFTER_SECS: u64 = 5;

/// Everything a request can fail with.
#[derive(Debug, Error)]
pub enum ApiError {
    /// No, or an unacceptable, bearer token.
    #[error("authentication failed: {0}")]
    Unauthorized(#[from] AuthError),
    /// The caller's roles do not include one this endpoint requires.
    #[error("the caller's roles do not allow this report")]
    Forbidden,
    /// A request parameter is missing or invalid (the message names it, never its value).
    #[error("{0}")]
    BadRequest(String),
    /// No such route.
    #[error("not found")]
    NotFound,
    /// No such resource (an alert, a review item) the caller may see; names what was missing.
    #[error("{0}")]
    Missing(&'static str),
    /// The request conflicts with the resource's state (acknowledging a closed alert, deciding
    /// a review twice); the message says which.
    #[error("{0}")]
    Conflict(String),
    /// ClickHouse failed or could not be reached.
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// The query-audit record could not be written, so the report is not answered.
    #[error("query audit record not written: {0}")]
    AuditWrite(custos_auth::audit::AuditError),
    /// The service is at its concurrency limit (503 with `Retry-After`).
    #[error("concurrency limit reached")]
    Overloaded,
    /// The caller already runs its maximum of concurrent exports (429 with `Retry-After`).
    #[error("too many concurrent exports of this caller")]
    TooManyExports,
    /// Anything else internal.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 naming the offending parameter.
    pub fn bad(detail: impl Into<String>) -> ApiError {
        ApiError::BadRequest(detail.into())
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound | ApiError::Missing(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::ClickHouse(clickhouse::error::Error::TimedOut) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::ClickHouse(_) | ApiError::AuditWrite(_) | ApiError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::TooManyExports => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn problem(&self) -> Problem {
        let status = self.status();
        let (slug, title, detail) = match self {
            ApiError::Unauthorized(e) => (
                "unauthorized",
                "Unauthorized",
                Some(e.public_detail().to_owned()),
            ),
            ApiError::Forbidden => ("forbidden", "Forbidden", Some(self.to_string())),
            ApiError::BadRequest(d) => ("bad-request", "Bad Request", Some(d.clone())),
            ApiError::NotFound => ("not-found", "Not Found", None),
            ApiError::Missing(what) => ("not-found", "Not Found", Some((*what).to_owned())),
            ApiError::Conflict(d) => ("conflict", "Conflict", Some(d.clone())),
            ApiError::ClickHouse(_) => (
                "store-unavailable",
                "Audit store unavailable",
                Some("the audit store did not answer; retry later".to_owned()),
            ),
            ApiError::AuditWrite(_) => (
                "audit-unavailable",
                "Query audit unavailable",
                Some("the query could not be recorded, so it was not answered".to_owned()),
            ),
            ApiError::Overloaded => (
                "overloaded",
                "Service Unavailable",
                Some("the service is at its concurrency limit; retry later".to_owned()),
            ),
            ApiError::TooManyExports => (
                "too-many-exports",
                "Too Many Requests",
                Some("this caller already runs its maximum of concurrent exports".to_owned()),
            ),
            ApiError::Internal(_) => ("internal", "Internal Server Error", None),
        };
        Problem {
            kind: format!("https://custos.dev/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::ClickHouse(e) => error!(error = %e, "ClickHouse query failed"),
            ApiError::AuditWrite(e) => error!(error = %e, "query audit insert failed"),
            ApiError::Internal(e) => error!(error = %e, "internal error"),
            ApiError::Unauthorized(e) => {
                metrics::counter!("custos_query_auth_failures_total", "reason" => e.reason())
                    .increment(1);
                warn!(reason = e.reason(), "bearer token rejected");
            }
            _ => {}
        }
        let status = self.status();
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        let retry_after = match self {
            ApiError::Overloaded => Some(OVERLOAD_RETRY_AFTER_SECS),
            ApiError::TooManyExports => Some(EXPORT_RETRY_AFTER_SECS),
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"custos\", error=\"invalid_token\""),
            );
        }
        resp
    }
}

/// `Query<T>` whose rejections become [`ApiError::BadRequest`] problems.
#[derive(Debug, Clone)]
pub struct ValidQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ValidQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ValidQuery(v)),
            Err(rejection) => Err(query_rejection(&rejection)),
        }
    }
}

fn query_rejection(r: &QueryRejection) -> ApiError {
    // serde_urlencoded names the field (or the unknown parameter); values are not echoed.
    let text = r.body_text();
    let detail = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(&text);
    let detail: String = detail.chars().take(200).collect();
    ApiError::bad(format!("invalid query string: {detail}"))
}

/// `Json<T>` whose rejections (not JSON, wrong content type, a field missing or of the wrong
/// type, an unknown field) become [`ApiError::BadRequest`] problems.
#[derive(Debug, Clone)]
pub struct ValidJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ValidJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ValidJson(v)),
            Err(rejection) => {
                let detail: String = rejection.body_text().chars().take(200).collect();
                Err(ApiError::bad(format!("invalid JSON body: {detail}")))
            }
        }
    }
}

/// Fallback for unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}
