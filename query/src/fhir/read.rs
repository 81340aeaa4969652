//! `GET /fhir/AuditEvent/{id}`: read one AuditEvent by its id (the event key, as in each
//! search entry's `fullUrl`), with the search's roles, tenants and query audit.
//!
//! The id is looked up among the tenants the caller may read (every tenant without a
//! configured tenant claim), then read within its tenant (the primary key's first column,
//! the `event_key` bloom filter narrows the granules) under an acknowledged query-audit
//! record naming that tenant. An unknown id and an id of a tenant the caller may not read
//! answer the same 404.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::general::General;
use super::outcome::{fhir_json, FhirError};
use super::{authorized_pairs, elements, resource, QueryPairs};
use crate::access::Report;
use crate::export::{audited, page_of};
use crate::params::is_key;
use crate::reports::{EventRow, SELECT_EVENTS};
use crate::sql::Sql;
use crate::state::AppState;
use custos_auth::audit::Asked;
use custos_auth::oidc::Caller;

/// The tenant of an AuditEvent id among `tenants` (`None`: any tenant).
pub fn tenant_sql(id: &str, tenants: Option<&[String]>) -> Sql {
    let mut sql =
        Sql::new("SELECT tenant FROM custos.audit_events WHERE event_type = 'custos.fhir.access'");
    sql.bind1(" AND event_key = ?", id);
    if let Some(t) = tenants {
        sql.bind1(" AND tenant IN ?", t.to_vec());
    }
    sql.push(" ORDER BY tenant LIMIT 1");
    sql
}

/// The AuditEvent `id` of `tenant`.
pub fn read_sql(tenant: &str, id: &str) -> Sql {
    let mut sql = Sql::new(SELECT_EVENTS);
    sql.bind1("tenant = ?", tenant)
        .push(" AND event_type = 'custos.fhir.access'")
        .bind1(" AND event_key = ?", id)
        .push(" ORDER BY event_time, event_key LIMIT 1");
    sql
}

fn not_found() -> FhirError {
    FhirError::NotFound("no AuditEvent with this id".into())
}

/// Reads one AuditEvent (FHIR `read`).
#[utoipa::path(get, path = "/fhir/AuditEvent/{id}",
    params(
        ("id" = String, Path, description = "AuditEvent id (the fullUrl of a search entry)"),
        ("_format" = Option<String>, Query, description = "json, application/json or application/fhir+json"),
        ("_pretty" = Option<bool>, Query, description = "Indented JSON"),
        ("_elements" = Option<String>, Query, description = "Top-level elements to keep"),
    ),
    responses((status = 200, description = "AuditEvent", content_type = "application/fhir+json"),
        (status = 401, description = "OperationOutcome", content_type = "application/fhir+json"),
        (status = 403, description = "OperationOutcome", content_type = "application/fhir+json"),
        (status = 404, description = "OperationOutcome", content_type = "application/fhir+json"),
        (status = 406, description = "OperationOutcome", content_type = "application/fhir+json")),
    security(("bearer" = [])), tag = "fhir")]
pub async fn read(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: QueryPairs,
) -> Result<Response, FhirError> {
    let report = Report::FhirAuditEvent;
    let pairs = authorized_pairs(&s, &caller, query)?;
    let mut general = General::default();
    let mut kept = None;
    for (k, v) in &pairs {
        if general.take(k, v)? {
            continue;
        }
        match k.as_str() {
            "_elements" if kept.is_none() => kept = Some(elements(v)?),
            "_summary" if v == "false" || v == "data" => {}
            _ => {
                return Err(FhirError::bad(
                    "unsupported parameter of read (_format, _pretty, _elements, _summary=false)",
                ))
            }
        }
    }
    general.negotiate(&headers)?;
    // Event keys are 32 lowercase hex digits: anything else names no AuditEvent.
    if !is_key(&id) {
        return Err(not_found());
    }
    let tenants = caller.tenants.as_deref();
    let tenant: Option<String> = match tenants {
        Some([]) => None,
        _ => tenant_sql(&id, tenants)
            .query(&s.reader)
            .fetch_optional::<String>()
            .await
            .map_err(crate::error::ApiError::from)?,
    };
    let params = json!({"interaction": "read", "id": id});
    let asked = Asked::new(
        &caller,
        report.name(),
        tenant.as_deref().unwrap_or(""),
        params,
        "fhir",
    );
    let rows: Vec<EventRow> = audited(&s, &asked, "answering", async {
        match &tenant {
            Some(t) => Ok(read_sql(t, &id).query(&s.reader).fetch_all().await?),
            None => Ok(Vec::new()),
        }
    })
    .await?;
    let (rows, _) = page_of(&s, &asked, rows, 1, |r: EventRow| r).await?;
    let row = rows.into_iter().next().ok_or_else(not_found)?;
    let ev = resource(&row, kept.as_deref());
    Ok(fhir_json(StatusCode::OK, &ev, general.pretty))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Arg;

    #[test]
    fn read_binds_the_id_and_scopes_the_tenant() {
        let evil = "0123456789abcdef0123456789abcdef' OR 1=1 --";
        let sql = read_sql("north", evil);
        assert!(sql
            .text()
            .contains("WHERE tenant = ? AND event_type = 'custos.fhir.access' AND event_key = ?"));
        assert!(!sql.text().contains("OR 1=1"));
        assert_eq!(
            sql.args(),
            &[Arg::Str("north".into()), Arg::Str(evil.into())]
        );
        let lookup = tenant_sql("k", Some(&["north".to_owned()]));
        assert!(lookup.text().contains("event_key = ? AND tenant IN ?"));
        assert_eq!(lookup.args().len(), 2);
        assert_eq!(tenant_sql("k", None).args().len(), 1);
    }
}
