//! `GET /fhir/metadata`: the R4 `CapabilityStatement` FHIR clients read first. Public, as
//! FHIR expects (no token); it names the SMART on FHIR / OAuth endpoints of the configured
//! issuer when its OpenID discovery document can be read (cached, so unauthenticated
//! callers cannot make the server fetch it at will).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::warn;

use super::general::General;
use super::outcome::{fhir_json, FhirError};
use super::BALP;
use crate::state::AppState;
use custos_auth::config::fetchable_url;

/// How long a read discovery document is used.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// How long a failed discovery read is remembered (no endpoints are advertised meanwhile).
const DISCOVERY_RETRY: Duration = Duration::from_secs(60);
/// Timeout of the discovery read.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The OAuth endpoints of the issuer, from its discovery document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct OauthEndpoints {
    /// `authorization_endpoint`.
    pub authorization_endpoint: Option<String>,
    /// `token_endpoint`.
    pub token_endpoint: Option<String>,
    /// `revocation_endpoint`.
    pub revocation_endpoint: Option<String>,
    /// `introspection_endpoint`.
    pub introspection_endpoint: Option<String>,
    /// `registration_endpoint`.
    pub registration_endpoint: Option<String>,
}

impl OauthEndpoints {
    /// Drops every endpoint that is not an https URL (http only on loopback).
    fn sanitized(self) -> OauthEndpoints {
        let keep = |u: Option<String>| u.filter(|u| fetchable_url(u) && u.len() <= 2048);
        OauthEndpoints {
            authorization_endpoint: keep(self.authorization_endpoint),
            token_endpoint: keep(self.token_endpoint),
            revocation_endpoint: keep(self.revocation_endpoint),
            introspection_endpoint: keep(self.introspection_endpoint),
            registration_endpoint: keep(self.registration_endpoint),
        }
    }
}

type Cache = HashMap<String, (Instant, Option<OauthEndpoints>)>;

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn cached(issuer: &str) -> Option<Option<OauthEndpoints>> {
    let cache = cache().lock().ok()?;
    let (at, v) = cache.get(issuer)?;
    let ttl = if v.is_some() {
        DISCOVERY_TTL
    } else {
        DISCOVERY_RETRY
    };
    (at.elapsed() < ttl).then(|| v.clone())
}

async fn fetch(issuer: &str) -> Option<OauthEndpoints> {
    let url = format!("{issuer}/.well-known/openid-configuration");
    if !fetchable_url(&url) {
        return None;
    }
    let http = reqwest::Client::builder()
        .timeout(DISCOVERY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .ok()?;
    let resp = http
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status);
    match resp {
        Ok(r) => match r.json::<OauthEndpoints>().await {
            Ok(d) => Some(d.sanitized()),
            Err(e) => {
                warn!(error = %e, "OpenID discovery document unreadable");
                None
            }
        },
        Err(e) => {
            warn!(error = %e, "OpenID discovery failed");
            None
        }
    }
}

/// The issuer's OAuth endpoints, when its discovery document could be read (cached; one
/// fetch at a time).
pub async fn oauth_endpoints(issuer: &str) -> Option<OauthEndpoints> {
    static FETCHING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    if let Some(v) = cached(issuer) {
        return v;
    }
    let _one = FETCHING.lock().await;
    if let Some(v) = cached(issuer) {
        return v;
    }
    let v = fetch(issuer).await;
    if let Ok(mut c) = cache().lock() {
        c.insert(issuer.to_owned(), (Instant::now(), v.clone()));
    }
    v
}

