//! The consent service's HTTP app: the privacy-team API, the SSF transmitter metadata and
//! JWKS, and the operational endpoints.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/consents/{id}/revoke` `{reason, tenant?}` | publishes `custos.consent.revoked` for that consent |
//! | `POST /v1/consents/revoke` `{patient, client_id, reason, tenant?}` | the same for every active consent of (patient, client) |
//! | `GET /v1/consents?patient=&tenant=&client_id=` | current state, SMART scopes parsed, history, revocation states |
//! | `GET /v1/revocations?state=&limit=` | latest state per (revocation, target): `state=failed` is the failure report |
//! | `GET /v1/revocations/{id}/attempts` | every attempt with the receiver's answer |
//! | `GET /.well-known/ssf-configuration`, `GET /jwks.json` | SSF transmitter metadata and SET keys |
//! | `GET /healthz`, `/readyz`, `/metrics` | operations |
//!
//! `/v1/*` needs `Authorization: Bearer <CUSTOS_CONSENT_DEV_TOKEN>`: a DEVELOPMENT shared
//! secret standing in for the query API's OIDC authentication. A revocation is published to
//! Kafka (the source of truth) and answered `202`; the consumer applies it and the
//! dispatcher pushes it. Internal errors are logged, never returned.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{SecondsFormat, Utc};
use custos_schemas::decode::find_raw_token;
use custos_schemas::{ConsentData, PseudonymKind};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{error, info};

use crate::publish::new_event_id;
use crate::scopes::ScopeSet;
use crate::service::Core;
use crate::state::{ConsentState, Status};

/// Actor recorded for revocations made through this API with the development token.
pub const DEV_ACTOR: &str = "privacy-api:dev-token";

/// An API error: status, stable code, safe message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn internal(what: &str, err: impl std::fmt::Display) -> ApiError {
        error!(what, error = %err, "request failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "a backend is unavailable; try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::bad(format!("invalid JSON body: {}", r.body_text()))
    }
}

/// The development bearer-token check.
pub struct DevBearer;

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<Arc<Core>> for DevBearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, core: &Arc<Core>) -> Result<Self, ApiError> {
        let unauthorized = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            )
        };
        let expected = core.dev_token.as_deref().ok_or_else(unauthorized)?;
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(unauthorized)?;
        if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            Ok(DevBearer)
        } else {
            Err(unauthorized())
        }
    }
}

/// The whole app.
pub fn app(core: Arc<Core>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/.well-known/ssf-configuration", get(ssf_configuration))
        .route("/jwks.json", get(jwks))
        .route("/v1/consents", get(list_consents))
        .route("/v1/consents/revoke", post(revoke_by_patient))
        .route("/v1/consents/{id}/revoke", post(revoke_by_id))
        .route("/v1/revocations", get(revocations))
        .route("/v1/revocations/{id}/attempts", get(attempts))
        .with_state(core)
}

async fn readyz(State(core): State<Arc<Core>>) -> Response {
    match core.health.ready() {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": why})),
        )
            .into_response(),
    }
}

async fn metrics(State(core): State<Arc<Core>>) -> Response {
    let body = core
        .metrics
        .as_ref()
        .map(|m| m.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn ssf_configuration(State(core): State<Arc<Core>>) -> Json<Value> {
    Json(core.dispatcher.signer().configuration())
}

async fn jwks(State(core): State<Arc<Core>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/jwk-set+json")],
        Json(core.dispatcher.signer().jwks()),
    )
        .into_response()
}

#[derive(Deserialize)]
struct RevokeBody {
    reason: String,
    #[serde(default)]
    tenant: Option<String>,
}

#[derive(Deserialize)]
struct RevokeByPatientBody {
    patient: String,
    client_id: String,
    reason: String,
    #[serde(default)]
    tenant: Option<String>,
}

fn check_reason(reason: &str) -> Result<(), ApiError> {
    if reason.trim().is_empty() {
        return Err(ApiError::bad("reason is required"));
    }
    if reason.len() > 1000 {
        return Err(ApiError::bad("reason is longer than 1000 bytes"));
    }
    if find_raw_token(reason.as_bytes()).is_some() {
        return Err(ApiError::bad("reason must not contain a credential"));
    }
    Ok(())
}

fn tenant_or_default(core: &Core, tenant: Option<String>) -> Result<String, ApiError> {
    let t = tenant.unwrap_or_else(|| core.default_tenant.clone());
    let ok = !t.is_empty()
        && t.len() <= 64
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(t)
    } else {
        Err(ApiError::bad(
            "tenant must be 1-64 characters of A-Z a-z 0-9 - _ .",
        ))
    }
}

