//! Keycloak event JSON: user events (`org.keycloak.events.Event`) and admin events
//! (`org.keycloak.events.admin.AdminEvent`), as JSON event-listener SPIs serialize them
//! with Jackson (Keycloak 23+ adds the event `id`, which Custos requires for
//! deduplication).
//!
//! Common attributes: `id` = event id, `source` = `keycloak:{realmId}`, `time` = `time`
//! (epoch milliseconds), `tenant` = `realmName` when the event carries it, else `realmId`.
//! Keycloak's own event JSON carries no issuer URL; the `custos-kafka` listener
//! (connectors/keycloak) adds `realmName` and `issuer`, the realm's issuer URL as in its
//! tokens' `iss`, so that AS events and the accesses made with their tokens share tenant and
//! issuer. Without an `http(s)` `issuer`, `iss` is `keycloak:{realmId}` (see
//! [`keycloak_issuer`]). The listener also adds `fhirUser`, the user's FHIR resource (the
//! SMART `fhirUser` claim): the ingest then classes the user's login and token events like
//! the FHIR server's records of the same user (a practitioner's subject and IP readable, a
//! patient's pseudonymized), so one token's events agree on its user and source IP.
//!
//! User events (`type`):
//!
//! | Keycloak type | Custos type | notes |
//! |---|---|---|
//! | `LOGIN` | `custos.auth.login` | a password grant's tokens: `jti` = `details.token_id`, `scope` = `details.scope`; `amr`, `roles` = `details.amr`, `details.roles` when present (words separated by spaces or commas) |
//! | `LOGIN_ERROR` | `custos.auth.login_failed` | `error` kept, `userId` optional |
//! | `LOGOUT`, `LOGOUT_ERROR` | `custos.auth.logout` | |
//! | `CODE_TO_TOKEN`, `CLIENT_LOGIN`, `TOKEN_EXCHANGE`, `OAUTH2_DEVICE_CODE_TO_TOKEN`, `AUTHREQID_TO_TOKEN` (and `_ERROR`) | `custos.token.issued` | `jti` = `details.token_id` |
//! | `REFRESH_TOKEN` (and `_ERROR`) | `custos.token.refreshed` | `jti` = `details.token_id` |
//! | `INTROSPECT_TOKEN` (and `_ERROR`) | `custos.token.introspected` | `active` = not an error |
//! | `GRANT_CONSENT`, `UPDATE_CONSENT` | `custos.consent.granted` | client = `details.granted_client` or `clientId`; patient = the patient id of a `Patient/…` `fhirUser`, else the user |
//! | `LOGIN` with `details.consent` = `consent_granted` | `custos.auth.login`; the consent service also reads it as `custos.consent.granted` ([`decode_keycloak_login_consent`]) | the consent screen of a sign-in |
//! | `GRANT_CONSENT_ERROR`, `UPDATE_CONSENT_ERROR` | `custos.auth.login_failed` | the consent screen was refused or failed: no consent, no token; `error` kept (e.g. `rejected_by_user`) |
//! | `REVOKE_GRANT` with `details.revoked_client`, or with neither detail | `custos.consent.revoked` | |
//! | `REVOKE_GRANT` with only `details.token_id` (RFC 7009 access-token revocation) | `custos.token.revoked` | |
//!
//! Every other type is rejected as [`DecodeError::UnknownType`]. For `*_ERROR` token
//! events the `jti` falls back to `details.refresh_token_id`, then to
//! `unknown:{event id}`; `*_ERROR` events without `clientId` get client `unknown`. Their
//! free-text `details.reason` is never copied; one that reports refresh-token reuse gives
//! the fixed reason [`REFRESH_REUSE_REASON`].
//!
//! Admin events (`operationType`, `resourcePath`, `authDetails`):
//!
//! | operation and path | Custos type |
//! |---|---|
//! | `DELETE` or `ACTION` on `users/{id}/consents/{clientId}` | `custos.consent.revoked` (Keycloak itself emits `ACTION`) |
//! | `DELETE` of resource type `USER` on `users/{id}` | `custos.user.deprovisioned` |
//! | `ACTION` on `users/{id}/logout` | `custos.auth.logout` |
//!
//! Anything else is `unknown_type` `admin:{operationType}:{resourceType}` (with `:error`
//! appended when a consent or user deletion reports an `error`).
//!
//! Only the attributes named above are read. `details.username`, `details.email`, names,
//! `representation` and every other detail are never copied: they may hold PHI.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::json;
use crate::error::DecodeError;
use crate::event::{
    AuthData, ConsentData, DeprovisionData, Event, EventType, Payload, SourceFormat, TokenData,
};

