//! Token trace for incident response: by `jti`, AS session or client, the token lifecycle
//! from the AS (issued, refreshed, introspected, revoked), every access made with it, the
//! IPs seen, the operations performed against the SMART scopes granted, and uses after
//! revocation or expiry flagged.

mod lifecycle;

use axum::response::{IntoResponse, Response};
use axum::Json;
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub use lifecycle::{permission, scope_covers, Deadlines, SummaryRow, TokenSummary, TraceEvent};

use super::{ms, order_limit, scope, EventRow, SELECT_EVENTS};
use crate::catalogue::{handler, shared, Answer, Catalogued, Plan};
use crate::error::{ApiError, Problem};
use crate::export::{audited, page_of, stream_prepared, Page};
use crate::params::{self, AuditParams, Common, Format};
use crate::sql::{Arg, Sql};
use crate::state::AppState;
use custos_auth::audit::Asked;
use custos_auth::oidc::{Caller, Role};

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

shared!(TokenTraceParams);

/// A token trace page: lifecycle summaries plus the flagged events.
#[derive(Debug, Serialize, ToSchema)]
pub struct TracePage {
    /// The events page.
    #[serde(flatten)]
    pub page: Page<TraceEvent>,
    /// Per-token lifecycle over the whole window.
    pub tokens: Vec<TokenSummary>,
}

handler! {
    /// A token's lifecycle, accesses, IPs and scopes; late uses flagged.
    token_trace => TokenTrace {
        params: TokenTraceParams,
        tag: "reports",
        body: TracePage
    }
}

/// A token's lifecycle and uses.
pub struct TokenTrace;

impl Catalogued for TokenTrace {
    type Params = TokenTraceParams;
    type Filter = Selector;
    const NAME: &'static str = "token-trace";
    const ROLES: &'static [Role] = custos_auth::policy::TOKEN_TRACE;
    const PATH: &'static str = "/v1/reports/token-trace";

    fn plan(
        s: &AppState,
        _: &Caller,
        c: &Common,
        p: &TokenTraceParams,
    ) -> Result<Plan<Selector>, ApiError> {
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
        let audit = AuditParams::new(&s.keys, c)
            .plain(name, &Some(value.to_owned()))
            .done();
        Ok(Plan { filter: sel, audit })
    }
}

/// Three queries: the token index once (where the trace's events are), then the per-token
/// summary and the events over the keys it found. A JSON page carries the summaries beside
/// the flagged events; an export streams the flagged events.
impl Answer for TokenTrace {
    async fn answer<'a>(
        s: &'a AppState,
        asked: Asked,
        c: &'a Common,
        sel: Selector,
    ) -> Result<Response, ApiError> {
        if c.format != Format::Json {
            return export(s, asked, c, sel).await;
        }
        // The index is read once; the summary and the page's events are then
        // independent queries over the keys it found: run them together. The asked
        // record is written meanwhile.
        let (tokens, rows) = audited(s, &asked, "answering", async {
            let found = trace_keys(s, c, &sel).await?;
            if found.is_empty() {
                return Ok((Vec::new(), Vec::new()));
            }
            let summary_sql = summary(c, &sel, &found);
            let sql = events(c, &sel, &found, c.limit + 1);
            Ok(tokio::try_join!(
                summary_sql.query(&s.reader).fetch_all::<SummaryRow>(),
                sql.query(&s.reader).fetch_all::<EventRow>()
            )?)
        })
        .await?;
        let deadlines = Deadlines::new(&tokens);
        let (rows, next) = page_of(s, &asked, rows, c.limit, |r| deadlines.flag(r)).await?;
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
            tokens: tokens.into_iter().map(TokenSummary::from).collect(),
        })
        .into_response())
    }
}

