//! Token trace for incident response: by `jti`, AS session or client, the token lifecycle
//! from the AS (issued, refreshed, introspected, revoked), every access made with it, the
//! IPs seen, the operations performed against the SMART scopes granted, and uses after
//! revocation or expiry flagged.

use std::collections::HashMap;

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ms, order_limit, scope, EventRow, Keyed, Tabular, EVENT_COLUMNS, SELECT_EVENTS};
use crate::params::{Common, Cursor};
use crate::sql::{Arg, Sql};

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

/// Per-token lifecycle summary over the whole window (not only the current page).
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
anyIf(client_id, client_id != '') AS t_client, \
anyIf(user_sub, user_sub != '') AS t_user, \
anyIf(fhir_user, fhir_user != '') AS t_fhir_user, \
anyIf(session_id, session_id != '') AS t_session, \
toUnixTimestamp64Milli(minIf(event_time, event_type = 'custos.token.issued')) AS t_issued, \
toUnixTimestamp64Milli(maxIf(event_time, event_type = 'custos.token.refreshed')) AS t_refreshed, \
toUnixTimestamp64Milli(minIf(event_time, event_type = 'custos.token.revoked')) AS t_revoked, \
anyIf(reason, event_type = 'custos.token.revoked') AS t_reason, \
toUnixTimestamp64Milli(maxIf(assumeNotNull(expires_at), isNotNull(expires_at) AND event_type IN ('custos.token.issued', 'custos.token.refreshed'))) AS t_expires, \
countIf(event_type = 'custos.token.introspected') AS t_introspections, \
countIf(event_type = 'custos.token.introspected' AND active = false) AS t_inactive, \
countIf(event_type = 'custos.fhir.access') AS t_accesses, \
countIf(event_type = 'custos.fhir.access' AND decision = 'deny') AS t_denied, \
arraySort(groupUniqArrayArrayIf(scopes, event_type IN ('custos.token.issued', 'custos.token.refreshed'))) AS t_granted, \
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

/// The aggregate row of [`summary`].
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub struct SummaryRow {
    /// Token id.
    pub token_jti: String,
    /// Client.
    pub client_id: String,
    /// Subject.
    pub user_sub: String,
    /// fhirUser.
    pub fhir_user: String,
    /// Session.
    pub session_id: String,
    /// ms, 0 if unseen.
    pub issued_at: i64,
    /// ms, 0 if unseen.
    pub refreshed_at: i64,
    /// ms, 0 if unseen.
    pub revoked_at: i64,
    /// Revocation reason.
    pub revocation_reason: String,
    /// ms, 0 if unknown.
    pub expires_at: i64,
    /// Count.
    pub introspections: u64,
    /// Count.
    pub inactive_introspections: u64,
    /// Count.
    pub accesses: u64,
    /// Count.
    pub denied_accesses: u64,
    /// Scopes in the AS's issued/refreshed events.
    pub scopes_granted: Vec<String>,
    /// Scopes the gateway saw on the token.
    pub scopes_presented: Vec<String>,
    /// `ResourceType.interaction` performed.
    pub operations: Vec<String>,
    /// IPs seen.
    pub ips: Vec<String>,
    /// Count.
    pub accesses_after_revocation: u64,
    /// Count.
    pub accesses_after_expiry: u64,
}

/// Lifecycle of one token.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TokenSummary {
    /// Token id.
    pub jti: String,
    /// Client.
    pub client_id: String,
    /// Subject.
    pub user_sub: String,
    /// fhirUser.
    pub fhir_user: String,
    /// AS session.
    pub session_id: String,
    /// Issued (RFC 3339).
    pub issued_at: Option<String>,
    /// Last refreshed (RFC 3339).
    pub last_refreshed_at: Option<String>,
    /// Expiry (RFC 3339).
    pub expires_at: Option<String>,
    /// First revocation (RFC 3339).
    pub revoked_at: Option<String>,
    /// Why it was revoked.
    pub revocation_reason: String,
    /// Introspections seen.
    pub introspections: u64,
    /// Introspections that answered `active: false`.
    pub inactive_introspections: u64,
    /// FHIR accesses made with it.
    pub accesses: u64,
    /// Of which denied.
    pub denied_accesses: u64,
    /// Accesses after its revocation.
    pub accesses_after_revocation: u64,
    /// Accesses after its expiry.
    pub accesses_after_expiry: u64,
    /// IPs seen (pseudonyms for patient users).
    pub ips: Vec<String>,
    /// Scopes granted.
    pub scopes_granted: Vec<String>,
    /// Operations performed (`ResourceType.interaction`).
    pub operations: Vec<String>,
    /// Operations no granted scope covers.
    pub operations_not_granted: Vec<String>,
    /// Resource scopes granted but never used.
    pub scopes_unused: Vec<String>,
    /// `used_after_revocation`, `used_after_expiry`, `scope_exceeded`.
    pub flags: Vec<String>,
}