/// Client id used for failed requests whose client Keycloak could not identify.
pub const UNKNOWN_CLIENT: &str = "unknown";

/// The `iss` given to events of a realm: `keycloak:{realmId}`.
pub fn keycloak_issuer(realm_id: &str) -> String {
    format!("keycloak:{realm_id}")
}

/// The consent id of a Keycloak user consent: `kc-` and 32 hex digits of SHA-256 over
/// realm id, user id and the app's `clientId`.
///
/// Keycloak consents have no id of their own; this one is the same for the grant, the
/// update and every way of revoking it (account console, token revocation, admin API),
/// and it does not expose the patient's user id in clear text.
pub fn keycloak_consent_id(realm_id: &str, user_id: &str, client_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(realm_id.as_bytes());
    h.update([0x1f]);
    h.update(user_id.as_bytes());
    h.update([0x1f]);
    h.update(client_id.as_bytes());
    format!("kc-{}", hex::encode(&h.finalize()[..16]))
}

/// The union of the user-event and admin-event shapes; unknown fields are skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeycloakJson {
    id: Option<String>,
    time: Option<i64>,
    #[serde(rename = "type")]
    ty: Option<String>,
    realm_id: Option<String>,
    /// Added by the `custos-kafka` listener: the realm's name, the tenant.
    realm_name: Option<String>,
    /// Added by the `custos-kafka` listener: the realm's issuer URL.
    issuer: Option<String>,
    client_id: Option<String>,
    user_id: Option<String>,
    /// Added by the `custos-kafka` listener: the user's FHIR resource (`fhirUser`).
    fhir_user: Option<String>,
    session_id: Option<String>,
    ip_address: Option<String>,
    error: Option<String>,
    details: Option<Details>,
    // Admin events.
    operation_type: Option<String>,
    resource_type: Option<String>,
    resource_path: Option<String>,
    auth_details: Option<AuthDetails>,
}

/// The event details Custos reads. Everything else in `details` is ignored.
#[derive(Deserialize, Default)]
struct Details {
    token_id: Option<String>,
    refresh_token_id: Option<String>,
    token_type: Option<String>,
    scope: Option<String>,
    granted_scopes: Option<String>,
    granted_client: Option<String>,
    revoked_client: Option<String>,
    /// What the consent screen did on a `LOGIN` (`consent_granted`, `persisted_consent`,
    /// `no_consent_required`).
    consent: Option<String>,
    /// Authentication methods (RFC 8176), when a listener or authenticator adds them.
    amr: Option<Words>,
    /// The user's roles, when a listener adds them.
    roles: Option<Words>,
    /// Keycloak's free-text reason of an error: only classified, never copied.
    reason: Option<String>,
}

/// A list in Keycloak details: details are string-valued, so a list arrives as one string
/// (words separated by spaces or commas); a JSON array is accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum Words {
    One(String),
    Many(Vec<String>),
}

