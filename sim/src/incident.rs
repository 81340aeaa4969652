//! Labels of what the simulator injects. [`Label`] covers every labelled scenario of both
//! mixes: its kind ([`LabelKind`]: incident or benign trap), the detectors that should (or
//! must not) raise an alert on it, and the identifiers a scorer matches an alert against.
//! [`IncidentInfo`] is the older, narrower view of the five incidents of the normal mix,
//! which the end-to-end tests look up in the reports.

/// Kinds of incident the normal mix injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Incident {
    /// An access token used from an IP its session never used.
    NewIp,
    /// A refresh token presented again after it was rotated.
    RefreshReuse,
    /// An app accessed a patient's data after the patient revoked its consent.
    AccessAfterRevocation,
    /// A request outside the token's scopes, denied by the gateway.
    ScopeEscalationDenied,
    /// Emergency access to a patient's record.
    BreakGlass,
}

/// What a test needs to find a normal-mix incident in the reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentInfo {
    /// Kind.
    pub kind: Incident,
    /// Event id of the message.
    pub event_id: String,
    /// Token id involved.
    pub jti: String,
    /// Raw patient id involved (the reports take raw ids and pseudonymize them).
    pub patient: String,
    /// Client involved.
    pub client_id: String,
    /// Workforce or patient subject involved.
    pub sub: String,
}

/// Kinds of labelled scenario: true incidents a detector should alert on, the break-glass
/// opening with a reason (a review-queue item, not an alert), and benign traps that must not
/// alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LabelKind {
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

impl LabelKind {
    /// Every kind, in declaration order.
    pub const ALL: [LabelKind; 17] = [
        LabelKind::NewIp,
        LabelKind::RefreshReuse,
        LabelKind::AccessAfterRevocation,
        LabelKind::ScopeEscalationDenied,
        LabelKind::BreakGlass,
        LabelKind::SlowVolume,
        LabelKind::CredentialStuffing,
        LabelKind::PrivilegedWithoutMfa,
        LabelKind::UseAfterExpiry,
        LabelKind::RefreshFailureBurst,
        LabelKind::BulkRead,
        LabelKind::BreakGlassWithoutReason,
        LabelKind::BreakGlassAfterExpiry,
        LabelKind::SharedNat,
        LabelKind::Roaming,
        LabelKind::AdminWithMfa,
        LabelKind::BackendBulkExport,
    ];

    /// A stable snake-case name (for tables and JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            LabelKind::NewIp => "new_ip",
            LabelKind::RefreshReuse => "refresh_reuse",
            LabelKind::AccessAfterRevocation => "access_after_revocation",
            LabelKind::ScopeEscalationDenied => "scope_escalation_denied",
            LabelKind::BreakGlass => "break_glass_with_reason",
            LabelKind::SlowVolume => "slow_volume",
            LabelKind::CredentialStuffing => "credential_stuffing",
            LabelKind::PrivilegedWithoutMfa => "privileged_without_mfa",
            LabelKind::UseAfterExpiry => "use_after_expiry",
            LabelKind::RefreshFailureBurst => "refresh_failure_burst",
            LabelKind::BulkRead => "bulk_read",
            LabelKind::BreakGlassWithoutReason => "break_glass_without_reason",
            LabelKind::BreakGlassAfterExpiry => "break_glass_after_expiry",
            LabelKind::SharedNat => "shared_nat",
            LabelKind::Roaming => "roaming",
            LabelKind::AdminWithMfa => "admin_with_mfa",
            LabelKind::BackendBulkExport => "backend_bulk_export",
        }
    }

    /// The detectors whose alert on this scenario's identifiers is a true positive (names as
    /// the detector library spells them). Empty for kinds that must not alert.
    pub fn detectors(self) -> &'static [&'static str] {
        match self {
            LabelKind::NewIp => &["token_multi_origin"],
            LabelKind::RefreshReuse => &["refresh_reuse"],
            // The app's token was revoked with the consent: both detectors are right.
            LabelKind::AccessAfterRevocation => {
                &["access_after_consent_revocation", "use_after_revocation"]
            }
            LabelKind::ScopeEscalationDenied => &["scope_escalation"],
            LabelKind::SlowVolume => &["volume"],
            LabelKind::CredentialStuffing => &["credential_stuffing"],
            LabelKind::PrivilegedWithoutMfa => &["privileged_without_mfa"],
            LabelKind::UseAfterExpiry => &["use_after_expiry"],
            LabelKind::RefreshFailureBurst => &["refresh_failure_burst"],
            LabelKind::BulkRead => &["bulk_read"],
            LabelKind::BreakGlassWithoutReason | LabelKind::BreakGlassAfterExpiry => {
                &["break_glass"]
            }
            LabelKind::BreakGlass
            | LabelKind::SharedNat
            | LabelKind::Roaming
            | LabelKind::AdminWithMfa
            | LabelKind::BackendBulkExport => &[],
        }
    }

    /// Whether an alert on this scenario is a false alert: the benign traps, and the
    /// break-glass opening with a reason (it goes to the review queue instead).
    pub fn benign(self) -> bool {
        self.detectors().is_empty()
    }

    /// The normal mix's incident of this kind, if it is one.
    pub fn incident(self) -> Option<Incident> {
        Some(match self {
            LabelKind::NewIp => Incident::NewIp,
            LabelKind::RefreshReuse => Incident::RefreshReuse,
            LabelKind::AccessAfterRevocation => Incident::AccessAfterRevocation,
            LabelKind::ScopeEscalationDenied => Incident::ScopeEscalationDenied,
            LabelKind::BreakGlass => Incident::BreakGlass,
            _ => return None,
        })
    }
}

