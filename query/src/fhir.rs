//! The FHIR R4 endpoint over the audit trail, for FHIR clients:
//!
//! - `GET /fhir/metadata`: the `CapabilityStatement` (public; [`capability`]);
//! - `GET /fhir/AuditEvent`: search, a `searchset` Bundle of IHE BALP-profiled AuditEvents
//!   built from `custos.fhir.access` records ([`search`]);
//! - `GET /fhir/AuditEvent/{id}`: read by id ([`read`]).
//!
//! Search parameters: `_id`, `patient` (raw id or `Patient/id`, hashed under every live
//! key), `agent` (user `sub` or `fhirUser`), `entity-type` (resource type of the accessed
//! entity), `date` (repeatable, prefixes `ge`, `gt`, `le`, `lt`, `eq`), `action` (C, R, U,
//! D, E), `outcome` (0, 4, 8, 12), `subtype` (restful-interaction code, optionally
//! `system|code`), the Custos extension `tenant`; comma = or within a value, repetition =
//! and. Result parameters: `_count`, `_total` (`none`, `estimate`, `accurate`: a bound
//! `count()` over the same filter), `_summary` (`count`, `data`, `false`), `_elements`,
//! `_sort=date`, `_cursor` (from the `next` link). General parameters on every interaction:
//! `_format` (JSON only; XML and other formats 406) and `_pretty`. Anything else is refused
//! (400). Every error is an `OperationOutcome` ([`outcome`]).

pub mod capability;
pub mod general;
pub mod outcome;
pub mod read;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{Duration, NaiveDate, Utc};
use custos_schemas::PseudonymKind;
use serde_json::{json, Value};

use crate::access::{authorize, Report};
use crate::error::ApiError;
use crate::export::{audited, page_of};
use crate::params::{self, ms_to_rfc3339, AuditParams, Common, Cursor, Format, Window};
use crate::reports::{self, EventFilter, EventRow, UserMatch};
use crate::sql::Sql;
use crate::state::AppState;
use custos_auth::audit::Asked;
use custos_auth::oidc::Caller;
use general::General;
use outcome::{fhir_json, FhirError};

/// BALP profile base URL.
pub const BALP: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/";

/// The AuditEvent `action` of an interaction.
pub fn action(interaction: &str) -> &'static str {
    match interaction {
        "create" => "C",
        "read" | "vread" | "history" | "history-instance" | "history-type" => "R",
        "update" | "patch" => "U",
        "delete" => "D",
        _ => "E",
    }
}

/// Interactions of an AuditEvent `action` code.
pub fn interactions_of(action: &str) -> Option<&'static [&'static str]> {
    Some(match action {
        "C" => &["create"],
        "R" => &[
            "read",
            "vread",
            "history",
            "history-instance",
            "history-type",
        ],
        "U" => &["update", "patch"],
        "D" => &["delete"],
        "E" => &[
            "search",
            "search-type",
            "search-system",
            "history-system",
            "capabilities",
            "transaction",
            "batch",
            "operation",
        ],
        _ => return None,
    })
}

fn profile(interaction: &str, has_patient: bool) -> Option<String> {
    let base = match action(interaction) {
        "C" => "Create",
        "R" => "Read",
        "U" => "Update",
        "D" => "Delete",
        _ if interaction.starts_with("search") => "Query",
        _ => return None,
    };
    let p = if has_patient { "Patient" } else { "" };
    Some(format!("{BALP}IHE.BasicAudit.{p}{base}"))
}

fn coding(system: &str, code: &str, display: Option<&str>) -> Value {
    let mut c = json!({"system": system, "code": code});
    if let Some(d) = display {
        c["display"] = json!(d);
    }
    c
}

