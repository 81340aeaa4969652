//! Patient access: who accessed a patient's record (FHIR accesses), filtered by user,
//! client, resource type, interaction, outcome, purpose of use and decision.

use custos_schemas::PseudonymKind;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{events, EventFilter, EventRow, UserMatch};
use crate::catalogue::{handler, shared, Catalogued, Plan, SingleQuery};
use crate::error::{ApiError, Problem};
use crate::export::Page;
use crate::params::{self, AuditParams, Common};
use crate::sql::Sql;
use crate::state::AppState;
use custos_auth::oidc::{Caller, Role};

/// Base condition: FHIR accesses.
pub const BASE: &str = " AND event_type = 'custos.fhir.access'";

/// Parameters of `/v1/reports/patient-access`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PatientAccessParams {
    /// Raw patient id (or `Patient/id`); hashed under every live key, never stored.
    pub patient: Option<String>,
    /// Tenant (default: `CUSTOS_DEFAULT_TENANT`).
    pub tenant: Option<String>,
    /// Window start, RFC 3339 or YYYY-MM-DD (default: `CUSTOS_QUERY_DEFAULT_WINDOW_DAYS` before `to`).
    pub from: Option<String>,
    /// Window end, exclusive (default: now).
    pub to: Option<String>,
    /// User `sub` or `fhirUser`.
    pub user: Option<String>,
    /// OAuth client.
    pub client: Option<String>,
    /// FHIR resource type.
    pub resource_type: Option<String>,
    /// FHIR interaction.
    pub interaction: Option<String>,
    /// `success` or `failure`.
    pub outcome: Option<String>,
    /// Purpose of use code (v3-ActReason).
    pub purpose: Option<String>,
    /// `permit` or `deny`.
    pub decision: Option<String>,
    /// Page size (JSON) or row cap (exports).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// `json` (default), `csv` or `ndjson`.
    pub format: Option<String>,
}

shared!(PatientAccessParams);

handler! {
    /// Who accessed a patient's record.
    patient_access => PatientAccess {
        params: PatientAccessParams,
        tag: "reports",
        body: Page<EventRow>
    }
}

/// Who accessed a patient's record.
pub struct PatientAccess;

impl Catalogued for PatientAccess {
    type Params = PatientAccessParams;
    type Filter = EventFilter;
    const NAME: &'static str = "patient-access";
    const ROLES: &'static [Role] = custos_auth::policy::COMPLIANCE_REPORTS;
    const PATH: &'static str = "/v1/reports/patient-access";

    fn plan(
        s: &AppState,
        _: &Caller,
        c: &Common,
        p: &PatientAccessParams,
    ) -> Result<Plan<EventFilter>, ApiError> {
        let patient = params::required_ident("patient", p.patient.as_deref())?;
        let user = params::ident("user", p.user.as_deref())?;
        let client = params::ident("client", p.client.as_deref())?;
        let resource_type = params::resource_type("resource_type", p.resource_type.as_deref())?;
        let interaction = params::interaction("interaction", p.interaction.as_deref())?;
        let outcome = params::outcome(p.outcome.as_deref())?;
        let purpose = params::code("purpose", p.purpose.as_deref())?;
        let decision = params::decision(p.decision.as_deref())?;
        let filter = EventFilter {
            patients: Some(
                s.keys
                    .lookup_all(&c.tenant, PseudonymKind::Patient, &patient),
            ),
            user: user
                .as_deref()
                .map(|u| UserMatch::new(&s.keys, &c.tenant, u)),
            client: client.clone(),
            resource_type: resource_type.clone(),
            interactions: interaction.clone().map(|i| vec![i]),
            outcome: outcome.clone(),
            purpose: purpose.clone(),
            decision: decision.clone(),
            event_type: None,
        };
        let audit = AuditParams::new(&s.keys, c)
            .hashed("patient", PseudonymKind::Patient, &Some(patient))
            .hashed("user", PseudonymKind::Subject, &user)
            .plain("client", &client)
            .plain("resource_type", &resource_type)
            .plain("interaction", &interaction)
            .plain("outcome", &outcome)
            .plain("purpose", &purpose)
            .plain("decision", &decision)
            .done();
        Ok(Plan { filter, audit })
    }
}

impl SingleQuery for PatientAccess {
    type Row = EventRow;
    type Out = EventRow;

    fn sql(_: &AppState, c: &Common, filter: &EventFilter, limit: u64) -> Sql {
        events(c, BASE, filter, limit)
    }
}
