//! `GET /v1/alerts/{id}`: one alert in one call: its latest state, every revision, every
//! action (the people's and the service's receipts) and the evidence rows themselves (from
//! `custos.audit_events FINAL`, at most [`MAX_EVIDENCE`]).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use custos_auth::audit::Asked;
use custos_auth::oidc::Caller;
use custos_schemas::records::{AlertActionRow, AlertRow, Answered, EventRow};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::{current, tenant_of, AlertItem, READ};
use crate::access::{authorize, Access};
use crate::error::{ApiError, Problem};
use crate::export::audited;
use crate::reports::SELECT_EVENTS;
use crate::sql::Sql;
use crate::state::AppState;

/// Most evidence rows answered with an alert.
pub const MAX_EVIDENCE: u64 = 200;

/// Who may read one alert (the same roles as the list).
pub const DETAIL: Access = Access {
    name: "alert",
    roles: READ.roles,
};

/// One alert with its history and evidence.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertDetail {
    /// Id of the query-audit record of this answer.
    pub query_id: String,
    /// The latest revision, workflow state and links.
    pub alert: AlertItem,
    /// Every revision, oldest first.
    #[schema(value_type = Vec<AlertRow>)]
    pub revisions: Vec<Answered<AlertRow>>,
    /// Every action, oldest first: acknowledge, assign, close, reopen (people), notify and
    /// auto_revoke (the alert service, with their receipts in `detail`).
    #[schema(value_type = Vec<AlertActionRow>)]
    pub actions: Vec<Answered<AlertActionRow>>,
    /// The evidence rows the revisions name (at most 200), in event-time order.
    pub evidence: Vec<EventRow>,
}

/// The evidence rows of `keys` in `tenant`.
pub fn evidence_sql(tenant: &str, keys: Vec<String>) -> Sql {
    let mut sql = Sql::new(SELECT_EVENTS);
    sql.bind(
        "tenant = ? AND event_key IN ? ORDER BY event_time, event_key LIMIT ?",
        [
            crate::sql::Arg::from(tenant),
            crate::sql::Arg::from(keys),
            crate::sql::Arg::from(MAX_EVIDENCE),
        ],
    );
    sql
}

/// One alert with its revisions, actions and evidence rows.
#[utoipa::path(get, path = "/v1/alerts/{id}", params(("id" = String, Path, description = "Alert id (32 hex)")),
    responses((status = 200, body = AlertDetail), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])), tag = "alerts")]
pub async fn alert_detail(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&s, &caller, DETAIL)?;
    let tenant = tenant_of(&s, &caller, &id).await?;
    let asked = Asked::new(
        &caller,
        DETAIL.name,
        &tenant,
        json!({ "alert_id": id }),
        "json",
    );
    let (state, revisions, actions, evidence) = audited(&s, &asked, "answering", async {
        let state = current(&s, &tenant, &id)
            .await?
            .ok_or(ApiError::Missing("no such alert"))?;
        let revisions: Vec<AlertRow> = s
            .reader
            .query(
                "SELECT ?fields FROM custos.alerts FINAL WHERE tenant = ? AND alert_id = ? \
                 ORDER BY revision",
            )
            .bind(&tenant)
            .bind(&id)
            .fetch_all()
            .await?;
        let actions: Vec<AlertActionRow> = s
            .reader
            .query(
                "SELECT ?fields FROM custos.alert_actions FINAL WHERE tenant = ? AND alert_id = ? \
                 ORDER BY at, action_id",
            )
            .bind(&tenant)
            .bind(&id)
            .fetch_all()
            .await?;
        let mut keys: Vec<String> = revisions
            .iter()
            .flat_map(|r| r.evidence.iter().cloned())
            .collect();
        keys.sort();
        keys.dedup();
        let evidence: Vec<EventRow> = if keys.is_empty() {
            Vec::new()
        } else {
            evidence_sql(&tenant, keys)
                .query(&s.reader)
                .fetch_all()
                .await?
        };
        Ok((state, revisions, actions, evidence))
    })
    .await?;
    let rows = (revisions.len() + actions.len() + evidence.len()) as u64;
    s.audit.submit(&asked.record("answered", rows)).await;
    Ok(Json(AlertDetail {
        query_id: asked.query_id.clone(),
        alert: AlertItem::from(state),
        revisions: revisions.into_iter().map(Answered).collect(),
        actions: actions.into_iter().map(Answered).collect(),
        evidence,
    })
    .into_response())
}
