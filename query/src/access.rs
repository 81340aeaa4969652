//! Access rules: which roles may run which report, and which tenants a caller may read.
//!
//! Every refusal is counted (`custos_query_forbidden_total`); a refusal for a missing role is
//! also recorded in the query audit.

use serde_json::json;
use tracing::info;

use crate::error::ApiError;
use crate::state::AppState;
use custos_auth::audit::Asked;
use custos_auth::oidc::{Caller, Role};

/// The reports, with the roles allowed to run them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Who accessed a patient's record.
    PatientAccess,
    /// Everything a user did.
    UserActivity,
    /// A token's lifecycle and uses.
    TokenTrace,
    /// HIPAA accounting of disclosures.
    Disclosures,
    /// Break-the-glass accesses.
    BreakGlass,
    /// Accesses after consent revocation.
    RevocationViolations,
    /// Consent history.
    Consents,
    /// The query audit itself.
    QueryAudit,
    /// FHIR AuditEvent search.
    FhirAuditEvent,
    /// Hash-chain and checkpoint verification.
    IntegrityVerify,
    /// Membership proof of one record.
    IntegrityProof,
    /// Ledger verification of the query audit, consent history and revocations.
    IntegrityLedger,
}

impl Report {
    /// Name in URLs and the query audit.
    pub fn name(self) -> &'static str {
        match self {
            Report::PatientAccess => "patient-access",
            Report::UserActivity => "user-activity",
            Report::TokenTrace => "token-trace",
            Report::Disclosures => "disclosures",
            Report::BreakGlass => "break-glass",
            Report::RevocationViolations => "revocation-violations",
            Report::Consents => "consents",
            Report::QueryAudit => "query-audit",
            Report::FhirAuditEvent => "fhir-auditevent",
            Report::IntegrityVerify => "integrity-verify",
            Report::IntegrityProof => "integrity-proof",
            Report::IntegrityLedger => "integrity-ledger",
        }
    }

    /// Roles allowed to run it (auditors may read everything).
    pub fn roles(self) -> &'static [Role] {
        match self {
            Report::PatientAccess
            | Report::UserActivity
            | Report::Disclosures
            | Report::BreakGlass
            | Report::FhirAuditEvent => &[Role::ComplianceOfficer, Role::Auditor],
            Report::TokenTrace => &[Role::IncidentResponder, Role::Auditor],
            Report::RevocationViolations | Report::Consents => {
                &[Role::PrivacyOfficer, Role::Auditor]
            }
            Report::QueryAudit
            | Report::IntegrityVerify
            | Report::IntegrityProof
            | Report::IntegrityLedger => &[Role::Auditor],
        }
    }
}

/// Refuses callers without a role for `report`; the refusal is recorded (best effort).
pub fn authorize(state: &AppState, caller: &Caller, report: Report) -> Result<(), ApiError> {
    if caller.has_any(report.roles()) {
        return Ok(());
    }
    info!(caller = %caller.sub, report = report.name(), "report refused: missing role");
    metrics::counter!("custos_query_forbidden_total", "report" => report.name()).increment(1);
    let asked = Asked::new(caller, report.name(), "", json!({}), "none");
    // Queued, not awaited: a refusal reveals nothing (failures are logged by the writer).
    state.audit.submit_detached(asked.record("forbidden", 0));
    Err(ApiError::Forbidden)
}

/// Refuses (403) a cross-tenant request (integrity chains) from a token bound to some tenants.
pub fn all_tenants(caller: &Caller) -> Result<(), ApiError> {
    if caller.tenants.is_none() {
        return Ok(());
    }
    info!(caller = %caller.sub, "request refused: cross-tenant data for a tenant-bound token");
    metrics::counter!("custos_query_forbidden_total", "report" => "tenant").increment(1);
    Err(ApiError::Forbidden)
}

/// Refuses (403) a tenant the caller's token does not list (`CUSTOS_OIDC_TENANTS_CLAIM`).
pub fn tenant_allowed(caller: &Caller, tenant: &str) -> Result<(), ApiError> {
    if caller.may_read_tenant(tenant) {
        return Ok(());
    }
    info!(caller = %caller.sub, tenant, "report refused: tenant not in the token");
    metrics::counter!("custos_query_forbidden_total", "report" => "tenant").increment(1);
    Err(ApiError::Forbidden)
}

/// The tenants the query-audit report is restricted to: the one asked for (already checked
/// against the caller's token), else every tenant the token lists for a tenant-bound caller
/// (possibly none: then no rows), else none (`None`: every tenant, single-tenant deployments).
pub fn query_audit_tenants(caller: &Caller, asked: Option<&str>) -> Option<Vec<String>> {
    match (asked, &caller.tenants) {
        (Some(t), _) => Some(vec![t.to_owned()]),
        (None, Some(listed)) => Some(listed.clone()),
        (None, None) => None,
    }
}
