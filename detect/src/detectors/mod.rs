//! The detectors, one module per family, and what they share: the per-event context and
//! bounded map helpers.

use custos_schemas::{AuditRow, Event};
use serde::{Deserialize, Serialize};

use crate::alert::Finding;
use crate::engine::{Tenant, MAX_KEYS};
use crate::key::KeyMap;

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

/// Every detector's state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Detectors {}

impl Detectors {
    /// Runs every enabled detector on one event.
    pub(crate) fn observe(&mut self, _ctx: &mut Ctx<'_>) {}

    /// The watermark moved: time-based rules and pruning.
    pub(crate) fn advance(&mut self, _now: i64, _out: &mut Vec<Finding>) {}

    /// Map sizes.
    pub(crate) fn tracked(&self, _out: &mut Vec<(&'static str, usize)>) {}
}
