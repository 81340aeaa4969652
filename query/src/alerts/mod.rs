//! The alert API: the detectors' alerts (`custos.alerts`, one row per revision, written by
//! `custos-alerts`) with the people's workflow over them (`custos.alert_actions`).
//!
//! - [`list`]: `GET /v1/alerts`, the latest revision of each alert with its workflow state,
//!   newest evidence first, filtered and paged;
//! - [`detail`]: `GET /v1/alerts/{id}`, one alert with its revisions, its actions (the
//!   people's and the service's `notify` / `auto_revoke` receipts) and its evidence rows;
//! - [`actions`]: `POST /v1/alerts/{id}/acknowledge|assign|close|reopen`.
//!
//! The workflow state is derived from the person actions, never stored: `closed` after a
//! close not followed by a reopen, unless evidence newer than the close arrived (then `open`
//! again with `reopened_by_evidence`); `acknowledged` after an acknowledge or an assign
//! later than the last close or reopen; `open` otherwise. Every request is in the query audit
//! (`custos.report_queries`) before it is answered, every action in the ledger.

pub mod actions;
pub mod detail;
pub mod list;

use axum::routing::{get, post};
use axum::Router;
use clickhouse::Row;
use custos_schemas::records::{AlertRow, Answered};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::access::Access;
use crate::error::ApiError;
use crate::params::{self, Cursor};
use crate::reports::{ms, Keyed};
use crate::sql::Sql;
use crate::state::AppState;

/// Who may read alerts.
pub const READ: Access = Access {
    name: "alerts",
    roles: custos_auth::policy::ALERTS_READ,
};

/// The severities, lowest first.
pub const SEVERITIES: &[&str] = &["low", "medium", "high", "critical"];

/// The workflow states.
pub const STATES: &[&str] = &["open", "acknowledged", "closed"];

/// The actions a person takes (the others, `notify` and `auto_revoke`, are the service's).
pub const PERSON_ACTIONS: &[&str] = &["acknowledge", "assign", "close", "reopen"];

/// The alert routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/alerts", get(list::list_alerts))
        .route("/v1/alerts/{id}", get(detail::alert_detail))
        .route("/v1/alerts/{id}/acknowledge", post(actions::acknowledge))
        .route("/v1/alerts/{id}/assign", post(actions::assign))
        .route("/v1/alerts/{id}/close", post(actions::close))
        .route("/v1/alerts/{id}/reopen", post(actions::reopen))
}

/// The severities at or above `min`.
pub fn at_least(min: &str) -> Option<Vec<String>> {
    let from = SEVERITIES.iter().position(|s| *s == min)?;
    Some(SEVERITIES[from..].iter().map(|s| (*s).to_owned()).collect())
}

/// The latest revision of an alert with its workflow state, as read: the columns of
/// [`AlertRow`] then the state's.
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct StateRow {
    /// See [`AlertRow`].
    pub alert_id: String,
    /// See [`AlertRow`].
    pub revision: u32,
    /// See [`AlertRow`].
    pub tenant: String,
    /// See [`AlertRow`].
    pub detector: String,
    /// See [`AlertRow`].
    pub severity: String,
    /// See [`AlertRow`].
    pub dedup_key: String,
    /// See [`AlertRow`].
    pub subject: String,
    /// See [`AlertRow`].
    pub user_kind: String,
    /// See [`AlertRow`].
    pub client_id: String,
    /// See [`AlertRow`].
    pub session_id: String,
    /// See [`AlertRow`].
    pub token_jti: String,
    /// See [`AlertRow`].
    pub patient: String,
    /// See [`AlertRow`].
    pub first_seen: i64,
    /// See [`AlertRow`].
    pub last_seen: i64,
    /// See [`AlertRow`].
    pub evidence: Vec<String>,
    /// See [`AlertRow`].
    pub evidence_count: u32,
    /// See [`AlertRow`].
    pub summary: String,
    /// See [`AlertRow`].
    pub token_theft: bool,
    /// Assignee of the latest `assign`, empty if none.
    pub assignee: String,
    /// Evidence newer than the latest close arrived.
    pub reopened_by_evidence: bool,
    /// `open`, `acknowledged` or `closed`.
    pub status: String,
    /// Time of the latest person action (ms), 0 if none.
    pub last_action_ms: i64,
}

