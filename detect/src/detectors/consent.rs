//! `access_after_consent_revocation`: a permitted FHIR access by a client to a patient while
//! the patient's consent for that client stood revoked, more than `grace_secs` after the
//! revocation.
//!
//! Per (patient pseudonym, client) the consent changes (`custos.consent.revoked`,
//! `custos.consent.granted`) and the permitted accesses are kept in event-time order for
//! `retention_secs`; an access is judged by the latest change at or before its time, so a
//! revocation that arrives after the access it makes illegal still raises the alert, and a
//! new grant ends the revoked period. Accesses before any known change are not judged.
//!
//! An access is judged once the watermark passes its time, when every consent change up to
//! it has arrived (the watermark's promise): a grant that arrives after the access it
//! legitimizes then still counts, so the verdict does not depend on how the topics
//! interleave. The alert therefore comes when the watermark passes the access (the allowed
//! lateness after it). A revocation that arrives behind the watermark still judges the
//! accesses after it again.

use custos_schemas::EventType;
use serde::{Deserialize, Serialize};

use super::{insert_by_time, ms, slot, Ctx};
use crate::alert::{Detector, Finding, Severity, Who};
use crate::key::{self, KeyMap};

/// Consent changes kept per patient and client.
const CHANGES: usize = 8;
/// Permitted accesses kept per patient and client.
const ACCESSES: usize = 16;

