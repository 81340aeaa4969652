//! `volume` and `bulk_read`.
//!
//! Volume: per user (not services: a subject equal to its client, a `Device` fhirUser, or
//! `user_kind` `service`), the distinct patients of their permitted accesses per clock hour of event
//! time. An hour over `factor` × the user's baseline (Medium) or over `hourly_ceiling`
//! (High) raises the alert; the baseline is the user's mean distinct patients per active
//! hour over the last `baseline_days` days, never below `baseline_floor`. Closed hours are
//! folded into per-day aggregates (active hours, sum) when the watermark passes them, so a
//! user's history costs one small record per active day.
//!
//! Bulk read: a permitted search returning more than `max_returned_ids` ids, or a bulk
//! `$export` operation, by a user-facing client (`user_kind` workforce or patient, and not a
//! service as above).

use serde::{Deserialize, Serialize};

use super::{slot, Ctx};
use crate::alert::{Detector, Severity};
use crate::key::{self, KeyMap};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// Open hours kept per user (the current one and late rows of the two before).
const OPEN_HOURS: usize = 3;
/// Distinct patients remembered per user and hour (more are still counted as evidence).
const PATIENTS_PER_HOUR: usize = 10_000;
/// Days of aggregates kept per user, whatever the tenant asks.
const MAX_DAYS: usize = 92;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Hour {
    start: i64,
    #[serde(with = "key::keymap_serde")]
    patients: KeyMap<()>,
    /// Severity already reported for this hour.
    alerted: Option<Severity>,
    /// First access to each patient (evidence until the alert opens).
    firsts: Vec<(u128, i64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Day {
    day: i64,
    hours: u32,
    sum: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct User {
    hours: Vec<Hour>,
    days: Vec<Day>,
    last: i64,
}

impl User {
    fn fold(&mut self, now: i64) {
        let mut i = 0;
        while i < self.hours.len() {
            if self.hours[i].start + HOUR <= now {
                let h = self.hours.remove(i);
                let day = h.start.div_euclid(DAY);
                let n = h.patients.len() as u64;
                match self.days.iter_mut().find(|d| d.day == day) {
                    Some(d) => {
                        d.hours += 1;
                        d.sum += n;
                    }
                    None => {
                        self.days.push(Day {
                            day,
                            hours: 1,
                            sum: n,
                        });
                        self.days.sort_by_key(|d| d.day);
                        if self.days.len() > MAX_DAYS {
                            self.days.remove(0);
                        }
                    }
                }
            } else {
                i += 1;
            }
        }
    }

    fn baseline(&self, today: i64, days: u32, floor: u32) -> f64 {
        let from = today - i64::from(days);
        let (hours, sum) = self
            .days
            .iter()
            .filter(|d| d.day >= from && d.day < today)
            .fold((0u64, 0u64), |(h, s), d| {
                (h + u64::from(d.hours), s + d.sum)
            });
        let mean = if hours == 0 {
            0.0
        } else {
            sum as f64 / hours as f64
        };
        mean.max(f64::from(floor))
    }
}

/// State of the two detectors.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct VolumeState {
    #[serde(with = "key::keymap_serde")]
    users: KeyMap<User>,
    watermark: i64,
    folded_hour: i64,
    keep_days: i64,
}

impl VolumeState {
    pub(crate) fn observe(&mut self, ctx: &mut Ctx<'_>) {
        if !ctx.permitted_access() {
            return;
        }
        let p = &ctx.tenant.p;
        if p.bulk_read.enabled {
            bulk(ctx);
        }
        let row = ctx.row;
        if !p.volume.enabled || row.patient.is_empty() || row.user_sub.is_empty() || is_service(row)
        {
            return;
        }
        let v = &p.volume;
        self.keep_days = self.keep_days.max(i64::from(v.baseline_days));
        let start = ctx.t - ctx.t.rem_euclid(HOUR);
        if start + HOUR * OPEN_HOURS as i64 <= self.watermark {
            return; // too late for an hour already folded
        }
        let k = ctx.key(&["volume", &row.user_sub]);
        let pk = key::key(&[&row.patient]);
        let (ek, t) = (ctx.ek, ctx.t);
        let Some(user) = slot(&mut self.users, k, ctx.dropped) else {
            return;
        };
        user.last = user.last.max(t);
        let idx = match user.hours.iter().position(|h| h.start == start) {
            Some(i) => i,
            None => {
                user.hours.push(Hour {
                    start,
                    ..Hour::default()
                });
                user.hours.sort_by_key(|h| h.start);
                if user.hours.len() > OPEN_HOURS {
                    user.fold(user.hours[user.hours.len() - OPEN_HOURS].start);
                }
                user.hours
                    .iter()
                    .position(|h| h.start == start)
                    .unwrap_or(0)
            }
        };
        let baseline = user.baseline(start.div_euclid(DAY), v.baseline_days, v.baseline_floor);
        let Some(hour) = user.hours.get_mut(idx) else {
            return;
        };
        if hour.patients.contains_key(&pk) {
            return;
        }
        if hour.patients.len() < PATIENTS_PER_HOUR {
            hour.patients.insert(pk, ());
        }
        let n = hour.patients.len();
        let threshold = v.factor * baseline;
        let level = if n > v.hourly_ceiling as usize {
            Some(Severity::High)
        } else if n as f64 > threshold {
            Some(Severity::Medium)
        } else {
            None
        };
        let Some(level) = level.or(hour.alerted) else {
            if hour.firsts.len() < PATIENTS_PER_HOUR {
                hour.firsts.push((ek, t));
            }
            return;
        };
        let evidence = if hour.alerted.is_none() {
            let mut all = std::mem::take(&mut hour.firsts);
            all.push((ek, t));
            all
        } else {
            vec![(ek, t)]
        };
        hour.alerted = Some(hour.alerted.map_or(level, |a| a.max(level)));
        let dedup = format!("user:{}@{start}", row.user_sub);
        let summary = format!(
            "A user accessed {n} distinct patients in one hour (baseline {baseline:.1}, ceiling {}).",
            v.hourly_ceiling
        );
        ctx.report(Detector::Volume, level, dedup, evidence, summary);
    }

    /// Folds closed hours (once per new hour of watermark) and forgets idle users.
    pub(crate) fn advance(&mut self, now: i64) {
        self.watermark = self.watermark.max(now);
        let hour = now.div_euclid(HOUR);
        if hour == self.folded_hour {
            return;
        }
        self.folded_hour = hour;
        let keep = (self.keep_days.max(1) + 1) * DAY;
        self.users.retain(|_, u| {
            u.fold(now);
            if let Some(from) = now.div_euclid(DAY).checked_sub(keep / DAY) {
                u.days.retain(|d| d.day >= from);
            }
            !(u.hours.is_empty() && u.days.is_empty()) && u.last + keep >= now
        });
    }

    pub(crate) fn tracked(&self, out: &mut Vec<(&'static str, usize)>) {
        out.push(("volume.users", self.users.len()));
    }
}

/// A service rather than a person: `user_kind` service, a subject equal to its client (a
/// client-credentials token) or a SMART `fhirUser` that is a `Device` (which the audit row
/// files as workforce).
fn is_service(row: &custos_schemas::row::AuditRow) -> bool {
    row.user_kind == "service"
        || row.user_sub == row.client_id
        || row.fhir_user.starts_with("Device/")
}

fn bulk(ctx: &mut Ctx<'_>) {
    let row = ctx.row;
    if !matches!(row.user_kind.as_str(), "workforce" | "patient") || is_service(row) {
        return;
    }
    let k = ctx.tenant.p.bulk_read.max_returned_ids as usize;
    let export = row.interaction == "operation"
        && (row.resource_id.contains("export") || row.request_id.contains("$export"));
    if row.returned_ids.len() <= k && !export {
        return;
    }
    let hour = ctx.t - ctx.t.rem_euclid(HOUR);
    let dedup = format!("user:{}@{hour}", row.user_sub);
    let summary = if export {
        "A user-facing client ran a bulk export.".to_owned()
    } else {
        format!(
            "A user-facing client's search returned {} resources (limit {k}).",
            row.returned_ids.len()
        )
    };
    ctx.report(
        Detector::BulkRead,
        Severity::Medium,
        dedup,
        vec![(ctx.ek, ctx.t)],
        summary,
    );
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::detectors::testkit::{Kit, MIN, T0};
    use crate::{ParamSet, Severity};

    fn read(patient: usize, t_ms: i64, returned: usize) -> (i64, serde_json::Value) {
        let ids: Vec<String> = (0..returned).map(|i| format!("Observation/o{i}")).collect();
        (
            t_ms,
            json!({"requestId": "q", "iss": "https://as", "sub": "dr-2", "fhirUser": "Practitioner/pr-2",
            "client_id": "ehr-app", "jti": "J", "scope": "user/*.rs", "interaction": "search-type",
            "resourceType": "Observation", "patient": format!("Patient/p-{patient}"),
            "decision": "permit", "httpStatus": 200, "sourceIp": "10.1.1.1", "returnedIds": ids}),
        )
    }

    #[test]
    fn ceiling_and_factor() {
        let params = ParamSet::from_json(
            r#"{"default": {"volume": {"hourly_ceiling": 40, "baseline_floor": 5, "factor": 3}}}"#,
        )
        .expect("params");
        let mut k = Kit::with(params);
        for i in 0..15 {
            let (t, v) = read(i, T0 + i as i64 * 1000, 1);
            k.send("custos.fhir.access", t, v);
        }
        assert!(
            k.alerts("volume").is_empty(),
            "15 = factor × floor: not over"
        );
        let (t, v) = read(3, T0 + 20_000, 1);
        k.send("custos.fhir.access", t, v);
        assert!(k.alerts("volume").is_empty(), "a patient seen before");
        let (t, v) = read(15, T0 + 21_000, 1);
        k.send("custos.fhir.access", t, v);
        let a = k.alerts("volume");
        assert_eq!((a[0].severity, a[0].evidence_count), (Severity::Medium, 16));
        for i in 16..41 {
            let (t, v) = read(i, T0 + 30_000 + i as i64, 1);
            k.send("custos.fhir.access", t, v);
        }
        let a = k.alerts("volume");
        assert_eq!(
            (a.len(), a[0].severity, a[0].evidence_count),
            (1, Severity::High, 41)
        );
    }

    #[test]
    fn a_busy_baseline_raises_the_bar() {
        let params = ParamSet::from_json(r#"{"default": {"volume": {"baseline_floor": 2}}}"#)
            .expect("params");
        let mut k = Kit::with(params);
        // Yesterday: 20 distinct patients in each of two hours.
        for h in 0..2 {
            for i in 0..20 {
                let (t, v) = read(i, T0 - 24 * 60 * MIN + h * 60 * MIN + i as i64, 1);
                k.send("custos.fhir.access", t, v);
            }
        }
        k.updates.clear();
        k.engine.advance(T0 - 60 * MIN);
        let before = k.alerts("volume").len();
        for i in 0..50 {
            let (t, v) = read(100 + i, T0 + i as i64, 1);
            k.send("custos.fhir.access", t, v);
        }
        assert_eq!(k.alerts("volume").len(), before, "50 ≤ 3 × 20");
    }

    #[test]
    fn bulk_searches_over_the_limit() {
        let mut k = Kit::new();
        let (t, v) = read(1, T0, 50);
        k.send("custos.fhir.access", t, v);
        assert!(k.alerts("bulk_read").is_empty(), "at the limit");
        let (t, v) = read(1, T0 + MIN, 51);
        k.send("custos.fhir.access", t, v);
        assert_eq!(k.alerts("bulk_read").len(), 1);
    }
}
