//! The break-glass review queue: every break-glass opening (`custos.breakglass.opened` in
//! `custos.audit_events FINAL`, its `event_key` the review id) is a review item due a
//! tenant-configured time after it (`CUSTOS_REVIEW_DUE_HOURS`, per tenant
//! `CUSTOS_REVIEW_DUE_HOURS_BY_TENANT`). Until decided it is `open`, past its due time
//! (by the app's [`crate::clock::Clock`]) `overdue`; a compliance officer's decision
//! (`custos.break_glass_reviews`, through the ledger) makes it `justified` or `unjustified`.
//!
//! - `GET /v1/break-glass/reviews?state=open|overdue|decided|all`: compliance officers and
//!   auditors, oldest opening first (the most overdue first), paged with the reports' cursor;
//! - `POST /v1/break-glass/reviews/{review_id}/decision`: compliance officers; 404 for an
//!   unknown review, 409 once decided. Recorded in the query audit before the answer.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clickhouse::Row;
use custos_auth::audit::{new_query_id, Asked};
use custos_auth::oidc::Caller;
use custos_schemas::records::{ser_ms, ser_opt_ms, Answered, ReviewDecisionRow};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::access::{authorize, tenant_allowed, Access};
use crate::alerts::actions::check_note;
use crate::error::{ApiError, Problem, ValidJson, ValidQuery};
use crate::export::{audited, page_of};
use crate::params::{self, Common, Cursor};
use crate::reports::{ms, Keyed};
use crate::sql::{Arg, Sql};
use crate::state::AppState;

/// Who may read the queue.
pub const READ: Access = Access {
    name: "break-glass-reviews",
    roles: custos_auth::policy::REVIEWS_READ,
};

/// Who may decide a review.
pub const DECIDE: Access = Access {
    name: "break-glass-review-decision",
    roles: custos_auth::policy::REVIEWS_DECIDE,
};

/// The decisions.
pub const DECISIONS: &[&str] = &["justified", "unjustified"];

/// The review routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/break-glass/reviews", get(list_reviews))
        .route(
            "/v1/break-glass/reviews/{review_id}/decision",
            post(decide_review),
        )
}

/// Which review items to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    /// Not decided, not yet due.
    Open,
    /// Not decided, past due.
    Overdue,
    /// Decided (justified or unjustified).
    Decided,
    /// Every item.
    All,
}

impl StateFilter {
    /// Parses `state=` (default `all`).
    pub fn parse(v: Option<&str>) -> Result<StateFilter, ApiError> {
        match v.unwrap_or("all") {
            "open" => Ok(StateFilter::Open),
            "overdue" => Ok(StateFilter::Overdue),
            "decided" => Ok(StateFilter::Decided),
            "all" => Ok(StateFilter::All),
            _ => Err(ApiError::bad("state must be open, overdue, decided or all")),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            StateFilter::Open => "open",
            StateFilter::Overdue => "overdue",
            StateFilter::Decided => "decided",
            StateFilter::All => "all",
        }
    }
}

/// One review item as read.
#[derive(Debug, Clone, PartialEq, Row, Deserialize, Serialize, ToSchema)]
pub struct ReviewItem {
    /// The opening's event key.
    pub review_id: String,
    /// When break-glass was opened (RFC 3339).
    #[serde(serialize_with = "ser_ms")]
    #[schema(value_type = String)]
    pub opened_at: i64,
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
    /// When the review is due (RFC 3339).
    #[serde(serialize_with = "ser_ms")]
    #[schema(value_type = String)]
    pub due_at: i64,
    /// `open`, `overdue`, `justified` or `unjustified`.
    pub state: String,
    /// The decision (empty until decided).
    pub decision: String,
    /// The reviewer's note.
    pub note: String,
    /// The reviewer.
    pub decided_by: String,
    /// When decided (RFC 3339; null until decided).
    #[serde(serialize_with = "ser_opt_ms")]
    #[schema(value_type = Option<String>)]
    pub decided_at: Option<i64>,
}

