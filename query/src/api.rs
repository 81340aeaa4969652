//! The `/v1` report endpoints, one [`Catalogued`] declaration each: its parameters, roles,
//! validation (400 problem naming the parameter; raw ids resolved to pseudonyms under every
//! live key), bound SQL and what the query audit records. Each handler hands its validated
//! query string to [`serve`] (authenticate by extractor, authorize, audit, fetch, page or
//! stream). The token trace answers its lifecycle summary beside its page and has its own
//! path.

use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use custos_schemas::PseudonymKind;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::access::{authorize, query_audit_tenants, tenant_allowed, Report};
use crate::catalogue::{serve, Catalogued, CommonQuery, Plan, Shared};
use crate::error::{ApiError, Problem, ValidQuery};
use crate::export::{audited, page_of, stream_prepared, Page};
use crate::params::{self, AuditParams, Common, Format};
use crate::reports::break_glass::{self, BreakGlass};
use crate::reports::consents::{self, ConsentChange};
use crate::reports::disclosures::{self, Disclosure};
use crate::reports::query_audit::{self, QueryAuditFilter, ReportQuery};
use crate::reports::revocation::{self, Violation, ViolationFilter};
use crate::reports::token_trace::{
    self, Deadlines, Found, KeyRow, Selector, SummaryRow, TokenSummary, TraceEvent,
};
use crate::reports::{self, EventFilter, EventRow, UserMatch};
use crate::sql::Sql;
use crate::state::{AppState, Settings};
use custos_auth::audit::Asked;
use custos_auth::oidc::Caller;

/// Declares the axum handler of a catalogued report: its query string validated into the
/// report's parameters and handed to [`serve`] (doc comment and OpenAPI attributes pass
/// through).
macro_rules! handler {
    ($(#[$meta:meta])* $name:ident => $report:ty) => {
        $(#[$meta])*
        pub async fn $name(
            State(s): State<AppState>,
            caller: Caller,
            ValidQuery(p): ValidQuery<<$report as Catalogued>::Params>,
        ) -> Result<Response, ApiError> {
            serve::<$report>(&s, &caller, p).await
        }
    };
}

/// Implements [`Shared`] for parameter structs holding the six shared fields.
macro_rules! shared {
    ($($params:ty),+) => {$(
        impl Shared for $params {
            fn shared(&self) -> CommonQuery<'_> {
                CommonQuery {
                    tenant: self.tenant.as_deref(),
                    from: self.from.as_deref(),
                    to: self.to.as_deref(),
                    limit: self.limit.as_deref(),
                    cursor: self.cursor.as_deref(),
                    format: self.format.as_deref(),
                }
            }
        }
    )+};
}

shared!(
    PatientAccessParams,
    UserActivityParams,
    TokenTraceParams,
    DisclosureParams,
    BreakGlassParams,
    ViolationParams,
    ConsentParams,
    QueryAuditParams
);

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

handler! {
    /// Who accessed a patient's record.
    #[utoipa::path(get, path = "/v1/reports/patient-access", params(PatientAccessParams),
        responses((status = 200, body = Page<EventRow>), (status = 400, body = Problem),
            (status = 401, body = Problem), (status = 403, body = Problem)),
        security(("bearer" = [])), tag = "reports")]
    patient_access => PatientAccess
}

/// Who accessed a patient's record.
pub struct PatientAccess;

impl Catalogued for PatientAccess {
    type Params = PatientAccessParams;
    type Filter = EventFilter;
    type Row = EventRow;
    type Out = EventRow;
    const REPORT: Report = Report::PatientAccess;

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

    fn sql(_: &AppState, c: &Common, filter: &EventFilter, limit: u64) -> Sql {
        reports::events(c, reports::PATIENT_ACCESS, filter, limit)
    }
}

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

handler! {
    /// Everything a user (sub or fhirUser) did.
    #[utoipa::path(get, path = "/v1/reports/user-activity", params(UserActivityParams),
        responses((status = 200, body = Page<EventRow>), (status = 400, body = Problem),
            (status = 401, body = Problem), (status = 403, body = Problem)),
        security(("bearer" = [])), tag = "reports")]
    user_activity => UserActivity
}

/// Everything a user did.
pub struct UserActivity;

impl Catalogued for UserActivity {
    type Params = UserActivityParams;
    type Filter = EventFilter;
    type Row = EventRow;
    type Out = EventRow;
    const REPORT: Report = Report::UserActivity;

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

    fn sql(_: &AppState, c: &Common, filter: &EventFilter, limit: u64) -> Sql {
        reports::events(c, reports::USER_ACTIVITY, filter, limit)
    }
}