/// One BALP-profiled AuditEvent from an access record (identifiers as stored).
pub fn audit_event(r: &EventRow) -> Value {
    let outcome = if r.outcome == "success" {
        "0"
    } else if r.http_status >= 500 {
        "8"
    } else {
        "4"
    };
    let purposes: Vec<Value> = r
        .purpose_of_use
        .iter()
        .map(|p| {
            json!({"coding": [coding("http://terminology.hl7.org/CodeSystem/v3-ActReason", p, None)]})
        })
        .collect();
    let dcm = "http://dicom.nema.org/resources/ontology/DCM";
    let mut client = json!({
        "type": {"coding": [coding(dcm, "110153", Some("Source Role ID"))]},
        "who": {"identifier": {"value": r.client_id}},
        "requestor": false,
    });
    if !r.source_ip.is_empty() {
        client["network"] = json!({"address": r.source_ip, "type": "2"});
    }
    let server = json!({
        "type": {"coding": [coding(dcm, "110152", Some("Destination Role ID"))]},
        "who": {"display": "FHIR server"},
        "requestor": false,
    });
    let mut user = json!({
        "type": {"coding": [coding("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP", Some("information recipient"))]},
        "who": {"identifier": {"value": r.user_sub}},
        "requestor": true,
    });
    if !r.fhir_user.is_empty() {
        user["who"]["reference"] = json!(r.fhir_user);
    }
    if !r.token_jti.is_empty() {
        user["policy"] = json!([r.token_jti]);
    }
    if !purposes.is_empty() {
        user["purposeOfUse"] = json!(purposes);
    }
    let entity_type = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
    let object_role = "http://terminology.hl7.org/CodeSystem/object-role";
    let mut entities = Vec::new();
    if !r.patient.is_empty() {
        entities.push(json!({
            "what": {"reference": format!("Patient/{}", r.patient)},
            "type": coding(entity_type, "1", Some("Person")),
            "role": coding(object_role, "1", Some("Patient")),
        }));
    }
    if !r.resource_id.is_empty() {
        entities.push(json!({
            "what": {"reference": format!("{}/{}", r.resource_type, r.resource_id)},
            "type": coding(entity_type, "2", Some("System Object")),
            "role": coding(object_role, "4", Some("Domain Resource")),
        }));
    } else if !r.resource_type.is_empty() {
        entities.push(json!({
            "what": {"display": r.resource_type},
            "type": coding(entity_type, "2", Some("System Object")),
            "role": coding(object_role, "24", Some("Query")),
        }));
    }
    if !r.request_id.is_empty() {
        entities.push(json!({
            "what": {"identifier": {"value": r.request_id}},
            "type": coding("https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "XrequestId", None),
        }));
    }
    let mut ev = json!({
        "resourceType": "AuditEvent",
        "id": r.event_key,
        "type": coding("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", Some("RESTful Operation")),
        "subtype": [coding("http://hl7.org/fhir/restful-interaction", &r.interaction, None)],
        "action": action(&r.interaction),
        "recorded": ms_to_rfc3339(r.event_time),
        "outcome": outcome,
        "agent": [client, server, user],
        "source": {
            "observer": {"display": "custos"},
            "type": [coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4", Some("Application Server"))],
        },
        "entity": entities,
    });
    if let Some(p) = profile(&r.interaction, !r.patient.is_empty()) {
        ev["meta"] = json!({"profile": [p]});
    }
    if !purposes.is_empty() {
        ev["purposeOfEvent"] = json!(purposes);
    }
    ev
}

const DAY_MS: i64 = 86_400_000;

/// Applies one `date` value (with prefix) to the window bounds.
fn apply_date(v: &str, from: &mut Option<i64>, to: &mut Option<i64>) -> Result<(), FhirError> {
    let (prefix, value) = match v.get(..2) {
        Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, &v[2..]),
        _ => ("eq", v),
    };
    let day = NaiveDate::parse_from_str(value, "%Y-%m-%d").is_ok();
    let t = params::parse_time("date", value)?;
    let span = if day { DAY_MS } else { 1 };
    let merge_from = |cur: &mut Option<i64>, x: i64| *cur = Some(cur.map_or(x, |c| c.max(x)));
    let merge_to = |cur: &mut Option<i64>, x: i64| *cur = Some(cur.map_or(x, |c| c.min(x)));
    match prefix {
        "ge" => merge_from(from, t),
        "gt" => merge_from(from, t + span),
        "le" => merge_to(to, t + span),
        "lt" => merge_to(to, t),
        _ => {
            merge_from(from, t);
            merge_to(to, t + span);
        }
    }
    Ok(())
}

/// `_total` of a search.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Total {
    /// Not asked: the total is given only when the first page holds every match.
    #[default]
    Unasked,
    /// `none`: never given.
    None,
    /// `accurate` (and `estimate`, answered accurately): a `count()` over the same filter.
    Accurate,
}

