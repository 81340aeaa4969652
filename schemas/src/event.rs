//! The normalized event every source format decodes into.
//!
//! Producers send CloudEvents 1.0 whose `data` is one of the payload structs below
//! (field names follow OIDC/SMART claim names where one exists: `iss`, `sub`, `fhirUser`,
//! `client_id`, `jti`, `sid`, `scope`). Keycloak event JSON and FHIR R4 `AuditEvent`
//! resources are mapped onto the same types by their decoders. Unknown fields are
//! tolerated everywhere; missing required fields are rejected with the field named.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every event type Custos accepts (the CloudEvents `type` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum EventType {
    /// A user authenticated at the AS.
    #[serde(rename = "custos.auth.login")]
    AuthLogin,
    /// An authentication attempt failed.
    #[serde(rename = "custos.auth.login_failed")]
    AuthLoginFailed,
    /// A session ended.
    #[serde(rename = "custos.auth.logout")]
    AuthLogout,
    /// The AS issued a token.
    #[serde(rename = "custos.token.issued")]
    TokenIssued,
    /// A token was refreshed.
    #[serde(rename = "custos.token.refreshed")]
    TokenRefreshed,
    /// A token was revoked (RFC 7009 or administratively).
    #[serde(rename = "custos.token.revoked")]
    TokenRevoked,
    /// A resource server introspected a token (RFC 7662).
    #[serde(rename = "custos.token.introspected")]
    TokenIntrospected,
    /// A patient (or their representative) granted an app access.
    #[serde(rename = "custos.consent.granted")]
    ConsentGranted,
    /// A consent was withdrawn.
    #[serde(rename = "custos.consent.revoked")]
    ConsentRevoked,
    /// A consent reached the end of its period.
    #[serde(rename = "custos.consent.expired")]
    ConsentExpired,
    /// A FHIR REST interaction passed through the gateway or FHIR server.
    #[serde(rename = "custos.fhir.access")]
    FhirAccess,
    /// A user account was removed or disabled.
    #[serde(rename = "custos.user.deprovisioned")]
    UserDeprovisioned,
    /// Break-the-glass emergency access was opened.
    #[serde(rename = "custos.breakglass.opened")]
    BreakGlassOpened,
}

impl EventType {
    /// All event types, in declaration order.
    pub const ALL: [EventType; 13] = [
        EventType::AuthLogin,
        EventType::AuthLoginFailed,
        EventType::AuthLogout,
        EventType::TokenIssued,
        EventType::TokenRefreshed,
        EventType::TokenRevoked,
        EventType::TokenIntrospected,
        EventType::ConsentGranted,
        EventType::ConsentRevoked,
        EventType::ConsentExpired,
        EventType::FhirAccess,
        EventType::UserDeprovisioned,
        EventType::BreakGlassOpened,
    ];

