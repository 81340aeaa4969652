//! RFC 9457 problem details (`application/problem+json`): the one error body of every
//! Custos HTTP API. Services map their errors to a [`Problem`]; internal details are logged,
//! never sent.

use serde::Serialize;
use utoipa::ToSchema;

/// Media type of error bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The problem+json body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Problem type URI.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong (names parameters, never their values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
