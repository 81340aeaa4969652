//! `scope_escalation` and `repeated_denials`.
//!
//! Escalation: a FHIR access whose resource type and interaction no granted SMART scope of
//! the row covers. Scopes read: `patient/`, `user/` and `system/` resource scopes, v1
//! permissions (`read`, `write`, `*`) and v2 (`c`, `r`, `u`, `d`, `s` in any subset, with
//! an optional `?query` restriction that is not checked), type `*` for every type. Rows
//! without any resource scope (an AuditEvent source that records none) are not judged,
//! nor interactions no resource scope governs (`capabilities`, `transaction`, `batch`,
//! `operation`). Permitted → High, denied → Medium.
//!
//! Denials: at least `user_threshold` denied accesses by one user, or `client_threshold` by
//! one client, within `window_secs`.

use serde::{Deserialize, Serialize};

use super::{ms, slot, Burst, BurstNews, Ctx};
use crate::alert::{Detector, Severity};
use crate::key::{self, KeyMap};

/// The permission an interaction needs: `r`, `s`, `c`, `u` or `d`.
fn needed(interaction: &str) -> Option<u8> {
    Some(match interaction {
        "read" | "vread" | "history-instance" => b'r',
        "search" | "search-type" | "search-system" | "search-compartment" | "history-type"
        | "history-system" | "history" => b's',
        "create" => b'c',
        "update" | "patch" => b'u',
        "delete" => b'd',
        _ => return None,
    })
}

/// Whether `scope` is a SMART resource scope (`patient/`, `user/`, `system/`).
fn is_resource_scope(scope: &str) -> bool {
    scope.starts_with("patient/") || scope.starts_with("user/") || scope.starts_with("system/")
}

