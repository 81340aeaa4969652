//! The report catalogue's reports, one file each (see [`crate::catalogue`]): parameters,
//! name, roles, path, validation, what the query audit records, SQL builder (pure
//! functions: validated parameters in, [`Sql`] out), row types and handler. This module
//! holds the registry and what the event reports share: the audit-row projection they
//! read, their filters, scope and stable order. Every event report reads
//! `custos.audit_events FINAL`, so a replayed event never shows twice, and pages in the
//! stable order `(event_time, event_key)`.
//!
//! Adding a report: its file here, one line in the registry below, and its end-to-end test
//! in `tests/tests/`.

use axum::Router;
use clickhouse::Row;
use custos_schemas::row::NON_COMPARTMENT_TYPES;
use custos_schemas::{KeyRing, PseudonymKind};

pub use custos_schemas::records::{ser_ms, ser_opt_ms, EventRow};

use crate::params::{ms_to_rfc3339, Common, Cursor};
use crate::sql::Sql;
use crate::state::AppState;

crate::catalogue::catalogue! {
    reports {
        patient_access::PatientAccess => patient_access,
        user_activity::UserActivity => user_activity,
        token_trace::TokenTrace => token_trace,
        disclosures::Disclosures => disclosures,
        break_glass::BreakGlassAccess => break_glass,
        revocation_violations::RevocationViolations => revocation_violations,
        consent_history::ConsentHistory => consent_history,
        query_audit::QueryAuditReport => query_audit_report,
    }
    schemas { token_trace::TraceEvent }
}

/// The `/v1` report router: every catalogued report, and the former paths that redirect to
/// a report.
pub fn router() -> Router<AppState> {
    routes().merge(consent_history::moved())
}

/// A `DateTime64(3)` placeholder bound from epoch milliseconds.
macro_rules! ms {
    () => {
        "fromUnixTimestamp64Milli(toInt64(?), 'UTC')"
    };
}
pub(crate) use ms;

/// Rows that sit in the stable order and can produce a cursor.
pub trait Keyed {
    /// The position of this row.
    fn cursor(&self) -> Cursor;
}

/// Rows that render as CSV records.
pub trait Tabular {
    /// Column names.
    fn header() -> &'static [&'static str];
    /// Values, in header order (arrays space separated, absent values empty).
    fn record(&self) -> Vec<String>;
}

/// CSV text of optional epoch ms.
pub fn opt_ms_text(ms: Option<i64>) -> String {
    ms.map(ms_to_rfc3339).unwrap_or_default()
}

/// The columns of [`EventRow`], in order (the CSV header of the event reports).
pub const EVENT_COLUMNS: &[&str] = <EventRow as Row>::COLUMN_NAMES;

/// `SELECT` of the [`EventRow`] columns, up to `WHERE `.
pub const SELECT_EVENTS: &str = "SELECT event_key, event_time, event_type, outcome, issuer, user_sub, user_kind, \
fhir_user, client_id, session_id, token_jti, token_type, scopes, interaction, resource_type, resource_id, \
patient, encounter, consent_id, purpose_of_use, break_glass_reason, decision, http_status, source_ip, \
user_agent, request_id, reason, actor, active, period_start, expires_at \
FROM custos.audit_events FINAL WHERE ";

impl Keyed for EventRow {
    fn cursor(&self) -> Cursor {
        Cursor {
            time_ms: self.event_time,
            key: self.event_key.clone(),
        }
    }
}

impl Tabular for EventRow {
    fn header() -> &'static [&'static str] {
        EVENT_COLUMNS
    }

    fn record(&self) -> Vec<String> {
        vec![
            self.event_key.clone(),
            ms_to_rfc3339(self.event_time),
            self.event_type.clone(),
            self.outcome.clone(),
            self.issuer.clone(),
            self.user_sub.clone(),
            self.user_kind.clone(),
            self.fhir_user.clone(),
            self.client_id.clone(),
            self.session_id.clone(),
            self.token_jti.clone(),
            self.token_type.clone(),
            self.scopes.join(" "),
            self.interaction.clone(),
            self.resource_type.clone(),
            self.resource_id.clone(),
            self.patient.clone(),
            self.encounter.clone(),
            self.consent_id.clone(),
            self.purpose_of_use.join(" "),
            self.break_glass_reason.clone(),
            self.decision.clone(),
            self.http_status.to_string(),
            self.source_ip.clone(),
            self.user_agent.clone(),
            self.request_id.clone(),
            self.reason.clone(),
            self.actor.clone(),
            self.active.map(|a| a.to_string()).unwrap_or_default(),
            opt_ms_text(self.period_start),
            opt_ms_text(self.expires_at),
        ]
    }
}

