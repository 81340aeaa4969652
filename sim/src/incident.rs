//! Labels of what the simulator injects: the kinds of incident and benign trap, the detectors
//! that should (or must not) raise an alert on each, and the identifiers a scorer matches an
//! alert against.

/// Kinds of labelled scenario: true incidents a detector should alert on, the break-glass
/// opening with a reason (a review-queue item, not an alert), and benign traps that must not
/// alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Incident {
    /// An access token used from an IP its session never used.
    NewIp,
    /// A refresh token presented again after it was rotated.
    RefreshReuse,
    /// An app accessed a patient's data after the patient revoked its consent (its token was
    /// revoked at the same time).
    AccessAfterRevocation,
    /// A request outside the token's scopes, denied by the gateway.
    ScopeEscalationDenied,
    /// Emergency access to a patient's record, with a reason: a review-queue item, not an alert.
    BreakGlass,
    /// Hard mix: one clinician reading somewhat more distinct patients per hour than the others,
    /// hour after hour (slow-and-low snooping).
    SlowVolume,
    /// Hard mix: many failed sign-ins of one user from one address, then a success.
    CredentialStuffing,
    /// Hard mix: an administrator signing in with a password only (`amr: ["pwd"]`).
    PrivilegedWithoutMfa,
    /// Hard mix: an access token accepted after its `expiresAt`.
    UseAfterExpiry,
    /// Hard mix: a burst of failed refreshes by one app for one user.
    RefreshFailureBurst,
    /// Hard mix: a search returning more than 1,000 resources to a user-facing app.
    BulkRead,
    /// Hard mix: break-glass accesses with no opening and no reason.
    BreakGlassWithoutReason,
    /// Hard mix: a break-glass access after its opening's `expiresAt`.
    BreakGlassAfterExpiry,
    /// Hard mix, benign: two clinicians' tokens used from one external address (a NAT).
    SharedNat,
    /// Hard mix, benign: a patient app's token moving once from one address to another and
    /// staying there (a phone leaving Wi-Fi).
    Roaming,
    /// Hard mix, benign: an administrator signing in with a second factor.
    AdminWithMfa,
    /// Hard mix, benign: a backend service's bulk export (not a user-facing client).
    BackendBulkExport,
}

impl Incident {
    /// Every kind, in declaration order.
    pub const ALL: [Incident; 17] = [
        Incident::NewIp,
        Incident::RefreshReuse,
        Incident::AccessAfterRevocation,
        Incident::ScopeEscalationDenied,
        Incident::BreakGlass,
        Incident::SlowVolume,
        Incident::CredentialStuffing,
        Incident::PrivilegedWithoutMfa,
        Incident::UseAfterExpiry,
        Incident::RefreshFailureBurst,
        Incident::BulkRead,
        Incident::BreakGlassWithoutReason,
        Incident::BreakGlassAfterExpiry,
        Incident::SharedNat,
        Incident::Roaming,
        Incident::AdminWithMfa,
        Incident::BackendBulkExport,
    ];

    /// The kinds the default (normal) mix injects.
    pub const NORMAL: [Incident; 5] = [
        Incident::NewIp,
        Incident::RefreshReuse,
        Incident::AccessAfterRevocation,
        Incident::ScopeEscalationDenied,
        Incident::BreakGlass,
    ];

    /// A stable snake-case name (for tables and JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Incident::NewIp => "new_ip",
            Incident::RefreshReuse => "refresh_reuse",
            Incident::AccessAfterRevocation => "access_after_revocation",
            Incident::ScopeEscalationDenied => "scope_escalation_denied",
            Incident::BreakGlass => "break_glass_with_reason",
            Incident::SlowVolume => "slow_volume",
            Incident::CredentialStuffing => "credential_stuffing",
            Incident::PrivilegedWithoutMfa => "privileged_without_mfa",
            Incident::UseAfterExpiry => "use_after_expiry",
            Incident::RefreshFailureBurst => "refresh_failure_burst",
            Incident::BulkRead => "bulk_read",
            Incident::BreakGlassWithoutReason => "break_glass_without_reason",
            Incident::BreakGlassAfterExpiry => "break_glass_after_expiry",
            Incident::SharedNat => "shared_nat",
            Incident::Roaming => "roaming",
            Incident::AdminWithMfa => "admin_with_mfa",
            Incident::BackendBulkExport => "backend_bulk_export",
        }
    }

    /// The detectors whose alert on this scenario's identifiers is a true positive (names as
    /// the detector library spells them). Empty for kinds that must not alert.
    pub fn detectors(self) -> &'static [&'static str] {
        match self {
            Incident::NewIp => &["token_multi_origin"],
            Incident::RefreshReuse => &["refresh_reuse"],
            // The app's token was revoked with the consent: both detectors are right.
            Incident::AccessAfterRevocation => {
                &["access_after_consent_revocation", "use_after_revocation"]
            }
            Incident::ScopeEscalationDenied => &["scope_escalation"],
            Incident::SlowVolume => &["volume"],
            Incident::CredentialStuffing => &["credential_stuffing"],
            Incident::PrivilegedWithoutMfa => &["privileged_without_mfa"],
            Incident::UseAfterExpiry => &["use_after_expiry"],
            Incident::RefreshFailureBurst => &["refresh_failure_burst"],
            Incident::BulkRead => &["bulk_read"],
            Incident::BreakGlassWithoutReason | Incident::BreakGlassAfterExpiry => &["break_glass"],
            Incident::BreakGlass
            | Incident::SharedNat
            | Incident::Roaming
            | Incident::AdminWithMfa
            | Incident::BackendBulkExport => &[],
        }
    }

    /// Whether an alert on this scenario is a false alert: the benign traps, and the
    /// break-glass opening with a reason (it goes to the review queue instead).
    pub fn benign(self) -> bool {
        self.detectors().is_empty()
    }
}

