//! FHIR R4 search over the audit trail: `GET /fhir/AuditEvent` returns a `searchset`
//! Bundle of IHE BALP-profiled AuditEvents built from `custos.fhir.access` records.
//!
//! Search parameters: `patient` (raw id or `Patient/id`, hashed under every live key),
//! `agent` (user `sub` or `fhirUser`), `entity-type` (resource type of the accessed
//! entity), `date` (repeatable, prefixes `ge`, `gt`, `le`, `lt`, `eq`), `action`
//! (C, R, U, D, E; comma = or), `outcome` (0, 4, 8, 12), `subtype` (restful-interaction
//! code, optionally `system|code`; comma = or), `_count`, `_cursor` (from the `next`
//! link) and the Custos extension `tenant`. Unknown parameters are refused (400).

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::{Duration, NaiveDate, Utc};
use custos_schemas::PseudonymKind;
use serde_json::{json, Value};

use crate::api::{authorize, AuditParams, Report};
use crate::audit::Asked;
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::export::fetch_page;
use crate::params::{self, ms_to_rfc3339, Common, Cursor, Format, Window};
use crate::reports::{self, EventFilter, EventRow, UserMatch};
use crate::AppState;

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
fn apply_date(v: &str, from: &mut Option<i64>, to: &mut Option<i64>) -> Result<(), ApiError> {
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

/// FHIR AuditEvent search.
#[utoipa::path(get, path = "/fhir/AuditEvent",
    params(
        ("patient" = Option<String>, Query, description = "Raw patient id or Patient/id"),
        ("agent" = Option<String>, Query, description = "User sub or fhirUser"),
        ("entity-type" = Option<String>, Query, description = "Resource type of the entity"),
        ("date" = Option<String>, Query, description = "ge/gt/le/lt/eq + date or dateTime; repeatable"),
        ("action" = Option<String>, Query, description = "C, R, U, D or E"),
        ("outcome" = Option<String>, Query, description = "0, 4, 8 or 12"),
        ("subtype" = Option<String>, Query, description = "restful-interaction code"),
        ("_count" = Option<u32>, Query, description = "Page size"),
        ("_cursor" = Option<String>, Query, description = "Paging cursor from the next link"),
        ("tenant" = Option<String>, Query, description = "Tenant"),
    ),
    responses((status = 200, description = "searchset Bundle", content_type = "application/fhir+json"),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])), tag = "fhir")]
pub async fn search(
    State(s): State<AppState>,
    caller: Caller,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let report = Report::FhirAuditEvent;
    authorize(&s, &caller, report)?;
    let Query(pairs) = query.map_err(|_| ApiError::bad("invalid query string"))?;
    let limits = &s.settings.limits;
    let mut tenant = None;
    let mut patient = None;
    let mut agent = None;
    let mut entity_type = None;
    let mut from = None;
    let mut to = None;
    let mut interactions: Option<Vec<String>> = None;
    let mut outcome = None;
    let mut count = None;
    let mut cursor = None;
    let mut add_interactions = |list: Vec<String>| {
        let cur = interactions.get_or_insert_with(Vec::new);
        cur.extend(list);
    };
    for (k, v) in &pairs {
        match k.as_str() {
            "tenant" => tenant = Some(v.clone()),
            "patient" => patient = params::ident("patient", Some(v))?,
            "agent" => agent = params::ident("agent", Some(v))?,
            "entity-type" => entity_type = params::resource_type("entity-type", Some(v))?,
            "date" => apply_date(v, &mut from, &mut to)?,
            "action" => {
                let mut list = Vec::new();
                for a in v.split(',') {
                    let i = interactions_of(a)
                        .ok_or_else(|| ApiError::bad("action must be C, R, U, D or E"))?;
                    list.extend(i.iter().map(|s| (*s).to_owned()));
                }
                add_interactions(list);
            }
            "subtype" => {
                let mut list = Vec::new();
                for st in v.split(',') {
                    let code = st
                        .strip_prefix("http://hl7.org/fhir/restful-interaction|")
                        .unwrap_or(st);
                    let i = params::interaction("subtype", Some(code))?
                        .ok_or_else(|| ApiError::bad("subtype is empty"))?;
                    list.push(i);
                }
                add_interactions(list);
            }
            "outcome" => {
                outcome = Some(match v.as_str() {
                    "0" => "success".to_owned(),
                    "4" | "8" | "12" => "failure".to_owned(),
                    _ => return Err(ApiError::bad("outcome must be 0, 4, 8 or 12")),
                })
            }
            "_count" => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| ApiError::bad("_count must be a positive integer"))?;
                if n == 0 || n > u64::from(limits.page_max) {
                    return Err(ApiError::bad(format!("_count must be 1..={}", limits.page_max)));
                }
                count = Some(n);
            }
            "_cursor" => cursor = Some(Cursor::decode(v)?),
            _ => {
                return Err(ApiError::bad(
                    "unsupported search parameter (patient, agent, entity-type, date, action, outcome, subtype, _count, _cursor, tenant)",
                ))
            }
        }
    }
    let tenant = tenant.unwrap_or_else(|| limits.default_tenant.clone());
    if !crate::config::valid_tenant(&tenant) {
        return Err(ApiError::bad(
            "tenant must be 1-64 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    let to_ms = to.unwrap_or_else(|| Utc::now().timestamp_millis() + 1);
    let from_ms = from.unwrap_or(
        to_ms - Duration::days(i64::from(limits.default_window_days)).num_milliseconds(),
    );
    if from_ms >= to_ms || from_ms < 0 {
        return Err(ApiError::bad("date range is empty"));
    }
    let c = Common {
        tenant,
        window: Window { from_ms, to_ms },
        limit: count.unwrap_or(u64::from(limits.page_default)),
        after: cursor,
        format: Format::Json,
    };
    crate::api::tenant_allowed(&caller, &c.tenant)?;
    let filter = EventFilter {
        patients: patient
            .as_deref()
            .map(|p| s.keys.lookup_all(&c.tenant, PseudonymKind::Patient, p)),
        user: agent
            .as_deref()
            .map(|a| UserMatch::new(&s.keys, &c.tenant, a)),
        resource_type: entity_type.clone(),
        interactions: interactions.clone(),
        outcome: outcome.clone(),
        ..EventFilter::default()
    };
    let audit = AuditParams::new(&s, &c)
        .hashed("patient", PseudonymKind::Patient, &patient)
        .hashed("agent", PseudonymKind::Subject, &agent)
        .plain("entity-type", &entity_type)
        .plain("subtype", &interactions.map(|i| i.join(",")))
        .plain("outcome", &outcome)
        .done();
    let asked = Asked::new(&caller, report.name(), &c.tenant, audit, "fhir");
    let sql = reports::events(&c, reports::PATIENT_ACCESS, &filter, c.limit + 1);
    let (rows, next) = fetch_page(&s, &asked, &sql, c.limit, |r: EventRow| r).await?;
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
                "resource": audit_event(r),
                "search": {"mode": "match"},
            })
        })
        .collect();
    let bundle = json!({
        "resourceType": "Bundle",
        "id": asked.query_id,
        "meta": {"lastUpdated": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)},
        "type": "searchset",
        "link": links,
        "entry": entries,
    });
    let mut resp = axum::Json(bundle).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    Ok(resp)
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
