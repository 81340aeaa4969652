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
//! | `GET /healthz`, `/readyz` | operations |
//!
//! [`admin_app`] serves `/metrics` (with `/healthz` and `/readyz`) on the separate admin
//! address (`CUSTOS_CONSENT_ADMIN_ADDR`), never on the API address. Every API request is
//! bounded by `CUSTOS_CONSENT_REQUEST_TIMEOUT_SECS` (then `504`, a problem).
//!
//! `/v1/*` authenticates callers exactly like the query API: OIDC bearer JWTs checked against
//! the issuer's JWKS by [`custos_auth::oidc::Authenticator`] (issuer, audience, expiry,
//! algorithm allow-list, roles from `CUSTOS_OIDC_ROLES_CLAIM`). Revoking needs the
//! `privacy_officer` role; reading consents and revocation reports needs `privacy_officer`,
//! `compliance_officer` or `auditor`. A missing or unacceptable token is a 401, a token
//! without a fitting role a 403; every error is an RFC 9457 `application/problem+json`
//! body. The revocation event names the caller (`preferred_username`, else `sub`) as its
//! actor. A revocation is published to Kafka (the source of truth) and answered `202`; the
//! consumer applies it and the dispatcher pushes it. Internal errors and tokens are never
//! returned nor logged.
//!
//! Every `/v1/*` call is itself audited ([`crate::audit`]): its record is durable in
//! `custos.report_queries` before anything is read or revoked (else `503
//! audit-unavailable`). Revocations are idempotent ([`crate::idempotency`]): a repeat of
//! the same request (same caller, target, reason and `Idempotency-Key` header) within the
//! window is answered `200` with the first answer's ids.

use std::future::Future;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{SecondsFormat, Utc};
use custos_auth::oidc::{AuthError, Caller, Role};
use custos_auth::problem::PROBLEM_JSON;
use custos_runtime::ops;
use custos_schemas::decode::find_raw_token;
use custos_schemas::row::event_key;
use custos_schemas::{ConsentData, PseudonymKind};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{error, info, warn};

use crate::audit::{self as call_audit, Call};
use crate::idempotency::{fingerprint, revocation_event_id, valid_key};
use crate::publish::SOURCE;
use crate::scopes::ScopeSet;
use crate::service::Core;
use crate::state::{revocation_id, ConsentState, Status};

/// Roles that may revoke consents.
pub const REVOKE_ROLES: &[Role] = custos_auth::policy::CONSENTS_REVOKE;
/// Roles that may read consent state, history and revocation reports.
pub const READ_ROLES: &[Role] = custos_auth::policy::CONSENTS_READ;

/// An API error: status, stable problem code, safe detail. Rendered as RFC 9457
/// `application/problem+json` (`type`, `title`, `status`, `detail`).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
        }
    }

    fn bad(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    fn internal(what: &str, err: impl std::fmt::Display) -> ApiError {
        error!(what, error = %err, "request failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "a backend is unavailable; try again",
        )
    }

    fn unauthorized(e: &AuthError) -> ApiError {
        // The reason is a fixed label; the token itself is never logged.
        metrics::counter!("custos_consent_auth_failures_total", "reason" => e.reason())
            .increment(1);
        warn!(reason = e.reason(), "bearer token rejected");
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.public_detail())
    }

    fn audit_unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit-unavailable",
            "the call could not be recorded in the audit trail; nothing was read or changed; try again",
        )
    }

    fn forbidden() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the caller's roles do not allow this operation",
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("https://custos.dev/problems/{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut resp = (self.status, Json(body)).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"custos\", error=\"invalid_token\""),
            );
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::bad(format!("invalid JSON body: {}", r.body_text()))
    }
}

/// Authenticates the request's bearer token and checks the caller holds one of `roles`.
async fn authorize(parts: &Parts, core: &Core, roles: &[Role]) -> Result<Caller, ApiError> {
    let caller = core
        .auth
        .authenticate_headers(&parts.headers)
        .await
        .map_err(|e| ApiError::unauthorized(&e))?;
    if caller.has_any(roles) {
        Ok(caller)
    } else {
        // The client only: a caller without a Custos role may be a patient.
        info!(client = %caller.client, roles = ?caller.role_names(), "privacy API call refused: role");
        let call = call_audit::call_of(&parts.method, parts.uri.path());
        call_audit::refused(&core.audit, &caller, call, "");
        Err(ApiError::forbidden())
    }
}