impl StateRow {
    /// The alert's latest revision.
    pub fn alert(&self) -> AlertRow {
        AlertRow {
            alert_id: self.alert_id.clone(),
            revision: self.revision,
            tenant: self.tenant.clone(),
            detector: self.detector.clone(),
            severity: self.severity.clone(),
            dedup_key: self.dedup_key.clone(),
            subject: self.subject.clone(),
            user_kind: self.user_kind.clone(),
            client_id: self.client_id.clone(),
            session_id: self.session_id.clone(),
            token_jti: self.token_jti.clone(),
            patient: self.patient.clone(),
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            evidence: self.evidence.clone(),
            evidence_count: self.evidence_count,
            summary: self.summary.clone(),
            token_theft: self.token_theft,
        }
    }
}

/// Links from an alert to itself, its evidence and its token's trace.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AlertLinks {
    /// The alert with its revisions, actions and evidence rows.
    #[serde(rename = "self")]
    pub this: String,
    /// The same: the evidence rows come with the alert.
    pub evidence: String,
    /// The token trace of the alert's token, when it names one.
    pub token_trace: Option<String>,
}

/// One alert: its latest revision, workflow state, assignee and links.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AlertItem {
    /// The latest revision.
    #[schema(value_type = AlertRow)]
    pub alert: Answered<AlertRow>,
    /// `open`, `acknowledged` or `closed`.
    pub status: String,
    /// Evidence newer than the latest close arrived (the alert is open again).
    pub reopened_by_evidence: bool,
    /// Assignee (empty if none).
    pub assignee: String,
    /// Where to go next.
    pub links: AlertLinks,
}

/// Percent-encodes a query-string value.
fn encode(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

impl From<StateRow> for AlertItem {
    fn from(r: StateRow) -> AlertItem {
        let this = format!("/v1/alerts/{}", r.alert_id);
        let token_trace = (!r.token_jti.is_empty()).then(|| {
            format!(
                "/v1/reports/token-trace?jti={}&tenant={}",
                encode(&r.token_jti),
                encode(&r.tenant)
            )
        });
        let alert = Answered(r.alert());
        AlertItem {
            links: AlertLinks {
                evidence: this.clone(),
                this,
                token_trace,
            },
            status: r.status,
            reopened_by_evidence: r.reopened_by_evidence,
            assignee: r.assignee,
            alert,
        }
    }
}

impl Keyed for AlertItem {
    fn cursor(&self) -> Cursor {
        Cursor {
            time_ms: self.alert.0.last_seen,
            key: self.alert.0.alert_id.clone(),
        }
    }
}

/// What [`state_sql`] selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateFilter {
    /// Tenant.
    pub tenant: String,
    /// One alert.
    pub alert_id: Option<String>,
    /// Workflow state.
    pub status: Option<String>,
    /// Severities (any of).
    pub severities: Option<Vec<String>>,
    /// Detector.
    pub detector: Option<String>,
    /// Stored forms of the subject (any of).
    pub subjects: Option<Vec<String>>,
    /// Token id.
    pub jti: Option<String>,
    /// OAuth client.
    pub client: Option<String>,
    /// Assignee.
    pub assignee: Option<String>,
    /// `last_seen >=` (ms).
    pub since_ms: Option<i64>,
    /// `last_seen <` (ms).
    pub until_ms: Option<i64>,
    /// After this position of the newest-first order.
    pub before: Option<Cursor>,
}

