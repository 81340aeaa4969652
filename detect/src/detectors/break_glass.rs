//! `break_glass`: an opening (`custos.breakglass.opened`) or a permitted break-glass access
//! (purpose of use `BTG`) with no real reason — empty, shorter than `min_reason_chars`, or one
//! of the tenant's `placeholder_reasons` such as `n/a` (Medium); and a permitted `BTG` access by a
//! user to a patient after the limit of that user's latest opening for the patient
//! (`expires_at`, else `default_limit_secs` after the opening) when no opening covers it
//! (High). A `BTG` access without any opening is not judged here (the review queue sees
//! every opening).
//!
//! Per (user, patient) the openings and the `BTG` accesses are kept in event-time order
//! until `retention_secs` after the last limit, so an opening that arrives after its
//! accesses still judges them. A late access is judged once the watermark passes it (every
//! opening before it has arrived then, so a later opening that covers it still counts);
//! an opening that arrives behind the watermark judges the accesses after it again.

use custos_schemas::EventType;
use serde::{Deserialize, Serialize};

use super::{insert_by_time, ms, slot, Ctx};
use crate::alert::{Detector, Finding, Severity, Who};
use crate::key::{self, KeyMap};

/// Openings kept per user and patient.
const OPENINGS: usize = 8;
/// Break-glass accesses kept per user and patient.
const ACCESSES: usize = 32;

/// An access not judged yet (after the watermark), judged fine, or reported.
const PENDING: u8 = 0;
const FINE: u8 = 1;
const REPORTED: u8 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opening {
    t: i64,
    limit: i64,
    ek: u128,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Pair {
    tenant: String,
    /// The latest access's user, client and patient.
    who: Who,
    openings: Vec<Opening>,
    /// (time, event key, PENDING | FINE | REPORTED)
    accesses: Vec<(i64, u128, u8)>,
    until: i64,
    listed: bool,
}

impl Pair {
    /// Judges the accesses at or before the watermark against the openings before them.
    fn judge(&mut self, watermark: i64, out: &mut Vec<Finding>) {
        let mut found: Vec<(u128, Vec<(u128, i64)>)> = Vec::new();
        for a in self.accesses.iter_mut() {
            if a.2 != PENDING || a.0 > watermark {
                continue;
            }
            a.2 = FINE;
            let before = self.openings.partition_point(|o| o.t <= a.0);
            let Some(latest) = before.checked_sub(1).map(|i| &self.openings[i]) else {
                continue;
            };
            if self.openings[..before].iter().any(|o| a.0 <= o.limit) {
                continue;
            }
            a.2 = REPORTED;
            match found.iter_mut().find(|f| f.0 == latest.ek) {
                Some(f) => f.1.push((a.1, a.0)),
                None => found.push((latest.ek, vec![(latest.ek, latest.t), (a.1, a.0)])),
            }
        }
        for (opening, evidence) in found {
            out.push(Finding {
                tenant: self.tenant.clone(),
                detector: Detector::BreakGlass,
                severity: Severity::High,
                dedup_key: format!(
                    "late:{}:{}@{}",
                    self.who.subject,
                    self.who.patient,
                    key::event_key_hex(opening)
                ),
                who: self.who.clone(),
                evidence,
                unlisted: 0,
                summary: "Break-glass accesses continued after the opening's time limit."
                    .to_owned(),
                token_theft: false,
            });
        }
    }

    fn has_pending(&self) -> bool {
        self.accesses.iter().any(|a| a.2 == PENDING)
    }
}

/// State of `break_glass`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct BreakGlassState {
    #[serde(with = "key::keymap_serde")]
    pairs: KeyMap<Pair>,
    /// Pairs with accesses after the watermark.
    pending: Vec<u128>,
    watermark: i64,
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
        if !p.states_a_reason(&row.break_glass_reason) {
            let (dedup, summary) = if opening {
                (
                    format!("opening:{}", ctx.event_key()),
                    "Break-glass access was opened without a real reason.",
                )
            } else {
                let hour = ctx.t - ctx.t.rem_euclid(3_600_000);
                (
                    format!("no-reason:{}:{}@{hour}", row.user_sub, row.patient),
                    "A break-glass access stated no real reason.",
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
            // An opening behind the watermark: judge again the accesses after it.
            for a in pair.accesses.iter_mut().filter(|a| a.2 == FINE && a.0 >= t) {
                a.2 = PENDING;
            }
        } else {
            pair.until = pair.until.max(t.saturating_add(retention));
            insert_by_time(&mut pair.accesses, (t, ek, PENDING), ACCESSES, |a| a.0);
            pair.tenant.clone_from(&row.tenant);
            pair.who.subject.clone_from(&row.user_sub);
            pair.who.user_kind.clone_from(&row.user_kind);
            pair.who.client_id.clone_from(&row.client_id);
            pair.who.session_id.clone_from(&row.session_id);
            pair.who.token_jti.clone_from(&row.token_jti);
            pair.who.patient.clone_from(&row.patient);
        }
        if pair.accesses.is_empty() {
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
    fn placeholder_reasons_alert_and_a_short_real_one_does_not() {
        let mut k = Kit::new();
        k.send("custos.breakglass.opened", T0, opened("N/A", None));
        k.send("custos.fhir.access", T0 + MIN, btg(Some("CPR")));
        let a = k.alerts("break_glass");
        assert_eq!(a.len(), 1, "the opening only: {a:?}");
        assert!(a[0].summary.contains("without a real reason"));
    }

    #[test]
    fn after_the_limit_alerts_whatever_the_order() {
        let mut k = Kit::new();
        k.send(
            "custos.fhir.access",
            T0 + 61 * MIN,
            btg(Some("cardiac arrest")),
        );
        let limit = Some(T0 + 60 * MIN);
        k.send(
            "custos.breakglass.opened",
            T0,
            opened("cardiac arrest", limit),
        );
        assert!(
            k.alerts("break_glass").is_empty(),
            "judged when the watermark passes"
        );
        k.flush(T0 + 61 * MIN);
        let a = k.alerts("break_glass");
        assert_eq!(
            (a.len(), a[0].severity, a[0].evidence_count),
            (1, Severity::High, 2)
        );
        // A second opening that covers the access, arriving late: no alert.
        let mut k = Kit::new();
        k.send(
            "custos.breakglass.opened",
            T0,
            opened("cardiac arrest", limit),
        );
        k.send(
            "custos.fhir.access",
            T0 + 61 * MIN,
            btg(Some("cardiac arrest")),
        );
        k.send(
            "custos.breakglass.opened",
            T0 + 50 * MIN,
            opened("again", None),
        );
        k.flush(T0 + 62 * MIN);
        assert!(k.alerts("break_glass").is_empty());
        // Default limit of 4 h without expires_at.
        let mut d = Kit::new();
        d.send("custos.breakglass.opened", T0, opened("stroke", None));
        d.send("custos.fhir.access", T0 + 239 * MIN, btg(Some("stroke")));
        d.flush(T0 + 240 * MIN);
        assert!(d.alerts("break_glass").is_empty());
        d.send("custos.fhir.access", T0 + 241 * MIN, btg(Some("stroke")));
        d.flush(T0 + 241 * MIN);
        assert_eq!(d.alerts("break_glass").len(), 1);
    }
}
