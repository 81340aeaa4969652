//! `refresh_reuse` and `refresh_failure_burst`.
//!
//! Reuse: a failed `custos.token.refreshed` whose error or reason says reuse (Keycloak's
//! "Maximum allowed refresh token reuse exceeded" becomes the reason `refresh token reuse`);
//! `invalid_grant` on a refresh-type token of a session that refreshed successfully before
//! (its refresh token was rotated, so the one presented is an old one); or one refresh-token
//! id refreshed successfully by two different events. `invalid_grant` alone is not reuse:
//! expired and revoked refresh tokens get it too (they count towards the burst). Burst: at least `threshold` failed refreshes of one
//! client and subject within `window_secs`.

use custos_schemas::EventType;
use serde::{Deserialize, Serialize};

use super::{ms, slot, Burst, BurstNews, Ctx};
use crate::alert::{Detector, Severity};
use crate::key::{self, KeyMap};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Rotated {
    ek: u128,
    t: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Failures {
    burst: Burst,
    last: i64,
}

/// State of the refresh detectors.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Refresh {
    /// Refresh-token ids refreshed successfully.
    #[serde(with = "key::keymap_serde")]
    rotated: KeyMap<Rotated>,
    /// Sessions that refreshed successfully (rotated their refresh token), first time.
    #[serde(default, with = "key::keymap_serde")]
    sessions: KeyMap<Rotated>,
    /// Failed refreshes per client and subject.
    #[serde(with = "key::keymap_serde")]
    failures: KeyMap<Failures>,
    /// Longest retention asked by any tenant (ms), for pruning.
    keep: i64,
}

fn says_reuse(s: &str) -> bool {
    s.as_bytes()
        .windows(5)
        .any(|w| w.eq_ignore_ascii_case(b"reuse"))
}

impl Refresh {
    pub(crate) fn observe(&mut self, ctx: &mut Ctx<'_>) {
        if ctx.event.event_type != EventType::TokenRefreshed {
            return;
        }
        let row = ctx.row;
        let p = &ctx.tenant.p;
        if row.outcome == "failure" {
            let after_rotation = || {
                row.token_type == "refresh"
                    && row.error == "invalid_grant"
                    && !row.session_id.is_empty()
                    && self
                        .sessions
                        .get(&ctx.key(&["session", &row.session_id]))
                        .is_some_and(|r| r.t <= ctx.t)
            };
            let reuse = says_reuse(&row.reason) || says_reuse(&row.error) || after_rotation();
            if reuse && p.refresh_reuse.enabled {
                let dedup = format!("refresh:{}", row.token_jti);
                let f = ctx.report(
                    Detector::RefreshReuse,
                    Severity::High,
                    dedup,
                    vec![(ctx.ek, ctx.t)],
                    "A refresh token was presented again after rotation.".to_owned(),
                );
                f.token_theft = true;
            }
            if p.refresh_failure_burst.enabled {
                self.failure(ctx);
            }
        } else if p.refresh_reuse.enabled && !self.note_session(ctx) {
            // nothing more to learn from a success without a refresh-token id
        } else if row.token_type == "refresh"
            && !row.token_jti.is_empty()
            && p.refresh_reuse.enabled
        {
            self.keep = self.keep.max(ms(p.refresh_reuse.remember_secs));
            let k = ctx.key(&["refresh", &row.token_jti]);
            let (ek, t) = (ctx.ek, ctx.t);
            let Some(r) = slot(&mut self.rotated, k, ctx.dropped) else {
                return;
            };
            if r.ek == 0 {
                *r = Rotated { ek, t };
            } else if r.ek != ek {
                let first = (r.ek, r.t);
                r.t = r.t.max(t);
                let dedup = format!("refresh:{}", row.token_jti);
                let f = ctx.report(
                    Detector::RefreshReuse,
                    Severity::High,
                    dedup,
                    vec![first, (ek, t)],
                    "One refresh token was refreshed twice.".to_owned(),
                );
                f.token_theft = true;
            }
        }
    }

    /// Remembers the session of a successful refresh (its earliest one); false when the
    /// event carries no refresh-token id to check for double use.
    fn note_session(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let row = ctx.row;
        if !row.session_id.is_empty() {
            self.keep = self.keep.max(ms(ctx.tenant.p.refresh_reuse.remember_secs));
            let k = ctx.key(&["session", &row.session_id]);
            let (ek, t) = (ctx.ek, ctx.t);
            if let Some(r) = slot(&mut self.sessions, k, ctx.dropped) {
                if r.ek == 0 || t < r.t {
                    *r = Rotated { ek, t };
                }
            }
        }
        row.token_type == "refresh" && !row.token_jti.is_empty()
    }