/// Publishes the revocation of one active consent; returns its event id.
async fn publish_revocation(
    core: &Core,
    c: &ConsentState,
    reason: &str,
) -> Result<Value, ApiError> {
    let sealed = c.sealed.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_identifiers",
            "the consent's identifiers are not available to this service",
        )
    })?;
    let patient = core
        .sealer
        .open(&c.tenant, &c.consent_id, &sealed.patient)
        .map_err(|e| ApiError::internal("unseal", e))?;
    let sub = if sealed.subject.is_empty() {
        None
    } else {
        Some(
            core.sealer
                .open(&c.tenant, &c.consent_id, &sealed.subject)
                .map_err(|e| ApiError::internal("unseal", e))?,
        )
    };
    let data = ConsentData {
        consent_id: c.consent_id.clone(),
        patient,
        client_id: c.client_id.clone(),
        iss: Some(c.issuer.clone()).filter(|i| !i.is_empty()),
        sub,
        scope: None,
        purpose: Vec::new(),
        period_start: None,
        period_end: None,
        reason: Some(reason.to_owned()),
        actor: Some(DEV_ACTOR.to_owned()),
    };
    let id = new_event_id();
    let now = Utc::now();
    core.publisher
        .consent_event("custos.consent.revoked", &id, now, &c.tenant, &data)
        .await
        .map_err(|e| ApiError::internal("publish", e))?;
    info!(consent_id = %c.consent_id, event_id = %id, "revocation requested through the privacy API");
    Ok(json!({
        "eventId": id,
        "consentId": c.consent_id,
        "tenant": c.tenant,
        "requestedAt": now.to_rfc3339_opts(SecondsFormat::Millis, true),
    }))
}

async fn revoke_by_id(
    _auth: DevBearer,
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    body: Result<Json<RevokeBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    check_reason(&body.reason)?;
    let tenant = tenant_or_default(&core, body.tenant)?;
    let consent = core
        .book
        .read()
        .await
        .get(&tenant, &id)
        .cloned()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such consent"))?;
    if consent.status != Status::Active {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_active",
            format!("the consent is already {}", consent.status.as_str()),
        ));
    }
    let ev = publish_revocation(&core, &consent, &body.reason).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "accepted", "revocations": [ev]})),
    )
        .into_response())
}

async fn revoke_by_patient(
    _auth: DevBearer,
    State(core): State<Arc<Core>>,
    body: Result<Json<RevokeByPatientBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    check_reason(&body.reason)?;
    if body.patient.trim().is_empty() || body.client_id.trim().is_empty() {
        return Err(ApiError::bad("patient and client_id are required"));
    }
    let tenant = tenant_or_default(&core, body.tenant)?;
    let pseudonyms = core
        .keys
        .lookup_all(&tenant, PseudonymKind::Patient, &body.patient);
    let active: Vec<ConsentState> = core
        .book
        .read()
        .await
        .by_patient(&tenant, &pseudonyms, Some(&body.client_id))
        .into_iter()
        .filter(|c| c.status == Status::Active)
        .cloned()
        .collect();
    if active.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no active consent for this patient and client",
        ));
    }
    let mut out = Vec::new();
    for c in &active {
        out.push(publish_revocation(&core, c, &body.reason).await?);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "accepted", "revocations": out})),
    )
        .into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    patient: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

async fn list_consents(
    _auth: DevBearer,
    State(core): State<Arc<Core>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|_| ApiError::bad("query parameter `patient` is required"))?;
    if q.patient.trim().is_empty() {
        return Err(ApiError::bad("query parameter `patient` is required"));
    }
    let tenant = tenant_or_default(&core, q.tenant)?;
    let pseudonyms = core
        .keys
        .lookup_all(&tenant, PseudonymKind::Patient, &q.patient);
    let current: Vec<ConsentState> = core
        .book
        .read()
        .await
        .by_patient(&tenant, &pseudonyms, q.client_id.as_deref())
        .into_iter()
        .cloned()
        .collect();
    let ids: Vec<String> = current.iter().map(|c| c.consent_id.clone()).collect();
    let history = core
        .store
        .history(&tenant, &ids)
        .await
        .map_err(|e| ApiError::internal("history", e))?;
    let revocations = core
        .store
        .revocation_status_of(&tenant, &ids)
        .await
        .map_err(|e| ApiError::internal("revocations", e))?;
    let consents: Vec<Value> = current
        .iter()
        .map(|c| {
            let scope_str = c.scopes.join(" ");
            json!({
                "current": c,
                "smart": ScopeSet::parse(&scope_str),
                "history": history.iter().filter(|h| h.consent_id == c.consent_id).collect::<Vec<_>>(),
                "revocations": revocations.iter().filter(|r| r.consent_id == c.consent_id).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({"tenant": tenant, "consents": consents})))
}

#[derive(Deserialize)]
struct ReportQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
}

