//! The detectors, one module per family, and what they share: the per-event context,
//! bounded map helpers and the sliding-window burst counter.

use custos_schemas::{AuditRow, Event, EventType};
use serde::{Deserialize, Serialize};

use crate::alert::{Detector, Finding, Severity, Who};
use crate::engine::{Tenant, MAX_KEYS};
use crate::key::{self, KeyMap};

mod break_glass;
mod consent;
mod refresh;
mod revocation;
mod scope;
mod sign_in;
mod token_origin;
mod volume;

#[cfg(test)]
pub(crate) mod testkit;

/// What a detector sees of one event.
pub(crate) struct Ctx<'a> {
    /// The decoded event (for fields the row does not keep, like `amr`).
    pub event: &'a Event,
    /// Its audit row.
    pub row: &'a AuditRow,
    /// The tenant's parameters.
    pub tenant: &'a Tenant,
    /// The row's event key.
    pub ek: u128,
    /// Event time (ms).
    pub t: i64,
    /// Findings to report.
    pub out: &'a mut Vec<Finding>,
    /// Inserts refused because a map was full.
    pub dropped: &'a mut u64,
    /// `key(["jti", token_jti])`, computed once (several detectors key by token).
    pub jti_key: Option<u128>,
}

impl Ctx<'_> {
    /// Reports a finding about this row's user, client, session, token and patient.
    pub(crate) fn report(
        &mut self,
        detector: Detector,
        severity: Severity,
        dedup_key: String,
        evidence: Vec<(u128, i64)>,
        summary: String,
    ) -> &mut Finding {
        self.out.push(Finding {
            tenant: self.row.tenant.clone(),
            detector,
            severity,
            dedup_key,
            who: Who::of(self.row),
            evidence,
            unlisted: 0,
            summary,
            token_theft: false,
        });
        let last = self.out.len() - 1;
        &mut self.out[last]
    }

    /// This row's map key under `parts` (the tenant comes first).
    pub(crate) fn key(&self, parts: &[&str]) -> u128 {
        let mut all: [&str; 4] = [""; 4];
        all[0] = &self.row.tenant;
        let n = parts.len().min(3);
        all[1..=n].copy_from_slice(&parts[..n]);
        key::key(&all[..=n])
    }

    /// This row's token key (`["jti", token_jti]`).
    pub(crate) fn jti_key(&mut self) -> u128 {
        match self.jti_key {
            Some(k) => k,
            None => {
                let k = self.key(&["jti", &self.row.token_jti]);
                self.jti_key = Some(k);
                k
            }
        }
    }

    /// Whether the row is a FHIR access.
    pub(crate) fn is_access(&self) -> bool {
        self.event.event_type == EventType::FhirAccess
    }

    /// Whether the row is a FHIR access the gateway permitted.
    pub(crate) fn permitted_access(&self) -> bool {
        self.is_access() && self.row.decision == "permit"
    }

    /// The row's event key in hex (for dedup keys of one-row incidents).
    pub(crate) fn event_key(&self) -> &str {
        &self.row.event_key
    }
}

/// Milliseconds of `secs` seconds.
pub(crate) fn ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// The entry of `k`, inserted with `V::default()` unless the map is full.
pub(crate) fn slot<'m, V: Default>(
    map: &'m mut KeyMap<V>,
    k: u128,
    dropped: &mut u64,
) -> Option<&'m mut V> {
    if map.len() >= MAX_KEYS && !map.contains_key(&k) {
        *dropped += 1;
        return None;
    }
    Some(map.entry(k).or_default())
}

/// Inserts `(t, ..)` into a list ordered by time, keeping at most `cap` entries (the
/// earliest are dropped).
pub(crate) fn insert_by_time<T>(list: &mut Vec<T>, item: T, cap: usize, time: impl Fn(&T) -> i64) {
    let t = time(&item);
    let at = list.partition_point(|x| time(x) <= t);
    list.insert(at, item);
    if list.len() > cap {
        list.remove(0);
    }
}

/// Events of one key in a sliding window: whether some window of the configured length
/// holds at least the threshold of them (counted by distinct `who`), and the burst an alert
/// is open for. The same rows give the same bursts whatever their arrival order, as long as
/// they fall within the retention.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Burst {
    /// (time, event key, who) ordered by time; at most [`Burst::CAP`].
    events: Vec<(i64, u128, u128)>,
    /// Start (earliest evidence) and latest evidence of the open burst.
    open: Option<(i64, i64)>,
}

/// What [`Burst::add`] decided.
pub(crate) enum BurstNews {
    /// Nothing to report.
    Quiet,
    /// The threshold was reached: the burst starting at `.0` with this evidence.
    Opened(i64, Vec<(u128, i64)>),
    /// More evidence for the open burst starting at `.0`.
    Grew(i64),
}