/// Parameters of `/v1/reports/token-trace` (exactly one of jti, session, client).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TokenTraceParams {
    /// Token id.
    pub jti: Option<String>,
    /// AS session id.
    pub session: Option<String>,
    /// OAuth client.
    pub client: Option<String>,
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
    /// `json`, `csv` or `ndjson` (exports stream the flagged events).
    pub format: Option<String>,
}

/// A token trace page: lifecycle summaries plus the flagged events.
#[derive(Debug, Serialize, ToSchema)]
pub struct TracePage {
    /// The events page.
    #[serde(flatten)]
    pub page: Page<TraceEvent>,
    /// Per-token lifecycle over the whole window.
    pub tokens: Vec<TokenSummary>,
}

/// A token's lifecycle, accesses, IPs and scopes; late uses flagged.
#[utoipa::path(get, path = "/v1/reports/token-trace", params(TokenTraceParams),
    responses((status = 200, body = TracePage), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])), tag = "reports")]
pub async fn token_trace(
    State(s): State<AppState>,
    caller: Caller,
    ValidQuery(p): ValidQuery<TokenTraceParams>,
) -> Result<Response, ApiError> {
    let report = Report::TokenTrace;
    authorize(&s, &caller, report)?;
    let c = p
        .shared()
        .parse(&s.settings, s.settings.limits.default_window_days)?;
    tenant_allowed(&caller, &c.tenant)?;
    let jti = params::ident("jti", p.jti.as_deref())?;
    let session = params::ident("session", p.session.as_deref())?;
    let client = params::ident("client", p.client.as_deref())?;
    let sel = match (jti, session, client) {
        (Some(j), None, None) => Selector::Jti(j),
        (None, Some(s), None) => Selector::Session(s),
        (None, None, Some(c)) => Selector::Client(c),
        _ => {
            return Err(ApiError::bad(
                "exactly one of jti, session, client is required",
            ))
        }
    };
    let (name, value) = sel.describe();
    let audit = AuditParams::new(&s.keys, &c)
        .plain(name, &Some(value.to_owned()))
        .done();
    let asked = Asked::new(&caller, report.name(), &c.tenant, audit, c.format.as_str());
    if c.format != Format::Json {
        // The index and the summary are read, like the export itself, only while the
        // `streaming` record is written: nothing is read for a request left unrecorded.
        let slot = s.exports.acquire(&caller.sub)?;
        let timer = std::time::Instant::now();
        let (st, cc, sl) = (&s, &c, &sel);
        let prepare = async move {
            let found = trace_keys(st, cc, sl).await?;
            let summary: Vec<SummaryRow> = if found.is_empty() {
                Vec::new()
            } else {
                let sql = token_trace::summary(cc, sl, &found);
                sql.query(&st.reader).fetch_all().await?
            };
            let deadlines = Deadlines::new(&summary);
            let map = move |r: EventRow| deadlines.flag(r);
            Ok((token_trace::events(cc, sl, &found, cc.limit), map))
        };
        let out = stream_prepared(&s, asked, slot, c.format, prepare).await;
        metrics::histogram!("custos_query_report_seconds", "report" => report.name())
            .record(timer.elapsed().as_secs_f64());
        return out;
    }
    // The index is read once; the summary and the page's events are then independent
    // queries over the keys it found: run them together. The asked record is written
    // meanwhile.
    let (summary, events) = audited(&s, &asked, "answering", async {
        let found = trace_keys(&s, &c, &sel).await?;
        if found.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let summary_sql = token_trace::summary(&c, &sel, &found);
        let sql = token_trace::events(&c, &sel, &found, c.limit + 1);
        Ok(tokio::try_join!(
            summary_sql.query(&s.reader).fetch_all::<SummaryRow>(),
            sql.query(&s.reader).fetch_all::<EventRow>()
        )?)
    })
    .await?;
    let deadlines = Deadlines::new(&summary);
    let (rows, next) = page_of(&s, &asked, events, c.limit, |r| deadlines.flag(r)).await?;
    let page = Page {
        report: asked.report().to_owned(),
        query_id: asked.query_id.clone(),
        tenant: c.tenant.clone(),
        from: c.window.from_rfc3339(),
        to: c.window.to_rfc3339(),
        rows,
        next_cursor: next,
    };
    Ok(Json(TracePage {
        page,
        tokens: summary.into_iter().map(TokenSummary::from).collect(),
    })
    .into_response())
}

/// Reads where a trace's events are from the token index (once per trace).
async fn trace_keys(s: &AppState, c: &Common, sel: &Selector) -> Result<Found, ApiError> {
    Ok(match sel.keys(c) {
        Some(sql) => Found::new(Some(sql.query(&s.reader).fetch_all::<KeyRow>().await?)),
        None => Found::new(None),
    })
}

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

/// Six years (45 CFR 164.528(a)).
pub const DISCLOSURE_WINDOW_DAYS: u32 = 6 * 365 + 2;

