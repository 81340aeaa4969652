//! Break-the-glass review: every `custos.breakglass.opened` (with its reason and how long
//! the emergency access lasted) and every FHIR access made under the `BTG` purpose.

use custos_schemas::PseudonymKind;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{events, ser_ms, ser_opt_ms, EventFilter, EventRow, Keyed, Tabular, UserMatch};
use crate::catalogue::{handler, shared, Catalogued, Plan, SingleQuery};
use crate::error::{ApiError, Problem};
use crate::export::Page;
use crate::params::{self, ms_to_rfc3339, AuditParams, Common, Cursor};
use crate::sql::Sql;
use crate::state::AppState;
use custos_auth::oidc::{Caller, Role};

/// Base condition.
pub const BASE: &str = " AND (event_type = 'custos.breakglass.opened' OR (event_type = 'custos.fhir.access' AND has(purpose_of_use, 'BTG')))";

/// Parameters of `/v1/reports/break-glass`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BreakGlassParams {
    /// Raw patient id.
    pub patient: Option<String>,
    /// Clinician `sub` or `fhirUser`.
    pub user: Option<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Window start.
    pub from: Option<String>,
    /// Window end.
    pub to: Option<String>,
    /// Page size or row cap.
    pub limit: Option<String>,
    /// Cursor.
    pub cursor: Option<String>,
    /// `json`, `csv` or `ndjson`.
    pub format: Option<String>,
}

shared!(BreakGlassParams);

handler! {
    /// Break-the-glass openings (reason, duration) and BTG accesses.
    break_glass => BreakGlassAccess {
        params: BreakGlassParams,
        tag: "reports",
        body: Page<BreakGlass>
    }
}

/// Break-the-glass accesses.
pub struct BreakGlassAccess;

impl Catalogued for BreakGlassAccess {
    type Params = BreakGlassParams;
    type Filter = EventFilter;
    const NAME: &'static str = "break-glass";
    const ROLES: &'static [Role] = custos_auth::policy::COMPLIANCE_REPORTS;
    const PATH: &'static str = "/v1/reports/break-glass";

    fn plan(
        s: &AppState,
        _: &Caller,
        c: &Common,
        p: &BreakGlassParams,
    ) -> Result<Plan<EventFilter>, ApiError> {
        let patient = params::ident("patient", p.patient.as_deref())?;
        let user = params::ident("user", p.user.as_deref())?;
        let filter = EventFilter {
            patients: patient
                .as_deref()
                .map(|pt| s.keys.lookup_all(&c.tenant, PseudonymKind::Patient, pt)),
            user: user
                .as_deref()
                .map(|u| UserMatch::new(&s.keys, &c.tenant, u)),
            ..EventFilter::default()
        };
        let audit = AuditParams::new(&s.keys, c)
            .hashed("patient", PseudonymKind::Patient, &patient)
            .hashed("user", PseudonymKind::Subject, &user)
            .done();
        Ok(Plan { filter, audit })
    }
}

impl SingleQuery for BreakGlassAccess {
    type Row = EventRow;
    type Out = BreakGlass;

    fn sql(_: &AppState, c: &Common, filter: &EventFilter, limit: u64) -> Sql {
        events(c, BASE, filter, limit)
    }
}

/// One break-glass row.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct BreakGlass {
    /// Event identity.
    pub event_key: String,
    /// `opened` (the emergency access was declared) or `access` (a BTG access).
    pub kind: String,
    /// When (RFC 3339).
    #[serde(serialize_with = "ser_ms")]
    #[schema(value_type = String)]
    pub event_time: i64,
    /// Clinician subject.
    pub user_sub: String,
    /// Clinician `fhirUser`.
    pub fhir_user: String,
    /// OAuth client.
    pub client_id: String,
    /// Patient pseudonym.
    pub patient: String,
    /// Stated reason.
    pub reason: String,
    /// End of the emergency access (RFC 3339).
    #[serde(serialize_with = "ser_opt_ms")]
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<i64>,
    /// Seconds the emergency access was granted for.
    pub duration_secs: Option<i64>,
    /// FHIR interaction of an access.
    pub interaction: String,
    /// Resource type of an access.
    pub resource_type: String,
    /// Resource id of an access (pseudonym in the patient compartment).
    pub resource_id: String,
    /// Decision of an access.
    pub decision: String,
}

impl From<EventRow> for BreakGlass {
    fn from(r: EventRow) -> BreakGlass {
        let opened = r.event_type == "custos.breakglass.opened";
        BreakGlass {
            kind: if opened { "opened" } else { "access" }.to_owned(),
            duration_secs: r
                .expires_at
                .filter(|_| opened)
                .map(|e| (e - r.event_time) / 1000),
            event_key: r.event_key,
            event_time: r.event_time,
            user_sub: r.user_sub,
            fhir_user: r.fhir_user,
            client_id: r.client_id,
            patient: r.patient,
            reason: r.break_glass_reason,
            expires_at: r.expires_at,
            interaction: r.interaction,
            resource_type: r.resource_type,
            resource_id: r.resource_id,
            decision: r.decision,
        }
    }
}

impl Keyed for BreakGlass {
    fn cursor(&self) -> Cursor {
        Cursor {
            time_ms: self.event_time,
            key: self.event_key.clone(),
        }
    }
}

impl Tabular for BreakGlass {
    fn header() -> &'static [&'static str] {
        &[
            "event_key",
            "kind",
            "event_time",
            "user_sub",
            "fhir_user",
            "client_id",
            "patient",
            "reason",
            "expires_at",
            "duration_secs",
            "interaction",
            "resource_type",
            "resource_id",
            "decision",
        ]
    }

    fn record(&self) -> Vec<String> {
        vec![
            self.event_key.clone(),
            self.kind.clone(),
            ms_to_rfc3339(self.event_time),
            self.user_sub.clone(),
            self.fhir_user.clone(),
            self.client_id.clone(),
            self.patient.clone(),
            self.reason.clone(),
            super::opt_ms_text(self.expires_at),
            self.duration_secs
                .map(|d| d.to_string())
                .unwrap_or_default(),
            self.interaction.clone(),
            self.resource_type.clone(),
            self.resource_id.clone(),
            self.decision.clone(),
        ]
    }
}
