//! The consent fold: consent events in, current state per consent plus what to record and
//! what to revoke out. Pure (no I/O), so it is unit-tested and rebuilt identically on restart.
//!
//! State is kept per (tenant, consent id); each consent names its (patient, client), so the
//! (tenant, patient, client) view is an index over it. Transitions:
//!
//! | event | state before | after | revocation |
//! |---|---|---|---|
//! | granted | none / active / revoked / expired | active (scopes etc. replaced) | — |
//! | revoked | active, or unknown | revoked | cause `revoke` |
//! | expired | active | expired | cause `expiry` |
//! | revoked / expired | revoked / expired | unchanged (`noop_inactive`) | — |
//! | user deprovisioned | each active consent whose AS subject is the user | revoked | cause `deprovision` |
//!
//! Every applied event yields one history row (a deprovisioning one per consent it ended, or
//! one `noop_no_consents` row), so each consumed Kafka position is visible in ClickHouse.

use std::collections::HashMap;

use custos_schemas::row::{event_key, split_scopes};
use custos_schemas::{
    ConsentData, DeprovisionData, Event, EventType, KafkaPosition, KeyRing, Payload, PseudonymKind,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::rows::{HistoryRow, SealedRow};
use crate::seal::Sealer;

/// Consent status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// In force (within its period, if it has one).
    Active,
    /// Withdrawn.
    Revoked,
    /// Its period ended.
    Expired,
}

impl Status {
    /// Column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Revoked => "revoked",
            Status::Expired => "expired",
        }
    }

    /// Parses a column value.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "active" => Some(Status::Active),
            "revoked" => Some(Status::Revoked),
            "expired" => Some(Status::Expired),
            _ => None,
        }
    }
}

/// Why a revocation is pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// The consent was withdrawn.
    Revoke,
    /// Its period ended.
    Expiry,
    /// The user account was removed.
    Deprovision,
    /// A high-severity token-theft alert of a tenant that opted in to the automatic
    /// response (see [`crate::response`]).
    Alert,
}

impl Cause {
    /// Column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Revoke => "revoke",
            Cause::Expiry => "expiry",
            Cause::Deprovision => "deprovision",
            Cause::Alert => "alert",
        }
    }
}

/// The current state of one consent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsentState {
    /// Tenant.
    pub tenant: String,
    /// Consent id.
    pub consent_id: String,
    /// Patient pseudonym.
    pub patient: String,
    /// AS subject pseudonym (empty when unknown).
    pub subject: String,
    /// OAuth client.
    pub client_id: String,
    /// AS issuer.
    pub issuer: String,
    /// Status.
    pub status: Status,
    /// Version (number of state changes).
    pub version: u64,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Purposes of use.
    pub purpose: Vec<String>,
    /// Period start (ms).
    pub period_start: Option<i64>,
    /// Period end (ms).
    pub period_end: Option<i64>,
    /// Time of the last change (ms).
    pub updated_at: i64,
    /// Sealed raw patient id and subject (never serialized).
    #[serde(skip)]
    pub sealed: Option<SealedIds>,
}

/// Sealed raw identifiers of a consent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SealedIds {
    /// `kid.b64` of the raw patient id.
    pub patient: String,
    /// `kid.b64` of the raw AS subject (empty when unknown).
    pub subject: String,
}

/// A revocation the fold decided on; the dispatcher turns it into per-target work.
#[derive(Debug, Clone, PartialEq)]
pub struct RevokeOrder {
    /// Stable id: the same consent and cause event always give the same id.
    pub revocation_id: String,
    /// Why.
    pub cause: Cause,
    /// Free-text reason.
    pub reason: String,
    /// Who asked for it (`patient`, `client:<id>`, a workforce identity, or empty).
    pub actor: String,
    /// When it was requested (ms): the cause event's time.
    pub requested_at: i64,
    /// Identity of the cause event.
    pub cause_event_key: String,
    /// The consent as it was ended.
    pub consent: ConsentState,
}