handler! {
    /// HIPAA 164.528 accounting of disclosures for a patient.
    #[utoipa::path(get, path = "/v1/reports/disclosures", params(DisclosureParams),
        responses((status = 200, body = Page<Disclosure>), (status = 400, body = Problem),
            (status = 401, body = Problem), (status = 403, body = Problem)),
        security(("bearer" = [])), tag = "reports")]
    disclosures => Disclosures
}

/// HIPAA accounting of disclosures.
pub struct Disclosures;

impl Catalogued for Disclosures {
    type Params = DisclosureParams;
    type Filter = EventFilter;
    type Row = EventRow;
    type Out = Disclosure;
    const REPORT: Report = Report::Disclosures;

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

    fn sql(s: &AppState, c: &Common, filter: &EventFilter, limit: u64) -> Sql {
        disclosures::build(c, filter, &s.settings.excluded_purposes, limit)
    }
}

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

handler! {
    /// Break-the-glass openings (reason, duration) and BTG accesses.
    #[utoipa::path(get, path = "/v1/reports/break-glass", params(BreakGlassParams),
        responses((status = 200, body = Page<BreakGlass>), (status = 400, body = Problem),
            (status = 401, body = Problem), (status = 403, body = Problem)),
        security(("bearer" = [])), tag = "reports")]
    break_glass => BreakGlassAccess
}

/// Break-the-glass accesses.
pub struct BreakGlassAccess;

impl Catalogued for BreakGlassAccess {
    type Params = BreakGlassParams;
    type Filter = EventFilter;
    type Row = EventRow;
    type Out = BreakGlass;
    const REPORT: Report = Report::BreakGlass;

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

    fn sql(_: &AppState, c: &Common, filter: &EventFilter, limit: u64) -> Sql {
        reports::events(c, break_glass::BASE, filter, limit)
    }
}

/// Parameters of `/v1/reports/revocation-violations`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ViolationParams {
    /// Raw patient id (needed to link across a key rotation).
    pub patient: Option<String>,
    /// Client.
    pub client: Option<String>,
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

handler! {
    /// Accesses permitted after a consent revocation (past the grace period).
    #[utoipa::path(get, path = "/v1/reports/revocation-violations", params(ViolationParams),
        responses((status = 200, body = Page<Violation>), (status = 400, body = Problem),
            (status = 401, body = Problem), (status = 403, body = Problem)),
        security(("bearer" = [])), tag = "reports")]
    revocation_violations => RevocationViolations
}

/// Accesses after consent revocation.
pub struct RevocationViolations;

impl Catalogued for RevocationViolations {
    type Params = ViolationParams;
    type Filter = ViolationFilter;
    type Row = Violation;
    type Out = Violation;
    const REPORT: Report = Report::RevocationViolations;

    fn plan(
        s: &AppState,
        _: &Caller,
        c: &Common,
        p: &ViolationParams,
    ) -> Result<Plan<ViolationFilter>, ApiError> {
        let patient = params::ident("patient", p.patient.as_deref())?;
        let client = params::ident("client", p.client.as_deref())?;
        let filter = ViolationFilter {
            patients: patient
                .as_deref()
                .map(|pt| s.keys.lookup_all(&c.tenant, PseudonymKind::Patient, pt)),
            client: client.clone(),
        };
        let grace = s.settings.revocation_grace_secs;
        let audit = AuditParams::new(&s.keys, c)
            .hashed("patient", PseudonymKind::Patient, &patient)
            .plain("client", &client)
            .plain("grace_secs", &Some(grace.to_string()))
            .done();
        Ok(Plan { filter, audit })
    }

    fn sql(s: &AppState, c: &Common, filter: &ViolationFilter, limit: u64) -> Sql {
        revocation::build(c, filter, s.settings.revocation_grace_secs, limit)
    }
}

/// Parameters of `/v1/reports/consent-history`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsentParams {
    /// Raw patient id.
    pub patient: Option<String>,
    /// Client.
    pub client: Option<String>,
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

handler! {
    /// A patient's consent history as recorded in the audit trail.
    #[utoipa::path(get, path = "/v1/reports/consent-history", params(ConsentParams),
        responses((status = 200, body = Page<ConsentChange>), (status = 400, body = Problem),
            (status = 401, body = Problem), (status = 403, body = Problem)),
        security(("bearer" = [])), tag = "consents")]
    consent_history => ConsentHistory
}

/// Consent history from the audit trail.
pub struct ConsentHistory;

impl Catalogued for ConsentHistory {
    type Params = ConsentParams;
    type Filter = EventFilter;
    type Row = EventRow;
    type Out = ConsentChange;
    const REPORT: Report = Report::Consents;

    fn plan(
        s: &AppState,
        _: &Caller,
        c: &Common,
        p: &ConsentParams,
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
        let audit = AuditParams::new(&s.keys, c)
            .hashed("patient", PseudonymKind::Patient, &Some(patient))
            .plain("client", &client)
            .done();
        Ok(Plan { filter, audit })
    }