/// A validated AuditEvent search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchParams {
    /// `_format`, `_pretty`.
    pub general: General,
    /// `tenant` (Custos extension).
    pub tenant: Option<String>,
    /// `patient`: raw id (a `Patient/` prefix removed by the hashing lookup).
    pub patient: Option<String>,
    /// `agent`: user sub or fhirUser.
    pub agent: Option<String>,
    /// `entity-type`.
    pub entity_type: Option<String>,
    /// Lower bound of `date`, ms.
    pub from: Option<i64>,
    /// Upper bound of `date` (exclusive), ms.
    pub to: Option<i64>,
    /// Interactions from `action` and `subtype` (or within a value, and across values).
    pub interactions: Option<Vec<String>>,
    /// `success` / `failure` from `outcome`.
    pub outcome: Option<String>,
    /// Event keys from `_id` (ids that are no event key match nothing).
    pub ids: Option<Vec<String>>,
    /// `_count`.
    pub count: Option<u64>,
    /// `_cursor` (from the `next` link).
    pub cursor: Option<Cursor>,
    /// `_total`.
    pub total: Total,
    /// `_summary=count`: the total only, no entries.
    pub summary_count: bool,
    /// `_elements`: top-level elements kept in each AuditEvent.
    pub elements: Option<Vec<String>>,
}

/// Parameters of the search that may be given once.
const ONCE: &[&str] = &[
    "tenant",
    "patient",
    "agent",
    "entity-type",
    "outcome",
    "_count",
    "_cursor",
    "_total",
    "_summary",
    "_elements",
    "_sort",
];

/// The supported parameters, for the refusal of any other.
const SUPPORTED: &str = "_id, patient, agent, entity-type, date, action, outcome, subtype, tenant, _count, _total, _summary, _elements, _sort, _format, _pretty";

/// `list` and `any_of` (FHIR: comma = or within a value, repetition = and).
fn and_any(cur: &mut Option<Vec<String>>, any_of: Vec<String>) {
    let mut next = match cur.take() {
        None => any_of,
        Some(prev) => prev.into_iter().filter(|x| any_of.contains(x)).collect(),
    };
    next.sort();
    next.dedup();
    *cur = Some(next);
}

/// The refusal of an unknown parameter: names it when it looks like a parameter name.
fn unsupported(name: &str) -> FhirError {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'));
    if plain {
        FhirError::bad(format!(
            "unsupported search parameter {name} (supported: {SUPPORTED})"
        ))
    } else {
        FhirError::bad(format!(
            "unsupported search parameter (supported: {SUPPORTED})"
        ))
    }
}

