//! `break_glass`: an opening (`custos.breakglass.opened`) or a permitted break-glass access
//! (purpose of use `BTG`) with an empty reason (Medium); and a permitted `BTG` access by a
//! user to a patient after the limit of that user's latest opening for the patient
//! (`expires_at`, else `default_limit_secs` after the opening) when no opening covers it
//! (High). A `BTG` access without any opening is not judged here (the review queue sees
//! every opening).
//!
//! Per (user, patient) the openings and the `BTG` accesses are kept in event-time order
//! until `retention_secs` after the last limit, so an opening that arrives after its
//! accesses still judges them.

use custos_schemas::EventType;
use serde::{Deserialize, Serialize};

use super::{insert_by_time, ms, slot, Ctx};
use crate::alert::{Detector, Severity};
use crate::key::{self, KeyMap};

/// Openings kept per user and patient.
const OPENINGS: usize = 8;
/// Break-glass accesses kept per user and patient.
const ACCESSES: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opening {
    t: i64,
    limit: i64,
    ek: u128,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Pair {
    openings: Vec<Opening>,
    /// (time, event key, reported late)
    accesses: Vec<(i64, u128, bool)>,
    until: i64,
}

/// State of `break_glass`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct BreakGlassState {
    #[serde(with = "key::keymap_serde")]
    pairs: KeyMap<Pair>,
}

impl BreakGlassState {
    pub(crate) fn observe(&mut self, ctx: &mut Ctx<'_>) {
        let row = ctx.row;
        let opening = match ctx.event.event_type {
            EventType::BreakGlassOpened => true,
            EventType::FhirAccess
                if row.decision == "permit" && row.purpose_of_use.iter().any(|p| p == "BTG") =>
            {
                false
            }
            _ => return,
        };
        let p = &ctx.tenant.p.break_glass;
        if row.break_glass_reason.trim().is_empty() {
            let (dedup, summary) = if opening {
                (
                    format!("opening:{}", ctx.event_key()),
                    "Break-glass access was opened without a reason.",
                )
            } else {
                let hour = ctx.t - ctx.t.rem_euclid(3_600_000);
                (
                    format!("no-reason:{}:{}@{hour}", row.user_sub, row.patient),
                    "A break-glass access stated no reason.",
                )
            };
            ctx.report(
                Detector::BreakGlass,
                Severity::Medium,
                dedup,
                vec![(ctx.ek, ctx.t)],
                summary.to_owned(),
            );
        }
        if row.patient.is_empty() || row.user_sub.is_empty() {
            return;
        }
        let k = ctx.key(&["btg", &row.user_sub, &row.patient]);
        let (ek, t) = (ctx.ek, ctx.t);
        let retention = ms(p.retention_secs);
        let Some(pair) = slot(&mut self.pairs, k, ctx.dropped) else {
            return;
        };
        if opening {
            let limit = row
                .expires_at
                .unwrap_or_else(|| t.saturating_add(ms(p.default_limit_secs)));
            pair.until = pair.until.max(limit.saturating_add(retention));
            insert_by_time(
                &mut pair.openings,
                Opening { t, limit, ek },
                OPENINGS,
                |o| o.t,
            );
        } else {
            pair.until = pair.until.max(t.saturating_add(retention));
            insert_by_time(&mut pair.accesses, (t, ek, false), ACCESSES, |a| a.0);
        }
        if pair.openings.is_empty() {
            return;
        }
        let mut found: Vec<(u128, i64, Vec<(u128, i64)>)> = Vec::new();
        for a in pair.accesses.iter_mut().filter(|a| !a.2) {
            let before = pair.openings.partition_point(|o| o.t <= a.0);
            let Some(latest) = before.checked_sub(1).map(|i| &pair.openings[i]) else {
                continue;
            };
            if pair.openings[..before].iter().any(|o| a.0 <= o.limit) {
                continue;
            }
            a.2 = true;
            match found.iter_mut().find(|f| f.0 == latest.ek) {
                Some(f) => f.2.push((a.1, a.0)),
                None => found.push((latest.ek, latest.t, vec![(latest.ek, latest.t), (a.1, a.0)])),
            }
        }
        for (opening_ek, _, evidence) in found {
            let dedup = format!(
                "late:{}:{}@{}",
                row.user_sub,
                row.patient,
                key::event_key_hex(opening_ek)
            );
            ctx.report(
                Detector::BreakGlass,
                Severity::High,
                dedup,
                evidence,
                "Break-glass accesses continued after the opening's time limit.".to_owned(),
            );
        }
    }

