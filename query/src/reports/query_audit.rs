//! The query audit: one record per report query (who asked, with which roles,
//! which report, parameters with patient and user identifiers pseudonymized, rows
//! returned), itself reportable to auditors.

use clickhouse::Row;
use custos_schemas::records::{Answered, ReportQueryRow};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ms, Keyed, Tabular};
use crate::access::{query_audit_tenants, tenant_allowed};
use crate::catalogue::{handler, shared, Catalogued, Plan, SingleQuery};
use crate::error::{ApiError, Problem};
use crate::export::Page;
use crate::params::{self, ms_to_rfc3339, AuditParams, Common, Cursor};
use crate::sql::Sql;
use crate::state::AppState;
use custos_auth::oidc::{Caller, Role};

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

shared!(QueryAuditParams);

handler! {
    /// The report queries answered (auditors only).
    query_audit_report => QueryAuditReport {
        params: QueryAuditParams,
        tag: "reports",
        body: Page<ReportQueryRow>
    }
}

/// The query audit itself.
pub struct QueryAuditReport;

impl Catalogued for QueryAuditReport {
    type Params = QueryAuditParams;
    type Filter = QueryAuditFilter;
    const NAME: &'static str = "query-audit";
    const ROLES: &'static [Role] = custos_auth::policy::AUDIT;
    const PATH: &'static str = "/v1/reports/query-audit";

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
}

impl SingleQuery for QueryAuditReport {
    type Row = ReportQueryRow;
    type Out = Answered<ReportQueryRow>;

    fn sql(_: &AppState, c: &Common, filter: &QueryAuditFilter, limit: u64) -> Sql {
        build(c, filter, limit)
    }
}

/// Filters of the query-audit report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryAuditFilter {
    /// Caller `sub`.
    pub caller: Option<String>,
    /// Report name.
    pub report: Option<String>,
    /// Tenants queried (any of); `None`: every tenant. An empty list matches nothing.
    pub tenants: Option<Vec<String>>,
}

/// The query-audit query (`Common::tenant` is ignored; the filter's tenants apply).
pub fn build(c: &Common, f: &QueryAuditFilter, limit: u64) -> Sql {
    let mut sql = Sql::new(
        "SELECT query_id, asked_at, recorded_at, caller_sub, caller_issuer, caller_client, caller_roles, \
report, tenant, parameters, format, status, rows_returned, duration_ms \
FROM custos.report_queries FINAL WHERE ",
    );
    sql.bind(
        concat!("asked_at >= ", ms!(), " AND asked_at < ", ms!()),
        [c.window.from_ms, c.window.to_ms],
    );
    if let Some(after) = &c.after {
        sql.bind(
            concat!(
                " AND asked_at >= ",
                ms!(),
                " AND (asked_at, query_id) > (",
                ms!(),
                ", ?)"
            ),
            [
                after.time_ms.into(),
                after.time_ms.into(),
                crate::sql::Arg::from(&after.key),
            ],
        );
    }
    if let Some(v) = &f.caller {
        sql.bind1(" AND caller_sub = ?", v);
    }
    if let Some(v) = &f.report {
        sql.bind1(" AND report = ?", v);
    }
    if let Some(v) = &f.tenants {
        sql.bind1(" AND tenant IN ?", v.clone());
    }
    sql.bind1(" ORDER BY asked_at, query_id LIMIT ?", limit);
    sql
}

impl Keyed for Answered<ReportQueryRow> {
    fn cursor(&self) -> Cursor {
        Cursor {
            time_ms: self.0.asked_at,
            key: self.0.query_id.clone(),
        }
    }
}

impl Tabular for Answered<ReportQueryRow> {
    fn header() -> &'static [&'static str] {
        <ReportQueryRow as Row>::COLUMN_NAMES
    }

    fn record(&self) -> Vec<String> {
        let r = &self.0;
        vec![
            r.query_id.clone(),
            ms_to_rfc3339(r.asked_at),
            ms_to_rfc3339(r.recorded_at),
            r.caller_sub.clone(),
            r.caller_issuer.clone(),
            r.caller_client.clone(),
            r.caller_roles.join(" "),
            r.report.clone(),
            r.tenant.clone(),
            r.parameters.clone(),
            r.format.clone(),
            r.status.clone(),
            r.rows_returned.to_string(),
            r.duration_ms.to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::tests::common;

    #[test]
    fn selects_the_declared_columns_in_order() {
        let sql = build(&common(), &QueryAuditFilter::default(), 1);
        let listed = sql
            .text()
            .strip_prefix("SELECT ")
            .and_then(|t| t.split(" FROM ").next())
            .unwrap();
        let listed: Vec<&str> = listed.split(", ").collect();
        assert_eq!(listed, <ReportQueryRow as Row>::COLUMN_NAMES);
    }

    #[test]
    fn filters_are_bound() {
        let f = QueryAuditFilter {
            caller: Some("x' OR '1'='1".into()),
            report: Some("patient-access".into()),
            tenants: None,
        };
        let sql = build(&common(), &f, 101);
        assert!(sql.text().contains("FROM custos.report_queries FINAL"));
        assert!(!sql.text().contains("OR '1'"));
        assert!(!sql.text().contains("AND tenant"));
        assert_eq!(sql.text().matches('?').count(), sql.args().len());
    }

    #[test]
    fn tenants_restrict_with_a_bound_list() {
        let f = QueryAuditFilter {
            tenants: Some(vec!["north".into(), "south".into()]),
            ..QueryAuditFilter::default()
        };
        let sql = build(&common(), &f, 101);
        assert!(sql.text().contains(" AND tenant IN ?"));
        assert!(sql
            .args()
            .contains(&crate::sql::Arg::Strs(vec!["north".into(), "south".into()])));
        assert_eq!(sql.text().matches('?').count(), sql.args().len());
    }
}