/// Validates the query of an AuditEvent search (`page_max`: largest `_count`).
pub fn parse_search(pairs: &[(String, String)], page_max: u32) -> Result<SearchParams, FhirError> {
    let mut p = SearchParams::default();
    let mut seen = std::collections::HashSet::new();
    for (k, v) in pairs {
        if p.general.take(k, v)? {
            continue;
        }
        if ONCE.contains(&k.as_str()) && !seen.insert(k.as_str()) {
            return Err(FhirError::bad(format!("{k} may be given once")));
        }
        match k.as_str() {
            "tenant" => {
                if !crate::params::valid_tenant(v) {
                    return Err(FhirError::bad(
                        "tenant must be 1-64 characters of A-Z a-z 0-9 . _ -",
                    ));
                }
                p.tenant = Some(v.clone());
            }
            "patient" => p.patient = params::ident("patient", Some(v))?,
            "agent" => p.agent = params::ident("agent", Some(v))?,
            "entity-type" => p.entity_type = params::resource_type("entity-type", Some(v))?,
            "date" => apply_date(v, &mut p.from, &mut p.to)?,
            "action" => {
                let mut list = Vec::new();
                for a in v.split(',') {
                    let i = interactions_of(a)
                        .ok_or_else(|| FhirError::bad("action must be C, R, U, D or E"))?;
                    list.extend(i.iter().map(|s| (*s).to_owned()));
                }
                and_any(&mut p.interactions, list);
            }
            "subtype" => {
                let mut list = Vec::new();
                for st in v.split(',') {
                    let code = st
                        .strip_prefix("http://hl7.org/fhir/restful-interaction|")
                        .unwrap_or(st);
                    let i = params::interaction("subtype", Some(code))?
                        .ok_or_else(|| FhirError::bad("subtype is empty"))?;
                    list.push(i);
                }
                and_any(&mut p.interactions, list);
            }
            "outcome" => {
                p.outcome = Some(match v.as_str() {
                    "0" => "success".to_owned(),
                    "4" | "8" | "12" => "failure".to_owned(),
                    _ => return Err(FhirError::bad("outcome must be 0, 4, 8 or 12")),
                })
            }
            "_id" => {
                if v.is_empty() || v.len() > 64 * 100 {
                    return Err(FhirError::bad("_id must list 1-100 ids"));
                }
                let ids: Vec<String> = v
                    .split(',')
                    .filter(|id| params::is_key(id))
                    .map(str::to_owned)
                    .collect();
                and_any(&mut p.ids, ids);
            }
            "_count" => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| FhirError::bad("_count must be a positive integer"))?;
                if n == 0 || n > u64::from(page_max) {
                    return Err(FhirError::bad(format!("_count must be 1..={page_max}")));
                }
                p.count = Some(n);
            }
            "_cursor" => p.cursor = Some(Cursor::decode(v)?),
            "_total" => {
                p.total = match v.as_str() {
                    "none" => Total::None,
                    "estimate" | "accurate" => Total::Accurate,
                    _ => return Err(FhirError::bad("_total must be none, estimate or accurate")),
                }
            }
            "_summary" => {
                match v.as_str() {
                    "count" => p.summary_count = true,
                    "false" | "data" => {}
                    _ => return Err(FhirError::bad(
                        "_summary must be count, data or false (AuditEvents have no summary form)",
                    )),
                }
            }
            "_elements" => p.elements = Some(elements(v)?),
            "_sort" => {
                if v != "date" {
                    return Err(FhirError::bad(
                        "_sort supports date (ascending, the order of every page) only",
                    ));
                }
            }
            _ => return Err(unsupported(k)),
        }
    }
    Ok(p)
}

/// The top-level element names of an `_elements` value (letters only, at most 64 each).
pub fn elements(v: &str) -> Result<Vec<String>, FhirError> {
    let names: Vec<String> = v.split(',').map(|e| e.trim().to_owned()).collect();
    let ok = names
        .iter()
        .all(|n| !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphabetic()));
    if !ok {
        return Err(FhirError::bad(
            "_elements must list top-level element names",
        ));
    }
    Ok(names)
}

/// The AuditEvent of a row, with only the `elements` of `_elements` when given.
pub fn resource(r: &EventRow, elements: Option<&[String]>) -> Value {
    let ev = audit_event(r);
    match elements {
        Some(e) => subset(ev, e),
        None => ev,
    }
}

/// The query string of a FHIR interaction, whether axum could parse it or not.
pub type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// Checks that `caller` may read AuditEvents and returns the query's parameters (a query
/// string that does not parse is a 400).
pub fn authorized_pairs(
    s: &AppState,
    caller: &Caller,
    query: QueryPairs,
) -> Result<Vec<(String, String)>, FhirError> {
    authorize(s, caller, Report::FhirAuditEvent)?;
    let Query(pairs) = query.map_err(|_| FhirError::bad("invalid query string"))?;
    Ok(pairs)
}

/// Keeps the mandatory and the listed top-level elements (`_elements`) and marks the
/// resource as subsetted.
pub fn subset(mut ev: Value, elements: &[String]) -> Value {
    if let Some(obj) = ev.as_object_mut() {
        obj.retain(|k, _| {
            matches!(k.as_str(), "resourceType" | "id" | "meta") || elements.iter().any(|e| e == k)
        });
        let meta = obj.entry("meta").or_insert_with(|| json!({}));
        meta["tag"] = json!([{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "SUBSETTED",
            "display": "subsetted",
        }]);
    }
    ev
}

