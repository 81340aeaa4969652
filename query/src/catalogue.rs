//! The report catalogue: a report is one declaration ([`Catalogued`]: its parameters, roles,
//! validation, SQL builder, row type and what the self-audit records), and [`serve`] is the
//! one path every report takes: authorize, validate, audit, fetch, then a JSON page or a
//! CSV / NDJSON stream ([`respond`]).

use axum::response::Response;
use clickhouse::{RowOwned, RowRead};
use serde::Serialize;
use serde_json::Value;

use crate::access::{authorize, tenant_allowed, Report};
use crate::error::ApiError;
use crate::export::{fetch_page, page_response, stream};
use crate::params::{Common, Format};
use crate::reports::{Keyed, Tabular};
use crate::sql::Sql;
use crate::state::{AppState, Settings};
use custos_auth::audit::Asked;
use custos_auth::oidc::Caller;

/// The parameters every report shares, as given; [`CommonQuery::parse`] validates them once.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommonQuery<'a> {
    /// Tenant (default: `CUSTOS_DEFAULT_TENANT`).
    pub tenant: Option<&'a str>,
    /// Window start.
    pub from: Option<&'a str>,
    /// Window end, exclusive.
    pub to: Option<&'a str>,
    /// Page size (JSON) or row cap (exports).
    pub limit: Option<&'a str>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<&'a str>,
    /// `json`, `csv` or `ndjson`.
    pub format: Option<&'a str>,
}

impl CommonQuery<'_> {
    /// Validates the shared parameters; the window defaults to `default_days` before `to`.
    pub fn parse(&self, settings: &Settings, default_days: u32) -> Result<Common, ApiError> {
        Common::parse(
            &settings.limits,
            default_days,
            self.tenant,
            self.from,
            self.to,
            self.limit,
            self.cursor,
            self.format,
        )
    }
}

/// Parameters holding the shared ones.
pub trait Shared {
    /// The shared parameters, as given.
    fn shared(&self) -> CommonQuery<'_>;
}

/// A report's parameters resolved: what its SQL builder reads and what the query audit records.
#[derive(Debug)]
pub struct Plan<F> {
    /// The validated filter handed to [`Catalogued::sql`].
    pub filter: F,
    /// The parameters recorded in the query audit (see [`crate::params::AuditParams`]).
    pub audit: Value,
}

/// One report of the catalogue.
pub trait Catalogued: 'static {
    /// The query-string parameters.
    type Params: Shared + Send + Sync;
    /// The validated filter.
    type Filter: Send + Sync;
    /// A row as read from ClickHouse.
    type Row: RowOwned + RowRead + serde::de::DeserializeOwned + Send + 'static;
    /// A row as answered.
    type Out: From<Self::Row> + Serialize + Tabular + Keyed + Send + 'static;

    /// Its name and roles.
    const REPORT: Report;

    /// Default window in days (`CUSTOS_QUERY_DEFAULT_WINDOW_DAYS` unless the report says
    /// otherwise).
    fn window_days(settings: &Settings) -> u32 {
        settings.limits.default_window_days
    }

    /// Refuses (403) a tenant the caller may not read.
    fn check_tenant(caller: &Caller, _p: &Self::Params, c: &Common) -> Result<(), ApiError> {
        tenant_allowed(caller, &c.tenant)
    }

    /// Validates the report's own parameters into its filter and audit record.
    fn plan(
        s: &AppState,
        caller: &Caller,
        c: &Common,
        p: &Self::Params,
    ) -> Result<Plan<Self::Filter>, ApiError>;

    /// The tenant the query audit records.
    fn recorded_tenant<'c>(_p: &Self::Params, c: &'c Common) -> &'c str {
        &c.tenant
    }

    /// The report's SQL for at most `limit` rows.
    fn sql(s: &AppState, c: &Common, filter: &Self::Filter, limit: u64) -> Sql;
}

/// The one path of a catalogued report: authorize, validate, record in the query audit,
/// fetch, answer a page or a stream.
pub async fn serve<R: Catalogued>(
    s: &AppState,
    caller: &Caller,
    p: R::Params,
) -> Result<Response, ApiError> {
    authorize(s, caller, R::REPORT)?;
    let c = p.shared().parse(&s.settings, R::window_days(&s.settings))?;
    R::check_tenant(caller, &p, &c)?;
    let plan = R::plan(s, caller, &c, &p)?;
    let asked = Asked::new(
        caller,
        R::REPORT.name(),
        R::recorded_tenant(&p, &c),
        plan.audit,
        c.format.as_str(),
    );
    let filter = plan.filter;
    respond(
        s,
        asked,
        &c,
        |lim| R::sql(s, &c, &filter, lim),
        R::Out::from,
    )
    .await
}

/// Answers with a JSON page or an export, per `c.format`.
pub async fn respond<R, O, B, M>(
    state: &AppState,
    asked: Asked,
    c: &Common,
    build: B,
    map: M,
) -> Result<Response, ApiError>
where
    R: RowOwned + RowRead + Send,
    O: Serialize + Tabular + Keyed,
    B: Fn(u64) -> Sql,
    M: FnMut(R) -> O + Send + 'static,
{
    let timer = std::time::Instant::now();
    let out = match c.format {
        Format::Json => {
            let sql = build(c.limit + 1);
            let (rows, next) = fetch_page(state, &asked, &sql, c.limit, map).await?;
            Ok(page_response(&asked, c, rows, next))
        }
        f => {
            let sql = build(c.limit);
            stream(state, asked.clone(), &sql, f, map).await
        }
    };
    metrics::histogram!("custos_query_report_seconds", "report" => asked.report())
        .record(timer.elapsed().as_secs_f64());
    out
}