/// The columns of [`AlertRow`], in order.
const ALERT_COLUMNS: &str = "alert_id, revision, tenant, detector, severity, dedup_key, subject, \
user_kind, client_id, session_id, token_jti, patient, first_seen, last_seen, evidence, \
evidence_count, summary, token_theft";

/// The latest revision of each alert with its workflow state ([`StateRow`]), newest
/// `last_seen` first, at most `limit`.
pub fn state_sql(f: &StateFilter, limit: u64) -> Sql {
    let mut sql = Sql::new(
        "SELECT alert_id, revision, tenant, detector, severity, dedup_key, subject, \
user_kind, client_id, session_id, token_jti, patient, first_seen, last_seen, evidence, \
evidence_count, summary, token_theft, w_assignee AS assignee, \
toBool(close_ms > reopen_ms AND toUnixTimestamp64Milli(last_seen) > close_ms) AS reopened_by_evidence, \
multiIf(close_ms > reopen_ms AND NOT reopened_by_evidence, 'closed', \
ack_ms > greatest(close_ms, reopen_ms), 'acknowledged', 'open') AS status, \
last_ms AS last_action_ms FROM (SELECT ",
    );
    sql.push(ALERT_COLUMNS);
    sql.bind1(" FROM custos.alerts FINAL WHERE tenant = ?", &f.tenant);
    if let Some(id) = &f.alert_id {
        sql.bind1(" AND alert_id = ?", id);
    }
    sql.push(
        " ORDER BY alert_id, revision DESC LIMIT 1 BY alert_id) AS a LEFT JOIN (SELECT \
alert_id AS w_alert_id, \
toUnixTimestamp64Milli(maxIf(at, action = 'close')) AS close_ms, \
toUnixTimestamp64Milli(maxIf(at, action = 'reopen')) AS reopen_ms, \
toUnixTimestamp64Milli(maxIf(at, action IN ('acknowledge', 'assign'))) AS ack_ms, \
toUnixTimestamp64Milli(max(at)) AS last_ms, \
argMaxIf(assignee, (at, action_id), action = 'assign') AS w_assignee \
FROM custos.alert_actions FINAL WHERE action IN ('acknowledge', 'assign', 'close', 'reopen')",
    );
    sql.bind1(" AND tenant = ?", &f.tenant);
    if let Some(id) = &f.alert_id {
        sql.bind1(" AND alert_id = ?", id);
    }
    sql.push(" GROUP BY alert_id) AS w ON alert_id = w_alert_id WHERE 1 = 1");
    if let Some(s) = &f.status {
        sql.bind1(" AND status = ?", s);
    }
    if let Some(s) = &f.severities {
        sql.bind1(" AND severity IN ?", s.clone());
    }
    if let Some(d) = &f.detector {
        sql.bind1(" AND detector = ?", d);
    }
    if let Some(s) = &f.subjects {
        sql.bind1(" AND subject IN ?", s.clone());
    }
    if let Some(j) = &f.jti {
        sql.bind1(" AND token_jti = ?", j);
    }
    if let Some(c) = &f.client {
        sql.bind1(" AND client_id = ?", c);
    }
    if let Some(a) = &f.assignee {
        sql.bind1(" AND assignee = ?", a);
    }
    if let Some(t) = f.since_ms {
        sql.bind1(concat!(" AND last_seen >= ", ms!()), t);
    }
    if let Some(t) = f.until_ms {
        sql.bind1(concat!(" AND last_seen < ", ms!()), t);
    }
    if let Some(b) = &f.before {
        sql.bind(
            concat!(" AND (last_seen, alert_id) < (", ms!(), ", ?)"),
            [
                crate::sql::Arg::from(b.time_ms),
                crate::sql::Arg::from(&b.key),
            ],
        );
    }
    sql.bind1(" ORDER BY last_seen DESC, alert_id DESC LIMIT ?", limit);
    sql
}