    pub(crate) fn prune(&mut self, now: i64) {
        self.pairs.retain(|_, p| p.until >= now);
    }

    pub(crate) fn tracked(&self, out: &mut Vec<(&'static str, usize)>) {
        out.push(("break_glass.pairs", self.pairs.len()));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::detectors::testkit::{Kit, MIN, T0};
    use crate::Severity;

    fn opened(reason: &str, expires_ms: Option<i64>) -> serde_json::Value {
        let mut v = json!({"iss": "https://as", "sub": "dr-3", "fhirUser": "Practitioner/pr-3",
            "client_id": "ehr-app", "patient": "p-9", "reason": reason, "sourceIp": "10.1.1.3"});
        if let Some(e) = expires_ms {
            v["expiresAt"] = json!(chrono::DateTime::from_timestamp_millis(e)
                .expect("t")
                .to_rfc3339());
        }
        v
    }

    fn btg(reason: Option<&str>) -> serde_json::Value {
        // The decoders require a reason with purpose BTG: tests that need none clear the row's.
        let mut v = json!({"requestId": "q", "iss": "https://as", "sub": "dr-3",
            "fhirUser": "Practitioner/pr-3", "client_id": "ehr-app", "jti": "J", "scope": "user/*.rs",
            "interaction": "search-type", "resourceType": "Condition", "patient": "Patient/p-9",
            "purposeOfUse": ["BTG"], "decision": "permit", "httpStatus": 200, "sourceIp": "10.1.1.3"});
        if let Some(r) = reason {
            v["breakGlassReason"] = json!(r);
        }
        v
    }

    #[test]
    fn with_reasons_and_within_the_limit_is_quiet() {
        let mut k = Kit::new();
        k.send(
            "custos.breakglass.opened",
            T0,
            opened("cardiac arrest", Some(T0 + 60 * MIN)),
        );
        k.send(
            "custos.fhir.access",
            T0 + 59 * MIN,
            btg(Some("cardiac arrest")),
        );
        assert!(k.alerts("break_glass").is_empty());
    }

    #[test]
    fn no_reason_alerts() {
        let mut k = Kit::new();
        // The decoders refuse an opening without a reason; a row that lost it still alerts.
        let (ev, mut row) = k.build("custos.breakglass.opened", T0, opened("x", None));
        row.break_glass_reason = "  ".to_owned();
        k.send_row(&ev, &row);
        let (ev, mut row) = k.build("custos.fhir.access", T0 + MIN, btg(Some("x")));
        row.break_glass_reason.clear();
        k.send_row(&ev, &row);
        let a = k.alerts("break_glass");
        assert_eq!(a.len(), 2, "the opening and the access");
        assert!(a.iter().all(|a| a.severity == Severity::Medium));
    }

    #[test]
    fn after_the_limit_alerts_whatever_the_order() {
        let mut k = Kit::new();
        k.send(
            "custos.fhir.access",
            T0 + 61 * MIN,
            btg(Some("cardiac arrest")),
        );
        assert!(k.alerts("break_glass").is_empty(), "no opening known yet");
        k.send(
            "custos.breakglass.opened",
            T0,
            opened("cardiac arrest", Some(T0 + 60 * MIN)),
        );
        let a = k.alerts("break_glass");
        assert_eq!(
            (a.len(), a[0].severity, a[0].evidence_count),
            (1, Severity::High, 2)
        );
        // Default limit of 4 h without expires_at.
        let mut d = Kit::new();
        d.send("custos.breakglass.opened", T0, opened("stroke", None));
        d.send("custos.fhir.access", T0 + 239 * MIN, btg(Some("stroke")));
        assert!(d.alerts("break_glass").is_empty());
        d.send("custos.fhir.access", T0 + 241 * MIN, btg(Some("stroke")));
        assert_eq!(d.alerts("break_glass").len(), 1);
    }
}
