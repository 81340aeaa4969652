//! The engine: per-tenant parameters, event deduplication, dispatch to the detectors, the
//! alert store, watermark pruning and snapshots.

use std::collections::HashMap;

use custos_schemas::{AuditRow, Event};
use serde::{Deserialize, Serialize};

use crate::alert::{AlertStore, AlertUpdate, Finding};
use crate::detectors::{Ctx, Detectors};
use crate::key::{self, KeyMap};
use crate::net::Cidr;
use crate::params::{ParamSet, Params};
use crate::DetectError;

/// Most keys any one map of the engine holds; inserts beyond it are dropped and counted
/// (`EngineStats::dropped`), existing keys keep being updated.
pub const MAX_KEYS: usize = 1_000_000;

/// Snapshot format version; [`Engine::restore`] refuses any other.
const SNAPSHOT_VERSION: u32 = 1;

/// How long an event key is remembered to ignore a duplicate delivery (ms).
const DEDUP_MS: i64 = 30 * 60 * 1000;

/// How long an alert without new evidence stays open (ms): later evidence of the same
/// incident updates it, after that it would open a new revision series.
const ALERT_IDLE_MS: i64 = 7 * 24 * 3600 * 1000;

/// Pruning walks every map: done when the watermark moved this much since the last time.
const PRUNE_EVERY_MS: i64 = 5 * 60 * 1000;

/// Sizes of the engine's state, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Keys tracked per map, by map name (`detector.map`).
    pub tracked: Vec<(&'static str, usize)>,
    /// Open alerts.
    pub open_alerts: usize,
    /// Event keys remembered for deduplication.
    pub dedup_keys: usize,
    /// Inserts refused because a map was full.
    pub dropped: u64,
    /// Current watermark (ms).
    pub watermark: i64,
}

/// One tenant's effective parameters.
#[derive(Debug, Clone)]
pub(crate) struct Tenant {
    pub(crate) p: Params,
    pub(crate) nets: Vec<Cidr>,
}

impl Tenant {
    fn new(p: Params) -> Tenant {
        let nets = p
            .trusted_networks
            .iter()
            .filter_map(|n| Cidr::parse(n))
            .collect();
        Tenant { p, nets }
    }
}

/// Everything a snapshot holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    watermark: i64,
    /// Event key → event time, for deduplication.
    #[serde(with = "key::keymap_serde")]
    seen: KeyMap<i64>,
    detectors: Detectors,
    alerts: AlertStore,
    dropped: u64,
    /// Watermark of the last pruning.
    pruned_at: i64,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    state: State,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// All detectors, all tenants.
#[derive(Debug)]
pub struct Engine {
    default: Tenant,
    tenants: HashMap<String, Tenant>,
    state: State,
    findings: Vec<Finding>,
}

impl Engine {
    /// An engine with no state. A tenant override that does not apply leaves that tenant
    /// on the default parameters (sets from [`ParamSet::from_json`] are checked; use
    /// [`ParamSet::resolve`] to check a set built in code).
    pub fn new(params: ParamSet) -> Engine {
        Engine::with_state(params, State::default())
    }

    fn with_state(params: ParamSet, state: State) -> Engine {
        // Each override on its own: one that does not apply (a set built in code and not
        // checked) leaves its tenant on the default, not every tenant.
        let tenants = params
            .tenants
            .iter()
            .filter_map(|(t, partial)| {
                let p = partial.apply(&params.default, t).ok()?;
                Some((t.clone(), Tenant::new(p)))
            })
            .collect();
        Engine {
            default: Tenant::new(params.default),
            tenants,
            state,
            findings: Vec::new(),
        }
    }

