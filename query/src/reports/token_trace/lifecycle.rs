//! A token's lifecycle as the trace answers it: the per-token summary row and its reading
//! against the SMART scopes granted (operations not granted, scopes unused, late uses
//! flagged), and the trace's events flagged by their token's revocation and expiry.

use std::collections::HashMap;

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::params::Cursor;
use crate::reports::{EventRow, Keyed, Tabular, EVENT_COLUMNS};

/// The aggregate row of [`super::summary`].
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct SummaryRow {
    /// Token id.
    pub token_jti: String,
    /// Client.
    pub client_id: String,
    /// Subject.
    pub user_sub: String,
    /// fhirUser.
    pub fhir_user: String,
    /// Session.
    pub session_id: String,
    /// ms, 0 if unseen.
    pub issued_at: i64,
    /// ms, 0 if unseen.
    pub refreshed_at: i64,
    /// ms, 0 if unseen.
    pub revoked_at: i64,
    /// Revocation reason.
    pub revocation_reason: String,
    /// ms, 0 if unknown.
    pub expires_at: i64,
    /// Count.
    pub introspections: u64,
    /// Count.
    pub inactive_introspections: u64,
    /// Count.
    pub accesses: u64,
    /// Count.
    pub denied_accesses: u64,
    /// Scopes in the AS's issued/refreshed events.
    pub scopes_granted: Vec<String>,
    /// Scopes the gateway saw on the token.
    pub scopes_presented: Vec<String>,
    /// `ResourceType.interaction` performed.
    pub operations: Vec<String>,
    /// IPs seen.
    pub ips: Vec<String>,
    /// Count.
    pub accesses_after_revocation: u64,
    /// Count.
    pub accesses_after_expiry: u64,
}

/// Lifecycle of one token.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TokenSummary {
    /// Token id.
    pub jti: String,
    /// Client.
    pub client_id: String,
    /// Subject.
    pub user_sub: String,
    /// fhirUser.
    pub fhir_user: String,
    /// AS session.
    pub session_id: String,
    /// Issued (RFC 3339).
    pub issued_at: Option<String>,
    /// Last refreshed (RFC 3339).
    pub last_refreshed_at: Option<String>,
    /// Expiry (RFC 3339).
    pub expires_at: Option<String>,
    /// First revocation (RFC 3339).
    pub revoked_at: Option<String>,
    /// Why it was revoked.
    pub revocation_reason: String,
    /// Introspections seen.
    pub introspections: u64,
    /// Introspections that answered `active: false`.
    pub inactive_introspections: u64,
    /// FHIR accesses made with it.
    pub accesses: u64,
    /// Of which denied.
    pub denied_accesses: u64,
    /// Accesses after its revocation.
    pub accesses_after_revocation: u64,
    /// Accesses after its expiry.
    pub accesses_after_expiry: u64,
    /// IPs seen (pseudonyms for patient users).
    pub ips: Vec<String>,
    /// Scopes granted.
    pub scopes_granted: Vec<String>,
    /// Operations performed (`ResourceType.interaction`).
    pub operations: Vec<String>,
    /// Operations no granted scope covers.
    pub operations_not_granted: Vec<String>,
    /// Resource scopes granted but never used.
    pub scopes_unused: Vec<String>,
    /// `used_after_revocation`, `used_after_expiry`, `scope_exceeded`.
    pub flags: Vec<String>,
}

/// The SMART permission letter an interaction needs (`None`: not scope-checked).
pub fn permission(interaction: &str) -> Option<char> {
    match interaction {
        "read" | "vread" | "history" | "history-instance" | "history-type" => Some('r'),
        "search" | "search-type" | "search-system" | "history-system" => Some('s'),
        "create" => Some('c'),
        "update" | "patch" => Some('u'),
        "delete" => Some('d'),
        _ => None,
    }
}

/// Whether a SMART v1/v2 scope (`patient/Observation.rs`, `user/*.read`, ...) covers
/// `letter` on `resource_type`.
pub fn scope_covers(scope: &str, resource_type: &str, letter: char) -> bool {
    let Some((context, rest)) = scope.split_once('/') else {
        return false;
    };
    if !matches!(context, "patient" | "user" | "system") {
        return false;
    }
    let rest = rest.split('?').next().unwrap_or(rest);
    let Some((rtype, perms)) = rest.split_once('.') else {
        return false;
    };
    if rtype != "*" && rtype != resource_type {
        return false;
    }
    match perms {
        "*" => true,
        "read" => matches!(letter, 'r' | 's'),
        "write" => matches!(letter, 'c' | 'u' | 'd'),
        p if !p.is_empty() && p.chars().all(|c| "cruds".contains(c)) => p.contains(letter),
        _ => false,
    }
}

fn opt_time(ms: i64) -> Option<String> {
    (ms > 0).then(|| crate::params::ms_to_rfc3339(ms))
}

