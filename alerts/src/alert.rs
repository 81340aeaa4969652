//! Alert rows: from the engine's updates, and for overdue break-glass reviews; their JSON
//! form on the topic and to SIEMs.

use custos_detect::AlertUpdate;
use custos_schemas::records::{AlertRow, Answered};
use sha2::{Digest, Sha256};

use crate::store::{Opening, REVIEW_OVERDUE};

/// The alert id of an incident: the first 32 hex digits of SHA-256(tenant 0x00 detector
/// 0x00 dedup key), the scheme of `custos_detect`, so every alert id is derived alike.
pub fn alert_id(tenant: &str, detector: &str, dedup_key: &str) -> String {
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update([0]);
    h.update(detector.as_bytes());
    h.update([0]);
    h.update(dedup_key.as_bytes());
    let mut id = hex::encode(h.finalize());
    id.truncate(32);
    id
}

/// The row of an engine update (a 1:1 mapping).
pub fn from_update(u: AlertUpdate) -> AlertRow {
    AlertRow {
        alert_id: u.alert_id,
        revision: u.revision,
        tenant: u.tenant,
        detector: u.detector.as_str().to_owned(),
        severity: u.severity.as_str().to_owned(),
        dedup_key: u.dedup_key,
        subject: u.subject,
        user_kind: u.user_kind,
        client_id: u.client_id,
        session_id: u.session_id,
        token_jti: u.token_jti,
        patient: u.patient,
        first_seen: u.first_seen,
        last_seen: u.last_seen,
        evidence: u.evidence,
        evidence_count: u.evidence_count,
        summary: u.summary,
        token_theft: u.token_theft,
    }
}

/// The alert of a break-glass opening whose review is overdue (`due_hours` after it).
pub fn review_overdue(o: &Opening, due_hours: u32) -> AlertRow {
    let dedup_key = format!("review:{}", o.event_key);
    AlertRow {
        alert_id: alert_id(&o.tenant, REVIEW_OVERDUE, &dedup_key),
        revision: 1,
        tenant: o.tenant.clone(),
        detector: REVIEW_OVERDUE.to_owned(),
        severity: "medium".to_owned(),
        dedup_key,
        subject: o.user_sub.clone(),
        user_kind: o.user_kind.clone(),
        client_id: o.client_id.clone(),
        session_id: o.session_id.clone(),
        token_jti: o.token_jti.clone(),
        patient: o.patient.clone(),
        first_seen: o.opened_ms,
        last_seen: o.opened_ms,
        evidence: vec![o.event_key.clone()],
        evidence_count: 1,
        summary: format!(
            "break-glass access opened without a review decision within {due_hours} h"
        ),
        token_theft: false,
    }
}

/// The JSON an alert is published and delivered as: the row with RFC 3339 times.
pub fn to_json(row: &AlertRow) -> Vec<u8> {
    // Plain strings, integers and vectors: serializing cannot fail.
    serde_json::to_vec(&Answered(row.clone())).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opening() -> Opening {
        Opening {
            tenant: "general".into(),
            event_key: "ek1".into(),
            opened_ms: 1_780_000_000_000,
            user_sub: "dr-alice".into(),
            user_kind: "workforce".into(),
            client_id: "ehr-app".into(),
            session_id: String::new(),
            token_jti: String::new(),
            patient: "ps:k1:abc".into(),
        }
    }

    #[test]
    fn an_overdue_review_is_one_medium_alert_keyed_by_the_opening() {
        let a = review_overdue(&opening(), 24);
        assert_eq!(a.dedup_key, "review:ek1");
        assert_eq!(a.evidence, vec!["ek1".to_owned()]);
        assert_eq!((a.severity.as_str(), a.revision), ("medium", 1));
        assert_eq!(a.alert_id, review_overdue(&opening(), 24).alert_id);
        assert_eq!(a.alert_id.len(), 32);
        let mut other = opening();
        other.tenant = "other".into();
        assert_ne!(review_overdue(&other, 24).alert_id, a.alert_id);
        let json: serde_json::Value = serde_json::from_slice(&to_json(&a)).expect("json");
        let first_seen = json["first_seen"].as_str().unwrap_or_default();
        assert!(
            first_seen.starts_with("2026-05-28T20:26:40"),
            "{first_seen}"
        );
    }
}