/// A caller allowed to revoke consents ([`REVOKE_ROLES`]).
#[derive(Debug)]
pub struct Revoker(pub Caller);

impl FromRequestParts<Arc<Core>> for Revoker {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, core: &Arc<Core>) -> Result<Self, ApiError> {
        authorize(parts, core, REVOKE_ROLES).await.map(Revoker)
    }
}

/// A caller allowed to read consents and revocation reports ([`READ_ROLES`]).
#[derive(Debug)]
pub struct Reader(pub Caller);

impl FromRequestParts<Arc<Core>> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, core: &Arc<Core>) -> Result<Self, ApiError> {
        authorize(parts, core, READ_ROLES).await.map(Reader)
    }
}

/// The API app (privacy API, SSF metadata, JWKS, health), every request bounded by the
/// core's request timeout.
pub fn app(core: Arc<Core>) -> Router {
    Router::new()
        .merge(ops::probes(core.health.clone()))
        .route("/.well-known/ssf-configuration", get(ssf_configuration))
        .route("/jwks.json", get(jwks))
        .route("/v1/consents", get(list_consents))
        .route("/v1/consents/revoke", post(revoke_by_patient))
        .route("/v1/consents/{id}/revoke", post(revoke_by_id))
        .route("/v1/revocations", get(revocations))
        .route("/v1/revocations/{id}/attempts", get(attempts))
        .layer(axum::middleware::from_fn_with_state(core.clone(), deadline))
        .with_state(core)
}

/// The operational app for the admin address: `/metrics`, `/healthz`, `/readyz`.
pub fn admin_app(core: Arc<Core>) -> Router {
    ops::router(core.health.clone(), core.metrics.clone())
}

/// Answers `504` (a problem) when a request takes longer than the request timeout; the
/// handler is dropped (an audited call then records `aborted`).
async fn deadline(State(core): State<Arc<Core>>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(core.api_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            metrics::counter!("custos_consent_api_timeouts_total").increment(1);
            warn!(
                timeout_secs = core.api_timeout.as_secs_f64(),
                "privacy API request timed out"
            );
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the request took too long; try again",
            )
            .into_response()
        }
    }
}

/// Runs `work` as an audited call: the asked record is made durable first (else `503
/// audit-unavailable` and `work` never runs), the final record is queued after with the
/// rows `work` reports (`answered`), or `rejected` (4xx) / `failed` (5xx).
async fn audited<T, F>(
    core: &Core,
    caller: &Caller,
    call: &'static str,
    tenant: &str,
    parameters: Value,
    work: F,
) -> Result<T, ApiError>
where
    F: Future<Output = Result<(T, u64), ApiError>>,
{
    let record = Call::begin(&core.audit, caller, call, tenant, parameters)
        .await
        .map_err(|_| ApiError::audit_unavailable())?;
    match work.await {
        Ok((v, rows)) => {
            record.finish("answered", rows).await;
            Ok(v)
        }
        Err(e) => {
            let status = if e.status.is_client_error() {
                "rejected"
            } else {
                "failed"
            };
            record.finish(status, 0).await;
            Err(e)
        }
    }
}

/// The request's `Idempotency-Key`, if any (400 when malformed).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(k) if valid_key(k) => Ok(Some(k.to_owned())),
            _ => Err(ApiError::bad(
                "Idempotency-Key must be 1-255 visible ASCII characters",
            )),
        },
    }
}