    fn sql(_: &AppState, c: &Common, filter: &EventFilter, limit: u64) -> Sql {
        reports::events(c, consents::BASE, filter, limit)
    }
}

/// Parameters of `/v1/reports/query-audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QueryAuditParams {
    /// Caller `sub`.
    pub caller: Option<String>,
    /// Report name.
    pub report: Option<String>,
    /// Tenant queried (no default: all tenants).
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

handler! {
    /// The report queries answered (auditors only).
    #[utoipa::path(get, path = "/v1/reports/query-audit", params(QueryAuditParams),
        responses((status = 200, body = Page<ReportQuery>), (status = 400, body = Problem),
            (status = 401, body = Problem), (status = 403, body = Problem)),
        security(("bearer" = [])), tag = "reports")]
    query_audit_report => QueryAuditReport
}

/// The query audit itself.
pub struct QueryAuditReport;

impl Catalogued for QueryAuditReport {
    type Params = QueryAuditParams;
    type Filter = QueryAuditFilter;
    type Row = ReportQuery;
    type Out = ReportQuery;
    const REPORT: Report = Report::QueryAudit;

    /// No default tenant here: without `tenant` the report covers what the caller may read.
    fn check_tenant(caller: &Caller, p: &QueryAuditParams, c: &Common) -> Result<(), ApiError> {
        if p.tenant.is_some() {
            tenant_allowed(caller, &c.tenant)?;
        }
        Ok(())
    }

    fn plan(
        s: &AppState,
        caller: &Caller,
        c: &Common,
        p: &QueryAuditParams,
    ) -> Result<Plan<QueryAuditFilter>, ApiError> {
        let filter = QueryAuditFilter {
            caller: params::ident("caller", p.caller.as_deref())?,
            report: params::code("report", p.report.as_deref())?,
            tenants: query_audit_tenants(caller, p.tenant.as_ref().map(|_| c.tenant.as_str())),
        };
        let audit = AuditParams::new(&s.keys, c)
            .plain("caller", &filter.caller)
            .plain("report", &filter.report)
            .plain("tenant", &filter.tenants.as_ref().map(|t| t.join(",")))
            .done();
        Ok(Plan { filter, audit })
    }

    fn recorded_tenant<'c>(p: &QueryAuditParams, c: &'c Common) -> &'c str {
        if p.tenant.is_some() {
            &c.tenant
        } else {
            ""
        }
    }

    fn sql(_: &AppState, c: &Common, filter: &QueryAuditFilter, limit: u64) -> Sql {
        query_audit::build(c, filter, limit)
    }
}

/// The `/v1` router.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/reports/patient-access", get(patient_access))
        .route("/v1/reports/user-activity", get(user_activity))
        .route("/v1/reports/token-trace", get(token_trace))
        .route("/v1/reports/disclosures", get(disclosures))
        .route("/v1/reports/break-glass", get(break_glass))
        .route(
            "/v1/reports/revocation-violations",
            get(revocation_violations),
        )
        .route("/v1/reports/query-audit", get(query_audit_report))
        .route(CONSENT_HISTORY, get(consent_history))
        .merge(moved())
}

/// Path of the consent-history report.
pub const CONSENT_HISTORY: &str = "/v1/reports/consent-history";
/// Former path of the consent-history report; it answers 308 to [`CONSENT_HISTORY`] (the
/// consent service's `GET /v1/consents` is the current consent state, not this history).
pub const CONSENT_HISTORY_FORMER: &str = "/v1/consents";

/// Former paths answering 308 Permanent Redirect to their report, query string kept, before
/// any authentication (the redirect reveals nothing; the client repeats the request with its
/// bearer token at the new path).
pub fn moved<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route(CONSENT_HISTORY_FORMER, get(consent_history_moved))
}

async fn consent_history_moved(uri: Uri) -> Redirect {
    match uri.query() {
        Some(q) => Redirect::permanent(&format!("{CONSENT_HISTORY}?{q}")),
        None => Redirect::permanent(CONSENT_HISTORY),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn location(uri: &str) -> (StatusCode, Option<String>) {
        let resp = moved::<()>()
            .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().expect("ascii").to_owned());
        (resp.status(), loc)
    }

    #[tokio::test]
    async fn former_consent_path_redirects_permanently_with_its_query() {
        let (status, loc) =
            location("/v1/consents?tenant=t1&patient=Patient%2Fp%201&format=csv").await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            loc.as_deref(),
            Some("/v1/reports/consent-history?tenant=t1&patient=Patient%2Fp%201&format=csv")
        );
        let (status, loc) = location("/v1/consents").await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(loc.as_deref(), Some("/v1/reports/consent-history"));
    }
}