/// The CSV / NDJSON export of a trace: its flagged events.
async fn export(
    s: &AppState,
    asked: Asked,
    c: &Common,
    sel: Selector,
) -> Result<Response, ApiError> {
    // The index and the summary are read, like the export itself, only while the
    // `streaming` record is written: nothing is read for a request left unrecorded.
    let slot = s.exports.acquire(asked.caller_sub())?;
    let timer = std::time::Instant::now();
    let sel = &sel;
    let prepare = async move {
        let found = trace_keys(s, c, sel).await?;
        let summary: Vec<SummaryRow> = if found.is_empty() {
            Vec::new()
        } else {
            let sql = summary(c, sel, &found);
            sql.query(&s.reader).fetch_all().await?
        };
        let deadlines = Deadlines::new(&summary);
        let map = move |r: EventRow| deadlines.flag(r);
        Ok((events(c, sel, &found, c.limit), map))
    };
    let out = stream_prepared(s, asked, slot, c.format, prepare).await;
    metrics::histogram!("custos_query_report_seconds", "report" => TokenTrace::NAME)
        .record(timer.elapsed().as_secs_f64());
    out
}

/// Reads where a trace's events are from the token index (once per trace).
async fn trace_keys(s: &AppState, c: &Common, sel: &Selector) -> Result<Found, ApiError> {
    Ok(match sel.keys(c) {
        Some(sql) => Found::new(Some(sql.query(&s.reader).fetch_all::<KeyRow>().await?)),
        None => Found::new(None),
    })
}

/// The tokens seen in a session (binds: tenant, session).
macro_rules! session_tokens {
    () => {
        "(SELECT jti FROM custos.audit_by_token WHERE tenant = ? AND kind = 'session' \
AND token = ? AND jti != '')"
    };
}

/// What to trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// One token id.
    Jti(String),
    /// Every token of an AS session, and the session's own events.
    Session(String),
    /// Every token of a client.
    Client(String),
}

impl Selector {
    /// Parameter name and value, for the query audit.
    pub fn describe(&self) -> (&'static str, &str) {
        match self {
            Selector::Jti(v) => ("jti", v),
            Selector::Session(v) => ("session", v),
            Selector::Client(v) => ("client", v),
        }
    }

    /// The lookup of the trace's keys in `custos.audit_by_token` (migration 0009), or
    /// `None` for a client (not indexed). Read once per trace; its rows make a [`Found`].
    pub fn keys(&self, c: &Common) -> Option<Sql> {
        let mut sql = Sql::new(
            "SELECT DISTINCT patient, event_key, toUnixTimestamp64Milli(event_time) AS at_ms \
FROM custos.audit_by_token WHERE ",
        );
        if !self.index_filter(&mut sql, c) {
            return None;
        }
        // One more than the most bound, to tell "all of them" from "too many".
        sql.bind1(" LIMIT ?", MAX_BOUND_KEYS as u64 + 1);
        Some(sql)
    }

    /// Appends the condition on `custos.audit_by_token` that selects the trace's index rows
    /// in `c`'s tenant and window; false (nothing appended) for a client, which is not
    /// indexed.
    fn index_filter(&self, sql: &mut Sql, c: &Common) -> bool {
        sql.bind1("tenant = ?", &c.tenant).bind(
            concat!(" AND event_time >= ", ms!(), " AND event_time < ", ms!()),
            [c.window.from_ms, c.window.to_ms],
        );
        match self {
            Selector::Jti(j) => {
                sql.bind1(" AND kind = 'jti' AND token = ?", j);
            }
            Selector::Session(s) => {
                sql.bind(
                    concat!(
                        " AND ((kind = 'session' AND token = ?) OR (kind = 'jti' AND token IN ",
                        session_tokens!(),
                        "))"
                    ),
                    [s.as_str(), c.tenant.as_str(), s.as_str()],
                );
            }
            Selector::Client(_) => return false,
        }
        true
    }