/// The answer to a repeated revocation request: the first answer's revocations.
fn replayed(revocations: Value) -> (Response, u64) {
    let n = revocations.as_array().map_or(0, Vec::len) as u64;
    (
        (
            StatusCode::OK,
            Json(json!({"status": "accepted", "replayed": true, "revocations": revocations})),
        )
            .into_response(),
        n,
    )
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

/// The request's tenant (default `CUSTOS_DEFAULT_TENANT`), validated and checked against the
/// tenants the caller's token lists (`CUSTOS_OIDC_TENANTS_CLAIM`; 403 otherwise).
fn tenant_or_default(
    core: &Core,
    caller: &Caller,
    tenant: Option<String>,
    call: &'static str,
) -> Result<String, ApiError> {
    let t = tenant.unwrap_or_else(|| core.default_tenant.clone());
    if !caller.may_read_tenant(&t) {
        info!(client = %caller.client, "privacy API call refused: tenant not in the token");
        call_audit::refused(&core.audit, caller, call, "");
        return Err(ApiError::forbidden());
    }
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

/// Publishes the revocation of one active consent under an event id derived from the
/// request ([`revocation_event_id`]); returns its event and revocation ids.
async fn publish_revocation(
    core: &Core,
    c: &ConsentState,
    reason: &str,
    caller: &Caller,
    key: Option<&str>,
) -> Result<Value, ApiError> {
    let actor = caller.actor();
    let sealed = c.sealed.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no-identifiers",
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
        actor: Some(actor.to_owned()),
    };
    let id = revocation_event_id(caller, &c.tenant, &c.consent_id, c.version, reason, key);
    let revocation = revocation_id(&c.tenant, &c.consent_id, &event_key(SOURCE, &id));
    let now = Utc::now();
    core.publisher
        .consent_event("custos.consent.revoked", &id, now, &c.tenant, &data)
        .await
        .map_err(|e| ApiError::internal("publish", e))?;
    info!(consent_id = %c.consent_id, event_id = %id, actor, "revocation requested through the privacy API");
    Ok(json!({
        "eventId": id,
        "revocationId": revocation,
        "consentId": c.consent_id,
        "tenant": c.tenant,
        "requestedAt": now.to_rfc3339_opts(SecondsFormat::Millis, true),
    }))
}

async fn revoke_by_id(
    Revoker(caller): Revoker,
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<RevokeBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    check_reason(&body.reason)?;
    let key = idempotency_key(&headers)?;
    let tenant = tenant_or_default(&core, &caller, body.tenant, call_audit::REVOKE_CONSENT)?;
    let params = json!({"consent_id": id, "idempotency_key": key.is_some()});
    let fp = fingerprint(
        &caller,
        "revoke-consent",
        &[&tenant, &id, &body.reason],
        key.as_deref(),
    );
    let work = async {
        if let Some(first) = core.replays.get(&fp).await {
            return Ok(replayed(first));
        }
        let consent = core
            .book
            .read()
            .await
            .get(&tenant, &id)
            .cloned()
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not-found", "no such consent"))?;
        if consent.status != Status::Active {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not-active",
                format!("the consent is already {}", consent.status.as_str()),
            ));
        }
        let ev = publish_revocation(&core, &consent, &body.reason, &caller, key.as_deref()).await?;
        let revocations = json!([ev]);
        core.replays.put(fp.clone(), revocations.clone()).await;
        let resp = (
            StatusCode::ACCEPTED,
            Json(json!({"status": "accepted", "revocations": revocations})),
        )
            .into_response();
        Ok((resp, 1))
    };
    audited(
        &core,
        &caller,
        call_audit::REVOKE_CONSENT,
        &tenant,
        params,
        work,
    )
    .await
}