/// The rows of the search: scope, FHIR accesses, filters, ids.
fn search_where(sql: &mut Sql, c: &Common, filter: &EventFilter, ids: &Option<Vec<String>>) {
    reports::scope(sql, c);
    sql.push(reports::patient_access::BASE);
    filter.apply(sql);
    if let Some(ids) = ids {
        sql.bind1(" AND event_key IN ?", ids.clone());
    }
}

/// One page of the search (`limit` rows from the cursor on).
pub fn page_sql(c: &Common, filter: &EventFilter, ids: &Option<Vec<String>>, limit: u64) -> Sql {
    let mut sql = Sql::new(reports::SELECT_EVENTS);
    search_where(&mut sql, c, filter, ids);
    reports::order_limit(&mut sql, limit);
    sql
}

/// The number of matches of the whole search (every page: the cursor is ignored).
pub fn count_sql(c: &Common, filter: &EventFilter, ids: &Option<Vec<String>>) -> Sql {
    let whole = Common {
        after: None,
        ..c.clone()
    };
    let mut sql = Sql::new("SELECT count() FROM custos.audit_events FINAL WHERE ");
    search_where(&mut sql, &whole, filter, ids);
    sql
}

/// FHIR AuditEvent search (`search-type`).
#[utoipa::path(get, path = "/fhir/AuditEvent",
    params(
        ("_id" = Option<String>, Query, description = "AuditEvent id; comma = or"),
        ("patient" = Option<String>, Query, description = "Raw patient id or Patient/id"),
        ("agent" = Option<String>, Query, description = "User sub or fhirUser"),
        ("entity-type" = Option<String>, Query, description = "Resource type of the entity"),
        ("date" = Option<String>, Query, description = "ge/gt/le/lt/eq + date or dateTime; repeatable"),
        ("action" = Option<String>, Query, description = "C, R, U, D or E"),
        ("outcome" = Option<String>, Query, description = "0, 4, 8 or 12"),
        ("subtype" = Option<String>, Query, description = "restful-interaction code"),
        ("_count" = Option<u32>, Query, description = "Page size"),
        ("_total" = Option<String>, Query, description = "none, estimate or accurate"),
        ("_summary" = Option<String>, Query, description = "count, data or false"),
        ("_elements" = Option<String>, Query, description = "Top-level elements to keep"),
        ("_sort" = Option<String>, Query, description = "date (the only order)"),
        ("_format" = Option<String>, Query, description = "json, application/json or application/fhir+json"),
        ("_pretty" = Option<bool>, Query, description = "Indented JSON"),
        ("_cursor" = Option<String>, Query, description = "Paging cursor from the next link"),
        ("tenant" = Option<String>, Query, description = "Tenant"),
    ),
    responses((status = 200, description = "searchset Bundle", content_type = "application/fhir+json"),
        (status = 400, description = "OperationOutcome", content_type = "application/fhir+json"),
        (status = 401, description = "OperationOutcome", content_type = "application/fhir+json"),
        (status = 403, description = "OperationOutcome", content_type = "application/fhir+json"),
        (status = 406, description = "OperationOutcome", content_type = "application/fhir+json")),
    security(("bearer" = [])), tag = "fhir")]
