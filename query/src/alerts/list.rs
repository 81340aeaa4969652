//! `GET /v1/alerts`: the latest revision of each alert with its workflow state, filtered,
//! newest `last_seen` first, paged with the reports' cursor (position of the last item).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use custos_auth::audit::Asked;
use custos_auth::oidc::Caller;
use custos_schemas::PseudonymKind;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::{at_least, state_sql, AlertItem, StateFilter, StateRow, READ, STATES};
use crate::access::{authorize, tenant_allowed};
use crate::error::{ApiError, Problem, ValidQuery};
use crate::export::{audited, page_of};
use crate::params::{self, Common};
use crate::reports::UserMatch;
use crate::state::AppState;

/// Parameters of `GET /v1/alerts`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertListParams {
    /// `open`, `acknowledged`, `closed` or `all` (default).
    pub status: Option<String>,
    /// Lowest severity: `low`, `medium`, `high` or `critical`.
    pub severity: Option<String>,
    /// Detector.
    pub detector: Option<String>,
    /// User subject (readable, or raw: matched under every live key).
    pub subject: Option<String>,
    /// Token id.
    pub jti: Option<String>,
    /// OAuth client.
    pub client: Option<String>,
    /// Assignee.
    pub assignee: Option<String>,
    /// Latest evidence at or after (RFC 3339 or YYYY-MM-DD).
    pub since: Option<String>,
    /// Latest evidence before (RFC 3339 or YYYY-MM-DD).
    pub until: Option<String>,
    /// Tenant (default: `CUSTOS_DEFAULT_TENANT`).
    pub tenant: Option<String>,
    /// Page size.
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of alerts.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertPage {
    /// Id of the query-audit record of this answer.
    pub query_id: String,
    /// Tenant.
    pub tenant: String,
    /// The alerts, newest `last_seen` first.
    pub alerts: Vec<AlertItem>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The validated filter and what the query audit records.
fn plan(s: &AppState, c: &Common, p: &AlertListParams) -> Result<(StateFilter, Value), ApiError> {
    let status = match p.status.as_deref() {
        None | Some("all") => None,
        Some(v) if STATES.contains(&v) => Some(v.to_owned()),
        Some(_) => {
            return Err(ApiError::bad(
                "status must be open, acknowledged, closed or all",
            ))
        }
    };
    let severity = p.severity.as_deref();
    let severities = severity
        .map(|v| {
            at_least(v)
                .ok_or_else(|| ApiError::bad("severity must be low, medium, high or critical"))
        })
        .transpose()?;
    let detector = params::code("detector", p.detector.as_deref())?;
    let subject = params::ident("subject", p.subject.as_deref())?;
    let jti = params::ident("jti", p.jti.as_deref())?;
    let client = params::ident("client", p.client.as_deref())?;
    let assignee = params::ident("assignee", p.assignee.as_deref())?;
    let since_ms = p
        .since
        .as_deref()
        .map(|v| params::parse_time("since", v))
        .transpose()?;
    let until_ms = p
        .until
        .as_deref()
        .map(|v| params::parse_time("until", v))
        .transpose()?;
    if let (Some(a), Some(b)) = (since_ms, until_ms) {
        if a >= b {
            return Err(ApiError::bad("since must be before until"));
        }
    }
    let filter = StateFilter {
        tenant: c.tenant.clone(),
        alert_id: None,
        status,
        severities,
        detector,
        subjects: subject
            .as_deref()
            .map(|u| UserMatch::new(&s.keys, &c.tenant, u).subs),
        jti,
        client,
        assignee,
        since_ms,
        until_ms,
        before: c.after.clone(),
    };
    let mut audit = Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            audit.insert(k.to_owned(), v.into());
        }
    };
    put("status", filter.status.clone());
    put("severity", severity.map(str::to_owned));
    put("detector", filter.detector.clone());
    put(
        "subject",
        subject.map(|u| s.keys.pseudonymize(&c.tenant, PseudonymKind::Subject, &u)),
    );
    put("jti", filter.jti.clone());
    put("client", filter.client.clone());
    put("assignee", filter.assignee.clone());
    put("since", p.since.clone());
    put("until", p.until.clone());
    audit.insert("limit".into(), c.limit.into());
    audit.insert("cursor".into(), c.after.is_some().into());
    Ok((filter, Value::Object(audit)))
}

/// Alerts: the latest revision of each, its workflow state and links, newest first.
#[utoipa::path(get, path = "/v1/alerts", params(AlertListParams),
    responses((status = 200, body = AlertPage), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])), tag = "alerts")]
pub async fn list_alerts(
    State(s): State<AppState>,
    caller: Caller,
    ValidQuery(p): ValidQuery<AlertListParams>,
) -> Result<Response, ApiError> {
    authorize(&s, &caller, READ)?;
    let c = Common::parse(
        &s.settings.limits,
        s.settings.limits.default_window_days,
        p.tenant.as_deref(),
        None,
        None,
        p.limit.as_deref(),
        p.cursor.as_deref(),
        None,
    )?;
    tenant_allowed(&caller, &c.tenant)?;
    let (filter, audit) = plan(&s, &c, &p)?;
    let asked = Asked::new(&caller, READ.name, &c.tenant, audit, "json");
    let sql = state_sql(&filter, c.limit + 1);
    let rows: Vec<StateRow> = audited(&s, &asked, "answering", async {
        Ok(sql.query(&s.reader).fetch_all().await?)
    })
    .await?;
    let (alerts, next_cursor) = page_of(&s, &asked, rows, c.limit, AlertItem::from).await?;
    Ok(Json(AlertPage {
        query_id: asked.query_id.clone(),
        tenant: c.tenant,
        alerts,
        next_cursor,
    })
    .into_response())
}