/// The SMART permission letter an interaction needs (`None`: not scope-checked).
pub fn permission(interaction: &str) -> Option<char> {
    match interaction {
        "read" | "vread" | "history" | "history-instance" | "history-type" => Some('r'),
        "search" | "search-type" | "search-system" | "history-system" => Some('s'),
        "create" => Some('c'),
        "update" | "patch" => Some('u'),
        "delete" => Some('d'),
        _ => None,
    }
}

/// Whether a SMART v1/v2 scope (`patient/Observation.rs`, `user/*.read`, ...) covers
/// `letter` on `resource_type`.
pub fn scope_covers(scope: &str, resource_type: &str, letter: char) -> bool {
    let Some((context, rest)) = scope.split_once('/') else {
        return false;
    };
    if !matches!(context, "patient" | "user" | "system") {
        return false;
    }
    let rest = rest.split('?').next().unwrap_or(rest);
    let Some((rtype, perms)) = rest.split_once('.') else {
        return false;
    };
    if rtype != "*" && rtype != resource_type {
        return false;
    }
    match perms {
        "*" => true,
        "read" => matches!(letter, 'r' | 's'),
        "write" => matches!(letter, 'c' | 'u' | 'd'),
        p if !p.is_empty() && p.chars().all(|c| "cruds".contains(c)) => p.contains(letter),
        _ => false,
    }
}

fn opt_time(ms: i64) -> Option<String> {
    (ms > 0).then(|| crate::params::ms_to_rfc3339(ms))
}

impl From<SummaryRow> for TokenSummary {
    fn from(r: SummaryRow) -> TokenSummary {
        let granted = if r.scopes_granted.is_empty() {
            r.scopes_presented.clone()
        } else {
            r.scopes_granted.clone()
        };
        let mut not_granted = Vec::new();
        let mut used_scopes = vec![false; granted.len()];
        for op in &r.operations {
            let Some((rtype, interaction)) = op.split_once('.') else {
                continue;
            };
            let Some(letter) = permission(interaction) else {
                continue;
            };
            let mut covered = false;
            for (i, s) in granted.iter().enumerate() {
                if scope_covers(s, rtype, letter) {
                    covered = true;
                    used_scopes[i] = true;
                }
            }
            if !covered {
                not_granted.push(op.clone());
            }
        }
        let unused: Vec<String> = granted
            .iter()
            .zip(&used_scopes)
            .filter(|(s, used)| !**used && s.contains('/'))
            .map(|(s, _)| s.clone())
            .collect();
        let mut flags = Vec::new();
        if r.accesses_after_revocation > 0 {
            flags.push("used_after_revocation".to_owned());
        }
        if r.accesses_after_expiry > 0 {
            flags.push("used_after_expiry".to_owned());
        }
        if !not_granted.is_empty() {
            flags.push("scope_exceeded".to_owned());
        }
        TokenSummary {
            issued_at: opt_time(r.issued_at),
            last_refreshed_at: opt_time(r.refreshed_at),
            expires_at: opt_time(r.expires_at),
            revoked_at: opt_time(r.revoked_at),
            jti: r.token_jti,
            client_id: r.client_id,
            user_sub: r.user_sub,
            fhir_user: r.fhir_user,
            session_id: r.session_id,
            revocation_reason: r.revocation_reason,
            introspections: r.introspections,
            inactive_introspections: r.inactive_introspections,
            accesses: r.accesses,
            denied_accesses: r.denied_accesses,
            accesses_after_revocation: r.accesses_after_revocation,
            accesses_after_expiry: r.accesses_after_expiry,
            ips: r.ips,
            scopes_granted: granted,
            operations: r.operations,
            operations_not_granted: not_granted,
            scopes_unused: unused,
            flags,
        }
    }
}