/// What one event changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The history row to record.
    pub history: HistoryRow,
    /// Newly sealed identifiers to record.
    pub sealed: Option<SealedRow>,
    /// A revocation to push.
    pub revoke: Option<RevokeOrder>,
}

/// The id of the revocation of `consent_id` caused by the event `cause_event_key`.
pub fn revocation_id(tenant: &str, consent_id: &str, cause_event_key: &str) -> String {
    let mut h = Sha256::new();
    for part in ["custos-rev1", tenant, consent_id, cause_event_key] {
        h.update(part.as_bytes());
        h.update([0x1f]);
    }
    format!("rev-{}", hex::encode(&h.finalize()[..16]))
}

/// Everything the fold needs besides the state.
#[derive(Debug, Clone, Copy)]
pub struct FoldContext<'a> {
    /// Pseudonymization keys.
    pub keys: &'a KeyRing,
    /// Sealing keys.
    pub sealer: &'a Sealer,
    /// Tenant of events naming none.
    pub default_tenant: &'a str,
}

/// Consent state of every tenant.
#[derive(Debug, Default, Clone)]
pub struct ConsentBook {
    consents: HashMap<(String, String), ConsentState>,
}

impl ConsentBook {
    /// Inserts a state loaded from storage.
    pub fn insert(&mut self, state: ConsentState) {
        self.consents
            .insert((state.tenant.clone(), state.consent_id.clone()), state);
    }

    /// One consent.
    pub fn get(&self, tenant: &str, consent_id: &str) -> Option<&ConsentState> {
        self.consents
            .get(&(tenant.to_owned(), consent_id.to_owned()))
    }

    /// Mutable access (to attach sealed identifiers loaded from storage).
    pub fn get_mut(&mut self, tenant: &str, consent_id: &str) -> Option<&mut ConsentState> {
        self.consents
            .get_mut(&(tenant.to_owned(), consent_id.to_owned()))
    }

    /// All consents.
    pub fn iter(&self) -> impl Iterator<Item = &ConsentState> {
        self.consents.values()
    }

    /// Number of consents.
    pub fn len(&self) -> usize {
        self.consents.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.consents.is_empty()
    }

    /// Consents of a patient (any of the pseudonyms given, one per live key) in a tenant,
    /// optionally for one client.
    pub fn by_patient(
        &self,
        tenant: &str,
        patient_pseudonyms: &[String],
        client_id: Option<&str>,
    ) -> Vec<&ConsentState> {
        let mut out: Vec<&ConsentState> = self
            .consents
            .values()
            .filter(|c| c.tenant == tenant && patient_pseudonyms.contains(&c.patient))
            .filter(|c| client_id.is_none_or(|id| c.client_id == id))
            .collect();
        out.sort_by(|a, b| a.consent_id.cmp(&b.consent_id));
        out
    }

    /// Applies one decoded event. Events other than consent and deprovisioning ones change
    /// nothing and return no change.
    pub fn apply(
        &mut self,
        ev: &Event,
        pos: &KafkaPosition,
        now_ms: i64,
        ctx: &FoldContext<'_>,
    ) -> Vec<Change> {
        let tenant = ev
            .tenant
            .as_deref()
            .unwrap_or(ctx.default_tenant)
            .to_owned();
        match &ev.payload {
            Payload::Consent(d) => vec![self.consent_event(ev, d, &tenant, pos, now_ms, ctx)],
            Payload::UserDeprovisioned(d) => self.deprovision(ev, d, &tenant, pos, now_ms, ctx),
            _ => Vec::new(),
        }
    }