    /// One decoded event and its audit row (same `event_key` the ingest stores). Returns
    /// the alerts opened or updated by it (usually none). A row whose `event_key` was seen
    /// in the last 30 minutes of event time is a duplicate delivery and ignored.
    /// Deterministic: no wall clock.
    pub fn observe(&mut self, event: &Event, row: &AuditRow) -> Vec<AlertUpdate> {
        let ek = key::event_key(&row.event_key);
        if self.state.seen.len() >= MAX_KEYS && !self.state.seen.contains_key(&ek) {
            self.state.dropped += 1;
        } else if self.state.seen.insert(ek, row.event_time).is_some() {
            return Vec::new();
        }
        let tenant = self
            .tenants
            .get(row.tenant.as_str())
            .unwrap_or(&self.default);
        let mut ctx = Ctx {
            event,
            row,
            tenant,
            ek,
            t: row.event_time,
            out: &mut self.findings,
            dropped: &mut self.state.dropped,
            jti_key: None,
        };
        self.state.detectors.observe(&mut ctx);
        self.drain()
    }

    /// The event-time watermark moved to `now_ms` (max event time seen minus the allowed
    /// lateness, or a clock in tests): every row with an earlier event time is taken to
    /// have arrived. Fires the verdicts that wait for it (access after consent revocation,
    /// break-glass after the limit: a late grant or opening could still clear them), closes
    /// the volume detector's hours into its baselines, and prunes state older than any
    /// window and retention. A watermark never moves back (an older value is ignored).
    ///
    /// Verdicts do not depend on how the input topics interleave as long as no topic lags
    /// the watermark; the safest watermark is the minimum over the input topics of the
    /// latest event time read from each, minus the allowed lateness.
    pub fn advance(&mut self, now_ms: i64) -> Vec<AlertUpdate> {
        if now_ms <= self.state.watermark {
            return Vec::new();
        }
        self.state.watermark = now_ms;
        let prune = now_ms.saturating_sub(self.state.pruned_at) >= PRUNE_EVERY_MS;
        if prune {
            self.state.pruned_at = now_ms;
            let dedup_before = now_ms.saturating_sub(DEDUP_MS);
            self.state.seen.retain(|_, t| *t >= dedup_before);
            self.state
                .alerts
                .prune(now_ms.saturating_sub(ALERT_IDLE_MS));
        }
        self.state
            .detectors
            .advance(now_ms, prune, &mut self.findings);
        self.drain()
    }

    fn drain(&mut self) -> Vec<AlertUpdate> {
        if self.findings.is_empty() {
            return Vec::new();
        }
        let alerts = &mut self.state.alerts;
        self.findings
            .drain(..)
            .filter_map(|f| alerts.apply(f))
            .collect()
    }

