//! Access rules: which roles may run which endpoint, and which tenants a caller may read.
//!
//! Every refusal is counted (`custos_query_forbidden_total`); a refusal for a missing role is
//! also recorded in the query audit.

use serde_json::json;
use tracing::info;

use crate::error::ApiError;
use crate::state::AppState;
use custos_auth::audit::Asked;
use custos_auth::oidc::{Caller, Role};

/// Who may run an endpoint: its name (in URLs, the metrics and the query audit) and the
/// roles allowed. A catalogued report declares both itself
/// ([`crate::catalogue::Catalogued::NAME`], [`crate::catalogue::Catalogued::ROLES`]); the
/// other audited endpoints are the [`Report`]s below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Name in the query audit and the metrics.
    pub name: &'static str,
    /// Roles allowed (auditors may read everything).
    pub roles: &'static [Role],
}

/// The audited endpoints outside the report catalogue, with the roles allowed to use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
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
    /// Name in the query audit.
    pub fn name(self) -> &'static str {
        match self {
            Report::FhirAuditEvent => "fhir-auditevent",
            Report::IntegrityVerify => "integrity-verify",
            Report::IntegrityProof => "integrity-proof",
            Report::IntegrityLedger => "integrity-ledger",
        }
    }

    /// Roles allowed to use it.
    pub fn roles(self) -> &'static [Role] {
        match self {
            Report::FhirAuditEvent => custos_auth::policy::COMPLIANCE_REPORTS,
            Report::IntegrityVerify | Report::IntegrityProof | Report::IntegrityLedger => {
                custos_auth::policy::AUDIT
            }
        }
    }
}

impl From<Report> for Access {
    fn from(r: Report) -> Access {
        Access {
            name: r.name(),
            roles: r.roles(),
        }
    }
}

/// Refuses callers without a role for `access` (a catalogued report's, or a [`Report`]);
/// the refusal is recorded (best effort).
pub fn authorize(
    state: &AppState,
    caller: &Caller,
    access: impl Into<Access>,
) -> Result<(), ApiError> {
    let access = access.into();
    if caller.has_any(access.roles) {
        return Ok(());
    }
    info!(caller = %caller.sub, report = access.name, "report refused: missing role");
    metrics::counter!("custos_query_forbidden_total", "report" => access.name).increment(1);
    let asked = Asked::new(caller, access.name, "", json!({}), "none");
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