    fn consent_event(
        &mut self,
        ev: &Event,
        d: &ConsentData,
        tenant: &str,
        pos: &KafkaPosition,
        now_ms: i64,
        ctx: &FoldContext<'_>,
    ) -> Change {
        let key = (tenant.to_owned(), d.consent_id.clone());
        let ekey = event_key(&ev.source, &ev.id);
        let at = ev.time.timestamp_millis();
        let patient_ps = ctx
            .keys
            .pseudonymize(tenant, PseudonymKind::Patient, &d.patient);
        let subject_ps = d
            .sub
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| ctx.keys.pseudonymize(tenant, PseudonymKind::Subject, s))
            .unwrap_or_default();
        let issuer = d.iss.clone().unwrap_or_default();
        let previous = self.consents.get(&key).cloned();
        let mut sealed_row = None;
        let mut seal = |prev: Option<&SealedIds>| -> SealedIds {
            let subject = match d.sub.as_deref().filter(|s| !s.is_empty()) {
                Some(s) => ctx.sealer.seal(tenant, &d.consent_id, s),
                None => prev.map(|p| p.subject.clone()).unwrap_or_default(),
            };
            let ids = SealedIds {
                patient: ctx.sealer.seal(tenant, &d.consent_id, &d.patient),
                subject,
            };
            sealed_row = Some(SealedRow {
                tenant: tenant.to_owned(),
                consent_id: d.consent_id.clone(),
                kid: ctx.sealer.current_kid().to_owned(),
                patient_sealed: ids.patient.clone(),
                subject_sealed: ids.subject.clone(),
                recorded_at: now_ms,
            });
            ids
        };
        let (state, effect, revoke_cause) = match (ev.event_type, previous) {
            (EventType::ConsentGranted, prev) => {
                let effect = match prev.as_ref().map(|p| p.status) {
                    None => "granted",
                    Some(Status::Active) => "updated",
                    Some(_) => "regranted",
                };
                let sealed = seal(prev.as_ref().and_then(|p| p.sealed.as_ref()));
                let state = ConsentState {
                    tenant: tenant.to_owned(),
                    consent_id: d.consent_id.clone(),
                    patient: patient_ps,
                    subject: if subject_ps.is_empty() {
                        prev.as_ref().map(|p| p.subject.clone()).unwrap_or_default()
                    } else {
                        subject_ps
                    },
                    client_id: d.client_id.clone(),
                    issuer: if issuer.is_empty() {
                        prev.as_ref().map(|p| p.issuer.clone()).unwrap_or_default()
                    } else {
                        issuer
                    },
                    status: Status::Active,
                    version: prev.as_ref().map_or(0, |p| p.version) + 1,
                    scopes: split_scopes(d.scope.as_deref()),
                    purpose: d.purpose.clone(),
                    period_start: d.period_start.map(|t| t.timestamp_millis()),
                    period_end: d.period_end.map(|t| t.timestamp_millis()),
                    updated_at: at,
                    sealed: Some(sealed),
                };
                (state, effect, None)
            }
            (ty, Some(prev)) if prev.status != Status::Active => {
                let _ = ty;
                (prev, "noop_inactive", None)
            }
            (EventType::ConsentExpired, None) => {
                // Nothing known was in force: record it, revoke nothing.
                let state = ConsentState {
                    tenant: tenant.to_owned(),
                    consent_id: d.consent_id.clone(),
                    patient: patient_ps,
                    subject: subject_ps,
                    client_id: d.client_id.clone(),
                    issuer,
                    status: Status::Expired,
                    version: 0,
                    scopes: Vec::new(),
                    purpose: d.purpose.clone(),
                    period_start: None,
                    period_end: None,
                    updated_at: at,
                    sealed: None,
                };
                (state, "noop_unknown", None)
            }
            (ty, prev) => {
                // Revoked or expired while active, or revoked and never seen (the AS or the
                // patient withdrew a grant Custos had not recorded: still pushed).
                let (status, cause, effect) = if ty == EventType::ConsentExpired {
                    (Status::Expired, Cause::Expiry, "expired")
                } else {
                    (Status::Revoked, Cause::Revoke, "revoked")
                };
                let mut state = match prev {
                    Some(p) => p,
                    None => {
                        let sealed = seal(None);
                        ConsentState {
                            tenant: tenant.to_owned(),
                            consent_id: d.consent_id.clone(),
                            patient: patient_ps,
                            subject: subject_ps.clone(),
                            client_id: d.client_id.clone(),
                            issuer: issuer.clone(),
                            status,
                            version: 0,
                            scopes: split_scopes(d.scope.as_deref()),
                            purpose: d.purpose.clone(),
                            period_start: None,
                            period_end: None,
                            updated_at: at,
                            sealed: Some(sealed),
                        }
                    }
                };
                if state.subject.is_empty() && !subject_ps.is_empty() {
                    state.subject = subject_ps;
                    let prev_sealed = state.sealed.clone();
                    state.sealed = Some(seal(prev_sealed.as_ref()));
                }
                state.status = status;
                state.version += 1;
                state.updated_at = at;
                (state, effect, Some(cause))
            }
        };
        let history = history_row(
            ev,
            &ekey,
            &state,
            effect,
            d.reason.as_deref(),
            d.actor.as_deref(),
            pos,
            now_ms,
        );
        let revoke = revoke_cause.map(|cause| RevokeOrder {
            revocation_id: revocation_id(tenant, &d.consent_id, &ekey),
            cause,
            reason: d
                .reason
                .clone()
                .unwrap_or_else(|| default_reason(cause).to_owned()),
            actor: d.actor.clone().unwrap_or_default(),
            requested_at: at,
            cause_event_key: ekey.clone(),
            consent: state.clone(),
        });
        if state.version > 0 {
            self.consents.insert(key, state);
        }
        Change {
            history,
            sealed: sealed_row,
            revoke,
        }
    }

    fn deprovision(
        &mut self,
        ev: &Event,
        d: &DeprovisionData,
        tenant: &str,
        pos: &KafkaPosition,
        now_ms: i64,
        ctx: &FoldContext<'_>,
    ) -> Vec<Change> {
        let ekey = event_key(&ev.source, &ev.id);
        let at = ev.time.timestamp_millis();
        let subjects = ctx.keys.lookup_all(tenant, PseudonymKind::Subject, &d.sub);
        let mut out = Vec::new();
        let mut ids: Vec<(String, String)> = self
            .consents
            .iter()
            .filter(|(_, c)| {
                c.tenant == tenant && c.status == Status::Active && subjects.contains(&c.subject)
            })
            .map(|(k, _)| k.clone())
            .collect();
        ids.sort();
        let reason = d
            .reason
            .clone()
            .unwrap_or_else(|| default_reason(Cause::Deprovision).to_owned());
        for key in ids {
            let Some(state) = self.consents.get_mut(&key) else {
                continue;
            };
            state.status = Status::Revoked;
            state.version += 1;
            state.updated_at = at;
            let state = state.clone();
            out.push(Change {
                history: history_row(
                    ev,
                    &ekey,
                    &state,
                    "deprovisioned",
                    Some(&reason),
                    d.actor.as_deref(),
                    pos,
                    now_ms,
                ),
                sealed: None,
                revoke: Some(RevokeOrder {
                    revocation_id: revocation_id(tenant, &state.consent_id, &ekey),
                    cause: Cause::Deprovision,
                    reason: reason.clone(),
                    actor: d.actor.clone().unwrap_or_default(),
                    requested_at: at,
                    cause_event_key: ekey.clone(),
                    consent: state,
                }),
            });
        }
        if out.is_empty() {
            let none = ConsentState {
                tenant: tenant.to_owned(),
                consent_id: String::new(),
                patient: String::new(),
                subject: subjects.first().cloned().unwrap_or_default(),
                client_id: String::new(),
                issuer: d.iss.clone(),
                status: Status::Revoked,
                version: 0,
                scopes: Vec::new(),
                purpose: Vec::new(),
                period_start: None,
                period_end: None,
                updated_at: at,
                sealed: None,
            };
            let mut history = history_row(
                ev,
                &ekey,
                &none,
                "noop_no_consents",
                Some(&reason),
                d.actor.as_deref(),
                pos,
                now_ms,
            );
            history.status = String::new();
            out.push(Change {
                history,
                sealed: None,
                revoke: None,
            });
        }
        out
    }
}