/// The search parameters of `/fhir/AuditEvent`: name, type, definition, documentation.
pub const SEARCH_PARAMS: &[(&str, &str, Option<&str>, &str)] = &[
    (
        "_id",
        "token",
        Some("http://hl7.org/fhir/SearchParameter/Resource-id"),
        "AuditEvent id (comma = or)",
    ),
    (
        "patient",
        "reference",
        Some("http://hl7.org/fhir/SearchParameter/AuditEvent-patient"),
        "Raw patient id or Patient/id; matched under every live pseudonym key",
    ),
    (
        "agent",
        "reference",
        Some("http://hl7.org/fhir/SearchParameter/AuditEvent-agent"),
        "User sub or fhirUser reference",
    ),
    (
        "entity-type",
        "token",
        Some("http://hl7.org/fhir/SearchParameter/AuditEvent-entity-type"),
        "FHIR resource type of the accessed entity",
    ),
    (
        "date",
        "date",
        Some("http://hl7.org/fhir/SearchParameter/AuditEvent-date"),
        "ge, gt, le, lt or eq + date or dateTime; repeatable (and)",
    ),
    (
        "action",
        "token",
        Some("http://hl7.org/fhir/SearchParameter/AuditEvent-action"),
        "C, R, U, D or E (comma = or)",
    ),
    (
        "outcome",
        "token",
        Some("http://hl7.org/fhir/SearchParameter/AuditEvent-outcome"),
        "0, 4, 8 or 12",
    ),
    (
        "subtype",
        "token",
        Some("http://hl7.org/fhir/SearchParameter/AuditEvent-subtype"),
        "restful-interaction code, optionally system|code (comma = or)",
    ),
    (
        "tenant",
        "string",
        None,
        "Custos tenant (default: the configured default tenant)",
    ),
];

/// The `CapabilityStatement` of this server.
pub fn capability_statement(
    public_url: &str,
    issuer: &str,
    oauth: Option<&OauthEndpoints>,
) -> Value {
    let base = format!("{}/fhir", public_url.trim_end_matches('/'));
    let search_params: Vec<Value> = SEARCH_PARAMS
        .iter()
        .map(|(name, ty, def, doc)| {
            let mut p = json!({"name": name, "type": ty, "documentation": doc});
            if let Some(d) = def {
                p["definition"] = json!(d);
            }
            p
        })
        .collect();
    let mut security = json!({
        "cors": false,
        "service": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR",
                "display": "SMART-on-FHIR",
            }],
            "text": "OAuth 2.0 bearer tokens (SMART on FHIR)",
        }],
        "description": format!(
            "Every interaction but metadata needs an OAuth 2.0 bearer access token (JWT) of the issuer {issuer} with the role compliance_officer or auditor."
        ),
    });
    if let Some(o) = oauth {
        let uris: Vec<Value> = [
            ("authorize", &o.authorization_endpoint),
            ("token", &o.token_endpoint),
            ("revoke", &o.revocation_endpoint),
            ("introspect", &o.introspection_endpoint),
            ("register", &o.registration_endpoint),
        ]
        .into_iter()
        .filter_map(|(name, u)| u.as_ref().map(|u| json!({"url": name, "valueUri": u})))
        .collect();
        if !uris.is_empty() {
            security["extension"] = json!([{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": uris,
            }]);
        }
    }
    let version = env!("CARGO_PKG_VERSION");
    json!({
        "resourceType": "CapabilityStatement",
        "id": "custos",
        "url": format!("{base}/metadata"),
        "version": version,
        "name": "CustosAuditEventServer",
        "title": "Custos audit trail as FHIR R4 AuditEvents",
        "status": "active",
        "experimental": false,
        "date": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "publisher": "Custos",
        "description": "Read and search of the IHE BALP-profiled AuditEvents of recorded FHIR accesses. Every answered request is itself recorded in the Custos query audit.",
        "kind": "instance",
        "software": {"name": "custos-query", "version": version},
        "implementation": {"description": "Custos query API", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            "documentation": "Only JSON is served. Search results: _count, _total (none, estimate, accurate), _summary (count, data, false), _elements, _sort=date, _format, _pretty; paging by the next link.",
            "security": security,
            "resource": [{
                "type": "AuditEvent",
                "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
                "supportedProfile": [
                    format!("{BALP}IHE.BasicAudit.Read"),
                    format!("{BALP}IHE.BasicAudit.PatientRead"),
                    format!("{BALP}IHE.BasicAudit.Query"),
                    format!("{BALP}IHE.BasicAudit.PatientQuery"),
                    format!("{BALP}IHE.BasicAudit.Create"),
                    format!("{BALP}IHE.BasicAudit.PatientCreate"),
                    format!("{BALP}IHE.BasicAudit.Update"),
                    format!("{BALP}IHE.BasicAudit.PatientUpdate"),
                    format!("{BALP}IHE.BasicAudit.Delete"),
                    format!("{BALP}IHE.BasicAudit.PatientDelete"),
                ],
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "versioning": "no-version",
                "readHistory": false,
                "updateCreate": false,
                "conditionalCreate": false,
                "conditionalRead": "not-supported",
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "searchParam": search_params,
            }],
        }],
    })
}

