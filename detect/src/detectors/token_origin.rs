//! `token_multi_origin`: one access token (`jti`) used from two or more origins, or from
//! many user agents, within its lifetime.
//!
//! Observations: FHIR accesses carrying the `jti` (permitted or denied), and the AS rows of
//! the token's issuance (`custos.token.issued`, a successful `custos.token.refreshed`, a
//! `custos.auth.login` that issued it). Introspections and revocations are left out: their
//! address is the resource server's or an administrator's, not the token holder's.
//!
//! A pseudonymized address (a patient's, or any address of a row whose user kind is
//! unknown, such as a Keycloak event without `fhirUser`) is compared with pseudonyms only,
//! never with a readable address: the same address can be both.
//!
//! Severity is decided from the whole set of observations, so it does not depend on
//! arrival order: High when two origins interleave in event time (A, B, A: their
//! first-to-last intervals overlap) or when a workforce token is seen outside the tenant's
//! trusted networks; Medium for a single switch or many user agents.

use custos_schemas::EventType;
use serde::{Deserialize, Serialize};

use super::{ms, slot, Ctx};
use crate::alert::{Detector, Severity};
use crate::key::{self, KeyMap};
use crate::net::Origin;

/// Origins kept per token.
const ORIGINS: usize = 8;
/// User agents kept per token.
const AGENTS: usize = 8;
/// Observations (event keys) kept per token; more are counted.
const OBSERVATIONS: usize = 64;
/// How long after its lifetime a token's state is kept for late rows (ms).
const AFTERLIFE_MS: i64 = 3_600_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Seen {
    origin: Origin,
    first: i64,
    last: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Token {
    /// Known expiry (ms), 0 when none yet.
    expires: i64,
    /// Earliest observation (ms).
    first: i64,
    origins: Vec<Seen>,
    agents: Vec<u128>,
    observations: Vec<(u128, i64)>,
    count: u32,
    /// A workforce row came from outside the trusted networks.
    untrusted: bool,
    /// An alert is open for this token.
    alerted: bool,
    /// Keep until (ms): the end of its lifetime plus an hour for late rows.
    until: i64,
}

/// State of `token_multi_origin`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct TokenOrigins {
    #[serde(with = "key::keymap_serde")]
    tokens: KeyMap<Token>,
}

impl TokenOrigins {
    pub(crate) fn observe(&mut self, ctx: &mut Ctx<'_>) {
        let row = ctx.row;
        if row.token_jti.is_empty() {
            return;
        }
        let issuance = match ctx.event.event_type {
            EventType::FhirAccess => false,
            EventType::TokenIssued | EventType::TokenRefreshed | EventType::AuthLogin => {
                if row.outcome != "success" || !matches!(row.token_type.as_str(), "access" | "") {
                    return;
                }
                true
            }
            _ => return,
        };
        let p = &ctx.tenant.p.token_multi_origin;
        let (origin, trusted) = Origin::parse(
            &row.source_ip,
            p.same_subnet_is_one_origin,
            &ctx.tenant.nets,
        );
        let agent = (!row.user_agent.is_empty()).then(|| key::key(&[&row.user_agent]));
        if origin.is_none() && agent.is_none() && !issuance {
            return;
        }
        let k = ctx.jti_key();
        let Some(tok) = slot(&mut self.tokens, k, ctx.dropped) else {
            return;
        };
        let t = ctx.t;
        if tok.count == 0 || t < tok.first {
            tok.first = t;
        }
        if let Some(e) = row.expires_at.filter(|_| issuance) {
            tok.expires = tok.expires.max(e);
        }
        let end = if tok.expires > 0 {
            tok.expires
        } else {
            tok.first.saturating_add(ms(p.default_lifetime_secs))
        };
        tok.until = end.saturating_add(AFTERLIFE_MS);
        if t > end {
            // After its lifetime: use_after_expiry's concern.
            return;
        }
        tok.count = tok.count.saturating_add(1);
        if tok.observations.len() < OBSERVATIONS {
            tok.observations.push((ctx.ek, t));
        }
        if let Some(o) = origin {
            if let Some(s) = tok.origins.iter_mut().find(|s| s.origin == o) {
                s.first = s.first.min(t);
                s.last = s.last.max(t);
            } else if tok.origins.len() < ORIGINS {
                tok.origins.push(Seen {
                    origin: o,
                    first: t,
                    last: t,
                });
            }
            if trusted == Some(false) && row.user_kind == "workforce" {
                tok.untrusted = true;
            }
        }
        if let Some(a) = agent {
            if !tok.agents.contains(&a) && tok.agents.len() < AGENTS {
                tok.agents.push(a);
            }
        }
        let many_origins = origins_apart(&tok.origins);
        let many_agents = tok.agents.len() >= p.max_user_agents as usize;
        if !many_origins && !many_agents {
            return;
        }
        let interleaved = interleaved(&tok.origins);
        let severity = if many_origins && (interleaved || tok.untrusted) {
            Severity::High
        } else {
            Severity::Medium
        };
        let (evidence, unlisted) = if tok.alerted {
            (vec![(ctx.ek, t)], 0)
        } else {
            tok.alerted = true;
            let listed = tok.observations.len() as u32;
            (tok.observations.clone(), tok.count.saturating_sub(listed))
        };
        let summary = format!(
            "Access token used from {} origin(s){}{} and {} user agent(s) ({} observations).",
            tok.origins.len(),
            if interleaved { ", alternating" } else { "" },
            if tok.untrusted {
                ", a workforce token outside the trusted networks"
            } else {
                ""
            },
            tok.agents.len(),
            tok.count
        );
        let dedup = format!("jti:{}", row.token_jti);
        let f = ctx.report(
            Detector::TokenMultiOrigin,
            severity,
            dedup,
            evidence,
            summary,
        );
        f.unlisted = unlisted;
        f.token_theft = severity >= Severity::High;
    }