fn default_reason(cause: Cause) -> &'static str {
    match cause {
        Cause::Revoke => "consent revoked",
        Cause::Expiry => "consent period ended",
        Cause::Deprovision => "user deprovisioned",
        Cause::Alert => "token theft alert",
    }
}

#[allow(clippy::too_many_arguments)]
fn history_row(
    ev: &Event,
    ekey: &str,
    state: &ConsentState,
    effect: &str,
    reason: Option<&str>,
    actor: Option<&str>,
    pos: &KafkaPosition,
    now_ms: i64,
) -> HistoryRow {
    HistoryRow {
        event_key: ekey.to_owned(),
        event_id: ev.id.clone(),
        event_source: ev.source.clone(),
        event_type: ev.event_type.as_str().to_owned(),
        source_format: ev.format.as_str().to_owned(),
        tenant: state.tenant.clone(),
        consent_id: state.consent_id.clone(),
        patient: state.patient.clone(),
        subject: state.subject.clone(),
        client_id: state.client_id.clone(),
        issuer: state.issuer.clone(),
        status: state.status.as_str().to_owned(),
        effect: effect.to_owned(),
        version: state.version,
        scopes: state.scopes.clone(),
        purpose: state.purpose.clone(),
        period_start: state.period_start,
        period_end: state.period_end,
        reason: reason.unwrap_or_default().to_owned(),
        actor: actor.unwrap_or_default().to_owned(),
        event_time: ev.time.timestamp_millis(),
        recorded_at: now_ms,
        kafka_topic: pos.topic.clone(),
        kafka_partition: pos.partition,
        kafka_offset: pos.offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_schemas::{decode, DecodeLimits};

    const KEYS: &str = "k1=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const SEAL: &str = "s1=1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    fn ev(ty: &str, id: &str, data: serde_json::Value) -> Event {
        let msg = serde_json::json!({"specversion":"1.0","id":id,"source":"//test","type":ty,
            "time":"2026-03-01T10:00:00Z","tenant":"general","data":data});
        decode(
            &serde_json::to_vec(&msg).unwrap(),
            &[],
            &DecodeLimits::default(),
        )
        .unwrap()
    }

    fn pos(offset: i64) -> KafkaPosition {
        KafkaPosition {
            topic: "custos.consent-events".into(),
            partition: 0,
            offset,
        }
    }

    fn grant(id: &str, scope: &str) -> Event {
        ev(
            "custos.consent.granted",
            id,
            serde_json::json!({"consentId":"c1","patient":"Patient/PAT-SECRET","client_id":"app",
                "iss":"keycloak:general","sub":"SUB-SECRET","scope":scope,"purpose":["TREAT"]}),
        )
    }

    #[test]
    fn grant_update_revoke_and_replay_idempotence() {
        let keys = KeyRing::parse(KEYS, None).unwrap();
        let sealer = Sealer::parse(SEAL, None).unwrap();
        let ctx = FoldContext {
            keys: &keys,
            sealer: &sealer,
            default_tenant: "default",
        };
        let mut book = ConsentBook::default();
        let g = book.apply(&grant("e1", "patient/Observation.rs"), &pos(0), 1, &ctx);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].history.effect, "granted");
        assert_eq!(g[0].history.version, 1);
        assert!(g[0].sealed.is_some() && g[0].revoke.is_none());
        let u = book.apply(
            &grant("e2", "patient/Observation.rs patient/Condition.rs"),
            &pos(1),
            2,
            &ctx,
        );
        assert_eq!(u[0].history.effect, "updated");
        assert_eq!(u[0].history.scopes.len(), 2);
        let rev = ev(
            "custos.consent.revoked",
            "e3",
            serde_json::json!({"consentId":"c1","patient":"Patient/PAT-SECRET","client_id":"app",
                "reason":"patient withdrew"}),
        );
        let r = book.apply(&rev, &pos(2), 3, &ctx);
        let order = r[0].revoke.clone().unwrap();
        assert_eq!(order.cause, Cause::Revoke);
        assert_eq!(order.reason, "patient withdrew");
        assert_eq!(order.consent.status, Status::Revoked);
        assert_eq!(order.consent.version, 3);
        assert_eq!(order.consent.scopes.len(), 2, "scopes of the ended grant");
        let c = book.get("general", "c1").unwrap();
        let opened = sealer
            .open("general", "c1", &c.sealed.as_ref().unwrap().subject)
            .unwrap();
        assert_eq!(opened, "SUB-SECRET");
        // The same revocation again (replay) changes nothing and orders nothing.
        let again = book.apply(&rev, &pos(2), 4, &ctx);
        assert_eq!(again[0].history.effect, "noop_inactive");
        assert!(again[0].revoke.is_none());
        // The revocation id is stable.
        assert_eq!(
            order.revocation_id,
            revocation_id("general", "c1", &event_key("//test", "e3"))
        );
        // No raw identifier in any row.
        let dump = format!("{g:?}{u:?}{r:?}");
        assert!(!dump.contains("PAT-SECRET") && !dump.contains("SUB-SECRET"));
    }

    #[test]
    fn a_refused_keycloak_consent_screen_grants_nothing() {
        let keys = KeyRing::parse(KEYS, None).unwrap();
        let sealer = Sealer::parse(SEAL, None).unwrap();
        let ctx = FoldContext {
            keys: &keys,
            sealer: &sealer,
            default_tenant: "default",
        };
        let kc = serde_json::json!({"id":"kc-ev-1","time":1767268700000_i64,
            "type":"GRANT_CONSENT_ERROR","realmId":"general","clientId":"app",
            "userId":"user-1","error":"rejected_by_user",
            "details":{"granted_client":"app","scope":"patient/*.rs"}});
        let ev = decode(
            &serde_json::to_vec(&kc).unwrap(),
            &[],
            &DecodeLimits::default(),
        )
        .unwrap();
        let mut book = ConsentBook::default();
        assert!(book.apply(&ev, &pos(0), 1, &ctx).is_empty());
        assert!(book.is_empty());
    }

    #[test]
    fn deprovisioning_revokes_the_users_active_consents() {
        let keys = KeyRing::parse(KEYS, None).unwrap();
        let sealer = Sealer::parse(SEAL, None).unwrap();
        let ctx = FoldContext {
            keys: &keys,
            sealer: &sealer,
            default_tenant: "default",
        };
        let mut book = ConsentBook::default();
        book.apply(&grant("e1", "launch/patient"), &pos(0), 1, &ctx);
        let dep = ev(
            "custos.user.deprovisioned",
            "d1",
            serde_json::json!({"iss":"keycloak:general","sub":"SUB-SECRET","reason":"account closed"}),
        );
        let changes = book.apply(&dep, &pos(1), 2, &ctx);
        assert_eq!(changes.len(), 1);
        let order = changes[0].revoke.clone().unwrap();
        assert_eq!(order.cause, Cause::Deprovision);
        assert_eq!(order.reason, "account closed");
        // A second deprovisioning finds nothing active.
        let again = book.apply(&dep, &pos(1), 3, &ctx);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].history.effect, "noop_no_consents");
        assert!(again[0].revoke.is_none());
    }

    #[test]
    fn unknown_revocation_is_recorded_and_pushed_expiry_of_unknown_is_not() {
        let keys = KeyRing::parse(KEYS, None).unwrap();
        let sealer = Sealer::parse(SEAL, None).unwrap();
        let ctx = FoldContext {
            keys: &keys,
            sealer: &sealer,
            default_tenant: "default",
        };
        let mut book = ConsentBook::default();
        let rev = ev(
            "custos.consent.revoked",
            "x1",
            serde_json::json!({"consentId":"c9","patient":"p9","client_id":"app","sub":"u9"}),
        );
        let r = book.apply(&rev, &pos(0), 1, &ctx);
        assert!(r[0].revoke.is_some());
        assert_eq!(book.get("general", "c9").unwrap().version, 1);
        let exp = ev(
            "custos.consent.expired",
            "x2",
            serde_json::json!({"consentId":"c8","patient":"p8","client_id":"app"}),
        );
        let e = book.apply(&exp, &pos(1), 2, &ctx);
        assert_eq!(e[0].history.effect, "noop_unknown");
        assert!(e[0].revoke.is_none());
        assert!(book.get("general", "c8").is_none());
    }
}
