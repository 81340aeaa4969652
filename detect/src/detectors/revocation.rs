//! `use_after_revocation` and `use_after_expiry`: a permitted FHIR access with a token
//! after its `custos.token.revoked` (plus `grace_secs`), or after the `expires_at` of its
//! issuing row (plus `skew_secs`). A denied access is the system working: no alert.
//!
//! Order does not matter: the permitted accesses of a token are kept (the latest
//! [`ACCESSES`]) for `retention_secs`, so a revocation or an issuing row that arrives after
//! the access still finds it, and the revocation time is the earliest revocation seen.

use custos_schemas::EventType;
use serde::{Deserialize, Serialize};

use super::{insert_by_time, ms, slot, Ctx};
use crate::alert::{Detector, Severity};
use crate::key::{self, KeyMap};

/// Permitted accesses kept per token.
const ACCESSES: usize = 32;
/// Revocation rows kept per token (as evidence).
const REVOCATIONS: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Access {
    t: i64,
    ek: u128,
    /// Already reported as use after revocation / after expiry.
    revoked: bool,
    expired: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Token {
    /// Earliest revocation (ms), 0 when none.
    revoked_at: i64,
    revocations: Vec<(u128, i64)>,
    /// Expiry (ms) and the issuing row, when known.
    expires: Option<(i64, u128, i64)>,
    accesses: Vec<Access>,
    /// Keep until (ms).
    until: i64,
}

/// State of the two detectors.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Revocation {
    #[serde(with = "key::keymap_serde")]
    tokens: KeyMap<Token>,
}

impl Revocation {
    pub(crate) fn observe(&mut self, ctx: &mut Ctx<'_>) {
        let row = ctx.row;
        if row.token_jti.is_empty() {
            return;
        }
        let p = &ctx.tenant.p;
        let kind = match ctx.event.event_type {
            EventType::FhirAccess if row.decision == "permit" => Kind::Access,
            EventType::TokenRevoked if p.use_after_revocation.enabled => Kind::Revoked,
            EventType::TokenIssued | EventType::TokenRefreshed | EventType::AuthLogin
                if row.outcome == "success" && p.use_after_expiry.enabled =>
            {
                match row.expires_at {
                    Some(e) => Kind::Expires(e),
                    None => return,
                }
            }
            _ => return,
        };
        let retention = ms(p
            .use_after_revocation
            .retention_secs
            .max(p.use_after_expiry.retention_secs));
        let k = ctx.jti_key();
        let (ek, t) = (ctx.ek, ctx.t);
        let Some(tok) = slot(&mut self.tokens, k, ctx.dropped) else {
            return;
        };
        tok.until = tok.until.max(t.saturating_add(retention));
        match kind {
            Kind::Access => insert_by_time(
                &mut tok.accesses,
                Access {
                    t,
                    ek,
                    revoked: false,
                    expired: false,
                },
                ACCESSES,
                |a| a.t,
            ),
            Kind::Revoked => {
                tok.revoked_at = if tok.revoked_at == 0 {
                    t
                } else {
                    tok.revoked_at.min(t)
                };
                if tok.revocations.len() < REVOCATIONS {
                    tok.revocations.push((ek, t));
                }
            }
            Kind::Expires(e) => {
                let later = tok.expires.is_none_or(|(old, _, _)| e > old);
                if later {
                    tok.expires = Some((e, ek, t));
                }
            }
        }
        let tok = &mut *tok;
        if p.use_after_revocation.enabled && tok.revoked_at != 0 {
            let limit = tok
                .revoked_at
                .saturating_add(ms(p.use_after_revocation.grace_secs));
            let mut evidence = tok.revocations.clone();
            let mut n = 0;
            for a in tok
                .accesses
                .iter_mut()
                .filter(|a| !a.revoked && a.t > limit)
            {
                a.revoked = true;
                evidence.push((a.ek, a.t));
                n += 1;
            }
            if n > 0 {
                let dedup = format!("jti:{}", row.token_jti);
                let summary =
                    "A revoked access token was still accepted for FHIR accesses.".to_owned();
                let f = ctx.report(
                    Detector::UseAfterRevocation,
                    Severity::High,
                    dedup,
                    evidence,
                    summary,
                );
                f.token_theft = true;
            }
        }
        if let Some((e, issuing, issued_t)) = tok.expires.filter(|_| p.use_after_expiry.enabled) {
            let limit = e.saturating_add(ms(p.use_after_expiry.skew_secs));
            let mut evidence = vec![(issuing, issued_t)];
            for a in tok
                .accesses
                .iter_mut()
                .filter(|a| !a.expired && a.t > limit)
            {
                a.expired = true;
                evidence.push((a.ek, a.t));
            }
            if evidence.len() > 1 {
                let dedup = format!("jti:{}", row.token_jti);
                let summary =
                    "An expired access token was still accepted for FHIR accesses.".to_owned();
                ctx.report(
                    Detector::UseAfterExpiry,
                    Severity::Medium,
                    dedup,
                    evidence,
                    summary,
                );
            }
        }
    }

