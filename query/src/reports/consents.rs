//! Consent history of a patient from the audit trail (`custos.consent.*` events). The
//! consent service keeps the authoritative state; this is what the audit recorded.

use serde::Serialize;
use utoipa::ToSchema;

use super::{ser_ms, ser_opt_ms, EventRow, Keyed, Tabular};
use crate::params::{ms_to_rfc3339, Cursor};

/// Base condition.
pub const BASE: &str = " AND event_type IN ('custos.consent.granted', 'custos.consent.revoked', 'custos.consent.expired')";

/// One consent change.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ConsentChange {
    /// Event identity.
    pub event_key: String,
    /// When (RFC 3339).
    #[serde(serialize_with = "ser_ms")]
    #[schema(value_type = String)]
    pub event_time: i64,
    /// `granted`, `revoked` or `expired`.
    pub change: String,
    /// Consent id.
    pub consent_id: String,
    /// Patient pseudonym.
    pub patient: String,
    /// The app the consent covers.
    pub client_id: String,
    /// Scopes covered.
    pub scopes: Vec<String>,
    /// Purposes of use.
    pub purpose: Vec<String>,
    /// Period start (RFC 3339).
    #[serde(serialize_with = "ser_opt_ms")]
    #[schema(value_type = Option<String>)]
    pub period_start: Option<i64>,
    /// Period end (RFC 3339).
    #[serde(serialize_with = "ser_opt_ms")]
    #[schema(value_type = Option<String>)]
    pub period_end: Option<i64>,
    /// Why it changed.
    pub reason: String,
    /// Who changed it.
    pub actor: String,
}

impl From<EventRow> for ConsentChange {
    fn from(r: EventRow) -> ConsentChange {
        ConsentChange {
            change: r
                .event_type
                .strip_prefix("custos.consent.")
                .unwrap_or(&r.event_type)
                .to_owned(),
            event_key: r.event_key,
            event_time: r.event_time,
            consent_id: r.consent_id,
            patient: r.patient,
            client_id: r.client_id,
            scopes: r.scopes,
            purpose: r.purpose_of_use,
            period_start: r.period_start,
            period_end: r.expires_at,
            reason: r.reason,
            actor: r.actor,
        }
    }
}

impl Keyed for ConsentChange {
    fn cursor(&self) -> Cursor {
        Cursor {
            time_ms: self.event_time,
            key: self.event_key.clone(),
        }
    }
}

impl Tabular for ConsentChange {
    fn header() -> &'static [&'static str] {
        &[
            "event_key",
            "event_time",
            "change",
            "consent_id",
            "patient",
            "client_id",
            "scopes",
            "purpose",
            "period_start",
            "period_end",
            "reason",
            "actor",
        ]
    }

    fn record(&self) -> Vec<String> {
        vec![
            self.event_key.clone(),
            ms_to_rfc3339(self.event_time),
            self.change.clone(),
            self.consent_id.clone(),
            self.patient.clone(),
            self.client_id.clone(),
            self.scopes.join(" "),
            self.purpose.join(" "),
            super::opt_ms_text(self.period_start),
            super::opt_ms_text(self.period_end),
            self.reason.clone(),
            self.actor.clone(),
        ]
    }
}
