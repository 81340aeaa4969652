//! Break-the-glass review: every `custos.breakglass.opened` (with its reason and how long
//! the emergency access lasted) and every FHIR access made under the `BTG` purpose, each with
//! the state of its review item in the break-glass review queue ([`crate::reviews`]): an
//! opening is its own review item; an access belongs to the latest opening of the same user
//! at or before it (looked for up to [`OPENING_LOOKBACK_DAYS`] before the window).

use custos_schemas::PseudonymKind;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use clickhouse::Row;

use super::{events, ms, ser_ms, ser_opt_ms, EventFilter, Keyed, Tabular, UserMatch};
use crate::catalogue::{handler, shared, Catalogued, Plan, SingleQuery};
use crate::error::{ApiError, Problem};
use crate::export::Page;
use crate::params::{self, ms_to_rfc3339, AuditParams, Common, Cursor};
use crate::sql::{Arg, Sql};
use crate::state::AppState;
use custos_auth::oidc::{Caller, Role};

/// How far before the window an access's opening is looked for, in days.
pub const OPENING_LOOKBACK_DAYS: i64 = 7;

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
    type Row = BreakGlassRow;
    type Out = BreakGlass;

    fn sql(s: &AppState, c: &Common, filter: &EventFilter, limit: u64) -> Sql {
        with_reviews(
            c,
            filter,
            limit,
            s.settings.review_due.due_ms(&c.tenant),
            s.clock.now_ms(),
        )
    }
}

/// The report's rows (at most `limit`) with the review item each belongs to: its opening
/// (an opening is its own), due `due_ms` after it, its state at `now_ms` and decision.
pub fn with_reviews(c: &Common, filter: &EventFilter, limit: u64, due_ms: i64, now_ms: i64) -> Sql {
    let mut sql = Sql::new(
        "SELECT event_key, event_type, event_time, user_sub, fhir_user, client_id, patient, \
break_glass_reason, expires_at, interaction, resource_type, resource_id, decision, \
o_key AS review_id, ",
    );
    sql.bind1(
        "if(o_key = '', NULL, fromUnixTimestamp64Milli(toUnixTimestamp64Milli(o_time) + ?, 'UTC')) AS review_due_at, ",
        due_ms,
    );
    sql.bind(
        "multiIf(o_key = '', '', d_decision != '', d_decision, \
toUnixTimestamp64Milli(o_time) + ? <= ?, 'overdue', 'open') AS review_state, ",
        [due_ms, now_ms],
    );
    sql.push("d_decision AS review_decision FROM (");
    sql.append(events(c, BASE, filter, limit));
    sql.push(
        ") AS e ASOF LEFT JOIN (SELECT event_key AS o_key, user_sub AS o_user, event_time AS o_time \
FROM custos.audit_events FINAL WHERE ",
    );
    sql.bind1("tenant = ?", &c.tenant)
        .push(" AND event_type = 'custos.breakglass.opened'")
        .bind(
            concat!(" AND event_time >= ", ms!(), " AND event_time < ", ms!()),
            [
                c.window.from_ms - OPENING_LOOKBACK_DAYS * 86_400_000,
                c.window.to_ms,
            ],
        );
    sql.push(
        ") AS o ON user_sub = o_user AND event_time >= o_time LEFT JOIN (SELECT \
review_id AS d_review_id, argMax(decision, (decided_at, decision_id)) AS d_decision \
FROM custos.break_glass_reviews FINAL WHERE ",
    );
    sql.bind1("tenant = ?", Arg::from(&c.tenant));
    sql.push(" GROUP BY review_id) AS d ON o_key = d_review_id ORDER BY event_time, event_key");
    sql
}

/// A break-glass row as read: the audit row's columns the report shows and its review.
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct BreakGlassRow {
    /// Event identity.
    pub event_key: String,
    /// Event type.
    pub event_type: String,
    /// When (ms).
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
    pub break_glass_reason: String,
    /// End of the emergency access (ms).
    pub expires_at: Option<i64>,
    /// FHIR interaction.
    pub interaction: String,
    /// Resource type.
    pub resource_type: String,
    /// Resource id.
    pub resource_id: String,
    /// `permit` / `deny` of an access.
    pub decision: String,
    /// The review item (the opening's event key), empty when no opening was found.
    pub review_id: String,
    /// When the review is due (ms).
    pub review_due_at: Option<i64>,
    /// `open`, `overdue`, `justified`, `unjustified`, or empty without a review item.
    pub review_state: String,
    /// The review's decision, empty until decided.
    pub review_decision: String,
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
    /// Its review item in the break-glass review queue: the opening's event key (empty when
    /// no opening of the user precedes an access).
    pub review_id: String,
    /// When the review is due (RFC 3339).
    #[serde(serialize_with = "ser_opt_ms")]
    #[schema(value_type = Option<String>)]
    pub review_due_at: Option<i64>,
    /// `open`, `overdue`, `justified` or `unjustified` (empty without a review item).
    pub review_state: String,
    /// The review's decision (empty until decided).
    pub review_decision: String,
}

impl From<BreakGlassRow> for BreakGlass {
    fn from(r: BreakGlassRow) -> BreakGlass {
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
            review_id: r.review_id,
            review_due_at: r.review_due_at,
            review_state: r.review_state,
            review_decision: r.review_decision,
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
            "review_id",
            "review_due_at",
            "review_state",
            "review_decision",
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
            self.review_id.clone(),
            super::opt_ms_text(self.review_due_at),
            self.review_state.clone(),
            self.review_decision.clone(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::tests::common;

    #[test]
    fn the_review_join_binds_every_value() {
        let filter = EventFilter {
            user: Some(UserMatch {
                subs: vec!["dr-bob'".into()],
                fhir_users: vec![],
            }),
            ..EventFilter::default()
        };
        let sql = with_reviews(&common(), &filter, 51, 3_600_000, 7);
        assert_eq!(sql.text().matches('?').count(), sql.args().len());
        assert!(!sql.text().contains("dr-bob'"));
        assert!(sql.text().contains("ASOF LEFT JOIN"));
        assert!(sql.text().ends_with("ORDER BY event_time, event_key"));
        assert_eq!(sql.args()[0], Arg::Int(3_600_000));
        assert!(sql.args().contains(&Arg::UInt(51)));
        // The openings are looked for a week before the window.
        assert!(sql
            .args()
            .contains(&Arg::Int(1_000 - OPENING_LOOKBACK_DAYS * 86_400_000)));
    }
}