impl Keyed for ReviewItem {
    fn cursor(&self) -> Cursor {
        Cursor {
            time_ms: self.opened_at,
            key: self.review_id.clone(),
        }
    }
}

/// What the queue's query selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueQuery {
    /// Tenant.
    pub tenant: String,
    /// Openings in `[from, to)` (ms).
    pub from_ms: i64,
    /// See `from_ms`.
    pub to_ms: i64,
    /// One review only.
    pub review_id: Option<String>,
    /// Which items.
    pub state: StateFilter,
    /// The tenant's due time (ms after the opening).
    pub due_ms: i64,
    /// Now (ms).
    pub now_ms: i64,
    /// After this position of the oldest-first order.
    pub after: Option<Cursor>,
}

/// The queue: openings with their due time, state and decision, oldest first.
pub fn queue_sql(q: &QueueQuery, limit: u64) -> Sql {
    let mut sql = Sql::new(
        "SELECT event_key AS review_id, event_time AS opened_at, user_sub, fhir_user, client_id, \
patient, break_glass_reason AS reason, expires_at, ",
    );
    sql.bind1(
        "fromUnixTimestamp64Milli(toUnixTimestamp64Milli(event_time) + ?, 'UTC') AS due_at, ",
        q.due_ms,
    );
    sql.bind(
        "multiIf(d_decision != '', d_decision, toUnixTimestamp64Milli(event_time) + ? <= ?, 'overdue', 'open') AS state, ",
        [q.due_ms, q.now_ms],
    );
    sql.push(
        "d_decision AS decision, d_note AS note, d_actor AS decided_by, \
if(d_decision = '', NULL, d_decided_at) AS decided_at \
FROM (SELECT event_key, event_time, user_sub, fhir_user, client_id, patient, break_glass_reason, \
expires_at FROM custos.audit_events FINAL WHERE ",
    );
    sql.bind1("tenant = ?", &q.tenant);
    sql.push(" AND event_type = 'custos.breakglass.opened'");
    sql.bind(
        concat!(" AND event_time >= ", ms!(), " AND event_time < ", ms!()),
        [q.from_ms, q.to_ms],
    );
    if let Some(id) = &q.review_id {
        sql.bind1(" AND event_key = ?", id);
    }
    sql.push(
        ") AS e LEFT JOIN (SELECT review_id AS d_review_id, \
argMax(decision, (decided_at, decision_id)) AS d_decision, \
argMax(note, (decided_at, decision_id)) AS d_note, \
argMax(actor, (decided_at, decision_id)) AS d_actor, \
max(decided_at) AS d_decided_at \
FROM custos.break_glass_reviews FINAL WHERE ",
    );
    sql.bind1("tenant = ?", &q.tenant);
    if let Some(id) = &q.review_id {
        sql.bind1(" AND review_id = ?", id);
    }
    sql.push(" GROUP BY review_id) AS d ON event_key = d_review_id WHERE 1 = 1");
    match q.state {
        StateFilter::Open => {
            sql.push(" AND state = 'open'");
        }
        StateFilter::Overdue => {
            sql.push(" AND state = 'overdue'");
        }
        StateFilter::Decided => {
            sql.push(" AND decision != ''");
        }
        StateFilter::All => {}
    }
    if let Some(after) = &q.after {
        sql.bind(
            concat!(" AND (opened_at, review_id) > (", ms!(), ", ?)"),
            [Arg::from(after.time_ms), Arg::from(&after.key)],
        );
    }
    sql.bind1(" ORDER BY opened_at, review_id LIMIT ?", limit);
    sql
}

/// Parameters of `GET /v1/break-glass/reviews`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReviewListParams {
    /// `open`, `overdue`, `decided` or `all` (default).
    pub state: Option<String>,
    /// Tenant (default: `CUSTOS_DEFAULT_TENANT`).
    pub tenant: Option<String>,
    /// Openings at or after (RFC 3339 or YYYY-MM-DD; default: the reports' default window).
    pub from: Option<String>,
    /// Openings before.
    pub to: Option<String>,
    /// Page size.
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of the review queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReviewPage {
    /// Id of the query-audit record of this answer.
    pub query_id: String,
    /// Tenant.
    pub tenant: String,
    /// "Now" the states were computed at (RFC 3339).
    pub now: String,
    /// The tenant's due time, in hours after the opening.
    pub due_hours: i64,
    /// The items, oldest opening first.
    pub reviews: Vec<ReviewItem>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The break-glass review queue: openings with their due time, state and decision.
#[utoipa::path(get, path = "/v1/break-glass/reviews", params(ReviewListParams),
    responses((status = 200, body = ReviewPage), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])), tag = "break-glass reviews")]
