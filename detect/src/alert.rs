//! Alerts: what a detector finds ([`Finding`]), and the store that keeps one open alert per
//! incident (tenant, detector, dedup key), merges evidence into it and decides when an
//! update is emitted.

use std::collections::VecDeque;

use custos_schemas::AuditRow;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::key::{self, KeyMap};

/// Every detector, by its stable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// One access token used from several origins.
    TokenMultiOrigin,
    /// A refresh token presented after rotation.
    RefreshReuse,
    /// Failed refreshes in a burst.
    RefreshFailureBurst,
    /// Permitted access with a revoked token.
    UseAfterRevocation,
    /// Permitted access with an expired token.
    UseAfterExpiry,
    /// Permitted access to a patient after the consent was revoked.
    AccessAfterConsentRevocation,
    /// Access outside the token's scopes.
    ScopeEscalation,
    /// Denied accesses in a burst.
    RepeatedDenials,
    /// Unusually many distinct patients in an hour.
    Volume,
    /// Large search or bulk export by a user-facing client.
    BulkRead,
    /// Break-glass without a reason, or after its time limit.
    BreakGlass,
    /// Failed sign-ins in a burst, possibly followed by a success.
    CredentialStuffing,
    /// A privileged sign-in without a second factor.
    PrivilegedWithoutMfa,
}

impl Detector {
    /// Every detector.
    pub const ALL: [Detector; 13] = [
        Detector::TokenMultiOrigin,
        Detector::RefreshReuse,
        Detector::RefreshFailureBurst,
        Detector::UseAfterRevocation,
        Detector::UseAfterExpiry,
        Detector::AccessAfterConsentRevocation,
        Detector::ScopeEscalation,
        Detector::RepeatedDenials,
        Detector::Volume,
        Detector::BulkRead,
        Detector::BreakGlass,
        Detector::CredentialStuffing,
        Detector::PrivilegedWithoutMfa,
    ];

    /// The stable snake_case name (also the parameter section's name).
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::TokenMultiOrigin => "token_multi_origin",
            Detector::RefreshReuse => "refresh_reuse",
            Detector::RefreshFailureBurst => "refresh_failure_burst",
            Detector::UseAfterRevocation => "use_after_revocation",
            Detector::UseAfterExpiry => "use_after_expiry",
            Detector::AccessAfterConsentRevocation => "access_after_consent_revocation",
            Detector::ScopeEscalation => "scope_escalation",
            Detector::RepeatedDenials => "repeated_denials",
            Detector::Volume => "volume",
            Detector::BulkRead => "bulk_read",
            Detector::BreakGlass => "break_glass",
            Detector::CredentialStuffing => "credential_stuffing",
            Detector::PrivilegedWithoutMfa => "privileged_without_mfa",
        }
    }
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Investigate.
    Medium,
    /// Investigate now.
    High,
    /// Act now.
    Critical,
}

impl Severity {
    /// `low`, `medium`, `high` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// An alert opened or updated: its whole current state, with a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertUpdate {
    /// Hex, the first 32 digits of SHA-256(tenant 0x00 detector 0x00 dedup_key).
    pub alert_id: String,
    /// 1 when opened, +1 per emitted update of this alert.
    pub revision: u32,
    /// Tenant.
    pub tenant: String,
    /// The detector that raised it.
    pub detector: Detector,
    /// Current severity (only rises).
    pub severity: Severity,
    /// The incident's identity within the detector (e.g. `jti:<jti>`).
    pub dedup_key: String,
    /// `user_sub` of the first evidence row, as stored (pseudonymized where it must be).
    pub subject: String,
    /// `user_kind` of that row.
    pub user_kind: String,
    /// `client_id` of that row.
    pub client_id: String,
    /// `session_id` of that row.
    pub session_id: String,
    /// `token_jti` of that row.
    pub token_jti: String,
    /// Patient pseudonym of that row, or empty.
    pub patient: String,
    /// Event time (ms) of the earliest evidence.
    pub first_seen: i64,
    /// Event time (ms) of the latest evidence.
    pub last_seen: i64,
    /// Event keys of the evidence rows: the first 16 and the last 16 received.
    pub evidence: Vec<String>,
    /// All evidence rows, including those not listed in `evidence`.
    pub evidence_count: u32,
    /// One sentence with counts and kinds, never a raw identifier of a patient or a token.
    pub summary: String,
    /// A candidate for the tenant's opt-in automatic revocation (token theft).
    pub token_theft: bool,
}

/// The alert id of an incident.
pub fn alert_id(tenant: &str, detector: Detector, dedup_key: &str) -> String {
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update([0]);
    h.update(detector.as_str().as_bytes());
    h.update([0]);
    h.update(dedup_key.as_bytes());
    let mut id = hex::encode(h.finalize());
    id.truncate(32);
    id
}

/// The row attributes an alert names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    /// `user_sub`.
    pub subject: String,
    /// `user_kind`.
    pub user_kind: String,
    /// `client_id`.
    pub client_id: String,
    /// `session_id`.
    pub session_id: String,
    /// `token_jti`.
    pub token_jti: String,
    /// `patient`.
    pub patient: String,
}