/// The tenant of alert `id`, if it exists and the caller may read that tenant (else the
/// alert is unknown to them: 404, not 403, so its existence is not revealed).
pub async fn tenant_of(
    s: &AppState,
    caller: &custos_auth::oidc::Caller,
    id: &str,
) -> Result<String, ApiError> {
    const UNKNOWN: ApiError = ApiError::Missing("no such alert");
    if !params::is_key(id) {
        return Err(UNKNOWN);
    }
    let tenants: Vec<String> = s
        .reader
        .query("SELECT DISTINCT tenant FROM custos.alerts WHERE alert_id = ?")
        .bind(id)
        .fetch_all()
        .await?;
    tenants
        .into_iter()
        .find(|t| caller.may_read_tenant(t))
        .ok_or(UNKNOWN)
}

/// The current state of alert `id` of `tenant`, if it exists.
pub async fn current(s: &AppState, tenant: &str, id: &str) -> Result<Option<StateRow>, ApiError> {
    let sql = state_sql(
        &StateFilter {
            tenant: tenant.to_owned(),
            alert_id: Some(id.to_owned()),
            ..StateFilter::default()
        },
        1,
    );
    Ok(sql.query(&s.reader).fetch_optional().await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Arg;

    #[test]
    fn severities_at_least() {
        assert_eq!(
            at_least("high"),
            Some(vec!["high".to_owned(), "critical".to_owned()])
        );
        assert_eq!(at_least("low").map(|v| v.len()), Some(4));
        assert_eq!(at_least("urgent"), None);
    }

    #[test]
    fn state_sql_binds_every_filter() {
        let f = StateFilter {
            tenant: "t".into(),
            alert_id: Some("0123456789abcdef0123456789abcdef".into()),
            status: Some("open".into()),
            severities: at_least("medium"),
            detector: Some("jti_multi_ip".into()),
            subjects: Some(vec!["s'1".into()]),
            jti: Some("j".into()),
            client: Some("c".into()),
            assignee: Some("a".into()),
            since_ms: Some(1),
            until_ms: Some(2),
            before: Some(Cursor {
                time_ms: 3,
                key: "0123456789abcdef0123456789abcdef".into(),
            }),
        };
        let sql = state_sql(&f, 11);
        assert_eq!(sql.text().matches('?').count(), sql.args().len());
        assert!(!sql.text().contains("s'1"));
        assert_eq!(sql.args()[0], Arg::Str("t".into()));
        assert_eq!(sql.args().last(), Some(&Arg::UInt(11)));
        assert!(sql
            .text()
            .ends_with("ORDER BY last_seen DESC, alert_id DESC LIMIT ?"));
    }

    #[test]
    fn an_item_links_to_its_evidence_and_token_trace() {
        let row = StateRow {
            alert_id: "0123456789abcdef0123456789abcdef".into(),
            revision: 2,
            tenant: "t 1".into(),
            detector: "d".into(),
            severity: "high".into(),
            dedup_key: "k".into(),
            subject: "s".into(),
            user_kind: "workforce".into(),
            client_id: "c".into(),
            session_id: String::new(),
            token_jti: "j&x".into(),
            patient: String::new(),
            first_seen: 0,
            last_seen: 1_000,
            evidence: vec![],
            evidence_count: 0,
            summary: String::new(),
            token_theft: false,
            assignee: String::new(),
            reopened_by_evidence: false,
            status: "open".into(),
            last_action_ms: 0,
        };
        let item = AlertItem::from(row);
        assert_eq!(
            item.links.this,
            "/v1/alerts/0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            item.links.token_trace.as_deref(),
            Some("/v1/reports/token-trace?jti=j%26x&tenant=t+1")
        );
        let v = serde_json::to_value(&item).unwrap_or_default();
        assert_eq!(v["alert"]["last_seen"], "1970-01-01T00:00:01.000Z");
        assert_eq!(v["links"]["self"], item.links.this);
    }
}