/// The stored forms a user parameter may match: subjects (readable and pseudonymized
/// under every live key) and `fhirUser` references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMatch {
    /// Values of `user_sub` to match.
    pub subs: Vec<String>,
    /// Values of `fhir_user` to match.
    pub fhir_users: Vec<String>,
}

/// How a `Type/id` reference is stored, under every live key (mirrors the ingest row
/// conversion: non-compartment types readable, Patient/Encounter by their kinds, other
/// compartment resources as `Type/id` of the resource kind).
pub fn stored_references(keys: &KeyRing, tenant: &str, reference: &str) -> Vec<String> {
    let Some((rtype, id)) = reference.rsplit_once('/') else {
        return Vec::new();
    };
    let rtype = rtype.rsplit('/').next().unwrap_or(rtype);
    if rtype.is_empty() || id.is_empty() {
        return Vec::new();
    }
    if NON_COMPARTMENT_TYPES.contains(&rtype) {
        return vec![format!("{rtype}/{id}")];
    }
    let ids = match rtype {
        "Patient" => keys.lookup_all(tenant, PseudonymKind::Patient, id),
        "Encounter" => keys.lookup_all(tenant, PseudonymKind::Encounter, id),
        _ => keys.lookup_all(tenant, PseudonymKind::Resource, &format!("{rtype}/{id}")),
    };
    ids.into_iter().map(|p| format!("{rtype}/{p}")).collect()
}

impl UserMatch {
    /// Every stored form of a user given as a `sub` or a `fhirUser` reference.
    pub fn new(keys: &KeyRing, tenant: &str, user: &str) -> UserMatch {
        let mut subs = vec![user.to_owned()];
        subs.extend(keys.lookup_all(tenant, PseudonymKind::Subject, user));
        let mut fhir_users = vec![user.to_owned()];
        fhir_users.extend(stored_references(keys, tenant, user));
        fhir_users.sort();
        fhir_users.dedup();
        UserMatch { subs, fhir_users }
    }
}

/// Optional filters shared by the event reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// `patient IN` (pseudonyms under every live key).
    pub patients: Option<Vec<String>>,
    /// User (sub or fhirUser).
    pub user: Option<UserMatch>,
    /// OAuth client.
    pub client: Option<String>,
    /// FHIR resource type.
    pub resource_type: Option<String>,
    /// FHIR interactions (any of).
    pub interactions: Option<Vec<String>>,
    /// `success` / `failure`.
    pub outcome: Option<String>,
    /// Purpose of use (one of the event's).
    pub purpose: Option<String>,
    /// `permit` / `deny`.
    pub decision: Option<String>,
    /// Event type.
    pub event_type: Option<String>,
}

impl EventFilter {
    /// Appends ` AND ...` for every filter set.
    pub fn apply(&self, sql: &mut Sql) {
        if let Some(p) = &self.patients {
            sql.bind1(" AND patient IN ?", p.clone());
        }
        if let Some(u) = &self.user {
            sql.bind(
                " AND (user_sub IN ? OR fhir_user IN ?)",
                [u.subs.clone(), u.fhir_users.clone()],
            );
        }
        if let Some(c) = &self.client {
            sql.bind1(" AND client_id = ?", c);
        }
        if let Some(r) = &self.resource_type {
            sql.bind1(" AND resource_type = ?", r);
        }
        if let Some(i) = &self.interactions {
            sql.bind1(" AND interaction IN ?", i.clone());
        }
        if let Some(o) = &self.outcome {
            sql.bind1(" AND outcome = ?", o);
        }
        if let Some(p) = &self.purpose {
            sql.bind1(" AND has(purpose_of_use, ?)", p);
        }
        if let Some(d) = &self.decision {
            sql.bind1(" AND decision = ?", d);
        }
        if let Some(t) = &self.event_type {
            sql.bind1(" AND event_type = ?", t);
        }
    }
}

