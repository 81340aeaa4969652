//! HIPAA 45 CFR 164.528 accounting of disclosures: the patient's permitted FHIR accesses
//! (date, recipient, description, purpose) over a six-year default window, excluding
//! disclosures to the individual themself and those whose every purpose of use is one of
//! the configured treatment/payment/operations codes. An access that states no purpose is
//! accounted (it cannot be shown to be TPO).

use custos_schemas::PseudonymKind;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{order_limit, scope, ser_ms, EventFilter, EventRow, Keyed, Tabular, SELECT_EVENTS};
use crate::catalogue::{handler, shared, Catalogued, Plan, SingleQuery};
use crate::error::{ApiError, Problem};
use crate::export::Page;
use crate::params::{self, ms_to_rfc3339, AuditParams, Common, Cursor};
use crate::sql::Sql;
use crate::state::{AppState, Settings};
use custos_auth::oidc::{Caller, Role};

/// Parameters of `/v1/reports/disclosures`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DisclosureParams {
    /// Raw patient id.
    pub patient: Option<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Window start (default: six years before `to`).
    pub from: Option<String>,
    /// Window end.
    pub to: Option<String>,
    /// Recipient client.
    pub client: Option<String>,
    /// Page size or row cap.
    pub limit: Option<String>,
    /// Cursor.
    pub cursor: Option<String>,
    /// `json`, `csv` or `ndjson`.
    pub format: Option<String>,
}

shared!(DisclosureParams);

/// Six years (45 CFR 164.528(a)).
pub const DISCLOSURE_WINDOW_DAYS: u32 = 6 * 365 + 2;

handler! {
    /// HIPAA 164.528 accounting of disclosures for a patient.
    disclosures => Disclosures {
        params: DisclosureParams,
        tag: "reports",
        body: Page<Disclosure>
    }
}

/// HIPAA accounting of disclosures.
pub struct Disclosures;

impl Catalogued for Disclosures {
    type Params = DisclosureParams;
    type Filter = EventFilter;
    const NAME: &'static str = "disclosures";
    const ROLES: &'static [Role] = custos_auth::policy::COMPLIANCE_REPORTS;
    const PATH: &'static str = "/v1/reports/disclosures";

    fn window_days(_: &Settings) -> u32 {
        DISCLOSURE_WINDOW_DAYS
    }

    fn plan(
        s: &AppState,
        _: &Caller,
        c: &Common,
        p: &DisclosureParams,
    ) -> Result<Plan<EventFilter>, ApiError> {
        let patient = params::required_ident("patient", p.patient.as_deref())?;
        let client = params::ident("client", p.client.as_deref())?;
        let filter = EventFilter {
            patients: Some(
                s.keys
                    .lookup_all(&c.tenant, PseudonymKind::Patient, &patient),
            ),
            client: client.clone(),
            ..EventFilter::default()
        };
        let excluded = s.settings.excluded_purposes.join(",");
        let audit = AuditParams::new(&s.keys, c)
            .hashed("patient", PseudonymKind::Patient, &Some(patient))
            .plain("client", &client)
            .plain("excluded_purposes", &Some(excluded))
            .done();
        Ok(Plan { filter, audit })
    }
}

impl SingleQuery for Disclosures {
    type Row = EventRow;
    type Out = Disclosure;

    fn sql(s: &AppState, c: &Common, filter: &EventFilter, limit: u64) -> Sql {
        build(c, filter, &s.settings.excluded_purposes, limit)
    }
}

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