impl Words {
    fn into_vec(self) -> Vec<String> {
        let split = |s: &str| -> Vec<String> {
            s.split(|c: char| c == ',' || c.is_ascii_whitespace())
                .filter(|w| !w.is_empty())
                .map(str::to_owned)
                .collect()
        };
        match self {
            Words::One(s) => split(&s),
            Words::Many(v) => v.iter().flat_map(|s| split(s)).collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthDetails {
    client_id: Option<String>,
    user_id: Option<String>,
}

/// Attributes shared by every event of one message.
struct Common {
    id: String,
    realm: String,
    tenant: String,
    iss: String,
    time: DateTime<Utc>,
}

impl Common {
    fn event(self, event_type: EventType, format: SourceFormat, payload: Payload) -> Event {
        Event {
            id: self.id,
            source: format!("keycloak:{}", self.realm),
            event_type,
            time: self.time,
            tenant: Some(self.tenant),
            format,
            payload,
        }
    }
}

/// Decodes a Keycloak user or admin event.
pub fn decode_keycloak(bytes: &[u8]) -> Result<Event, DecodeError> {
    let (ev, common) = parse(bytes)?;
    if ev.operation_type.is_some() || ev.auth_details.is_some() {
        admin_event(ev, common)
    } else {
        user_event(ev, common)
    }
}

/// `details.consent` of a `LOGIN` whose consent screen the user accepted.
pub const CONSENT_GRANTED_AT_LOGIN: &str = "consent_granted";

/// The consent a Keycloak `LOGIN` event records: `Some(custos.consent.granted)` when the user
/// accepted the consent screen during that sign-in (`details.consent` =
/// [`CONSENT_GRANTED_AT_LOGIN`]), `None` for every other event.
///
/// Keycloak emits no `GRANT_CONSENT` event for a consent given on the login screen (that type
/// comes from the account console), only this detail on the `LOGIN`, so the consent service
/// reads it here; [`decode_keycloak`] still makes the event a `custos.auth.login` for the
/// audit. The consent is the one `GRANT_CONSENT` would give: same consent id
/// ([`keycloak_consent_id`]), subject = the user, patient = the patient id of a patient
/// user's `fhirUser` (else the user), client = the event's client, the event's tenant and
/// issuer; no scope (the `LOGIN` carries none).
pub fn decode_keycloak_login_consent(bytes: &[u8]) -> Result<Option<Event>, DecodeError> {
    let (ev, common) = parse(bytes)?;
    let granted = ev.operation_type.is_none()
        && ev.auth_details.is_none()
        && ev.ty.as_deref() == Some("LOGIN")
        && ev
            .details
            .as_ref()
            .and_then(|d| d.consent.as_deref())
            .is_some_and(|c| c.eq_ignore_ascii_case(CONSENT_GRANTED_AT_LOGIN));
    if !granted {
        return Ok(None);
    }
    consent_granted(UserFields::new(ev, false), common).map(Some)
}

/// The event and the attributes every event of it shares.
fn parse(bytes: &[u8]) -> Result<(KeycloakJson, Common), DecodeError> {
    let mut ev: KeycloakJson = json::parse(bytes, "")?;
    let id = required(ev.id.as_deref(), "id")?.to_owned();
    let realm = required(ev.realm_id.as_deref(), "realmId")?.to_owned();
    let millis = ev
        .time
        .ok_or_else(|| DecodeError::MissingField("time".to_owned()))?;
    let time = DateTime::from_timestamp_millis(millis)
        .ok_or_else(|| DecodeError::invalid("time", "epoch milliseconds out of range"))?;
    let iss = match nonempty(ev.issuer.take()) {
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => url,
        Some(_) => return Err(DecodeError::invalid("issuer", "not an http(s) URL")),
        None => keycloak_issuer(&realm),
    };
    let tenant = nonempty(ev.realm_name.take()).unwrap_or_else(|| realm.clone());
    let common = Common {
        id,
        iss,
        tenant,
        realm,
        time,
    };
    Ok((ev, common))
}

/// What a user event type becomes.
enum Kind {
    Auth(EventType),
    Token(EventType),
    ConsentGranted,
    RevokeGrant,
}

fn classify(ty: &str) -> Option<(Kind, bool)> {
    let (base, is_error) = match ty.strip_suffix("_ERROR") {
        Some(base) => (base, true),
        None => (ty, false),
    };
    let kind = match base {
        "LOGIN" if is_error => Kind::Auth(EventType::AuthLoginFailed),
        "LOGIN" => Kind::Auth(EventType::AuthLogin),
        "LOGOUT" => Kind::Auth(EventType::AuthLogout),
        "CODE_TO_TOKEN"
        | "CLIENT_LOGIN"
        | "TOKEN_EXCHANGE"
        | "OAUTH2_DEVICE_CODE_TO_TOKEN"
        | "AUTHREQID_TO_TOKEN" => Kind::Token(EventType::TokenIssued),
        "REFRESH_TOKEN" => Kind::Token(EventType::TokenRefreshed),
        "INTROSPECT_TOKEN" => Kind::Token(EventType::TokenIntrospected),
        "GRANT_CONSENT" | "UPDATE_CONSENT" if !is_error => Kind::ConsentGranted,
        // A refused (or failed) consent screen ends the login without a grant: a failed
        // login with Keycloak's error, never a consent event (nothing to fold or revoke).
        "GRANT_CONSENT" | "UPDATE_CONSENT" => Kind::Auth(EventType::AuthLoginFailed),
        "REVOKE_GRANT" if !is_error => Kind::RevokeGrant,
        _ => return None,
    };
    Some((kind, is_error))
}

/// The attributes of a user event that its conversions read.
struct UserFields {
    /// Whether the type ends in `_ERROR`.
    is_error: bool,
    details: Details,
    user_id: Option<String>,
    fhir_user: Option<String>,
    client_id: Option<String>,
    session_id: Option<String>,
    ip: Option<String>,
    error: Option<String>,
}

impl UserFields {
    fn new(ev: KeycloakJson, is_error: bool) -> UserFields {
        UserFields {
            is_error,
            details: ev.details.unwrap_or_default(),
            user_id: nonempty(ev.user_id),
            fhir_user: nonempty(ev.fhir_user),
            client_id: nonempty(ev.client_id),
            session_id: nonempty(ev.session_id),
            ip: nonempty(ev.ip_address),
            error: nonempty(ev.error),
        }
    }

    /// The client: failed requests may come from a client Keycloak could not identify.
    fn client(&mut self) -> Result<String, DecodeError> {
        match self.client_id.take() {
            Some(c) => Ok(c),
            None if self.is_error => Ok(UNKNOWN_CLIENT.to_owned()),
            None => Err(DecodeError::MissingField("clientId".to_owned())),
        }
    }

    /// The user, required.
    fn user(&mut self) -> Result<String, DecodeError> {
        self.user_id
            .take()
            .ok_or_else(|| DecodeError::MissingField("userId".to_owned()))
    }
}

/// Converts a user event, one conversion per event family.
fn user_event(ev: KeycloakJson, common: Common) -> Result<Event, DecodeError> {
    let ty = required(ev.ty.as_deref(), "type")?;
    let (kind, is_error) = classify(ty).ok_or_else(|| DecodeError::unknown_type(ty))?;
    let fields = UserFields::new(ev, is_error);
    match kind {
        Kind::Auth(event_type) => auth_event(fields, common, event_type),
        Kind::Token(event_type) => token_event(fields, common, event_type),
        Kind::ConsentGranted => consent_granted(fields, common),
        Kind::RevokeGrant => revoke_grant(fields, common),
    }
}

/// Login, failed login, logout.
fn auth_event(
    mut f: UserFields,
    common: Common,
    event_type: EventType,
) -> Result<Event, DecodeError> {
    if event_type != EventType::AuthLoginFailed && f.user_id.is_none() {
        return Err(DecodeError::MissingField("userId".to_owned()));
    }
    // A direct grant (password) issues its tokens in the LOGIN event itself.
    let issued = event_type == EventType::AuthLogin;
    let data = AuthData {
        iss: common.iss.clone(),
        client_id: f.client()?,
        sub: f.user_id,
        fhir_user: f.fhir_user,
        sid: f.session_id,
        source_ip: f.ip,
        user_agent: None,
        error: f.error,
        jti: nonempty(f.details.token_id.take()).filter(|_| issued),
        scope: nonempty(f.details.scope.take()).filter(|_| issued),
        amr: f
            .details
            .amr
            .take()
            .map(Words::into_vec)
            .unwrap_or_default(),
        roles: f
            .details
            .roles
            .take()
            .map(Words::into_vec)
            .unwrap_or_default(),
    };
    Ok(common.event(event_type, SourceFormat::KeycloakEvent, Payload::Auth(data)))
}

/// Token issued, refreshed or introspected.
fn token_event(
    mut f: UserFields,
    common: Common,
    event_type: EventType,
) -> Result<Event, DecodeError> {
    let token_id = nonempty(f.details.token_id.take());
    let refresh_id = nonempty(f.details.refresh_token_id.take());
    let (jti, token_type) = match (token_id, refresh_id) {
        (Some(t), _) => {
            let tt = if event_type == EventType::TokenIntrospected {
                f.details.token_type.as_deref().and_then(token_type)
            } else {
                Some("access")
            };
            (t, tt)
        }
        (None, _) if !f.is_error => {
            return Err(DecodeError::MissingField("details.token_id".to_owned()))
        }
        (None, Some(r)) => (r, Some("refresh")),
        (None, None) => (format!("unknown:{}", common.id), None),
    };
    let data = TokenData {
        iss: common.iss.clone(),
        client_id: f.client()?,
        sub: f.user_id,
        fhir_user: f.fhir_user,
        jti,
        token_type: token_type.map(str::to_owned),
        scope: nonempty(f.details.scope),
        sid: f.session_id,
        patient: None,
        expires_at: None,
        source_ip: f.ip,
        user_agent: None,
        active: (event_type == EventType::TokenIntrospected).then_some(!f.is_error),
        reason: reuse_reason(f.is_error, f.details.reason.as_deref()),
        error: f.error,
    };
    Ok(common.event(
        event_type,
        SourceFormat::KeycloakEvent,
        Payload::Token(data),
    ))
}

/// The fixed reason Custos records for a refused refresh whose Keycloak reason reports
/// refresh-token reuse (Keycloak's free text itself is never copied).
pub const REFRESH_REUSE_REASON: &str = "refresh token reuse";

/// [`REFRESH_REUSE_REASON`] for an `*_ERROR` event whose `details.reason` mentions reuse
/// (Keycloak: "Maximum allowed refresh token reuse exceeded").
fn reuse_reason(is_error: bool, reason: Option<&str>) -> Option<String> {
    let reason = reason.filter(|_| is_error)?;
    reason
        .to_ascii_lowercase()
        .contains("reuse")
        .then(|| REFRESH_REUSE_REASON.to_owned())
}

/// A consent granted or updated on the consent screen.
fn consent_granted(mut f: UserFields, common: Common) -> Result<Event, DecodeError> {
    let user = f.user()?;
    let app = nonempty(f.details.granted_client)
        .or(f.client_id)
        .ok_or_else(|| DecodeError::MissingField("clientId".to_owned()))?;
    let scope = nonempty(f.details.scope).or(nonempty(f.details.granted_scopes));
    let mut data = consent(&common, user, app, scope, Some("patient".to_owned()), None);
    data.patient = patient_of(f.fhir_user.as_deref()).unwrap_or(data.patient);
    Ok(common.event(
        EventType::ConsentGranted,
        SourceFormat::KeycloakEvent,
        Payload::Consent(data),
    ))
}

/// `REVOKE_GRANT`: an access token revoked by its client (RFC 7009), or a consent revoked.
fn revoke_grant(mut f: UserFields, common: Common) -> Result<Event, DecodeError> {
    let revoked = nonempty(f.details.revoked_client.take());
    let token_id = nonempty(f.details.token_id.take());
    match (revoked, token_id) {
        (None, Some(jti)) => token_revoked(f, common, jti),
        (revoked, _) => consent_revoked(f, common, revoked),
    }
}

/// RFC 7009 revocation of an access token: the consent stays.
fn token_revoked(mut f: UserFields, common: Common, jti: String) -> Result<Event, DecodeError> {
    let data = TokenData {
        iss: common.iss.clone(),
        client_id: f.client()?,
        sub: f.user_id,
        fhir_user: f.fhir_user,
        jti,
        token_type: Some("access".to_owned()),
        scope: None,
        sid: f.session_id,
        patient: None,
        expires_at: None,
        source_ip: f.ip,
        user_agent: None,
        active: None,
        reason: Some("revoked by the client (RFC 7009)".to_owned()),
        error: None,
    };
    Ok(common.event(
        EventType::TokenRevoked,
        SourceFormat::KeycloakEvent,
        Payload::Token(data),
    ))
}

/// A consent revoked, from the account console or with the client's refresh token.
fn consent_revoked(
    mut f: UserFields,
    common: Common,
    revoked: Option<String>,
) -> Result<Event, DecodeError> {
    let user = f.user()?;
    // Revoking a refresh token at the revocation endpoint revokes the consent too; then the
    // client itself is the actor, otherwise the user (account console).
    let (app, actor, reason) = match revoked {
        Some(app) if f.client_id.as_deref() == Some(app.as_str()) => {
            let actor = format!("client:{app}");
            (
                app,
                actor,
                Some("refresh token revoked by the client (RFC 7009)"),
            )
        }
        Some(app) => (app, "patient".to_owned(), None),
        None => {
            let app = f
                .client_id
                .ok_or_else(|| DecodeError::MissingField("clientId".to_owned()))?;
            (app, "patient".to_owned(), None)
        }
    };
    let reason = reason.map(str::to_owned);
    let mut data = consent(&common, user, app, None, Some(actor), reason);
    data.patient = patient_of(f.fhir_user.as_deref()).unwrap_or(data.patient);
    Ok(common.event(
        EventType::ConsentRevoked,
        SourceFormat::KeycloakEvent,
        Payload::Consent(data),
    ))
}

fn admin_event(ev: KeycloakJson, common: Common) -> Result<Event, DecodeError> {
    let op = required(ev.operation_type.as_deref(), "operationType")?;
    let resource_type = ev.resource_type.as_deref().unwrap_or("");
    let unsupported = || DecodeError::unknown_type(&format!("admin:{op}:{resource_type}"));
    let path = ev.resource_path.as_deref().unwrap_or("");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(unsupported());
    }
    let auth = ev.auth_details;
    let actor = auth.as_ref().and_then(|a| nonempty(a.user_id.clone()));
    let failed = nonempty(ev.error);
    let format = SourceFormat::KeycloakAdminEvent;
    match (op, segments.as_slice()) {
        ("DELETE" | "ACTION", ["users", user, "consents", app]) => {
            if failed.is_some() {
                return Err(DecodeError::unknown_type(&format!(
                    "admin:{op}:{resource_type}:error"
                )));
            }
            let reason = Some("revoked by an administrator".to_owned());
            let data = consent(
                &common,
                (*user).to_owned(),
                (*app).to_owned(),
                None,
                actor,
                reason,
            );
            Ok(common.event(EventType::ConsentRevoked, format, Payload::Consent(data)))
        }
        ("DELETE", ["users", user]) if resource_type == "USER" => {
            if failed.is_some() {
                return Err(DecodeError::unknown_type(&format!(
                    "admin:{op}:{resource_type}:error"
                )));
            }
            let data = DeprovisionData {
                iss: common.iss.clone(),
                sub: (*user).to_owned(),
                fhir_user: None,
                reason: Some("user deleted by an administrator".to_owned()),
                actor,
            };
            Ok(common.event(
                EventType::UserDeprovisioned,
                format,
                Payload::UserDeprovisioned(data),
            ))
        }
        ("ACTION", ["users", user, "logout"]) => {
            // authDetails.ipAddress is the administrator's address, not the user's.
            let client_id = auth
                .and_then(|a| nonempty(a.client_id))
                .unwrap_or_else(|| UNKNOWN_CLIENT.to_owned());
            let data = AuthData {
                iss: common.iss.clone(),
                sub: Some((*user).to_owned()),
                fhir_user: None,
                client_id,
                sid: None,
                source_ip: None,
                user_agent: None,
                error: failed,
                jti: None,
                scope: None,
                amr: Vec::new(),
                roles: Vec::new(),
            };
            Ok(common.event(EventType::AuthLogout, format, Payload::Auth(data)))
        }
        _ => Err(unsupported()),
    }
}

fn consent(
    common: &Common,
    user: String,
    app: String,
    scope: Option<String>,
    actor: Option<String>,
    reason: Option<String>,
) -> ConsentData {
    ConsentData {
        consent_id: keycloak_consent_id(&common.realm, &user, &app),
        patient: user.clone(),
        client_id: app,
        iss: Some(common.iss.clone()),
        sub: Some(user),
        scope,
        purpose: Vec::new(),
        period_start: None,
        period_end: None,
        reason,
        actor,
    }
}

/// The patient id of a patient user's `fhirUser` (`Patient/123`, or an absolute URL ending in
/// it): a consent given or withdrawn by that user is about that patient, the id under which
/// the FHIR server's records of the patient are kept. Other users, and events without
/// `fhirUser` (admin events), file the consent under the user id.
fn patient_of(fhir_user: Option<&str>) -> Option<String> {
    let mut parts = fhir_user?.rsplit('/');
    let id = parts.next().filter(|id| !id.is_empty())?;
    (parts.next() == Some("Patient")).then(|| id.to_owned())
}

/// Keycloak token types (`typ` claim) to Custos `tokenType`.
fn token_type(kc: &str) -> Option<&'static str> {
    match kc {
        "Bearer" | "DPoP" => Some("access"),
        "Refresh" | "Offline" => Some("refresh"),
        "ID" => Some("id"),
        _ => None,
    }
}

fn required<'a>(value: Option<&'a str>, field: &str) -> Result<&'a str, DecodeError> {
    value
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| DecodeError::MissingField(field.to_owned()))
}