pub async fn list_reviews(
    State(s): State<AppState>,
    caller: Caller,
    ValidQuery(p): ValidQuery<ReviewListParams>,
) -> Result<Response, ApiError> {
    authorize(&s, &caller, READ)?;
    let c = Common::parse(
        &s.settings.limits,
        s.settings.limits.default_window_days,
        p.tenant.as_deref(),
        p.from.as_deref(),
        p.to.as_deref(),
        p.limit.as_deref(),
        p.cursor.as_deref(),
        None,
    )?;
    tenant_allowed(&caller, &c.tenant)?;
    let state = StateFilter::parse(p.state.as_deref())?;
    let now_ms = s.clock.now_ms();
    let due_ms = s.settings.review_due.due_ms(&c.tenant);
    let q = QueueQuery {
        tenant: c.tenant.clone(),
        from_ms: c.window.from_ms,
        to_ms: c.window.to_ms,
        review_id: None,
        state,
        due_ms,
        now_ms,
        after: c.after.clone(),
    };
    let audit = json!({"state": state.as_str(), "from": c.window.from_rfc3339(),
        "to": c.window.to_rfc3339(), "limit": c.limit, "cursor": c.after.is_some()});
    let asked = Asked::new(&caller, READ.name, &c.tenant, audit, "json");
    let sql = queue_sql(&q, c.limit + 1);
    let rows: Vec<ReviewItem> = audited(&s, &asked, "answering", async {
        Ok(sql.query(&s.reader).fetch_all().await?)
    })
    .await?;
    let (reviews, next_cursor) = page_of(&s, &asked, rows, c.limit, |r| r).await?;
    Ok(Json(ReviewPage {
        query_id: asked.query_id.clone(),
        tenant: c.tenant,
        now: params::ms_to_rfc3339(now_ms),
        due_hours: due_ms / 3_600_000,
        reviews,
        next_cursor,
    })
    .into_response())
}

/// Body of a decision.
#[derive(Debug, Default, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// `justified` or `unjustified`.
    pub decision: String,
    /// Why (required, at most 2000 bytes, never a credential).
    pub note: String,
    /// Tenant of the opening (default: `CUSTOS_DEFAULT_TENANT`).
    #[serde(default)]
    pub tenant: Option<String>,
}

/// The answer to a decision.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionAnswer {
    /// Id of the query-audit record of this request.
    pub query_id: String,
    /// The decision as written.
    #[schema(value_type = ReviewDecisionRow)]
    pub decision: Answered<ReviewDecisionRow>,
    /// The review item after it.
    pub review: ReviewItem,
}

/// Records a compliance officer's decision on a break-glass opening (once).
#[utoipa::path(post, path = "/v1/break-glass/reviews/{review_id}/decision",
    params(("review_id" = String, Path, description = "Event key of the break-glass opening")),
    request_body = DecisionBody,
    responses((status = 200, body = DecisionAnswer), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])), tag = "break-glass reviews")]