    pub(crate) fn prune(&mut self, now: i64) {
        self.tokens.retain(|_, tok| tok.until >= now);
    }

    pub(crate) fn tracked(&self, out: &mut Vec<(&'static str, usize)>) {
        out.push(("use_after_revocation.tokens", self.tokens.len()));
    }
}

enum Kind {
    Access,
    Revoked,
    Expires(i64),
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::detectors::testkit::{access, Kit, MIN, T0};
    use crate::Severity;

    fn revoked(jti: &str) -> serde_json::Value {
        json!({"iss": "https://as", "sub": "dr-1", "fhirUser": "Practitioner/pr-1",
            "client_id": "ehr-app", "jti": jti, "tokenType": "access", "reason": "logout"})
    }

    fn issued(jti: &str, expires_ms: i64) -> serde_json::Value {
        let exp = chrono::DateTime::from_timestamp_millis(expires_ms).expect("time");
        json!({"iss": "https://as", "sub": "dr-1", "fhirUser": "Practitioner/pr-1",
            "client_id": "ehr-app", "jti": jti, "tokenType": "access", "expiresAt": exp.to_rfc3339(),
            "sourceIp": "10.1.1.5"})
    }

    #[test]
    fn permitted_after_revocation_alerts_in_either_order() {
        let mut k = Kit::new();
        k.send("custos.token.revoked", T0, revoked("J1"));
        k.send(
            "custos.fhir.access",
            T0 + 5 * MIN,
            access("J1", "10.1.1.5", "Observation", "permit"),
        );
        let a = k.alerts("use_after_revocation");
        assert_eq!(
            (a.len(), a[0].severity, a[0].evidence_count),
            (1, Severity::High, 2)
        );

        let mut late = Kit::new();
        late.send(
            "custos.fhir.access",
            T0 + 5 * MIN,
            access("J1", "10.1.1.5", "Observation", "permit"),
        );
        assert!(late.alerts("use_after_revocation").is_empty());
        late.send("custos.token.revoked", T0, revoked("J1"));
        let b = late.alerts("use_after_revocation");
        assert_eq!(b.len(), 1, "the revocation arrived after the access");
        assert_eq!(b[0].alert_id, a[0].alert_id);
        assert_eq!(b[0].evidence_count, 2);
    }

    #[test]
    fn denied_or_within_grace_is_quiet() {
        let mut k = Kit::new();
        k.send("custos.token.revoked", T0, revoked("J2"));
        k.send(
            "custos.fhir.access",
            T0 + 5 * MIN,
            access("J2", "10.1.1.5", "Observation", "deny"),
        );
        k.send(
            "custos.fhir.access",
            T0 + 20_000,
            access("J2", "10.1.1.5", "Observation", "permit"),
        );
        k.send(
            "custos.fhir.access",
            T0 - MIN,
            access("J2", "10.1.1.5", "Observation", "permit"),
        );
        assert!(k.alerts("use_after_revocation").is_empty());
    }

    #[test]
    fn permitted_after_expiry_plus_skew() {
        let mut k = Kit::new();
        k.send("custos.token.issued", T0, issued("J3", T0 + 10 * MIN));
        k.send(
            "custos.fhir.access",
            T0 + 10 * MIN + 50_000,
            access("J3", "10.1.1.5", "Observation", "permit"),
        );
        assert!(k.alerts("use_after_expiry").is_empty(), "within the skew");
        k.send(
            "custos.fhir.access",
            T0 + 12 * MIN,
            access("J3", "10.1.1.5", "Observation", "deny"),
        );
        assert!(k.alerts("use_after_expiry").is_empty(), "denied");
        k.send(
            "custos.fhir.access",
            T0 + 12 * MIN,
            access("J3", "10.1.1.5", "Observation", "permit"),
        );
        let a = k.alerts("use_after_expiry");
        assert_eq!(
            (a.len(), a[0].severity, a[0].evidence_count),
            (1, Severity::Medium, 2)
        );
    }
}