/// The CapabilityStatement (FHIR `capabilities` interaction).
#[utoipa::path(get, path = "/fhir/metadata",
    params(
        ("_format" = Option<String>, Query, description = "json, application/json or application/fhir+json"),
        ("_pretty" = Option<bool>, Query, description = "Indented JSON"),
        ("mode" = Option<String>, Query, description = "full (the only mode)"),
    ),
    responses((status = 200, description = "CapabilityStatement", content_type = "application/fhir+json"),
        (status = 400, description = "OperationOutcome", content_type = "application/fhir+json"),
        (status = 406, description = "OperationOutcome", content_type = "application/fhir+json")),
    tag = "fhir")]
pub async fn metadata(
    State(s): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, FhirError> {
    let Query(pairs) = query.map_err(|_| FhirError::bad("invalid query string"))?;
    let mut general = General::default();
    for (k, v) in &pairs {
        if general.take(k, v)? {
            continue;
        }
        match (k.as_str(), v.as_str()) {
            ("mode", "full") => {}
            ("mode", _) => return Err(FhirError::bad("mode must be full")),
            _ => {
                return Err(FhirError::bad(
                    "unsupported parameter of metadata (_format, _pretty, mode)",
                ))
            }
        }
    }
    general.negotiate(&headers)?;
    let issuer = s.auth.issuer();
    let oauth = oauth_endpoints(issuer).await;
    let cs = capability_statement(&s.settings.public_url, issuer, oauth.as_ref());
    Ok(fhir_json(StatusCode::OK, &cs, general.pretty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_statement_names_the_interactions_and_oauth() {
        let oauth = OauthEndpoints {
            authorization_endpoint: Some("https://as.example/auth".into()),
            token_endpoint: Some("https://as.example/token".into()),
            ..OauthEndpoints::default()
        }
        .sanitized();
        let cs = capability_statement("https://audit.example/", "https://as.example", Some(&oauth));
        assert_eq!(cs["fhirVersion"], "4.0.1");
        assert_eq!(cs["kind"], "instance");
        assert_eq!(cs["implementation"]["url"], "https://audit.example/fhir");
        let r = &cs["rest"][0]["resource"][0];
        assert_eq!(r["type"], "AuditEvent");
        assert_eq!(
            r["interaction"],
            json!([{"code": "read"}, {"code": "search-type"}])
        );
        let date = r["searchParam"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "date")
            .unwrap();
        assert_eq!(date["type"], "date");
        let ext = &cs["rest"][0]["security"]["extension"][0];
        assert_eq!(
            ext["url"],
            "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
        );
        assert_eq!(
            ext["extension"],
            json!([{"url": "authorize", "valueUri": "https://as.example/auth"},
                {"url": "token", "valueUri": "https://as.example/token"}])
        );
        let none = capability_statement("https://audit.example", "https://as.example", None);
        assert!(none["rest"][0]["security"].get("extension").is_none());
    }

    #[test]
    fn plain_http_endpoints_off_loopback_are_dropped() {
        let o = OauthEndpoints {
            authorization_endpoint: Some("http://as.example/auth".into()),
            token_endpoint: Some("http://127.0.0.1:8080/token".into()),
            revocation_endpoint: Some("javascript:alert(1)".into()),
            ..OauthEndpoints::default()
        }
        .sanitized();
        assert_eq!(o.authorization_endpoint, None);
        assert_eq!(
            o.token_endpoint.as_deref(),
            Some("http://127.0.0.1:8080/token")
        );
        assert_eq!(o.revocation_endpoint, None);
    }
}
