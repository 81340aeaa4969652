//! `credential_stuffing` and `privileged_without_mfa`.
//!
//! Stuffing: at least `user_threshold` `custos.auth.login_failed` of one user, or failures
//! of at least `ip_user_threshold` distinct users from one source IP, within `window_secs`
//! (Medium); a successful `custos.auth.login` of that user, or from that IP, during the
//! burst or within `window_secs` after it raises the alert to High.
//!
//! Privileged without MFA: a `custos.auth.login` whose event lists the authentication
//! methods used (`amr`), none of them in `second_factors`, by a privileged user: one of the
//! event's `roles` is in `privileged_roles`, or the client is in `privileged_clients`, or
//! the subject in `privileged_subjects`. A sign-in whose event does not say which methods
//! were used is not judged.

use custos_schemas::{EventType, Payload};
use serde::{Deserialize, Serialize};

use super::{ms, slot, Burst, BurstNews, Ctx};
use crate::alert::{Detector, Severity};
use crate::key::{self, KeyMap};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Failures {
    burst: Burst,
    last: i64,
}

/// State of `credential_stuffing` (`privileged_without_mfa` keeps none).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct SignIn {
    #[serde(with = "key::keymap_serde")]
    failures: KeyMap<Failures>,
    keep: i64,
}

impl SignIn {
    pub(crate) fn observe(&mut self, ctx: &mut Ctx<'_>) {
        let p = &ctx.tenant.p;
        match ctx.event.event_type {
            EventType::AuthLoginFailed if p.credential_stuffing.enabled => {
                let row = ctx.row;
                if !row.user_sub.is_empty() {
                    let n = p.credential_stuffing.user_threshold;
                    self.failed(ctx, "user", &row.user_sub, n);
                }
                if !row.source_ip.is_empty() {
                    let n = p.credential_stuffing.ip_user_threshold;
                    self.failed(ctx, "ip", &row.source_ip, n);
                }
            }
            EventType::AuthLogin => {
                if p.credential_stuffing.enabled {
                    let row = ctx.row;
                    self.succeeded(ctx, "user", &row.user_sub);
                    self.succeeded(ctx, "ip", &row.source_ip);
                }
                if p.privileged_without_mfa.enabled {
                    privileged(ctx);
                }
            }
            _ => {}
        }
    }

    fn failed(&mut self, ctx: &mut Ctx<'_>, by: &'static str, id: &str, threshold: u32) {
        let window = ms(ctx.tenant.p.credential_stuffing.window_secs);
        self.keep = self.keep.max(window.saturating_mul(2));
        let k = ctx.key(&["login", by, id]);
        let who = if by == "ip" {
            key::key(&[&ctx.row.user_sub])
        } else {
            ctx.ek
        };
        let (ek, t) = (ctx.ek, ctx.t);
        let Some(fs) = slot(&mut self.failures, k, ctx.dropped) else {
            return;
        };
        fs.last = fs.last.max(t);
        let (start, evidence) = match fs.burst.add(t, ek, who, threshold, window) {
            BurstNews::Quiet => return,
            BurstNews::Opened(s, ev) => (s, ev),
            BurstNews::Grew(s) => (s, vec![(ek, t)]),
        };
        let summary = if by == "ip" {
            format!("Failed sign-ins of at least {threshold} users from one address.")
        } else {
            format!("At least {threshold} failed sign-ins of one user.")
        };
        ctx.report(
            Detector::CredentialStuffing,
            Severity::Medium,
            format!("{by}:{id}@{start}"),
            evidence,
            summary,
        );
    }

    fn succeeded(&mut self, ctx: &mut Ctx<'_>, by: &'static str, id: &str) {
        if id.is_empty() {
            return;
        }
        let window = ms(ctx.tenant.p.credential_stuffing.window_secs);
        let k = ctx.key(&["login", by, id]);
        let Some(start) = self
            .failures
            .get(&k)
            .and_then(|f| f.burst.open_at(ctx.t, window))
        else {
            return;
        };
        let summary = format!(
            "A sign-in succeeded after a burst of failed sign-ins {}.",
            if by == "ip" {
                "from its address"
            } else {
                "of its user"
            }
        );
        ctx.report(
            Detector::CredentialStuffing,
            Severity::High,
            format!("{by}:{id}@{start}"),
            vec![(ctx.ek, ctx.t)],
            summary,
        );
    }

