//! HIPAA 45 CFR 164.528 accounting of disclosures: the patient's permitted FHIR accesses
//! (date, recipient, description, purpose) over a six-year default window, excluding
//! disclosures to the individual themself and those whose every purpose of use is one of
//! the configured treatment/payment/operations codes. An access that states no purpose is
//! accounted (it cannot be shown to be TPO).

use serde::Serialize;
use utoipa::ToSchema;

use super::{order_limit, scope, ser_ms, EventFilter, EventRow, Keyed, Tabular, SELECT_EVENTS};
use crate::params::{ms_to_rfc3339, Common, Cursor};
use crate::sql::Sql;

/// Base condition: permitted accesses by anyone but the patient.
pub const BASE: &str =
    " AND event_type = 'custos.fhir.access' AND decision = 'permit' AND user_kind != 'patient'";

/// The disclosure query; `excluded` are the TPO purpose codes.
pub fn build(c: &Common, filter: &EventFilter, excluded: &[String], limit: u64) -> Sql {
    let mut sql = Sql::new(SELECT_EVENTS);
    scope(&mut sql, c);
    sql.push(BASE);
    filter.apply(&mut sql);
    if !excluded.is_empty() {
        sql.bind1(
            " AND NOT (notEmpty(purpose_of_use) AND hasAll(?, purpose_of_use))",
            excluded.to_vec(),
        );
    }
    order_limit(&mut sql, limit);
    sql
}

/// One accounting entry.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Disclosure {
    /// Event identity.
    pub event_key: String,
    /// Date of the disclosure (RFC 3339).
    #[serde(serialize_with = "ser_ms")]
    #[schema(value_type = String)]
    pub date: i64,
    /// Recipient application (OAuth client).
    pub recipient_client: String,
    /// Recipient user (`sub`).
    pub recipient_user: String,
    /// Recipient `fhirUser`.
    pub recipient_fhir_user: String,
    /// What was disclosed, e.g. `read Observation`.
    pub description: String,
    /// Resource type.
    pub resource_type: String,
    /// Resource id (pseudonym in the patient compartment).
    pub resource_id: String,
    /// Purposes of use.
    pub purpose: Vec<String>,
}

impl From<EventRow> for Disclosure {
    fn from(r: EventRow) -> Disclosure {
        Disclosure {
            description: format!("{} {}", r.interaction, r.resource_type),
            event_key: r.event_key,
            date: r.event_time,
            recipient_client: r.client_id,
            recipient_user: r.user_sub,
            recipient_fhir_user: r.fhir_user,
            resource_type: r.resource_type,
            resource_id: r.resource_id,
            purpose: r.purpose_of_use,
        }
    }
}

impl Keyed for Disclosure {
    fn cursor(&self) -> Cursor {
        Cursor {
            time_ms: self.date,
            key: self.event_key.clone(),
        }
    }
}

impl Tabular for Disclosure {
    fn header() -> &'static [&'static str] {
        &[
            "event_key",
            "date",
            "recipient_client",
            "recipient_user",
            "recipient_fhir_user",
            "description",
            "resource_type",
            "resource_id",
            "purpose",
        ]
    }

    fn record(&self) -> Vec<String> {
        vec![
            self.event_key.clone(),
            ms_to_rfc3339(self.date),
            self.recipient_client.clone(),
            self.recipient_user.clone(),
            self.recipient_fhir_user.clone(),
            self.description.clone(),
            self.resource_type.clone(),
            self.resource_id.clone(),
            self.purpose.join(" "),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::tests::common;
    use crate::sql::Arg;

    #[test]
    fn excludes_tpo_only_when_configured() {
        let f = EventFilter {
            patients: Some(vec!["ps1.k1.x".into()]),
            ..EventFilter::default()
        };
        let with = build(&common(), &f, &["TREAT".into(), "HPAYMT".into()], 10);
        assert!(with.text().contains("hasAll(?, purpose_of_use)"));
        assert!(with.text().contains("user_kind != 'patient'"));
        assert!(with
            .args()
            .contains(&Arg::Strs(vec!["TREAT".into(), "HPAYMT".into()])));
        assert_eq!(with.text().matches('?').count(), with.args().len());
        let without = build(&common(), &f, &[], 10);
        assert!(!without.text().contains("hasAll"));
    }
}