    /// The CloudEvents `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AuthLogin => "custos.auth.login",
            EventType::AuthLoginFailed => "custos.auth.login_failed",
            EventType::AuthLogout => "custos.auth.logout",
            EventType::TokenIssued => "custos.token.issued",
            EventType::TokenRefreshed => "custos.token.refreshed",
            EventType::TokenRevoked => "custos.token.revoked",
            EventType::TokenIntrospected => "custos.token.introspected",
            EventType::ConsentGranted => "custos.consent.granted",
            EventType::ConsentRevoked => "custos.consent.revoked",
            EventType::ConsentExpired => "custos.consent.expired",
            EventType::FhirAccess => "custos.fhir.access",
            EventType::UserDeprovisioned => "custos.user.deprovisioned",
            EventType::BreakGlassOpened => "custos.breakglass.opened",
        }
    }

    /// Parses a CloudEvents `type` string.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The payload family carried by this type.
    pub fn family(self) -> PayloadFamily {
        match self {
            EventType::AuthLogin | EventType::AuthLoginFailed | EventType::AuthLogout => {
                PayloadFamily::Auth
            }
            EventType::TokenIssued
            | EventType::TokenRefreshed
            | EventType::TokenRevoked
            | EventType::TokenIntrospected => PayloadFamily::Token,
            EventType::ConsentGranted | EventType::ConsentRevoked | EventType::ConsentExpired => {
                PayloadFamily::Consent
            }
            EventType::FhirAccess => PayloadFamily::FhirAccess,
            EventType::UserDeprovisioned => PayloadFamily::UserDeprovisioned,
            EventType::BreakGlassOpened => PayloadFamily::BreakGlass,
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which payload struct an event type carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFamily {
    /// [`AuthData`]
    Auth,
    /// [`TokenData`]
    Token,
    /// [`ConsentData`]
    Consent,
    /// [`FhirAccessData`]
    FhirAccess,
    /// [`DeprovisionData`]
    UserDeprovisioned,
    /// [`BreakGlassData`]
    BreakGlass,
}

/// The wire format an event arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SourceFormat {
    /// CloudEvents 1.0, structured JSON mode.
    CloudEventsStructured,
    /// CloudEvents 1.0, Kafka binary mode (`ce_*` headers).
    CloudEventsBinary,
    /// Keycloak user event JSON.
    KeycloakEvent,
    /// Keycloak admin event JSON.
    KeycloakAdminEvent,
    /// FHIR R4 `AuditEvent` resource (IHE BALP).
    FhirAuditEvent,
    /// FHIR R4 `Consent` resource.
    FhirConsent,
}

impl SourceFormat {
    /// Short name stored in the `source_format` column.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::CloudEventsStructured => "cloudevents",
            SourceFormat::CloudEventsBinary => "cloudevents-binary",
            SourceFormat::KeycloakEvent => "keycloak",
            SourceFormat::KeycloakAdminEvent => "keycloak-admin",
            SourceFormat::FhirAuditEvent => "fhir-auditevent",
            SourceFormat::FhirConsent => "fhir-consent",
        }
    }
}

/// A decoded, validated event, independent of its source format.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Producer-assigned id; with `source` it identifies the event for deduplication.
    pub id: String,
    /// The producer (CloudEvents `source`).
    pub source: String,
    /// What happened.
    pub event_type: EventType,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// Tenant (CloudEvents extension `tenant`, Keycloak realm); `None` means the configured default.
    pub tenant: Option<String>,
    /// The format it arrived in.
    pub format: SourceFormat,
    /// Typed payload.
    pub payload: Payload,
}

/// The typed payload of an [`Event`].
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Login, failed login, logout.
    Auth(AuthData),
    /// Token lifecycle.
    Token(TokenData),
    /// Consent changes.
    Consent(ConsentData),
    /// A FHIR REST interaction.
    FhirAccess(FhirAccessData),
    /// Account removal.
    UserDeprovisioned(DeprovisionData),
    /// Emergency access.
    BreakGlass(BreakGlassData),
}

/// Payload of `custos.auth.*` events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuthData {
    /// AS issuer URL.
    pub iss: String,
    /// Subject of the user (required for login and logout; failed logins may lack one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// SMART `fhirUser` (e.g. `Practitioner/123`, `Patient/456`).
    #[serde(rename = "fhirUser", default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// OAuth client.
    pub client_id: String,
    /// AS session id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Client IP address.
    #[serde(rename = "sourceIp", default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// Client user agent.
    #[serde(rename = "userAgent", default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Error code of a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The access token's `jti` when the sign-in itself issued tokens (the OAuth password
    /// grant: one AS event for both); token trace then counts the sign-in as the issuance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The scopes granted to that token, space separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Authentication methods used (RFC 8176 `amr` values such as `pwd`, `otp`, `hwk`,
    /// `mfa`), when the AS says; empty when it does not. Not stored in the audit row; read
    /// by the misuse detectors (a privileged sign-in without a second factor).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// Roles of the user at sign-in, when the AS says. Not stored in the audit row; read by
    /// the misuse detectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// Payload of `custos.token.*` events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenData {
    /// AS issuer URL.
    pub iss: String,
    /// Token subject (a user, or the client itself for client-credentials tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// SMART `fhirUser` of the subject.
    #[serde(rename = "fhirUser", default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// OAuth client.
    pub client_id: String,
    /// Token identifier (`jti`); never the token itself.
    pub jti: String,
    /// `access`, `refresh` or `id`.
    #[serde(rename = "tokenType", default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// Granted scopes, space separated (RFC 6749 §3.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// AS session id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// SMART launch context patient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// Token expiry.
    #[serde(rename = "expiresAt", default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Client IP address.
    #[serde(rename = "sourceIp", default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// Client user agent.
    #[serde(rename = "userAgent", default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Introspection result (`active`), for `custos.token.introspected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// Why a token was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Error code of a failed token request (e.g. refresh-token reuse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Payload of `custos.consent.*` events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConsentData {
    /// Consent identifier.
    #[serde(rename = "consentId")]
    pub consent_id: String,
    /// The patient the consent is about (pseudonymized before storage).
    pub patient: String,
    /// The app the consent covers.
    pub client_id: String,
    /// AS issuer URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Subject of the patient user at the AS (pseudonymized before storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Granted scopes, space separated (SMART v1 or v2 syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Purposes of use (v3-ActReason codes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purpose: Vec<String>,
    /// Start of the consent period.
    #[serde(
        rename = "periodStart",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub period_start: Option<DateTime<Utc>>,
    /// End of the consent period.
    #[serde(rename = "periodEnd", default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<DateTime<Utc>>,
    /// Why it changed (free text, no PHI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who made the change (workforce identity or `patient`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// FHIR REST interactions (FHIR R4 `restful-interaction` codes).