    /// Restricts `sql` (over `custos.audit_events`, already scoped to `c`'s tenant and
    /// window) to the trace. A jti or session is restricted by the keys `found` in
    /// `custos.audit_by_token`, bound as constants when few, else read by a subquery; both
    /// go through audit_events' primary key. The predicate on the fetched row itself is
    /// kept, so an index row never widens the result.
    fn apply(&self, sql: &mut Sql, c: &Common, found: &Found) {
        let tenant = c.tenant.as_str();
        match self {
            Selector::Jti(j) => {
                sql.bind1(" AND token_jti = ?", j);
            }
            Selector::Session(s) => {
                // The session's own events, and every event of a token seen in the session
                // (at any time).
                sql.bind(
                    concat!(
                        " AND (session_id = ? OR token_jti IN ",
                        session_tokens!(),
                        ")"
                    ),
                    [s.as_str(), tenant, s.as_str()],
                );
            }
            Selector::Client(c) => {
                sql.bind1(" AND client_id = ?", c);
                return;
            }
        }
        match found {
            Found::Keys { pairs, .. } if pairs.is_empty() => {
                sql.push(" AND false");
            }
            Found::Keys {
                pairs,
                first_ms,
                last_ms,
            } => {
                sql.bind(
                    concat!(
                        " AND event_time >= ",
                        ms!(),
                        " AND event_time <= ",
                        ms!(),
                        " AND (patient, event_key) IN ?"
                    ),
                    [
                        Arg::from(*first_ms),
                        Arg::from(*last_ms),
                        Arg::Pairs(pairs.clone()),
                    ],
                );
            }
            Found::Unread => self.index_subquery(sql, c),
        }
    }

    /// The restriction by a subquery on `custos.audit_by_token`, for a trace with more
    /// keys than [`MAX_BOUND_KEYS`].
    fn index_subquery(&self, sql: &mut Sql, c: &Common) {
        if matches!(self, Selector::Client(_)) {
            return;
        }
        sql.push(
            " AND (tenant, patient, event_time, event_key) IN (SELECT tenant, patient, \
event_time, event_key FROM custos.audit_by_token WHERE ",
        );
        self.index_filter(sql, c);
        sql.push(")");
    }
}

/// Most index keys bound as constants into a trace's queries; a jti or session with more
/// events in the window is restricted by a subquery on the index instead.
pub const MAX_BOUND_KEYS: usize = 2000;

/// One row of [`Selector::keys`]: where an event of the trace is in `custos.audit_events`.
#[derive(Debug, Clone, PartialEq, Eq, Row, Deserialize)]
pub struct KeyRow {
    /// The event's patient column (its sorting key's second column).
    pub patient: String,
    /// The event's key.
    pub event_key: String,
    /// Its time, ms.
    pub at_ms: i64,
}

/// What the index lookup of a trace found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Every key of the trace in the window (empty: the trace has no events), and the
    /// time span they cover.
    Keys {
        /// `(patient, event_key)` pairs.
        pairs: Vec<(String, String)>,
        /// Earliest event time, ms.
        first_ms: i64,
        /// Latest event time, ms.
        last_ms: i64,
    },
    /// Not read: a client trace, or more keys than [`MAX_BOUND_KEYS`].
    Unread,
}

impl Found {
    /// From the rows of [`Selector::keys`] (`None`: no lookup was made).
    pub fn new(rows: Option<Vec<KeyRow>>) -> Found {
        match rows {
            Some(rows) if rows.len() <= MAX_BOUND_KEYS => Found::Keys {
                first_ms: rows.iter().map(|r| r.at_ms).min().unwrap_or(0),
                last_ms: rows.iter().map(|r| r.at_ms).max().unwrap_or(0),
                pairs: rows.into_iter().map(|r| (r.patient, r.event_key)).collect(),
            },
            _ => Found::Unread,
        }
    }

    /// True when the lookup proved the trace empty.
    pub fn is_empty(&self) -> bool {
        matches!(self, Found::Keys { pairs, .. } if pairs.is_empty())
    }
}