impl Who {
    /// The attributes of `row`.
    pub fn of(row: &AuditRow) -> Who {
        Who {
            subject: row.user_sub.clone(),
            user_kind: row.user_kind.clone(),
            client_id: row.client_id.clone(),
            session_id: row.session_id.clone(),
            token_jti: row.token_jti.clone(),
            patient: row.patient.clone(),
        }
    }
}

/// What a detector reports: new evidence for one incident.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Tenant.
    pub tenant: String,
    /// Detector.
    pub detector: Detector,
    /// Severity this evidence justifies.
    pub severity: Severity,
    /// Incident identity.
    pub dedup_key: String,
    /// Whom it is about (used when the alert opens).
    pub who: Who,
    /// Evidence (event key, event time ms), not yet reported for this incident.
    pub evidence: Vec<(u128, i64)>,
    /// Further evidence rows counted but not kept (beyond a detector's per-key cap).
    pub unlisted: u32,
    /// The alert's summary after this evidence.
    pub summary: String,
    /// Token theft candidate.
    pub token_theft: bool,
}

/// Evidence keys listed at the head and at the tail of an alert.
const LISTED: usize = 16;
/// Evidence keys remembered per alert to ignore a row reported twice.
const REMEMBERED: usize = 1024;

/// One open alert.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Open {
    current: AlertUpdate,
    head: Vec<u128>,
    tail: VecDeque<u128>,
    /// Evidence keys received (sorted, at most [`REMEMBERED`]).
    seen: Vec<u128>,
    /// Evidence count at which the next update is emitted.
    next_emit: u32,
}

/// The open alerts of every tenant.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AlertStore {
    #[serde(with = "key::keymap_serde")]
    open: KeyMap<Open>,
    /// Findings refused because [`crate::MAX_KEYS`] alerts were open.
    #[serde(default)]
    pub dropped: u64,
}

impl AlertStore {
    /// Merges a finding; returns the update to emit, if any. An update is emitted when the
    /// alert opens, when its evidence count reaches 2, 4, 8, ... and when its severity rises.
    pub fn apply(&mut self, f: Finding) -> Option<AlertUpdate> {
        let k = key::key(&[&f.tenant, f.detector.as_str(), &f.dedup_key]);
        if self.open.len() >= crate::MAX_KEYS && !self.open.contains_key(&k) {
            self.dropped += 1;
            return None;
        }
        let open = self.open.entry(k).or_insert_with(|| Open {
            current: AlertUpdate {
                alert_id: alert_id(&f.tenant, f.detector, &f.dedup_key),
                revision: 0,
                tenant: f.tenant.clone(),
                detector: f.detector,
                severity: f.severity,
                dedup_key: f.dedup_key.clone(),
                subject: f.who.subject.clone(),
                user_kind: f.who.user_kind.clone(),
                client_id: f.who.client_id.clone(),
                session_id: f.who.session_id.clone(),
                token_jti: f.who.token_jti.clone(),
                patient: f.who.patient.clone(),
                first_seen: i64::MAX,
                last_seen: i64::MIN,
                evidence: Vec::new(),
                evidence_count: 0,
                summary: String::new(),
                token_theft: false,
            },
            head: Vec::new(),
            tail: VecDeque::new(),
            seen: Vec::new(),
            next_emit: 1,
        });
        let mut added = f.unlisted;
        for (ek, t) in f.evidence {
            match open.seen.binary_search(&ek) {
                Ok(_) => continue,
                Err(at) if open.seen.len() < REMEMBERED => open.seen.insert(at, ek),
                Err(_) => {}
            }
            added += 1;
            let c = &mut open.current;
            c.first_seen = c.first_seen.min(t);
            c.last_seen = c.last_seen.max(t);
            if open.head.len() < LISTED {
                open.head.push(ek);
            } else {
                if open.tail.len() == LISTED {
                    open.tail.pop_front();
                }
                open.tail.push_back(ek);
            }
        }
        let c = &mut open.current;
        let rose = f.severity > c.severity;
        if added == 0 && !rose {
            return None;
        }
        c.evidence = open
            .head
            .iter()
            .chain(open.tail.iter())
            .map(|k| key::event_key_hex(*k))
            .collect();
        c.evidence_count = c.evidence_count.saturating_add(added);
        c.severity = c.severity.max(f.severity);
        c.token_theft |= f.token_theft;
        c.summary = f.summary;
        if c.first_seen == i64::MAX {
            // Only unlisted evidence so far: no time known.
            c.first_seen = 0;
            c.last_seen = 0;
        }
        if c.evidence_count < open.next_emit && !rose {
            return None;
        }
        while open.next_emit <= c.evidence_count {
            open.next_emit = open.next_emit.saturating_mul(2);
        }
        c.revision += 1;
        Some(c.clone())
    }

    /// Forgets alerts whose last evidence is older than `before` (ms).
    pub fn prune(&mut self, before: i64) {
        self.open.retain(|_, o| o.current.last_seen >= before);
    }

    /// Number of open alerts.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no alert is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The current state of every open alert (for tests and inspection), by alert id.
    pub fn all(&self) -> Vec<&AlertUpdate> {
        let mut v: Vec<&AlertUpdate> = self.open.values().map(|o| &o.current).collect();
        v.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        v
    }
}