/// `tenant = ? AND event_time in window` (+ the cursor position).
pub fn scope(sql: &mut Sql, c: &Common) {
    sql.bind1("tenant = ?", &c.tenant).bind(
        concat!(" AND event_time >= ", ms!(), " AND event_time < ", ms!()),
        [c.window.from_ms, c.window.to_ms],
    );
    if let Some(after) = &c.after {
        sql.bind(
            concat!(
                " AND event_time >= ",
                ms!(),
                " AND (event_time, event_key) > (",
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
}

/// ` ORDER BY event_time, event_key LIMIT ?`.
pub fn order_limit(sql: &mut Sql, limit: u64) {
    sql.bind1(" ORDER BY event_time, event_key LIMIT ?", limit);
}

/// An event report: scope, base condition, filters, stable order, `limit` rows.
pub fn events(c: &Common, base: &'static str, filter: &EventFilter, limit: u64) -> Sql {
    let mut sql = Sql::new(SELECT_EVENTS);
    scope(&mut sql, c);
    sql.push(base);
    filter.apply(&mut sql);
    order_limit(&mut sql, limit);
    sql
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::params::{Format, Window};
    use crate::sql::Arg;

    pub(crate) fn keys() -> KeyRing {
        KeyRing::parse(
            "k1=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f,k2=ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100",
            None,
        )
        .unwrap()
    }

    pub(crate) fn common() -> Common {
        Common {
            tenant: "general".into(),
            window: Window {
                from_ms: 1_000,
                to_ms: 2_000,
            },
            limit: 50,
            after: None,
            format: Format::Json,
        }
    }

    #[test]
    fn patient_access_binds_every_value() {
        let k = keys();
        let patients = k.lookup_all("general", PseudonymKind::Patient, "p'1");
        let filter = EventFilter {
            patients: Some(patients.clone()),
            user: Some(UserMatch::new(&k, "general", "Practitioner/alice")),
            interactions: Some(vec!["read".into()]),
            purpose: Some("TREAT".into()),
            ..EventFilter::default()
        };
        let mut c = common();
        c.after = Some(Cursor {
            time_ms: 1_500,
            key: "0123456789abcdef0123456789abcdef".into(),
        });
        let sql = events(&c, patient_access::BASE, &filter, 51);
        assert!(sql.text().starts_with("SELECT event_key, event_time"));
        assert!(sql
            .text()
            .contains("FROM custos.audit_events FINAL WHERE tenant = ?"));
        assert!(sql
            .text()
            .ends_with("AND has(purpose_of_use, ?) ORDER BY event_time, event_key LIMIT ?"));
        assert!(!sql.text().contains("p'1"));
        assert_eq!(sql.text().matches('?').count(), sql.args().len());
        assert_eq!(sql.args()[0], Arg::Str("general".into()));
        assert!(sql.args().contains(&Arg::Strs(patients)));
        assert_eq!(sql.args().last(), Some(&Arg::UInt(51)));
    }

    #[test]
    fn user_match_covers_subjects_and_references() {
        let k = keys();
        let m = UserMatch::new(&k, "general", "Patient/42");
        assert_eq!(m.subs.len(), 3);
        assert!(m.fhir_users.contains(&format!(
            "Patient/{}",
            k.pseudonymize("general", PseudonymKind::Patient, "42")
        )));
        let p = UserMatch::new(&k, "general", "Practitioner/alice");
        assert_eq!(p.fhir_users, vec!["Practitioner/alice".to_owned()]);
        let s = UserMatch::new(&k, "general", "dr-alice");
        assert_eq!(s.fhir_users, vec!["dr-alice".to_owned()]);
        assert!(s.subs.iter().any(|x| x.starts_with("ps1.k1.")));
    }

    #[test]
    fn csv_record_matches_header() {
        let row = EventRow {
            event_key: "k".into(),
            event_time: 0,
            event_type: String::new(),
            outcome: String::new(),
            issuer: String::new(),
            user_sub: String::new(),
            user_kind: String::new(),
            fhir_user: String::new(),
            client_id: String::new(),
            session_id: String::new(),
            token_jti: String::new(),
            token_type: String::new(),
            scopes: vec!["a".into(), "b".into()],
            interaction: String::new(),
            resource_type: String::new(),
            resource_id: String::new(),
            patient: String::new(),
            encounter: String::new(),
            consent_id: String::new(),
            purpose_of_use: vec![],
            break_glass_reason: String::new(),
            decision: String::new(),
            http_status: 200,
            source_ip: String::new(),
            user_agent: String::new(),
            request_id: String::new(),
            reason: String::new(),
            actor: String::new(),
            active: Some(false),
            period_start: None,
            expires_at: Some(1_000),
        };
        let rec = row.record();
        assert_eq!(rec.len(), EventRow::header().len());
        assert_eq!(rec[12], "a b");
        assert_eq!(rec[28], "false");
        assert_eq!(rec[30], "1970-01-01T00:00:01.000Z");
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["event_time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["period_start"], serde_json::Value::Null);
    }

    #[test]
    fn select_reads_the_projection_columns_in_order() {
        let listed = SELECT_EVENTS
            .strip_prefix("SELECT ")
            .and_then(|s| s.strip_suffix(" FROM custos.audit_events FINAL WHERE "))
            .unwrap();
        let listed: Vec<&str> = listed.split(", ").collect();
        assert_eq!(listed, EVENT_COLUMNS);
        assert_eq!(EVENT_COLUMNS.len(), 31);
    }
}