/// Whether one resource scope (see [`is_resource_scope`]) grants `perm` on `rtype`.
pub(crate) fn covers(scope: &str, rtype: &str, perm: u8) -> bool {
    let Some((_, rest)) = scope.split_once('/') else {
        return false;
    };
    let rest = rest.split('?').next().unwrap_or(rest);
    let Some((ty, perms)) = rest.rsplit_once('.') else {
        return false;
    };
    if ty != "*" && ty != rtype {
        return false;
    }
    match perms {
        "*" => true,
        "read" => perm == b'r' || perm == b's',
        "write" => matches!(perm, b'c' | b'u' | b'd'),
        v2 if !v2.is_empty() && v2.bytes().all(|b| b"cruds".contains(&b)) => {
            v2.as_bytes().contains(&perm)
        }
        _ => false,
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Denials {
    burst: Burst,
    last: i64,
}

/// State of `repeated_denials` (`scope_escalation` keeps none).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Scope {
    #[serde(with = "key::keymap_serde")]
    denials: KeyMap<Denials>,
    keep: i64,
}

impl Scope {
    pub(crate) fn observe(&mut self, ctx: &mut Ctx<'_>) {
        if !ctx.is_access() {
            return;
        }
        let p = &ctx.tenant.p;
        let denied = ctx.row.decision == "deny";
        if p.scope_escalation.enabled {
            escalation(ctx, denied);
        }
        if denied && p.repeated_denials.enabled {
            let d = &p.repeated_denials;
            let (user_n, client_n) = (d.user_threshold, d.client_threshold);
            if !ctx.row.user_sub.is_empty() {
                self.denial(ctx, "user", user_n);
            }
            if !ctx.row.client_id.is_empty() {
                self.denial(ctx, "client", client_n);
            }
        }
    }

    fn denial(&mut self, ctx: &mut Ctx<'_>, by: &'static str, threshold: u32) {
        let d = &ctx.tenant.p.repeated_denials;
        let window = ms(d.window_secs);
        self.keep = self.keep.max(window);
        let who = if by == "user" {
            &ctx.row.user_sub
        } else {
            &ctx.row.client_id
        };
        let k = ctx.key(&["denials", by, who]);
        let (ek, t) = (ctx.ek, ctx.t);
        let Some(ds) = slot(&mut self.denials, k, ctx.dropped) else {
            return;
        };
        ds.last = ds.last.max(t);
        let (start, evidence) = match ds.burst.add(t, ek, ek, threshold, window) {
            BurstNews::Quiet => return,
            BurstNews::Opened(s, ev) => (s, ev),
            BurstNews::Grew(s) => (s, vec![(ek, t)]),
        };
        let dedup = format!("{by}:{who}@{start}");
        let summary = format!(
            "At least {threshold} denied FHIR accesses by one {by} within {} s.",
            d.window_secs
        );
        ctx.report(
            Detector::RepeatedDenials,
            Severity::Medium,
            dedup,
            evidence,
            summary,
        );
    }

    pub(crate) fn prune(&mut self, now: i64) {
        let before = now.saturating_sub(self.keep);
        self.denials
            .retain(|_, d| !d.burst.prune(before) || d.last >= before);
    }

    pub(crate) fn tracked(&self, out: &mut Vec<(&'static str, usize)>) {
        out.push(("repeated_denials.keys", self.denials.len()));
    }
}

fn escalation(ctx: &mut Ctx<'_>, denied: bool) {
    let row = ctx.row;
    let Some(perm) = needed(&row.interaction) else {
        return;
    };
    let mut any = false;
    for s in &row.scopes {
        if is_resource_scope(s) {
            if covers(s, &row.resource_type, perm) {
                return;
            }
            any = true;
        }
    }
    if !any {
        return;
    }
    let (severity, verdict) = if denied {
        (Severity::Medium, "denied")
    } else {
        (Severity::High, "permitted")
    };
    let dedup = if row.token_jti.is_empty() {
        format!("request:{}", ctx.event_key())
    } else {
        format!("jti:{}", row.token_jti)
    };
    let summary = format!(
        "A {} {} on {} outside the token's granted scopes was {verdict}.",
        row.interaction,
        if row.interaction.starts_with('s') {
            "request"
        } else {
            "interaction"
        },
        row.resource_type
    );
    ctx.report(
        Detector::ScopeEscalation,
        severity,
        dedup,
        vec![(ctx.ek, ctx.t)],
        summary,
    );
}

#[cfg(test)]
mod tests {
    use super::covers;
    use crate::detectors::testkit::{access, Kit, MIN, T0};
    use crate::Severity;

    #[test]
    fn smart_scope_grammar() {
        assert!(covers("user/Observation.rs", "Observation", b'r'));
        assert!(covers("user/Observation.rs", "Observation", b's'));
        assert!(!covers("user/Observation.rs", "Observation", b'u'));
        assert!(covers("patient/*.read", "Condition", b's'));
        assert!(!covers("patient/*.read", "Condition", b'c'));
        assert!(covers("system/Patient.write", "Patient", b'u'));
        assert!(covers("system/*.*", "Group", b'd'));
        assert!(covers(
            "patient/Observation.rs?category=laboratory",
            "Observation",
            b'r'
        ));
        assert!(covers("user/Observation.cruds", "Observation", b'd'));
        assert!(!covers("launch", "Observation", b'r'));
        assert!(!super::is_resource_scope("launch/patient"));
        assert!(!covers("user/Patient.rs", "Observation", b'r'));
        assert!(!covers("user/Observation.xyz", "Observation", b'r'));
    }

    #[test]
    fn outside_the_scopes_permitted_is_high_denied_medium_inside_quiet() {
        let mut k = Kit::new();
        k.send(
            "custos.fhir.access",
            T0,
            access("J1", "10.1.1.5", "Observation", "permit"),
        );
        assert!(k.alerts("scope_escalation").is_empty(), "inside the scopes");
        k.send(
            "custos.fhir.access",
            T0,
            access("J1", "10.1.1.5", "AllergyIntolerance", "deny"),
        );
        assert_eq!(k.alerts("scope_escalation")[0].severity, Severity::Medium);
        k.send(
            "custos.fhir.access",
            T0 + 1,
            access("J1", "10.1.1.5", "AllergyIntolerance", "permit"),
        );
        let a = k.alerts("scope_escalation");
        assert_eq!((a.len(), a[0].severity), (1, Severity::High));
    }

    #[test]
    fn denials_burst_per_user_at_the_threshold() {
        let mut k = Kit::new();
        for i in 0..4 {
            k.send(
                "custos.fhir.access",
                T0 + i * MIN,
                access("J2", "10.1.1.5", "Observation", "deny"),
            );
        }
        assert!(
            k.alerts("repeated_denials").is_empty(),
            "one under the threshold"
        );
        k.send(
            "custos.fhir.access",
            T0 + 4 * MIN,
            access("J2", "10.1.1.5", "Observation", "deny"),
        );
        let a = k.alerts("repeated_denials");
        assert_eq!(a.len(), 1);
        assert!(a[0].dedup_key.starts_with("user:dr-1@"));
        assert_eq!(a[0].evidence_count, 5);
    }
}