pub async fn search(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Response, FhirError> {
    let report = Report::FhirAuditEvent;
    let pairs = authorized_pairs(&s, &caller, query)?;
    let limits = &s.settings.limits;
    let p = parse_search(&pairs, limits.page_max)?;
    p.general.negotiate(&headers)?;
    let tenant = p
        .tenant
        .clone()
        .unwrap_or_else(|| limits.default_tenant.clone());
    let to_ms = p.to.unwrap_or_else(|| Utc::now().timestamp_millis() + 1);
    let from_ms = p.from.unwrap_or(
        to_ms - Duration::days(i64::from(limits.default_window_days)).num_milliseconds(),
    );
    if from_ms >= to_ms || from_ms < 0 {
        return Err(FhirError::bad("date range is empty"));
    }
    let c = Common {
        tenant,
        window: Window { from_ms, to_ms },
        limit: p.count.unwrap_or(u64::from(limits.page_default)),
        after: p.cursor.clone(),
        format: Format::Json,
    };
    crate::access::tenant_allowed(&caller, &c.tenant)?;
    let filter = EventFilter {
        patients: p
            .patient
            .as_deref()
            .map(|x| s.keys.lookup_all(&c.tenant, PseudonymKind::Patient, x)),
        user: p
            .agent
            .as_deref()
            .map(|a| UserMatch::new(&s.keys, &c.tenant, a)),
        resource_type: p.entity_type.clone(),
        interactions: p.interactions.clone(),
        outcome: p.outcome.clone(),
        ..EventFilter::default()
    };
    let total_mode = match (p.total, p.summary_count) {
        (_, true) => "count",
        (Total::Accurate, _) => "accurate",
        (Total::None, _) => "none",
        (Total::Unasked, _) => "unasked",
    };
    let audit = AuditParams::new(&s.keys, &c)
        .hashed("patient", PseudonymKind::Patient, &p.patient)
        .hashed("agent", PseudonymKind::Subject, &p.agent)
        .plain("entity-type", &p.entity_type)
        .plain("subtype", &p.interactions.as_ref().map(|i| i.join(",")))
        .plain("outcome", &p.outcome)
        .plain("_id", &p.ids.as_ref().map(|i| i.join(",")))
        .plain("_total", &Some(total_mode.to_owned()))
        .done();
    let asked = Asked::new(&caller, report.name(), &c.tenant, audit, "fhir");
    let want_count = p.summary_count || p.total == Total::Accurate;
    let count = count_sql(&c, &filter, &p.ids);
    let page = page_sql(&c, &filter, &p.ids, c.limit + 1);
    let reader = &s.reader;
    let (rows, total): (Vec<EventRow>, Option<u64>) = audited(&s, &asked, "answering", async {
        let total = async {
            if want_count {
                Ok::<_, ApiError>(Some(count.query(reader).fetch_one::<u64>().await?))
            } else {
                Ok(None)
            }
        };
        let rows = async {
            if p.summary_count {
                Ok::<_, ApiError>(Vec::new())
            } else {
                Ok(page.query(reader).fetch_all::<EventRow>().await?)
            }
        };
        let (total, rows) = tokio::try_join!(total, rows)?;
        Ok((rows, total))
    })
    .await?;
    let (rows, next) = page_of(&s, &asked, rows, c.limit, |r: EventRow| r).await?;
    // Without _total, the total is still exact when one page holds every match.
    let total = match (total, p.total) {
        (Some(t), _) => Some(t),
        (None, Total::Unasked) if c.after.is_none() && next.is_none() => Some(rows.len() as u64),
        _ => None,
    };
    let base = format!(
        "{}/fhir/AuditEvent",
        s.settings.public_url.trim_end_matches('/')
    );
    let kept: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| k != "_cursor").collect();
    let url = |extra: Option<&str>| {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &kept {
            ser.append_pair(k, v);
        }
        if let Some(c) = extra {
            ser.append_pair("_cursor", c);
        }
        let q = ser.finish();
        if q.is_empty() {
            base.clone()
        } else {
            format!("{base}?{q}")
        }
    };
    let mut links = vec![json!({"relation": "self", "url": url(None)})];
    if let Some(n) = &next {
        links.push(json!({"relation": "next", "url": url(Some(n))}));
    }
    let entries: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "fullUrl": format!("{base}/{}", r.event_key),
                "resource": resource(r, p.elements.as_deref()),
                "search": {"mode": "match"},
            })
        })
        .collect();
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": asked.query_id,
        "meta": {"lastUpdated": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)},
        "type": "searchset",
    });
    if let Some(t) = total {
        bundle["total"] = json!(t);
    }
    bundle["link"] = json!(links);
    if !entries.is_empty() {
        bundle["entry"] = json!(entries);
    }
    Ok(fhir_json(StatusCode::OK, &bundle, p.general.pretty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_prefixes_narrow_the_window() {
        let (mut f, mut t) = (None, None);
        apply_date("ge2026-05-04", &mut f, &mut t).unwrap();
        apply_date("le2026-05-04", &mut f, &mut t).unwrap();
        assert_eq!(t.unwrap() - f.unwrap(), DAY_MS);
        let (mut f, mut t) = (None, None);
        apply_date("gt2026-05-04T10:00:00Z", &mut f, &mut t).unwrap();
        assert_eq!(t, None);
        assert!(apply_date("ge'; DROP", &mut f, &mut t).is_err());
        assert!(apply_date("xx2026", &mut f, &mut t).is_err());
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn search_parameters_follow_fhir_semantics() {
        let p = parse_search(
            &pairs(&[
                ("_format", "json"),
                ("_pretty", "true"),
                ("_total", "accurate"),
                ("_sort", "date"),
                ("action", "R,E"),
                ("subtype", "read,search-type,create"),
                ("_id", "0123456789abcdef0123456789abcdef,nope"),
            ]),
            100,
        )
        .unwrap();
        assert!(p.general.pretty);
        assert_eq!(p.total, Total::Accurate);
        // Comma = or within a value, repetition = and.
        assert_eq!(
            p.interactions,
            Some(vec!["read".to_owned(), "search-type".to_owned()])
        );
        assert_eq!(
            p.ids,
            Some(vec!["0123456789abcdef0123456789abcdef".to_owned()])
        );
        let est = parse_search(
            &pairs(&[("_total", "estimate"), ("_summary", "count")]),
            100,
        );
        let est = est.unwrap();
        assert_eq!(est.total, Total::Accurate);
        assert!(est.summary_count);
        assert_eq!(
            parse_search(&pairs(&[("_total", "none")]), 100)
                .unwrap()
                .total,
            Total::None
        );
        for bad in [
            &[("_total", "exact")][..],
            &[("_summary", "true")],
            &[("_sort", "-date")],
            &[("_include", "AuditEvent:agent")],
            &[("patient:missing", "true")],
            &[("patient", "a"), ("patient", "b")],
            &[("_count", "0")],
            &[("_count", "101")],
            &[("_elements", "agent,x'y")],
            &[("_pretty", "1")],
        ] {
            assert!(
                matches!(parse_search(&pairs(bad), 100), Err(FhirError::Api(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_search(&pairs(&[("_format", "application/fhir+xml")]), 100),
            Err(FhirError::NotAcceptable(_))
        ));
    }

    #[test]
    fn total_counts_the_whole_filter_with_bound_values() {
        let c = Common {
            tenant: "north".into(),
            window: Window {
                from_ms: 1_000,
                to_ms: 2_000,
            },
            limit: 10,
            after: Some(Cursor {
                time_ms: 1_500,
                key: "0123456789abcdef0123456789abcdef".into(),
            }),
            format: Format::Json,
        };
        let f = EventFilter {
            outcome: Some("failure".into()),
            ..EventFilter::default()
        };
        let ids = Some(vec!["x' OR 1=1".to_owned()]);
        let count = count_sql(&c, &f, &ids);
        assert!(count
            .text()
            .starts_with("SELECT count() FROM custos.audit_events FINAL WHERE tenant = ?"));
        assert!(count.text().ends_with("AND outcome = ? AND event_key IN ?"));
        // The count ignores the cursor: it is the total of every page.
        assert!(!count.text().contains("(event_time, event_key) >"));
        assert!(!count.text().contains("OR 1=1"));
        assert_eq!(count.text().matches('?').count(), count.args().len());
        let page = page_sql(&c, &f, &ids, 11);
        assert!(page.text().contains("(event_time, event_key) >"));
        assert!(page
            .text()
            .ends_with("AND event_key IN ? ORDER BY event_time, event_key LIMIT ?"));
    }

    #[test]
    fn elements_keep_the_mandatory_ones_and_mark_the_subset() {
        let ev = json!({"resourceType": "AuditEvent", "id": "k", "action": "R", "agent": [], "outcome": "0"});
        let s = subset(ev, &["action".to_owned()]);
        assert_eq!(s["action"], "R");
        assert!(s.get("agent").is_none() && s.get("outcome").is_none());
        assert_eq!(s["id"], "k");
        assert_eq!(s["meta"]["tag"][0]["code"], "SUBSETTED");
    }

    #[test]
    fn actions_and_profiles() {
        assert_eq!(action("search-type"), "E");
        assert_eq!(action("vread"), "R");
        assert!(interactions_of("X").is_none());
        assert_eq!(
            profile("read", true).as_deref(),
            Some(
                "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"
            )
        );
        assert_eq!(
            profile("search-type", false).as_deref(),
            Some("https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Query")
        );
    }
}