impl From<SummaryRow> for TokenSummary {
    fn from(r: SummaryRow) -> TokenSummary {
        let granted = if r.scopes_granted.is_empty() {
            r.scopes_presented.clone()
        } else {
            r.scopes_granted.clone()
        };
        let mut not_granted = Vec::new();
        let mut used_scopes = vec![false; granted.len()];
        for op in &r.operations {
            let Some((rtype, interaction)) = op.split_once('.') else {
                continue;
            };
            let Some(letter) = permission(interaction) else {
                continue;
            };
            let mut covered = false;
            for (i, s) in granted.iter().enumerate() {
                if scope_covers(s, rtype, letter) {
                    covered = true;
                    used_scopes[i] = true;
                }
            }
            if !covered {
                not_granted.push(op.clone());
            }
        }
        let unused: Vec<String> = granted
            .iter()
            .zip(&used_scopes)
            .filter(|(s, used)| !**used && s.contains('/'))
            .map(|(s, _)| s.clone())
            .collect();
        let mut flags = Vec::new();
        if r.accesses_after_revocation > 0 {
            flags.push("used_after_revocation".to_owned());
        }
        if r.accesses_after_expiry > 0 {
            flags.push("used_after_expiry".to_owned());
        }
        if !not_granted.is_empty() {
            flags.push("scope_exceeded".to_owned());
        }
        TokenSummary {
            issued_at: opt_time(r.issued_at),
            last_refreshed_at: opt_time(r.refreshed_at),
            expires_at: opt_time(r.expires_at),
            revoked_at: opt_time(r.revoked_at),
            jti: r.token_jti,
            client_id: r.client_id,
            user_sub: r.user_sub,
            fhir_user: r.fhir_user,
            session_id: r.session_id,
            revocation_reason: r.revocation_reason,
            introspections: r.introspections,
            inactive_introspections: r.inactive_introspections,
            accesses: r.accesses,
            denied_accesses: r.denied_accesses,
            accesses_after_revocation: r.accesses_after_revocation,
            accesses_after_expiry: r.accesses_after_expiry,
            ips: r.ips,
            scopes_granted: granted,
            operations: r.operations,
            operations_not_granted: not_granted,
            scopes_unused: unused,
            flags,
        }
    }
}

/// Revocation and expiry instants of each token, to flag events.
#[derive(Debug, Clone, Default)]
pub struct Deadlines(HashMap<String, (i64, i64)>);

impl Deadlines {
    /// From the summary rows.
    pub fn new(rows: &[SummaryRow]) -> Deadlines {
        Deadlines(
            rows.iter()
                .map(|r| (r.token_jti.clone(), (r.revoked_at, r.expires_at)))
                .collect(),
        )
    }

    /// Flags an event.
    pub fn flag(&self, e: EventRow) -> TraceEvent {
        let (revoked, expires) = self.0.get(&e.token_jti).copied().unwrap_or((0, 0));
        let is_access = e.event_type == "custos.fhir.access";
        TraceEvent {
            after_revocation: is_access && revoked > 0 && e.event_time > revoked,
            after_expiry: is_access && expires > 0 && e.event_time > expires,
            event: e,
        }
    }
}

/// An event of the trace with its flags.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TraceEvent {
    /// The audit record.
    #[serde(flatten)]
    pub event: EventRow,
    /// An access made after the token was revoked.
    pub after_revocation: bool,
    /// An access made after the token expired.
    pub after_expiry: bool,
}

impl Keyed for TraceEvent {
    fn cursor(&self) -> Cursor {
        self.event.cursor()
    }
}

/// Columns of the event reports.
const N: usize = EVENT_COLUMNS.len();

/// The event columns and the two flags.
const TRACE_COLUMNS: [&str; N + 2] = {
    let mut out = [""; N + 2];
    let mut i = 0;
    while i < N {
        out[i] = EVENT_COLUMNS[i];
        i += 1;
    }
    out[N] = "after_revocation";
    out[N + 1] = "after_expiry";
    out
};

impl Tabular for TraceEvent {
    fn header() -> &'static [&'static str] {
        &TRACE_COLUMNS
    }

    fn record(&self) -> Vec<String> {
        let mut r = self.event.record();
        r.push(self.after_revocation.to_string());
        r.push(self.after_expiry.to_string());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_scopes() {
        assert!(scope_covers("user/Observation.rs", "Observation", 'r'));
        assert!(scope_covers("user/Observation.rs", "Observation", 's'));
        assert!(!scope_covers("user/Observation.rs", "Observation", 'u'));
        assert!(scope_covers("patient/*.read", "Condition", 's'));
        assert!(!scope_covers("patient/*.read", "Condition", 'c'));
        assert!(scope_covers("system/Patient.write", "Patient", 'u'));
        assert!(scope_covers(
            "patient/Observation.rs?category=laboratory",
            "Observation",
            'r'
        ));
        assert!(!scope_covers("launch", "Observation", 'r'));
        assert!(!scope_covers("user/Patient.rs", "Observation", 'r'));
    }

    #[test]
    fn summary_flags_scope_excess_and_late_use() {
        let row = SummaryRow {
            token_jti: "j".into(),
            client_id: "c".into(),
            user_sub: "u".into(),
            fhir_user: String::new(),
            session_id: String::new(),
            issued_at: 1,
            refreshed_at: 0,
            revoked_at: 5,
            revocation_reason: "r".into(),
            expires_at: 0,
            introspections: 0,
            inactive_introspections: 0,
            accesses: 3,
            denied_accesses: 0,
            scopes_granted: vec![
                "launch".into(),
                "user/Observation.rs".into(),
                "user/Condition.rs".into(),
            ],
            scopes_presented: vec![],
            operations: vec!["Observation.read".into(), "Patient.delete".into()],
            ips: vec![],
            accesses_after_revocation: 1,
            accesses_after_expiry: 0,
        };
        let s = TokenSummary::from(row);
        assert_eq!(s.operations_not_granted, vec!["Patient.delete".to_owned()]);
        assert_eq!(s.scopes_unused, vec!["user/Condition.rs".to_owned()]);
        assert_eq!(s.flags, vec!["used_after_revocation", "scope_exceeded"]);
        assert_eq!(s.expires_at, None);
    }
}
