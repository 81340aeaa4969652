//! The privacy API's own audit: every call is recorded in `custos.report_queries` like a
//! report query of the query API, with its writer ([`custos_auth::audit::QueryAudit`]):
//!
//! 1. the *asked* record (caller, call, pseudonymized parameters; status `answering`) is
//!    made durable before anything is read or revoked: if ClickHouse does not acknowledge
//!    it (after one retry), the call is answered `503 audit-unavailable` and nothing happens;
//! 2. the *final* record (`answered` with the rows returned or revocations published,
//!    `rejected` for a 4xx such as an unknown consent, `failed` for a backend failure) is
//!    queued after, without delaying the answer. A call dropped on the way (timeout, client
//!    gone) gets `aborted`.
//!
//! A refused call (403) is recorded `forbidden`, best effort. Calls are named
//! `privacy.<call>` in the `report` column, so they sort apart from the query API's
//! reports, and the query-audit report can filter on them (`report=privacy.consents`).
//! Patient identifiers appear only as pseudonyms under the current key; a revocation's
//! free-text reason is not copied.

use custos_auth::audit::{Asked, AuditError, QueryAudit};
use custos_auth::oidc::Caller;
use serde_json::{json, Value};
use tracing::error;

/// `report` of `GET /v1/consents`.
pub const CONSENTS: &str = "privacy.consents";
/// `report` of `POST /v1/consents/{id}/revoke`.
pub const REVOKE_CONSENT: &str = "privacy.revoke-consent";
/// `report` of `POST /v1/consents/revoke`.
pub const REVOKE_PATIENT: &str = "privacy.revoke-patient";
/// `report` of `GET /v1/revocations`.
pub const REVOCATIONS: &str = "privacy.revocations";
/// `report` of `GET /v1/revocations/{id}/attempts`.
pub const ATTEMPTS: &str = "privacy.revocation-attempts";

/// The call name of a privacy-API request, from its method and path.
pub fn call_of(method: &axum::http::Method, path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["v1", "consents", "revoke"]) => REVOKE_PATIENT,
        ("POST", ["v1", "consents", _, "revoke"]) => REVOKE_CONSENT,
        (_, ["v1", "consents", ..]) => CONSENTS,
        (_, ["v1", "revocations", _, "attempts"]) => ATTEMPTS,
        _ => REVOCATIONS,
    }
}

/// Records a refused call (`forbidden`), without waiting: a refusal reveals nothing.
pub fn refused(audit: &QueryAudit, caller: &Caller, call: &'static str, tenant: &str) {
    let asked = Asked::new(
        caller,
        call,
        tenant,
        json!({"actor": caller.actor()}),
        "json",
    );
    audit.submit_detached(asked.record("forbidden", 0));
}

/// A call whose asked record is durable; the final record is written by [`Call::finish`],
/// or `aborted` on drop.
pub struct Call {
    audit: QueryAudit,
    asked: Asked,
    finished: bool,
}

impl Call {
    /// Writes the asked record of `call` and waits for ClickHouse's acknowledgement.
    /// `parameters` must already be pseudonymized; the caller's display name is added.
    pub async fn begin(
        audit: &QueryAudit,
        caller: &Caller,
        call: &'static str,
        tenant: &str,
        mut parameters: Value,
    ) -> Result<Call, AuditError> {
        if let Value::Object(m) = &mut parameters {
            m.insert("actor".into(), caller.actor().into());
        }
        let asked = Asked::new(caller, call, tenant, parameters, "json");
        let mut written = audit.write(&asked.record("answering", 0)).await;
        if written.is_err() {
            // One retry covers a dropped connection; a refusal (credentials, grants) stays.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            written = audit.write(&asked.record("answering", 0)).await;
        }
        if let Err(e) = written {
            metrics::counter!("custos_consent_audit_unavailable_total").increment(1);
            error!(error = %e, call, "privacy-API audit record not written; call refused");
            return Err(e);
        }
        Ok(Call {
            audit: audit.clone(),
            asked,
            finished: false,
        })
    }

    /// The record's id.
    pub fn id(&self) -> &str {
        &self.asked.query_id
    }

    /// Queues the final record: `status` with `rows`.
    pub async fn finish(mut self, status: &str, rows: u64) {
        self.finished = true;
        self.audit.submit(&self.asked.record(status, rows)).await;
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let record = self.asked.record("aborted", 0);
        if tokio::runtime::Handle::try_current().is_ok() {
            self.audit.submit_detached(record);
        } else {
            error!(query_id = %record.query_id, "aborted privacy-API audit record not written: no runtime");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn call_names_pass_the_query_audit_report_filter() {
        for name in [
            CONSENTS,
            REVOKE_CONSENT,
            REVOKE_PATIENT,
            REVOCATIONS,
            ATTEMPTS,
        ] {
            assert!(custos_auth::audit::valid_code(name), "{name}");
        }
    }

    #[test]
    fn calls_are_named_by_route() {
        assert_eq!(
            call_of(&Method::POST, "/v1/consents/revoke"),
            REVOKE_PATIENT
        );
        assert_eq!(
            call_of(&Method::POST, "/v1/consents/c1/revoke"),
            REVOKE_CONSENT
        );
        assert_eq!(call_of(&Method::GET, "/v1/consents"), CONSENTS);
        assert_eq!(call_of(&Method::GET, "/v1/revocations"), REVOCATIONS);
        assert_eq!(
            call_of(&Method::GET, "/v1/revocations/rev-1/attempts"),
            ATTEMPTS
        );
    }
}