pub const INTERACTIONS: [&str; 17] = [
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history",
    "history-instance",
    "history-type",
    "history-system",
    "create",
    "search",
    "search-type",
    "search-system",
    "capabilities",
    "transaction",
    "batch",
    "operation",
];

/// Access decision of the gateway or FHIR server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Access allowed.
    Permit,
    /// Access refused.
    Deny,
}

impl Decision {
    /// `permit` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Permit => "permit",
            Decision::Deny => "deny",
        }
    }
}

/// Payload of `custos.fhir.access`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FhirAccessData {
    /// Gateway request id.
    #[serde(rename = "requestId")]
    pub request_id: String,
    /// AS issuer of the token used.
    pub iss: String,
    /// Token subject.
    pub sub: String,
    /// SMART `fhirUser`.
    #[serde(rename = "fhirUser", default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// OAuth client.
    pub client_id: String,
    /// Identifier (`jti`) of the access token used; never the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Scopes granted to the token, space separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// FHIR interaction (`read`, `vread`, `search-type`, `create`, `update`, `delete`, ...).
    pub interaction: String,
    /// FHIR resource type.
    #[serde(rename = "resourceType")]
    pub resource_type: String,
    /// FHIR resource id (absent for searches and creates).
    #[serde(
        rename = "resourceId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub resource_id: Option<String>,
    /// Patient compartment the access falls in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// Encounter context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    /// Purposes of use (v3-ActReason codes; `BTG` for break-the-glass).
    #[serde(
        rename = "purposeOfUse",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub purpose_of_use: Vec<String>,
    /// Reason given for break-the-glass.
    #[serde(
        rename = "breakGlassReason",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub break_glass_reason: Option<String>,
    /// permit or deny.
    pub decision: Decision,
    /// HTTP status returned.
    #[serde(rename = "httpStatus")]
    pub http_status: u16,
    /// Client IP address.
    #[serde(rename = "sourceIp", default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// Client user agent.
    #[serde(rename = "userAgent", default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// For searches: the resources returned (`Type/id` or bare ids).
    #[serde(rename = "returnedIds", default, skip_serializing_if = "Vec::is_empty")]
    pub returned_ids: Vec<String>,
}

/// Payload of `custos.user.deprovisioned`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeprovisionData {
    /// AS issuer URL.
    pub iss: String,
    /// Subject of the removed account.
    pub sub: String,
    /// SMART `fhirUser` of the account.
    #[serde(rename = "fhirUser", default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// Why (free text, no PHI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who removed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// Payload of `custos.breakglass.opened`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BreakGlassData {
    /// AS issuer URL.
    pub iss: String,
    /// Clinician subject.
    pub sub: String,
    /// SMART `fhirUser` of the clinician.
    #[serde(rename = "fhirUser", default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// OAuth client used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Patient whose record was opened.
    pub patient: String,
    /// Stated reason (required).
    pub reason: String,
    /// When the emergency access ends.
    #[serde(rename = "expiresAt", default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// AS session id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Client IP address.
    #[serde(rename = "sourceIp", default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
}
