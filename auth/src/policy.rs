//! Who may do what: one role list per task, read by the API that enforces it (the query API's
//! reports and endpoints, the consent service's privacy API) and by the console, which shows a
//! user only the pages their roles allow. A task's roles change here, once, for both.

use crate::oidc::Role;

/// Patient access report, accounting of disclosures, break-glass list and the FHIR
/// `AuditEvent` search: compliance officers, and auditors who check them.
pub const COMPLIANCE_REPORTS: &[Role] = &[Role::ComplianceOfficer, Role::Auditor];
/// Everything one user did: compliance officers, incident responders and auditors.
pub const USER_ACTIVITY: &[Role] = &[
    Role::ComplianceOfficer,
    Role::IncidentResponder,
    Role::Auditor,
];
/// Token trace: incident responders and auditors.
pub const TOKEN_TRACE: &[Role] = &[Role::IncidentResponder, Role::Auditor];
/// Revocation violations and the consent history of the audit trail: privacy officers and
/// auditors.
pub const PRIVACY_REPORTS: &[Role] = &[Role::PrivacyOfficer, Role::Auditor];
/// The consent service's current consents, their revocations and delivery attempts.
pub const CONSENTS_READ: &[Role] = &[Role::PrivacyOfficer, Role::ComplianceOfficer, Role::Auditor];
/// Revoking a consent.
pub const CONSENTS_REVOKE: &[Role] = &[Role::PrivacyOfficer];
/// The query audit, and chain, checkpoint and ledger verification and proofs.
pub const AUDIT: &[Role] = &[Role::Auditor];
/// The alerts of the detectors (list, one alert with its evidence): incident responders, and
/// auditors who check them (read only).
pub const ALERTS_READ: &[Role] = &[Role::IncidentResponder, Role::Auditor];
/// Acting on an alert (acknowledge, assign, close, reopen): incident responders.
pub const ALERTS_ACT: &[Role] = &[Role::IncidentResponder];
/// The break-glass review queue: compliance officers, and auditors who check it (read only).
pub const REVIEWS_READ: &[Role] = &[Role::ComplianceOfficer, Role::Auditor];
/// Deciding a break-glass review (justified or not): compliance officers.
pub const REVIEWS_DECIDE: &[Role] = &[Role::ComplianceOfficer];