pub async fn decide_review(
    State(s): State<AppState>,
    caller: Caller,
    Path(review_id): Path<String>,
    body: Result<ValidJson<DecisionBody>, ApiError>,
) -> Result<Response, ApiError> {
    authorize(&s, &caller, DECIDE)?;
    let ValidJson(body) = body?;
    if !DECISIONS.contains(&body.decision.as_str()) {
        return Err(ApiError::bad("decision must be justified or unjustified"));
    }
    let note = check_note(Some(&body.note), true)?;
    let tenant = body
        .tenant
        .clone()
        .unwrap_or_else(|| s.settings.limits.default_tenant.clone());
    if !params::valid_tenant(&tenant) {
        return Err(ApiError::bad(
            "tenant must be 1-64 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    tenant_allowed(&caller, &tenant)?;
    if !params::is_key(&review_id) {
        return Err(ApiError::Missing("no such break-glass review"));
    }
    let parameters = json!({"review_id": review_id, "decision": body.decision,
        "note_bytes": note.len()});
    let asked = Asked::new(&caller, DECIDE.name, &tenant, parameters, "json");
    s.audit
        .write(&asked.record("answering", 0))
        .await
        .map_err(ApiError::AuditWrite)?;
    let out = decide(&s, &caller, &tenant, &review_id, &body.decision, note).await;
    let status = match &out {
        Ok(_) => "answered",
        Err(e) if e.status().is_client_error() => "rejected",
        Err(_) => "failed",
    };
    s.audit
        .submit(&asked.record(status, u64::from(out.is_ok())))
        .await;
    let (row, review) = out?;
    Ok(Json(DecisionAnswer {
        query_id: asked.query_id.clone(),
        decision: Answered(row),
        review,
    })
    .into_response())
}

/// One review item of `tenant`, whatever its time.
async fn item(s: &AppState, tenant: &str, review_id: &str) -> Result<Option<ReviewItem>, ApiError> {
    let q = QueueQuery {
        tenant: tenant.to_owned(),
        from_ms: 0,
        to_ms: i64::MAX / 2,
        review_id: Some(review_id.to_owned()),
        state: StateFilter::All,
        due_ms: s.settings.review_due.due_ms(tenant),
        now_ms: s.clock.now_ms(),
        after: None,
    };
    Ok(queue_sql(&q, 1).query(&s.reader).fetch_optional().await?)
}

async fn decide(
    s: &AppState,
    caller: &Caller,
    tenant: &str,
    review_id: &str,
    decision: &str,
    note: String,
) -> Result<(ReviewDecisionRow, ReviewItem), ApiError> {
    let wf = &s.workflow;
    let _one = wf.gate.lock().await;
    let before = item(s, tenant, review_id)
        .await?
        .ok_or(ApiError::Missing("no such break-glass review"))?;
    if !before.decision.is_empty() {
        return Err(ApiError::Conflict(format!(
            "the review is already decided ({})",
            before.decision
        )));
    }
    let row = ReviewDecisionRow {
        review_id: review_id.to_owned(),
        decision_id: new_query_id(),
        tenant: tenant.to_owned(),
        decision: decision.to_owned(),
        note,
        actor: caller.sub.clone(),
        decided_at: s.clock.now_ms(),
        opened_at: before.opened_at,
    };
    wf.decisions
        .insert(&wf.writer, std::slice::from_ref(&row))
        .await
        .map_err(|e| ApiError::Internal(format!("review decision not written: {e}")))?;
    let after = item(s, tenant, review_id)
        .await?
        .ok_or(ApiError::Missing("no such break-glass review"))?;
    Ok((row, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_sql_binds_every_value() {
        let q = QueueQuery {
            tenant: "t'x".into(),
            from_ms: 1,
            to_ms: 2,
            review_id: Some("0123456789abcdef0123456789abcdef".into()),
            state: StateFilter::Overdue,
            due_ms: 3_600_000,
            now_ms: 5,
            after: Some(Cursor {
                time_ms: 1,
                key: "0123456789abcdef0123456789abcdef".into(),
            }),
        };
        let sql = queue_sql(&q, 51);
        assert_eq!(sql.text().matches('?').count(), sql.args().len());
        assert!(!sql.text().contains("t'x"));
        assert!(sql.text().contains("AND state = 'overdue'"));
        assert_eq!(sql.args().last(), Some(&Arg::UInt(51)));
    }

    #[test]
    fn states_parse() {
        assert_eq!(StateFilter::parse(None).ok(), Some(StateFilter::All));
        assert_eq!(
            StateFilter::parse(Some("overdue")).ok(),
            Some(StateFilter::Overdue)
        );
        assert!(StateFilter::parse(Some("late")).is_err());
    }
}