impl std::fmt::Display for LabelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The label of one injected scenario: what a test needs to find it in the reports, and what
/// a scorer needs to match an alert to it. Identifiers are raw (the ingest pseudonymizes
/// patients, patient users and their addresses); an empty string means "not part of it".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// Kind.
    pub kind: LabelKind,
    /// Tenant of its events.
    pub tenant: String,
    /// Whether an alert on it is false (see [`LabelKind::benign`]).
    pub benign: bool,
    /// Detectors whose alert on it is a true positive ([`LabelKind::detectors`]).
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
    /// Which scenario it belongs to: labels of one scenario (several of its messages) share
    /// it. Set by [`Simulator::next_scenario`](crate::Simulator::next_scenario).
    pub scenario: String,
}

impl Label {
    /// The [`IncidentInfo`] of a normal-mix incident, `None` for the other kinds.
    pub fn incident_info(&self) -> Option<IncidentInfo> {
        Some(IncidentInfo {
            kind: self.kind.incident()?,
            event_id: self.event_id.clone(),
            jti: self.jti.clone(),
            patient: self.patient.clone(),
            client_id: self.client_id.clone(),
            sub: self.sub.clone(),
        })
    }

    /// A label of `kind` in `tenant`; its detectors and benign flag follow from the kind.
    pub fn new(kind: LabelKind, tenant: &str) -> Label {
        Label {
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
            scenario: String::new(),
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

    /// Sets the scenario (by default, the number of the scenario drawn).
    pub fn scenario(mut self, scenario: &str) -> Self {
        self.scenario = scenario.to_owned();
        self
    }

    /// Sets the AS session id.
    pub fn session(mut self, session: &str) -> Self {
        self.session = session.to_owned();
        self
    }

    /// What makes two labels one labelled case (every field but the event id): a scenario
    /// labels several of its messages when each is evidence (the snooper's visits, the
    /// failures of a burst); two clinicians behind one NAT are two cases of one scenario.
    pub fn identity(&self) -> (LabelKind, &str, &str, &str, &str, &str, &str, &str) {
        (
            self.kind,
            &self.tenant,
            &self.scenario,
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
            LabelKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), LabelKind::ALL.len());
        let benign: Vec<_> = LabelKind::ALL.into_iter().filter(|k| k.benign()).collect();
        assert_eq!(
            benign,
            [
                LabelKind::BreakGlass,
                LabelKind::SharedNat,
                LabelKind::Roaming,
                LabelKind::AdminWithMfa,
                LabelKind::BackendBulkExport
            ]
        );
        let info = Label::new(LabelKind::AccessAfterRevocation, "t").jti("at-1");
        assert!(!info.benign);
        assert!(info.detectors.contains(&"use_after_revocation"));
        let classic = info.incident_info().map(|i| (i.kind, i.jti));
        assert_eq!(
            classic,
            Some((Incident::AccessAfterRevocation, "at-1".to_owned()))
        );
        let hard = Label::new(LabelKind::Roaming, "t");
        assert_eq!(hard.incident_info(), None);
    }
}