    /// The whole state, versioned (JSON).
    pub fn snapshot(&self) -> Result<Vec<u8>, DetectError> {
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            state: &'a State,
        }
        serde_json::to_vec(&Out {
            version: SNAPSHOT_VERSION,
            state: &self.state,
        })
        .map_err(|e| DetectError::Snapshot(e.to_string()))
    }

    /// An engine with the state of a [`Engine::snapshot`] and the given parameters.
    pub fn restore(params: ParamSet, bytes: &[u8]) -> Result<Engine, DetectError> {
        let v: VersionOnly =
            serde_json::from_slice(bytes).map_err(|e| DetectError::Restore(e.to_string()))?;
        if v.version != SNAPSHOT_VERSION {
            return Err(DetectError::Restore(format!(
                "snapshot version {} (this build reads {SNAPSHOT_VERSION})",
                v.version
            )));
        }
        let snap: Snapshot =
            serde_json::from_slice(bytes).map_err(|e| DetectError::Restore(e.to_string()))?;
        Ok(Engine::with_state(params, snap.state))
    }

    /// Sizes of the state, for metrics.
    pub fn stats(&self) -> EngineStats {
        let mut tracked = Vec::new();
        self.state.detectors.tracked(&mut tracked);
        EngineStats {
            tracked,
            open_alerts: self.state.alerts.len(),
            dedup_keys: self.state.seen.len(),
            dropped: self.state.dropped + self.state.alerts.dropped,
            watermark: self.state.watermark,
        }
    }

    /// The current state of every open alert, ordered by alert id.
    pub fn open_alerts(&self) -> Vec<AlertUpdate> {
        self.state.alerts.all().into_iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::testkit::{access, Kit, MIN, T0};

    #[test]
    fn a_duplicate_delivery_is_ignored() {
        let mut k = Kit::new();
        let (ev, row) = k.build(
            "custos.fhir.access",
            T0,
            access("J", "10.1.1.1", "Observation", "deny"),
        );
        for _ in 0..6 {
            k.send_row(&ev, &row);
        }
        assert!(
            k.alerts("repeated_denials").is_empty(),
            "one denial, delivered six times"
        );
        assert_eq!(k.alerts("scope_escalation").len(), 0);
        assert_eq!(k.engine.stats().dedup_keys, 1);
    }

    #[test]
    fn a_detector_disabled_for_a_tenant_stays_quiet_there_only() {
        let params = ParamSet::from_json(
            r#"{"tenants": {"general": {"scope_escalation": {"enabled": false}}}}"#,
        )
        .expect("params");
        let mut k = Kit::with(params.clone());
        k.send(
            "custos.fhir.access",
            T0,
            access("J", "10.1.1.1", "AllergyIntolerance", "deny"),
        );
        assert!(k.alerts("scope_escalation").is_empty());
        let mut other = params;
        other.tenants.clear();
        let mut k = Kit::with(other);
        k.send(
            "custos.fhir.access",
            T0,
            access("J", "10.1.1.1", "AllergyIntolerance", "deny"),
        );
        assert_eq!(k.alerts("scope_escalation").len(), 1);
    }

    #[test]
    fn snapshots_are_versioned_and_pruning_forgets_old_state() {
        let mut k = Kit::new();
        k.send(
            "custos.fhir.access",
            T0,
            access("J", "10.1.1.1", "Observation", "permit"),
        );
        let saved = k.engine.snapshot().expect("snapshot");
        let mut v: serde_json::Value = serde_json::from_slice(&saved).expect("json");
        v["version"] = serde_json::json!(99);
        let other = serde_json::to_vec(&v).expect("json");
        assert!(matches!(
            Engine::restore(ParamSet::default(), &other),
            Err(DetectError::Restore(m)) if m.contains("99")
        ));
        assert!(Engine::restore(ParamSet::default(), b"not json").is_err());
        let restored = Engine::restore(ParamSet::default(), &saved).expect("restore");
        assert_eq!(restored.stats(), k.engine.stats());
        let tracked = |e: &Engine| e.stats().tracked.iter().map(|t| t.1).sum::<usize>();
        assert!(tracked(&k.engine) > 0);
        k.flush(T0 + 10 * 24 * 60 * MIN);
        let users = |e: &Engine| {
            e.stats()
                .tracked
                .iter()
                .find(|t| t.0 == "volume.users")
                .map(|t| t.1)
        };
        assert_eq!(tracked(&k.engine), 1, "only the user's baseline history");
        assert_eq!(users(&k.engine), Some(1));
        k.flush(T0 + 40 * 24 * 60 * MIN);
        assert_eq!(tracked(&k.engine), 0, "everything past its retention");
        assert_eq!(k.engine.stats().dedup_keys, 0);
    }

    #[test]
    fn updates_are_emitted_at_powers_of_two_and_when_severity_rises() {
        let mut k = Kit::new();
        let ip = |i: i64| format!("10.{}.0.1", i % 2);
        for i in 0..9 {
            k.send(
                "custos.fhir.access",
                T0 + i * 1000,
                access("J", &ip(i), "Observation", "permit"),
            );
        }
        // Opened at 2 observations (Medium), High at 3 (A, B, A), then 4 and 8.
        let seen: Vec<(u32, u32)> = k
            .updates
            .iter()
            .map(|u| (u.revision, u.evidence_count))
            .collect();
        assert_eq!(seen, vec![(1, 2), (2, 3), (3, 4), (4, 8)]);
        let last = k.updates.last().expect("updates");
        assert_eq!(
            last.alert_id,
            crate::alert::alert_id("general", crate::Detector::TokenMultiOrigin, "jti:J")
        );
        assert_eq!(last.alert_id.len(), 32);
    }
}