    pub(crate) fn prune(&mut self, now: i64) {
        self.tokens.retain(|_, tok| tok.until >= now);
    }

    pub(crate) fn tracked(&self, out: &mut Vec<(&'static str, usize)>) {
        out.push(("token_multi_origin.tokens", self.tokens.len()));
    }
}

/// Whether a pseudonymized origin and a readable one are comparable: never (the same
/// address is a pseudonym in a row whose user kind is unknown and readable in a workforce
/// row), so two origins count only within one class.
fn comparable(a: &Seen, b: &Seen) -> bool {
    matches!(
        (a.origin, b.origin),
        (Origin::Ip { .. }, Origin::Ip { .. }) | (Origin::Opaque(_), Origin::Opaque(_))
    )
}

/// Whether two comparable origins were seen.
fn origins_apart(origins: &[Seen]) -> bool {
    origins
        .iter()
        .enumerate()
        .any(|(i, a)| origins[i + 1..].iter().any(|b| comparable(a, b)))
}

/// Whether two comparable origins' first-to-last intervals overlap (A, B, A in event time).
fn interleaved(origins: &[Seen]) -> bool {
    origins.iter().enumerate().any(|(i, a)| {
        origins[i + 1..]
            .iter()
            .any(|b| comparable(a, b) && a.first < b.last && b.first < a.last)
    })
}

#[cfg(test)]
mod tests {
    use crate::detectors::testkit::{access, Kit, MIN, T0};
    use crate::{ParamSet, Severity};

    #[test]
    fn a_switch_to_a_public_address_of_a_workforce_token_is_high() {
        let mut k = Kit::new();
        k.send(
            "custos.fhir.access",
            T0,
            access("J1", "10.1.1.5", "Observation", "permit"),
        );
        k.send(
            "custos.fhir.access",
            T0 + MIN,
            access("J1", "10.1.1.9", "Observation", "permit"),
        );
        assert!(
            k.alerts("token_multi_origin").is_empty(),
            "same /24 is one origin"
        );
        k.send(
            "custos.fhir.access",
            T0 + 2 * MIN,
            access("J1", "198.51.100.7", "Observation", "permit"),
        );
        let a = k.alerts("token_multi_origin");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].severity, Severity::High);
        assert_eq!(a[0].evidence_count, 3);
        assert!(a[0].token_theft);
        assert_eq!(a[0].dedup_key, "jti:J1");
    }

    #[test]
    fn one_switch_inside_trusted_networks_is_medium_and_alternation_is_high() {
        let mut k = Kit::new();
        k.send(
            "custos.fhir.access",
            T0,
            access("J2", "10.1.1.5", "Observation", "permit"),
        );
        k.send(
            "custos.fhir.access",
            T0 + MIN,
            access("J2", "10.2.2.5", "Observation", "permit"),
        );
        assert_eq!(k.alerts("token_multi_origin")[0].severity, Severity::Medium);
        k.send(
            "custos.fhir.access",
            T0 + 2 * MIN,
            access("J2", "10.1.1.6", "Observation", "permit"),
        );
        let a = k.alerts("token_multi_origin");
        assert_eq!(a[0].severity, Severity::High, "A, B, A");
        assert_eq!(k.updates.len(), 2, "opened, then the severity rose");
    }

    #[test]
    fn subnets_apart_when_configured() {
        let params = ParamSet::from_json(
            r#"{"tenants": {"general": {"token_multi_origin": {"same_subnet_is_one_origin": false}}}}"#,
        )
        .expect("params");
        let mut k = Kit::with(params);
        k.send(
            "custos.fhir.access",
            T0,
            access("J3", "10.1.1.5", "Observation", "permit"),
        );
        k.send(
            "custos.fhir.access",
            T0 + MIN,
            access("J3", "10.1.1.9", "Observation", "permit"),
        );
        assert_eq!(k.alerts("token_multi_origin").len(), 1);
    }

    #[test]
    fn after_the_lifetime_is_not_this_detector() {
        let mut k = Kit::new();
        k.send(
            "custos.fhir.access",
            T0,
            access("J4", "10.1.1.5", "Observation", "permit"),
        );
        k.send(
            "custos.fhir.access",
            T0 + 61 * MIN,
            access("J4", "10.9.9.9", "Observation", "permit"),
        );
        assert!(k.alerts("token_multi_origin").is_empty());
    }
}
