//! `access_after_consent_revocation`: a permitted FHIR access by a client to a patient while
//! the patient's consent for that client stood revoked, more than `grace_secs` after the
//! revocation.
//!
//! Per (patient pseudonym, client) the consent changes (`custos.consent.revoked`,
//! `custos.consent.granted`) and the permitted accesses are kept in event-time order for
//! `retention_secs`; an access is judged by the latest change at or before its time, so a
//! revocation that arrives after the access it makes illegal still raises the alert, and a
//! new grant ends the revoked period. Accesses before any known change are not judged.

use custos_schemas::EventType;
use serde::{Deserialize, Serialize};

use super::{insert_by_time, ms, slot, Ctx};
use crate::alert::{Detector, Severity};
use crate::key::{self, KeyMap};

/// Consent changes kept per patient and client.
const CHANGES: usize = 8;
/// Permitted accesses kept per patient and client.
const ACCESSES: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Change {
    t: i64,
    granted: bool,
    ek: u128,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Pair {
    changes: Vec<Change>,
    /// (time, event key, reported)
    accesses: Vec<(i64, u128, bool)>,
    until: i64,
}

/// State of `access_after_consent_revocation`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Consent {
    #[serde(with = "key::keymap_serde")]
    pairs: KeyMap<Pair>,
}

impl Consent {
    pub(crate) fn observe(&mut self, ctx: &mut Ctx<'_>) {
        let row = ctx.row;
        if row.patient.is_empty() || row.client_id.is_empty() {
            return;
        }
        let change = match ctx.event.event_type {
            EventType::ConsentRevoked => Some(false),
            EventType::ConsentGranted => Some(true),
            EventType::FhirAccess if row.decision == "permit" => None,
            _ => return,
        };
        let p = &ctx.tenant.p.access_after_consent_revocation;
        let k = ctx.key(&["consent", &row.patient, &row.client_id]);
        let (ek, t) = (ctx.ek, ctx.t);
        let Some(pair) = slot(&mut self.pairs, k, ctx.dropped) else {
            return;
        };
        pair.until = pair.until.max(t.saturating_add(ms(p.retention_secs)));
        match change {
            Some(granted) => {
                insert_by_time(&mut pair.changes, Change { t, granted, ek }, CHANGES, |c| {
                    c.t
                })
            }
            None => insert_by_time(&mut pair.accesses, (t, ek, false), ACCESSES, |a| a.0),
        }
        if pair.changes.is_empty() {
            // Nothing to judge against yet; the access waits for a late change.
            return;
        }
        let grace = ms(p.grace_secs);
        // Group violating accesses by the revocation they follow.
        let mut found: Vec<(Change, Vec<(u128, i64)>)> = Vec::new();
        for a in pair.accesses.iter_mut().filter(|a| !a.2) {
            let at = pair.changes.partition_point(|c| c.t <= a.0);
            let Some(c) = at.checked_sub(1).map(|i| &pair.changes[i]) else {
                continue;
            };
            if c.granted || a.0 <= c.t.saturating_add(grace) {
                continue;
            }
            a.2 = true;
            match found.iter_mut().find(|(r, _)| r.ek == c.ek) {
                Some((_, ev)) => ev.push((a.1, a.0)),
                None => found.push((c.clone(), vec![(c.ek, c.t), (a.1, a.0)])),
            }
        }
        for (revocation, evidence) in found {
            let dedup = format!(
                "patient:{}:client:{}@{}",
                row.patient, row.client_id, revocation.t
            );
            let summary = format!(
                "A client accessed a patient's data more than {} s after the patient revoked its consent.",
                p.grace_secs
            );
            ctx.report(
                Detector::AccessAfterConsentRevocation,
                Severity::High,
                dedup,
                evidence,
                summary,
            );
        }
    }

    pub(crate) fn prune(&mut self, now: i64) {
        self.pairs.retain(|_, p| p.until >= now);
    }

    pub(crate) fn tracked(&self, out: &mut Vec<(&'static str, usize)>) {
        out.push(("access_after_consent_revocation.pairs", self.pairs.len()));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::detectors::testkit::{patient_access, Kit, MIN, T0};

    fn consent(patient: &str, client: &str) -> serde_json::Value {
        json!({"consentId": format!("c-{patient}-{client}"), "patient": patient, "client_id": client,
            "sub": format!("sub-{patient}"), "actor": "patient"})
    }

    #[test]
    fn access_beyond_the_grace_alerts_whatever_the_order() {
        let mut k = Kit::new();
        k.send("custos.consent.revoked", T0, consent("p-1", "app"));
        k.send(
            "custos.fhir.access",
            T0 + 4 * MIN,
            patient_access("app", "p-1", "J", "permit"),
        );
        assert!(
            k.alerts("access_after_consent_revocation").is_empty(),
            "inside the grace"
        );
        k.send(
            "custos.fhir.access",
            T0 + 6 * MIN,
            patient_access("app", "p-1", "J", "deny"),
        );
        assert!(
            k.alerts("access_after_consent_revocation").is_empty(),
            "denied"
        );
        k.send(
            "custos.fhir.access",
            T0 + 6 * MIN,
            patient_access("other-app", "p-1", "J", "permit"),
        );
        assert!(
            k.alerts("access_after_consent_revocation").is_empty(),
            "another client"
        );
        k.send(
            "custos.fhir.access",
            T0 + 6 * MIN,
            patient_access("app", "p-1", "J", "permit"),
        );
        let a = k.alerts("access_after_consent_revocation");
        assert_eq!((a.len(), a[0].evidence_count), (1, 2));
        assert!(!a[0].summary.contains("p-1"));

        let mut late = Kit::new();
        late.send(
            "custos.fhir.access",
            T0 + 6 * MIN,
            patient_access("app", "p-1", "J", "permit"),
        );
        late.send("custos.consent.revoked", T0, consent("p-1", "app"));
        assert_eq!(late.alerts("access_after_consent_revocation").len(), 1);
    }

    #[test]
    fn a_new_grant_ends_the_revoked_period() {
        let mut k = Kit::new();
        k.send("custos.consent.revoked", T0, consent("p-2", "app"));
        k.send(
            "custos.consent.granted",
            T0 + 30 * MIN,
            consent("p-2", "app"),
        );
        k.send(
            "custos.fhir.access",
            T0 + 40 * MIN,
            patient_access("app", "p-2", "J", "permit"),
        );
        assert!(k.alerts("access_after_consent_revocation").is_empty());
    }
}