fn nonempty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_users_give_their_patient_id() {
        assert_eq!(patient_of(Some("Patient/p-1")).as_deref(), Some("p-1"));
        assert_eq!(
            patient_of(Some("https://fhir.example/r4/Patient/p-2")).as_deref(),
            Some("p-2")
        );
        for other in [
            None,
            Some("Practitioner/d-1"),
            Some("Patient/"),
            Some("p-3"),
        ] {
            assert_eq!(patient_of(other), None, "{other:?}");
        }
    }

    #[test]
    fn consent_ids_are_stable_and_opaque() {
        let a = keycloak_consent_id("realm", "user-1", "app");
        assert_eq!(a, keycloak_consent_id("realm", "user-1", "app"));
        assert_ne!(a, keycloak_consent_id("realm", "user-1", "app2"));
        assert_ne!(a, keycloak_consent_id("realm2", "user-1", "app"));
        assert!(a.starts_with("kc-") && a.len() == 35);
        assert!(!a.contains("user-1"));
    }

    fn login(consent: &str) -> Vec<u8> {
        serde_json::json!({
            "id": "ev-login-1", "time": 1_700_000_000_000_i64, "type": "LOGIN",
            "realmId": "realm-uuid", "realmName": "custos",
            "issuer": "http://127.0.0.1:18080/realms/custos",
            "clientId": "smart-patient-app", "userId": "user-1", "sessionId": "sess-1",
            "details": {"auth_method": "openid-connect", "consent": consent}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_login_that_granted_consent_is_a_consent_for_the_consent_service() {
        let ev = decode_keycloak_login_consent(&login("consent_granted"))
            .expect("decodes")
            .expect("a consent");
        assert_eq!(ev.event_type, EventType::ConsentGranted);
        assert_eq!(ev.id, "ev-login-1");
        assert_eq!(ev.tenant.as_deref(), Some("custos"));
        let Payload::Consent(c) = ev.payload else {
            panic!("not a consent: {:?}", ev.payload)
        };
        assert_eq!(
            c.consent_id,
            keycloak_consent_id("realm-uuid", "user-1", "smart-patient-app")
        );
        assert_eq!(
            (c.patient.as_str(), c.client_id.as_str(), c.sub.as_deref()),
            ("user-1", "smart-patient-app", Some("user-1"))
        );
        assert_eq!(
            c.iss.as_deref(),
            Some("http://127.0.0.1:18080/realms/custos")
        );
        // For the audit it stays a login.
        let audit = decode_keycloak(&login("consent_granted")).expect("decodes");
        assert_eq!(audit.event_type, EventType::AuthLogin);
    }

    #[test]
    fn other_logins_and_events_grant_nothing() {
        for consent in ["persisted_consent", "no_consent_required", ""] {
            assert!(decode_keycloak_login_consent(&login(consent))
                .expect("decodes")
                .is_none());
        }
        let token = String::from_utf8(login("consent_granted"))
            .expect("utf-8")
            .replace("\"LOGIN\"", "\"CODE_TO_TOKEN\"");
        assert!(decode_keycloak_login_consent(token.as_bytes())
            .expect("decodes")
            .is_none());
        assert!(decode_keycloak_login_consent(b"{}").is_err());
    }

    #[test]
    fn classifies_types() {
        assert!(matches!(
            classify("LOGIN_ERROR"),
            Some((Kind::Auth(EventType::AuthLoginFailed), true))
        ));
        assert!(matches!(
            classify("TOKEN_EXCHANGE_ERROR"),
            Some((Kind::Token(EventType::TokenIssued), true))
        ));
        assert!(matches!(
            classify("GRANT_CONSENT_ERROR"),
            Some((Kind::Auth(EventType::AuthLoginFailed), true))
        ));
        assert!(classify("REVOKE_GRANT_ERROR").is_none());
        assert!(classify("REGISTER").is_none());
    }
}