/// Revocation and expiry instants of each token, to flag events.
#[derive(Debug, Clone, Default)]
pub struct Deadlines(HashMap<String, (i64, i64)>);

impl Deadlines {
    /// From the summary rows.
    pub fn new(rows: &[SummaryRow]) -> Deadlines {
        Deadlines(
            rows.iter()
                .map(|r| (r.token_jti.clone(), (r.revoked_at, r.expires_at)))
                .collect(),
        )
    }

    /// Flags an event.
    pub fn flag(&self, e: EventRow) -> TraceEvent {
        let (revoked, expires) = self.0.get(&e.token_jti).copied().unwrap_or((0, 0));
        let is_access = e.event_type == "custos.fhir.access";
        TraceEvent {
            after_revocation: is_access && revoked > 0 && e.event_time > revoked,
            after_expiry: is_access && expires > 0 && e.event_time > expires,
            event: e,
        }
    }
}

/// An event of the trace with its flags.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TraceEvent {
    /// The audit record.
    #[serde(flatten)]
    pub event: EventRow,
    /// An access made after the token was revoked.
    pub after_revocation: bool,
    /// An access made after the token expired.
    pub after_expiry: bool,
}

impl Keyed for TraceEvent {
    fn cursor(&self) -> Cursor {
        self.event.cursor()
    }
}

const TRACE_COLUMNS: [&str; 33] = {
    let mut out = [""; 33];
    let mut i = 0;
    while i < EVENT_COLUMNS.len() {
        out[i] = EVENT_COLUMNS[i];
        i += 1;
    }
    out[31] = "after_revocation";
    out[32] = "after_expiry";
    out
};

impl Tabular for TraceEvent {
    fn header() -> &'static [&'static str] {
        &TRACE_COLUMNS
    }

    fn record(&self) -> Vec<String> {
        let mut r = self.event.record();
        r.push(self.after_revocation.to_string());
        r.push(self.after_expiry.to_string());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::tests::common;

    #[test]
    fn smart_scopes() {
        assert!(scope_covers("user/Observation.rs", "Observation", 'r'));
        assert!(scope_covers("user/Observation.rs", "Observation", 's'));
        assert!(!scope_covers("user/Observation.rs", "Observation", 'u'));
        assert!(scope_covers("patient/*.read", "Condition", 's'));
        assert!(!scope_covers("patient/*.read", "Condition", 'c'));
        assert!(scope_covers("system/Patient.write", "Patient", 'u'));
        assert!(scope_covers(
            "patient/Observation.rs?category=laboratory",
            "Observation",
            'r'
        ));
        assert!(!scope_covers("launch", "Observation", 'r'));
        assert!(!scope_covers("user/Patient.rs", "Observation", 'r'));
    }

    #[test]
    fn summary_flags_scope_excess_and_late_use() {
        let row = SummaryRow {
            token_jti: "j".into(),
            client_id: "c".into(),
            user_sub: "u".into(),
            fhir_user: String::new(),
            session_id: String::new(),
            issued_at: 1,
            refreshed_at: 0,
            revoked_at: 5,
            revocation_reason: "r".into(),
            expires_at: 0,
            introspections: 0,
            inactive_introspections: 0,
            accesses: 3,
            denied_accesses: 0,
            scopes_granted: vec![
                "launch".into(),
                "user/Observation.rs".into(),
                "user/Condition.rs".into(),
            ],
            scopes_presented: vec![],
            operations: vec!["Observation.read".into(), "Patient.delete".into()],
            ips: vec![],
            accesses_after_revocation: 1,
            accesses_after_expiry: 0,
        };
        let s = TokenSummary::from(row);
        assert_eq!(s.operations_not_granted, vec!["Patient.delete".to_owned()]);
        assert_eq!(s.scopes_unused, vec!["user/Condition.rs".to_owned()]);
        assert_eq!(s.flags, vec!["used_after_revocation", "scope_exceeded"]);
        assert_eq!(s.expires_at, None);
    }

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
