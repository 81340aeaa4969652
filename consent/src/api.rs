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
//! `/v1/*` authenticates callers exactly like the query API: OIDC bearer JWTs checked against
//! the issuer's JWKS by [`custos_query::auth::Authenticator`] (issuer, audience, expiry,
//! algorithm allow-list, roles from `CUSTOS_OIDC_ROLES_CLAIM`). Revoking needs the
//! `privacy_officer` role; reading consents and revocation reports needs `privacy_officer`,
//! `compliance_officer` or `auditor`. A missing or unacceptable token is a 401, a token
//! without a fitting role a 403; every error is an RFC 9457 `application/problem+json`
//! body. The revocation event names the caller (`preferred_username`, else `sub`) as its
//! actor. A revocation is published to Kafka (the source of truth) and answered `202`; the
//! consumer applies it and the dispatcher pushes it. Internal errors and tokens are never
//! returned nor logged.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{SecondsFormat, Utc};
use custos_query::auth::{AuthError, Caller, Role};
use custos_query::error::PROBLEM_JSON;
use custos_schemas::decode::find_raw_token;
use custos_schemas::{ConsentData, PseudonymKind};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{error, info, warn};

use crate::publish::new_event_id;
use crate::scopes::ScopeSet;
use crate::service::Core;
use crate::state::{ConsentState, Status};

/// Roles that may revoke consents.
pub const REVOKE_ROLES: &[Role] = &[Role::PrivacyOfficer];
/// Roles that may read consent state, history and revocation reports.
pub const READ_ROLES: &[Role] = &[Role::PrivacyOfficer, Role::ComplianceOfficer, Role::Auditor];

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

/// The request's tenant (default `CUSTOS_DEFAULT_TENANT`), validated and checked against the
/// tenants the caller's token lists (`CUSTOS_OIDC_TENANTS_CLAIM`; 403 otherwise).
fn tenant_or_default(
    core: &Core,
    caller: &Caller,
    tenant: Option<String>,
) -> Result<String, ApiError> {
    let t = tenant.unwrap_or_else(|| core.default_tenant.clone());
    if !caller.may_read_tenant(&t) {
        info!(client = %caller.client, "privacy API call refused: tenant not in the token");
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

/// Publishes the revocation of one active consent; returns its event id.
async fn publish_revocation(
    core: &Core,
    c: &ConsentState,
    reason: &str,
    actor: &str,
) -> Result<Value, ApiError> {
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
    let id = new_event_id();
    let now = Utc::now();
    core.publisher
        .consent_event("custos.consent.revoked", &id, now, &c.tenant, &data)
        .await
        .map_err(|e| ApiError::internal("publish", e))?;
    info!(consent_id = %c.consent_id, event_id = %id, actor, "revocation requested through the privacy API");
    Ok(json!({
        "eventId": id,
        "consentId": c.consent_id,
        "tenant": c.tenant,
        "requestedAt": now.to_rfc3339_opts(SecondsFormat::Millis, true),
    }))
}

async fn revoke_by_id(
    Revoker(caller): Revoker,
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    body: Result<Json<RevokeBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    check_reason(&body.reason)?;
    let tenant = tenant_or_default(&core, &caller, body.tenant)?;
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
    let ev = publish_revocation(&core, &consent, &body.reason, caller.actor()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "accepted", "revocations": [ev]})),
    )
        .into_response())
}

async fn revoke_by_patient(
    Revoker(caller): Revoker,
    State(core): State<Arc<Core>>,
    body: Result<Json<RevokeByPatientBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    check_reason(&body.reason)?;
    if body.patient.trim().is_empty() || body.client_id.trim().is_empty() {
        return Err(ApiError::bad("patient and client_id are required"));
    }
    let tenant = tenant_or_default(&core, &caller, body.tenant)?;
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
        out.push(publish_revocation(&core, c, &body.reason, caller.actor()).await?);
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
    Reader(caller): Reader,
    State(core): State<Arc<Core>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|_| ApiError::bad("query parameter `patient` is required"))?;
    if q.patient.trim().is_empty() {
        return Err(ApiError::bad("query parameter `patient` is required"));
    }
    let tenant = tenant_or_default(&core, &caller, q.tenant)?;
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

/// The revocation reports span every tenant: a caller bound to some tenants
/// (`CUSTOS_OIDC_TENANTS_CLAIM`) may not read them.
fn all_tenants(caller: &Caller) -> Result<(), ApiError> {
    if caller.tenants.is_none() {
        return Ok(());
    }
    info!(client = %caller.client, "privacy API call refused: cross-tenant report for a tenant-bound token");
    Err(ApiError::forbidden())
}

async fn revocations(
    Reader(caller): Reader,
    State(core): State<Arc<Core>>,
    Query(q): Query<ReportQuery>,
) -> Result<Json<Value>, ApiError> {
    all_tenants(&caller)?;
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
    Reader(caller): Reader,
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    all_tenants(&caller)?;
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
    use clap::Parser;
    use custos_query::auth::Authenticator;
    use custos_query::config::OidcArgs;
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

    /// A core whose backends are never reached by these requests (clients connect lazily).
    fn core(auth: Authenticator) -> Arc<Core> {
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
            auth: Arc::new(auth),
            metrics: None,
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
        let app = app(core(iss.authenticator()));
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
        let app = app(core(iss.authenticator()));
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
        let app = app(core(iss.authenticator()));
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
}
