//! The report catalogue. A report is one declaration in its own file under
//! [`crate::reports`]: its query-string parameters, name, roles and path, validation and what
//! the query audit records ([`Catalogued`]), its SQL builder and row types ([`SingleQuery`],
//! or its own [`Answer`]), and its handler with its OpenAPI description ([`handler!`]). One
//! line in the registry ([`catalogue!`], invoked in `reports/mod.rs`) adds it to the router
//! and to the OpenAPI document.
//!
//! [`serve`] is the one path every report takes: authorize, validate, record in the query
//! audit, fetch, then a JSON page or a CSV / NDJSON stream ([`respond`]).

use std::future::Future;

use axum::response::Response;
use clickhouse::{RowOwned, RowRead};
use serde::Serialize;
use serde_json::Value;

use crate::access::{authorize, tenant_allowed, Access};
use crate::error::ApiError;
use crate::export::{fetch_page, page_response, stream};
use crate::params::{Common, Format};
use crate::reports::{Keyed, Tabular};
use crate::sql::Sql;
use crate::state::{AppState, Settings};
use custos_auth::audit::Asked;
use custos_auth::oidc::{Caller, Role};

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

/// Implements [`Shared`] for a parameter struct holding the six shared fields (`tenant`,
/// `from`, `to`, `limit`, `cursor`, `format`).
macro_rules! shared {
    ($params:ty) => {
        impl $crate::catalogue::Shared for $params {
            fn shared(&self) -> $crate::catalogue::CommonQuery<'_> {
                $crate::catalogue::CommonQuery {
                    tenant: self.tenant.as_deref(),
                    from: self.from.as_deref(),
                    to: self.to.as_deref(),
                    limit: self.limit.as_deref(),
                    cursor: self.cursor.as_deref(),
                    format: self.format.as_deref(),
                }
            }
        }
    };
}
pub(crate) use shared;

/// Declares the axum handler of a catalogued report and its OpenAPI operation: `GET` at the
/// report's [`Catalogued::PATH`], its parameters, `200` with `body`, the `400`/`401`/`403`
/// problems, bearer security and `tag`. The handler validates the query string into the
/// report's parameters and hands them to [`serve`]; its doc comment is the operation's
/// summary.
macro_rules! handler {
    (
        $(#[$meta:meta])*
        $name:ident => $report:ident {
            params: $params:ident,
            tag: $tag:literal,
            body: $($body:tt)+
        }
    ) => {
        $(#[$meta])*
        #[utoipa::path(get, path = <$report as crate::catalogue::Catalogued>::PATH,
            params($params),
            responses((status = 200, body = $($body)+), (status = 400, body = Problem),
                (status = 401, body = Problem), (status = 403, body = Problem)),
            security(("bearer" = [])), tag = $tag)]
        pub async fn $name(
            axum::extract::State(s): axum::extract::State<crate::state::AppState>,
            caller: custos_auth::oidc::Caller,
            crate::error::ValidQuery(p): crate::error::ValidQuery<$params>,
        ) -> Result<axum::response::Response, crate::error::ApiError> {
            crate::catalogue::serve::<$report>(&s, &caller, p).await
        }
    };
}
pub(crate) use handler;

/// The registry: declares each report's module and assembles, from one list, the report
/// router (`routes`) and the reports' OpenAPI paths (`Paths`, merged into
/// [`crate::openapi::ApiDoc`]). One line per report: `module::Report => handler`. The
/// schemas a path's response references are collected with it; `schemas` lists the few the
/// collection cannot reach (inside a flattened generic).
macro_rules! catalogue {
    (
        reports { $($module:ident :: $report:ident => $handler:ident),+ $(,)? }
        schemas { $($($schema:ident)::+),* $(,)? }
    ) => {
        $(pub mod $module;)+

        /// The report endpoints, one route per catalogued report.
        pub fn routes() -> axum::Router<crate::state::AppState> {
            axum::Router::new()
                $(.route(
                    <$module::$report as crate::catalogue::Catalogued>::PATH,
                    axum::routing::get($module::$handler),
                ))+
        }

        /// The OpenAPI paths of the catalogued reports and the schemas they answer with.
        #[derive(utoipa::OpenApi)]
        #[openapi(paths($($module::$handler),+), components(schemas($($($schema)::+),*)))]
        pub struct Paths;
    };
}
pub(crate) use catalogue;

/// A report's parameters resolved: what its SQL builder reads and what the query audit records.
#[derive(Debug)]
pub struct Plan<F> {
    /// The validated filter handed to [`Catalogued::sql`].
    pub filter: F,
    /// The parameters recorded in the query audit (see [`crate::params::AuditParams`]).
    pub audit: Value,
}

/// One report of the catalogue: its parameters, name, roles, path, validation and what the
/// query audit records. How it fetches and answers is [`Answer`]: [`SingleQuery`] for a report
/// answered by one bound query (the rows mapped into its answer type), or a report's own
/// implementation when it needs more (the token trace).
pub trait Catalogued: 'static {
    /// The query-string parameters.
    type Params: Shared + Send + Sync;
    /// The validated filter.
    type Filter: Send + Sync;

    /// Name in the query audit, the metrics and the page's `report` field.
    const NAME: &'static str;
    /// Roles allowed to run it (auditors may read everything).
    const ROLES: &'static [Role];
    /// Path of its `GET` endpoint.
    const PATH: &'static str;

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
}

/// A report answered by one bound query: a JSON page of its rows, or their export.
pub trait SingleQuery: Catalogued {
    /// A row as read from ClickHouse.
    type Row: RowOwned + RowRead + serde::de::DeserializeOwned + Send + 'static;
    /// A row as answered.
    type Out: From<Self::Row> + Serialize + Tabular + Keyed + Send + 'static;

    /// The report's SQL for at most `limit` rows.
    fn sql(s: &AppState, c: &Common, filter: &Self::Filter, limit: u64) -> Sql;
}

/// How a catalogued report fetches and answers, once authorized, validated and its query
/// audit record prepared.
pub trait Answer: Catalogued {
    /// Answers `c.format`: a JSON page or a CSV / NDJSON export, recorded under `asked`.
    fn answer<'a>(
        s: &'a AppState,
        asked: Asked,
        c: &'a Common,
        filter: Self::Filter,
    ) -> impl Future<Output = Result<Response, ApiError>> + Send + 'a;
}

impl<R: SingleQuery> Answer for R {
    async fn answer<'a>(
        s: &'a AppState,
        asked: Asked,
        c: &'a Common,
        filter: R::Filter,
    ) -> Result<Response, ApiError> {
        respond(s, asked, c, |lim| R::sql(s, c, &filter, lim), R::Out::from).await
    }
}

/// Who may run a catalogued report.
pub fn access<R: Catalogued>() -> Access {
    Access {
        name: R::NAME,
        roles: R::ROLES,
    }
}

/// The one path of a catalogued report: authorize, validate, record in the query audit,
/// fetch, answer a page or a stream.
pub async fn serve<R: Answer>(
    s: &AppState,
    caller: &Caller,
    p: R::Params,
) -> Result<Response, ApiError> {
    authorize(s, caller, access::<R>())?;
    let c = p.shared().parse(&s.settings, R::window_days(&s.settings))?;
    R::check_tenant(caller, &p, &c)?;
    let plan = R::plan(s, caller, &c, &p)?;
    let asked = Asked::new(
        caller,
        R::NAME,
        R::recorded_tenant(&p, &c),
        plan.audit,
        c.format.as_str(),
    );
    R::answer(s, asked, &c, plan.filter).await
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
