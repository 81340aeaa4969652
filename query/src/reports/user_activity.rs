//! User activity: everything a user (`sub` or `fhirUser`) did, of every event type, filtered
//! by event type, client, resource type, interaction and outcome.

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

/// Base condition: every event type.
pub const BASE: &str = "";

/// Parameters of `/v1/reports/user-activity`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserActivityParams {
    /// User `sub` (readable or raw patient-user subject) or `fhirUser` reference.
    pub user: Option<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Window start.
    pub from: Option<String>,
    /// Window end.
    pub to: Option<String>,
    /// Custos event type.
    pub event_type: Option<String>,
    /// OAuth client.
    pub client: Option<String>,
    /// FHIR resource type.
    pub resource_type: Option<String>,
    /// FHIR interaction.
    pub interaction: Option<String>,
    /// `success` or `failure`.
    pub outcome: Option<String>,
    /// Page size or row cap.
    pub limit: Option<String>,
    /// Cursor.
    pub cursor: Option<String>,
    /// `json`, `csv` or `ndjson`.
    pub format: Option<String>,
}

shared!(UserActivityParams);

handler! {
    /// Everything a user (sub or fhirUser) did.
    user_activity => UserActivity {
        params: UserActivityParams,
        tag: "reports",
        body: Page<EventRow>
    }
}

/// Everything a user did.
pub struct UserActivity;

impl Catalogued for UserActivity {
    type Params = UserActivityParams;
    type Filter = EventFilter;
    const NAME: &'static str = "user-activity";
    const ROLES: &'static [Role] = custos_auth::policy::USER_ACTIVITY;
    const PATH: &'static str = "/v1/reports/user-activity";

    fn plan(
        s: &AppState,
        _: &Caller,
        c: &Common,
        p: &UserActivityParams,
    ) -> Result<Plan<EventFilter>, ApiError> {
        let user = params::required_ident("user", p.user.as_deref())?;
        let event_type = params::event_type(p.event_type.as_deref())?;
        let client = params::ident("client", p.client.as_deref())?;
        let resource_type = params::resource_type("resource_type", p.resource_type.as_deref())?;
        let interaction = params::interaction("interaction", p.interaction.as_deref())?;
        let outcome = params::outcome(p.outcome.as_deref())?;
        let filter = EventFilter {
            user: Some(UserMatch::new(&s.keys, &c.tenant, &user)),
            client: client.clone(),
            resource_type: resource_type.clone(),
            interactions: interaction.clone().map(|i| vec![i]),
            outcome: outcome.clone(),
            event_type: event_type.clone(),
            ..EventFilter::default()
        };
        let audit = AuditParams::new(&s.keys, c)
            .hashed("user", PseudonymKind::Subject, &Some(user))
            .plain("event_type", &event_type)
            .plain("client", &client)
            .plain("resource_type", &resource_type)
            .plain("interaction", &interaction)
            .plain("outcome", &outcome)
            .done();
        Ok(Plan { filter, audit })
    }
}

impl SingleQuery for UserActivity {
    type Row = EventRow;
    type Out = EventRow;

    fn sql(_: &AppState, c: &Common, filter: &EventFilter, limit: u64) -> Sql {
        events(c, BASE, filter, limit)
    }
}