impl Burst {
    /// Events kept per key.
    pub(crate) const CAP: usize = 256;

    /// Adds one event.
    pub(crate) fn add(
        &mut self,
        t: i64,
        ek: u128,
        who: u128,
        threshold: u32,
        window: i64,
    ) -> BurstNews {
        insert_by_time(&mut self.events, (t, ek, who), Self::CAP, |e| e.0);
        if let Some((start, last)) = self.open {
            if t >= start.saturating_sub(window) && t <= last.saturating_add(window) {
                self.open = Some((start.min(t), last.max(t)));
                return BurstNews::Grew(start);
            }
        }
        // Every window of `window` ms that contains `t`: starting at each event in
        // [t - window, t].
        let lo = self
            .events
            .partition_point(|e| e.0 < t.saturating_sub(window));
        for i in lo..self.events.len() {
            let s = self.events[i].0;
            if s > t {
                break;
            }
            let end = self
                .events
                .partition_point(|e| e.0 <= s.saturating_add(window));
            let span = &self.events[i..end];
            if distinct(span) >= threshold as usize {
                let evidence = span.iter().map(|e| (e.1, e.0)).collect();
                let last = span.last().map_or(t, |e| e.0);
                self.open = Some((s, last));
                return BurstNews::Opened(s, evidence);
            }
        }
        BurstNews::Quiet
    }

    /// The open burst, when `t` falls in it or within `window` after it.
    pub(crate) fn open_at(&self, t: i64, window: i64) -> Option<i64> {
        let (start, last) = self.open?;
        (t >= start && t <= last.saturating_add(window)).then_some(start)
    }

    /// Drops events before `before`, and the open burst once it ended before `before`.
    /// Returns whether nothing is left.
    pub(crate) fn prune(&mut self, before: i64) -> bool {
        let cut = self.events.partition_point(|e| e.0 < before);
        self.events.drain(..cut);
        if self.open.is_some_and(|(_, last)| last < before) {
            self.open = None;
        }
        self.events.is_empty() && self.open.is_none()
    }
}

/// Distinct `who` values in a short list.
fn distinct(span: &[(i64, u128, u128)]) -> usize {
    let mut seen: Vec<u128> = Vec::with_capacity(span.len());
    for e in span {
        if !seen.contains(&e.2) {
            seen.push(e.2);
        }
    }
    seen.len()
}

/// Every detector's state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Detectors {
    token_origin: token_origin::TokenOrigins,
    refresh: refresh::Refresh,
    revocation: revocation::Revocation,
    consent: consent::Consent,
    scope: scope::Scope,
    volume: volume::VolumeState,
    break_glass: break_glass::BreakGlassState,
    sign_in: sign_in::SignIn,
}

impl Detectors {
    /// Runs every enabled detector on one event.
    pub(crate) fn observe(&mut self, ctx: &mut Ctx<'_>) {
        let p = &ctx.tenant.p;
        if p.token_multi_origin.enabled {
            self.token_origin.observe(ctx);
        }
        if p.refresh_reuse.enabled || p.refresh_failure_burst.enabled {
            self.refresh.observe(ctx);
        }
        if p.use_after_revocation.enabled || p.use_after_expiry.enabled {
            self.revocation.observe(ctx);
        }
        if p.access_after_consent_revocation.enabled {
            self.consent.observe(ctx);
        }
        if p.scope_escalation.enabled || p.repeated_denials.enabled {
            self.scope.observe(ctx);
        }
        if p.volume.enabled || p.bulk_read.enabled {
            self.volume.observe(ctx);
        }
        if p.break_glass.enabled {
            self.break_glass.observe(ctx);
        }
        if p.credential_stuffing.enabled || p.privileged_without_mfa.enabled {
            self.sign_in.observe(ctx);
        }
    }

    /// The watermark moved: verdicts that waited for it, and (when `prune`) pruning.
    pub(crate) fn advance(&mut self, now: i64, prune: bool, out: &mut Vec<Finding>) {
        self.consent.advance(now, prune, out);
        self.break_glass.advance(now, prune, out);
        self.volume.advance(now);
        if prune {
            self.token_origin.prune(now);
            self.refresh.prune(now);
            self.revocation.prune(now);
            self.scope.prune(now);
            self.sign_in.prune(now);
        }
    }

    /// Map sizes.
    pub(crate) fn tracked(&self, out: &mut Vec<(&'static str, usize)>) {
        self.token_origin.tracked(out);
        self.refresh.tracked(out);
        self.revocation.tracked(out);
        self.consent.tracked(out);
        self.scope.tracked(out);
        self.volume.tracked(out);
        self.break_glass.tracked(out);
        self.sign_in.tracked(out);
    }
}