    pub(crate) fn prune(&mut self, now: i64) {
        let before = now.saturating_sub(self.keep);
        self.failures
            .retain(|_, f| !f.burst.prune(before) || f.last >= before);
    }

    pub(crate) fn tracked(&self, out: &mut Vec<(&'static str, usize)>) {
        out.push(("credential_stuffing.keys", self.failures.len()));
    }
}

fn privileged(ctx: &mut Ctx<'_>) {
    let Payload::Auth(d) = &ctx.event.payload else {
        return;
    };
    let p = &ctx.tenant.p.privileged_without_mfa;
    if d.amr.is_empty() || d.amr.iter().any(|m| p.second_factors.contains(m)) {
        return;
    }
    let row = ctx.row;
    let privileged = d.roles.iter().any(|r| p.privileged_roles.contains(r))
        || p.privileged_clients.contains(&row.client_id)
        || p.privileged_subjects.contains(&row.user_sub);
    if !privileged {
        return;
    }
    let day = ctx.t.div_euclid(24 * 3_600_000);
    let summary = format!(
        "A privileged user signed in with {} method(s) and no second factor.",
        d.amr.len()
    );
    ctx.report(
        Detector::PrivilegedWithoutMfa,
        Severity::High,
        format!("user:{}@day{day}", row.user_sub),
        vec![(ctx.ek, ctx.t)],
        summary,
    );
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::detectors::testkit::{Kit, MIN, T0};
    use crate::Severity;

    fn login(sub: &str, ip: &str) -> serde_json::Value {
        json!({"iss": "https://as", "sub": sub, "client_id": "portal", "sourceIp": ip})
    }

    #[test]
    fn failures_then_success_of_one_user() {
        let mut k = Kit::new();
        for i in 0..4 {
            k.send(
                "custos.auth.login_failed",
                T0 + i * MIN,
                login("u-1", "198.51.100.1"),
            );
        }
        k.send(
            "custos.auth.login",
            T0 + 5 * MIN,
            login("u-1", "198.51.100.1"),
        );
        assert!(
            k.alerts("credential_stuffing").is_empty(),
            "one under the threshold"
        );
        k.send(
            "custos.auth.login_failed",
            T0 + 6 * MIN,
            login("u-1", "198.51.100.1"),
        );
        assert_eq!(
            k.alerts("credential_stuffing")[0].severity,
            Severity::Medium
        );
        k.send(
            "custos.auth.login",
            T0 + 8 * MIN,
            login("u-1", "198.51.100.1"),
        );
        let a = k.alerts("credential_stuffing");
        assert_eq!(
            (a.len(), a[0].severity, a[0].evidence_count),
            (1, Severity::High, 6)
        );
    }

    #[test]
    fn many_users_from_one_address() {
        let mut k = Kit::new();
        for i in 0..9 {
            k.send(
                "custos.auth.login_failed",
                T0 + i * 1000,
                login(&format!("u-{i}"), "198.51.100.2"),
            );
        }
        assert!(k.alerts("credential_stuffing").is_empty(), "nine users");
        k.send(
            "custos.auth.login_failed",
            T0 + 10_000,
            login("u-0", "198.51.100.2"),
        );
        assert!(
            k.alerts("credential_stuffing").is_empty(),
            "a user counted once"
        );
        k.send(
            "custos.auth.login_failed",
            T0 + 11_000,
            login("u-9", "198.51.100.2"),
        );
        assert_eq!(k.alerts("credential_stuffing").len(), 1);
    }

    #[test]
    fn privileged_sign_in_without_second_factor() {
        let mut k = Kit::new();
        let with = |amr: &[&str], roles: &[&str]| {
            json!({"iss": "https://as", "sub": "admin-1", "client_id": "console",
                "sourceIp": "10.0.0.9", "amr": amr, "roles": roles})
        };
        k.send(
            "custos.auth.login",
            T0,
            with(&["pwd", "otp"], &["privacy_officer"]),
        );
        k.send("custos.auth.login", T0, with(&[], &["privacy_officer"]));
        k.send("custos.auth.login", T0, with(&["pwd"], &["nurse"]));
        assert!(k.alerts("privileged_without_mfa").is_empty());
        k.send(
            "custos.auth.login",
            T0 + MIN,
            with(&["pwd"], &["privacy_officer"]),
        );
        assert_eq!(
            k.alerts("privileged_without_mfa")[0].severity,
            Severity::High
        );
    }
}