/// An access not judged yet (after the watermark), judged fine, or reported.
const PENDING: u8 = 0;
const FINE: u8 = 1;
const REPORTED: u8 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Change {
    t: i64,
    granted: bool,
    ek: u128,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Pair {
    tenant: String,
    /// The latest access's user, client and patient (named by an alert judged later).
    who: Who,
    grace: i64,
    changes: Vec<Change>,
    /// (time, event key, PENDING | FINE | REPORTED)
    accesses: Vec<(i64, u128, u8)>,
    until: i64,
    /// Listed in `Consent::pending`.
    listed: bool,
}

impl Pair {
    /// Judges the accesses at or before the watermark: violations grouped by the
    /// revocation they follow.
    fn judge(&mut self, watermark: i64, out: &mut Vec<Finding>) {
        let mut found: Vec<(i64, Vec<(u128, i64)>)> = Vec::new();
        for a in self.accesses.iter_mut() {
            if a.2 != PENDING || a.0 > watermark {
                continue;
            }
            a.2 = FINE;
            let at = self.changes.partition_point(|c| c.t <= a.0);
            let Some(c) = at.checked_sub(1).map(|i| &self.changes[i]) else {
                continue;
            };
            if c.granted || a.0 <= c.t.saturating_add(self.grace) {
                continue;
            }
            a.2 = REPORTED;
            match found.iter_mut().find(|(t, _)| *t == c.t) {
                Some((_, ev)) => ev.push((a.1, a.0)),
                None => found.push((c.t, vec![(c.ek, c.t), (a.1, a.0)])),
            }
        }
        for (revoked_at, evidence) in found {
            out.push(Finding {
                tenant: self.tenant.clone(),
                detector: Detector::AccessAfterConsentRevocation,
                severity: Severity::High,
                dedup_key: format!(
                    "patient:{}:client:{}@{revoked_at}",
                    self.who.patient, self.who.client_id
                ),
                who: self.who.clone(),
                evidence,
                unlisted: 0,
                summary: format!(
                    "A client accessed a patient's data more than {} s after the patient revoked its consent.",
                    self.grace / 1000
                ),
                token_theft: false,
            });
        }
    }

    fn has_pending(&self) -> bool {
        self.accesses.iter().any(|a| a.2 == PENDING)
    }
}

/// State of `access_after_consent_revocation`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Consent {
    #[serde(with = "key::keymap_serde")]
    pairs: KeyMap<Pair>,
    /// Pairs with accesses after the watermark.
    pending: Vec<u128>,
    watermark: i64,
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
        pair.grace = ms(p.grace_secs);
        match change {
            Some(granted) => {
                insert_by_time(&mut pair.changes, Change { t, granted, ek }, CHANGES, |c| {
                    c.t
                });
                if !granted {
                    // A revocation behind the watermark: judge again what it may concern.
                    for a in pair.accesses.iter_mut().filter(|a| a.2 == FINE && a.0 > t) {
                        a.2 = PENDING;
                    }
                }
            }
            None => {
                insert_by_time(&mut pair.accesses, (t, ek, PENDING), ACCESSES, |a| a.0);
            }
        }
        // The names an alert needs: copied only for pairs with a consent change (a pair
        // without one never alerts), from the latest access, else from the change.
        if !pair.changes.is_empty() && (change.is_none() || pair.tenant.is_empty()) {
            pair.tenant.clone_from(&row.tenant);
            pair.who.subject.clone_from(&row.user_sub);
            pair.who.user_kind.clone_from(&row.user_kind);
            pair.who.client_id.clone_from(&row.client_id);
            pair.who.session_id.clone_from(&row.session_id);
            pair.who.token_jti.clone_from(&row.token_jti);
            pair.who.patient.clone_from(&row.patient);
        }
        if pair.changes.is_empty() {
            // Nothing to judge against yet; the accesses wait for a late change.
            for a in pair.accesses.iter_mut().filter(|a| a.0 <= self.watermark) {
                a.2 = FINE;
            }
            return;
        }
        pair.judge(self.watermark, ctx.out);
        if !pair.listed && pair.has_pending() {
            pair.listed = true;
            self.pending.push(k);
        }
    }

    /// Judges the accesses the watermark passed, then forgets pairs past their retention.
    pub(crate) fn advance(&mut self, now: i64, prune: bool, out: &mut Vec<Finding>) {
        self.watermark = self.watermark.max(now);
        let pairs = &mut self.pairs;
        self.pending.retain(|k| {
            let Some(pair) = pairs.get_mut(k) else {
                return false;
            };
            pair.judge(now, out);
            pair.listed = pair.has_pending();
            pair.listed
        });
        if prune {
            self.pairs.retain(|_, p| p.until >= now);
        }
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

    const ALERT: &str = "access_after_consent_revocation";

    fn access(k: &mut Kit, t: i64, client: &str, decision: &str) {
        k.send(
            "custos.fhir.access",
            t,
            patient_access(client, "p-1", "J", decision),
        );
    }

    #[test]
    fn access_beyond_the_grace_alerts_once_the_watermark_passes() {
        let mut k = Kit::new();
        k.send("custos.consent.revoked", T0, consent("p-1", "app"));
        access(&mut k, T0 + 4 * MIN, "app", "permit");
        access(&mut k, T0 + 6 * MIN, "app", "deny");
        access(&mut k, T0 + 6 * MIN, "other-app", "permit");
        k.flush(T0 + 6 * MIN);
        assert!(
            k.alerts(ALERT).is_empty(),
            "inside the grace, denied, another client"
        );
        access(&mut k, T0 + 7 * MIN, "app", "permit");
        assert!(
            k.alerts(ALERT).is_empty(),
            "not judged before the watermark"
        );
        k.flush(T0 + 7 * MIN);
        let a = k.alerts(ALERT);
        assert_eq!((a.len(), a[0].evidence_count), (1, 2));
        assert!(!a[0].summary.contains("p-1") && !a[0].dedup_key.contains("p-1"));
    }

    #[test]
    fn a_late_revocation_still_alerts() {
        let mut late = Kit::new();
        access(&mut late, T0 + 6 * MIN, "app", "permit");
        late.send("custos.consent.revoked", T0, consent("p-1", "app"));
        late.flush(T0 + 7 * MIN);
        assert_eq!(late.alerts(ALERT).len(), 1);
        // Behind the watermark already: judged when the revocation arrives.
        let mut behind = Kit::new();
        access(&mut behind, T0 + 6 * MIN, "app", "permit");
        behind.flush(T0 + 30 * MIN);
        behind.send("custos.consent.revoked", T0, consent("p-1", "app"));
        assert_eq!(behind.alerts(ALERT).len(), 1);
    }

    #[test]
    fn a_new_grant_ends_the_revoked_period_even_when_it_arrives_late() {
        let mut k = Kit::new();
        k.send("custos.consent.revoked", T0, consent("p-1", "app"));
        k.send(
            "custos.consent.granted",
            T0 + 30 * MIN,
            consent("p-1", "app"),
        );
        access(&mut k, T0 + 40 * MIN, "app", "permit");
        k.flush(T0 + 50 * MIN);
        assert!(k.alerts(ALERT).is_empty());
        let mut late = Kit::new();
        late.send("custos.consent.revoked", T0, consent("p-1", "app"));
        access(&mut late, T0 + 40 * MIN, "app", "permit");
        late.send(
            "custos.consent.granted",
            T0 + 30 * MIN,
            consent("p-1", "app"),
        );
        late.flush(T0 + 50 * MIN);
        assert!(late.alerts(ALERT).is_empty());
    }
}