async fn revocations(
    _auth: DevBearer,
    State(core): State<Arc<Core>>,
    Query(q): Query<ReportQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(s) = &q.state {
        if !matches!(s.as_str(), "requested" | "delivered" | "failed" | "skipped") {
            return Err(ApiError::bad(
                "state must be requested, delivered, failed or skipped",
            ));
        }
    }
    let rows = core
        .store
        .revocation_report(q.state.as_deref(), q.limit.unwrap_or(1000).min(10_000))
        .await
        .map_err(|e| ApiError::internal("report", e))?;
    Ok(Json(json!({"revocations": rows})))
}

async fn attempts(
    _auth: DevBearer,
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rows = core
        .store
        .attempts(&id)
        .await
        .map_err(|e| ApiError::internal("attempts", e))?;
    Ok(Json(json!({"revocationId": id, "attempts": rows})))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatcher::{Dispatcher, RetryPolicy};
    use crate::health::Health;
    use crate::publish::Publisher;
    use crate::seal::Sealer;
    use crate::set::SetSigner;
    use crate::ssf::SsfPusher;
    use crate::state::ConsentBook;
    use crate::store::Store;
    use axum::body::Body;
    use axum::http::Request;
    use custos_schemas::KeyRing;
    use http_body_util::BodyExt;
    use std::collections::HashSet;
    use std::time::Duration;
    use tokio::sync::{Mutex, RwLock};
    use tower::ServiceExt;

    /// A core whose backends are never reached by these requests (clients connect lazily).
    fn core() -> Arc<Core> {
        let store = Store::new("http://127.0.0.1:9", "u", "p", Duration::from_secs(1));
        let sealer = Sealer::parse(
            "s1=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            None,
        )
        .unwrap();
        let publisher = Publisher::new("127.0.0.1:9", "t", None).unwrap();
        let dispatcher = Arc::new(Dispatcher::new(
            store.clone(),
            sealer.clone(),
            None,
            SsfPusher::new(Duration::from_secs(1)).unwrap(),
            Vec::new(),
            SetSigner::ephemeral("http://custos.test", "k1"),
            publisher.clone(),
            RetryPolicy {
                max_attempts: 1,
                base: Duration::from_millis(1),
                max: Duration::from_millis(1),
            },
            1,
            tokio_util::sync::CancellationToken::new(),
        ));
        Arc::new(Core {
            book: RwLock::new(ConsentBook::default()),
            known_revocations: Mutex::new(HashSet::new()),
            keys: KeyRing::parse(
                "k1=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                None,
            )
            .unwrap(),
            sealer,
            default_tenant: "default".into(),
            store,
            publisher,
            dispatcher,
            health: Health::default(),
            max_event_bytes: 1024,
            dev_token: Some("dev-secret".into()),
            metrics: None,
        })
    }

    async fn call(app: Router, req: Request<Body>) -> (StatusCode, Value) {
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn post(uri: &str, token: Option<&str>, body: &str) -> Request<Body> {
        let mut b = Request::post(uri).header("content-type", "application/json");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(Body::from(body.to_owned())).unwrap()
    }

    #[tokio::test]
    async fn auth_validation_and_metadata() {
        let app = app(core());
        let (s, _) = call(app.clone(), post("/v1/consents/c1/revoke", None, "{}")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = call(
            app.clone(),
            post(
                "/v1/consents/c1/revoke",
                Some("dev-secreT"),
                r#"{"reason":"x"}"#,
            ),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, v) = call(
            app.clone(),
            post("/v1/consents/c1/revoke", Some("dev-secret"), "{not json"),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"], "bad_request");
        let (s, v) = call(
            app.clone(),
            post(
                "/v1/consents/c1/revoke",
                Some("dev-secret"),
                r#"{"reason":"see eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig"}"#,
            ),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let (s, v) = call(
            app.clone(),
            post(
                "/v1/consents/c1/revoke",
                Some("dev-secret"),
                r#"{"reason":"patient asked"}"#,
            ),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(v["error"], "not_found");
        let (s, _) = call(
            app.clone(),
            post(
                "/v1/consents/revoke",
                Some("dev-secret"),
                r#"{"patient":"p","client_id":"a","reason":"r","tenant":"bad tenant!"}"#,
            ),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, v) = call(
            app.clone(),
            Request::get("/.well-known/ssf-configuration")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["issuer"], "http://custos.test");
        let (s, v) = call(
            app.clone(),
            Request::get("/jwks.json").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["keys"][0]["kid"], "k1");
        let (s, v) = call(app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v["status"], "not ready");
    }
}