async fn revoke_by_patient(
    Revoker(caller): Revoker,
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    body: Result<Json<RevokeByPatientBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    check_reason(&body.reason)?;
    if body.patient.trim().is_empty() || body.client_id.trim().is_empty() {
        return Err(ApiError::bad("patient and client_id are required"));
    }
    let key = idempotency_key(&headers)?;
    let tenant = tenant_or_default(&core, &caller, body.tenant, call_audit::REVOKE_PATIENT)?;
    // The patient only as its pseudonym under the current key, in the audit and the
    // fingerprint alike.
    let patient_ps = core
        .keys
        .pseudonymize(&tenant, PseudonymKind::Patient, &body.patient);
    let params = json!({"patient": patient_ps, "client_id": body.client_id,
        "idempotency_key": key.is_some()});
    let fp = fingerprint(
        &caller,
        "revoke-patient",
        &[&tenant, &patient_ps, &body.client_id, &body.reason],
        key.as_deref(),
    );
    let work = async {
        if let Some(first) = core.replays.get(&fp).await {
            return Ok(replayed(first));
        }
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
                "not-found",
                "no active consent for this patient and client",
            ));
        }
        let mut out = Vec::new();
        for c in &active {
            out.push(publish_revocation(&core, c, &body.reason, &caller, key.as_deref()).await?);
        }
        let n = out.len() as u64;
        let revocations = Value::Array(out);
        core.replays.put(fp.clone(), revocations.clone()).await;
        let resp = (
            StatusCode::ACCEPTED,
            Json(json!({"status": "accepted", "revocations": revocations})),
        )
            .into_response();
        Ok((resp, n))
    };
    audited(
        &core,
        &caller,
        call_audit::REVOKE_PATIENT,
        &tenant,
        params,
        work,
    )
    .await
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
    Reader(caller): Reader,
    State(core): State<Arc<Core>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|_| ApiError::bad("query parameter `patient` is required"))?;
    if q.patient.trim().is_empty() {
        return Err(ApiError::bad("query parameter `patient` is required"));
    }
    let tenant = tenant_or_default(&core, &caller, q.tenant, call_audit::CONSENTS)?;
    let params = json!({
        "patient": core.keys.pseudonymize(&tenant, PseudonymKind::Patient, &q.patient),
        "client_id": q.client_id,
    });
    let work = async {
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
        let n = consents.len() as u64;
        Ok((Json(json!({"tenant": tenant, "consents": consents})), n))
    };
    audited(&core, &caller, call_audit::CONSENTS, &tenant, params, work).await
}

#[derive(Deserialize)]
struct ReportQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
}

/// The revocation reports span every tenant: a caller bound to some tenants
/// (`CUSTOS_OIDC_TENANTS_CLAIM`) may not read them.
fn all_tenants(core: &Core, caller: &Caller, call: &'static str) -> Result<(), ApiError> {
    if caller.tenants.is_none() {
        return Ok(());
    }
    info!(client = %caller.client, "privacy API call refused: cross-tenant report for a tenant-bound token");
    call_audit::refused(&core.audit, caller, call, "");
    Err(ApiError::forbidden())
}

async fn revocations(
    Reader(caller): Reader,
    State(core): State<Arc<Core>>,
    query: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    all_tenants(&core, &caller, call_audit::REVOCATIONS)?;
    let Query(q) = query.map_err(|_| ApiError::bad("invalid query parameters"))?;
    if let Some(s) = &q.state {
        if !matches!(s.as_str(), "requested" | "delivered" | "failed" | "skipped") {
            return Err(ApiError::bad(
                "state must be requested, delivered, failed or skipped",
            ));
        }
    }
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let params = json!({"state": q.state, "limit": limit});
    let work = async {
        let rows = core
            .store
            .revocation_report(q.state.as_deref(), limit)
            .await
            .map_err(|e| ApiError::internal("report", e))?;
        let n = rows.len() as u64;
        Ok((Json(json!({"revocations": rows})), n))
    };
    audited(&core, &caller, call_audit::REVOCATIONS, "", params, work).await
}