impl std::fmt::Display for Incident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The label of one injected scenario: what a test needs to find it in the reports, and what
/// a scorer needs to match an alert to it. Identifiers are raw (the ingest pseudonymizes
/// patients, patient users and their addresses); an empty string means "not part of it".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentInfo {
    /// Kind.
    pub kind: Incident,
    /// Tenant of its events.
    pub tenant: String,
    /// Whether an alert on it is false (see [`Incident::benign`]).
    pub benign: bool,
    /// Detectors whose alert on it is a true positive ([`Incident::detectors`]).
    pub detectors: &'static [&'static str],
    /// Event id of the message that makes it visible.
    pub event_id: String,
    /// Token id involved.
    pub jti: String,
    /// Raw patient id involved (the reports take raw ids and pseudonymize them).
    pub patient: String,
    /// Client involved.
    pub client_id: String,
    /// Workforce or patient subject involved.
    pub sub: String,
    /// AS session id involved.
    pub session: String,
}

impl IncidentInfo {
    /// A label of `kind` in `tenant`; its detectors and benign flag follow from the kind.
    pub fn new(kind: Incident, tenant: &str) -> IncidentInfo {
        IncidentInfo {
            kind,
            tenant: tenant.to_owned(),
            benign: kind.benign(),
            detectors: kind.detectors(),
            event_id: String::new(),
            jti: String::new(),
            patient: String::new(),
            client_id: String::new(),
            sub: String::new(),
            session: String::new(),
        }
    }

    /// Sets the event id.
    pub fn event(mut self, id: &str) -> Self {
        self.event_id = id.to_owned();
        self
    }

    /// Sets the token id.
    pub fn jti(mut self, jti: &str) -> Self {
        self.jti = jti.to_owned();
        self
    }

    /// Sets the raw patient id.
    pub fn patient(mut self, patient: &str) -> Self {
        self.patient = patient.to_owned();
        self
    }

    /// Sets the client.
    pub fn client(mut self, client: &str) -> Self {
        self.client_id = client.to_owned();
        self
    }

    /// Sets the subject.
    pub fn subject(mut self, sub: &str) -> Self {
        self.sub = sub.to_owned();
        self
    }

    /// Sets the AS session id.
    pub fn session(mut self, session: &str) -> Self {
        self.session = session.to_owned();
        self
    }

    /// What makes two labels the same scenario (every field but the event id): a scenario
    /// labels several of its messages when each is evidence (the snooper's visits, the
    /// failures of a burst).
    pub fn identity(&self) -> (Incident, &str, &str, &str, &str, &str, &str) {
        (
            self.kind,
            &self.tenant,
            &self.jti,
            &self.session,
            &self.sub,
            &self.patient,
            &self.client_id,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_true_incidents_name_detectors() {
        let names: std::collections::HashSet<_> =
            Incident::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), Incident::ALL.len());
        let benign: Vec<_> = Incident::ALL.into_iter().filter(|k| k.benign()).collect();
        assert_eq!(
            benign,
            [
                Incident::BreakGlass,
                Incident::SharedNat,
                Incident::Roaming,
                Incident::AdminWithMfa,
                Incident::BackendBulkExport
            ]
        );
        let info = IncidentInfo::new(Incident::AccessAfterRevocation, "t").jti("at-1");
        assert!(!info.benign);
        assert!(info.detectors.contains(&"use_after_revocation"));
    }
}