/// The events of the trace, in the stable order.
pub fn events(c: &Common, sel: &Selector, found: &Found, limit: u64) -> Sql {
    let mut sql = Sql::new(SELECT_EVENTS);
    scope(&mut sql, c);
    sel.apply(&mut sql, c, found);
    order_limit(&mut sql, limit);
    sql
}

/// Most tokens summarized in one trace.
pub const MAX_TOKENS: u64 = 1000;

/// Per-token lifecycle summary over the whole window (not only the current page). The token's
/// client comes from its own events (issue, refresh, use), not from an introspection, whose
/// client is the resource server that asked. A sign-in row carrying the token (the password
/// grant issues tokens in its login event) counts as the issuance.
pub fn summary(c: &Common, sel: &Selector, found: &Found) -> Sql {
    let mut sql = Sql::new(
        "SELECT t_jti AS token_jti, t_client AS client_id, t_user AS user_sub, t_fhir_user AS fhir_user, \
t_session AS session_id, t_issued AS issued_at, t_refreshed AS refreshed_at, t_revoked AS revoked_at, \
t_reason AS revocation_reason, t_expires AS expires_at, t_introspections AS introspections, \
t_inactive AS inactive_introspections, t_accesses AS accesses, t_denied AS denied_accesses, \
t_granted AS scopes_granted, t_presented AS scopes_presented, t_operations AS operations, t_ips AS ips, \
toUInt64(arrayCount(x -> t_revoked > 0 AND x > t_revoked, t_access_times)) AS accesses_after_revocation, \
toUInt64(arrayCount(x -> t_expires > 0 AND x > t_expires, t_access_times)) AS accesses_after_expiry \
FROM (SELECT token_jti AS t_jti, \
anyIf(client_id, client_id != '' AND event_type != 'custos.token.introspected') AS t_client_own, \
if(t_client_own != '', t_client_own, anyIf(client_id, client_id != '')) AS t_client, \
anyIf(user_sub, user_sub != '') AS t_user, \
anyIf(fhir_user, fhir_user != '') AS t_fhir_user, \
anyIf(session_id, session_id != '') AS t_session, \
toUnixTimestamp64Milli(minIf(event_time, event_type IN ('custos.token.issued', 'custos.auth.login'))) AS t_issued, \
toUnixTimestamp64Milli(maxIf(event_time, event_type = 'custos.token.refreshed')) AS t_refreshed, \
toUnixTimestamp64Milli(minIf(event_time, event_type = 'custos.token.revoked')) AS t_revoked, \
anyIf(reason, event_type = 'custos.token.revoked') AS t_reason, \
toUnixTimestamp64Milli(maxIf(assumeNotNull(expires_at), isNotNull(expires_at) AND event_type IN ('custos.token.issued', 'custos.token.refreshed'))) AS t_expires, \
countIf(event_type = 'custos.token.introspected') AS t_introspections, \
countIf(event_type = 'custos.token.introspected' AND active = false) AS t_inactive, \
countIf(event_type = 'custos.fhir.access') AS t_accesses, \
countIf(event_type = 'custos.fhir.access' AND decision = 'deny') AS t_denied, \
arraySort(groupUniqArrayArrayIf(scopes, event_type IN ('custos.token.issued', 'custos.auth.login', 'custos.token.refreshed'))) AS t_granted, \
arraySort(groupUniqArrayArrayIf(scopes, event_type = 'custos.fhir.access')) AS t_presented, \
arraySort(groupUniqArrayIf(concat(resource_type, '.', interaction), event_type = 'custos.fhir.access')) AS t_operations, \
arraySort(groupUniqArrayIf(source_ip, source_ip != '')) AS t_ips, \
groupArrayIf(toUnixTimestamp64Milli(event_time), event_type = 'custos.fhir.access') AS t_access_times \
FROM custos.audit_events FINAL WHERE ",
    );
    sql.bind1("tenant = ?", &c.tenant).bind(
        concat!(" AND event_time >= ", ms!(), " AND event_time < ", ms!()),
        [c.window.from_ms, c.window.to_ms],
    );
    sel.apply(&mut sql, c, found);
    sql.push(" AND token_jti != '' GROUP BY token_jti) ORDER BY t_issued, t_jti");
    sql.bind1(" LIMIT ?", MAX_TOKENS);
    sql
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::tests::common;

    fn keys_of(n: usize) -> Found {
        Found::new(Some(
            (0..n)
                .map(|i| KeyRow {
                    patient: format!("p{i}"),
                    event_key: format!("k{i}"),
                    at_ms: 1_000 + i as i64,
                })
                .collect(),
        ))
    }

    #[test]
    fn jti_and_session_go_through_the_token_index() {
        let c = common();
        let many = Found::new(Some(vec![
            KeyRow {
                patient: "p".into(),
                event_key: "k".into(),
                at_ms: 1,
            };
            MAX_BOUND_KEYS + 1
        ]));
        assert_eq!(many, Found::Unread);
        for sel in [Selector::Jti("j-1".into()), Selector::Session("s-1".into())] {
            let keys = sel.keys(&c).expect("indexed selector");
            assert!(keys
                .text()
                .starts_with("SELECT DISTINCT patient, event_key"));
            assert!(keys
                .text()
                .contains("FROM custos.audit_by_token WHERE tenant = ?"));
            assert_eq!(keys.text().matches('?').count(), keys.args().len());
            assert_eq!(
                keys.args().last(),
                Some(&Arg::UInt(MAX_BOUND_KEYS as u64 + 1))
            );
            for found in [keys_of(3), Found::Unread, keys_of(0)] {
                for sql in [events(&c, &sel, &found, 11), summary(&c, &sel, &found)] {
                    let t = sql.text();
                    assert_eq!(t.matches('?').count(), sql.args().len(), "{t}");
                    match &found {
                        Found::Unread => assert!(
                            t.contains(
                                "(tenant, patient, event_time, event_key) IN (SELECT tenant, \
patient, event_time, event_key FROM custos.audit_by_token WHERE tenant = ?"
                            ),
                            "{t}"
                        ),
                        f if f.is_empty() => assert!(t.contains(" AND false"), "{t}"),
                        Found::Keys { .. } => {
                            assert!(t.contains(" AND (patient, event_key) IN ?"), "{t}");
                            assert!(sql.args().contains(&Arg::Pairs(vec![
                                ("p0".into(), "k0".into()),
                                ("p1".into(), "k1".into()),
                                ("p2".into(), "k2".into()),
                            ])));
                            // The keys' time span narrows the window.
                            assert!(sql.args().contains(&Arg::Int(1_000)));
                            assert!(sql.args().contains(&Arg::Int(1_002)));
                        }
                    }
                    // The row itself is re-checked: the index never widens a result.
                    match &sel {
                        Selector::Jti(_) => assert!(t.contains(" AND token_jti = ?")),
                        _ => assert!(t.contains(" AND (session_id = ? OR token_jti IN ")),
                    }
                    assert!(sql.args().contains(&Arg::from(c.tenant.as_str())));
                }
            }
        }
        let client = Selector::Client("app".into());
        assert!(client.keys(&c).is_none());
        let sql = events(&c, &client, &Found::new(None), 11);
        assert!(!sql.text().contains("audit_by_token"));
    }

    #[test]
    fn selectors_are_bound() {
        let sel = Selector::Session("s'; DROP TABLE x".into());
        let e = events(&common(), &sel, &Found::Unread, 11);
        assert_eq!(e.text().matches('?').count(), e.args().len());
        assert!(!e.text().contains("DROP"));
        let s = summary(&common(), &sel, &Found::Unread);
        assert_eq!(s.text().matches('?').count(), s.args().len());
        assert!(s.text().contains("GROUP BY token_jti"));
    }
}