    fn failure(&mut self, ctx: &mut Ctx<'_>) {
        let p = &ctx.tenant.p.refresh_failure_burst;
        let window = ms(p.window_secs);
        self.keep = self.keep.max(window);
        let row = ctx.row;
        let k = ctx.key(&["client", &row.client_id, &row.user_sub]);
        let (ek, t) = (ctx.ek, ctx.t);
        let Some(fs) = slot(&mut self.failures, k, ctx.dropped) else {
            return;
        };
        fs.last = fs.last.max(t);
        let (start, evidence) = match fs.burst.add(t, ek, ek, p.threshold, window) {
            BurstNews::Quiet => return,
            BurstNews::Opened(start, evidence) => (start, evidence),
            BurstNews::Grew(start) => (start, vec![(ek, t)]),
        };
        let dedup = format!("client:{}:subject:{}@{start}", row.client_id, row.user_sub);
        let summary = format!(
            "At least {} failed refreshes of one client and subject within {} s.",
            p.threshold, p.window_secs
        );
        ctx.report(
            Detector::RefreshFailureBurst,
            Severity::Medium,
            dedup,
            evidence,
            summary,
        );
    }

    pub(crate) fn prune(&mut self, now: i64) {
        let before = now.saturating_sub(self.keep);
        self.rotated.retain(|_, r| r.t >= before);
        self.sessions.retain(|_, r| r.t >= before);
        self.failures
            .retain(|_, f| !f.burst.prune(before) || f.last >= before);
    }

    pub(crate) fn tracked(&self, out: &mut Vec<(&'static str, usize)>) {
        out.push(("refresh_reuse.rotated", self.rotated.len()));
        out.push(("refresh_reuse.sessions", self.sessions.len()));
        out.push(("refresh_failure_burst.keys", self.failures.len()));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::detectors::testkit::{Kit, MIN, T0};
    use crate::Severity;

    fn refresh(jti: &str, token_type: &str, error: Option<&str>) -> serde_json::Value {
        let mut v = json!({"iss": "https://as", "sub": "sub-1", "fhirUser": "Patient/p-1",
            "client_id": "app", "jti": jti, "tokenType": token_type, "sourceIp": "203.0.113.9"});
        if let Some(e) = error {
            v["error"] = json!(e);
        }
        v
    }

    #[test]
    fn invalid_grant_after_the_session_rotated_is_reuse() {
        let mut k = Kit::new();
        let mut rotated = refresh("at-2", "access", None);
        rotated["sid"] = json!("ses-1");
        k.send("custos.token.refreshed", T0, rotated);
        let mut old = refresh("rt-1", "refresh", Some("invalid_grant"));
        old["sid"] = json!("ses-1");
        k.send("custos.token.refreshed", T0 + MIN, old);
        let a = k.alerts("refresh_reuse");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].severity, Severity::High);
        assert!(a[0].token_theft);
    }

    #[test]
    fn invalid_grant_without_a_rotation_is_not_reuse() {
        let mut k = Kit::new();
        let mut expired = refresh("rt-1", "refresh", Some("invalid_grant"));
        expired["sid"] = json!("ses-2");
        expired["reason"] = json!("refresh token expired");
        k.send("custos.token.refreshed", T0, expired.clone());
        let mut other = refresh("at-9", "access", None);
        other["sid"] = json!("ses-3");
        k.send("custos.token.refreshed", T0 + MIN, other);
        assert!(k.alerts("refresh_reuse").is_empty());
    }

    #[test]
    fn other_refresh_errors_are_not_reuse_and_burst_at_the_threshold() {
        let mut k = Kit::new();
        for i in 0..4 {
            k.send(
                "custos.token.refreshed",
                T0 + i * MIN,
                refresh("rt-2", "refresh", Some("invalid_token")),
            );
        }
        assert!(k.alerts("refresh_reuse").is_empty());
        assert!(
            k.alerts("refresh_failure_burst").is_empty(),
            "one under the threshold"
        );
        k.send(
            "custos.token.refreshed",
            T0 + 4 * MIN,
            refresh("rt-2", "refresh", Some("invalid_token")),
        );
        let a = k.alerts("refresh_failure_burst");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].evidence_count, 5);
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_burst() {
        let mut k = Kit::new();
        for i in 0..6 {
            k.send(
                "custos.token.refreshed",
                T0 + i * 3 * MIN,
                refresh("rt-3", "refresh", Some("invalid_token")),
            );
        }
        assert!(k.alerts("refresh_failure_burst").is_empty());
    }

    #[test]
    fn one_refresh_token_refreshed_twice() {
        let mut k = Kit::new();
        k.send(
            "custos.token.refreshed",
            T0,
            refresh("rt-4", "refresh", None),
        );
        assert!(k.alerts("refresh_reuse").is_empty());
        k.send(
            "custos.token.refreshed",
            T0 + MIN,
            refresh("rt-4", "refresh", None),
        );
        assert_eq!(k.alerts("refresh_reuse")[0].evidence_count, 2);
    }
}