async fn attempts(
    Reader(caller): Reader,
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    all_tenants(&core, &caller, call_audit::ATTEMPTS)?;
    let params = json!({"revocation_id": id});
    let work = async {
        let rows = core
            .store
            .attempts(&id)
            .await
            .map_err(|e| ApiError::internal("attempts", e))?;
        let n = rows.len() as u64;
        Ok((Json(json!({"revocationId": id, "attempts": rows})), n))
    };
    audited(&core, &caller, call_audit::ATTEMPTS, "", params, work).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatcher::{Dispatcher, RetryPolicy};
    use crate::publish::Publisher;
    use crate::seal::Sealer;
    use crate::set::SetSigner;
    use crate::ssf::SsfPusher;
    use crate::state::ConsentBook;
    use crate::store::Store;
    use axum::body::Body;
    use axum::http::Request;
    use clap::Parser;
    use custos_auth::config::OidcArgs;
    use custos_auth::oidc::Authenticator;
    use custos_runtime::health::Health;
    use custos_schemas::KeyRing;
    use http_body_util::BodyExt;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    use std::collections::HashSet;
    use std::time::Duration;
    use tokio::sync::{Mutex, RwLock};
    use tower::ServiceExt;

    const AUDIENCE: &str = "custos-privacy";

    /// An in-test OIDC issuer: an ES256 key whose JWKS is served on 127.0.0.1.
    struct Issuer {
        base: String,
        key: EncodingKey,
    }

    impl Issuer {
        async fn start() -> Issuer {
            let secret = p256::SecretKey::random(&mut rand_core::OsRng);
            let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
            let mut jwk: Value =
                serde_json::from_str(&secret.public_key().to_jwk_string()).unwrap();
            jwk["kid"] = json!("es-1");
            jwk["alg"] = json!("ES256");
            jwk["use"] = json!("sig");
            let jwks = json!({ "keys": [jwk] });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let app = Router::new().route("/jwks", get(move || async move { Json(jwks) }));
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Issuer {
                base,
                key: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            }
        }

        fn authenticator(&self) -> Authenticator {
            #[derive(Parser)]
            struct Cli {
                #[command(flatten)]
                oidc: OidcArgs,
            }
            let jwks = format!("{}/jwks", self.base);
            let cli = Cli::try_parse_from([
                "t",
                "--oidc-issuer",
                &self.base,
                "--oidc-audience",
                AUDIENCE,
                "--oidc-jwks-url",
                &jwks,
                "--oidc-roles-claim",
                "realm_access.roles",
            ])
            .unwrap();
            Authenticator::new(&cli.oidc).unwrap()
        }

        /// A token for `sub` with `roles`; `edit` changes the claims before signing.
        fn token(&self, roles: &[&str], edit: impl FnOnce(&mut Value)) -> String {
            let now = Utc::now().timestamp();
            let mut claims = json!({"iss": self.base, "aud": [AUDIENCE, "account"], "sub": "u-123",
                "preferred_username": "privacy-pat", "azp": "privacy-console", "iat": now,
                "exp": now + 300, "realm_access": {"roles": roles}});
            edit(&mut claims);
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some("es-1".to_owned());
            jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
        }
    }

    /// A stand-in for ClickHouse's HTTP interface that takes the audit INSERTs: it keeps
    /// each statement with its body and answers 200, or 500 while `fail` is set, or never
    /// while `hang` is set.
    #[derive(Clone, Default)]
    struct FakeClickHouse {
        inserts: Arc<std::sync::Mutex<Vec<String>>>,
        fail: Arc<std::sync::atomic::AtomicBool>,
        hang: Arc<std::sync::atomic::AtomicBool>,
        url: String,
    }

    impl FakeClickHouse {
        async fn start() -> FakeClickHouse {
            use std::sync::atomic::Ordering;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let fake = FakeClickHouse {
                url: format!("http://{}", listener.local_addr().unwrap()),
                ..FakeClickHouse::default()
            };
            let state = fake.clone();
            let app = Router::new().fallback(
                move |q: axum::extract::RawQuery, body: axum::body::Bytes| {
                    let state = state.clone();
                    async move {
                        if state.hang.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        if state.fail.load(Ordering::SeqCst) {
                            return (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "Code: 497. ACCESS_DENIED",
                            )
                                .into_response();
                        }
                        let q = q.0.unwrap_or_default();
                        state
                            .inserts
                            .lock()
                            .unwrap()
                            .push(format!("{q}\n{}", String::from_utf8_lossy(&body)));
                        StatusCode::OK.into_response()
                    }
                },
            );
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            fake
        }

        /// Every INSERT so far (statement and body) as lossy text: RowBinary strings are
        /// plain bytes.
        fn text(&self) -> String {
            self.inserts.lock().unwrap().join("\n")
        }

        fn count(&self) -> usize {
            self.inserts.lock().unwrap().len()
        }
    }

    /// A core whose backends are never reached by these requests (clients connect lazily),
    /// its audit going to a [`FakeClickHouse`].
    async fn core(auth: Authenticator) -> (Arc<Core>, FakeClickHouse) {
        let ch = FakeClickHouse::start().await;
        (core_with(auth, &ch.url, Duration::from_secs(30)), ch)
    }

    fn core_with(auth: Authenticator, audit_url: &str, api_timeout: Duration) -> Arc<Core> {
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
            health: Arc::new(Health::with_load_step(crate::service::NOT_LOADED)),
            max_event_bytes: 1024,
            auth: Arc::new(auth),
            metrics: None,
            audit: custos_auth::audit::QueryAudit::new(
                clickhouse::Client::default()
                    .with_url(audit_url)
                    .with_database("custos")
                    // The stand-in serves no schema for the insert's validation query.
                    .with_validation(false),
            ),
            api_timeout,
            replays: crate::idempotency::Replays::new(Duration::from_secs(60)),
        })
    }

    async fn call(app: Router, req: Request<Body>) -> (StatusCode, String, Value) {
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            ct,
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

    fn get_req(uri: &str, token: Option<&str>) -> Request<Body> {
        let mut b = Request::get(uri);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn missing_and_unacceptable_tokens_are_401_problems() {
        let iss = Issuer::start().await;
        let app = app(core(iss.authenticator()).await.0);
        let officer = |edit: fn(&mut Value)| iss.token(&["privacy_officer"], edit);
        let expired = officer(|c| {
            c["exp"] = json!(Utc::now().timestamp() - 3600);
            c["iat"] = json!(Utc::now().timestamp() - 7200);
        });
        let wrong_aud = officer(|c| c["aud"] = json!("someone-else"));
        let wrong_iss = officer(|c| c["iss"] = json!("http://127.0.0.1:1/other"));
        // Same claims, signed by another key under the same kid.
        let forged = Issuer::start()
            .await
            .token(&["privacy_officer"], |c| c["iss"] = json!(iss.base));
        let bad: [Option<&str>; 6] = [
            None,
            Some("not-a-jwt"),
            Some(&expired),
            Some(&wrong_aud),
            Some(&wrong_iss),
            Some(&forged),
        ];
        for token in bad {
            for req in [
                post("/v1/consents/c1/revoke", token, r#"{"reason":"x"}"#),
                post(
                    "/v1/consents/revoke",
                    token,
                    r#"{"patient":"p","client_id":"a","reason":"r"}"#,
                ),
                get_req("/v1/consents?patient=p", token),
                get_req("/v1/revocations?state=failed", token),
                get_req("/v1/revocations/r1/attempts", token),
            ] {
                let uri = req.uri().to_string();
                let (s, ct, v) = call(app.clone(), req).await;
                assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri} {token:?}");
                assert_eq!(ct, PROBLEM_JSON);
                assert_eq!(v["status"], 401);
                assert_eq!(v["type"], "https://custos.dev/problems/unauthorized");
            }
        }
    }

    #[tokio::test]
    async fn roles_decide_revoke_and_read() {
        let iss = Issuer::start().await;
        let app = app(core(iss.authenticator()).await.0);
        let officer = iss.token(&["privacy_officer"], |_| {});
        let auditor = iss.token(&["auditor", "offline_access"], |_| {});
        let compliance = iss.token(&["compliance_officer"], |_| {});
        let responder = iss.token(&["incident_responder"], |_| {});
        let none = iss.token(&[], |_| {});

        // Revoking needs privacy_officer: 403 before the body is even looked at.
        for token in [&auditor, &compliance, &responder, &none] {
            for req in [
                post("/v1/consents/c1/revoke", Some(token), r#"{"reason":"x"}"#),
                post("/v1/consents/revoke", Some(token), "{not json"),
            ] {
                let (s, ct, v) = call(app.clone(), req).await;
                assert_eq!(s, StatusCode::FORBIDDEN);
                assert_eq!(ct, PROBLEM_JSON);
                assert_eq!(v["type"], "https://custos.dev/problems/forbidden");
            }
        }
        // Reading: privacy, compliance, auditor; not an incident responder nor no role.
        for token in [&officer, &auditor, &compliance] {
            let (s, _, v) = call(app.clone(), get_req("/v1/consents?patient=p", Some(token))).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            assert_eq!(v["consents"], json!([]));
        }
        for token in [&responder, &none] {
            let (s, ct, _) =
                call(app.clone(), get_req("/v1/consents?patient=p", Some(token))).await;
            assert_eq!(s, StatusCode::FORBIDDEN);
            assert_eq!(ct, PROBLEM_JSON);
            let (s, _, _) = call(app.clone(), get_req("/v1/revocations", Some(token))).await;
            assert_eq!(s, StatusCode::FORBIDDEN);
        }
        // A privacy officer gets past authentication into validation and lookup.
        let (s, ct, v) = call(
            app.clone(),
            post("/v1/consents/c1/revoke", Some(&officer), "{not json"),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(ct, PROBLEM_JSON);
        assert_eq!(v["type"], "https://custos.dev/problems/bad-request");
        let (s, _, v) = call(
            app.clone(),
            post(
                "/v1/consents/c1/revoke",
                Some(&officer),
                r#"{"reason":"see eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig"}"#,
            ),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let (s, _, v) = call(
            app.clone(),
            post(
                "/v1/consents/c1/revoke",
                Some(&officer),
                r#"{"reason":"patient asked"}"#,
            ),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(v["type"], "https://custos.dev/problems/not-found");
        let (s, _, _) = call(
            app.clone(),
            post(
                "/v1/consents/revoke",
                Some(&officer),
                r#"{"patient":"p","client_id":"a","reason":"r","tenant":"bad tenant!"}"#,
            ),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _, _) = call(
            app.clone(),
            post(
                "/v1/consents/revoke",
                Some(&officer),
                r#"{"patient":"p","client_id":"a","reason":"r"}"#,
            ),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn public_metadata_needs_no_token() {
        let iss = Issuer::start().await;
        let app = app(core(iss.authenticator()).await.0);
        let (s, _, v) = call(app.clone(), get_req("/.well-known/ssf-configuration", None)).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["issuer"], "http://custos.test");
        let (s, _, v) = call(app.clone(), get_req("/jwks.json", None)).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["keys"][0]["kid"], "k1");
        let (s, _, v) = call(app, get_req("/readyz", None)).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v["status"], "not ready");
    }

    /// Waits until the fake holds `n` INSERTs (final records are written after the answer).
    async fn wait_inserts(ch: &FakeClickHouse, n: usize) {
        for _ in 0..100 {
            if ch.count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} audit INSERTs, wanted {n}: {}", ch.count(), ch.text());
    }

    #[tokio::test]
    async fn every_call_is_audited_before_its_answer_without_raw_patient_ids() {
        let iss = Issuer::start().await;
        let (core, ch) = core(iss.authenticator()).await;
        let app = app(core.clone());
        let officer = iss.token(&["privacy_officer"], |_| {});
        let responder = iss.token(&["incident_responder"], |_| {});

        let (s, _, _) = call(
            app.clone(),
            get_req(
                "/v1/consents?patient=PAT-RAW-4711&client_id=app",
                Some(&officer),
            ),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        // The asked record was acknowledged before the answer.
        assert!(
            ch.count() >= 1,
            "answered before the audit record was written"
        );
        let asked = ch.text();
        assert!(asked.contains("report_queries"), "{asked}");
        assert!(asked.contains("privacy.consents") && asked.contains("answering"));
        assert!(
            asked.contains("u-123") && asked.contains("privacy-pat"),
            "caller"
        );
        let ps = core
            .keys
            .pseudonymize("default", PseudonymKind::Patient, "PAT-RAW-4711");
        assert!(asked.contains(&ps), "the patient's pseudonym");
        core.audit.flush().await;
        assert!(ch.text().contains("answered"));

        for (req, name) in [
            (
                post(
                    "/v1/consents/c1/revoke",
                    Some(&officer),
                    r#"{"reason":"asked by PAT-RAW-4711"}"#,
                ),
                "privacy.revoke-consent",
            ),
            (
                post(
                    "/v1/consents/revoke",
                    Some(&officer),
                    r#"{"patient":"PAT-RAW-4711","client_id":"app","reason":"r"}"#,
                ),
                "privacy.revoke-patient",
            ),
            (
                get_req("/v1/revocations?state=failed", Some(&officer)),
                "privacy.revocations",
            ),
            (
                get_req("/v1/revocations/rev-1/attempts", Some(&officer)),
                "privacy.revocation-attempts",
            ),
        ] {
            let before = ch.count();
            let uri = req.uri().to_string();
            let (s, _, _) = call(app.clone(), req).await;
            // Unknown consents are 404s; the revocation report reaches the (absent) store.
            assert!(s.is_client_error() || s.is_server_error(), "{uri}: {s}");
            assert!(ch.count() > before, "{uri} left no audit record");
            assert!(ch.text().contains(name), "{uri}");
        }
        // A refusal is recorded too (best effort, after the answer).
        let before = ch.count();
        let (s, _, _) = call(
            app.clone(),
            get_req("/v1/consents?patient=PAT-RAW-4711", Some(&responder)),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        wait_inserts(&ch, before + 1).await;
        assert!(ch.text().contains("forbidden"));
        core.audit.flush().await;
        let all = ch.text();
        assert!(!all.contains("PAT-RAW-4711"), "raw patient id in the audit");
        assert!(all.contains("rejected"), "404s are recorded as rejected");
    }

    #[tokio::test]
    async fn no_durable_audit_record_no_answer() {
        let iss = Issuer::start().await;
        let (core, ch) = core(iss.authenticator()).await;
        ch.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let app = app(core);
        let officer = iss.token(&["privacy_officer"], |_| {});
        for req in [
            get_req("/v1/consents?patient=p", Some(&officer)),
            post(
                "/v1/consents/c1/revoke",
                Some(&officer),
                r#"{"reason":"x"}"#,
            ),
            post(
                "/v1/consents/revoke",
                Some(&officer),
                r#"{"patient":"p","client_id":"a","reason":"r"}"#,
            ),
            get_req("/v1/revocations", Some(&officer)),
            get_req("/v1/revocations/r1/attempts", Some(&officer)),
        ] {
            let uri = req.uri().to_string();
            let (s, ct, v) = call(app.clone(), req).await;
            assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
            assert_eq!(ct, PROBLEM_JSON);
            assert_eq!(v["type"], "https://custos.dev/problems/audit-unavailable");
        }
        assert_eq!(ch.count(), 0);
    }

    #[tokio::test]
    async fn a_slow_request_is_cut_at_the_timeout_with_a_problem() {
        let iss = Issuer::start().await;
        let ch = FakeClickHouse::start().await;
        ch.hang.store(true, std::sync::atomic::Ordering::SeqCst);
        let core = core_with(iss.authenticator(), &ch.url, Duration::from_millis(300));
        let officer = iss.token(&["privacy_officer"], |_| {});
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            call(app(core), get_req("/v1/consents?patient=p", Some(&officer))),
        )
        .await
        .expect("no answer within 10 s: the request is not bounded");
        let (s, ct, v) = answer;
        assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(ct, PROBLEM_JSON);
        assert_eq!(v["type"], "https://custos.dev/problems/timeout");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn metrics_are_served_on_the_admin_app_only() {
        let iss = Issuer::start().await;
        let (core, _ch) = core(iss.authenticator()).await;
        let resp = app(core.clone())
            .oneshot(get_req("/metrics", None))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let resp = admin_app(core.clone())
            .oneshot(get_req("/metrics", None))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = admin_app(core)
            .oneshot(get_req("/healthz", None))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn malformed_idempotency_keys_are_400() {
        let iss = Issuer::start().await;
        let (core, _ch) = core(iss.authenticator()).await;
        let officer = iss.token(&["privacy_officer"], |_| {});
        let mut req = post(
            "/v1/consents/c1/revoke",
            Some(&officer),
            r#"{"reason":"x"}"#,
        );
        req.headers_mut()
            .insert("idempotency-key", HeaderValue::from_static("has space"));
        let (s, ct, _) = call(app(core), req).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(ct, PROBLEM_JSON);
    }
}
